// CheckDelivery, record_send and message limits on the manual clock, CheckDeliveryBatch
// (order, 10,000 and 10,001, duplicates) and OverrideForImportantMessage.

import SubcenterCore
import SubcenterStore
import Testing

@Suite struct DeliveryTests {
  @Test func refsUnknownAndSuppressed() throws {
    let f = Fixture()
    try f.identify("u1", email: "u1@x.com", phone: "+14155550100", anonymousID: "c1")
    try f.identify(anonymousID: "c2")
    for ref in [
      PersonRef.personID("u1"), .email("U1@X.COM"), .phone("+14155550100"), .anonymousID("c1"),
    ] {
      #expect(try f.check(ref) == Decision(allowed: true, reason: .subscribed, personID: "u1"))
    }
    #expect(
      try f.check(.anonymousID("c2")) == Decision(allowed: true, reason: .subscribed, personID: ""))
    #expect(
      try f.check(.personID("nobody"))
        == Decision(allowed: false, reason: .unknownPerson, personID: ""))
    _ = try f.suppress([Identifier(kind: .email, value: "bad@x.com")])
    #expect(
      try f.check(.email("Bad@X.com"))
        == Decision(allowed: false, reason: .suppressed, personID: ""))
    #expect(try f.check(.email("other@x.com")).reason == .unknownPerson)
  }

  @Test func refusals() throws {
    let f = Fixture()
    try f.identify("u1")
    #expect(
      failure { () throws(CoreError) in try f.check(.personID("u1"), channel: "") }?.field
        == "channel")
    #expect(
      failure { () throws(CoreError) in try f.check(.personID("u1"), channel: "fax") }?.field
        == "channel")
    #expect(
      failure { () throws(CoreError) in try f.check(.personID("u1"), topic: "x") }?.field == "topic"
    )
    #expect(failure { () throws(CoreError) in try f.check(nil) }?.field == "person")
    #expect(
      failure { () throws(CoreError) in try f.check(.personID("u1"), workspace: "gone") }?.kind
        == .notFound)
  }

  @Test func recordSendCountsOnlyAllowedDecisions() throws {
    let f = Fixture()
    try f.identify("u1")
    let u1 = PersonRef.personID("u1")
    #expect(try f.check(u1).allowed)
    #expect(try f.check(u1).allowed, "without record_send nothing is counted")
    try f.global(u1, unsubscribed: true)
    for _ in 0..<3 { #expect(try f.check(u1, record: true).reason == .globalUnsubscribed) }
    try f.global(u1, unsubscribed: false)
    #expect(try f.check(u1, record: true).reason == .subscribed, "denied decisions counted nothing")
    f.clock.advance(by: 1000)
    #expect(try f.check(u1, record: true).reason == .subscribed)
    #expect(try f.check(u1, record: true).reason == .messageLimitReached)
    #expect(try f.check(u1, channel: "sms", record: true).allowed, "sms has no limit")
    // Window edges: the first send was at t0 (+ the two identify/global writes at t0).
    f.clock.set(t0 + 59_999)
    #expect(try f.check(u1).reason == .messageLimitReached)
    f.clock.set(t0 + 60_000)
    #expect(try f.check(u1).reason == .subscribed, "a send exactly one window ago no longer counts")
    #expect(try f.check(u1, record: true).reason == .subscribed)
    #expect(try f.check(u1).reason == .messageLimitReached)
    // Overrides skip the limit and never count.
    #expect(try f.override(u1).reason == .overriddenImportant)
    f.clock.set(t0 + 60_500)
    #expect(try f.check(u1).reason == .messageLimitReached, "the override counted nothing")
    f.clock.set(t0 + 120_000)
    #expect(try f.check(u1).reason == .subscribed)
  }

  /// Sends recorded while the clock was ahead (an NTP step back, a clock set wrong at boot
  /// and then fixed) lock no one out for longer than two windows: those more than a window
  /// ahead no longer count, those less than a window ahead count until they leave it.
  @Test func sendsRecordedWhileTheClockWasAheadLockNoOneOut() throws {
    let f = Fixture()
    try f.identify("u1")
    let u1 = PersonRef.personID("u1")
    // The clock an hour ahead: two sends reach the limit (2 a minute).
    f.clock.set(t0 + 3_600_000)
    for _ in 0..<2 { #expect(try f.check(u1, record: true).allowed) }
    #expect(try f.check(u1).reason == .messageLimitReached)
    // Set back right: they were more than a window ahead, so they no longer count (they
    // used to for the whole hour).
    f.clock.set(t0)
    #expect(try f.check(u1).reason == .subscribed)
    for _ in 0..<2 { #expect(try f.check(u1, record: true).allowed) }
    #expect(try f.check(u1).reason == .messageLimitReached, "the limit holds after the step")
    // Stepped back 30 s after two sends: they count until they leave their window.
    let t1 = t0 + 10_000_000
    f.clock.set(t1)
    for _ in 0..<2 { #expect(try f.check(u1, record: true).allowed) }
    f.clock.set(t1 - 30_000)
    #expect(try f.check(u1, record: true).reason == .messageLimitReached)
    f.clock.set(t1 + 59_999)
    #expect(try f.check(u1).reason == .messageLimitReached)
    f.clock.set(t1 + 60_000)
    #expect(try f.check(u1).reason == .subscribed)
    // The edge: sends one window ahead no longer count, one millisecond less still do.
    let t2 = t0 + 20_000_000
    f.clock.set(t2)
    for _ in 0..<2 { #expect(try f.check(u1, record: true).allowed) }
    f.clock.set(t2 - 59_999)
    #expect(try f.check(u1).reason == .messageLimitReached)
    f.clock.set(t2 - 60_000)
    #expect(try f.check(u1).reason == .subscribed)
  }

  @Test func batchOrderMixAndDuplicates() throws {
    let f = Fixture()
    try f.identify("u1", email: "u1@x.com")
    try f.identify("u2", phone: "+14155550100")
    try f.identify(anonymousID: "c3")
    try f.set(.personID("u2"), .unsubscribed, channel: "email")
    _ = try f.suppress([Identifier(kind: .personID, value: "banned")])
    let refs: [PersonRef?] = [
      .personID("nobody"), .email("U1@x.com"), .phone("+14155550100"), .anonymousID("c3"),
      .personID("banned"), .personID("u1"), .personID("u1"), .personID("u1"),
    ]
    let d = try f.batch(refs, record: true)
    #expect(
      d.map(\.reason) == [
        .unknownPerson, .subscribed, .channelUnsubscribed, .subscribed, .suppressed, .subscribed,
        .messageLimitReached, .messageLimitReached,
      ])
    #expect(d.map(\.personID) == ["", "u1", "u2", "", "", "u1", "u1", "u1"])
    // Exactly two sends were counted for u1 (the limit), one for c3.
    #expect(try f.check(.personID("u1")).reason == .messageLimitReached)
    #expect(try f.check(.anonymousID("c3")).reason == .subscribed)
    #expect(try f.check(.anonymousID("c3"), record: true).reason == .subscribed)
    #expect(try f.check(.anonymousID("c3")).reason == .messageLimitReached)
    // Same answers without counting, on a channel with no limit.
    #expect(
      try f.batch(refs, channel: "push").map(\.allowed) == [
        false, true, true, true, false, true, true, true,
      ])
  }

  @Test func batchSizeLimitAndFieldNames() throws {
    let f = Fixture()
    for i in 0..<100 { try f.identify("p\(i)") }
    let full: [PersonRef?] = (0..<10_000).map { .personID("p\($0 % 200)") }
    let d = try f.batch(full)
    #expect(d.count == 10_000)
    #expect(d[0].allowed && d[99].allowed && !d[100].allowed && d[9_999].reason == .unknownPerson)
    let e = failure { () throws(CoreError) in try f.batch(full + [.personID("p0")]) }
    #expect(e?.kind == .invalidArgument && e?.field == "persons")
    #expect(
      failure { () throws(CoreError) in try f.batch([.personID("p0"), nil]) }?.field == "persons[1]"
    )
    #expect(
      failure { () throws(CoreError) in try f.batch([.personID("p0"), .email("nope")]) }?.field
        == "persons[1].email")
    #expect(try f.batch([]).isEmpty)
  }

  @Test func overrideWrittenToHistory() throws {
    let f = Fixture()
    try f.identify("u1")
    try f.global(.personID("u1"), unsubscribed: true)
    let d = try f.override(
      .personID("u1"), topic: "promo", messageID: "msg-42", justification: "fraud alert")
    #expect(d == Decision(allowed: true, reason: .overriddenImportant, personID: "u1"))
    let h = try f.history(.personID("u1")).entries[0]
    #expect(
      h.action == .override && h.actor == "oncall" && h.channel == "email" && h.topic == "promo")
    #expect(h.detail.contains("msg-42") && h.detail.contains("fraud alert"))
    #expect(h.detail.contains("overrode: GLOBAL_UNSUBSCRIBED"))

    // Unknown and suppressed persons: a decision, no history.
    #expect(try f.override(.personID("ghost")).reason == .unknownPerson)
    // Field checks.
    #expect(
      failure { () throws(CoreError) in try f.override(.personID("u1"), messageID: "") }?.field
        == "message_id")
    #expect(
      failure { () throws(CoreError) in try f.override(.personID("u1"), justification: "") }?.field
        == "justification")
    #expect(
      failure { () throws(CoreError) in
        try f.override(.personID("u1"), justification: String(repeating: "j", count: 1025))
      }?.field == "justification")
    #expect(
      failure { () throws(CoreError) in
        try f.override(.personID("u1"), messageID: String(repeating: "m", count: 257))
      }?.field == "message_id")
  }

  @Test func overrideRefusedWhenTheWorkspaceForbidsIt() throws {
    var c = acme
    c.allowImportantOverride = false
    let f = Fixture(c)
    try f.identify("u1")
    try f.global(.personID("u1"), unsubscribed: true)
    let d = try f.override(.personID("u1"))
    #expect(d == Decision(allowed: false, reason: .globalUnsubscribed, personID: "u1"))
    let h = try f.history(.personID("u1")).entries[0]
    #expect(h.action == .override)
    #expect(h.detail.contains("refused: GLOBAL_UNSUBSCRIBED"))
  }
}
