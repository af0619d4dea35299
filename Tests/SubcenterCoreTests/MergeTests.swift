// Merging an anonymous profile into a person, the anonymous TTL, and history paging.

import SubcenterCore
import Testing

private let t0: Int64 = 1_700_000_000_000

@Suite struct MergeTests {
  @Test func laterChoiceWinsTieGoesToPerson() {
    var person = Person(key: .person("p"), at: t0)
    var anon = Person(key: .anonymous("a"), at: t0)
    // key (1,0): person later → person's stays
    person.setPreference(
      channel: 1, topic: 0, state: .subscribed, source: "p", noticeVersion: "", at: t0 + 20,
      actor: "x")
    anon.setPreference(
      channel: 1, topic: 0, state: .unsubscribed, source: "a", noticeVersion: "", at: t0 + 10,
      actor: "x")
    // key (0,1): anonymous later → anonymous wins
    person.setPreference(
      channel: 0, topic: 1, state: .subscribed, source: "p", noticeVersion: "", at: t0 + 10,
      actor: "x")
    anon.setPreference(
      channel: 0, topic: 1, state: .unsubscribed, source: "a", noticeVersion: "v2", at: t0 + 30,
      actor: "x")
    // key (2,0): tie → person's stays
    person.setPreference(
      channel: 2, topic: 0, state: .subscribed, source: "p", noticeVersion: "", at: t0 + 40,
      actor: "x")
    anon.setPreference(
      channel: 2, topic: 0, state: .unsubscribed, source: "a", noticeVersion: "", at: t0 + 40,
      actor: "x")
    // key (3,2): only the anonymous profile has it
    anon.setPreference(
      channel: 3, topic: 2, state: .subscribed, source: "a", noticeVersion: "", at: t0 + 5,
      actor: "x")

    person.merge(anonymous: anon, at: t0 + 100, actor: "merger")
    #expect(person.entry(channel: 1, topic: 0)?.source == "p")
    #expect(person.entry(channel: 0, topic: 1)?.source == "a")
    #expect(person.entry(channel: 0, topic: 1)?.noticeVersion == "v2")
    #expect(person.entry(channel: 2, topic: 0)?.source == "p")
    #expect(person.entry(channel: 3, topic: 2)?.state == .subscribed)
    #expect(person.entries.map(\.key) == person.entries.map(\.key).sorted())
    #expect(person.anonymousIDs == ["a"])
    #expect(person.updatedAt == t0 + 100)
  }

  @Test func inTheMergesMillisecondTheProfilesEntriesComeFirst() {
    // An anonymous visitor unsubscribes, then signs up: the Identify that creates the person
    // and merges runs in the same millisecond. Its entries are the newest.
    var anon = Person(key: .anonymous("a"), at: t0)
    anon.setPreference(
      channel: 1, topic: 0, state: .unsubscribed, source: "anon", noticeVersion: "", at: t0 + 5,
      actor: "x")
    var person = Person(key: .person("p"), at: t0 + 5)
    person.appendHistory(action: .identify, actor: "x", detail: "created", at: t0 + 5)
    person.merge(anonymous: anon, at: t0 + 5, actor: "x")
    #expect(person.history.map(\.action) == [.unsubscribe, .identify, .merge])
    #expect(Set(person.history.map(\.seq)).count == 3, "sequence numbers stay unique")
  }

  @Test func laterGlobalFlagWins() {
    var person = Person(key: .person("p"), at: t0)
    var anon = Person(key: .anonymous("a"), at: t0)
    person.setGlobal(unsubscribed: false, source: "p", at: t0 + 1, actor: "x")
    anon.setGlobal(unsubscribed: true, source: "a", at: t0 + 2, actor: "x")
    var merged = person
    merged.merge(anonymous: anon, at: t0 + 10, actor: "x")
    #expect(merged.global == GlobalFlag(unsubscribed: true, updatedAt: t0 + 2, source: "a"))

    // Tie: the person's flag stays.
    anon.global = GlobalFlag(unsubscribed: true, updatedAt: t0 + 1, source: "a")
    merged = person
    merged.merge(anonymous: anon, at: t0 + 10, actor: "x")
    #expect(merged.global?.source == "p")

    // Only the anonymous profile has one.
    merged = Person(key: .person("q"), at: t0)
    merged.merge(anonymous: anon, at: t0 + 10, actor: "x")
    #expect(merged.global?.unsubscribed == true)
  }

  @Test func historiesJoinedInTimeOrder() {
    var person = Person(key: .person("p"), at: t0)
    var anon = Person(key: .anonymous("a"), at: t0)
    anon.setPreference(
      channel: 1, topic: 0, state: .subscribed, source: "", noticeVersion: "", at: t0 + 1,
      actor: "x")
    person.setPreference(
      channel: 1, topic: 0, state: .subscribed, source: "", noticeVersion: "", at: t0 + 2,
      actor: "x")
    anon.setPreference(
      channel: 2, topic: 0, state: .subscribed, source: "", noticeVersion: "", at: t0 + 3,
      actor: "x")
    anon.sends = [SendRecord(channel: 1, at: t0 + 1)]
    person.sends = [SendRecord(channel: 1, at: t0 + 2)]
    person.merge(anonymous: anon, at: t0 + 4, actor: "x")
    #expect(person.history.map(\.at) == [t0 + 1, t0 + 2, t0 + 3, t0 + 4])
    #expect(person.history.last?.action == .merge)
    #expect(Set(person.history.map(\.seq)).count == 4, "sequence numbers stay unique")
    #expect(person.sends.map(\.at) == [t0 + 1, t0 + 2])
  }

