// The whole durable store (DurableStore: the subscription store, its write-ahead log,
// snapshots, compaction and recovery) on the fault-injecting file system:
//
// - power loss at random points — including in the middle of a snapshot, its rename, and
//   the log segment rotation of `compact()` — then recovery: the recovered state is
//   exactly the acknowledged changes (plus, at most, the one write that was unanswered
//   when the power went), compared person by person with a model store that applied the
//   acknowledged changes only;
// - an fsync error: that write and every later one answer `unavailable`, reads go on, and
//   after a restart the state holds exactly the acknowledged changes;
// - a full disk: the write is refused with `unavailable`, nothing is half-applied, and
//   writes succeed again once there is space.

import Glibc
import SubcenterCore
import SubcenterStore
import SubcenterTestSupport
import Synchronization
import Testing

private let dsSecret = Array("durable-store-test-secret".utf8)
private let dsDirectory = "/data"

/// Channels email, sms, push; topic news; email limited to 3 sends a minute.
private let dsWorkspace = WorkspaceConfig(
  workspace: "acme", channels: ["email", "sms", "push"],
  topics: [Topic(id: "news", name: "News", defaultState: .subscribed)],
  limits: [MessageLimit(channel: "email", maxMessages: 3, windowSeconds: 60)],
  allowImportantOverride: false)

/// One write, with the time it happens at (both stores' clocks are set to it).
private enum DSOp: CustomStringConvertible {
  case configure
  case identify(String, email: String)
  case set(String, channel: String, topic: String, PreferenceState, source: String)
  case global(String, unsubscribed: Bool, source: String)
  case send(String)

  var description: String {
    switch self {
    case .configure: "configure acme"
    case .identify(let p, let e): "identify \(p) \(e)"
    case .set(let p, let c, let t, let s, let src): "set \(p) \(c)/\(t) \(s) \(src)"
    case .global(let p, let u, let src): "global \(p) \(u) \(src)"
    case .send(let p): "record_send \(p)"
    }
  }

  /// Applies it to `store`; the answer as text (to compare the two stores' answers).
  func apply(_ store: SubscriptionStore) -> Result<String, CoreError> {
    switch self {
    case .configure:
      return awaitStoreCall { c in
        store.configureWorkspace(dsWorkspace, actor: "admin", mayCreate: true) {
          c($0.map { "\($0)" })
        }
      }
    case .identify(let p, let email):
      return awaitStoreCall { c in
        store.identify(
          IdentifyRequest(workspace: "acme", personID: p, email: email), actor: "writer"
        ) { c($0.map { "\($0.personID) \($0.email)" }) }
      }
    case .set(let p, let channel, let topic, let state, let source):
      return awaitStoreCall { c in
        store.setPreference(
          PreferenceRequest(
            workspace: "acme", person: .personID(p), channel: channel, topic: topic,
            source: source, noticeVersion: ""), state: state, actor: "writer"
        ) { c($0.map { "\($0.entries)" }) }
      }
    case .global(let p, let unsubscribed, let source):
      return awaitStoreCall { c in
        store.setGlobal(
          GlobalRequest(workspace: "acme", person: .personID(p), source: source),
          unsubscribed: unsubscribed, actor: "writer"
        ) { c($0.map { "\($0.globalUnsubscribed)" }) }
      }
    case .send(let p):
      return awaitStoreCall { c in
        store.checkDelivery(
          DeliveryRequest(
            workspace: "acme", person: .personID(p), channel: "email", topic: "news",
            recordSend: true)
        ) { c($0.map { "\($0)" }) }
      }
    }
  }
}

/// The model: a store on an in-memory log that applied exactly the acknowledged writes,
/// in order, at the same times.
private final class DSModel {
  let clock = ManualClock(0)
  private(set) var store: SubscriptionStore
  private(set) var acknowledged: [(at: Int64, op: DSOp)] = []

  init() {
    store = SubscriptionStore(clock: clock, secret: dsSecret)
  }

  /// Applies an acknowledged write; its answer must be the durable store's.
  func acknowledge(_ op: DSOp, at: Int64) -> Result<String, CoreError> {
    acknowledged.append((at, op))
    clock.set(at)
    return op.apply(store)
  }

