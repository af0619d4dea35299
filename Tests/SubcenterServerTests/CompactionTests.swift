// When erasure compactions run: soon after a forget, but not back to back under a steady
// trickle of forgets (each is a whole snapshot), and always within the erasure deadline.

import Dispatch
import Glibc
import SubcenterCore
import SubcenterStore
import SubcenterTestSupport
import Testing

@testable import SubcenterServer

@Suite struct CompactionTests {
  private let ms: UInt64 = 1_000_000
  private let second: UInt64 = 1_000_000_000

  @Test func aForgetAfterAQuietSpellIsCompactedAfterTheShortPause() {
    var s = ErasureSchedule(deadlineNanos: 60 * second)
    #expect(s.start(pendingSince: 5 * second) == 5 * second + 100 * ms)
    // The last compaction (2 s) ended 10 s ago: more than 3 x 2 s.
    s.ended(at: 10 * second, startedAt: 8 * second)
    #expect(s.start(pendingSince: 20 * second) == 20 * second + 100 * ms)
  }

  @Test func aForgetSoonAfterACompactionWaitsThreeTimesItsLength() {
    var s = ErasureSchedule(deadlineNanos: 60 * second)
    s.ended(at: 10 * second, startedAt: 8 * second)
    // Asked for 1 s after a 2 s compaction ended: starts 6 s after that end.
    #expect(s.start(pendingSince: 11 * second) == 16 * second)
    // Asked for right as it ended (it queued behind it): the same.
    #expect(s.start(pendingSince: 10 * second) == 16 * second)
  }

  @Test func theWaitNeverPassesAQuarterOfTheDeadline() {
    var s = ErasureSchedule(deadlineNanos: 60 * second)
    s.ended(at: 100 * second, startedAt: 80 * second)  // 20 s: 3 x 20 s is over 60 s / 4
    #expect(s.start(pendingSince: 101 * second) == 116 * second)
    // A deadline too short for a quarter of it to be a pause: the pause.
    var short = ErasureSchedule(deadlineNanos: 200 * ms)
    short.ended(at: 10 * second, startedAt: 9 * second)
    #expect(short.start(pendingSince: 10 * second) == 10 * second + 100 * ms)
  }

  /// Forgets every ~10 ms for 3 s while each compaction takes ~0.2 s (slow syncs): run back
  /// to back, ~12 compactions would take ~2.4 s of the 3; spaced, at most ~4 run. Each
  /// forget is erased within the deadline, and a waiting forget is answered.
  @Test func aTrickleOfForgetsDoesNotRunCompactionsBackToBack() throws {
    let fs = FaultyFileSystem()
    try fs.createDirectory("/data")
    let durable = try DurableStore.open(
      directory: "/data", fileSystem: fs, clock: SystemClock(),
      secret: [UInt8](repeating: 7, count: 32), fsync: .none, truncateDamaged: false,
      log: { _ in }
    ).0
    defer { durable.close() }
    let compaction = Compaction(
      durable: durable, snapshotIntervalSeconds: 3600, erasureDeadlineSeconds: 60, log: { _ in })
    defer { compaction.stop() }
    let store = durable.store
    _ = try awaitStoreCall {
      store.configureWorkspace(
        WorkspaceConfig(workspace: "acme", channels: ["email"]), actor: "admin", mayCreate: true,
        completion: $0)
    }.get()
    // One compaction alone, to know its length here (syncs are slow from now on).
    fs.setSyncLatency(microseconds: 40_000)
    let lone = try forget(store, "p0", compaction)
    _ = try awaitStoreCall { (done: @escaping Completion<UInt64>) in
      compaction.whenErased(through: lone) { r in done(r.mapError { .unavailable("\($0)") }) }
    }.get()
    let length = compaction.erasureStatus.lastSeconds
    #expect(length > 0.05, "a compaction with slow syncs took \(length) s")

    let before = durable.snapshotStatus.written
    let start = now()
    var last: UInt64 = 0
    var n = 1
    while now() - start < 3 * second {
      last = try forget(store, "p\(n)", compaction)
      n += 1
      usleep(10_000)
    }
    let busy = Double(durable.snapshotStatus.written - before) * length
    #expect(busy < 1.6, "\(durable.snapshotStatus.written - before) compactions of ~\(length) s")
    // The last forget is erased, within the deadline (well under it).
    _ = try awaitStoreCall { (done: @escaping Completion<UInt64>) in
      compaction.whenErased(through: last) { r in done(r.mapError { .unavailable("\($0)") }) }
    }.get()
    #expect(Double(now() - start) / 1e9 < 3 + 4 * length + 1)
  }

  private func now() -> UInt64 { DispatchTime.now().uptimeNanoseconds }

  /// Identifies and forgets `id`, then asks for its erasure; returns the seq to wait for.
  private func forget(_ store: SubscriptionStore, _ id: String, _ compaction: Compaction) throws
    -> UInt64
  {
    _ = try awaitStoreCall {
      store.identify(IdentifyRequest(workspace: "acme", personID: id), actor: "w", completion: $0)
    }.get()
    _ = try awaitStoreCall {
      store.forget(
        ForgetRequest(workspace: "acme", person: .personID(id)), actor: "p", completion: $0)
    }.get()
    return compaction.scheduleErasure()
  }
}
