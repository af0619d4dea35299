// The deferred-commit rule (Store+Commit.swift) on a log that completes only when told:
// a change is invisible until durable, validation counts the commands in flight (one
// winner per identifier, no limit overrun), a failed batch leaves nothing behind, calls
// complete in log order, replay and snapshots reproduce the state.

import Dispatch
import Glibc
import SubcenterCore
import Synchronization
import Testing

@testable import SubcenterStore

/// One call's answer, as it arrives.
final class Call<T: Sendable>: Sendable {
  private let box = Mutex<Result<T, CoreError>?>(nil)

  var completion: Completion<T> {
    { r in
      self.box.withLock {
        precondition($0 == nil, "completed twice")
        $0 = r
      }
    }
  }

  var done: Bool { box.withLock { $0 != nil } }
  var result: Result<T, CoreError>? { box.withLock { $0 } }

  func get() throws(CoreError) -> T {
    guard let r = result else { throw .unavailable("not completed") }
    return try r.get()
  }

  var error: CoreError? {
    guard case .failure(let e) = result else { return nil }
    return e
  }
}

/// A store on a `DeferredCommitLog`, with workspace acme configured and durable.
final class Deferred: Sendable {
  let clock = ManualClock(t0)
  let log: DeferredCommitLog
  let store: SubscriptionStore

  init(_ config: WorkspaceConfig = acme, appliesElsewhere: Bool = false) {
    log = DeferredCommitLog(appliesElsewhere: appliesElsewhere)
    store = SubscriptionStore(
      clock: clock, secret: secret, log: log, createDefaultWorkspace: false)
    let c = Call<WorkspaceConfig>()
    store.configureWorkspace(config, actor: "admin", mayCreate: true, completion: c.completion)
    log.complete()
    precondition(waitUntil { c.done })
  }

  /// Completes everything queued and waits for `call` (a setup step made durable).
  @discardableResult
  func durable<T>(_ call: Call<T>) -> Call<T> {
    log.complete()
    #expect(waitUntil { call.done })
    return call
  }

  func identify(
    _ personID: String = "", email: String = "", phone: String = "", anonymousID: String = ""
  ) -> Call<Profile> {
    let c = Call<Profile>()
    store.identify(
      IdentifyRequest(
        workspace: "acme", personID: personID, email: email, phone: phone,
        anonymousID: anonymousID), actor: "w", completion: c.completion)
    return c
  }

  func set(_ ref: PersonRef, _ state: PreferenceState, channel: String = "", topic: String = "")
    -> Call<Preferences>
  {
    let c = Call<Preferences>()
    store.setPreference(
      PreferenceRequest(workspace: "acme", person: ref, channel: channel, topic: topic),
      state: state, actor: "w", completion: c.completion)
    return c
  }

  func global(_ ref: PersonRef, unsubscribed: Bool) -> Call<Preferences> {
    let c = Call<Preferences>()
    store.setGlobal(
      GlobalRequest(workspace: "acme", person: ref), unsubscribed: unsubscribed, actor: "w",
      completion: c.completion)
    return c
  }

  func check(_ ref: PersonRef, channel: String = "email", record: Bool = false) -> Call<Decision> {
    let c = Call<Decision>()
    store.checkDelivery(
      DeliveryRequest(workspace: "acme", person: ref, channel: channel, recordSend: record),
      completion: c.completion)
    return c
  }

  func batch(_ refs: [PersonRef], record: Bool = false) -> Call<[Decision]> {
    let c = Call<[Decision]>()
    store.checkDeliveryBatch(
      DeliveryBatchRequest(workspace: "acme", channel: "email", persons: refs, recordSend: record),
      completion: c.completion)
    return c
  }

  func override(_ ref: PersonRef) -> Call<Decision> {
    let c = Call<Decision>()
    store.overrideForImportantMessage(
      OverrideRequest(
        workspace: "acme", person: ref, channel: "email", messageID: "m", justification: "j"),
      actor: "oncall", completion: c.completion)
    return c
  }

  func forget(_ ref: PersonRef, alsoSuppress: Bool = false) -> Call<ForgetResult> {
    let c = Call<ForgetResult>()
    store.forget(
      ForgetRequest(workspace: "acme", person: ref, alsoSuppress: alsoSuppress), actor: "p",
      completion: c.completion)
    return c
  }

  func suppress(_ ids: [Identifier]) -> Call<SuppressResult> {
    let c = Call<SuppressResult>()
    store.suppress(
      SuppressRequest(workspace: "acme", identifiers: ids), actor: "p", completion: c.completion)
    return c
  }