  /// The model plus one more write (the one unanswered at the power cut), built afresh.
  func with(_ op: DSOp, at: Int64) -> SubscriptionStore {
    let c = ManualClock(0)
    let s = SubscriptionStore(clock: c, secret: dsSecret)
    for (t, o) in acknowledged + [(at, op)] {
      c.set(t)
      _ = o.apply(s)
    }
    return s
  }

  /// Adopts the unanswered write (recovery found it durable).
  func adopt(_ op: DSOp, at: Int64) {
    _ = acknowledge(op, at: at)
  }

  var personIDs: [String] { store.persons(in: "acme").map(\.key.value) }
}

/// Opens the store on `fs`, restarting the file system after a crash during recovery.
private func dsOpen(_ fs: FaultyFileSystem, _ clock: ManualClock) throws -> DurableStore {
  for _ in 0..<5 {
    do {
      return try DurableStore.open(
        directory: dsDirectory, fileSystem: fs, clock: clock, secret: dsSecret, fsync: .always,
        truncateDamaged: false, log: { _ in }
      ).0
    } catch {
      guard fs.isDown else { throw error }
      fs.restart()
    }
  }
  throw StorageError(.io, "could not open the store")
}

private func dsFileSystem() throws -> FaultyFileSystem {
  let fs = FaultyFileSystem()
  try fs.createDirectory(dsDirectory)
  return fs
}

/// Compares two states: every person of workspace acme, field by field.
private func dsDifference(_ got: SubscriptionStore, _ want: SubscriptionStore) -> String? {
  let g = got.persons(in: "acme")
  let w = want.persons(in: "acme")
  if g == w { return nil }
  let gk = Set(g.map(\.key.value))
  let wk = Set(w.map(\.key.value))
  if gk != wk {
    return "persons \(gk.sorted()) recovered, \(wk.sorted()) acknowledged"
  }
  for (a, b) in zip(g, w) where a != b {
    return "person \(a.key.value) recovered as \(a), acknowledged as \(b)"
  }
  return "states differ"
}

@Suite(.serialized) struct DurableStorePowerLossTests {
  /// Picks the next write from what the model holds (only writes that are valid).
  private static func nextOp(_ rng: inout SplitMix64, _ model: DSModel, serial: Int) -> DSOp {
    let known = model.personIDs
    let roll = Int.random(in: 0..<100, using: &rng)
    if known.isEmpty || roll < 20 {
      let p = "p\(Int.random(in: 0..<10, using: &rng))"
      return .identify(p, email: "\(p).v\(serial)@example.com")
    }
    let p = known.randomElement(using: &rng)!
    switch roll {
    case 20..<65:
      let channel = ["", "email", "sms", "push"].randomElement(using: &rng)!
      let topic = channel.isEmpty ? "news" : ["", "news"].randomElement(using: &rng)!
      return .set(
        p, channel: channel, topic: topic, Bool.random(using: &rng) ? .subscribed : .unsubscribed,
        source: "s\(serial)")
    case 65..<75:
      return .global(p, unsubscribed: Bool.random(using: &rng), source: "g\(serial)")
    default:
      return .send(p)
    }
  }

