// The admin endpoints' answers (/healthz, /readyz, /metrics, anything else) as an operator's
// probes see them, over a durable store whose file system fails on demand.

import GRPCTransport
import Glibc
import SubcenterCore
import SubcenterServer
import SubcenterStore
import SubcenterTestSupport
import Synchronization
import Testing

@Suite struct AdminEndpointsTests {
  private let directory = "/data"

  /// A handler over a fresh durable store on `fs`, and the store; `ready` is what the
  /// daemon's start-up flag says.
  private func endpoints(_ fs: FaultyFileSystem, ready: @escaping @Sendable () -> Bool) throws
    -> (@Sendable (String) -> AdminResponse, DurableStore)
  {
    try fs.createDirectory(directory)
    let durable = try DurableStore.open(
      directory: directory, fileSystem: fs, clock: ManualClock(1_700_000_000_000),
      secret: [UInt8](repeating: 7, count: 32), fsync: .always, truncateDamaged: false,
      log: { _ in }
    ).0
    let certificates = try TestCertificates.shared()
    let tls = try TLSContext.server(
      certificateChainFile: certificates.serverCertificateFile,
      privateKeyFile: certificates.serverKeyFile)
    let server = GRPCServer(
      configuration: ServerConfiguration(
        listen: SocketAddress(host: "127.0.0.1", port: 0), loops: 1, tls: tls),
      services: [])
    return (AdminEndpoints.handler(server: server, storage: durable, isReady: ready), durable)
  }

  /// Configures workspace `acme` and waits for the store's answer.
  private func configure(_ store: SubscriptionStore) -> Result<WorkspaceConfig, CoreError> {
    let box = Mutex<Result<WorkspaceConfig, CoreError>?>(nil)
    store.configureWorkspace(
      WorkspaceConfig(workspace: "acme", channels: ["email"]), actor: "admin", mayCreate: true
    ) { r in box.withLock { $0 = r } }
    for _ in 0..<200_000 {
      if let r = box.withLock({ $0 }) { return r }
      usleep(50)
    }
    fatalError("the store did not answer within 10 s")
  }

  private func metric(_ name: String, _ text: String) -> String? {
    text.split(separator: "\n").first { $0.hasPrefix(name + " ") }.map {
      String($0.dropFirst(name.count + 1))
    }
  }

  @Test func readyzFollowsStartUpThenTheLog() throws {
    let ready = Atomic<Bool>(false)
    let (handle, durable) = try endpoints(FaultyFileSystem()) { ready.load(ordering: .relaxed) }
    defer { durable.close() }
    #expect(handle("/healthz").status == 200)
    #expect(handle("/readyz").status == 503, "not ready before start-up ends")
    ready.store(true, ordering: .relaxed)
    #expect(handle("/readyz").status == 200)
    #expect(handle("/nope").status == 404)
    #expect(metric("subcenter_wal_failed", handle("/metrics").body) == "0")
  }

  @Test func readyzIs503OnceTheLogHasFailedForGood() throws {
    let fs = FaultyFileSystem()
    let (handle, durable) = try endpoints(fs) { true }
    defer { durable.close() }
    #expect(try configure(durable.store).get().workspace == "acme")
    #expect(handle("/readyz").status == 200)

    fs.fail(.sync, nth: 1, errno: EIO)
    guard case .failure(let e) = configure(durable.store) else {
      Issue.record("a write whose fsync failed was acknowledged")
      return
    }
    #expect(e.kind == .unavailable)
    let readyz = handle("/readyz")
    #expect(readyz.status == 503)
    #expect(readyz.body.contains("write-ahead log failed"), "\(readyz.body)")
    #expect(metric("subcenter_wal_failed", handle("/metrics").body) == "1")
    #expect(handle("/healthz").status == 200, "the process still answers (reads are served)")
  }

  @Test func aFullDiskRefusesTheWriteAndStaysReady() throws {
    let fs = FaultyFileSystem()
    let (handle, durable) = try endpoints(fs) { true }
    defer { durable.close() }
    fs.fail(.write, nth: 1, errno: ENOSPC)
    guard case .failure(let e) = configure(durable.store) else {
      Issue.record("a write the disk had no room for was acknowledged")
      return
    }
    #expect(e.kind == .unavailable)
    #expect(handle("/readyz").status == 200, "writes resume once there is room")
    #expect(metric("subcenter_wal_failed", handle("/metrics").body) == "0")
    // Writes resume by themselves (a write sent while the log is still reporting the
    // failure is refused with it: retried a moment later, as a client would).
    var again = configure(durable.store)
    for _ in 0..<100 where (try? again.get()) == nil {
      usleep(10_000)
      again = configure(durable.store)
    }
    #expect(try again.get().workspace == "acme")
  }
}
