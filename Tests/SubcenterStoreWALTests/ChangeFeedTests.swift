// The change feed: which log records are events (ChangeEvents), what erasure removes from
// the retained log (ErasurePlan), which segments the change retention deletes
// (RetentionPlan), and the whole path on a store — retention keeping segments after a
// snapshot, erasure rewriting them, watchers replaying, resuming and following the log.

import Glibc
import SubcenterCore
import SubcenterTestSupport
import Synchronization
import Testing

@testable import SubcenterStore

private let cfDirectory = "/data"
private let cfSecret = Array("change-feed-test-secret".utf8)

/// A sink that keeps what it gets.
private final class CollectingSink: ChangeSink {
  let state = Mutex<(events: [ChangeEvent], end: ChangeFeedEnd?)>(([], nil))
  let buffered = Atomic<Int>(0)
  var bufferedBytes: Int { buffered.load(ordering: .relaxed) }
  var isCancelled: Bool { false }
  func send(_ event: ChangeEvent, whenDrained: @escaping @Sendable () -> Void) {
    state.withLock { $0.events.append(event) }
  }
  func finish(_ end: ChangeFeedEnd) { state.withLock { $0.end = end } }
  var events: [ChangeEvent] { state.withLock { $0.events } }
  var end: ChangeFeedEnd? { state.withLock { $0.end } }

  /// Waits until `n` events or an end arrived.
  func wait(for n: Int) {
    for _ in 0..<2000 {
      if events.count >= n || end != nil { return }
      usleep(5000)
    }
  }
}

@Suite struct ChangeEventExtraction {
  let p = PersonKey.person("p1")

  @Test func historyActionsAreEvents() {
    let id = Command.identify(
      .init(workspace: "w", person: p, creates: true, email: "a@b.c", at: 5, actor: "x"))
    #expect(ChangeEvents.events(seq: 7, command: id).map(\.action) == ["identify"])
    let e = ChangeEvents.events(seq: 7, command: id)[0]
    #expect(
      e.seq == 7 && e.at == 5 && e.personID == "p1" && e.anonymousID == "" && e.workspace == "w")

    let sub = Command.setPreference(
      .init(
        workspace: "w", person: p, channel: "email", topic: "news", state: .subscribed,
        source: "form", noticeVersion: "v1", at: 6, actor: "x"))
    let s = ChangeEvents.events(seq: 8, command: sub)[0]
    #expect(s.action == "subscribe" && s.channel == "email" && s.topic == "news")
    #expect(s.state == .subscribed && s.source == "form")
    let unsub = Command.setPreference(
      .init(
        workspace: "w", person: p, channel: "sms", topic: "", state: .unsubscribed, source: "",
        noticeVersion: "", at: 6, actor: "x"))
    #expect(ChangeEvents.events(seq: 9, command: unsub)[0].action == "unsubscribe")
    let all = Command.setGlobal(
      .init(workspace: "w", person: p, unsubscribed: true, source: "s", at: 1, actor: "x"))
    let re = Command.setGlobal(
      .init(workspace: "w", person: p, unsubscribed: false, source: "s", at: 1, actor: "x"))
    #expect(ChangeEvents.events(seq: 1, command: all)[0].action == "unsubscribe_all")
    #expect(ChangeEvents.events(seq: 1, command: re)[0].action == "resubscribe")
  }

  @Test func anonymousIDOnlyForAnonymousProfilesAndMerge() {
    let anon = Command.identify(
      .init(workspace: "w", person: .anonymous("a-123456"), creates: true, at: 1, actor: "x"))
    let e = ChangeEvents.events(seq: 1, command: anon)[0]
    #expect(e.personID == "" && e.anonymousID == "a-123456" && e.action == "identify")
    let merge = Command.identify(
      .init(
        workspace: "w", person: p, creates: false, anonymousID: "a-123456", mergesProfile: true,
        at: 2, actor: "x"))
    let m = ChangeEvents.events(seq: 2, command: merge)[0]
    #expect(m.action == "merge" && m.personID == "p1" && m.anonymousID == "a-123456")
    let attach = Command.identify(
      .init(
        workspace: "w", person: p, creates: false, anonymousID: "a-9", mergesProfile: false, at: 2,
        actor: "x"))
    let a = ChangeEvents.events(seq: 3, command: attach)[0]
    #expect(a.action == "identify" && a.anonymousID == "")
    // An identify that changes nothing is no event.
    let nothing = Command.identify(
      .init(workspace: "w", person: p, creates: false, at: 2, actor: "x"))
    #expect(ChangeEvents.events(seq: 4, command: nothing).isEmpty)
  }

  @Test func everyRemovalIsAForgetAndOtherRecordsAreNotEvents() {
    let forget = Command.forget(.init(workspace: "w", person: p, at: 1, actor: "x"))
    #expect(ChangeEvents.events(seq: 1, command: forget).map(\.action) == ["forget"])
    let suppress = Command.suppress(
      .init(
        workspace: "w", hashes: [], forget: [p, .anonymous("zz-1234")], reason: "r", at: 1,
        actor: "x"))
    let s = ChangeEvents.events(seq: 2, command: suppress)
    #expect(s.map(\.action) == ["forget", "forget"] && s.map(\.personID) == ["p1", ""])
    // A record removing several persons takes a seq per removal: each forget its own.
    #expect(s[1].anonymousID == "zz-1234" && s.map(\.seq) == [2, 3])
    #expect(ChangeEvents.seqCount(suppress) == 2 && ChangeEvents.seqCount(forget) == 1)
    let expire = Command.expireAnonymous(.init(workspace: "w", profiles: ["q1", "q2"], at: 1))
    let e = ChangeEvents.events(seq: 4, command: expire)
    #expect(e.map(\.anonymousID) == ["q1", "q2"] && e.map(\.seq) == [4, 5])
    #expect(ChangeEvents.seqCount(expire) == 2)
    let suppressOnly = Command.suppress(
      .init(workspace: "w", hashes: [], forget: [], reason: "r", at: 1, actor: "x"))
    #expect(ChangeEvents.seqCount(suppressOnly) == 1)

    let none: [Command] = [
      .recordSends(.init(workspace: "w", channel: "email", persons: [p], at: 1)),
      .override(
        .init(
          workspace: "w", person: p, channel: "sms", topic: "", allowed: true, reason: .subscribed,
          detail: "d", at: 1, actor: "x")),
      .configureWorkspace(
        .init(config: WorkspaceConfig(workspace: "w", channels: ["email"]), at: 1, actor: "x")),
      .unsuppress(.init(workspace: "w", hashes: [], at: 1, actor: "x")),
    ]
    for c in none { #expect(ChangeEvents.events(seq: 1, command: c).isEmpty) }
    #expect(ChangeEvents.events(seq: 1, command: nil).isEmpty)

    // `hasEvents`, checked for every record applied, and `lastEvent`, read for every record
    // a segment summary reads, agree with `events`.
    let others: [Command] = [
      .identify(.init(workspace: "w", person: p, creates: true, at: 1, actor: "x")),
      .identify(.init(workspace: "w", person: p, creates: false, at: 1, actor: "x")),
      .identify(
        .init(workspace: "w", person: p, creates: false, phone: "+15550000001", at: 1, actor: "x")),
      .identify(
        .init(
          workspace: "w", person: p, creates: false, anonymousID: "a-1", mergesProfile: true,
          at: 1, actor: "x")),
      .setGlobal(
        .init(workspace: "w", person: p, unsubscribed: true, source: "", at: 1, actor: "x")),
      .suppress(.init(workspace: "w", hashes: [], forget: [], reason: "", at: 1, actor: "x")),
      .expireAnonymous(.init(workspace: "w", profiles: [], at: 1)),
    ]
    for c in none + others + [forget, suppress, expire] {
      #expect(ChangeEvents.hasEvents(c) == !ChangeEvents.events(seq: 1, command: c).isEmpty)
      let last = ChangeEvents.events(seq: 7, command: c).last
      #expect(ChangeEvents.lastEvent(seq: 7, of: c)?.seq == last?.seq, "\(c)")
      #expect(ChangeEvents.lastEvent(seq: 7, of: c)?.workspace == last?.workspace, "\(c)")
    }
    #expect(ChangeEvents.lastEvent(seq: 7, of: expire)?.seq == 8)
  }
}