  /// One seeded run: many power cycles on one file system.
  private func run(seed: UInt64, cycles: Int) throws -> (
    acked: Int, inflightKept: Int, crashes: Int
  ) {
    var rng = SplitMix64(seed: seed)
    let fs = try dsFileSystem()
    let clock = ManualClock(1_700_000_000_000)
    let model = DSModel()
    var serial = 0
    var inflightKept = 0

    for cycle in 0..<cycles {
      // Sometimes the power goes during recovery itself (its cut, sync, new segment).
      if cycle > 0 && Int.random(in: 0..<5, using: &rng) == 0 {
        fs.crash(
          afterOperations: Int.random(in: 1...6, using: &rng), seed: rng.next())
      }
      let durable = try dsOpen(fs, clock)
      fs.restart()  // clears a countdown that recovery did not reach
      if let problem = dsDifference(durable.store, model.store) {
        Issue.record("seed \(seed) cycle \(cycle): after recovery: \(problem)")
        durable.close()
        return (model.acknowledged.count, inflightKept, fs.crashes)
      }

      // Where the power goes this cycle.
      let opsThisCycle = Int.random(in: 1...25, using: &rng)
      let mode = Int.random(in: 0..<4, using: &rng)
      var armed = false
      if mode == 0 {
        // Anywhere: the n-th changing call from now.
        fs.crash(afterOperations: Int.random(in: 1...60, using: &rng), seed: rng.next())
        armed = true
      }

      var inflight: (op: DSOp, at: Int64)?
      for i in 0..<opsThisCycle {
        if fs.isDown { break }
        // Snapshots and compactions, sometimes with the power cut in the middle of one.
        let maintenance = Int.random(in: 0..<10, using: &rng)
        if maintenance < 2 {
          if !armed && (mode == 1 || mode == 2) && i >= opsThisCycle / 2 {
            // Every step of a snapshot or a compaction: create, write, sync, rename,
            // directory sync, deletions, and the rotation's new segment.
            fs.crash(afterOperations: Int.random(in: 1...14, using: &rng), seed: rng.next())
            armed = true
          }
          do {
            if maintenance == 0 || mode == 2 {
              _ = try durable.compact()
            } else {
              try durable.snapshot()
            }
          } catch {
            if !fs.isDown {
              Issue.record("seed \(seed) cycle \(cycle): snapshot failed without a crash: \(error)")
            }
            break
          }
          continue
        }
        if fs.isDown { break }
        serial += 1
        let op = Self.nextOp(&rng, model, serial: serial)
        clock.advance(by: Int64.random(in: 1...5_000, using: &rng))
        if model.acknowledged.isEmpty {
          // The first write of all configures the workspace.
          let r = DSOp.configure.apply(durable.store)
          guard case .success = r else { break }
          _ = model.acknowledge(.configure, at: clock.nowMillis())
          continue
        }
        let answer = op.apply(durable.store)
        switch answer {
        case .success(let text):
          let want = model.acknowledge(op, at: clock.nowMillis())
          if case .success(let w) = want, w == text {
          } else {
            Issue.record(
              "seed \(seed) cycle \(cycle): \(op) answered \(text), the model \(want)")
          }
        case .failure(let e):
          if e.kind != .unavailable || !fs.isDown {
            Issue.record(
              "seed \(seed) cycle \(cycle): \(op) failed without a crash: \(e)")
          }
          inflight = (op, clock.nowMillis())
        }
        if inflight != nil { break }
      }
      if !fs.isDown {
        // An idle power cut: what was acknowledged is synced, whatever else happens.
        fs.crash(seed: rng.next())
      }
      durable.close()
      fs.restart()

      // Recovery must give the acknowledged state, or that plus the unanswered write.
      let recovered = try dsOpen(fs, clock)
      if let problem = dsDifference(recovered.store, model.store) {
        if let inflight,
          dsDifference(recovered.store, model.with(inflight.op, at: inflight.at)) == nil
        {
          model.adopt(inflight.op, at: inflight.at)
          inflightKept += 1
        } else {
          let unanswered = inflight.map { "\($0.op)" } ?? "none"
          Issue.record(
            Comment(
              rawValue: "seed \(seed) cycle \(cycle) (mode \(mode), unanswered: \(unanswered)): "
                + problem))
          recovered.close()
          return (model.acknowledged.count, inflightKept, fs.crashes)
        }
      }
      recovered.close()
    }
    return (model.acknowledged.count, inflightKept, fs.crashes)
  }

  @Test(arguments: 1...8 as ClosedRange<UInt64>)
  func everyAcknowledgedChangeSurvivesPowerLoss(seed: UInt64) throws {
    let r = try run(seed: seed &* 0x9E37_79B9_7F4A_7C15, cycles: 40)
    #expect(r.crashes >= 40)
    #expect(r.acked > 40)
  }

