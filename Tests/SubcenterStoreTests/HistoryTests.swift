// GetHistory: every action with its actor, newest first; paging stable under inserts;
// tokens that are not ours refused.

import SubcenterCore
import SubcenterStore
import Testing

@Suite struct HistoryTests {
  @Test func everyActionRecorded() throws {
    let f = Fixture()
    try f.identify(anonymousID: "c1", actor: "web")
    f.clock.advance(by: 1)
    try f.set(.anonymousID("c1"), .subscribed, topic: "promo", source: "banner")
    f.clock.advance(by: 1)
    try f.identify("u1", email: "u1@x.com", anonymousID: "c1", actor: "web")
    f.clock.advance(by: 1)
    try f.set(.personID("u1"), .unsubscribed, channel: "sms", source: "one_click", notice: "v2")
    f.clock.advance(by: 1)
    try f.global(.personID("u1"), unsubscribed: true, source: "support")
    f.clock.advance(by: 1)
    try f.global(.personID("u1"), unsubscribed: false, source: "support")
    f.clock.advance(by: 1)
    _ = try f.override(.personID("u1"), channel: "sms", messageID: "m9", justification: "outage")
    let page = try f.history(.email("u1@x.com"))
    #expect(page.nextPageToken == "")
    #expect(
      page.entries.map(\.action.name) == [
        "override", "resubscribe", "unsubscribe_all", "unsubscribe", "merge", "identify",
        "subscribe", "identify",
      ])
    #expect(
      page.entries.map(\.at) == (0...6).reversed().map { t0 + Int64($0) }.prefix(5) + [
        t0 + 2, t0 + 1, t0,
      ])
    let unsub = page.entries[3]
    #expect(
      unsub.channel == "sms" && unsub.topic == "" && unsub.source == "one_click"
        && unsub.actor == "writer")
    #expect(unsub.detail == "notice_version: v2")
    #expect(
      page.entries[0].actor == "oncall"
        && page.entries[0].detail.contains("overrode: CHANNEL_UNSUBSCRIBED"))
    #expect(page.entries[5].detail == "created with email" && page.entries[5].actor == "web")
    #expect(page.entries[6].topic == "promo" && page.entries[6].source == "banner")
  }

  /// A support tool pages a visitor's history by anonymous id; the visitor signs in
  /// meanwhile (a merge). The next page, asked with the same id and token, goes on in the
  /// person's history, which holds the visitor's entries (the token was refused as "not a
  /// page token of this history").
  @Test func aTokenOfAMergedAnonymousProfileStillPages() throws {
    let f = Fixture()
    try f.identify(anonymousID: "c1")
    for i in 0..<3 {
      f.clock.advance(by: 1)
      try f.set(.anonymousID("c1"), .subscribed, channel: "email", source: "s\(i)")
    }
    let first = try f.history(.anonymousID("c1"), size: 2)
    #expect(first.entries.map(\.source) == ["s2", "s1"])
    f.clock.advance(by: 1)
    try f.identify("u1", anonymousID: "c1")
    let next = try f.history(.anonymousID("c1"), size: 2, token: first.nextPageToken)
    #expect(next.entries.map(\.source) == ["s0", ""])
    #expect(next.entries.last?.action.name == "identify")
    // Another profile's token is still refused.
    try f.identify(anonymousID: "c2")
    try f.set(.anonymousID("c2"), .subscribed, channel: "email", source: "x")
    let foreign = try f.history(.anonymousID("c2"), size: 1).nextPageToken
    let refused = failure { () throws(CoreError) in
      try f.history(.personID("u1"), token: foreign)
    }
    #expect(refused?.field == "page_token")
  }

  @Test func pagingIsStableUnderInserts() throws {
    let f = Fixture()
    try f.identify("u1")
    for i in 0..<9 {
      if i % 3 == 0 { f.clock.advance(by: 1) }
      try f.set(.personID("u1"), .subscribed, channel: "email", source: "s\(i)")
    }
    var seen: [String] = []
    var token = ""
    var pages = 0
    repeat {
      let page = try f.history(.personID("u1"), size: 4, token: token)
      seen += page.entries.map(\.source)
      token = page.nextPageToken
      pages += 1
      // Changes between pages never shift later pages.
      try f.set(.personID("u1"), .unsubscribed, channel: "sms", source: "late\(pages)")
    } while !token.isEmpty
    #expect(seen == (0..<9).reversed().map { "s\($0)" } + [""])
    #expect(pages == 3)
  }

  @Test func foreignTokensRefused() throws {
    let f = Fixture()
    try f.identify("u1")
    try f.identify("u2")
    for i in 0..<3 { try f.set(.personID("u1"), .subscribed, channel: "email", source: "\(i)") }
    let token = try f.history(.personID("u1"), size: 1).nextPageToken
    #expect(!token.isEmpty)
    #expect(try f.history(.personID("u1"), size: 1, token: token).entries.count == 1)
    for bad in ["garbage", token + "0", String(token.dropLast())] {
      #expect(
        failure { () throws(CoreError) in try f.history(.personID("u1"), token: bad) }?.field
          == "page_token")
    }
    #expect(
      failure { () throws(CoreError) in try f.history(.personID("u2"), token: token) }?.field
        == "page_token")
    #expect(
      failure { () throws(CoreError) in try f.history(.personID("u1"), size: 1001) }?.field
        == "page_size")
    #expect(
      failure { () throws(CoreError) in try f.history(.personID("u1"), size: -1) }?.field
        == "page_size")
    #expect(try f.history(.personID("u1"), size: 1000).entries.count == 4)
    #expect(
      failure { () throws(CoreError) in try f.history(.personID("ghost")) }?.kind == .notFound)
  }

  @Test func pageSizeZeroMeansHundred() throws {
    let f = Fixture()
    try f.identify("u1")
    for _ in 0..<120 { _ = try f.override(.personID("u1")) }
    let page = try f.history(.personID("u1"))
    #expect(page.entries.count == 100 && !page.nextPageToken.isEmpty)
    #expect(try f.history(.personID("u1"), token: page.nextPageToken).entries.count == 21)
  }
}
