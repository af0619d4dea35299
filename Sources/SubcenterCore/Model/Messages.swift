// The requests and responses of SPEC §3 as domain values. They mirror the proto messages
// field by field (names in Swift case); the server maps between the two in one place.

// MARK: Requests (unvalidated: the store validates them and names the field it refuses)

/// Identify: create or update a person, or an anonymous profile. "" = not given.
public struct IdentifyRequest: Sendable, Equatable {
  public var workspace: String
  public var personID: String
  public var email: String
  public var phone: String
  public var anonymousID: String

  public init(
    workspace: String, personID: String = "", email: String = "", phone: String = "",
    anonymousID: String = ""
  ) {
    self.workspace = workspace
    self.personID = personID
    self.email = email
    self.phone = phone
    self.anonymousID = anonymousID
  }
}

/// Subscribe / Unsubscribe: one explicit entry.
public struct PreferenceRequest: Sendable, Equatable {
  public var workspace: String
  public var person: PersonRef?
  public var channel: String
  public var topic: String
  public var source: String
  public var noticeVersion: String

  public init(
    workspace: String, person: PersonRef?, channel: String = "", topic: String = "",
    source: String = "", noticeVersion: String = ""
  ) {
    self.workspace = workspace
    self.person = person
    self.channel = channel
    self.topic = topic
    self.source = source
    self.noticeVersion = noticeVersion
  }
}

/// UnsubscribeAll / Resubscribe.
public struct GlobalRequest: Sendable, Equatable {
  public var workspace: String
  public var person: PersonRef?
  public var source: String

  public init(workspace: String, person: PersonRef?, source: String = "") {
    self.workspace = workspace
    self.person = person
    self.source = source
  }
}

/// CheckDelivery.
public struct DeliveryRequest: Sendable, Equatable {
  public var workspace: String
  public var person: PersonRef?
  public var channel: String
  public var topic: String
  public var recordSend: Bool

  public init(
    workspace: String, person: PersonRef?, channel: String, topic: String = "",
    recordSend: Bool = false
  ) {
    self.workspace = workspace
    self.person = person
    self.channel = channel
    self.topic = topic
    self.recordSend = recordSend
  }
}

/// CheckDeliveryBatch: at most `Limits.batchPersons` persons.
public struct DeliveryBatchRequest: Sendable, Equatable {
  public var workspace: String
  public var channel: String
  public var topic: String
  public var persons: [PersonRef?]
  public var recordSend: Bool

  public init(
    workspace: String, channel: String, topic: String = "", persons: [PersonRef?],
    recordSend: Bool = false
  ) {
    self.workspace = workspace
    self.channel = channel
    self.topic = topic
    self.persons = persons
    self.recordSend = recordSend
  }
}

/// OverrideForImportantMessage.
public struct OverrideRequest: Sendable, Equatable {
  public var workspace: String
  public var person: PersonRef?
  public var channel: String
  public var topic: String
  public var messageID: String
  public var justification: String

  public init(
    workspace: String, person: PersonRef?, channel: String, topic: String = "",
    messageID: String, justification: String
  ) {
    self.workspace = workspace
    self.person = person
    self.channel = channel
    self.topic = topic
    self.messageID = messageID
    self.justification = justification
  }
}

/// ForgetPerson (`wait_for_erasure` is the durability layer's business).
public struct ForgetRequest: Sendable, Equatable {
  public var workspace: String
  public var person: PersonRef?
  public var alsoSuppress: Bool

  public init(workspace: String, person: PersonRef?, alsoSuppress: Bool = false) {
    self.workspace = workspace
    self.person = person
    self.alsoSuppress = alsoSuppress
  }
}

/// One identifier to suppress or unsuppress.
public struct Identifier: Sendable, Equatable {
  public var kind: IdentifierKind
  public var value: String

  public init(kind: IdentifierKind, value: String) {
    self.kind = kind
    self.value = value
  }
}

/// SuppressIdentifiers / UnsuppressIdentifiers.
public struct SuppressRequest: Sendable, Equatable {
  public var workspace: String
  public var identifiers: [Identifier]
  public var reason: String

  public init(workspace: String, identifiers: [Identifier], reason: String = "") {
    self.workspace = workspace
    self.identifiers = identifiers
    self.reason = reason
  }
}

/// GetHistory.
public struct HistoryRequest: Sendable, Equatable {
  public var workspace: String
  public var person: PersonRef?
  public var pageSize: Int32
  public var pageToken: String

  public init(workspace: String, person: PersonRef?, pageSize: Int32 = 0, pageToken: String = "") {
    self.workspace = workspace
    self.person = person
    self.pageSize = pageSize
    self.pageToken = pageToken
  }
}

// MARK: Responses

/// A person's identifiers (proto `Profile`, without `redacted`: redaction is the server's).
public struct Profile: Sendable, Equatable {
  /// Empty for an anonymous profile.
  public var personID: String
  public var email: String
  public var phone: String
  public var anonymousIDs: [String]
  public var createdAt: Int64
  public var updatedAt: Int64