  /// A power cut at every changing call of a snapshot and of a compaction (segment
  /// rotation, snapshot temp file, its sync, rename, directory sync, deletions).
  @Test func powerCutAtEveryStepOfSnapshotAndCompaction() throws {
    for compaction in [false, true] {
      for n in 1...20 {
        for keep in [nil, UInt64(n) * 7919] as [UInt64?] {
          let fs = try dsFileSystem()
          let clock = ManualClock(1_700_000_000_000)
          let model = DSModel()
          var durable = try dsOpen(fs, clock)
          var ops: [DSOp] = [.configure]
          for i in 0..<6 {
            ops.append(.identify("p\(i)", email: "p\(i)@example.com"))
            ops.append(.set("p\(i)", channel: "sms", topic: "", .unsubscribed, source: "a\(i)"))
          }
          for op in ops {
            clock.advance(by: 10)
            let r = op.apply(durable.store)
            #expect(throws: Never.self) { try r.get() }
            _ = model.acknowledge(op, at: clock.nowMillis())
          }
          if n % 2 == 0 {
            // A snapshot and more log before the one that is cut.
            try durable.snapshot()
            clock.advance(by: 10)
            let op = DSOp.global("p1", unsubscribed: true, source: "later")
            _ = try op.apply(durable.store).get()
            _ = model.acknowledge(op, at: clock.nowMillis())
          }
          fs.crash(afterOperations: n, seed: keep)
          do {
            if compaction { _ = try durable.compact() } else { try durable.snapshot(force: true) }
          } catch {
            #expect(fs.isDown, "snapshot failed without a crash: \(error)")
          }
          if !fs.isDown { fs.crash(seed: keep) }
          durable.close()
          fs.restart()
          durable = try dsOpen(fs, clock)
          if let problem = dsDifference(durable.store, model.store) {
            Issue.record(
              "compaction \(compaction), crash at call \(n), seed \(keep as Any): \(problem)")
          }
          // And it goes on: a write after recovery survives another power cut.
          clock.advance(by: 10)
          let op = DSOp.set("p2", channel: "email", topic: "news", .unsubscribed, source: "after")
          let r = op.apply(durable.store)
          #expect(throws: Never.self) { try r.get() }
          _ = model.acknowledge(op, at: clock.nowMillis())
          fs.crash(seed: keep)
          durable.close()
          fs.restart()
          durable = try dsOpen(fs, clock)
          if let problem = dsDifference(durable.store, model.store) {
            Issue.record("compaction \(compaction), crash at call \(n), second restart: \(problem)")
          }
          durable.close()
        }
      }
    }
  }
}

@Suite(.serialized) struct DurableStoreFaultTests {
  /// A store with workspace acme and persons p0…p2, and its model.
  private func populated() throws -> (FaultyFileSystem, ManualClock, DurableStore, DSModel) {
    let fs = try dsFileSystem()
    let clock = ManualClock(1_700_000_000_000)
    let model = DSModel()
    let durable = try dsOpen(fs, clock)
    var ops: [DSOp] = [.configure]
    for i in 0..<3 { ops.append(.identify("p\(i)", email: "p\(i)@example.com")) }
    ops.append(.set("p0", channel: "sms", topic: "", .unsubscribed, source: "first"))
    ops.append(.send("p1"))
    for op in ops {
      clock.advance(by: 10)
      _ = try op.apply(durable.store).get()
      _ = model.acknowledge(op, at: clock.nowMillis())
    }
    return (fs, clock, durable, model)
  }

  private func preferences(_ store: SubscriptionStore, _ p: String) throws -> Preferences {
    try store.preferences(workspace: "acme", person: .personID(p))
  }

  /// The data files (snapshots, log segments) that hold `text`.
  private func files(holding text: String, _ fs: FaultyFileSystem) throws -> [String] {
    let needle = Array(text.utf8)
    return try fs.list(dsDirectory).filter { name in
      guard let bytes = fs.contents(dsDirectory + "/" + name) else { return false }
      return bytes.count >= needle.count
        && (0...(bytes.count - needle.count)).contains {
          bytes[$0..<($0 + needle.count)].elementsEqual(needle)
        }
    }
  }