  func unsuppress(_ ids: [Identifier]) -> Call<SuppressResult> {
    let c = Call<SuppressResult>()
    store.unsuppress(
      SuppressRequest(workspace: "acme", identifiers: ids), actor: "a", completion: c.completion)
    return c
  }

  func profile(_ ref: PersonRef) throws(CoreError) -> Profile {
    try store.profile(workspace: "acme", person: ref)
  }

  /// Nothing is reserved any more (every command in flight has been applied or failed).
  var settled: Bool {
    let shardsClear = store.shards.allSatisfy { $0.withLock { $0.pending.isEmpty } }
    let handles = store.registry.withLock { reg in
      precondition(reg.pending.isEmpty)
      return Array(reg.byID.values)
    }
    return shardsClear && handles.allSatisfy { $0.identity.withLock { $0.pending.isEmpty } }
  }
}

/// Replays `commands` into a fresh store.
func replay(_ commands: [Command]) throws(CoreError) -> SubscriptionStore {
  let copy = SubscriptionStore(
    clock: ManualClock(0), secret: secret, log: InMemoryCommitLog(),
    createDefaultWorkspace: false)
  for (i, c) in commands.enumerated() { try copy.replay(c, seq: UInt64(i + 1)) }
  return copy
}

@Suite struct DeferredCommitTests {
  @Test func changesAreInvisibleUntilDurable() throws {
    let d = Deferred()
    let created = d.identify("u1", email: "u1@x.com")
    #expect(!created.done && d.log.queued == 1)
    #expect(failure { () throws(CoreError) in try d.profile(.personID("u1")) }?.kind == .notFound)
    #expect(
      failure { () throws(CoreError) in try d.profile(.email("u1@x.com")) }?.kind == .notFound)
    #expect(d.store.persons(in: "acme").isEmpty)
    d.log.complete()
    #expect(try created.get().email == "u1@x.com")
    #expect(try d.profile(.email("u1@x.com")).personID == "u1")

