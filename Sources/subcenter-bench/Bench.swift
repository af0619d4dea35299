// subcenter-bench: benchmark helpers for bench/run, never part of a deployment.
//
//   subcenter-bench store [--persons N] [--batch 1000] [--seconds 3]
//       loads N persons (two preference entries each) into an in-process store; prints
//       RSS per person and CheckDeliveryBatch decisions per second on this thread.
//   subcenter-bench serve --persons N --listen HOST:PORT [--admin-listen HOST:PORT]
//       the same store behind the real gRPC service (TLS flags as subcenterd, tokens from
//       --tokens), for h2load against CheckDelivery with N persons loaded.
//   subcenter-bench recovery --data DIR [--persons N] [--snapshot on|off] [--records R]
//       [--opens 3]
//       recovery time of a DurableStore in DIR (an empty or new directory), built with
//       fsync none. --snapshot on: N persons (identify + two preferences each), snapshot,
//       close; then times DurableStore.open (snapshot load), --opens times; prints
//       snapshot_load_ms= (median). --snapshot off: R log records (N identifies, the rest
//       preference changes over those N persons), closed without a snapshot; then times
//       open (log replay); prints replay_ms= (median) and replay_records=, and the time of
//       the read of every retained segment into its summary that follows a start
//       (segment_scan_ms=); --segment-records N starts a new segment every N changes.
//   subcenter-bench writes --data DIR [--fsync always] [--inflight 128] [--seconds 5]
//       the store and write-ahead log of subcenterd without its transport: Unsubscribe
//       calls on the store (person "bench", channel email) from this thread, --inflight
//       of them in flight, in a new DurableStore in DIR; prints writes_per_sec= and
//       writes_per_cpu_sec= (over the process's CPU time).
//   subcenter-bench erasures --data DIR [--persons N]
//       N times: a person with six records, ForgetPerson, an erasure compaction, each
//       leaving one more retained segment; prints the median compaction time of each
//       1,000 (compaction_us_median=): how a compaction's cost grows with the segments.

import Dispatch
import GRPCTransport
import Glibc
import SubcenterCore
import SubcenterServer
import SubcenterStore
import Synchronization