  public init(
    personID: String, email: String, phone: String, anonymousIDs: [String], createdAt: Int64,
    updatedAt: Int64
  ) {
    self.personID = personID
    self.email = email
    self.phone = phone
    self.anonymousIDs = anonymousIDs
    self.createdAt = createdAt
    self.updatedAt = updatedAt
  }
}

/// One explicit entry as responses show it (proto `PreferenceEntry`).
public struct PreferenceEntry: Sendable, Equatable {
  public var channel: String
  public var topic: String
  public var state: PreferenceState
  public var updatedAt: Int64
  public var source: String
  public var noticeVersion: String

  public init(
    channel: String, topic: String, state: PreferenceState, updatedAt: Int64, source: String,
    noticeVersion: String
  ) {
    self.channel = channel
    self.topic = topic
    self.state = state
    self.updatedAt = updatedAt
    self.source = source
    self.noticeVersion = noticeVersion
  }
}

/// The decision for one (channel, topic); topic "" is the channel as a whole.
public struct EffectiveState: Sendable, Equatable {
  public var channel: String
  public var topic: String
  public var allowed: Bool
  public var reason: DecisionReason

  public init(channel: String, topic: String, allowed: Bool, reason: DecisionReason) {
    self.channel = channel
    self.topic = topic
    self.allowed = allowed
    self.reason = reason
  }
}

/// An `EffectiveState` by the numbers of its channel and topic: a row holds no String, so
/// building, encoding and freeing the rows of an answer costs no String handling a row.
public struct EffectiveRow: Sendable, Equatable {
  public var channel: NameID
  public var topic: NameID
  public var reason: DecisionReason
  public var allowed: Bool { reason == .subscribed }

  @inlinable
  public init(channel: NameID, topic: NameID, reason: DecisionReason) {
    self.channel = channel
    self.topic = topic
    self.reason = reason
  }
}

/// A person's preferences (proto `Preferences`).
public struct Preferences: Sendable, Equatable {
  public var personID: String
  public var globalUnsubscribed: Bool
  public var globalUpdatedAt: Int64
  public var globalSource: String
  /// Entries whose channel and topic are configured, sorted by (channel, topic) number.
  public var entries: [PreferenceEntry]
  /// Every configured channel × ("" + every configured topic), in configuration order, by
  /// number: `names` names them (`effective` has them named).
  public let effectiveRows: [EffectiveRow]
  /// The configuration whose channel and topic numbers `effectiveRows` hold.
  public let names: Workspace

  /// Every configured channel × ("" + every configured topic), in configuration order.
  public var effective: [EffectiveState] { effectiveRows.map(names.effectiveState) }

  public init(
    personID: String, globalUnsubscribed: Bool, globalUpdatedAt: Int64, globalSource: String,
    entries: [PreferenceEntry], effectiveRows: [EffectiveRow], names: Workspace
  ) {
    self.personID = personID
    self.globalUnsubscribed = globalUnsubscribed
    self.globalUpdatedAt = globalUpdatedAt
    self.globalSource = globalSource
    self.entries = entries
    self.effectiveRows = effectiveRows
    self.names = names
  }

  /// Equal when they show the same: the rows compare by name, not by number.
  public static func == (a: Preferences, b: Preferences) -> Bool {
    a.personID == b.personID && a.globalUnsubscribed == b.globalUnsubscribed
      && a.globalUpdatedAt == b.globalUpdatedAt && a.globalSource == b.globalSource
      && a.entries == b.entries && a.effective == b.effective
  }
}

/// One history entry as responses show it (proto `HistoryEntry`).
public struct HistoryEntry: Sendable, Equatable {
  public var at: Int64
  public var action: HistoryAction
  public var channel: String
  public var topic: String
  public var source: String
  public var actor: String
  public var detail: String

  public init(
    at: Int64, action: HistoryAction, channel: String, topic: String, source: String,
    actor: String, detail: String
  ) {
    self.at = at
    self.action = action
    self.channel = channel
    self.topic = topic
    self.source = source
    self.actor = actor
    self.detail = detail
  }
}

/// One page of history, newest first; `nextPageToken` is "" after the last page.
public struct HistoryPage: Sendable, Equatable {
  public var entries: [HistoryEntry]
  public var nextPageToken: String

  public init(entries: [HistoryEntry], nextPageToken: String) {
    self.entries = entries
    self.nextPageToken = nextPageToken
  }
}

/// What ForgetPerson did; the server adds the deadline and the receipt.
public struct ForgetResult: Sendable, Equatable {
  /// The forgotten person's id; empty for an anonymous profile.
  public var personID: String
  /// The key it was stored under (the anonymous id for an anonymous profile).
  public var key: PersonKey
  /// When the person left memory (Unix ms).
  public var erasedAt: Int64

