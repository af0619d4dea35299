// The delivery decision of SPEC §2: one pure function of (workspace, person, suppression,
// request, now). Rule order and every note under the table are here and only here.

/// Why a decision came out as it did (proto `DecisionReason`, same numbers).
public enum DecisionReason: Int32, Sendable, Hashable, CustomStringConvertible {
  case unspecified = 0
  case subscribed = 1
  case overriddenImportant = 2
  case suppressed = 3
  case unknownPerson = 4
  case globalUnsubscribed = 5
  case channelUnsubscribed = 6
  case topicUnsubscribed = 7
  case topicNotOptedIn = 8
  case messageLimitReached = 9

  /// The unprefixed proto name, e.g. `GLOBAL_UNSUBSCRIBED` (history details use it).
  public var name: String {
    switch self {
    case .unspecified: "UNSPECIFIED"
    case .subscribed: "SUBSCRIBED"
    case .overriddenImportant: "OVERRIDDEN_IMPORTANT"
    case .suppressed: "SUPPRESSED"
    case .unknownPerson: "UNKNOWN_PERSON"
    case .globalUnsubscribed: "GLOBAL_UNSUBSCRIBED"
    case .channelUnsubscribed: "CHANNEL_UNSUBSCRIBED"
    case .topicUnsubscribed: "TOPIC_UNSUBSCRIBED"
    case .topicNotOptedIn: "TOPIC_NOT_OPTED_IN"
    case .messageLimitReached: "MESSAGE_LIMIT_REACHED"
    }
  }

  public var description: String { name }
}

/// What the decision needs of a workspace for one (channel, topic); see
/// `Workspace.target(channel:topic:)`.
public struct DeliveryTarget: Sendable, Equatable {
  public var channel: NameID
  /// 0 when no topic is named.
  public var topic: NameID
  /// The topic's default; `.unspecified` when no topic is named.
  public var topicDefault: TopicDefault
  public var limit: LimitRule?
  public var overridesAllowed: Bool

  public init(
    channel: NameID, topic: NameID, topicDefault: TopicDefault, limit: LimitRule?,
    overridesAllowed: Bool
  ) {
    self.channel = channel
    self.topic = topic
    self.topicDefault = topicDefault
    self.limit = limit
    self.overridesAllowed = overridesAllowed
  }
}

/// What the decision reads of a known person. `Person` conforms; the store's packed
/// records conform too, so the hot path decides without decoding.
public protocol DecisionSubject {
  var isGloballyUnsubscribed: Bool { get }
  /// The explicit entry for (channel, topic), either part 0 for "", if there is one.
  func explicitState(channel: NameID, topic: NameID) -> PreferenceState?
  /// Recorded sends on `channel` that `window` counts.
  func sendCount(channel: NameID, in window: SendWindow) -> Int
  /// How many explicit entries there are.
  var explicitEntryCount: Int { get }
  /// Calls `body` with each explicit entry's key (`channel << 16 | topic`) and state.
  func forEachExplicitEntry(_ body: (UInt32, PreferenceState) -> Void)
}

/// A subject whose explicit entries are looked up in a table built once, for the many
/// look-ups of `Workspace.effective` on a person with many entries (each look-up of the
/// subject itself scans its entries: 5,000 entries in a workspace of 5,000 topics took
/// ~50 ms an answer).
struct IndexedSubject<Base: DecisionSubject>: DecisionSubject {
  let base: Base
  let entries: [UInt32: PreferenceState]

  init(_ base: Base) {
    var entries: [UInt32: PreferenceState] = [:]
    entries.reserveCapacity(base.explicitEntryCount)
    base.forEachExplicitEntry { key, state in entries[key] = state }
    self.base = base
    self.entries = entries
  }

  var isGloballyUnsubscribed: Bool { base.isGloballyUnsubscribed }
  func explicitState(channel: NameID, topic: NameID) -> PreferenceState? {
    entries[UInt32(channel) << 16 | UInt32(topic)]
  }
  func sendCount(channel: NameID, in window: SendWindow) -> Int {
    base.sendCount(channel: channel, in: window)
  }
  var explicitEntryCount: Int { entries.count }
  func forEachExplicitEntry(_ body: (UInt32, PreferenceState) -> Void) {
    base.forEachExplicitEntry(body)
  }
}

