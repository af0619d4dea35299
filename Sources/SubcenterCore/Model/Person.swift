// A person as the domain sees it, decoded: identifiers, preference entries, the global
// flag, history and counted sends, with the changes every command makes to them.

/// One explicit choice for a (channel, topic) key, numbered in the person's workspace.
public struct PreferenceRecord: Sendable, Equatable {
  public var channel: NameID
  public var topic: NameID
  public var state: PreferenceState
  public var updatedAt: Int64
  public var source: String
  public var noticeVersion: String

  public init(
    channel: NameID, topic: NameID, state: PreferenceState, updatedAt: Int64,
    source: String = "", noticeVersion: String = ""
  ) {
    self.channel = channel
    self.topic = topic
    self.state = state
    self.updatedAt = updatedAt
    self.source = source
    self.noticeVersion = noticeVersion
  }

  /// Entries are kept sorted by this key.
  @inlinable public var key: UInt32 { UInt32(channel) << 16 | UInt32(topic) }
}

/// The global unsubscribe flag with when and where it was last set or cleared.
public struct GlobalFlag: Sendable, Equatable {
  public var unsubscribed: Bool
  public var updatedAt: Int64
  public var source: String

  public init(unsubscribed: Bool, updatedAt: Int64, source: String = "") {
    self.unsubscribed = unsubscribed
    self.updatedAt = updatedAt
    self.source = source
  }
}

/// What a history entry records (SPEC §3 GetHistory).
public enum HistoryAction: UInt8, Sendable, Hashable, CaseIterable {
  case identify = 1
  case merge = 2
  case subscribe = 3
  case unsubscribe = 4
  case unsubscribeAll = 5
  case resubscribe = 6
  case override = 7

  /// The name responses carry: `identify`, `unsubscribe_all`…
  public var name: String {
    switch self {
    case .identify: "identify"
    case .merge: "merge"
    case .subscribe: "subscribe"
    case .unsubscribe: "unsubscribe"
    case .unsubscribeAll: "unsubscribe_all"
    case .resubscribe: "resubscribe"
    case .override: "override"
    }
  }
}

/// One history entry as stored. `seq` is unique within the person and grows with every
/// entry added; history is ordered by (`at`, `seq`), which is what paging cursors hold.
public struct HistoryRecord: Sendable, Equatable {
  public var seq: UInt32
  public var at: Int64
  public var action: HistoryAction
  public var channel: NameID
  public var topic: NameID
  public var source: String
  public var actor: String
  public var detail: String

  public init(
    seq: UInt32, at: Int64, action: HistoryAction, channel: NameID = 0, topic: NameID = 0,
    source: String = "", actor: String = "", detail: String = ""
  ) {
    self.seq = seq
    self.at = at
    self.action = action
    self.channel = channel
    self.topic = topic
    self.source = source
    self.actor = actor
    self.detail = detail
  }

  /// Sorts before `other` in history order.
  @inlinable public func precedes(_ other: HistoryRecord) -> Bool {
    at != other.at ? at < other.at : seq < other.seq
  }
}

/// One send counted toward a channel's message limit.
public struct SendRecord: Sendable, Equatable {
  public var channel: NameID
  public var at: Int64

  public init(channel: NameID, at: Int64) {
    self.channel = channel
    self.at = at
  }
}

/// A person or an anonymous profile. Channel and topic are numbers of the person's
/// workspace (`Workspace.channelName(_:)`).
///
/// Invariant kept by the store: no identifier a person holds is suppressed (suppression
/// forgets the holder and Identify refuses suppressed identifiers), so deciding for a
/// known person never needs a suppression hash.
public struct Person: Sendable, Equatable {
  public var key: PersonKey
  /// Normalized email, "" when none.
  public var email: String
  /// E.164 phone, "" when none.
  public var phone: String
  /// Every anonymous id naming this person; an anonymous profile holds exactly its key.
  public var anonymousIDs: [String]
  public var createdAt: Int64
  /// Last change by Identify, a preference or the global flag (the anonymous TTL runs
  /// from here).
  public var updatedAt: Int64
  public var global: GlobalFlag?
  /// Sorted by `PreferenceRecord.key`, one per key.
  public var entries: [PreferenceRecord]
  /// Sorted by (`at`, `seq`).
  public var history: [HistoryRecord]
  /// The `seq` the next history entry gets.
  public var nextHistorySeq: UInt32
  /// Sorted by time.
  public var sends: [SendRecord]

  public init(key: PersonKey, at: Int64) {
    self.key = key
    email = ""
    phone = ""
    anonymousIDs = key.isAnonymous ? [key.value] : []
    createdAt = at
    updatedAt = at
    global = nil
    entries = []
    history = []
    nextHistorySeq = 1
    sends = []
  }