@Suite struct ErasurePlanTests {
  /// The plan of `log`, its records numbered from seq 1.
  func plan(of log: [Command]) -> ErasurePlan {
    var plan = ErasurePlan()
    for (i, c) in log.enumerated() { plan.observe(seq: UInt64(i + 1), command: c) }
    return plan
  }

  /// The seqs of the records of `log` that `plan` erases.
  func erased(_ log: [Command], by plan: ErasurePlan) -> [Int] {
    log.enumerated().filter {
      plan.rewrite(seq: UInt64($0.offset + 1), command: $0.element) == .erase
    }.map { $0.offset + 1 }
  }

  func forget(_ person: PersonKey) -> Command {
    .forget(.init(workspace: "w", person: person, at: 1, actor: "x"))
  }

  @Test func erasesAPersonsEarlierRecordsAndTheirAnonymousProfileButNotTheTombstone() {
    let p = PersonKey.person("p"), q = PersonKey.person("q")
    let log: [Command] = [
      .identify(
        .init(workspace: "w", person: .anonymous("anon"), creates: true, at: 1, actor: "x")),  // 1
      .setGlobal(
        .init(
          workspace: "w", person: .anonymous("anon"), unsubscribed: true, source: "s", at: 1,
          actor: "x")),  // 2
      .identify(
        .init(
          workspace: "w", person: p, creates: true, email: "e@x.y", anonymousID: "anon",
          mergesProfile: true, at: 1, actor: "x")),  // 3
      .identify(.init(workspace: "w", person: q, creates: true, at: 1, actor: "x")),  // 4
      .recordSends(.init(workspace: "w", channel: "email", persons: [p, q], at: 1)),  // 5
      .override(
        .init(
          workspace: "w", person: p, channel: "sms", topic: "", allowed: true, reason: .subscribed,
          detail: "why", at: 1, actor: "x")),  // 6
      // 7: another workspace
      .identify(.init(workspace: "other", person: p, creates: true, at: 1, actor: "x")),
      .forget(.init(workspace: "w", person: p, at: 1, actor: "x")),  // 8
      .identify(.init(workspace: "w", person: p, creates: true, at: 1, actor: "x")),  // 9: a new p
    ]
    let plan = plan(of: log)
    #expect(erased(log, by: plan) == [1, 2, 3, 5, 6])
    #expect(plan.rewrite(seq: 10, command: nil) == nil)
  }

  /// A suppression's tombstone keeps the person ids it forgot, not the reason the caller
  /// wrote (it may name the person: "asked by jane@…"); a suppression that forgot nobody is
  /// no one's tombstone and is kept whole.
  @Test func aSuppressionThatForgetsIsCutToItsTombstone() {
    func suppress(forget: [PersonKey], reason: String) -> Command {
      .suppress(
        .init(workspace: "w", hashes: [], forget: forget, reason: reason, at: 1, actor: "x"))
    }
    let p = PersonKey.person("p")
    let log: [Command] = [
      .identify(.init(workspace: "w", person: p, creates: true, at: 1, actor: "x")),  // 1
      suppress(forget: [], reason: "complaint by jane@x.y"),  // 2
      suppress(forget: [p], reason: "asked by p@x.y"),  // 3
    ]
    let plan = plan(of: log)
    #expect(plan.rewrite(seq: 1, command: log[0]) == .erase)
    #expect(plan.rewrite(seq: 2, command: log[1]) == nil)
    #expect(plan.rewrite(seq: 3, command: log[2]) == .tombstone(suppress(forget: [p], reason: "")))
    #expect(plan.rewrite(seq: 3, command: suppress(forget: [p], reason: "")) == nil)
    // The segment holding it is read for that, even with no one's data in it.
    var tombstone = ErasurePlan.SegmentFacts(firstSeq: 3)
    tombstone.add(seq: 3, command: log[2])
    tombstone.finish()
    #expect(plan.mayErase(in: tombstone))
    var bare = ErasurePlan.SegmentFacts(firstSeq: 3)
    bare.add(seq: 3, command: suppress(forget: [p], reason: ""))
    bare.finish()
    #expect(!plan.mayErase(in: bare))
  }

  /// An anonymous id leaves with the person it was attached to; a profile made later
  /// under the same id is someone else's, and a later removal of a new person with the
  /// first one's id does not erase it. (It did: a replay from the log then lost that
  /// profile, and its merge into another person.)
  @Test func anAnonymousIdLeavesWithItsPersonAndIsNotTheirsAfter() {
    let p = PersonKey.person("p"), r = PersonKey.person("r")
    let anon = PersonKey.anonymous("anon")
    let log: [Command] = [
      // 1
      .identify(
        .init(workspace: "w", person: p, creates: true, anonymousID: "anon", at: 1, actor: "x")),
      .forget(.init(workspace: "w", person: p, at: 1, actor: "x")),  // 2: anon leaves with p
      .identify(.init(workspace: "w", person: anon, creates: true, at: 1, actor: "x")),  // 3
      // 4
      .setGlobal(
        .init(workspace: "w", person: anon, unsubscribed: true, source: "s", at: 1, actor: "x")),
      .identify(.init(workspace: "w", person: p, creates: true, at: 1, actor: "x")),  // 5: a new p
      .forget(.init(workspace: "w", person: p, at: 1, actor: "x")),  // 6
      .identify(
        .init(
          workspace: "w", person: r, creates: true, anonymousID: "anon", mergesProfile: true,
          at: 1, actor: "x")),  // 7: the new anonymous profile lives on in r
    ]
    #expect(erased(log, by: plan(of: log)) == [1, 5])
  }

  /// An anonymous id attached to another person later belongs to that one only (latest
  /// wins): removing the first person does not erase it, removing the second does. (The
  /// plan keeps each person's ids, so a removal finds them without scanning every id: a
  /// scan made erasure after 10,000 suppressions of 40,000 persons take 40 s.)
  @Test func anAnonymousIdMovedToAnotherPersonLeavesWithThatOne() {
    let p = PersonKey.person("p"), r = PersonKey.person("r")
    let anon = PersonKey.anonymous("anon")
    let log: [Command] = [
      .identify(.init(workspace: "w", person: anon, creates: true, at: 1, actor: "x")),  // 1
      // 2
      .identify(
        .init(workspace: "w", person: p, creates: true, anonymousID: "anon", at: 1, actor: "x")),
      // 3
      .identify(
        .init(workspace: "w", person: r, creates: true, anonymousID: "anon", at: 1, actor: "x")),
      forget(p),  // 4
    ]
    var plan = plan(of: log)
    #expect(erased(log, by: plan) == [2])
    plan.observe(seq: 5, command: forget(r))
    #expect(erased(log, by: plan) == [1, 2, 3])
  }

  /// A segment's facts name every person its records hold (no removed person's segment is
  /// skipped), and few others (a filter: about 1% false alarms, which only cost a read).
  @Test func segmentFactsFindEveryPersonAndFewOthers() {
    var facts = ErasurePlan.SegmentFacts(firstSeq: 1)
    for i in 0..<2_000 {
      facts.add(
        seq: UInt64(i + 1),
        command: .identify(
          .init(workspace: "w", person: .person("in\(i)"), creates: true, at: 1, actor: "x")))
    }
    facts.finish()
    func mayErase(
      _ id: String, removedAt seq: UInt64 = 5_000, in facts: ErasurePlan.SegmentFacts = facts
    ) -> Bool {
      var plan = ErasurePlan()
      plan.observe(seq: seq, command: forget(.person(id)))
      return plan.mayErase(in: facts)
    }
    #expect((0..<2_000).allSatisfy { mayErase("in\($0)") })
    let falseAlarms = (0..<2_000).filter { mayErase("out\($0)") }.count
    #expect(falseAlarms < 100, "\(falseAlarms) of 2,000")
    // A removal before the segment's first record erases nothing in it.
    var later = ErasurePlan.SegmentFacts(firstSeq: 10_000)
    later.add(
      seq: 10_000,
      command: .identify(
        .init(workspace: "w", person: .person("in0"), creates: true, at: 1, actor: "x")))
    later.finish()
    #expect(!mayErase("in0", removedAt: 5_000, in: later))
    // A segment of tombstones only (a compaction's) holds no one's data: an empty filter.
    var tombstones = ErasurePlan.SegmentFacts(firstSeq: 20_000)
    tombstones.add(seq: 20_000, command: forget(.person("in1")))
    tombstones.finish()
    #expect(!mayErase("in1", removedAt: 30_000, in: tombstones))
  }

