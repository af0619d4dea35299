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

  /// A handler over a fresh durable store on `fs` and its compactions (not started: no
  /// periodic snapshots), the store and the compactions; `ready` is what the daemon's
  /// start-up flag says.
  private func endpoints(_ fs: FaultyFileSystem, ready: @escaping @Sendable () -> Bool) throws
    -> (@Sendable (AdminRequest) -> AdminResponse, DurableStore, Compaction)
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
    let compaction = Compaction(
      durable: durable, snapshotIntervalSeconds: 3600, erasureDeadlineSeconds: 60, log: { _ in })
    let handler = AdminEndpoints.handler(
      server: server, storage: durable, erasure: compaction, isReady: ready)
    return (handler, durable, compaction)
  }

  /// Configures workspace `acme` and waits for the store's answer.
  private func configure(_ store: SubscriptionStore) -> Result<WorkspaceConfig, CoreError> {
    awaitStoreCall {
      store.configureWorkspace(
        WorkspaceConfig(workspace: "acme", channels: ["email"]), actor: "admin", mayCreate: true,
        completion: $0)
    }
  }

  /// Workspace `acme` with person p1, forgotten (durable; its erasure not yet scheduled).
  private func forgottenPerson(_ store: SubscriptionStore) throws {
    _ = try configure(store).get()
    _ = try awaitStoreCall {
      store.identify(
        IdentifyRequest(workspace: "acme", personID: "p1", email: "p1@example.com"),
        actor: "w", completion: $0)
    }.get()
    _ = try awaitStoreCall {
      store.forget(
        ForgetRequest(workspace: "acme", person: .personID("p1")), actor: "p", completion: $0)
    }.get()
  }

  private func metric(_ name: String, _ text: String) -> String? {
    text.split(separator: "\n").first { $0.hasPrefix(name + " ") }.map {
      String($0.dropFirst(name.count + 1))
    }
  }

  @Test func readyzFollowsStartUpThenTheLog() throws {
    let ready = Atomic<Bool>(false)
    let (handle, durable, _) = try endpoints(FaultyFileSystem()) { ready.load(ordering: .relaxed) }
    defer { durable.close() }
    #expect(handle(AdminRequest("GET", "/healthz")).status == 200)
    #expect(handle(AdminRequest("GET", "/readyz")).status == 503, "not ready before start-up ends")
    ready.store(true, ordering: .relaxed)
    #expect(handle(AdminRequest("GET", "/readyz")).status == 200)
    #expect(handle(AdminRequest("GET", "/nope")).status == 404)
    #expect(metric("subcenter_wal_failed", handle(AdminRequest("GET", "/metrics")).body) == "0")
  }

  @Test func postSnapshotWritesOneAndAnswersItsSeq() throws {
    let fs = FaultyFileSystem()
    let (handle, durable, _) = try endpoints(fs) { true }
    defer { durable.close() }
    #expect(try configure(durable.store).get().workspace == "acme")
    let r = handle(AdminRequest("POST", "/snapshot"))
    #expect(r.status == 200 && r.body.hasPrefix("snapshot at seq "), "\(r.body)")
    let seq = try #require(UInt64(r.body.dropFirst("snapshot at seq ".count).dropLast()))
    #expect(seq == durable.wal.status.durableThrough)
    let digits = String(seq)
    #expect(
      try fs.list(directory).contains {
        $0.hasPrefix("snapshot-") && $0.hasSuffix("\(digits).snap")
      })
    #expect(
      metric("subcenter_snapshot_seq", handle(AdminRequest("GET", "/metrics")).body) == digits)
    let get = handle(AdminRequest("GET", "/snapshot"))
    #expect(get.status == 405 && get.allow == "POST")
    #expect(handle(AdminRequest("POST", "/healthz")).status == 405)
    #expect(handle(AdminRequest("POST", "/nope")).status == 404)

    // A snapshot that cannot be written is a 503 saying why.
    _ = try configure(durable.store).get()  // a change since the last snapshot
    fs.fail(.write, nth: 1, errno: ENOSPC, sticky: true)
    let full = handle(AdminRequest("POST", "/snapshot"))
    #expect(full.status == 503 && full.body.hasPrefix("snapshot failed: "), "\(full.body)")
  }

  @Test func anErasureThatCannotBeWrittenIsCountedAndAged() throws {
    let fs = FaultyFileSystem()
    let (handle, durable, compaction) = try endpoints(fs) { true }
    defer { durable.close() }
    func metrics() -> (failed: String?, age: Double) {
      let text = handle(AdminRequest("GET", "/metrics")).body
      return (
        metric("subcenter_erasure_compactions_failed_total", text),
        Double(metric("subcenter_erasure_oldest_pending_seconds", text) ?? "") ?? -1
      )
    }
    #expect(metrics().failed == "0" && metrics().age == 0)
    try forgottenPerson(durable.store)

    // The disk refuses the compaction's snapshot: it fails, and is retried every second.
    fs.fail(.write, nth: 1, errno: ENOSPC, sticky: true)
    _ = compaction.scheduleErasure()
    for _ in 0..<300 where metrics().failed == "0" { usleep(10_000) }
    #expect(metrics().failed != "0")
    #expect(metrics().age > 0)
    // Space comes back: the next retry erases, and nothing waits any more.
    fs.clearFaults()
    for _ in 0..<300 where metrics().age > 0 { usleep(10_000) }
    #expect(metrics().age == 0)
    compaction.stop()
  }

  @Test func aWaitingForgetIsAnsweredOnceTheLogHasFailedForGood() throws {
    let fs = FaultyFileSystem()
    let (_, durable, compaction) = try endpoints(fs) { true }
    defer { durable.close() }
    try forgottenPerson(durable.store)
    // The forget is durable; its compaction writes its snapshot, then meets an fsync error
    // that fails the log (closing the active segment syncs the new one).
    fs.fail(.sync, nth: 2, errno: EIO, sticky: true)
    let seq = compaction.scheduleErasure()
    let answered = awaitStoreCall { (done: @escaping Completion<UInt64>) in
      compaction.whenErased(through: seq) { r in
        done(r.mapError { .unavailable("\($0)") })
      }
    }
    guard case .failure(let e) = answered else {
      Issue.record("a waiting forget was told its erasure is done: \(answered)")
      return
    }
    #expect(e.reason.contains("restarted"), "\(e)")
    #expect(durable.wal.status.failure != nil)
    // A forget that waits after that is answered at once too.
    let late = awaitStoreCall { (done: @escaping Completion<UInt64>) in
      compaction.whenErased(through: seq) { r in done(r.mapError { .unavailable("\($0)") }) }
    }
    #expect(throws: CoreError.self) { try late.get() }
    compaction.stop()
  }

  @Test func readyzIs503OnceTheLogHasFailedForGood() throws {
    let fs = FaultyFileSystem()
    let (handle, durable, _) = try endpoints(fs) { true }
    defer { durable.close() }
    #expect(try configure(durable.store).get().workspace == "acme")
    #expect(handle(AdminRequest("GET", "/readyz")).status == 200)

    fs.fail(.sync, nth: 1, errno: EIO)
    guard case .failure(let e) = configure(durable.store) else {
      Issue.record("a write whose fsync failed was acknowledged")
      return
    }
    #expect(e.kind == .unavailable)
    let readyz = handle(AdminRequest("GET", "/readyz"))
    #expect(readyz.status == 503)
    #expect(readyz.body.contains("write-ahead log failed"), "\(readyz.body)")
    #expect(metric("subcenter_wal_failed", handle(AdminRequest("GET", "/metrics")).body) == "1")
    #expect(
      handle(AdminRequest("GET", "/healthz")).status == 200,
      "the process still answers (reads are served)")
  }

  @Test func aFullDiskRefusesTheWriteAndStaysReady() throws {
    let fs = FaultyFileSystem()
    let (handle, durable, _) = try endpoints(fs) { true }
    defer { durable.close() }
    fs.fail(.write, nth: 1, errno: ENOSPC)
    guard case .failure(let e) = configure(durable.store) else {
      Issue.record("a write the disk had no room for was acknowledged")
      return
    }
    #expect(e.kind == .unavailable)
    #expect(
      handle(AdminRequest("GET", "/readyz")).status == 200, "writes resume once there is room")
    #expect(metric("subcenter_wal_failed", handle(AdminRequest("GET", "/metrics")).body) == "0")
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
