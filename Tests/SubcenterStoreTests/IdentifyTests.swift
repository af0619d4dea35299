// Identify (SPEC §3): creating and updating persons and anonymous profiles, the merge of
// an anonymous profile, ALREADY_EXISTS and FAILED_PRECONDITION with nothing stored.

import SubcenterCore
import SubcenterStore
import Testing

@Suite struct IdentifyTests {
  @Test func defaultWorkspaceExists() throws {
    let store = SubscriptionStore(clock: ManualClock(t0), secret: secret)
    let config = try store.workspace("default")
    #expect(config.channels == ["email", "sms", "push", "in_app"])
    #expect(config.topics.isEmpty)
    #expect(failure { () throws(CoreError) in try store.workspace("nope") }?.kind == .notFound)
    #expect(failure { () throws(CoreError) in try store.workspace("No Pe") }?.field == "workspace")
  }

  @Test func configureCreatesOnlyWithPermission() throws {
    let f = Fixture()
    var c = acme
    c.workspace = "other"
    let e = failure { () throws(CoreError) in
      try sync { f.store.configureWorkspace(c, actor: "a", mayCreate: false, completion: $0) }
    }
    #expect(e?.kind == .permissionDenied)
    c.workspace = "acme"
    c.topics = []
    let replaced = try sync {
      f.store.configureWorkspace(c, actor: "a", mayCreate: false, completion: $0)
    }
    #expect(replaced.topics.isEmpty)
    #expect(try f.store.workspace("acme") == c)
  }

  @Test func createUpdateAndResolve() throws {
    let f = Fixture()
    let p = try f.identify("u1", email: "  Jane@Example.COM ", phone: "+14155550100")
    #expect(p.personID == "u1")
    #expect(p.email == "jane@example.com")
    #expect(p.createdAt == t0 && p.updatedAt == t0)
    #expect(try f.profile(.email("JANE@example.com")).personID == "u1")
    #expect(try f.profile(.phone("+14155550100")).personID == "u1")

    f.clock.advance(by: 5)
    // A new email replaces the old one; the phone, not given, is kept.
    let q = try f.identify("u1", email: "jane@new.example")
    #expect(q.email == "jane@new.example" && q.phone == "+14155550100")
    #expect(q.updatedAt == t0 + 5 && q.createdAt == t0)
    #expect(
      failure { () throws(CoreError) in try f.profile(.email("jane@example.com")) }?.kind
        == .notFound)
    // The old email is free for someone else.
    #expect(try f.identify("u2", email: "jane@example.com").personID == "u2")