  /// A segment a compaction went through is looked at again only for removals after it
  /// (`erasedThrough`), so a compaction's planning does not grow with the retained
  /// segments times every removal retained (8,000 segments of one forget each took 0.6 s a
  /// compaction); a later removal of a person it holds still reads it.
  @Test func aSegmentErasedThroughARemovalIsLookedAtOnlyForLaterOnes() {
    var facts = ErasurePlan.SegmentFacts(firstSeq: 1)
    for (i, id) in ["p", "q"].enumerated() {
      facts.add(
        seq: UInt64(i + 1),
        command: .identify(
          .init(workspace: "w", person: .person(id), creates: true, at: 1, actor: "x")))
    }
    facts.finish()
    var plan = ErasurePlan()
    plan.observe(seq: 3, command: forget(.person("p")))
    #expect(plan.mayErase(in: facts))
    facts.erasedThrough = 3
    #expect(!plan.mayErase(in: facts))
    plan.observe(seq: 4, command: forget(.person("r")))
    #expect(!plan.mayErase(in: facts))
    plan.observe(seq: 5, command: forget(.person("q")))
    #expect(plan.mayErase(in: facts))
    facts.erasedThrough = 5
    #expect(!plan.mayErase(in: facts))
  }

  /// The filter errs about as often as one with independent probes: for 20 values in its
  /// 512 bits, ~4.5e-5 of the time (probes `h1 + i * h2` from one hash, modulo the
  /// power-of-two bit count, alias each other and erred ~5e-4 of the time).
  @Test func aSmallFilterRarelyErrs() {
    var next: UInt64 = 0x1234_5678
    func value() -> Int {  // a fixed sequence (xorshift), so the count is the same every run
      next ^= next << 13
      next ^= next >> 7
      next ^= next << 17
      return Int(bitPattern: UInt(next))
    }
    var falseAlarms = 0
    for _ in 0..<200 {
      var filter = KeyFilter(count: 20)
      for _ in 0..<20 { filter.insert(value()) }
      for _ in 0..<1_000 where filter.mayContain(value()) { falseAlarms += 1 }
    }
    #expect(falseAlarms < 40, "\(falseAlarms) of 200,000")  // ~9 expected; ~106 before
  }

  /// Every kind of record in one segment's `SegmentFacts`, as `rewrite` and `mayErase` see
  /// them: the persons each holds (identifies with and without an anonymous id, merges,
  /// preference and global choices, counted sends of several persons, overrides; nobody in
  /// configurations and (un)suppressions), the ids it attaches, the persons it removes and
  /// the text a removal's tombstone drops.
  @Test func segmentFactsOfEveryCommandKind() {
    let p = PersonKey.person("p"), q = PersonKey.person("q"), r = PersonKey.person("r")
    let s = PersonKey.person("s")
    let m = PersonKey.anonymous("m"), z = PersonKey.anonymous("z")
    func suppress(forget: [PersonKey], reason: String) -> Command {
      .suppress(
        .init(workspace: "w", hashes: [], forget: forget, reason: reason, at: 1, actor: "x"))
    }
    let log: [Command] = [
      // 1
      .identify(
        .init(workspace: "w", person: p, creates: true, email: "p@x.y", at: 1, actor: "x")),
      // 2: "qa" attached to q
      .identify(
        .init(workspace: "w", person: q, creates: true, anonymousID: "qa", at: 1, actor: "x")),
      .identify(.init(workspace: "w", person: m, creates: true, at: 1, actor: "x")),  // 3
      // 4: m merged into r
      .identify(
        .init(
          workspace: "w", person: r, creates: true, anonymousID: "m", mergesProfile: true, at: 1,
          actor: "x")),
      .setPreference(
        .init(
          workspace: "w", person: p, channel: "email", topic: "", state: .unsubscribed,
          source: "s", noticeVersion: "", at: 1, actor: "x")),  // 5
      .identify(.init(workspace: "w", person: z, creates: true, at: 1, actor: "x")),  // 6
      .setGlobal(
        .init(workspace: "w", person: z, unsubscribed: true, source: "", at: 1, actor: "x")),  // 7
      .recordSends(.init(workspace: "w", channel: "email", persons: [p, q, s], at: 1)),  // 8
      .override(
        .init(
          workspace: "w", person: s, channel: "sms", topic: "", allowed: true, reason: .subscribed,
          detail: "d", at: 1, actor: "x")),  // 9
      // 10
      .configureWorkspace(
        .init(config: WorkspaceConfig(workspace: "w", channels: ["email"]), at: 1, actor: "x")),
      .unsuppress(.init(workspace: "w", hashes: [], at: 1, actor: "x")),  // 11
      suppress(forget: [], reason: "complaint by jane@x.y"),  // 12: forgets nobody
      // 13: another workspace's p
      .identify(.init(workspace: "v", person: p, creates: true, at: 1, actor: "x")),
      .forget(.init(workspace: "w", person: p, at: 1, actor: "x")),  // 14
      suppress(forget: [q], reason: "asked by q@x.y"),  // 15
      .expireAnonymous(.init(workspace: "w", profiles: ["z"], at: 1)),  // 16
      suppress(forget: [r, s], reason: ""),  // 17
    ]
    var segment = ErasurePlan.SegmentFacts(firstSeq: 1)
    for (i, c) in log.enumerated() { segment.add(seq: UInt64(i + 1), command: c) }
    segment.finish()
    var plan = ErasurePlan()
    plan.observe(segment)
    #expect(erased(log, by: plan) == [1, 2, 3, 4, 5, 6, 7, 8, 9])
    #expect(erased(log, by: plan) == erased(log, by: self.plan(of: log)))
    for (i, c) in log.enumerated() where i + 1 >= 10 {
      let expected: ErasurePlan.Rewrite? =
        i + 1 == 15 ? .tombstone(suppress(forget: [q], reason: "")) : nil
      #expect(plan.rewrite(seq: UInt64(i + 1), command: c) == expected, "record \(i + 1)")
    }
    #expect(plan.mayErase(in: segment))
    // Each record alone: a segment holding a removed person's data or a removal's text is
    // read again, no other.
    for (i, c) in log.enumerated() {
      var alone = ErasurePlan.SegmentFacts(firstSeq: UInt64(i + 1))
      alone.add(seq: UInt64(i + 1), command: c)
      alone.finish()
      #expect(plan.mayErase(in: alone) == (i + 1 <= 9 || i + 1 == 15), "record \(i + 1)")
    }
  }

  @Test func nothingRemovedNothingErased() {
    var plan = ErasurePlan()
    plan.observe(
      seq: 1,
      command: .identify(
        .init(workspace: "w", person: .person("p"), creates: true, at: 1, actor: "x")))
    #expect(plan.isEmpty)
  }
}