  public init(personID: String, key: PersonKey, erasedAt: Int64) {
    self.personID = personID
    self.key = key
    self.erasedAt = erasedAt
  }
}

/// What SuppressIdentifiers / UnsuppressIdentifiers did.
public struct SuppressResult: Sendable, Equatable {
  /// Identifiers newly suppressed (or removed from suppression).
  public var suppressed: Int32
  /// Persons forgotten because they held a suppressed identifier (anonymous profiles,
  /// which have no person id, are forgotten but not listed).
  public var forgottenPersonIDs: [String]

  public init(suppressed: Int32, forgottenPersonIDs: [String]) {
    self.suppressed = suppressed
    self.forgottenPersonIDs = forgottenPersonIDs
  }
}

// MARK: Building responses

extension Workspace {
  /// A person's preferences as GetPreferences shows them now: entries whose channel and
  /// topic are configured, and the decision for every configured channel × ("" + every
  /// topic), limits included, nothing counted.
  public func preferences<Subject: DecisionSubject>(
    personID: String, global: GlobalFlag?, entries: [PreferenceRecord], subject: Subject,
    now: Int64
  ) -> Preferences {
    var shown: [PreferenceEntry] = []
    shown.reserveCapacity(entries.count)
    for e in entries {
      if let s = shownEntry(e) { shown.append(s) }
    }
    return preferences(personID: personID, global: global, shown: shown, subject: subject, now: now)
  }

  /// `preferences` of entries already as `shownEntry` shows them. Inlinable, as
  /// `effectiveNumbered`.
  @inlinable
  public func preferences<Subject: DecisionSubject>(
    personID: String, global: GlobalFlag?, shown: [PreferenceEntry], subject: Subject,
    now: Int64
  ) -> Preferences {
    Preferences(
      personID: personID, globalUnsubscribed: global?.unsubscribed ?? false,
      globalUpdatedAt: global?.updatedAt ?? 0, globalSource: global?.source ?? "",
      entries: shown, effectiveRows: effectiveNumbered(subject: subject, now: now), names: self)
  }

  /// An entry as `preferences` shows it; nil when its channel or topic is not configured.
  public func shownEntry(_ e: PreferenceRecord) -> PreferenceEntry? {
    guard
      (e.channel == 0 || isConfigured(channel: e.channel))
        && (e.topic == 0 || isConfigured(topic: e.topic))
    else { return nil }
    return PreferenceEntry(
      channel: channelName(e.channel), topic: topicName(e.topic), state: e.state,
      updatedAt: e.updatedAt, source: e.source, noticeVersion: e.noticeVersion)
  }

  /// An effective row with its channel's and topic's names.
  public func effectiveState(_ row: EffectiveRow) -> EffectiveState {
    EffectiveState(
      channel: channelName(row.channel), topic: topicName(row.topic), allowed: row.allowed,
      reason: row.reason)
  }

  /// The decision for every configured channel × ("" + every configured topic), by number
  /// (`effectiveState` names a row). Inlinable: specialized for the caller's subject (the
  /// store's packed record), its look-ups are direct calls instead of protocol witnesses.
  @inlinable
  public func effectiveNumbered<Subject: DecisionSubject>(subject: Subject, now: Int64)
    -> [EffectiveRow]
  {
    // Each row looks up to three entries; past a few entries, a table built once is cheaper
    // than scanning them for every row.
    if subject.explicitEntryCount > 16 && channels.count * (topics.count + 1) > 16 {
      return indexedEffectiveRows(subject: subject, now: now)
    }
    return effectiveRows(subject: subject, now: now)
  }

  /// `effectiveRows` of an `IndexedSubject`, in a function of its own: inlined, the
  /// generic wrapper's type metadata was looked up on every call of `effective` (~330
  /// instructions), used or not.
  @usableFromInline @inline(never)
  func indexedEffectiveRows<Subject: DecisionSubject>(subject: Subject, now: Int64)
    -> [EffectiveRow]
  {
    effectiveRows(subject: IndexedSubject(subject), now: now)
  }

  @inlinable
  func effectiveRows<Subject: DecisionSubject>(subject: Subject, now: Int64)
    -> [EffectiveRow]
  {
    var out: [EffectiveRow] = []
    out.reserveCapacity(channels.count * (topics.count + 1))
    for c in channels {
      for i in -1..<topics.count {
        let t = i < 0 ? 0 : topics[i]
        // decideDelivery for a known, unsuppressed person without override, without
        // wrapping the subject in an Optional (a copy of it) per decision.
        let reason = choiceReason(target: target(channel: c, topic: t), person: subject, now: now)
        out.append(EffectiveRow(channel: c, topic: t, reason: reason))
      }
    }
    return out
  }

  /// A stored history record as responses show it.
  public func historyEntry(_ r: HistoryRecord) -> HistoryEntry {
    HistoryEntry(
      at: r.at, action: r.action, channel: channelName(r.channel), topic: topicName(r.topic),
      source: r.source, actor: r.actor, detail: r.detail)
  }
}