    // Nothing new: no command, same profile.
    let before = f.log.lastSequence
    #expect(try f.identify("u1", email: "jane@new.example") == q)
    #expect(f.log.lastSequence == before)
  }

  @Test func refusals() throws {
    let f = Fixture()
    try f.identify("u1", email: "a@x.com", phone: "+14155550100", anonymousID: "anon-1")
    func kind(_ body: () throws(CoreError) -> Profile) -> (CoreError.Kind, String?)? {
      failure(body).map { ($0.kind, $0.field) }
    }
    #expect(
      kind { () throws(CoreError) in try f.identify(email: "b@x.com") }! == (
        .invalidArgument, "person_id"
      ))
    #expect(kind { () throws(CoreError) in try f.identify() }! == (.invalidArgument, "person_id"))
    #expect(
      kind { () throws(CoreError) in try f.identify("u2", email: "not-an-email") }! == (
        .invalidArgument, "email"
      ))
    #expect(
      kind { () throws(CoreError) in try f.identify("u2", phone: "4155550100") }! == (
        .invalidArgument, "phone"
      ))
    #expect(
      kind { () throws(CoreError) in try f.identify("u\u{7}") }! == (.invalidArgument, "person_id"))
    #expect(
      kind { () throws(CoreError) in try f.identify("u2", email: "A@X.COM") }! == (
        .alreadyExists, "email"
      ))
    #expect(
      kind { () throws(CoreError) in try f.identify("u2", phone: "+14155550100") }! == (
        .alreadyExists, "phone"
      ))
    #expect(
      kind { () throws(CoreError) in try f.identify("u2", anonymousID: "anon-1") }! == (
        .alreadyExists, "anonymous_id"
      ))
    #expect(
      kind { () throws(CoreError) in try f.identify("u2", workspace: "nope") }!.0 == .notFound)
    // None of that created u2.
    #expect(failure { () throws(CoreError) in try f.profile(.personID("u2")) }?.kind == .notFound)
  }

  @Test func suppressedIdentifierRefusedWithNothingStored() throws {
    let f = Fixture()
    _ = try f.suppress([
      Identifier(kind: .email, value: "Gone@X.com"), Identifier(kind: .personID, value: "gone"),
      Identifier(kind: .anonymousID, value: "anon-gone"),
    ])
    let before = f.log.lastSequence
    for (req, field) in [
      (IdentifyRequest(workspace: "acme", personID: "u1", email: "gone@x.com"), "email"),
      (IdentifyRequest(workspace: "acme", personID: "gone"), "person_id"),
      (IdentifyRequest(workspace: "acme", anonymousID: "anon-gone"), "anonymous_id"),
      (
        IdentifyRequest(workspace: "acme", personID: "u1", anonymousID: "anon-gone"), "anonymous_id"
      ),
    ] {
      let e = failure { () throws(CoreError) in
        try sync { f.store.identify(req, actor: "w", completion: $0) }
      }
      #expect(e?.kind == .failedPrecondition)
      #expect(e?.field == field)
    }
    #expect(f.log.lastSequence == before)
    #expect(f.store.persons(in: "acme").isEmpty)
  }

  @Test func anonymousProfileAndMerge() throws {
    let f = Fixture()
    let anon = try f.identify(anonymousID: "cookie-1")
    #expect(anon.personID == "" && anon.anonymousIDs == ["cookie-1"])
    #expect(try f.identify(anonymousID: "cookie-1") == anon)

    // The visitor chooses before signing in; the person chose too.
    try f.identify("u1", email: "u1@x.com")
    f.clock.advance(by: 10)
    try f.set(.personID("u1"), .subscribed, topic: "promo", source: "person")  // t0+10
    // t0+10 too: a tie.
    try f.set(.anonymousID("cookie-1"), .unsubscribed, topic: "promo", source: "anon")
    try f.set(.anonymousID("cookie-1"), .unsubscribed, channel: "sms", source: "anon")  // only anon
    f.clock.advance(by: 10)
    try f.set(
      .anonymousID("cookie-1"), .subscribed, channel: "email", topic: "news", source: "anon")
    try f.global(.anonymousID("cookie-1"), unsubscribed: true, source: "anon")  // t0+20
    f.clock.advance(by: 10)
    // Later than the anonymous choice for the same key.
    try f.set(.personID("u1"), .unsubscribed, channel: "email", topic: "news", source: "person")

    f.clock.advance(by: 10)
    let merged = try f.identify("u1", anonymousID: "cookie-1")
    #expect(merged.personID == "u1" && merged.anonymousIDs == ["cookie-1"])
    #expect(merged.updatedAt == t0 + 40)

    let prefs = try f.preferences(.anonymousID("cookie-1"))
    #expect(prefs.personID == "u1", "the anonymous id keeps resolving to the person")
    func entry(_ c: String, _ t: String) -> PreferenceEntry? {
      prefs.entries.first { $0.channel == c && $0.topic == t }
    }
    #expect(entry("", "promo")?.source == "person", "a tie goes to the identified person")
    #expect(entry("sms", "")?.source == "anon")
    #expect(entry("email", "news")?.source == "person", "the later choice wins")
    #expect(prefs.globalUnsubscribed && prefs.globalSource == "anon")

    // The separate profile is gone.
    let persons = f.store.persons(in: "acme")
    #expect(persons.map(\.key) == [.person("u1")])
    // Histories are joined in time order, ending with the merge.
    let h = try f.history(.personID("u1")).entries
    #expect(h.first?.action == .merge)
    #expect(h.map(\.at) == h.map(\.at).sorted(by: >))
    #expect(h.filter { $0.source == "anon" }.count == 4)
    #expect(h.last?.action == .identify)
    // Identify with only the anonymous id now returns the person.
    #expect(try f.identify(anonymousID: "cookie-1").personID == "u1")
  }

  @Test func mergeIntoANewPerson() throws {
    let f = Fixture()
    try f.identify(anonymousID: "c")
    f.clock.advance(by: 1)
    try f.set(.anonymousID("c"), .subscribed, topic: "promo")
    f.clock.advance(by: 1)
    let p = try f.identify("new", anonymousID: "c")
    #expect(p.personID == "new" && p.anonymousIDs == ["c"])
    #expect(try f.check(.personID("new"), topic: "promo").allowed)
    #expect(
      try f.history(.personID("new")).entries.map(\.action) == [
        .merge, .identify, .subscribe, .identify,
      ])
  }

  @Test func attachUnknownAnonymousID() throws {
    let f = Fixture()
    try f.identify("u1")
    let p = try f.identify("u1", anonymousID: "fresh")
    #expect(p.anonymousIDs == ["fresh"])
    #expect(try f.profile(.anonymousID("fresh")).personID == "u1")
    #expect(try f.history(.personID("u1")).entries.first?.detail == "set anonymous_id")
  }
}