/// What a retained segment's summary keeps for the retention: its newest record time and
/// each workspace's newest event seq (`DurableStore.SegmentSummary`).
@Suite struct SegmentSummaryTests {
  @Test func newestEventOfEachWorkspaceAcrossInterleavedRecords() {
    let x = PersonKey.person("x"), y = PersonKey.person("y")
    func preference(_ ws: String, at: Int64) -> Command {
      .setPreference(
        .init(
          workspace: ws, person: x, channel: "email", topic: "", state: .subscribed, source: "",
          noticeVersion: "", at: at, actor: "t"))
    }
    let log: [(seq: UInt64, command: Command)] = [
      (1, preference("a", at: 10)),
      (
        2,
        .setGlobal(
          .init(workspace: "a", person: x, unsubscribed: true, source: "", at: 30, actor: "t"))
      ),
      (3, .recordSends(.init(workspace: "b", channel: "email", persons: [x], at: 5))),  // no event
      (4, .identify(.init(workspace: "b", person: y, creates: true, at: 6, actor: "t"))),
      // 5 and 6: one forget each
      (
        5,
        .suppress(
          .init(workspace: "a", hashes: [], forget: [x, y], reason: "", at: 7, actor: "t"))
      ),
      (
        7,
        .override(
          .init(
            workspace: "c", person: x, channel: "sms", topic: "", allowed: false,
            reason: .subscribed, detail: "", at: 8, actor: "t"))
      ),
      (8, .identify(.init(workspace: "b", person: y, creates: false, at: 9, actor: "t"))),  // none
      (9, .expireAnonymous(.init(workspace: "c", profiles: [], at: 4))),  // no event
      (10, preference("b", at: 20)),
      (11, .unsuppress(.init(workspace: "d", hashes: [], at: 3, actor: "t"))),  // no event
    ]
    var summary = DurableStore.SegmentSummary(firstSeq: 1, endSeq: 12, damage: nil)
    for (seq, c) in log { summary.add(seq: seq, command: c) }
    summary.finish()
    #expect(summary.newestEvents == ["a": 6, "b": 10])
    #expect(summary.newestAt == 30)

    var none = DurableStore.SegmentSummary(firstSeq: 1, endSeq: 2, damage: nil)
    none.add(seq: 1, command: log[2].command)
    none.finish()
    #expect(none.newestEvents.isEmpty && none.newestAt == 5)
  }
}

@Suite struct RetentionPlanTests {
  typealias S = RetentionPlan.Segment

  @Test func deletesTheExpiredCoveredPrefixOnly() {
    let segs = [
      S(firstSeq: 1, newestAt: 10), S(firstSeq: 5, newestAt: 20), S(firstSeq: 9, newestAt: 100),
      S(firstSeq: 12, newestAt: .max),
    ]
    #expect(RetentionPlan.deletable(segs, cutoff: 50, snapshotSeq: 20) == (2, false))
    // Not covered by the snapshot yet: wait for one.
    #expect(RetentionPlan.deletable(segs, cutoff: 50, snapshotSeq: 6) == (1, true))
    #expect(RetentionPlan.deletable(segs, cutoff: 5, snapshotSeq: 20) == (0, false))
    // Never the last (active) segment, whatever its age.
    #expect(
      RetentionPlan.deletable([S(firstSeq: 1, newestAt: 1)], cutoff: 50, snapshotSeq: 9) == (
        0, false
      ))
    // A later expired segment is not deleted before an earlier live one.
    let mixed = [
      S(firstSeq: 1, newestAt: 60), S(firstSeq: 5, newestAt: 10), S(firstSeq: 9, newestAt: .max),
    ]
    #expect(RetentionPlan.deletable(mixed, cutoff: 50, snapshotSeq: 20) == (0, false))
  }

  @Test func erasedOnlySegmentsGoOnlyWithAnExpiredOneAfterThem() {
    let segs = [
      S(firstSeq: 1, newestAt: nil), S(firstSeq: 5, newestAt: 100), S(firstSeq: 9, newestAt: .max),
    ]
    #expect(RetentionPlan.deletable(segs, cutoff: 50, snapshotSeq: 20) == (0, false))
    let segs2 = [
      S(firstSeq: 1, newestAt: nil), S(firstSeq: 5, newestAt: 10), S(firstSeq: 9, newestAt: .max),
    ]
    #expect(RetentionPlan.deletable(segs2, cutoff: 50, snapshotSeq: 20) == (2, false))
  }
}

@Suite(.serialized) struct ChangeFeedStoreTests {
  func open(
    _ fs: FaultyFileSystem, _ clock: ManualClock, retention: Int = 60,
    feedOptions: ChangeFeed.Options = .init(), preallocate: Int = 0, fsync: FsyncPolicy = .always
  ) throws -> DurableStore {
    try DurableStore.open(
      directory: cfDirectory, fileSystem: fs, clock: clock, secret: cfSecret, fsync: fsync,
      truncateDamaged: false, changeRetentionSeconds: retention, feedOptions: feedOptions,
      preallocateLogBytes: preallocate, log: { _ in }
    ).0
  }

  /// Forgets person `p` of workspace acme.
  func forget(_ store: SubscriptionStore, _ p: String) {
    _ = awaitStoreCall { c in
      store.forget(ForgetRequest(workspace: "acme", person: .personID(p)), actor: "w") {
        c($0.map { _ in 0 })
      }
    }
  }

  func write(_ store: SubscriptionStore, _ p: String) {
    _ = awaitStoreCall { c in
      store.identify(
        IdentifyRequest(workspace: "acme", personID: p, email: "\(p)@x.example"), actor: "w"
      ) {
        c($0.map { _ in 0 })
      }
    }
    _ = awaitStoreCall { c in
      store.setPreference(
        PreferenceRequest(
          workspace: "acme", person: .personID(p), channel: "email", topic: "", source: "src-\(p)",
          noticeVersion: ""),
        state: .unsubscribed, actor: "w"
      ) { c($0.map { _ in 0 }) }
    }
  }

  /// A watcher of workspace "acme" from the oldest retained record, once it has `events`
  /// events (or an end).
  fileprivate func fromOldest(_ d: DurableStore, events: Int) -> CollectingSink {
    let sink = CollectingSink()
    d.changeFeed.watch(workspace: "acme", from: .oldest, sink: sink)
    sink.wait(for: events)
    return sink
  }

  func setUp(
    feedOptions: ChangeFeed.Options = .init(), preallocate: Int = 0, fsync: FsyncPolicy = .always
  ) throws -> (FaultyFileSystem, ManualClock, DurableStore) {
    let fs = FaultyFileSystem()
    try fs.createDirectory(cfDirectory)
    let clock = ManualClock()
    let d = try open(fs, clock, feedOptions: feedOptions, preallocate: preallocate, fsync: fsync)
    _ = awaitStoreCall { c in
      d.store.configureWorkspace(
        WorkspaceConfig(workspace: "acme", channels: ["email"]), actor: "a", mayCreate: true
      ) { c($0.map { _ in 0 }) }
    }
    return (fs, clock, d)
  }

  @Test func replaysFollowsResumesAndSurvivesRestart() throws {
    let (fs, clock, d) = try setUp()
    write(d.store, "p1")
    let all = CollectingSink()
    d.changeFeed.watch(workspace: "acme", from: .oldest, sink: all)
    all.wait(for: 2)
    #expect(all.events.map(\.action) == ["identify", "unsubscribe"])
    write(d.store, "p2")
    all.wait(for: 4)
    #expect(all.events.map(\.personID) == ["p1", "p1", "p2", "p2"])
    let seqs = all.events.map(\.seq)
    #expect(seqs == seqs.sorted() && Set(seqs).count == 4)

    // A snapshot keeps the retained segments.
    try d.snapshot(force: true)
    let resumed = CollectingSink()
    d.changeFeed.watch(workspace: "acme", from: .after(seqs[1]), sink: resumed)
    resumed.wait(for: 2)
    #expect(resumed.events.map(\.seq) == Array(seqs[2...]))
    d.close()

    let d2 = try open(fs, clock)
    let again = CollectingSink()
    d2.changeFeed.watch(workspace: "acme", from: .after(seqs[1]), sink: again)
    write(d2.store, "p3")
    again.wait(for: 4)
    #expect(again.events.map(\.personID) == ["p2", "p2", "p3", "p3"])
    let beyond = CollectingSink()
    d2.changeFeed.watch(workspace: "acme", from: .after(1000), sink: beyond)
    beyond.wait(for: 1)
    guard case .outOfRange(let m) = beyond.end else {
      Issue.record("expected OUT_OF_RANGE, got \(String(describing: beyond.end))")
      return
    }
    #expect(m.contains("oldest retained seq is 1"))
    d2.close()
    #expect(again.end == .unavailable("the server is shutting down"))
  }

