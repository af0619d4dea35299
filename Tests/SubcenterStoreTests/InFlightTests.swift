// Writes through an anonymous id while an Identify merging that anonymous profile into a
// person is in flight: they wait for the merge and go to the person (they were answered
// NOT_FOUND, or counted a send on the profile the merge removes, and lost).

import SubcenterCore
import Testing

@testable import SubcenterStore

@Suite struct MergeInFlightTests {
  /// A store with anonymous profile c1 durable, and its merge into new person u1 in flight.
  /// `appliesElsewhere`: records are applied, and calls made again, on the store's queue
  /// (as with the write-ahead log), not on the completing thread.
  private func merging(sends: Int = 0, appliesElsewhere: Bool) throws -> (Deferred, Call<Profile>) {
    let d = Deferred(appliesElsewhere: appliesElsewhere)
    d.durable(d.identify(anonymousID: "c1"))
    for _ in 0..<sends {
      let c = d.check(.anonymousID("c1"), record: true)
      d.log.complete()
      #expect(waitUntil { c.done })
      #expect(try c.get().allowed)
    }
    return (d, d.identify("u1", anonymousID: "c1"))
  }

  @Test(arguments: [false, true])
  func preferenceGlobalAndOverrideWritesReachThePerson(appliesElsewhere: Bool) throws {
    let (d, merge) = try merging(appliesElsewhere: appliesElsewhere)
    let set = d.set(.anonymousID("c1"), .unsubscribed, channel: "sms")
    let global = d.global(.anonymousID("c1"), unsubscribed: true)
    let override = d.override(.anonymousID("c1"))
    #expect(d.log.queued == 1, "nothing logged against the profile the merge removes")
    d.log.complete()
    #expect(waitUntil { merge.done })
    #expect(try merge.get().personID == "u1")
    #expect(waitUntil { d.log.queued == 3 })
    d.log.complete()
    #expect(waitUntil { set.done && global.done && override.done })
    #expect(try set.get().personID == "u1")
    #expect(try override.get().personID == "u1")
    let prefs = try d.store.preferences(workspace: "acme", person: .personID("u1"))
    #expect(prefs.globalUnsubscribed)
    #expect(prefs.entries.map { "\($0.channel):\($0.state)" } == ["sms:unsubscribed"])
    let history = try d.store.history(
      HistoryRequest(workspace: "acme", person: .anonymousID("c1"))
    ).entries.map(\.action)
    #expect(history.prefix(3) == [.override, .unsubscribeAll, .unsubscribe])
    #expect(d.settled)
  }

  @Test(arguments: [false, true], [false, true])
  func countedSendsCountOnThePerson(batch: Bool, appliesElsewhere: Bool) throws {
    // email allows 2 sends a minute; the anonymous profile has used one.
    let (d, merge) = try merging(sends: 1, appliesElsewhere: appliesElsewhere)
    var checks: [Call<Decision>] = []
    var batches: [Call<[Decision]>] = []
    for _ in 0..<2 {
      if batch {
        batches.append(d.batch([.anonymousID("c1")], record: true))
      } else {
        checks.append(d.check(.anonymousID("c1"), record: true))
      }
    }
    d.log.complete()
    #expect(waitUntil { merge.done })
    #expect(try merge.get().personID == "u1")
    #expect(waitUntil { d.log.queued == 1 }, "one more send is allowed, and counted")
    d.log.complete()
    #expect(waitUntil { checks.allSatisfy(\.done) && batches.allSatisfy(\.done) })
    let decisions = try checks.map { try $0.get() } + batches.map { try $0.get()[0] }
    #expect(decisions.map(\.personID) == ["u1", "u1"])
    #expect(decisions.map(\.reason) == [.subscribed, .messageLimitReached])
    let after = d.check(.personID("u1"))
    #expect(waitUntil { after.done })
    #expect(try after.get().reason == .messageLimitReached)
    #expect(d.settled)
  }
}