  @Test func anonymousTTL() {
    let ttl: Int64 = 1000
    var a = Person(key: .anonymous("a"), at: t0)
    let p = Person(key: .person("p"), at: t0)
    #expect(!AnonymousTTL.isExpired(updatedAt: t0, now: t0 + ttl - 1, ttlMillis: ttl))
    #expect(AnonymousTTL.isExpired(updatedAt: t0, now: t0 + ttl, ttlMillis: ttl))
    // Changed while the clock was ahead (set back since): a TTL or more ahead goes now,
    // less than a TTL ahead a TTL after its date.
    #expect(AnonymousTTL.isExpired(updatedAt: t0 + ttl, now: t0, ttlMillis: ttl))
    #expect(!AnonymousTTL.isExpired(updatedAt: t0 + ttl - 1, now: t0, ttlMillis: ttl))
    #expect(AnonymousTTL.isExpired(updatedAt: t0 + ttl - 1, now: t0 + 2 * ttl - 1, ttlMillis: ttl))
    #expect(AnonymousTTL.expired([a, p], now: t0 + ttl, ttlMillis: ttl) == [.anonymous("a")])
    a.setGlobal(unsubscribed: true, source: "", at: t0 + 500, actor: "x")
    #expect(
      AnonymousTTL.expired([a, p], now: t0 + ttl, ttlMillis: ttl).isEmpty,
      "a change restarts the TTL")
  }
}

@Suite struct HistoryPagingTests {
  let hasher = IdentifierHasher(secret: Array("k".utf8))

  func history(_ n: Int) -> [HistoryRecord] {
    var p = Person(key: .person("p"), at: t0)
    for i in 0..<n { p.appendHistory(action: .subscribe, actor: "x", at: t0 + Int64(i / 2)) }
    return p.history
  }

  @Test func pagesNewestFirstAndStableUnderInserts() throws {
    var p = Person(key: .person("p"), at: t0)
    for i in 0..<7 {
      p.appendHistory(action: .subscribe, actor: "x", detail: "\(i)", at: t0 + Int64(i / 2))
    }
    let first = HistoryPaging.page(p.history, before: nil, size: 3)
    #expect(first.records.map(\.detail) == ["6", "5", "4"])
    // New entries arrive between pages.
    p.appendHistory(action: .unsubscribe, actor: "x", detail: "new", at: t0 + 3)
    p.appendHistory(action: .unsubscribe, actor: "x", detail: "new2", at: t0 + 100)
    let second = HistoryPaging.page(p.history, before: first.next, size: 3)
    #expect(second.records.map(\.detail) == ["3", "2", "1"])
    let third = HistoryPaging.page(p.history, before: second.next, size: 3)
    #expect(third.records.map(\.detail) == ["0"])
    #expect(third.next == nil)
    // Exactly one page's worth: no next page.
    #expect(HistoryPaging.page(history(3), before: nil, size: 3).next == nil)
    #expect(HistoryPaging.page([], before: nil, size: 3).records.isEmpty)
  }

  @Test func tokensAreOursAndBound() throws {
    let cursor = HistoryPaging.Cursor(at: t0, seq: 42)
    let token = HistoryPaging.token(for: cursor, workspace: "w", key: .person("p"), hasher: hasher)
    #expect(
      try HistoryPaging.cursor(from: token, workspace: "w", key: .person("p"), hasher: hasher)
        == cursor)
    #expect(
      try HistoryPaging.cursor(from: "", workspace: "w", key: .person("p"), hasher: hasher) == nil)
    let bad = CoreError.invalidArgument("page_token", "not a page token of this history")
    #expect(throws: bad) {
      try HistoryPaging.cursor(from: token, workspace: "w", key: .person("q"), hasher: hasher)
    }
    #expect(throws: bad) {
      try HistoryPaging.cursor(from: token, workspace: "v", key: .person("p"), hasher: hasher)
    }
    #expect(throws: bad) {
      try HistoryPaging.cursor(from: token, workspace: "w", key: .anonymous("p"), hasher: hasher)
    }
    #expect(throws: bad) {
      try HistoryPaging.cursor(
        from: token, workspace: "w", key: .person("p"), hasher: IdentifierHasher(secret: [1]))
    }
    var flipped = Array(token.utf8)
    flipped[5] = flipped[5] == UInt8(ascii: "0") ? UInt8(ascii: "1") : UInt8(ascii: "0")
    for t in [
      "x", "c1.", String(decoding: flipped, as: UTF8.self), token + "00",
      "c1." + String(repeating: "g", count: 40),
    ] {
      #expect(throws: bad) {
        try HistoryPaging.cursor(from: t, workspace: "w", key: .person("p"), hasher: hasher)
      }
    }
  }
}