  /// A suppression forgetting three persons is one record taking three seqs: each
  /// `forget` has its own, a consumer resuming after any of them gets the rest (read in
  /// small chunks, across a restart), and the next record's seq follows them.
  @Test func aRecordRemovingSeveralPersonsGivesEachForgetItsOwnSeq() throws {
    var options = ChangeFeed.Options()
    options.readChunk = 40
    let (fs, clock, d) = try setUp(feedOptions: options)
    for p in ["a", "b", "c"] { write(d.store, p) }
    _ = awaitStoreCall { c in
      d.store.suppress(
        SuppressRequest(
          workspace: "acme",
          identifiers: ["a", "b", "c"].map { Identifier(kind: .personID, value: $0) }),
        actor: "officer"
      ) { c($0.map { _ in 0 }) }
    }
    write(d.store, "d")
    let all = CollectingSink()
    d.changeFeed.watch(workspace: "acme", from: .oldest, sink: all)
    all.wait(for: 11)
    let forgets = all.events.filter { $0.action == "forget" }
    #expect(forgets.map(\.personID).sorted() == ["a", "b", "c"])
    let f = forgets.map(\.seq)
    #expect(f == [f[0], f[0] + 1, f[0] + 2], "\(f)")
    let seqs = all.events.map(\.seq)
    #expect(seqs == seqs.sorted() && Set(seqs).count == seqs.count)
    #expect(all.events.last?.personID == "d" && all.events.suffix(2).first?.seq == f[2] + 1)

    for (i, cursor) in f.enumerated() {
      let resumed = CollectingSink()
      d.changeFeed.watch(workspace: "acme", from: .after(cursor), sink: resumed)
      resumed.wait(for: 4 - i)
      #expect(resumed.events.map(\.seq) == Array(seqs.drop { $0 <= cursor }), "after \(cursor)")
    }
    d.close()

    // After a restart the log reads back the same, and the next record follows the seqs
    // the start skipped (up to its time in microseconds).
    let d2 = try open(fs, clock)
    let again = CollectingSink()
    d2.changeFeed.watch(workspace: "acme", from: .after(f[1]), sink: again)
    write(d2.store, "e")
    again.wait(for: 5)
    #expect(again.events.map(\.seq).prefix(3) == [f[2], f[2] + 1, f[2] + 2])
    let skipped = UInt64(clock.nowMillis()) * 1000
    #expect(again.events.last.map { $0.personID == "e" && $0.seq == skipped + 2 } == true)
    d2.close()
  }

  /// A seq is never reused (SPEC §3): a backup restored over newer data gives its next
  /// changes seqs above every seq handed out after the backup (each start skips the seqs
  /// up to its time in microseconds), and a cursor from the lost changes is OUT_OF_RANGE,
  /// saying why, while one from the backup's own changes resumes.
  @Test func aRestoredBackupReusesNoSeq() throws {
    let (fs, clock, d) = try setUp()
    write(d.store, "a")
    let backupNewest = fromOldest(d, events: 2).events.last!.seq
    d.close()
    let backup = try fs.list(cfDirectory).map { ($0, fs.contents("\(cfDirectory)/\($0)")!) }

    clock.advance(by: 1)
    let d2 = try open(fs, clock)
    let skipped = UInt64(clock.nowMillis()) * 1000
    write(d2.store, "b")
    let lost = fromOldest(d2, events: 4)
    let lostSeqs = lost.events.suffix(2).map(\.seq)
    #expect(lostSeqs == [skipped + 1, skipped + 2], "\(lost.events.map(\.seq))")
    d2.close()

    // Restore the backup, a moment later.
    for name in try fs.list(cfDirectory) { try fs.unlink("\(cfDirectory)/\(name)") }
    for (name, bytes) in backup { fs.setContents("\(cfDirectory)/\(name)", bytes) }
    clock.advance(by: 1)
    let d3 = try open(fs, clock)
    write(d3.store, "c")
    let now = fromOldest(d3, events: 4)
    #expect(now.events.map(\.personID) == ["a", "a", "c", "c"])
    #expect(now.events.suffix(2).allSatisfy { $0.seq > lostSeqs[1] }, "\(now.events.map(\.seq))")

    // A cursor among the lost changes' seqs names a seq this data never had.
    let stale = CollectingSink()
    d3.changeFeed.watch(workspace: "acme", from: .after(lostSeqs[0]), sink: stale)
    stale.wait(for: 1)
    guard case .outOfRange(let why)? = stale.end else {
      Issue.record("a cursor from the lost changes resumed: \(String(describing: stale.end))")
      return
    }
    #expect(stale.events.isEmpty && why.contains("never a seq of this data"), "\(why)")
    // The backup's newest seq resumes, with the change made after the restore.
    let resumed = CollectingSink()
    d3.changeFeed.watch(workspace: "acme", from: .after(backupNewest), sink: resumed)
    resumed.wait(for: 2)
    #expect(resumed.end == nil && resumed.events.map(\.personID) == ["c", "c"])
    d3.close()
  }

  /// The skip's edges: a new directory skips nothing; a start whose clock (in
  /// microseconds) is behind the log's next seq skips nothing either; one at or after it
  /// (the first whole millisecond there) skips up to the clock.
  @Test func aStartSkipsOnlyUpToItsClock() throws {
    let fs = FaultyFileSystem()
    try fs.createDirectory(cfDirectory)
    func reopen(_ clock: ManualClock) throws -> (DurableStore, DurableStore.RecoveryReport) {
      try DurableStore.open(
        directory: cfDirectory, fileSystem: fs, clock: clock, secret: cfSecret, fsync: .always,
        truncateDamaged: false, log: { _ in })
    }
    let (d, fresh) = try reopen(ManualClock(0))
    #expect(fresh.skippedThrough == nil)
    _ = awaitStoreCall { c in
      d.store.configureWorkspace(
        WorkspaceConfig(workspace: "acme", channels: ["email"]), actor: "a", mayCreate: true
      ) { c($0.map { _ in 0 }) }
    }
    write(d.store, "a")
    d.close()

    let (d2, behind) = try reopen(ManualClock(0))
    #expect(behind.skippedThrough == nil)
    write(d2.store, "b")
    let next = fromOldest(d2, events: 4).events.last!.seq + 1
    d2.close()

    let ms = Int64((next + 999) / 1000)
    let (d3, at) = try reopen(ManualClock(ms))
    #expect(at.nextSeq == next && at.skippedThrough == UInt64(ms) * 1000)
    write(d3.store, "c")
    #expect(fromOldest(d3, events: 6).events.last!.seq == UInt64(ms) * 1000 + 2)
    d3.close()
  }

  /// Under `--fsync none` an OS crash may lose changes the feed already sent; the next
  /// start gives no seq of theirs again.
  @Test func changesLostUnderFsyncNoneLeaveTheirSeqsUnused() throws {
    let (fs, clock, d) = try setUp(fsync: .none)
    write(d.store, "a")
    _ = try d.snapshot()  // durable: the workspace and "a"
    write(d.store, "b")
    let sent = fromOldest(d, events: 4)
    let lostSeq = sent.events.last!.seq
    fs.crash()
    d.close()
    fs.restart()
    clock.advance(by: 1)
    let d2 = try open(fs, clock, fsync: .none)
    write(d2.store, "c")
    // The log's records of "a" and "b" were never synced: only the snapshot kept "a".
    let after = fromOldest(d2, events: 2)
    #expect(after.events.map(\.personID) == ["c", "c"])
    #expect(after.events.last!.seq > lostSeq)
    let stale = CollectingSink()
    d2.changeFeed.watch(workspace: "acme", from: .after(lostSeq), sink: stale)
    stale.wait(for: 1)
    #expect(stale.events.isEmpty)
    if case .outOfRange? = stale.end {} else { Issue.record("\(String(describing: stale.end))") }
    d2.close()
  }