@Suite struct ConfigurationInFlightTests {
  /// A write validated against the configuration in force answers with it, though a
  /// ConfigureWorkspace in flight is applied before the write (the write is ordered first).
  @Test func aWriteAnswersWithTheConfigurationItWasValidatedAgainst() throws {
    let d = Deferred()
    d.durable(d.identify("u1"))
    let configured = Call<WorkspaceConfig>()
    d.store.configureWorkspace(
      WorkspaceConfig(workspace: "acme", channels: ["email"]), actor: "admin", mayCreate: false,
      completion: configured.completion)
    let set = d.set(.personID("u1"), .unsubscribed, channel: "sms", topic: "news")
    let global = d.global(.personID("u1"), unsubscribed: true)
    #expect(d.log.queued == 3)
    d.log.complete()
    #expect(waitUntil { set.done && global.done && configured.done })
    for prefs in [try set.get(), try global.get()] {
      #expect(prefs.entries.map(\.channel) == ["sms"])
      #expect(Set(prefs.effective.map(\.channel)) == ["email", "sms", "push"])
    }
    let now = try d.store.preferences(workspace: "acme", person: .personID("u1"))
    #expect(now.entries.isEmpty && Set(now.effective.map(\.channel)) == ["email"])
  }
}

@Suite struct RemovalInFlightTests {
  /// Writes naming a person whose ForgetPerson is in flight, by email, anonymous id or
  /// person id, with an Identify creating the same person id again queued behind them:
  /// they wait for the forget, then find nobody. (They were logged behind the forget: then
  /// applied to the new person of the same id, or answered NOT_FOUND and still sent to
  /// the change feed.)
  @Test func writesMadeWhileAForgetIsInFlightFindNobody() throws {
    let d = Deferred()
    d.durable(d.identify("u1", email: "u1@x.com", anonymousID: "c1"))
    let forgotten = d.forget(.personID("u1"))
    let viaEmail = d.set(.email("u1@x.com"), .unsubscribed, channel: "sms")
    let viaCookie = d.global(.anonymousID("c1"), unsubscribed: true)
    let viaID = d.set(.personID("u1"), .unsubscribed, channel: "push")
    let send = d.check(.email("u1@x.com"), record: true)
    let batch = d.batch([.anonymousID("c1"), .personID("u1")], record: true)
    let override = d.override(.anonymousID("c1"))
    let recreated = d.identify("u1")
    #expect(d.log.queued == 2, "the forget and the new Identify, nothing for the forgotten")
    d.log.complete()
    #expect(waitUntil { [viaEmail.done, viaCookie.done, viaID.done].allSatisfy { $0 } })
    #expect(waitUntil { send.done && override.done && recreated.done })
    // The counting batch waits for every identity change of its persons in flight, the
    // new Identify of u1 included: it is decided after both, and counts the new u1's send.
    #expect(waitUntil { d.log.queued == 1 })
    d.log.complete()
    #expect(waitUntil { batch.done })
    #expect(try forgotten.get().personID == "u1")
    for error in [viaEmail.error, viaCookie.error, viaID.error] {
      #expect(error?.kind == .notFound)
    }
    #expect(try send.get().reason == .unknownPerson && override.get().reason == .unknownPerson)
    #expect(try batch.get().map(\.reason) == [.unknownPerson, .subscribed])
    let now = try d.store.preferences(workspace: "acme", person: .personID("u1"))
    #expect(now.entries.isEmpty && !now.globalUnsubscribed)
    let history = try d.store.history(HistoryRequest(workspace: "acme", person: .personID("u1")))
    #expect(history.entries.map(\.action) == [.identify])
    #expect(d.log.commands.count == 5, "two identifies, the forget, a send: \(d.log.commands)")
    #expect(d.settled)
  }

  /// A forget of a person whose creation (here with the merge of an anonymous profile) is
  /// still in flight waits for it, so that its removal holds the person's record: a write
  /// through the merged anonymous id made meanwhile then waits for the forget and finds
  /// nobody. (The forget was logged at once, holding nothing; the write, made after the
  /// creation was applied, was logged behind the forget, answered NOT_FOUND, and still
  /// reached the change feed after the tombstone, and the disk past the erasure.)
  @Test func aForgetWaitsForThePersonsCreationInFlight() throws {
    let d = Deferred()
    d.durable(d.identify(anonymousID: "c1"))
    let merge = d.identify("u1", anonymousID: "c1")
    let forgotten = d.forget(.personID("u1"))
    #expect(d.log.queued == 1, "the forget waits for the creation it would remove")
    d.log.complete()
    #expect(waitUntil { merge.done && d.log.queued == 1 })
    let viaCookie = d.set(.anonymousID("c1"), .unsubscribed, channel: "sms")
    #expect(d.log.queued == 1, "the write waits for the forget")
    d.log.complete()
    #expect(waitUntil { forgotten.done && viaCookie.done })
    #expect(try forgotten.get().personID == "u1")
    #expect(viaCookie.error?.kind == .notFound)
    #expect(d.log.commands.count == 4, "the workspace, profile, merge, forget: \(d.log.commands)")
    #expect(d.settled)
  }