  public init(
    key: PersonKey, email: String, phone: String, anonymousIDs: [String], createdAt: Int64,
    updatedAt: Int64, global: GlobalFlag?, entries: [PreferenceRecord],
    history: [HistoryRecord], nextHistorySeq: UInt32, sends: [SendRecord]
  ) {
    self.key = key
    self.email = email
    self.phone = phone
    self.anonymousIDs = anonymousIDs
    self.createdAt = createdAt
    self.updatedAt = updatedAt
    self.global = global
    self.entries = entries
    self.history = history
    self.nextHistorySeq = nextHistorySeq
    self.sends = sends
  }

  public var isAnonymous: Bool { key.isAnonymous }

  /// The entry for a key, if any.
  public func entry(channel: NameID, topic: NameID) -> PreferenceRecord? {
    let k = UInt32(channel) << 16 | UInt32(topic)
    return entries.first { $0.key == k }
  }

  /// Sets one explicit entry and records it in history.
  public mutating func setPreference(
    channel: NameID, topic: NameID, state: PreferenceState, source: String,
    noticeVersion: String, at: Int64, actor: String
  ) {
    let record = PreferenceRecord(
      channel: channel, topic: topic, state: state, updatedAt: at, source: source,
      noticeVersion: noticeVersion)
    upsert(record)
    updatedAt = at
    appendHistory(
      action: state == .subscribed ? .subscribe : .unsubscribe, channel: channel, topic: topic,
      source: source, actor: actor,
      detail: noticeVersion.isEmpty ? "" : "notice_version: \(noticeVersion)", at: at)
  }

  /// Inserts or replaces the entry with `record`'s key, keeping entries sorted.
  public mutating func upsert(_ record: PreferenceRecord) {
    let k = record.key
    var lo = 0
    var hi = entries.count
    while lo < hi {
      let mid = (lo + hi) / 2
      if entries[mid].key < k { lo = mid + 1 } else { hi = mid }
    }
    if lo < entries.count && entries[lo].key == k {
      entries[lo] = record
    } else {
      entries.insert(record, at: lo)
    }
  }

  /// Sets or clears the global flag and records it in history.
  public mutating func setGlobal(unsubscribed: Bool, source: String, at: Int64, actor: String) {
    global = GlobalFlag(unsubscribed: unsubscribed, updatedAt: at, source: source)
    updatedAt = at
    appendHistory(
      action: unsubscribed ? .unsubscribeAll : .resubscribe, source: source, actor: actor, at: at)
  }

  /// Counts one send toward `channel`'s limit (none without a limit), dropping sends
  /// that have left the window.
  public mutating func recordSend(channel: NameID, at: Int64, limit: LimitRule?) {
    guard let limit else { return }
    let window = limit.counted(at: at)  // the sends no longer counted go
    sends.removeAll { $0.channel == channel && !window.contains($0.at) }
    let s = SendRecord(channel: channel, at: at)
    if let last = sends.last, last.at > at {
      let i = sends.firstIndex { $0.at > at }!
      sends.insert(s, at: i)
    } else {
      sends.append(s)
    }
  }

  /// Adds a history entry with the next `seq`, in (`at`, `seq`) order.
  public mutating func appendHistory(
    action: HistoryAction, channel: NameID = 0, topic: NameID = 0, source: String = "",
    actor: String, detail: String = "", at: Int64
  ) {
    let record = HistoryRecord(
      seq: nextHistorySeq, at: at, action: action, channel: channel, topic: topic,
      source: source, actor: actor, detail: detail)
    nextHistorySeq &+= 1
    insertHistory(record)
  }

  /// Inserts a record keeping history order (appends in the usual case).
  public mutating func insertHistory(_ record: HistoryRecord) {
    if let last = history.last, record.precedes(last) {
      let i = history.firstIndex { record.precedes($0) }!
      history.insert(record, at: i)
    } else {
      history.append(record)
    }
  }

  /// The profile a response shows.
  public var profile: Profile {
    Profile(
      personID: key.personID, email: email, phone: phone, anonymousIDs: anonymousIDs,
      createdAt: createdAt, updatedAt: updatedAt)
  }
}

extension Person: DecisionSubject {
  public var isGloballyUnsubscribed: Bool { global?.unsubscribed ?? false }

  public func explicitState(channel: NameID, topic: NameID) -> PreferenceState? {
    let k = UInt32(channel) << 16 | UInt32(topic)
    for i in entries.indices where entries[i].key == k { return entries[i].state }
    return nil
  }

  public func sendCount(channel: NameID, in window: SendWindow) -> Int {
    var n = 0
    for s in sends where s.channel == channel && window.contains(s.at) { n += 1 }
    return n
  }

  public var explicitEntryCount: Int { entries.count }

  public func forEachExplicitEntry(_ body: (UInt32, PreferenceState) -> Void) {
    for e in entries { body(e.key, e.state) }
  }
}