  /// With `maxWatchers` watches open, another is refused `RESOURCE_EXHAUSTED` at once and
  /// counted; once one of them ends (its client went away), its place is taken again.
  @Test func aWatchBeyondMaxWatchersIsRefusedUntilOneEnds() throws {
    var options = ChangeFeed.Options()
    options.maxWatchers = 2
    let (_, _, d) = try setUp(feedOptions: options)
    defer { d.close() }
    let (a, b, refused) = (CollectingSink(), CollectingSink(), CollectingSink())
    let first = d.changeFeed.watch(workspace: "acme", from: .now, sink: a)
    d.changeFeed.watch(workspace: "acme", from: .now, sink: b)
    d.changeFeed.watch(workspace: "acme", from: .now, sink: refused)
    guard case .resourceExhausted(let why) = refused.end else {
      Issue.record("a third watch of two allowed was not refused: \(refused.end as Any)")
      return
    }
    #expect(why.contains("--max-watchers"))
    #expect(d.changeFeed.watchStatus.open == 2 && d.changeFeed.watchStatus.refused == 1)
    d.changeFeed.cancel(first)
    for _ in 0..<2000 where d.changeFeed.watchStatus.open != 1 { usleep(5000) }
    #expect(d.changeFeed.watchStatus.open == 1)
    let c = CollectingSink()
    d.changeFeed.watch(workspace: "acme", from: .now, sink: c)
    write(d.store, "p1")
    for sink in [b, c] {
      sink.wait(for: 2)
      #expect(sink.end == nil && sink.events.map(\.personID) == ["p1", "p1"])
    }
    #expect(a.end == nil && d.changeFeed.watchStatus.open == 2)
  }

  /// The active segment read in chunks smaller than one record, ending in preallocated
  /// zeros: every record still arrives, once, in order, for a watcher that catches up and
  /// one that follows.
  @Test func smallReadChunksAndPreallocatedZerosLoseNothing() throws {
    var options = ChangeFeed.Options()
    options.readChunk = 40
    let (_, _, d) = try setUp(feedOptions: options, preallocate: 4096)
    let follower = CollectingSink()
    d.changeFeed.watch(workspace: "acme", from: .oldest, sink: follower)
    for i in 0..<20 { write(d.store, "p\(i)") }
    let late = CollectingSink()
    d.changeFeed.watch(workspace: "acme", from: .oldest, sink: late)
    let want = (0..<20).flatMap { ["p\($0)", "p\($0)"] }
    for sink in [follower, late] {
      sink.wait(for: 40)
      #expect(sink.events.map(\.personID) == want)
      let seqs = sink.events.map(\.seq)
      #expect(seqs == seqs.sorted() && Set(seqs).count == seqs.count)
    }
    d.close()
  }

  /// The segment being written ends in megabytes of preallocated zeros: a watcher reads
  /// only as far as its durable records reach (the log says how far), not a chunk of
  /// zeros for every record it follows.
  @Test func theActiveSegmentIsReadOnlyThroughItsDurableRecords() throws {
    let (fs, _, d) = try setUp(preallocate: 4 << 20)
    let follower = CollectingSink()
    d.changeFeed.watch(workspace: "acme", from: .oldest, sink: follower)
    for i in 0..<5 {
      _ = fs.takeLargestRead()
      write(d.store, "p\(i)")
      follower.wait(for: 2 * (i + 1))
      // Reads cover the records since the last read: a few hundred bytes, not 1 MiB.
      #expect(fs.takeLargestRead() < 4096, "read past the durable records")
    }
    #expect(follower.events.map(\.personID) == (0..<5).flatMap { ["p\($0)", "p\($0)"] })
    let st = d.wal.status
    #expect(st.activeDurableBytes > WALSegment.headerSize)
    let size = try fs.size(
      fs.open(cfDirectory + "/" + WALSegment.fileName(firstSeq: st.activeSegment)))
    // Zeros ahead: at least half a chunk (the writer adds them while idle).
    #expect(size >= 2 << 20 && st.activeDurableBytes < 4096)
    d.close()
  }

  /// `--fsync none` syncs only when a segment is left: the feed follows the records once
  /// written, not only once a segment closes (it used to send nothing until then), and
  /// `after_seq` of the newest written record is no cursor beyond the newest.
  @Test func underFsyncNoneTheFeedFollowsWrittenRecords() throws {
    let (fs, _, d) = try setUp(fsync: .none)
    let syncs = fs.count(.sync)
    let follower = CollectingSink()
    d.changeFeed.watch(workspace: "acme", from: .now, sink: follower)
    for i in 0..<3 {
      write(d.store, "p\(i)")
      follower.wait(for: 2 * (i + 1))
    }
    #expect(follower.events.map(\.personID) == ["p0", "p0", "p1", "p1", "p2", "p2"])
    #expect(fs.count(.sync) == syncs, "the feed must not make the log sync")
    let st = d.wal.status
    #expect(st.durableThrough < st.readableThrough && st.readableThrough == st.writtenThrough)
    let resumed = CollectingSink()
    d.changeFeed.watch(workspace: "acme", from: .after(st.writtenThrough - 1), sink: resumed)
    resumed.wait(for: 1)
    #expect(resumed.events.map(\.personID) == ["p2"] && resumed.end == nil)
    d.close()
  }

  func rotate(_ d: DurableStore) throws {
    _ = awaitStoreCall { c in
      try! d.wal.rotate { r in c(r.map { _ in 0 }.mapError { _ in CoreError.unavailable("") }) }
    }
  }

  /// Complete segments are read a chunk at a time too: watchers that start at the oldest
  /// record and inside a complete segment get every record once, in order, and no read
  /// returns more than one record's frame (the chunk is smaller than any record); the
  /// directory is not listed again for every chunk.
  @Test func completeSegmentsAreReadInChunks() throws {
    var options = ChangeFeed.Options()
    options.readChunk = 40
    let (fs, _, d) = try setUp(feedOptions: options)
    for i in 0..<30 {
      write(d.store, "p\(i)")
      if i % 10 == 9 { try rotate(d) }
    }
    let segments = try WALSegment.list(directory: cfDirectory, fileSystem: fs)
    #expect(segments.count == 4)
    let listed = fs.listCount
    let all = CollectingSink()
    d.changeFeed.watch(workspace: "acme", from: .oldest, sink: all)
    all.wait(for: 60)
    // Read on from where it stopped: the directory is listed at the start and where a
    // segment ends, not for each of the ~60 one-record reads.
    #expect(fs.listCount - listed <= 12, "listed \(fs.listCount - listed) times")
    let want = (0..<30).flatMap { ["p\($0)", "p\($0)"] }
    #expect(all.events.map(\.personID) == want)
    let seqs = all.events.map(\.seq)
    #expect(seqs == seqs.sorted() && Set(seqs).count == 60)

    _ = fs.takeLargestRead()
    // After a record in the middle of the first segment, and of the second.
    for start in [seqs[7], seqs[29]] {
      let late = CollectingSink()
      d.changeFeed.watch(workspace: "acme", from: .after(start), sink: late)
      let expected = seqs.filter { $0 > start }
      late.wait(for: expected.count)
      #expect(late.events.map(\.seq) == expected)
    }
    #expect(fs.takeLargestRead() < 200, "a whole segment was read at once")
    d.close()
  }

