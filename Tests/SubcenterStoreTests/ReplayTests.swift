// Every change is one command: replaying the log reproduces the state; a log that cannot
// make a command durable leaves nothing applied.

import SubcenterCore
import Synchronization
import Testing

@testable import SubcenterStore

/// A log that refuses every command at once while `failing` is set.
final class FlakyLog: CommitLog {
  let failing = Atomic<Bool>(false)
  let inner = InMemoryCommitLog(keepsCommands: true)

  func append(
    _ command: Command, completion: @escaping @Sendable (Result<UInt64, CoreError>) -> Void
  ) {
    if failing.load(ordering: .relaxed) { return completion(.failure(.unavailable("disk full"))) }
    inner.append(command, completion: completion)
  }
}

@Suite struct ReplayTests {
  @Test func everyCommandReplays() throws {
    let f = Fixture()
    try f.identify("u1", email: "u1@x.com", phone: "+14155550100")
    try f.identify(anonymousID: "c1")
    f.clock.advance(by: 10)
    try f.set(.anonymousID("c1"), .subscribed, topic: "promo", source: "banner", notice: "v1")
    try f.identify("u1", email: "u1@new.com", anonymousID: "c1")
    try f.identify("u2", anonymousID: "c2")
    try f.global(.personID("u2"), unsubscribed: true, source: "support")
    _ = try f.check(.personID("u1"), record: true)
    _ = try f.batch([.personID("u1"), .email("u1@new.com"), .anonymousID("c2")], record: true)
    _ = try f.override(.personID("u2"), topic: "news")
    try f.identify("u3", email: "u3@x.com")
    try f.identify("u4", phone: "+14155550199")
    _ = try f.forget(.personID("u3"), alsoSuppress: true)
    _ = try f.suppress([
      Identifier(kind: .phone, value: "+14155550199"), Identifier(kind: .email, value: "x@y.z"),
    ])
    _ = try f.unsuppress([Identifier(kind: .email, value: "x@y.z")])
    var c = acme
    c.topics.removeLast()
    _ = try sync { f.store.configureWorkspace(c, actor: "admin", mayCreate: false, completion: $0) }
    try f.identify(anonymousID: "c5")
    f.clock.advance(by: 100_000)
    _ = try sync { f.store.expireAnonymousProfiles(ttlMillis: 50_000, completion: $0) }

    let copy = try f.replayed()
    #expect(copy.workspaceConfigs() == f.store.workspaceConfigs())
    #expect(copy.persons(in: "acme") == f.store.persons(in: "acme"))
    #expect(copy.persons(in: "acme").count == 2)
    #expect(copy.suppressionHashes(in: "acme") == f.store.suppressionHashes(in: "acme"))
    #expect(copy.suppressionHashes(in: "acme").count == 3)
    // Indexes were rebuilt too.
    #expect(try copy.profile(workspace: "acme", person: .anonymousID("c1")).personID == "u1")
    #expect(try copy.profile(workspace: "acme", person: .email("u1@new.com")).personID == "u1")
  }

  @Test func failedAppendAppliesNothing() throws {
    let log = FlakyLog()
    let store = SubscriptionStore(clock: ManualClock(t0), secret: secret, log: log)
    _ = try sync {
      store.identify(
        IdentifyRequest(workspace: "default", personID: "u1"), actor: "w", completion: $0)
    }
    let limited = WorkspaceConfig(
      workspace: "default",
      limits: [MessageLimit(channel: "email", maxMessages: 5, windowSeconds: 60)])
    _ = try sync { store.configureWorkspace(limited, actor: "a", mayCreate: false, completion: $0) }
    log.failing.store(true, ordering: .relaxed)
    let before = store.persons(in: "default")

    let writes: [(@escaping Completion<Bool>) -> Void] = [
      { c in
        store.identify(
          IdentifyRequest(workspace: "default", personID: "u2", email: "u2@x.com"), actor: "w"
        ) { c($0.map { _ in true }) }
      },
      { c in
        store.identify(
          IdentifyRequest(workspace: "default", personID: "u1", email: "u1@x.com"), actor: "w"
        ) { c($0.map { _ in true }) }
      },
      { c in
        store.setPreference(
          PreferenceRequest(workspace: "default", person: .personID("u1"), channel: "sms"),
          state: .unsubscribed, actor: "w"
        ) { c($0.map { _ in true }) }
      },
      { c in
        store.setGlobal(
          GlobalRequest(workspace: "default", person: .personID("u1")), unsubscribed: true,
          actor: "w"
        ) { c($0.map { _ in true }) }
      },
      { c in
        store.checkDelivery(
          DeliveryRequest(
            workspace: "default", person: .personID("u1"), channel: "email", recordSend: true)
        ) { c($0.map { _ in true }) }
      },
      { c in
        store.forget(
          ForgetRequest(workspace: "default", person: .personID("u1"), alsoSuppress: true),
          actor: "w"
        ) { c($0.map { _ in true }) }
      },
      { c in
        store.suppress(
          SuppressRequest(
            workspace: "default", identifiers: [Identifier(kind: .email, value: "a@b.c")]),
          actor: "w"
        ) { c($0.map { _ in true }) }
      },
      { c in
        store.configureWorkspace(WorkspaceConfig(workspace: "new"), actor: "w", mayCreate: true) {
          c($0.map { _ in true })
        }
      },
    ]
    for (i, w) in writes.enumerated() {
      #expect(failure { () throws(CoreError) in try sync(w) }?.kind == .unavailable, "write \(i)")
    }
    // Reads are still served, and nothing changed.
    #expect(store.persons(in: "default") == before)
    #expect(store.suppressionHashes(in: "default").isEmpty)
    #expect(
      try sync {
        store.checkDelivery(
          DeliveryRequest(workspace: "default", person: .personID("u1"), channel: "email"),
          completion: $0)
      }.allowed)
    #expect(failure { () throws(CoreError) in try store.workspace("new") }?.kind == .notFound)
    log.failing.store(false, ordering: .relaxed)
    // The email the failed Identify tried to claim is free.
    _ = try sync {
      store.identify(
        IdentifyRequest(workspace: "default", personID: "u3", email: "u2@x.com"), actor: "w",
        completion: $0)
    }
  }
}
