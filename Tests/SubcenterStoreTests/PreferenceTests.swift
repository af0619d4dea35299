// Subscribe / Unsubscribe / UnsubscribeAll / Resubscribe / GetPreferences, removed and
// re-added topics, and the refusals that name their field.

import SubcenterCore
import SubcenterStore
import Testing

@Suite struct PreferenceTests {
  @Test func writesNeverCreateAPerson() throws {
    let f = Fixture()
    let e = failure { () throws(CoreError) in
      try f.set(.personID("ghost"), .subscribed, channel: "email")
    }
    #expect(e?.kind == .notFound)
    #expect(
      failure { () throws(CoreError) in try f.global(.email("g@x.com"), unsubscribed: true) }?.kind
        == .notFound)
    #expect(f.store.persons(in: "acme").isEmpty)
  }

  @Test func refusalsNameTheField() throws {
    let f = Fixture()
    try f.identify("u1")
    let u1 = PersonRef.personID("u1")
    func field(_ body: () throws(CoreError) -> Preferences) -> String? { failure(body)?.field }
    #expect(field { () throws(CoreError) in try f.set(u1, .subscribed) } == "channel")
    #expect(
      field { () throws(CoreError) in try f.set(u1, .subscribed, channel: "fax") } == "channel")
    #expect(field { () throws(CoreError) in try f.set(u1, .subscribed, topic: "nope") } == "topic")
    #expect(
      field { () throws(CoreError) in try f.set(nil, .subscribed, channel: "email") } == "person")
    #expect(
      field { () throws(CoreError) in try f.set(.email("x"), .subscribed, channel: "email") }
        == "person.email")
    #expect(
      field { () throws(CoreError) in
        try f.set(u1, .subscribed, channel: "email", source: String(repeating: "s", count: 129))
      } == "source")
    #expect(
      field { () throws(CoreError) in
        try f.set(u1, .subscribed, channel: "email", notice: String(repeating: "n", count: 129))
      } == "notice_version")
    #expect(
      failure { () throws(CoreError) in
        try f.set(u1, .subscribed, channel: "email", workspace: "none")
      }?.kind == .notFound)
    // Edges accepted.
    try f.set(
      u1, .subscribed, channel: "email", source: String(repeating: "s", count: 128),
      notice: String(repeating: "n", count: 128))
  }

  @Test func entriesGlobalAndEffective() throws {
    let f = Fixture()
    try f.identify("u1", email: "u1@x.com")
    f.clock.advance(by: 7)
    let p = try f.set(
      .email("u1@x.com"), .unsubscribed, channel: "sms", source: "preference_center", notice: "v3")
    #expect(p.personID == "u1")
    #expect(
      p.entries == [
        PreferenceEntry(
          channel: "sms", topic: "", state: .unsubscribed, updatedAt: t0 + 7,
          source: "preference_center", noticeVersion: "v3")
      ])
    #expect(p.effective.count == 9)
    #expect(p.effective.first { $0.channel == "sms" }?.reason == .channelUnsubscribed)
    #expect(
      p.effective.first { $0.channel == "email" && $0.topic == "promo" }?.reason == .topicNotOptedIn
    )

    try f.set(.personID("u1"), .subscribed, topic: "promo", source: "one_click")
    let g = try f.global(.personID("u1"), unsubscribed: true, source: "support")
    #expect(g.globalUnsubscribed && g.globalSource == "support" && g.globalUpdatedAt == t0 + 7)
    #expect(g.effective.allSatisfy { $0.reason == .globalUnsubscribed })
    let r = try f.global(.personID("u1"), unsubscribed: false, source: "support")
    #expect(!r.globalUnsubscribed)
    #expect(r.entries.count == 2, "Resubscribe keeps channel and topic entries")
    #expect(r.effective.first { $0.channel == "email" && $0.topic == "promo" }?.allowed == true)
    #expect(try f.preferences(.personID("u1")) == r)
  }

  @Test func effectiveIncludesLimitsAndCountsNothing() throws {
    let f = Fixture()
    try f.identify("u1")
    _ = try f.check(.personID("u1"), record: true)
    _ = try f.check(.personID("u1"), record: true)
    let p = try f.preferences(.personID("u1"))
    #expect(
      p.effective.filter { $0.channel == "email" }.allSatisfy {
        $0.reason == .messageLimitReached || $0.reason == .topicNotOptedIn
      })
    #expect(p.effective.first { $0.channel == "sms" && $0.topic == "" }?.allowed == true)
    f.clock.advance(by: 60_000)
    #expect(
      try f.check(.personID("u1")).allowed, "GetPreferences counted nothing; the window has passed")
  }

  @Test func removedTopicIsUnknownButEntriesReturn() throws {
    let f = Fixture()
    try f.identify("u1")
    try f.set(.personID("u1"), .subscribed, topic: "promo")
    var c = acme
    c.topics.removeAll { $0.id == "promo" }
    _ = try sync { f.store.configureWorkspace(c, actor: "a", mayCreate: false, completion: $0) }
    #expect(try f.preferences(.personID("u1")).entries.isEmpty)
    #expect(try f.preferences(.personID("u1")).effective.count == 6)
    #expect(
      failure { () throws(CoreError) in try f.check(.personID("u1"), topic: "promo") }?.field
        == "topic")
    #expect(
      failure { () throws(CoreError) in try f.set(.personID("u1"), .subscribed, topic: "promo") }?
        .field == "topic")
    _ = try sync { f.store.configureWorkspace(acme, actor: "a", mayCreate: false, completion: $0) }
    #expect(try f.preferences(.personID("u1")).entries.map(\.topic) == ["promo"])
    #expect(try f.check(.personID("u1"), topic: "promo").allowed)
  }
}