  /// A complete segment damaged in the middle — a payload byte flipped, or a frame length
  /// past the largest a record may have: the watcher gets the records before the damage,
  /// then its watch fails naming the segment.
  @Test(arguments: [false, true])
  func aDamagedCompleteSegmentFailsTheWatch(lengthField: Bool) throws {
    let (fs, _, d) = try setUp()
    for i in 0..<6 { write(d.store, "p\(i)") }
    try rotate(d)
    write(d.store, "p6")
    let clean = CollectingSink()
    d.changeFeed.watch(workspace: "acme", from: .oldest, sink: clean)
    clean.wait(for: 14)
    let first = try WALSegment.list(directory: cfDirectory, fileSystem: fs)[0]
    let path = cfDirectory + "/" + first.name
    var bytes = fs.contents(path)!
    let scan = WALSegment.scan(bytes, file: first.name, firstSeq: first.firstSeq)
    // The 8th record: a byte of its payload, or its length (0xFFFFFFFF).
    let payload = scan.records[7].lowerBound
    if lengthField {
      for i in 0..<4 { bytes[payload - RecordFrame.headerSize + i] = 0xFF }
    } else {
      bytes[payload + 3] ^= 0xFF
    }
    fs.setContents(path, bytes)
    let sink = fromOldest(d, events: 100)
    let before = clean.events.filter { $0.seq < first.firstSeq + 7 }
    #expect(!before.isEmpty)
    #expect(sink.events == before, "the events of the records before the damaged one")
    guard case .failed(let m) = sink.end else {
      Issue.record("expected a failed watch, got \(String(describing: sink.end))")
      d.close()
      return
    }
    #expect(m.contains(first.name))
    d.close()
  }

  @Test func retentionDeletesExpiredCoveredSegmentsOnly() throws {
    let (fs, clock, d) = try setUp()
    write(d.store, "p1")
    try d.snapshot(force: true)
    // Within the retention: the segment stays, though the snapshot covers it.
    try d.retentionPass(rotateAfterMillis: 0)
    var segments = try WALSegment.list(directory: cfDirectory, fileSystem: fs)
    #expect(segments.count == 2 && segments[0].firstSeq == 1)
    clock.advance(by: 61_000)
    write(d.store, "p2")
    // Expired: p1's segment goes (a snapshot is taken for the new one when needed).
    try d.retentionPass(rotateAfterMillis: 0)
    segments = try WALSegment.list(directory: cfDirectory, fileSystem: fs)
    #expect(segments.first!.firstSeq > 1)
    let late = CollectingSink()
    d.changeFeed.watch(workspace: "acme", from: .after(1), sink: late)
    late.wait(for: 1)
    guard case .outOfRange(let m) = late.end else {
      Issue.record("expected OUT_OF_RANGE, got \(String(describing: late.end))")
      return
    }
    #expect(m.contains("oldest retained seq is \(segments.first!.firstSeq)"))
    let oldest = fromOldest(d, events: 2)
    #expect(oldest.events.map(\.personID) == ["p2", "p2"])
    d.close()
  }

  /// A segment written while the clock was an hour ahead (set back since) ages from when a
  /// retention pass first sees it so: it used to stay, and every segment after it with it,
  /// for as long as the clock had been wrong (past the retention, and past erasures).
  @Test func aSegmentDatedAheadOfTheClockExpiresAfterTheRetention() throws {
    let (fs, clock, d) = try setUp()
    let start = clock.nowMillis()
    clock.advance(by: 3_600_000)
    write(d.store, "ahead")
    try d.retentionPass(rotateAfterMillis: 0)
    clock.set(start)
    write(d.store, "p1")
    try d.retentionPass(rotateAfterMillis: 0)
    #expect(try WALSegment.list(directory: cfDirectory, fileSystem: fs).count == 3)
    clock.advance(by: 61_000)
    write(d.store, "p2")
    try d.retentionPass(rotateAfterMillis: 0)
    let oldest = fromOldest(d, events: 2)
    #expect(oldest.events.map(\.personID) == ["p2", "p2"])
    d.close()
  }

  /// SPEC §3: OUT_OF_RANGE only when an event of the consumer's workspace after its cursor
  /// expired; another workspace's expired records are no reason.
  @Test func onlyTheWorkspacesOwnExpiredEventsMakeACursorOutOfRange() throws {
    let (fs, clock, d) = try setUp()
    _ = awaitStoreCall { c in
      d.store.configureWorkspace(
        WorkspaceConfig(workspace: "other", channels: ["email"]), actor: "a", mayCreate: true
      ) { c($0.map { _ in 0 }) }
    }
    write(d.store, "a0")  // acme's last events before the cursor
    let cursor = d.wal.status.durableThrough
    _ = awaitStoreCall { c in
      d.store.identify(IdentifyRequest(workspace: "other", personID: "b0"), actor: "w") {
        c($0.map { _ in 0 })
      }
    }
    try d.snapshot(force: true)
    clock.advance(by: 61_000)
    try d.retentionPass(rotateAfterMillis: 0)  // a new segment for what follows
    write(d.store, "a1")
    try d.retentionPass(rotateAfterMillis: 0)  // everything up to "b0" expires
    let oldest = try #require(try WALSegment.list(directory: cfDirectory, fileSystem: fs).first)
    #expect(oldest.firstSeq > cursor + 1)
    let resumed = CollectingSink()
    d.changeFeed.watch(workspace: "acme", from: .after(cursor), sink: resumed)
    resumed.wait(for: 2)
    #expect(resumed.events.map(\.personID) == ["a1", "a1"] && resumed.end == nil)
    // One seq earlier, acme's own expired event is missed: OUT_OF_RANGE.
    let late = CollectingSink()
    d.changeFeed.watch(workspace: "acme", from: .after(cursor - 1), sink: late)
    late.wait(for: 1)
    guard case .outOfRange = late.end else {
      Issue.record("expected OUT_OF_RANGE, got \(String(describing: late.end))")
      d.close()
      return
    }
    d.close()
  }