  /// A newest segment cut inside a record the snapshot holds is not a crash's torn write
  /// (every record a snapshot holds was synced first) but a copy cut short: start-up refuses
  /// it, naming the file and offset, rather than cutting it and losing the acknowledged
  /// records after the snapshot that the segment held; `--recover-truncate` starts from the
  /// snapshot.
  @Test func aNewestSegmentCutInsideRecordsTheSnapshotHoldsIsRefused() throws {
    let (fs, clock, durable, _) = try populated()
    _ = try durable.snapshot(force: true)
    _ = try DSOp.set("p2", channel: "sms", topic: "", .unsubscribed, source: "after")
      .apply(durable.store).get()  // acknowledged after the snapshot, in the same segment
    durable.close()
    let newest = try #require(
      try WALSegment.list(directory: dsDirectory, fileSystem: fs).max { $0.firstSeq < $1.firstSeq })
    let segment = newest.name
    let path = dsDirectory + "/" + segment
    let bytes = try #require(fs.contents(path))
    let scan = try WALSegment.scan(newest, directory: dsDirectory, fileSystem: fs)
    #expect(scan.records.count >= 3)
    let cut = scan.records[1].lowerBound + 2  // inside the second record, which the snapshot holds
    fs.setContents(path, Array(bytes[..<cut]))
    #expect {
      _ = try dsOpen(fs, clock)
    } throws: {
      guard let e = $0 as? StorageError else { return false }
      return e.kind == .damaged && e.file == segment && e.message.contains("cut short")
    }
    let (reopened, report) = try DurableStore.open(
      directory: dsDirectory, fileSystem: fs, clock: clock, secret: dsSecret, fsync: .always,
      truncateDamaged: true, log: { _ in })
    defer { reopened.close() }
    #expect(report.warnings.contains { $0.contains("torn record") }, "\(report.warnings)")
    #expect(try preferences(reopened.store, "p2").entries.isEmpty, "the change after it is lost")
  }

  /// A forget acknowledged right before a crash, whose compaction never ran or was cut
  /// short at any step, is finished after the restart: `finishInterruptedErasure`
  /// compacts, and no file holds the person's email any more. With nothing left to erase
  /// it does nothing.
  @Test func anErasureACrashInterruptedIsFinishedAfterTheRestart() throws {
    for n in [nil] + Array(1...16) as [Int?] {
      let (fs, clock, durable, _) = try populated()
      try durable.snapshot()
      clock.advance(by: 10)
      let forgot = awaitStoreCall { c in
        durable.store.forget(
          ForgetRequest(workspace: "acme", person: .personID("p1")), actor: "privacy"
        ) { c($0.map { "\($0)" }) }
      }
      #expect(throws: Never.self) { try forgot.get() }
      if let n {
        fs.crash(afterOperations: n)
        _ = try? durable.compact()
      }
      if !fs.isDown { fs.crash() }
      durable.close()
      fs.restart()
      let reopened = try dsOpen(fs, clock)
      #expect(try !files(holding: "p0@example.com", fs).isEmpty, "a person not forgotten stays")
      let before = try files(holding: "p1@example.com", fs)
      if n == nil { #expect(before.count >= 2, "the snapshot and the log hold p1: \(before)") }
      let seq = try reopened.finishInterruptedErasure()
      #expect((seq != nil) == !before.isEmpty, "compaction \(n as Any): \(before)")
      #expect(try files(holding: "p1@example.com", fs) == [], "compaction cut at step \(n as Any)")
      #expect(try reopened.finishInterruptedErasure() == nil)
      #expect(throws: CoreError.self) { try preferences(reopened.store, "p1") }
      reopened.close()
    }
  }

  /// After a start, the retained segments are read on several threads (into summaries,
  /// then the check for removed persons): among 30 segments, the one that still holds a
  /// forgotten person's records (a snapshot was written after the forget, no compaction)
  /// is found and rewritten, and every other person's records stay.
  @Test func theCheckAfterAStartFindsTheOneSegmentOfManyLeftToErase() throws {
    let (fs, clock, durable, _) = try populated()
    for k in 0..<30 {
      clock.advance(by: 10)
      let who = k == 17 ? "late" : "q\(k)"
      _ = try DSOp.identify(who, email: "\(who)@example.com").apply(durable.store).get()
      _ = try durable.compact()  // each leaves a segment of its own
    }
    let forgot = awaitStoreCall { c in
      durable.store.forget(
        ForgetRequest(workspace: "acme", person: .personID("late")), actor: "privacy"
      ) { c($0.map { "\($0)" }) }
    }
    #expect(throws: Never.self) { try forgot.get() }
    _ = try durable.snapshot(force: true)  // the erasure's snapshot, its rewrite never ran
    durable.close()
    let segments = try WALSegment.list(directory: dsDirectory, fileSystem: fs)
    #expect(segments.count > 30)
    let holding = try files(holding: "late@example.com", fs)
    #expect(holding.count == 1 && holding[0].hasPrefix("wal-"), "\(holding)")

    let reopened = try dsOpen(fs, clock)
    defer { reopened.close() }
    #expect(try reopened.finishInterruptedErasure() != nil)
    #expect(try files(holding: "late@example.com", fs) == [])
    for k in 0..<30 where k != 17 {
      #expect(try files(holding: "q\(k)@example.com", fs).contains { $0.hasPrefix("wal-") })
    }
    #expect(try reopened.finishInterruptedErasure() == nil)
  }

  @Test(arguments: [false, true])
  func fsyncErrorStopsEveryLaterWriteAndKeepsReads(powerCut: Bool) throws {
    let (fs, clock, durable, model) = try populated()
    let before = try preferences(durable.store, "p0")

    fs.fail(.sync, nth: 1, errno: EIO)
    clock.advance(by: 10)
    let failedAt = clock.nowMillis()
    let failing = DSOp.set("p0", channel: "email", topic: "", .unsubscribed, source: "lost")
    let r = failing.apply(durable.store)
    guard case .failure(let e) = r else {
      Issue.record("a write whose fsync failed was acknowledged: \(r)")
      return
    }
    #expect(e.kind == .unavailable)
    // Nothing of it was applied; reads are still served.
    #expect(try preferences(durable.store, "p0") == before)
    #expect(try durable.store.profile(workspace: "acme", person: .personID("p1")).personID == "p1")
    #expect(dsDifference(durable.store, model.store) == nil)

    // Every later write is refused too, although the disk "works" again: an fsync is
    // never retried and pretended.
    fs.clearFaults()
    for op in [
      DSOp.set("p1", channel: "push", topic: "", .unsubscribed, source: "later"),
      .identify("p9", email: "p9@example.com"), .send("p2"),
    ] {
      clock.advance(by: 10)
      let r = op.apply(durable.store)
      if case .failure(let e) = r {
        #expect(e.kind == .unavailable)
      } else {
        Issue.record("\(op) was acknowledged after the log failed: \(r)")
      }
    }
    #expect(durable.wal.status.failure != nil)
    #expect(try preferences(durable.store, "p0") == before)
    #expect(dsDifference(durable.store, model.store) == nil)
    // A snapshot of the in-memory state is still possible and holds the acknowledged state.

    if powerCut { fs.crash() }
    durable.close()
    fs.restart()
    let recovered = try dsOpen(fs, clock)
    defer { recovered.close() }
    if powerCut {
      // The record whose fsync failed never became durable.
      #expect(dsDifference(recovered.store, model.store) == nil)
    } else {
      // Without a power cut the file still holds the record the failed fsync was for (the
      // page cache keeps it, as Linux does), and recovery replays it: the write that was
      // answered UNAVAILABLE appears after the restart. At most that one write may appear…
      let problem = dsDifference(recovered.store, model.store)
      if problem != nil {
        #expect(dsDifference(recovered.store, model.with(failing, at: failedAt)) == nil)
      }
      // …and the state is exactly the acknowledged changes: the batch whose fsync failed
      // was cut off the segment, so a restart does not bring it back.
      #expect(problem == nil, "after restart: \(problem ?? "")")
    }
    // Writes work again after the restart.
    clock.advance(by: 10)
    _ = try DSOp.set("p2", channel: "sms", topic: "", .unsubscribed, source: "again").apply(
      recovered.store
    ).get()
  }

  /// A closed store and everything it holds are freed: nothing keeps a reference cycle
  /// alive (the change feed's look-up of a workspace's last event once held the store,
  /// which holds the feed through its commit log: every store a process opened, 240 MB
  /// for a million persons, stayed in memory, and later opens in the process got slower).
  @Test func aClosedStoreIsFreed() throws {
    weak var store: SubscriptionStore?
    weak var wal: WriteAheadLog?
    weak var feed: ChangeFeed?
    do {
      let (_, _, durable, _) = try populated()
      (store, wal, feed) = (durable.store, durable.wal, durable.changeFeed)
      durable.close()
    }
    #expect(store == nil, "the subscription store outlived its closed DurableStore")
    #expect(wal == nil, "the write-ahead log outlived its closed DurableStore")
    #expect(feed == nil, "the change feed outlived its closed DurableStore")
  }

  /// What /metrics shows of snapshots: the newest one's seq and when it was written
  /// move with each snapshot; a failed one is counted and moves neither.
  @Test func snapshotStatusFollowsSnapshotsAndCountsFailures() throws {
    let (fs, clock, durable, _) = try populated()
    defer { durable.close() }
    let fresh = durable.snapshotStatus
    #expect(fresh.seq == 0 && fresh.writtenAt == 0 && fresh.written == 0 && fresh.failed == 0)

    clock.advance(by: 1000)
    let seq = try durable.snapshot()
    var status = durable.snapshotStatus
    #expect(status.seq == seq && seq > 0)
    let firstAt = clock.nowMillis()
    #expect(status.writtenAt == firstAt)
    #expect((status.written, status.failed) == (1, 0))

    clock.advance(by: 10)
    _ = try DSOp.identify("p9", email: "p9@example.com").apply(durable.store).get()
    fs.setFreeSpace(0)
    clock.advance(by: 1000)
    #expect(throws: StorageError.self) { try durable.snapshot() }
    status = durable.snapshotStatus
    #expect(status.seq == seq && status.writtenAt == firstAt)
    #expect((status.written, status.failed) == (1, 1))

    fs.setFreeSpace(nil)
    let next = try durable.snapshot()
    #expect(next > seq)
    #expect(durable.snapshotStatus.seq == next)
    #expect(durable.snapshotStatus.written == 2)
  }

  /// Data read under another server secret would look intact while every suppression
  /// silently stopped matching (a secret.key restored from another server's backup, or a
  /// fresh one beside copied data): a snapshot names its secret, and recovery refuses
  /// another one, naming the snapshot. A snapshot written before it named one loads.
  @Test func aSnapshotIsNotReadUnderAnotherSecret() throws {
    let (fs, clock, durable, _) = try populated()
    let seq = try durable.snapshot()
    durable.close()
    func open(_ secret: [UInt8]) throws(StorageError) -> DurableStore {
      try DurableStore.open(
        directory: dsDirectory, fileSystem: fs, clock: clock, secret: secret, fsync: .always,
        truncateDamaged: false, log: { _ in }
      ).0
    }
    let refused = #expect(throws: StorageError.self) { try open(Array("another".utf8)) }
    #expect(refused?.kind == .wrongSecret)
    #expect(refused?.message.contains(SnapshotFile.fileName(seq: seq)) == true, "\(refused!)")
    let reopened = try open(dsSecret)
    #expect(reopened.store.persons(in: "acme").count == 3)
    reopened.close()

    // Damage after the check (the trailer's checksum) does not let another secret through
    // by falling back to the log: the intact check is believed.
    let path = dsDirectory + "/" + SnapshotFile.fileName(seq: seq)
    let intact = try #require(fs.contents(path))
    var damaged = intact
    damaged[damaged.count - 1] ^= 0xFF
    fs.setContents(path, damaged)
    let stillRefused = #expect(throws: StorageError.self) { try open(Array("another".utf8)) }
    #expect(stillRefused?.kind == .wrongSecret)
    fs.setContents(path, intact)

    // A snapshot without the check (as written before it existed) is read as before.
    let name = SnapshotFile.fileName(seq: seq)
    var records: [SnapshotRecord] = []
    try SnapshotFile.read(name, directory: dsDirectory, fileSystem: fs) { records.append($0) }
    #expect(records.first.map { if case .secretCheck = $0 { true } else { false } } == true)
    try fs.removeFiles([name], in: dsDirectory)
    let writer = try SnapshotWriter(directory: dsDirectory, seq: seq, fileSystem: fs)
    for r in records.dropFirst() { try writer.append(r) }
    _ = try writer.commit()
    let old = try open(Array("another".utf8))
    #expect(old.store.persons(in: "acme").count == 3)
    // Its format is older: the next snapshot is written though nothing changed (then
    // with the check of the secret in use), and the one after that is not.
    #expect(old.snapshotStatus.olderFormat && old.snapshotStatus.written == 0)
    #expect(try old.snapshot() == seq)
    #expect(!old.snapshotStatus.olderFormat && old.snapshotStatus.written == 1)
    records = []
    try SnapshotFile.read(name, directory: dsDirectory, fileSystem: fs) { records.append($0) }
    #expect(
      records.first == .secretCheck(IdentifierHasher(secret: Array("another".utf8)).secretCheck))
    #expect(try old.snapshot() == seq)
    #expect(old.snapshotStatus.written == 1)
    old.close()
    // A snapshot in the present format is not rewritten when nothing changed.
    let current = try open(Array("another".utf8))
    #expect(!current.snapshotStatus.olderFormat)
    #expect(try current.snapshot() == seq)
    #expect(current.snapshotStatus.written == 0)
    current.close()
  }

  @Test func diskFullRefusesTheWriteAndResumesWhenSpaceIsBack() throws {
    let (fs, clock, durable, model) = try populated()
    let before = try preferences(durable.store, "p0")

    fs.setFreeSpace(10)
    for op in [
      DSOp.set("p0", channel: "email", topic: "", .unsubscribed, source: "full"),
      .identify("p7", email: "p7@example.com"), .send("p1"),
      .global("p2", unsubscribed: true, source: "full"),
    ] {
      clock.advance(by: 10)
      let r = op.apply(durable.store)
      if case .failure(let e) = r {
        #expect(e.kind == .unavailable)
      } else {
        Issue.record("\(op) was acknowledged on a full disk: \(r)")
      }
    }
    // Nothing half-applied; reads served.
    #expect(try preferences(durable.store, "p0") == before)
    #expect(dsDifference(durable.store, model.store) == nil)
    // A snapshot cannot be written either, and leaves nothing behind.
    #expect(throws: StorageError.self) { try durable.snapshot(force: true) }

    // Space is back: writes resume by themselves (no restart).
    fs.setFreeSpace(nil)
    var resumed = false
    for _ in 0..<200 {
      clock.advance(by: 10)
      let op = DSOp.set("p0", channel: "email", topic: "", .unsubscribed, source: "space")
      if case .success = op.apply(durable.store) {
        _ = model.acknowledge(op, at: clock.nowMillis())
        resumed = true
        break
      }
      usleep(1000)
    }
    #expect(resumed, "writes did not resume once space was back")
    clock.advance(by: 10)
    let op = DSOp.send("p1")
    _ = try op.apply(durable.store).get()
    _ = model.acknowledge(op, at: clock.nowMillis())
    try durable.snapshot()
    #expect(dsDifference(durable.store, model.store) == nil)

    // After a power cut, exactly the acknowledged changes.
    fs.crash(seed: 42)
    durable.close()
    fs.restart()
    let recovered = try dsOpen(fs, clock)
    defer { recovered.close() }
    #expect(dsDifference(recovered.store, model.store) == nil)
  }

  @Test func diskFullDuringTheSegmentHeaderOfARotation() throws {
    let (fs, clock, durable, model) = try populated()
    fs.setFreeSpace(4)
    #expect(throws: StorageError.self) { _ = try durable.compact() }
    fs.setFreeSpace(nil)
    var ok = false
    for _ in 0..<200 {
      clock.advance(by: 10)
      let op = DSOp.global("p1", unsubscribed: true, source: "after-rotation")
      if case .success = op.apply(durable.store) {
        _ = model.acknowledge(op, at: clock.nowMillis())
        ok = true
        break
      }
      usleep(1000)
    }
    #expect(ok, "writes did not resume after a rotation refused for lack of space")
    _ = try durable.compact()
    fs.crash()
    durable.close()
    fs.restart()
    let recovered = try dsOpen(fs, clock)
    defer { recovered.close() }
    #expect(dsDifference(recovered.store, model.store) == nil)
  }
}
