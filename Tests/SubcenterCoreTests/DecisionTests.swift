// The decision of SPEC §2 as a table: every rule, their precedence and every note under
// the table, plus the edges of the message-limit window on a manual clock.

import SubcenterCore
import Testing

/// Channels email, sms, push; topics news (default SUBSCRIBED) and promo (default
/// UNSUBSCRIBED, i.e. opt-in); email limited to 2 sends a minute.
private func workspace(overrides: Bool) -> Workspace {
  try! Workspace(
    WorkspaceConfig(
      workspace: "acme", channels: ["email", "sms", "push"],
      topics: [
        Topic(id: "news", name: "News", defaultState: .subscribed),
        Topic(id: "promo", name: "Promotions", defaultState: .unsubscribed),
      ],
      limits: [MessageLimit(channel: "email", maxMessages: 2, windowSeconds: 60)],
      allowImportantOverride: overrides))
}

private let now: Int64 = 1_700_000_000_000

/// One row: the person's state, the request, and the expected answer.
struct DecisionCase: CustomTestStringConvertible, Sendable {
  var name: String
  var known = true
  var suppressed = false
  var global = false
  /// (channel, topic, subscribed) with "" for "every" / "the whole channel".
  var entries: [(String, String, Bool)] = []
  /// Email sends, in ms before now.
  var emailSendsAgo: [Int64] = []
  var channel = "email"
  var topic = ""
  var isOverride = false
  var overridesAllowed = true
  var allowed: Bool
  var reason: DecisionReason
  var underlying: DecisionReason? = nil
  var countsSend = false

  var testDescription: String { name }
}

private let cases: [DecisionCase] = [
  // Rule 1 and 2, and overrides never passing them.
  .init(name: "suppressed", known: false, suppressed: true, allowed: false, reason: .suppressed),
  .init(
    name: "suppressed + override", known: false, suppressed: true, isOverride: true,
    allowed: false, reason: .suppressed),
  .init(name: "unknown person", known: false, allowed: false, reason: .unknownPerson),
  .init(
    name: "unknown + override", known: false, isOverride: true, allowed: false,
    reason: .unknownPerson),
  // Rule 3.
  .init(
    name: "override passes global", global: true, isOverride: true, allowed: true,
    reason: .overriddenImportant, underlying: .globalUnsubscribed),
  .init(
    name: "override passes an opt-in topic", topic: "promo", isOverride: true, allowed: true,
    reason: .overriddenImportant, underlying: .topicNotOptedIn),
  .init(
    name: "override on a subscribed person", isOverride: true, allowed: true,
    reason: .overriddenImportant, underlying: .subscribed),
  .init(
    name: "override skips limits", emailSendsAgo: [1, 2], isOverride: true, allowed: true,
    reason: .overriddenImportant, underlying: .messageLimitReached),
  .init(
    name: "override forbidden: global", global: true, isOverride: true,
    overridesAllowed: false, allowed: false, reason: .globalUnsubscribed),
  .init(
    name: "override forbidden: limits apply", emailSendsAgo: [1, 2], isOverride: true,
    overridesAllowed: false, allowed: false, reason: .messageLimitReached),
  .init(
    name: "override forbidden: allowed but never counted", isOverride: true,
    overridesAllowed: false, allowed: true, reason: .subscribed, countsSend: false),
  // Rule 4.
  .init(name: "global", global: true, allowed: false, reason: .globalUnsubscribed),
  .init(
    name: "global beats a topic opt-in", global: true, entries: [("email", "promo", true)],
    topic: "promo", allowed: false, reason: .globalUnsubscribed),
  .init(
    name: "global beats a channel subscribe", global: true, entries: [("email", "", true)],
    allowed: false, reason: .globalUnsubscribed),
  // Rule 5.
  .init(
    name: "channel unsubscribed", entries: [("email", "", false)], allowed: false,
    reason: .channelUnsubscribed),
  .init(
    name: "channel entry beats topic entries",
    entries: [("email", "", false), ("email", "news", true), ("", "news", true)],
    topic: "news", allowed: false, reason: .channelUnsubscribed),
  .init(
    name: "another channel's entry does not apply", entries: [("sms", "", false)],
    allowed: true, reason: .subscribed, countsSend: true),
  // Rule 6.
  .init(
    name: "(channel, topic) SUBSCRIBED beats (\"\", topic) UNSUBSCRIBED",
    entries: [("email", "news", true), ("", "news", false)], topic: "news", allowed: true,
    reason: .subscribed, countsSend: true),
  .init(
    name: "(channel, topic) UNSUBSCRIBED beats (\"\", topic) SUBSCRIBED",
    entries: [("email", "news", false), ("", "news", true)], topic: "news", allowed: false,
    reason: .topicUnsubscribed),
  .init(
    name: "(\"\", topic) UNSUBSCRIBED on every channel", entries: [("", "news", false)],
    channel: "sms", topic: "news", allowed: false, reason: .topicUnsubscribed),
  .init(
    name: "(\"\", topic) beats the default", entries: [("", "news", false)], topic: "news",
    allowed: false, reason: .topicUnsubscribed),
  .init(
    name: "SUBSCRIBED default", topic: "news", allowed: true, reason: .subscribed,
    countsSend: true),
  .init(
    name: "UNSUBSCRIBED default, no entry", topic: "promo", allowed: false,
    reason: .topicNotOptedIn),
  .init(
    name: "UNSUBSCRIBED default, subscribed on the channel", entries: [("email", "promo", true)],
    topic: "promo", allowed: true, reason: .subscribed, countsSend: true),
  .init(
    name: "UNSUBSCRIBED default, subscribed everywhere", entries: [("", "promo", true)],
    channel: "push", topic: "promo", allowed: true, reason: .subscribed, countsSend: true),
  .init(
    name: "UNSUBSCRIBED default, subscribed on another channel only",
    entries: [("sms", "promo", true)], topic: "promo", allowed: false, reason: .topicNotOptedIn),
  .init(
    name: "a channel SUBSCRIBED does not opt in", entries: [("email", "", true)], topic: "promo",
    allowed: false, reason: .topicNotOptedIn),
  .init(
    name: "explicit UNSUBSCRIBED on an opt-in topic", entries: [("", "promo", false)],
    topic: "promo", allowed: false, reason: .topicUnsubscribed),
  .init(
    name: "topic rule before limits", entries: [("", "news", false)], emailSendsAgo: [1, 2],
    topic: "news", allowed: false, reason: .topicUnsubscribed),
  // Rule 7 and its window: a send counts while now - t < window.
  .init(
    name: "limit reached", emailSendsAgo: [1, 2], allowed: false,
    reason: .messageLimitReached),
  .init(
    name: "limit reached with a topic", emailSendsAgo: [1, 2], topic: "news", allowed: false,
    reason: .messageLimitReached),
  .init(
    name: "one below the limit", emailSendsAgo: [1], allowed: true, reason: .subscribed,
    countsSend: true),
  .init(
    name: "a send exactly one window ago no longer counts", emailSendsAgo: [1, 60_000],
    allowed: true, reason: .subscribed, countsSend: true),
  .init(
    name: "a send 1 ms inside the window counts", emailSendsAgo: [1, 59_999], allowed: false,
    reason: .messageLimitReached),
  .init(
    name: "no limit on sms", emailSendsAgo: [1, 2], channel: "sms", allowed: true,
    reason: .subscribed, countsSend: true),
  // Rule 8.
  .init(
    name: "nothing set", channel: "push", allowed: true, reason: .subscribed, countsSend: true),
]