  @Test func erasureRewritesRetainedSegmentsKeepingTheTombstone() throws {
    let (fs, _, d) = try setUp()
    write(d.store, "gone")
    write(d.store, "stays")
    forget(d.store, "gone")
    _ = try d.compact()
    var text: [UInt8] = []
    for s in try WALSegment.list(directory: cfDirectory, fileSystem: fs) {
      text += try fs.readFile(cfDirectory + "/" + s.name)
    }
    let hay = String(decoding: text, as: UTF8.self)
    #expect(!hay.contains("gone@x.example") && !hay.contains("src-gone"))
    #expect(hay.contains("stays@x.example"))
    let sink = fromOldest(d, events: 3)
    #expect(
      sink.events.map { "\($0.action) \($0.personID)" } == [
        "identify stays", "unsubscribe stays", "forget gone",
      ])
    d.close()
  }

  /// Erasures of a store nobody watches keep nothing for the feed: the erased seqs go to
  /// the feed thread, which drops them from its watchers' queues, and there is no thread
  /// before the first watch (each erasure's seqs stayed in memory for the life of the
  /// process: 1.2 MB per 800 forgets of persons with 40 writes each). Once a watcher
  /// comes, the thread takes them.
  @Test func erasuresOfAnUnwatchedStoreKeepNothing() throws {
    let (_, _, d) = try setUp()
    func pending() -> Int { d.changeFeed.state.withLock { $0.erased.count } }
    for i in 0..<5 {
      write(d.store, "gone\(i)")
      forget(d.store, "gone\(i)")
      _ = try d.compact()
    }
    #expect(pending() == 0, "erasures kept for a feed thread that does not run")
    let sink = fromOldest(d, events: 5)
    #expect(sink.events.map(\.action) == Array(repeating: "forget", count: 5))
    write(d.store, "later")
    forget(d.store, "later")
    _ = try d.compact()
    let deadline = monotonicNanos() + 5_000_000_000
    while pending() > 0 && monotonicNanos() < deadline { usleep(1000) }
    #expect(pending() == 0, "the feed thread did not take the erasure")
    d.close()
  }

  /// A suppression that forgets a person leaves the log as its tombstone only: the
  /// person's id and the keyed hashes, not the reason the caller gave (it stayed beside the
  /// id for the change retention, 24 h by default). The forget event keeps its seq.
  @Test func aSuppressionsReasonLeavesWithThePersonItForgot() throws {
    let (fs, _, d) = try setUp()
    write(d.store, "gone")
    _ = try d.compact()  // the person's records in a segment of their own
    for (who, reason) in [("gone", "asked by gone@x.example"), ("nobody", "spam from x")] {
      _ = awaitStoreCall { c in
        d.store.suppress(
          SuppressRequest(
            workspace: "acme", identifiers: [Identifier(kind: .personID, value: who)],
            reason: reason),
          actor: "officer"
        ) { c($0.map { _ in 0 }) }
      }
    }
    func logText() throws -> String {
      var text: [UInt8] = []
      for s in try WALSegment.list(directory: cfDirectory, fileSystem: fs) {
        text += try fs.readFile(cfDirectory + "/" + s.name)
      }
      return String(decoding: text, as: UTF8.self)
    }
    #expect(try logText().contains("asked by gone@x.example"))
    let forgot = try #require(fromOldest(d, events: 3).events.last)
    #expect(forgot.action == "forget" && forgot.personID == "gone")
    _ = try d.compact()
    let hay = try logText()
    #expect(!hay.contains("asked by gone@x.example") && !hay.contains("gone@x.example"))
    #expect(hay.contains("spam from x"), "a suppression that forgot nobody is kept")
    #expect(fromOldest(d, events: 1).events == [forgot])
    d.close()
  }

  /// An erasure reads only the retained segments that may hold the removed persons'
  /// records: each segment is summarized once (its attachments, removals and a filter of its
  /// persons), not read again at every erasure. (Every erasure read the whole retained log
  /// twice: 3.3 s for 2,000,000 records, so a busy server's 24 h of log outgrew the
  /// erasure deadline.) What is erased is unchanged: the plan's own tests, and the ones
  /// above, check that.
  @Test func anErasureReadsOnlyTheSegmentsHoldingTheRemovedPersons() throws {
    let (fs, _, d) = try setUp()
    for p in ["old1", "old2", "gone"] {
      write(d.store, p)
      _ = try d.compact()  // a complete segment for each person
    }
    let segments = try WALSegment.list(directory: cfDirectory, fileSystem: fs).map(\.name)
    #expect(segments.count == 4)
    let before = segments.map { fs.bytesRead($0) }
    forget(d.store, "gone")
    _ = try d.compact()
    let read = zip(segments, before).map { fs.bytesRead($0) - $1 }
    #expect(read[0] == 0 && read[1] == 0, "segments without the person were read: \(read)")
    #expect(read[2] > 0, "the person's segment is read and rewritten: \(read)")
    var text: [UInt8] = []
    for s in try WALSegment.list(directory: cfDirectory, fileSystem: fs) {
      text += try fs.readFile(cfDirectory + "/" + s.name)
    }
    let hay = String(decoding: text, as: UTF8.self)
    #expect(!hay.contains("gone@x.example") && hay.contains("old1@x.example"))
    d.close()
  }

  /// An erasure renames a rewritten segment (its erased records shorter) over the one a
  /// watcher is reading; until the feed hears of it, the offset the watcher kept points
  /// anywhere in the new file. It finds its record again instead of calling the segment
  /// damaged (it ended with INTERNAL "no valid record of seq N where it should be": seen by
  /// catch-up watchers under concurrent forgets and suppressions).
  @Test func aSegmentRewrittenUnderAWatcherIsReadAgainNotCalledDamaged() throws {
    var options = ChangeFeed.Options()
    options.queueLimit = 1  // a record a read, so the watcher stops inside the segment
    let (fs, _, d) = try setUp(feedOptions: options)
    for p in ["a", "b", "c"] { write(d.store, p) }
    _ = try d.compact()  // the segment of those records is now complete
    let sink = CollectingSink()
    sink.buffered.store(1 << 20, ordering: .relaxed)  // takes nothing: the watcher waits
    d.changeFeed.watch(workspace: "acme", from: .oldest, sink: sink)
    usleep(200_000)  // it read a's Identify and keeps the offset of a's next record
    // Erase a's records without telling the feed (as between an erasure's rename and its
    // notice).
    func isA(_ c: Command?) -> Bool {
      switch c {
      case .identify(let x): x.person == .person("a")
      case .setPreference(let x): x.person == .person("a")
      default: false
      }
    }
    let segment = try #require(try WALSegment.list(directory: cfDirectory, fileSystem: fs).first)
    let n = try WALSegment.rewrite(segment, directory: cfDirectory, fileSystem: fs) {
      _, payload throws(StorageError) in
      isA(try LogRecordCodec.decode(payload).command) ? .erase : .keep
    }
    #expect(n == 2)
    sink.buffered.store(0, ordering: .relaxed)
    sink.wait(for: 5)
    #expect(sink.end == nil, "\(String(describing: sink.end))")
    #expect(
      sink.events.map { "\($0.action) \($0.personID)" } == [
        "identify a", "identify b", "unsubscribe b", "identify c", "unsubscribe c",
      ])
    d.close()
  }

  /// A damaged segment the snapshot covers cannot be rewritten: an erasure deletes it (and
  /// the older ones) instead of failing until an operator does, so the forgotten person
  /// leaves the disk; only change-feed history before the next segment goes.
  @Test func erasureDeletesADamagedSegmentTheSnapshotCovers() throws {
    let (fs, _, d) = try setUp()
    write(d.store, "gone")
    write(d.store, "stays")
    _ = try d.compact()  // the segment of those records is now complete and covered
    let segments = try WALSegment.list(directory: cfDirectory, fileSystem: fs)
    let damaged = segments[0]
    var bytes = try fs.readFile(cfDirectory + "/" + damaged.name)
    bytes[bytes.count - 3] ^= 0xFF  // in the last record: "stays"'s
    fs.setContents(cfDirectory + "/" + damaged.name, bytes)
    forget(d.store, "gone")
    #expect(try d.finishInterruptedErasure() != nil, "a damaged segment is outstanding work")
    let left = try WALSegment.list(directory: cfDirectory, fileSystem: fs)
    #expect(!left.contains(damaged))
    var text: [UInt8] = []
    for s in left { text += try fs.readFile(cfDirectory + "/" + s.name) }
    #expect(!String(decoding: text, as: UTF8.self).contains("gone@x.example"))
    let sink = fromOldest(d, events: 1)
    #expect(sink.events.map { "\($0.action) \($0.personID)" } == ["forget gone"])
    #expect(try d.compact() > 0, "and erasures go on")
    d.close()
  }
}

@Suite struct ChangeFeedBackpressureTests {
  /// A sink whose stream never drains.
  final class StuckSink: ChangeSink {
    let state = Mutex<(sent: Int, end: ChangeFeedEnd?)>((0, nil))
    var bufferedBytes: Int { 1 << 20 }
    var isCancelled: Bool { false }
    func send(_ event: ChangeEvent, whenDrained: @escaping @Sendable () -> Void) {
      state.withLock { $0.sent += 1 }
    }
    func finish(_ end: ChangeFeedEnd) { state.withLock { $0.end = end } }
  }

  @Test func aConsumerTooSlowForTooLongIsCutOff() throws {
    let fs = FaultyFileSystem()
    try fs.createDirectory(cfDirectory)
    var options = ChangeFeed.Options()
    options.stallLimitNanos = 100_000_000
    let d = try DurableStore.open(
      directory: cfDirectory, fileSystem: fs, clock: ManualClock(), secret: cfSecret,
      fsync: .always, truncateDamaged: false, feedOptions: options, log: { _ in }
    ).0
    let sink = StuckSink()
    d.changeFeed.watch(workspace: "default", from: .oldest, sink: sink)
    _ = awaitStoreCall { c in
      d.store.identify(IdentifyRequest(workspace: "default", personID: "p"), actor: "w") {
        c($0.map { _ in 0 })
      }
    }
    for _ in 0..<400 where sink.state.withLock({ $0.end }) == nil { usleep(5000) }
    guard case .resourceExhausted(let m) = sink.state.withLock({ $0.end }) else {
      Issue.record(
        "expected RESOURCE_EXHAUSTED, got \(String(describing: sink.state.withLock { $0.end }))")
      return
    }
    #expect(m.contains("last event received (0 at most)") && sink.state.withLock { $0.sent } == 0)
    d.close()
  }
}