/// The answer: allowed or not and why, plus what the store must do about it.
public struct DecisionOutcome: Sendable, Equatable {
  public var allowed: Bool
  public var reason: DecisionReason
  /// What rules 1, 2 and 4–8 gave, i.e. what an allowed override overrode (equal to
  /// `reason` when the call is not an override or the override was not applied).
  public var underlying: DecisionReason
  /// Whether a `record_send` call must count this send: allowed and not an override.
  public var countsSend: Bool

  public init(allowed: Bool, reason: DecisionReason, underlying: DecisionReason, countsSend: Bool) {
    self.allowed = allowed
    self.reason = reason
    self.underlying = underlying
    self.countsSend = countsSend
  }
}

/// The delivery decision of SPEC §2.
///
/// Rules, first match wins: 1 suppressed, 2 unknown person, 3 override (if the workspace
/// allows it), 4 global unsubscribe, 5 channel entry UNSUBSCRIBED, 6 topic (entry
/// (channel, topic), else ("", topic), else the topic default), 7 message limit,
/// 8 subscribed.
///
/// - Overrides never pass suppression or an unknown person; an applied override skips
///   limits and never counts a send. With overrides disabled an override is decided by
///   rules 4–8, limits included, and still never counts.
/// - A channel entry SUBSCRIBED does not opt in to an UNSUBSCRIBED-default topic.
/// - The limit window is half-open: a send at time `t` counts while `now - t < window`,
///   so a send exactly `window` ago no longer counts.
/// - Nothing is counted here; `countsSend` tells the caller whether a `record_send` call
///   counts this one (denied decisions count nothing).
@inlinable
public func decideDelivery<Subject: DecisionSubject>(
  target: DeliveryTarget, person: Subject?, suppressed: Bool, isOverride: Bool, now: Int64
) -> DecisionOutcome {
  if suppressed {
    return DecisionOutcome(
      allowed: false, reason: .suppressed, underlying: .suppressed, countsSend: false)
  }
  guard let person else {
    return DecisionOutcome(
      allowed: false, reason: .unknownPerson, underlying: .unknownPerson, countsSend: false)
  }
  let base = choiceReason(target: target, person: person, now: now)
  if isOverride && target.overridesAllowed {
    return DecisionOutcome(
      allowed: true, reason: .overriddenImportant, underlying: base, countsSend: false)
  }
  let allowed = base == .subscribed
  return DecisionOutcome(
    allowed: allowed, reason: base, underlying: base, countsSend: allowed && !isOverride)
}

/// Rules 4–8 for a known person.
@inlinable @inline(__always)
func choiceReason<Subject: DecisionSubject>(
  target: DeliveryTarget, person: Subject, now: Int64
) -> DecisionReason {
  if person.isGloballyUnsubscribed { return .globalUnsubscribed }
  if person.explicitState(channel: target.channel, topic: 0) == .unsubscribed {
    return .channelUnsubscribed
  }
  if target.topic != 0 {
    if let s = person.explicitState(channel: target.channel, topic: target.topic)
      ?? person.explicitState(channel: 0, topic: target.topic)
    {
      if s == .unsubscribed { return .topicUnsubscribed }
    } else if target.topicDefault == .unsubscribed {
      return .topicNotOptedIn
    }
  }
  if let limit = target.limit,
    person.sendCount(channel: target.channel, in: limit.counted(at: now)) >= limit.maxMessages
  {
    return .messageLimitReached
  }
  return .subscribed
}

/// A decision as responses carry it (proto `DeliveryDecision`).
public struct Decision: Sendable, Equatable {
  public var allowed: Bool
  public var reason: DecisionReason
  /// Empty for an unknown person or an anonymous profile.
  public var personID: String

  public init(allowed: Bool, reason: DecisionReason, personID: String) {
    self.allowed = allowed
    self.reason = reason
    self.personID = personID
  }
}