@Suite struct DecisionTests {
  @Test(arguments: cases)
  func table(_ c: DecisionCase) throws {
    let ws = workspace(overrides: c.overridesAllowed)
    var person: Person?
    if c.known {
      var p = Person(key: .person("p1"), at: now - 1_000_000)
      if c.global { p.setGlobal(unsubscribed: true, source: "", at: now - 10, actor: "t") }
      for (ch, topic, subscribed) in c.entries {
        p.setPreference(
          channel: ch.isEmpty ? 0 : ws.channelID(ch)!,
          topic: topic.isEmpty ? 0 : ws.topicID(topic)!,
          state: subscribed ? .subscribed : .unsubscribed, source: "", noticeVersion: "",
          at: now - 10, actor: "t")
      }
      for ago in c.emailSendsAgo.sorted(by: >) {
        p.sends.append(SendRecord(channel: ws.channelID("email")!, at: now - ago))
      }
      person = p
    }
    let target = ws.target(
      channel: try ws.configuredChannel(c.channel), topic: try ws.configuredTopic(c.topic))
    let d = decideDelivery(
      target: target, person: person, suppressed: c.suppressed, isOverride: c.isOverride, now: now)
    #expect(d.allowed == c.allowed)
    #expect(d.reason == c.reason)
    #expect(d.underlying == (c.underlying ?? c.reason))
    #expect(d.countsSend == c.countsSend)
    #expect(d.countsSend ? d.allowed : true, "a denied decision counts nothing")
  }

  /// record_send on the manual clock: two sends pass and count, the third is refused and
  /// not counted; one window after the first send it passes again.
  @Test func limitWindowOnTheClock() {
    let ws = workspace(overrides: false)
    let clock = ManualClock(now)
    let email = ws.channelID("email")!
    let target = ws.target(channel: email, topic: 0)
    var p = Person(key: .person("p"), at: clock.nowMillis())
    func send() -> DecisionReason {
      let d = decideDelivery(
        target: target, person: p, suppressed: false, isOverride: false, now: clock.nowMillis())
      if d.countsSend { p.recordSend(channel: email, at: clock.nowMillis(), limit: target.limit) }
      return d.reason
    }
    #expect(send() == .subscribed)
    clock.advance(by: 10_000)
    #expect(send() == .subscribed)
    #expect(send() == .messageLimitReached)
    #expect(p.sends.count == 2, "a denied decision counts nothing")
    clock.advance(by: 49_999)  // 59,999 ms after the first send
    #expect(send() == .messageLimitReached)
    clock.advance(by: 1)  // exactly one window after the first send
    #expect(send() == .subscribed)
    #expect(p.sends.count == 2, "the send that left the window is dropped when counting")
    #expect(send() == .messageLimitReached)
  }