enum Bench {
  static func run() -> Int32 {
    TerminationSignals.block()
    let args = Array(CommandLine.arguments.dropFirst())
    guard let mode = args.first else {
      writeStderrLine("usage: subcenter-bench store|serve|recovery|writes|erasures [flags]")
      return 2
    }
    let specs =
      ServerOptions.flagSpecs.filter { $0.name != "help" } + [
        FlagSpec("persons", default: "1000000", help: "persons to load"),
        FlagSpec("batch", default: "1000", help: "persons per CheckDeliveryBatch"),
        FlagSpec("seconds", default: "3", help: "how long to measure"),
        FlagSpec("snapshot", default: "on", help: "recovery: on (snapshot load) | off (replay)"),
        FlagSpec("records", default: "1000000", help: "recovery --snapshot off: log records"),
        FlagSpec("opens", default: "3", help: "recovery: timed opens (median printed)"),
        FlagSpec(
          "segment-records", default: "0",
          help: "recovery --snapshot off: start a new log segment every N changes (0: by size)"),
        FlagSpec("inflight", default: "128", help: "writes: calls in flight"),
      ]
    do {
      let flags = try Flags(
        arguments: Array(args.dropFirst()), environment: [:], specs: specs)
      let persons = try flags.int("persons", in: 1...50_000_000) ?? 1_000_000
      /// --data, which `recovery` and `writes` need (the flag has a default: it must be given).
      func dataDirectory() -> String? {
        guard args.contains(where: { $0.hasPrefix("--data") }), let dir = flags.string("data")
        else {
          writeStderrLine("subcenter-bench: \(mode) needs --data DIR (an empty directory)")
          return nil
        }
        return dir
      }
      switch mode {
      case "store":
        return try storeBench(
          persons: persons, batch: try flags.int("batch", in: 1...10_000) ?? 1000,
          seconds: try flags.int("seconds", in: 1...600) ?? 3)
      case "serve":
        return try serve(flags: flags, persons: persons)
      case "recovery":
        guard let dir = dataDirectory() else { return 2 }
        let snap = flags.string("snapshot") ?? "on"
        guard snap == "on" || snap == "off" else {
          writeStderrLine("subcenter-bench: --snapshot: expected on or off, got '\(snap)'")
          return 2
        }
        return try recovery(
          directory: dir, persons: persons, snapshot: snap == "on",
          records: try flags.int("records", in: 1...50_000_000) ?? 1_000_000,
          opens: try flags.int("opens", in: 1...20) ?? 3,
          segmentRecords: try flags.int("segment-records", in: 0...50_000_000) ?? 0)
      case "writes":
        guard let dir = dataDirectory() else { return 2 }
        let fsyncText = flags.string("fsync") ?? "always"
        guard let fsync = FsyncPolicy(fsyncText) else {
          writeStderrLine(
            "subcenter-bench: --fsync: expected always, none or interval:MS, got '\(fsyncText)'")
          return 2
        }
        return try writes(
          directory: dir, fsync: fsync,
          inFlight: try flags.int("inflight", in: 1...100_000) ?? 128,
          seconds: try flags.int("seconds", in: 1...600) ?? 5)
      case "erasures":
        guard let dir = dataDirectory() else { return 2 }
        return try erasures(directory: dir, cycles: persons)
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

  /// Builds a data directory with fsync none, closes it, then times `DurableStore.open`.
  static func recovery(
    directory: String, persons: Int, snapshot: Bool, records: Int, opens: Int,
    segmentRecords: Int = 0
  ) throws -> Int32 {
    let secret = Crypto.randomBytes(count: 32)
    let quiet: @Sendable (String) -> Void = { _ in }
    let t0 = monotonicMillis()
    do {
      guard let durable = try openEmpty(directory, secret: secret, fsync: .none) else { return 1 }
      let store = durable.store
      let config = WorkspaceConfig(
        workspace: "bench", channels: ["email", "sms", "push"],
        topics: [Topic(id: "news", name: "News", defaultState: .subscribed)],
        limits: [], allowImportantOverride: true)
      let w = Pipeline()
      w.submit { store.configureWorkspace(config, actor: "bench", mayCreate: true, completion: $0) }
      try w.drain()
      for i in 0..<persons {
        w.submit {
          store.identify(
            IdentifyRequest(workspace: "bench", personID: "p\(i)"), actor: "bench", completion: $0)
        }
      }
      try w.drain()
      if snapshot {
        for i in 0..<persons {
          w.submit {
            store.setPreference(
              PreferenceRequest(workspace: "bench", person: .personID("p\(i)"), channel: "sms"),
              state: .unsubscribed, actor: "bench", completion: $0)
          }
        }
        try w.drain()
        for i in 0..<persons {
          w.submit {
            store.setPreference(
              PreferenceRequest(workspace: "bench", person: .personID("p\(i)"), topic: "news"),
              state: i % 2 == 0 ? .subscribed : .unsubscribed, actor: "bench", completion: $0)
          }
        }
        try w.drain()
        try durable.snapshot(force: true)
      } else {
        // Records so far: workspace default, workspace bench, `persons` identifies.
        let changes = max(0, records - persons - 2)
        for k in 0..<changes {
          let i = k % persons
          let on = (k / persons) % 2 == 0
          w.submit {
            store.setPreference(
              PreferenceRequest(
                workspace: "bench", person: .personID("p\(i)"), topic: "news",
                source: "bench"),
              state: on ? .unsubscribed : .subscribed, actor: "bench", completion: $0)
          }
          if segmentRecords > 0 && (k + 1) % segmentRecords == 0 {
            try w.drain()
            w.submit { (done: @escaping Completion<UInt64>) in
              do {
                try durable.wal.rotate { done($0.mapError { .unavailable("\($0)") }) }
              } catch {
                done(.failure(.unavailable("\(error)")))
              }
            }
          }
        }
        try w.drain()
      }
      durable.close()
    }
    let buildMillis = monotonicMillis() - t0
    // snapshot() leaves the active log segment (records it covers are skipped on open but
    // still read): the restart after a graceful stop. Then compact() (rotate, snapshot,
    // delete covered segments) so the timed opens load the snapshot alone.
    var restartMillis: Int64 = -1
    if snapshot {
      let start = monotonicMillis()
      let (durable, _) = try DurableStore.open(
        directory: directory, clock: SystemClock(), secret: secret, fsync: .none,
        truncateDamaged: false, log: quiet)
      restartMillis = monotonicMillis() - start
      _ = try durable.compact()
      durable.close()
    }
    var times: [Int64] = []
    var reports: [DurableStore.RecoveryReport] = []
    var scanMillis: Int64 = -1
    for _ in 0..<opens {
      let start = monotonicMillis()
      let (durable, report) = try DurableStore.open(
        directory: directory, clock: SystemClock(), secret: secret, fsync: .none,
        truncateDamaged: false, log: quiet)
      times.append(monotonicMillis() - start)
      if !snapshot && scanMillis < 0 {
        // What subcenterd does in the background after recovery: read every retained
        // segment into its summary (the first erasure after a start waits for it).
        let scanStart = monotonicMillis()
        _ = try durable.finishInterruptedErasure()
        scanMillis = monotonicMillis() - scanStart
      }
      durable.close()
      reports.append(report)
      for w in report.warnings { writeStderrLine("subcenter-bench: warning: \(w)") }
    }
    let median = times.sorted()[times.count / 2]
    let last = reports[reports.count - 1]
    let all = times.map(String.init).joined(separator: ",")
    if snapshot {
      print(
        "kind=snapshot persons=\(last.persons) records_replayed=\(last.recordsReplayed) "
          + "build_ms=\(buildMillis) restart_with_log_ms=\(restartMillis) "
          + "snapshot_load_ms=\(median) open_ms_all=\(all) "
          + "rss_kib=\(rssKiB())")
    } else {
      print(
        "kind=replay persons=\(persons) replay_records=\(last.recordsReplayed) "
          + "build_ms=\(buildMillis) replay_ms=\(median) open_ms_all=\(all) "
          + "segment_scan_ms=\(scanMillis) rss_kib=\(rssKiB())")
    }
    return 0
  }

  /// Durable Unsubscribes through the store alone: what the write path costs without
  /// gRPC, HTTP/2 and TLS (the server's log writer; records are applied on the store's
  /// applier thread, where subcenterd applies them on its first event loop).
  static func writes(directory: String, fsync: FsyncPolicy, inFlight: Int, seconds: Int) throws
    -> Int32
  {
    guard
      let durable = try openEmpty(
        directory, secret: Crypto.randomBytes(count: 32), fsync: fsync,
        preallocateLogBytes: WriteAheadLog.Options.serverPreallocateBytes)
    else { return 1 }
    defer { durable.close() }
    let store = durable.store
    let w = Pipeline(window: inFlight)
    w.submit {
      store.identify(
        IdentifyRequest(workspace: "default", personID: "bench"), actor: "bench", completion: $0)
    }
    try w.drain()
    let request = PreferenceRequest(
      workspace: "default", person: .personID("bench"), channel: "email", source: "bench")
    func run(for millis: Int64) throws -> Int {
      let start = monotonicMillis()
      var n = 0
      while monotonicMillis() - start < millis {
        w.submit {
          store.setPreference(request, state: .unsubscribed, actor: "bench", completion: $0)
        }
        n += 1
      }
      try w.drain()
      return n
    }
    _ = try run(for: 1000)  // warm-up
    let (cpu0, t0) = (cpuSeconds(), monotonicMillis())
    let n = try run(for: Int64(seconds) * 1000)
    let (cpu, elapsed) = (cpuSeconds() - cpu0, Double(monotonicMillis() - t0) / 1000)
    let log = durable.wal.status.counters
    print(
      "fsync=\(fsync) inflight=\(inFlight) writes=\(n) seconds=\(elapsed) "
        + "writes_per_sec=\(Int(Double(n) / elapsed)) cpu_seconds=\(cpu) "
        + "writes_per_cpu_sec=\(Int(Double(n) / cpu)) log_records=\(log.records) "
        + "log_syncs=\(log.syncs)")
    return 0
  }

  /// A DurableStore on `directory` (created if missing), which must hold none yet; nil,
  /// said on stderr, when it cannot be created or is not empty.
  static func openEmpty(
    _ directory: String, secret: [UInt8], fsync: FsyncPolicy, preallocateLogBytes: Int = 0
  ) throws -> DurableStore? {
    if mkdir(directory, 0o700) != 0 && errno != EEXIST {
      writeStderrLine("subcenter-bench: cannot create \(directory)")
      return nil
    }
    let (durable, report) = try DurableStore.open(
      directory: directory, clock: SystemClock(), secret: secret, fsync: fsync,
      truncateDamaged: false, preallocateLogBytes: preallocateLogBytes, log: { _ in })
    guard report.persons == 0 && report.recordsReplayed == 0 else {
      durable.close()
      writeStderrLine("subcenter-bench: \(directory) is not empty")
      return nil
    }
    return durable
  }

  /// The process's user + system CPU time.
  static func cpuSeconds() -> Double {
    var u = rusage()
    getrusage(RUSAGE_SELF.rawValue, &u)
    return Double(u.ru_utime.tv_sec + u.ru_stime.tv_sec)
      + Double(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6
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

/// Keeps up to `window` store writes in flight (their completions come from the log
/// writer's or the applier's thread; a full window blocks `submit` until one completes);
/// `drain` waits for all and throws the first failure.
final class Pipeline: Sendable {
  let window: Int
  let slots: DispatchSemaphore
  let failure = Mutex<CoreError?>(nil)

  init(window: Int = 1024) {
    self.window = window
    slots = DispatchSemaphore(value: window)
  }

  func submit<T>(_ body: (@escaping Completion<T>) -> Void) {
    slots.wait()
    body { r in
      if case .failure(let e) = r { self.failure.withLock { if $0 == nil { $0 = e } } }
      self.slots.signal()
    }
  }

  func drain() throws(CoreError) {
    for _ in 0..<window { slots.wait() }
    for _ in 0..<window { slots.signal() }
    if let e = failure.withLock({ $0 }) { throw e }
  }
}

/// Holds a completion's result (completions run synchronously in this tool).
final class ResultBox<T>: @unchecked Sendable {
  var result: Result<T, CoreError>?
}

extension Bench {
  /// `cycles` times: a person with six records, forgotten, then an erasure compaction
  /// (each starts a new segment, so segments pile up as under a steady rate of forgets,
  /// every one retained); prints the median compaction time of each 1,000.
  static func erasures(directory: String, cycles: Int) throws -> Int32 {
    let secret = Crypto.randomBytes(count: 32)
    guard let durable = try openEmpty(directory, secret: secret, fsync: .none) else { return 1 }
    let store = durable.store
    let w = Pipeline()
    var micros: [UInt64] = []
    for i in 0..<cycles {
      let person = PersonRef.personID("p\(i)")
      w.submit {
        store.identify(
          IdentifyRequest(workspace: "default", personID: "p\(i)"), actor: "b", completion: $0)
      }
      try w.drain()  // the person exists before its preferences are set
      for k in 0..<5 {
        w.submit {
          store.setPreference(
            PreferenceRequest(
              workspace: "default", person: person, channel: k % 2 == 0 ? "sms" : "email"),
            state: .unsubscribed, actor: "b", completion: $0)
        }
      }
      try w.drain()
      w.submit {
        store.forget(
          ForgetRequest(workspace: "default", person: person), actor: "b", completion: $0)
      }
      try w.drain()
      let start = DispatchTime.now().uptimeNanoseconds
      _ = try durable.compact()
      micros.append((DispatchTime.now().uptimeNanoseconds - start) / 1000)
      if micros.count == 1000 || i == cycles - 1 {
        print("erasures=\(i + 1) compaction_us_median=\(micros.sorted()[micros.count / 2])")
        micros = []
      }
    }
    durable.close()
    return 0
  }
}
