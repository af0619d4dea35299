// subcenter-bench: benchmark helpers for bench/run, never part of a deployment.
//
//   subcenter-bench store [--persons N] [--batch 1000] [--seconds 3]
//       loads N persons (two preference entries each) into an in-process store; prints
//       RSS per person and CheckDeliveryBatch decisions per second on this thread.
//   subcenter-bench serve --persons N --listen HOST:PORT [--admin-listen HOST:PORT]
//       the same store behind the real gRPC service (TLS flags as subcenterd, tokens from
//       --tokens), for h2load against CheckDelivery with N persons loaded.

import GRPCTransport
import Glibc
import SubcenterCore
import SubcenterServer
import SubcenterStore

enum Bench {
  static func run() -> Int32 {
    TerminationSignals.block()
    let args = Array(CommandLine.arguments.dropFirst())
    guard let mode = args.first else {
      writeStderrLine("usage: subcenter-bench store|serve [flags]")
      return 2
    }
    let specs =
      ServerOptions.flagSpecs.filter { $0.name != "help" } + [
        FlagSpec("persons", default: "1000000", help: "persons to load"),
        FlagSpec("batch", default: "1000", help: "persons per CheckDeliveryBatch"),
        FlagSpec("seconds", default: "3", help: "how long to measure"),
      ]
    do {
      let flags = try Flags(
        arguments: Array(args.dropFirst()), environment: [:], specs: specs)
      let persons = try flags.int("persons", in: 1...50_000_000) ?? 1_000_000
      switch mode {
      case "store":
        return try storeBench(
          persons: persons, batch: try flags.int("batch", in: 1...10_000) ?? 1000,
          seconds: try flags.int("seconds", in: 1...600) ?? 3)
      case "serve":
        return try serve(flags: flags, persons: persons)
      default:
        writeStderrLine("subcenter-bench: unknown mode \(mode)")
        return 2
      }
    } catch {
      writeStderrLine("subcenter-bench: \(error)")
      return 2
    }
  }

  /// Loads `count` persons `p0`…, each with an email channel entry and a topic entry.
  static func load(_ store: SubscriptionStore, count: Int) throws {
    let config = WorkspaceConfig(
      workspace: "bench", channels: ["email", "sms", "push"],
      topics: [Topic(id: "news", name: "News", defaultState: .subscribed)],
      limits: [], allowImportantOverride: true)
    try wait { store.configureWorkspace(config, actor: "bench", mayCreate: true, completion: $0) }
    for i in 0..<count {
      let id = "p\(i)"
      _ = try wait {
        store.identify(
          IdentifyRequest(workspace: "bench", personID: id), actor: "bench", completion: $0)
      }
      _ = try wait {
        store.setPreference(
          PreferenceRequest(workspace: "bench", person: .personID(id), channel: "sms"),
          state: .unsubscribed, actor: "bench", completion: $0)
      }
      _ = try wait {
        store.setPreference(
          PreferenceRequest(workspace: "bench", person: .personID(id), topic: "news"),
          state: i % 2 == 0 ? .subscribed : .unsubscribed, actor: "bench", completion: $0)
      }
    }
  }

  /// Runs a completion-style store call that completes synchronously.
  @discardableResult
  static func wait<T>(_ body: (@escaping Completion<T>) -> Void) throws -> T {
    let box = ResultBox<T>()
    body { box.result = $0 }
    return try box.result!.get()
  }

  static func storeBench(persons: Int, batch: Int, seconds: Int) throws -> Int32 {
    let before = rssKiB()
    let store = SubscriptionStore(clock: SystemClock(), secret: Crypto.randomBytes(count: 32))
    let t0 = monotonicMillis()
    try load(store, count: persons)
    let loadMillis = monotonicMillis() - t0
    let after = rssKiB()
    let perPerson = Double(after - before) * 1024 / Double(persons)
    // Requests are built before the clock starts: the server decodes them from protobuf.
    var k = 0
    let requests = (0..<64).map { _ in
      DeliveryBatchRequest(
        workspace: "bench", channel: "email", topic: "news",
        persons: (0..<batch).map { _ in
          k &+= 7919
          return PersonRef.personID("p\(k % persons)")
        })
    }
    var decisions = 0
    let start = monotonicMillis()
    var i = 0
    while monotonicMillis() - start < Int64(seconds) * 1000 {
      decisions += try wait { store.checkDeliveryBatch(requests[i % 64], completion: $0) }.count
      i += 1
    }
    let elapsed = Double(monotonicMillis() - start) / 1000
    print(
      "persons=\(persons) load_ms=\(loadMillis) rss_before_kib=\(before) rss_after_kib=\(after) "
        + "rss_bytes_per_person=\(Int(perPerson)) batch=\(batch) "
        + "batch_decisions_per_sec=\(Int(Double(decisions) / elapsed))")
    return 0
  }

  static func serve(flags: Flags, persons: Int) throws -> Int32 {
    let options = try ServerOptions(flags: flags)
    let secret = Crypto.randomBytes(count: 32)
    let store = SubscriptionStore(clock: SystemClock(), secret: secret)
    try load(store, count: persons)
    let service = SubscriptionService(
      store: store, tokens: try TokenStore(file: options.tokensFile), secret: secret,
      erasureDeadlineSeconds: 60)
    let server = GRPCServer(configuration: options.transport, services: [service])
    try server.start()
    let admin = AdminHTTPServer(
      handler: AdminEndpoints.handler(server: server, isReady: { true }))
    try admin.start(options.adminListen)
    writeStderrLine(
      "subcenter-bench: \(persons) persons loaded; rss_kib=\(rssKiB()); listening on "
        + "\(options.transport.listen.host):\(server.port)")
    _ = TerminationSignals.wait()
    server.shutdown()
    server.wait()
    admin.stop()
    return 0
  }

  static func rssKiB() -> Int {
    guard let f = fopen("/proc/self/status", "r") else { return 0 }
    defer { fclose(f) }
    var line = [CChar](repeating: 0, count: 256)
    while fgets(&line, 256, f) != nil {
      let s = String(decoding: line.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
      if s.hasPrefix("VmRSS:") {
        return Int(s.dropFirst(6).split(whereSeparator: { $0 == " " || $0 == "\t" }).first ?? "0")
          ?? 0
      }
    }
    return 0
  }

  static func monotonicMillis() -> Int64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Int64(ts.tv_sec) * 1000 + Int64(ts.tv_nsec) / 1_000_000
  }
}

/// Holds a completion's result (completions run synchronously in this tool).
final class ResultBox<T>: @unchecked Sendable {
  var result: Result<T, CoreError>?
}
