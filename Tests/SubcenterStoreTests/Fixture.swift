// A store on a manual clock with a logging commit log, and short synchronous wrappers
// for its completion-based writes (the in-memory log completes them at once).

import Glibc
import SubcenterCore
import SubcenterStore
import Synchronization

let t0: Int64 = 1_700_000_000_000
let secret = Array("test-secret".utf8)

/// Channels email, sms, push; topics news (SUBSCRIBED default) and promo (UNSUBSCRIBED);
/// email limited to 2 a minute; overrides allowed.
let acme = WorkspaceConfig(
  workspace: "acme", channels: ["email", "sms", "push"],
  topics: [
    Topic(id: "news", name: "News", defaultState: .subscribed),
    Topic(id: "promo", name: "Promotions", defaultState: .unsubscribed),
  ],
  limits: [MessageLimit(channel: "email", maxMessages: 2, windowSeconds: 60)],
  allowImportantOverride: true)

/// Runs a completion-style store call and waits for its completion. With the in-memory
/// log a write completes before the call returns when one thread writes; with several, a
/// write may be completed by the thread applying the log meanwhile, a moment later.
func sync<T: Sendable>(_ body: (@escaping Completion<T>) -> Void) throws(CoreError) -> T {
  let box = Mutex<Result<T, CoreError>?>(nil)
  body { r in box.withLock { $0 = r } }
  let deadline = ContinuousClock.now + .seconds(10)
  while true {
    if let result = box.withLock({ $0 }) { return try result.get() }
    guard ContinuousClock.now < deadline else { fatalError("the write did not complete") }
    usleep(50)
  }
}

/// The error a throwing call raised, or nil.
func failure<T>(_ body: () throws(CoreError) -> T) -> CoreError? {
  do {
    _ = try body()
    return nil
  } catch {
    return error
  }
}

final class Fixture: Sendable {
  let clock = ManualClock(t0)
  let log = InMemoryCommitLog(keepsCommands: true)
  let store: SubscriptionStore

  init(_ config: WorkspaceConfig? = acme) {
    store = SubscriptionStore(clock: clock, secret: secret, log: log)
    if let config {
      _ = try! sync {
        store.configureWorkspace(config, actor: "admin", mayCreate: true, completion: $0)
      }
    }
  }

  @discardableResult
  func identify(
    _ personID: String = "", email: String = "", phone: String = "", anonymousID: String = "",
    workspace: String = "acme", actor: String = "writer"
  ) throws(CoreError) -> Profile {
    try sync {
      store.identify(
        IdentifyRequest(
          workspace: workspace, personID: personID, email: email, phone: phone,
          anonymousID: anonymousID), actor: actor, completion: $0)
    }
  }

  @discardableResult
  func set(
    _ ref: PersonRef?, _ state: PreferenceState, channel: String = "", topic: String = "",
    source: String = "", notice: String = "", workspace: String = "acme"
  ) throws(CoreError) -> Preferences {
    try sync {
      store.setPreference(
        PreferenceRequest(
          workspace: workspace, person: ref, channel: channel, topic: topic, source: source,
          noticeVersion: notice), state: state, actor: "writer", completion: $0)
    }
  }

  @discardableResult
  func global(_ ref: PersonRef?, unsubscribed: Bool, source: String = "") throws(CoreError)
    -> Preferences
  {
    try sync {
      store.setGlobal(
        GlobalRequest(workspace: "acme", person: ref, source: source), unsubscribed: unsubscribed,
        actor: "writer", completion: $0)
    }
  }

  func check(
    _ ref: PersonRef?, channel: String = "email", topic: String = "", record: Bool = false,
    workspace: String = "acme"
  ) throws(CoreError) -> Decision {
    try sync {
      store.checkDelivery(
        DeliveryRequest(
          workspace: workspace, person: ref, channel: channel, topic: topic, recordSend: record),
        completion: $0)
    }
  }

  func batch(
    _ refs: [PersonRef?], channel: String = "email", topic: String = "", record: Bool = false
  ) throws(CoreError) -> [Decision] {
    try sync {
      store.checkDeliveryBatch(
        DeliveryBatchRequest(
          workspace: "acme", channel: channel, topic: topic, persons: refs, recordSend: record),
        completion: $0)
    }
  }

  func override(
    _ ref: PersonRef?, channel: String = "email", topic: String = "", messageID: String = "m-1",
    justification: String = "security alert", workspace: String = "acme"
  ) throws(CoreError) -> Decision {
    try sync {
      store.overrideForImportantMessage(
        OverrideRequest(
          workspace: workspace, person: ref, channel: channel, topic: topic,
          messageID: messageID, justification: justification), actor: "oncall", completion: $0)
    }
  }

  func forget(_ ref: PersonRef?, alsoSuppress: Bool = false) throws(CoreError) -> ForgetResult {
    try sync {
      store.forget(
        ForgetRequest(workspace: "acme", person: ref, alsoSuppress: alsoSuppress),
        actor: "privacy", completion: $0)
    }
  }

  func suppress(_ ids: [Identifier], reason: String = "") throws(CoreError) -> SuppressResult {
    try sync {
      store.suppress(
        SuppressRequest(workspace: "acme", identifiers: ids, reason: reason), actor: "privacy",
        completion: $0)
    }
  }

  func unsuppress(_ ids: [Identifier]) throws(CoreError) -> SuppressResult {
    try sync {
      store.unsuppress(
        SuppressRequest(workspace: "acme", identifiers: ids), actor: "admin", completion: $0)
    }
  }

  func history(_ ref: PersonRef?, size: Int32 = 0, token: String = "") throws(CoreError)
    -> HistoryPage
  {
    try store.history(
      HistoryRequest(workspace: "acme", person: ref, pageSize: size, pageToken: token))
  }

  func preferences(_ ref: PersonRef?) throws(CoreError) -> Preferences {
    try store.preferences(workspace: "acme", person: ref)
  }

  func profile(_ ref: PersonRef?) throws(CoreError) -> Profile {
    try store.profile(workspace: "acme", person: ref)
  }

  /// Replays this fixture's log into a fresh store.
  func replayed() throws(CoreError) -> SubscriptionStore {
    let copy = SubscriptionStore(
      clock: ManualClock(0), secret: secret, log: InMemoryCommitLog(),
      createDefaultWorkspace: false)
    for c in log.commands { try copy.replay(c) }
    return copy
  }
}