  /// The override detail names the unprefixed reason first, then the message and the
  /// justification, so a justification that looks like an outcome stays inside its field.
  @Test func overrideDetails() {
    func detail(_ o: DecisionOutcome, allowed: Bool) -> String {
      HistoryDetail.override(
        messageID: "m-1", justification: "password reset", outcome: o, overridesAllowed: allowed)
    }
    let overrode = DecisionOutcome(
      allowed: true, reason: .overriddenImportant, underlying: .globalUnsubscribed,
      countsSend: false)
    #expect(
      detail(overrode, allowed: true)
        == "overrode: GLOBAL_UNSUBSCRIBED; message_id: m-1; justification: password reset")
    let subscribed = DecisionOutcome(
      allowed: true, reason: .overriddenImportant, underlying: .subscribed, countsSend: false)
    #expect(
      detail(subscribed, allowed: true)
        == "overrode: SUBSCRIBED (nothing to override: allowed); message_id: m-1; "
        + "justification: password reset")
    let refused = DecisionOutcome(
      allowed: false, reason: .globalUnsubscribed, underlying: .globalUnsubscribed,
      countsSend: false)
    #expect(
      detail(refused, allowed: false)
        == "refused: GLOBAL_UNSUBSCRIBED (overrides are disabled in this workspace)"
        + "; message_id: m-1; justification: password reset")
    let forged = HistoryDetail.override(
      messageID: "m-1", justification: "x; refused: SUPPRESSED", outcome: overrode,
      overridesAllowed: true)
    #expect(forged.hasPrefix("overrode: GLOBAL_UNSUBSCRIBED; "))
    #expect(DecisionReason.topicNotOptedIn.name == "TOPIC_NOT_OPTED_IN")
  }

  /// Effective states: every configured channel × ("" + every topic), nothing counted.
  @Test func effectiveGrid() {
    let ws = workspace(overrides: false)
    var p = Person(key: .person("p"), at: now)
    p.setPreference(
      channel: ws.channelID("sms")!, topic: 0, state: .unsubscribed, source: "", noticeVersion: "",
      at: now, actor: "t")
    let grid = ws.effectiveNumbered(subject: p, now: now).map(ws.effectiveState)
    #expect(grid.count == 9)
    #expect(
      grid.map { "\($0.channel)/\($0.topic)" }.prefix(3) == ["email/", "email/news", "email/promo"])
    #expect(grid.filter { $0.channel == "sms" }.allSatisfy { $0.reason == .channelUnsubscribed })
    #expect(grid.first { $0.channel == "push" && $0.topic == "promo" }?.reason == .topicNotOptedIn)
    #expect(p.sends.isEmpty)
  }

  /// A person with many entries in a workspace of many topics (the grid looks entries up
  /// in a table built once): every row is what CheckDelivery decides for it.
  @Test func effectiveGridOfManyEntriesIsEveryRowsDecision() throws {
    let topics = (0..<60).map {
      Topic(id: "t\($0)", name: "T", defaultState: $0 % 3 == 0 ? .unsubscribed : .subscribed)
    }
    let ws = try Workspace(
      WorkspaceConfig(workspace: "acme", channels: ["email", "sms"], topics: topics))
    var p = Person(key: .person("p"), at: now)
    for (i, t) in topics.enumerated() where i % 2 == 0 {
      p.setPreference(
        channel: i % 4 == 0 ? 0 : ws.channelID("sms")!, topic: ws.topicID(t.id)!,
        state: i % 8 == 0 ? .subscribed : .unsubscribed, source: "", noticeVersion: "", at: now,
        actor: "t")
    }
    p.setPreference(
      channel: ws.channelID("email")!, topic: 0, state: .unsubscribed, source: "",
      noticeVersion: "", at: now, actor: "t")
    #expect(p.explicitEntryCount == 31)
    let grid = ws.effectiveNumbered(subject: p, now: now).map(ws.effectiveState)
    #expect(grid.count == 2 * 61)
    for row in grid {
      let target = ws.target(
        channel: ws.channelID(row.channel)!, topic: row.topic.isEmpty ? 0 : ws.topicID(row.topic)!)
      let decided = decideDelivery(
        target: target, person: p, suppressed: false, isOverride: false, now: now)
      #expect(decided.reason == row.reason, "\(row.channel)/\(row.topic)")
    }
    #expect(Set(grid.map(\.reason)).count >= 4, "the rows cover several rules")
  }
}
