// ForgetPerson, SuppressIdentifiers, UnsuppressIdentifiers and the anonymous TTL.

import Foundation
import SubcenterCore
import SubcenterStore
import Synchronization
import Testing

@Suite struct PrivacyTests {
  /// The hook the server schedules erasures with runs once per removal, at the same stack
  /// depth every time: it used to be wrapped in two more thunks at each run (a closure
  /// stored bare in a `Mutex`), so the thousandth forget ran two thousand of them.
  @Test func theRemovalHookDoesNotGrowWithEachRemoval() throws {
    let f = Fixture()
    let runs = Mutex<[Int]>([])
    f.store.whenPersonsRemoved {
      let depth = Thread.callStackReturnAddresses.count
      runs.withLock { $0.append(depth) }
    }
    for i in 0..<300 {
      try f.identify("p\(i)")
      _ = try f.forget(.personID("p\(i)"))
    }
    let depths = runs.withLock { $0 }
    #expect(depths.count == 300)
    #expect(depths.max()! - depths.min()! < 20, "stack depths \(depths.min()!)...\(depths.max()!)")
  }

  @Test func forget() throws {
    let f = Fixture()
    try f.identify("u1", email: "u1@x.com", phone: "+14155550100", anonymousID: "c1")
    try f.set(.personID("u1"), .subscribed, topic: "promo")
    _ = try f.check(.personID("u1"), record: true)
    f.clock.advance(by: 3)
    let r = try f.forget(.email("u1@x.com"))
    #expect(r == ForgetResult(personID: "u1", key: .person("u1"), erasedAt: t0 + 3))
    for ref in [
      PersonRef.personID("u1"), .email("u1@x.com"), .phone("+14155550100"), .anonymousID("c1"),
    ] {
      #expect(failure { () throws(CoreError) in try f.profile(ref) }?.kind == .notFound)
      #expect(try f.check(ref).reason == .unknownPerson)
    }
    #expect(
      failure { () throws(CoreError) in try f.forget(.personID("u1")) }?.kind == .notFound,
      "a second forget")
    #expect(failure { () throws(CoreError) in try f.history(.personID("u1")) }?.kind == .notFound)
    // Without also_suppress the identifiers are free again, and nothing of the old person
    // comes back.
    let again = try f.identify("u1", email: "u1@x.com", anonymousID: "c1")
    #expect(again.createdAt == t0 + 3)
    #expect(try f.preferences(.personID("u1")).entries.isEmpty)
    #expect(try f.history(.personID("u1")).entries.count == 1)
    #expect(try f.check(.personID("u1"), record: true).allowed)
    #expect(try f.check(.personID("u1"), record: true).allowed, "counters were forgotten")
  }

  @Test func forgetAndSuppress() throws {
    let f = Fixture()
    try f.identify("u1", email: "u1@x.com", phone: "+14155550100", anonymousID: "c1")
    _ = try f.forget(.personID("u1"), alsoSuppress: true)
    #expect(f.store.suppressionHashes(in: "acme").count == 4)
    for ref in [
      PersonRef.personID("u1"), .email("U1@x.com"), .phone("+14155550100"), .anonymousID("c1"),
    ] {
      #expect(try f.check(ref).reason == .suppressed)
      #expect(try f.override(ref).reason == .suppressed)
    }
    let e = failure { () throws(CoreError) in try f.identify("u2", email: "u1@x.com") }
    #expect(e?.kind == .failedPrecondition && e?.field == "email")
  }

  @Test func forgetAnonymousProfile() throws {
    let f = Fixture()
    try f.identify(anonymousID: "c1")
    let r = try f.forget(.anonymousID("c1"))
    #expect(r.personID == "" && r.key == .anonymous("c1"))
    #expect(f.store.persons(in: "acme").isEmpty)
  }

  @Test func suppressForgetsTheHolderOnly() throws {
    let f = Fixture()
    try f.identify("u1", email: "u1@x.com", phone: "+14155550100")
    try f.identify("u2", email: "u2@x.com")
    try f.identify(anonymousID: "c9")
    let r = try f.suppress(
      [
        Identifier(kind: .email, value: "  U1@X.COM "), Identifier(kind: .email, value: "u1@x.com"),
        Identifier(kind: .anonymousID, value: "c9"),
        Identifier(kind: .phone, value: "+19999999999"),
      ], reason: "complaint")
    #expect(r.suppressed == 3, "duplicates count once")
    #expect(r.forgottenPersonIDs == ["u1"], "anonymous profiles are forgotten but not listed")
    #expect(
      try f.check(.personID("u1")).reason == .unknownPerson,
      "the holder's person id is not suppressed")
    #expect(try f.check(.email("u1@x.com")).reason == .suppressed)
    #expect(try f.check(.anonymousID("c9")).reason == .suppressed)
    // The holder's phone was not suppressed: someone may take it.
    #expect(try f.identify("u3", phone: "+14155550100").phone == "+14155550100")
    #expect(try f.profile(.personID("u2")).email == "u2@x.com")
    // Again: nothing new.
    #expect(
      try f.suppress([Identifier(kind: .email, value: "u1@x.com")])
        == SuppressResult(suppressed: 0, forgottenPersonIDs: []))
    // Unsuppress counts removals and frees the identifier.
    #expect(
      try f.unsuppress([
        Identifier(kind: .email, value: "U1@x.com"), Identifier(kind: .email, value: "never@x.com"),
      ]).suppressed == 1)
    #expect(try f.check(.email("u1@x.com")).reason == .unknownPerson)
    #expect(try f.identify("u1", email: "u1@x.com").email == "u1@x.com")
  }

  @Test func suppressRefusals() throws {
    let f = Fixture()
    #expect(
      failure { () throws(CoreError) in try f.suppress([Identifier(kind: .unspecified, value: "x")])
      }?.field == "identifiers[0].kind")
    #expect(
      failure { () throws(CoreError) in
        try f.suppress([
          Identifier(kind: .email, value: "a@b.c"), Identifier(kind: .phone, value: "555"),
        ])
      }?.field == "identifiers[1].value")
    #expect(
      failure { () throws(CoreError) in
        try f.suppress([], reason: String(repeating: "r", count: 257))
      }?.field == "reason")
    #expect(try f.suppress([], reason: String(repeating: "r", count: 256)).suppressed == 0)
    #expect(f.store.suppressionHashes(in: "acme").isEmpty)
  }

  /// Every change that removes persons, and only those, is reported once applied (the
  /// server schedules their erasure from disk there): a forget, a suppression that forgets
  /// only an anonymous profile (its answer lists no person id), an anonymous-TTL expiry;
  /// not a suppression that forgets nobody, nor any other write.
  @Test func everyRemovalIsReportedOnceApplied() throws {
    let f = Fixture()
    let reported = Mutex(0)
    f.store.whenPersonsRemoved { reported.withLock { $0 += 1 } }
    func count() -> Int { reported.withLock { $0 } }
    try f.identify("u1", email: "u1@x.com")
    try f.identify(anonymousID: "c1")
    try f.identify(anonymousID: "c2")
    try f.set(.personID("u1"), .unsubscribed, channel: "email")
    _ = try f.suppress([Identifier(kind: .email, value: "nobody@x.com")])
    #expect(count() == 0, "no write so far removed anyone")
    _ = try f.forget(.personID("u1"))
    #expect(count() == 1)
    let r = try f.suppress([Identifier(kind: .anonymousID, value: "c1")])
    #expect(r.forgottenPersonIDs == [] && count() == 2, "an anonymous profile counts too")
    f.clock.advance(by: 10_000)
    #expect(try sync { f.store.expireAnonymousProfiles(ttlMillis: 5_000, completion: $0) } == 1)
    #expect(count() == 3, "the TTL expiry of c2")
  }

  @Test func anonymousTTL() throws {
    let f = Fixture()
    let ttl: Int64 = 30 * 24 * 3600 * 1000
    try f.identify(anonymousID: "old")
    try f.identify(anonymousID: "changed")
    try f.identify(anonymousID: "merged")
    try f.identify("u1", email: "u1@x.com")
    f.clock.advance(by: 1000)
    try f.set(.anonymousID("changed"), .subscribed, channel: "email")
    try f.identify("u2", anonymousID: "merged")
    f.clock.advance(by: ttl - 1001)
    #expect(try sync { f.store.expireAnonymousProfiles(ttlMillis: ttl, completion: $0) } == 0)
    f.clock.advance(by: 1)  // exactly one TTL after "old" was created
    #expect(try sync { f.store.expireAnonymousProfiles(ttlMillis: ttl, completion: $0) } == 1)
    #expect(try f.check(.anonymousID("old")).reason == .unknownPerson)
    #expect(try f.check(.anonymousID("changed")).allowed)
    #expect(try f.profile(.anonymousID("merged")).personID == "u2")
    f.clock.advance(by: 1000)
    #expect(try sync { f.store.expireAnonymousProfiles(ttlMillis: ttl, completion: $0) } == 1)
    #expect(f.store.persons(in: "acme").map(\.key) == [.person("u1"), .person("u2")])
    // The expired id is free again.
    #expect(try f.identify(anonymousID: "old").anonymousIDs == ["old"])
  }
}