    // A preference change: the writer waits, readers keep the committed state and never
    // wait on the log.
    let unsubscribed = d.set(.personID("u1"), .unsubscribed, channel: "email")
    #expect(!unsubscribed.done)
    let read = d.check(.personID("u1"))
    #expect(read.done, "a read answers at once")
    #expect(try read.get().reason == .subscribed)
    #expect(try d.store.preferences(workspace: "acme", person: .personID("u1")).entries.isEmpty)
    #expect(
      try d.store.history(HistoryRequest(workspace: "acme", person: .personID("u1"))).entries.count
        == 1)
    d.log.complete()
    #expect(try unsubscribed.get().entries.map(\.channel) == ["email"])
    #expect(try d.check(.personID("u1")).get().reason == .channelUnsubscribed)

    // Without a limit on the channel a record_send check counts nothing: a read.
    #expect(d.check(.personID("u1"), channel: "sms", record: true).done)
    // Global flag, override, forget: each invisible until durable.
    let global = d.global(.personID("u1"), unsubscribed: true)
    let override = d.override(.personID("u1"))
    #expect(!global.done && !override.done && d.log.queued == 2)
    #expect(try d.check(.personID("u1"), channel: "sms").get().reason == .subscribed)
    d.log.complete()
    #expect(try global.get().globalUnsubscribed)
    #expect(try override.get().reason == .overriddenImportant)
    let forgotten = d.forget(.personID("u1"))
    #expect(try d.profile(.personID("u1")).personID == "u1")
    d.log.complete()
    #expect(try forgotten.get().personID == "u1")
    #expect(try d.check(.personID("u1")).get().reason == .unknownPerson)
    #expect(d.settled)
    #expect(d.store.lastAppliedSeq == d.log.lastSequence)
  }

  @Test func twoClaimsOfOneEmailInFlight() throws {
    let d = Deferred()
    let first = d.identify("u1", email: "race@x.com")
    let second = d.identify("u2", email: "RACE@x.com")
    #expect(d.log.queued == 1, "exactly one passed validation")
    #expect(!first.done && !second.done, "the refusal waits for the claim it saw")
    d.log.complete()
    #expect(try first.get().personID == "u1")
    #expect(second.error?.kind == .alreadyExists && second.error?.field == "email")

    // The same for a phone and an anonymous id; and when the claim fails, so does the
    // refusal that depended on it, and the identifier is free afterwards.
    let a = d.identify("u3", phone: "+14155550100", anonymousID: "c1")
    let b = d.identify("u4", phone: "+14155550100")
    let c = d.identify("u5", anonymousID: "c1")
    let e = d.identify(anonymousID: "c1")
    #expect(d.log.queued == 1 && !b.done && !c.done && !e.done)
    d.log.fail()
    #expect(a.error?.kind == .unavailable)
    #expect(b.error?.kind == .unavailable && c.error?.kind == .unavailable)
    #expect(e.error?.kind == .unavailable)
    #expect(d.settled)
    let retry = d.identify("u4", phone: "+14155550100", anonymousID: "c1")
    d.log.complete()
    #expect(try retry.get().anonymousIDs == ["c1"])
    #expect(d.store.persons(in: "acme").map(\.key) == [.person("u1"), .person("u4")])

    // An email released in flight may be claimed at once: the claim goes in the log after
    // the release. If the release fails, the claim fails with it.
    let moved = d.identify("u1", email: "new@x.com")
    let taker = d.identify("u9", email: "race@x.com")
    #expect(d.log.queued == 2)
    d.log.fail()
    #expect(moved.error?.kind == .unavailable && taker.error?.kind == .unavailable)
    #expect(try d.profile(.email("race@x.com")).personID == "u1")
    let moved2 = d.identify("u1", email: "new@x.com")
    let taker2 = d.identify("u9", email: "race@x.com")
    d.log.complete()
    #expect(try moved2.get().email == "new@x.com")
    #expect(try taker2.get().email == "race@x.com")
    #expect(try d.profile(.email("race@x.com")).personID == "u9")
    #expect(d.settled)
  }

  @Test func oneWinnerPerIdentifierWithABackgroundWriter() throws {
    let d = Deferred()
    d.log.startWriter()
    for round in 0..<30 {
      let wins = Atomic<Int>(0)
      let conflicts = Atomic<Int>(0)
      DispatchQueue.concurrentPerform(iterations: 8) { i in
        do {
          _ = try sync {
            d.store.identify(
              IdentifyRequest(
                workspace: "acme", personID: "p\(round)-\(i)", email: "r\(round)@x.com"),
              actor: "t", completion: $0)
          }
          wins.add(1, ordering: .relaxed)
        } catch {
          #expect((error as? CoreError)?.kind == .alreadyExists)
          conflicts.add(1, ordering: .relaxed)
        }
      }
      #expect(wins.load(ordering: .relaxed) == 1, "round \(round)")
      #expect(conflicts.load(ordering: .relaxed) == 7)
    }
    d.log.stopWriter()
    #expect(d.store.persons(in: "acme").count == 30)
    #expect(d.settled)
  }

  @Test func recordSendNeverExceedsTheLimit() throws {
    let d = Deferred()
    _ = d.identify("u1", anonymousID: "c1")
    d.log.complete()
    // Limit: 2 email sends a minute.
    let checks = (0..<5).map { _ in d.check(.personID("u1"), record: true) }
    #expect(d.log.queued == 2, "two sends in flight reach the limit")
    #expect(checks.allSatisfy { !$0.done }, "every decision waits for the sends it counted")
    let batch = d.batch([.personID("u1"), .anonymousID("c1")], record: true)
    #expect(!batch.done && d.log.queued == 2)
    let read = d.check(.personID("u1"))
    #expect(try read.get().reason == .subscribed, "readers see only durable sends")
    d.log.complete()
    #expect(
      try checks.map { try $0.get().reason } == [
        .subscribed, .subscribed, .messageLimitReached, .messageLimitReached, .messageLimitReached,
      ])
    #expect(try batch.get().map(\.reason) == [.messageLimitReached, .messageLimitReached])
    #expect(try d.check(.personID("u1")).get().reason == .messageLimitReached)

    // Sends in flight that fail take the refusals that counted them along, and count
    // nothing.
    d.clock.advance(by: 60_000)
    let a = d.check(.personID("u1"), record: true)
    let b = d.batch([.personID("u1"), .personID("u1")], record: true)
    #expect(d.log.queued == 2)
    d.log.fail()
    #expect(a.error?.kind == .unavailable && b.error?.kind == .unavailable)
    #expect(d.settled)
    #expect(try d.check(.personID("u1")).get().reason == .subscribed, "nothing was counted")
  }

  @Test func recordSendUnderThreadsWithABackgroundWriter() throws {
    let d = Deferred()
    for i in 0..<4 { _ = d.identify("p\(i)", email: "p\(i)@x.com") }
    d.log.complete()
    d.log.startWriter(intervalMicros: 50)
    let allowed = Atomic<Int>(0)
    DispatchQueue.concurrentPerform(iterations: 8) { t in
      for k in 0..<60 {
        let ref: PersonRef = k % 2 == 0 ? .personID("p\(k % 4)") : .email("p\(k % 4)@x.com")
        do {
          if k % 3 == 0 {
            let ds = try sync {
              d.store.checkDeliveryBatch(
                DeliveryBatchRequest(
                  workspace: "acme", channel: "email", persons: [ref, ref, .personID("p\(t % 4)")],
                  recordSend: true), completion: $0)
            }
            allowed.add(ds.count { $0.allowed }, ordering: .relaxed)
          } else {
            let dec = try sync {
              d.store.checkDelivery(
                DeliveryRequest(workspace: "acme", person: ref, channel: "email", recordSend: true),
                completion: $0)
            }
            if dec.allowed { allowed.add(1, ordering: .relaxed) }
          }
        } catch {
          Issue.record("unexpected \(error)")
        }
      }
    }
    d.log.stopWriter()
    #expect(allowed.load(ordering: .relaxed) == 8, "2 sends for each of 4 persons")
    var counted = 0
    for case .recordSends(let c) in d.log.commands { counted += c.persons.count }
    #expect(counted == 8)
    #expect(d.settled)
  }

  @Test func aFailedBatchLeavesNothingAndWritesResume() throws {
    let d = Deferred()
    _ = d.identify("u1", email: "u1@x.com", anonymousID: "c1")
    _ = d.identify(anonymousID: "c2")
    d.log.complete()
    let before = d.store.persons(in: "acme")
    let configs = d.store.workspaceConfigs()

    let calls: [(String, () -> CoreError?)] = {
      let a = d.identify("u2", email: "u2@x.com")
      let b = d.identify("u1", phone: "+14155550100", anonymousID: "c2")
      let c = d.set(.personID("u1"), .unsubscribed, channel: "sms")
      let e = d.global(.email("u1@x.com"), unsubscribed: true)
      let f = d.check(.personID("u1"), record: true)
      let g = d.override(.personID("u1"))
      let h = d.suppress([Identifier(kind: .email, value: "x@y.z")])
      let i = d.forget(.anonymousID("c1"), alsoSuppress: true)
      let j = Call<WorkspaceConfig>()
      d.store.configureWorkspace(
        WorkspaceConfig(workspace: "new"), actor: "a", mayCreate: true, completion: j.completion)
      return [
        ("identify", { a.error }), ("merge", { b.error }), ("set", { c.error }),
        ("global", { e.error }), ("send", { f.error }), ("override", { g.error }),
        ("suppress", { h.error }), ("forget", { i.error }), ("configure", { j.error }),
      ]
    }()
    #expect(d.log.queued == 9)
    d.log.fail()
    for (name, error) in calls { #expect(error()?.kind == .unavailable, "\(name)") }
    #expect(d.settled)
    #expect(d.store.persons(in: "acme") == before)
    #expect(d.store.suppressionHashes(in: "acme").isEmpty)
    #expect(d.store.workspaceConfigs() == configs)
    #expect(d.store.lastAppliedSeq == d.log.lastSequence)

    // Later writes work, and see nothing of the failed ones.
    let again = d.identify("u3", email: "u2@x.com")
    let merge = d.identify("u1", anonymousID: "c2")
    let sends = (0..<3).map { _ in d.check(.email("u1@x.com"), record: true) }
    d.log.complete()
    #expect(try again.get().personID == "u3")
    #expect(try merge.get().anonymousIDs == ["c1", "c2"])
    #expect(try sends.map { try $0.get().allowed } == [true, true, false])
  }

  @Test func completionsArriveInLogOrder() throws {
    let d = Deferred()
    for i in 0..<10 { _ = d.identify("p\(i)") }
    d.log.complete()
    let order = Mutex<[Int]>([])
    var rng = SplitMix(seed: 7)
    for k in 0..<60 {
      let ref = PersonRef.personID("p\(rng.next() % 10)")
      let note: @Sendable (Any) -> Void = { _ in order.withLock { $0.append(k) } }
      switch k % 3 {
      case 0:
        d.store.setPreference(
          PreferenceRequest(workspace: "acme", person: ref, channel: "sms"), state: .unsubscribed,
          actor: "w", completion: note)
      case 1:
        d.store.setGlobal(
          GlobalRequest(workspace: "acme", person: ref), unsubscribed: k % 2 == 0, actor: "w",
          completion: note)
      default:
        d.store.overrideForImportantMessage(
          OverrideRequest(
            workspace: "acme", person: ref, channel: "push", messageID: "m\(k)",
            justification: "j"), actor: "w", completion: note)
      }
    }
    #expect(d.log.queued == 60)
    while d.log.queued > 0 { d.log.complete(7) }
    #expect(order.withLock { $0 } == Array(0..<60))
  }

  @Test func durableRecordsAreAppliedWhereTheExecutorSaysUntilItRefuses() throws {
    let d = Deferred(appliesElsewhere: true)
    let identified = d.identify("u1")
    d.log.complete()
    #expect(waitUntil { identified.done }, "applied on the store's queue: no executor yet")
    // An executor that keeps the drains it is handed until the test runs them.
    let held = Mutex<(accepting: Bool, tasks: [@Sendable () -> Void])>((true, []))
    d.store.applyDurableRecords { task in
      held.withLock { h in
        if h.accepting { h.tasks.append(task) }
        return h.accepting
      }
    }
    let first = d.set(.personID("u1"), .unsubscribed, channel: "email")
    let second = d.set(.personID("u1"), .unsubscribed, channel: "sms")
    d.log.complete()
    let drains = held.withLock { h in
      defer { h.tasks = [] }
      return h.tasks
    }
    #expect(drains.count == 1, "one drain for a batch")
    #expect(!first.done && !second.done, "not applied before the executor runs the drain")
    #expect(try d.store.preferences(workspace: "acme", person: .personID("u1")).entries.isEmpty)
    for task in drains { task() }
    #expect(try first.get().entries.map(\.channel) == ["email"])
    #expect(try second.get().entries.map(\.channel).sorted() == ["email", "sms"])

    // Once it refuses (its loop stopped), the store's own queue applies them.
    held.withLock { $0.accepting = false }
    let third = d.set(.personID("u1"), .unsubscribed, channel: "push")
    d.log.complete()
    #expect(waitUntil { third.done })
    #expect(try third.get().entries.count == 3)
    #expect(held.withLock { $0.tasks.isEmpty })
    #expect(d.settled)
  }

  /// A durable record whose completion arrives while its `append` is still running is
  /// handed to the applier before the appender can learn of the arrival: `appendReturned`
  /// (after which the appender drains) waits until the hand-off is done. When the
  /// completing thread queued the record only after `arrive` had returned, an appender
  /// slipping in between drained an empty queue and the call waited for some later drain
  /// (found by the power-loss test under load: a write left unanswered on an idle store).
  @Test func aRecordArrivingDuringItsAppendIsQueuedBeforeTheAppenderSeesIt() throws {
    let store = SubscriptionStore(
      clock: ManualClock(t0), secret: secret, log: InMemoryCommitLog(),
      createDefaultWorkspace: false)
    let c = PendingCommit(
      command: .configureWorkspace(.init(config: acme, at: t0, actor: "admin")),
      scope: LockScope(), reservations: Reservations(), store: store,
      answer: AnswerClosure(completion: { (_: Result<Bool, CoreError>) in }) { _, _ in
        .success(true)
      })
    let handingOff = DispatchSemaphore(value: 0)
    let queued = Atomic<Bool>(false)
    let arrival = Mutex<PendingCommit.Arrival?>(nil)
    DispatchQueue.global().async {
      let a = c.arrive(.success(1)) {
        handingOff.signal()
        usleep(100_000)  // a slow hand-off: the appender returns from append meanwhile
        queued.store(true, ordering: .releasing)
      }
      arrival.withLock { $0 = a }
    }
    handingOff.wait()
    try c.appendReturned()
    let queuedFirst = queued.load(ordering: .acquiring)
    #expect(
      queuedFirst, "the appender went on before the record was queued")
    #expect(waitUntil { arrival.withLock { $0 } == .duringAppend })

    // A failure during append is not queued (append throws it instead), and a record
    // arriving after append returned is the applier's to schedule, not queued here.
    let failed = PendingCommit(
      command: .configureWorkspace(.init(config: acme, at: t0, actor: "admin")),
      scope: LockScope(), reservations: Reservations(), store: store,
      answer: AnswerClosure(completion: { (_: Result<Bool, CoreError>) in }) { _, _ in
        .success(true)
      })
    var handedOff = 0
    #expect(failed.arrive(.failure(.unavailable("disk"))) { handedOff += 1 } == .failedDuringAppend)
    #expect(throws: CoreError.self) { try failed.appendReturned() }
    #expect(c.arrive(.success(2)) { handedOff += 1 } == .afterAppend)
    #expect(handedOff == 0)
  }

  /// A drain out of time (a budget of 0: one record) leaves the rest to a drain it
  /// schedules, so the executor's thread gets back to its own work between them; nothing
  /// is lost or reordered.
  @Test func aDrainOutOfTimeSchedulesTheRest() throws {
    let d = Deferred(appliesElsewhere: true)
    let identified = d.identify("u1")
    d.log.complete()
    #expect(waitUntil { identified.done })
    let held = HeldDrains(d.store, budgetNanos: 0)
    let channels = ["email", "sms", "push", "email", "sms"]
    let calls = channels.map { d.set(.personID("u1"), .unsubscribed, channel: $0) }
    d.log.complete()
    var drains = 0
    while drains < 10, let task = held.takeFirst() {
      drains += 1
      let before = calls.filter(\.done).count
      task()
      #expect(calls.filter(\.done).count == before + 1, "one record a drain")
    }
    #expect(drains == 5)
    for (i, c) in calls.enumerated() {
      #expect(try c.get().entries.count == min(i + 1, 3))
    }
    #expect(d.settled)
  }

  /// With `flushAnswers(every: 2)`, a drain applying five records flushes after the
  /// second and the fourth, each time with the answers before it given, not after the
  /// last; a drain of one record never flushes, one of four only after the second.
  @Test func aLongDrainFlushesItsAnswersEverySoManyRecords() throws {
    let d = Deferred(appliesElsewhere: true)
    let identified = d.identify("u1")
    d.log.complete()
    #expect(waitUntil { identified.done })
    let held = HeldDrains(d.store)
    let calls = Mutex<[Call<Preferences>]>([])
    let answeredAtFlush = Mutex<[Int]>([])
    d.store.flushAnswers(every: 2) {
      let answered = calls.withLock { $0.filter(\.done).count }
      answeredAtFlush.withLock { $0.append(answered) }
    }
    for channel in ["email", "sms", "push", "email", "sms"] {
      let c = d.set(.personID("u1"), .unsubscribed, channel: channel)
      calls.withLock { $0.append(c) }
    }
    d.log.complete()
    held.runAll()
    #expect(calls.withLock { $0.allSatisfy(\.done) })
    #expect(answeredAtFlush.withLock { $0 } == [2, 4])

    let one = d.set(.personID("u1"), .subscribed, channel: "push")
    d.log.complete()
    held.runAll()
    #expect(one.done)
    #expect(answeredAtFlush.withLock { $0 } == [2, 4])

    // A run of exactly twice `every`: one flush, after the second record, none after the
    // fourth (the last).
    for channel in ["email", "sms", "push", "email"] {
      let c = d.set(.personID("u1"), .subscribed, channel: channel)
      calls.withLock { $0.append(c) }
    }
    d.log.complete()
    held.runAll()
    #expect(calls.withLock { $0.allSatisfy(\.done) })
    #expect(answeredAtFlush.withLock { $0 } == [2, 4, 7])
    #expect(d.settled)
  }

  @Test func inFlightRemovalsAndMerges() throws {
    let d = Deferred()
    _ = d.identify("u1", email: "u1@x.com")
    _ = d.identify("u2")
    _ = d.identify(anonymousID: "c1")
    d.log.complete()

    // A write made while a forget is in flight waits for it (nothing is logged) and then
    // finds nobody; a second forget is told so only once the first is durable; an
    // Identify of a person id being suppressed is refused.
    let forgotten = d.forget(.personID("u1"), alsoSuppress: true)
    let write = d.set(.personID("u1"), .subscribed, channel: "email")
    let second = d.forget(.email("u1@x.com"))
    let recreate = d.identify("u1")
    let claim = d.identify("u2", email: "u1@x.com")
    #expect(d.log.queued == 1)
    #expect(!second.done && !recreate.done && !claim.done)
    d.log.complete()
    #expect(try forgotten.get().personID == "u1")
    #expect(write.error?.kind == .notFound)
    #expect(second.error?.kind == .notFound)
    #expect(recreate.error?.kind == .failedPrecondition && recreate.error?.field == "person_id")
    #expect(claim.error?.kind == .failedPrecondition && claim.error?.field == "email")

    // A write through an anonymous id being merged goes to the person it joins.
    let merge = d.identify("u2", anonymousID: "c1")
    let viaCookie = d.set(.anonymousID("c1"), .subscribed, topic: "promo")
    let sameAgain = d.identify("u2", anonymousID: "c1")
    #expect(!sameAgain.done, "nothing new, but it waits for the merge it saw")
    d.log.complete()
    #expect(try merge.get().anonymousIDs == ["c1"])
    #expect(try viaCookie.get().personID == "u2")
    #expect(try sameAgain.get().anonymousIDs == ["c1"])
    #expect(try d.check(.personID("u2")).get().allowed)
    #expect(d.store.persons(in: "acme").map(\.key) == [.person("u2")])

    // Suppress and unsuppress count what is in flight.
    let s1 = d.suppress([Identifier(kind: .email, value: "z@x.com")])
    let s2 = d.suppress([Identifier(kind: .email, value: "z@x.com")])
    let u = d.unsuppress([Identifier(kind: .email, value: "z@x.com")])
    #expect(d.log.queued == 2 && !s2.done)
    d.log.complete()
    #expect(try s1.get().suppressed == 1 && s2.get().suppressed == 0)
    #expect(try u.get().suppressed == 1)
    #expect(d.store.suppressionHashes(in: "acme").count == 2, "u1's person id and email")
    #expect(d.settled)
  }

  @Test func anonymousTTLLeavesProfilesWithChangesInFlight() throws {
    let d = Deferred()
    _ = d.identify(anonymousID: "old")
    _ = d.identify(anonymousID: "busy")
    d.log.complete()
    d.clock.advance(by: 10_000)
    let write = d.set(.anonymousID("busy"), .subscribed, channel: "email")
    let expired = Call<Int>()
    d.store.expireAnonymousProfiles(ttlMillis: 5_000, completion: expired.completion)
    #expect(!expired.done)
    d.log.complete()
    #expect(try expired.get() == 1)
    #expect(try write.get().entries.count == 1)
    #expect(d.store.persons(in: "acme").map(\.key) == [.anonymous("busy")])
  }

  @Test func replayOfTheDurableCommandsReproducesTheState() throws {
    let d = Deferred()
    for i in 0..<16 { _ = d.identify("p\(i)", email: "p\(i)@x.com") }
    d.log.complete()
    d.log.startWriter(intervalMicros: 150)
    let writerFailures = Atomic<Int>(0)
    DispatchQueue.concurrentPerform(iterations: 8) { t in
      var rng = SplitMix(seed: UInt64(100 + t))
      func person() -> Int { Int(rng.next() % 24) }
      for k in 0..<300 {
        if t == 0 && k % 50 == 0 {
          d.clock.advance(by: 1_000)
          if k % 100 == 0 { d.log.failNextBatch() }
        }
        let p = person()
        let ref: PersonRef = rng.next() % 2 == 0 ? .personID("p\(p)") : .email("p\(p)@x.com")
        let call: (@escaping Completion<Bool>) -> Void
        switch rng.next() % 10 {
        case 0:
          let q = person()
          call = { c in
            d.store.identify(
              IdentifyRequest(
                workspace: "acme", personID: "p\(p)", email: "p\(q)@x.com",
                anonymousID: rng.next() % 2 == 0 ? "c\(q)" : ""), actor: "t"
            ) { c($0.map { _ in true }) }
          }
        case 1:
          let a = "c\(person())"
          call = { c in
            d.store.identify(IdentifyRequest(workspace: "acme", anonymousID: a), actor: "t") {
              c($0.map { _ in true })
            }
          }
        case 2, 3:
          call = { c in
            d.store.setPreference(
              PreferenceRequest(workspace: "acme", person: ref, channel: "email", topic: "news"),
              state: k % 2 == 0 ? .subscribed : .unsubscribed, actor: "t"
            ) { c($0.map { _ in true }) }
          }
        case 4:
          call = { c in
            d.store.setGlobal(
              GlobalRequest(workspace: "acme", person: ref), unsubscribed: k % 3 == 0, actor: "t"
            ) { c($0.map { _ in true }) }
          }
        case 5:
          call = { c in
            d.store.checkDelivery(
              DeliveryRequest(workspace: "acme", person: ref, channel: "email", recordSend: true)
            ) { c($0.map(\.allowed)) }
          }
        case 6:
          call = { c in
            d.store.checkDeliveryBatch(
              DeliveryBatchRequest(
                workspace: "acme", channel: "email",
                persons: [ref, .personID("p\(p)"), .anonymousID("c\(p)")], recordSend: true)
            ) { c($0.map { _ in true }) }
          }
        case 7:
          call = { c in
            d.store.overrideForImportantMessage(
              OverrideRequest(
                workspace: "acme", person: ref, channel: "sms", messageID: "m", justification: "j"),
              actor: "t"
            ) { c($0.map(\.allowed)) }
          }
        case 8:
          call = { c in
            d.store.forget(
              ForgetRequest(workspace: "acme", person: ref, alsoSuppress: rng.next() % 8 == 0),
              actor: "t"
            ) { c($0.map { _ in true }) }
          }
        default:
          let suppressing = rng.next() % 2 == 0
          let ids = [Identifier(kind: .anonymousID, value: "c\(p)")]
          call = { c in
            let req = SuppressRequest(workspace: "acme", identifiers: ids)
            if suppressing {
              d.store.suppress(req, actor: "t") { c($0.map { _ in true }) }
            } else {
              d.store.unsuppress(req, actor: "t") { c($0.map { _ in true }) }
            }
          }
        }
        do { _ = try sync(call) } catch let e as CoreError where e.kind == .unavailable {
          writerFailures.add(1, ordering: .relaxed)
        } catch {}
      }
    }
    d.log.stopWriter()
    #expect(d.settled)
    #expect(d.store.lastAppliedSeq == d.log.lastSequence)
    let copy = try replay(d.log.commands)
    #expect(copy.workspaceConfigs() == d.store.workspaceConfigs())
    #expect(copy.persons(in: "acme") == d.store.persons(in: "acme"))
    #expect(copy.suppressionHashes(in: "acme") == d.store.suppressionHashes(in: "acme"))
    // Every identifier names one person.
    var holders: [String: PersonKey] = [:]
    for p in d.store.persons(in: "acme") {
      for id in [p.email, p.phone] + p.anonymousIDs where !id.isEmpty {
        #expect(holders.updateValue(p.key, forKey: id) == nil, "\(id) held twice")
      }
    }
  }

  @Test func snapshotHoldsExactlyTheAppliedRecords() throws {
    let d = Deferred()
    _ = d.identify("u1", email: "u1@x.com", anonymousID: "c1")
    _ = d.identify(anonymousID: "c2")
    _ = d.set(.personID("u1"), .subscribed, topic: "promo")
    _ = d.check(.personID("u1"), record: true)
    _ = d.suppress([Identifier(kind: .phone, value: "+14155550199")])
    d.log.complete()
    // In flight while the snapshot is taken: not in it.
    let late = d.identify("u2", email: "u2@x.com")
    let lateSet = d.set(.anonymousID("c2"), .unsubscribed, channel: "sms")

    let snap = d.store.snapshotState()
    #expect(snap.seq == d.log.lastSequence && snap.seq == d.store.lastAppliedSeq)
    #expect(snap.personCount == 2)
    #expect(snap.workspaces.map(\.id) == ["acme"])

    let restored = SubscriptionStore(
      clock: ManualClock(0), secret: secret, log: InMemoryCommitLog(),
      createDefaultWorkspace: false)
    for w in snap.workspaces {
      restored.restore(workspace: w)
      try restored.restore(suppressions: snap.suppressions(in: w.id), workspace: w.id)
    }
    try snap.forEachPerson { (w, p) throws(CoreError) in try restored.restore(p, workspace: w) }
    restored.restored(through: snap.seq)
    #expect(restored.persons(in: "acme").count == 2)
    #expect(restored.suppressionHashes(in: "acme").count == 1)
    #expect(try restored.profile(workspace: "acme", person: .anonymousID("c1")).personID == "u1")
    #expect(
      failure { () throws(CoreError) in
        try restored.profile(workspace: "acme", person: .personID("u2"))
      }?.kind == .notFound)

    // The snapshot plus the log after it is the live state.
    d.log.complete()
    #expect(late.done && lateSet.done)
    for (i, c) in d.log.commands.enumerated() where UInt64(i + 1) > snap.seq {
      try restored.replay(c, seq: UInt64(i + 1))
    }
    #expect(restored.lastAppliedSeq == d.store.lastAppliedSeq)
    #expect(restored.persons(in: "acme") == d.store.persons(in: "acme"))
    #expect(restored.workspaceConfigs() == d.store.workspaceConfigs())
    #expect(try restored.profile(workspace: "acme", person: .email("u2@x.com")).personID == "u2")
  }
}

/// An executor for `applyDurableRecords` that keeps the drains it is handed until the test
/// runs them.
final class HeldDrains: Sendable {
  private let tasks = Mutex<[@Sendable () -> Void]>([])

  init(_ store: SubscriptionStore, budgetNanos: UInt64 = 10_000_000) {
    store.applyDurableRecords(budgetNanos: budgetNanos) { [self] task in
      tasks.withLock { $0.append(task) }
      return true
    }
  }

  /// The oldest drain held, taken.
  func takeFirst() -> (@Sendable () -> Void)? {
    tasks.withLock { $0.isEmpty ? nil : $0.removeFirst() }
  }

  /// Runs every drain held so far.
  func runAll() {
    for task in tasks.withLock({ t in
      defer { t = [] }
      return t
    }) { task() }
  }
}