  /// A write through the email an Identify in flight replaces finds nobody (SPEC: a new
  /// email replaces the previous one, which stops naming the person); through the new one
  /// it reaches the person. (The old one still named the person through the committed
  /// index: a write acknowledged before the change, with an answer showing a write made
  /// after it.)
  @Test func aWriteThroughAnEmailAnIdentifyInFlightReplacesFindsNobody() throws {
    let d = Deferred()
    d.durable(d.identify("u1", email: "a@x.com"))
    let change = d.identify("u1", email: "b@x.com")
    let viaOld = d.set(.email("a@x.com"), .subscribed, channel: "email")
    let viaNew = d.global(.email("b@x.com"), unsubscribed: true)
    #expect(d.log.queued == 2, "the change and the write through the new email")
    d.log.complete()
    #expect(waitUntil { change.done && viaOld.done && viaNew.done })
    #expect(viaOld.error?.kind == .notFound)
    #expect(try viaNew.get().globalUnsubscribed)
    let now = try d.store.preferences(workspace: "acme", person: .personID("u1"))
    #expect(now.entries.isEmpty && now.globalUnsubscribed)
    #expect(d.settled)
  }

  /// A counted send or an override naming a person by the identifier a suppression in
  /// flight suppresses (and so forgets its holder) is decided after it: `SUPPRESSED`, as
  /// rule 1 says (it was `UNKNOWN_PERSON`: the identifier released, the suppression not
  /// yet seen, an answer no serial order gives).
  @Test func aDecisionThroughAnIdentifierBeingSuppressedIsSuppressed() throws {
    let d = Deferred()
    d.durable(d.identify("u1", email: "a@x.com"))
    let suppression = d.suppress([Identifier(kind: .email, value: "a@x.com")])
    let send = d.check(.email("a@x.com"), record: true)
    let override = d.override(.email("a@x.com"))
    #expect(d.log.queued == 1, "the suppression only")
    d.log.complete()
    #expect(waitUntil { suppression.done && send.done && override.done })
    #expect(try send.get().reason == .suppressed && !send.get().allowed)
    #expect(try override.get().reason == .suppressed && !override.get().allowed)
    #expect(d.settled)
  }
}

@Suite struct BatchInFlightTests {
  /// A batch counting sends for persons whose merge is in flight is decided entirely after
  /// it, not partly before (a person's own send counted before the merge, its anonymous
  /// profile's after: answers no order of the two calls gives).
  @Test func aCountingBatchWaitsForTheMergeOfAnyOfItsPersons() throws {
    let d = Deferred()
    let person = d.identify("u1")
    let anonymous = d.identify(anonymousID: "c1")
    d.log.complete()
    #expect(waitUntil { person.done && anonymous.done })
    let first = d.check(.anonymousID("c1"), record: true)  // email: 2 sends a minute
    d.log.complete()
    #expect(waitUntil { first.done })
    let merge = d.identify("u1", anonymousID: "c1")
    let batch = d.batch([.anonymousID("c1"), .anonymousID("c1"), .personID("u1")], record: true)
    #expect(d.log.queued == 1, "the batch counts nothing before the merge is applied")
    d.log.complete()
    #expect(waitUntil { merge.done && d.log.queued == 1 })
    d.log.complete()
    #expect(waitUntil { batch.done })
    let decisions = try batch.get()
    #expect(decisions.map(\.reason) == [.subscribed, .messageLimitReached, .messageLimitReached])
    #expect(decisions.map(\.personID) == ["u1", "u1", "u1"])
    #expect(d.settled)
  }
}
