// The change feed's view of the log (SPEC §3 `WatchChanges`): which log records are
// events, what erasure removes from the retained log, and which segments the change
// retention lets go. Pure functions, so they are tested without files.
//
// Events: identify, merge, subscribe, unsubscribe, unsubscribe_all, resubscribe (the
// history actions but `override`) and `forget` (ForgetPerson, each person a suppression
// forgets, each anonymous profile the TTL expires). Configuration, counted sends,
// overrides and (un)suppressions are not events. An event's seq is its record's seq; a
// record that removes several persons at once takes one seq per removal
// (`LogRecord.seq_count`), and its `forget` events get them in order, so that every event
// has a seq of its own and a consumer resuming after any of them misses none.

import SubcenterCore

/// One change, as WatchChanges sends it (before redaction).
public struct ChangeEvent: Sendable, Equatable {
  public var workspace: String
  public var seq: UInt64
  public var at: Int64
  /// Empty for an anonymous profile.
  public var personID: String
  /// Set for an anonymous profile's events and on merge, only there.
  public var anonymousID: String
  public var action: String
  public var channel: String = ""
  public var topic: String = ""
  public var state: PreferenceState = .unspecified
  public var source: String = ""

  public init(
    workspace: String, seq: UInt64, at: Int64, person: PersonKey, anonymousID: String? = nil,
    action: String
  ) {
    self.workspace = workspace
    self.seq = seq
    self.at = at
    self.personID = person.personID
    self.anonymousID = anonymousID ?? (person.isAnonymous ? person.value : "")
    self.action = action
  }
}

public enum ChangeEvents {
  /// How many seqs the record of `command` takes: one per person it removes, at least one.
  public static func seqCount(_ command: Command) -> UInt64 {
    switch command {
    case .suppress(let c): UInt64(max(1, c.forget.count))
    case .expireAnonymous(let c): UInt64(max(1, c.profiles.count))
    default: 1
    }
  }

  /// The events of the record `seq` holding `command` (nil: an erased record, no event);
  /// the i-th `forget` of a record removing several persons has seq `seq + i`.
  public static func events(seq: UInt64, command: Command?) -> [ChangeEvent] {
    guard let command else { return [] }
    switch command {
    case .identify(let c):
      if c.mergesProfile, let a = c.anonymousID {
        return [
          ChangeEvent(
            workspace: c.workspace, seq: seq, at: c.at, person: c.person, anonymousID: a,
            action: "merge")
        ]
      }
      guard hasEvent(c) else { return [] }
      return [
        ChangeEvent(
          workspace: c.workspace, seq: seq, at: c.at, person: c.person, action: "identify")
      ]
    case .setPreference(let c):
      var e = ChangeEvent(
        workspace: c.workspace, seq: seq, at: c.at, person: c.person,
        action: c.state == .subscribed ? "subscribe" : "unsubscribe")
      e.channel = c.channel
      e.topic = c.topic
      e.state = c.state
      e.source = c.source
      return [e]
    case .setGlobal(let c):
      var e = ChangeEvent(
        workspace: c.workspace, seq: seq, at: c.at, person: c.person,
        action: c.unsubscribed ? "unsubscribe_all" : "resubscribe")
      e.source = c.source
      return [e]
    case .forget(let c):
      return [
        ChangeEvent(workspace: c.workspace, seq: seq, at: c.at, person: c.person, action: "forget")
      ]
    case .suppress(let c):
      return c.forget.enumerated().map { i, p in
        ChangeEvent(
          workspace: c.workspace, seq: seq + UInt64(i), at: c.at, person: p, action: "forget")
      }
    case .expireAnonymous(let c):
      return c.profiles.enumerated().map { i, a in
        ChangeEvent(
          workspace: c.workspace, seq: seq + UInt64(i), at: c.at, person: .anonymous(a),
          action: "forget")
      }
    case .configureWorkspace, .recordSends, .override, .unsuppress:
      return []
    }
  }

  /// Whether the record holding `command` has events: `!events(seq:command:).isEmpty`,
  /// without building them (checked for every record applied).
  public static func hasEvents(_ command: Command) -> Bool {
    lastEvent(seq: 1, of: command) != nil
  }

  /// Whether an identify has its event: one that changes nothing leaves no history entry,
  /// hence no event.
  private static func hasEvent(_ c: Command.Identify) -> Bool {
    c.creates || c.email != nil || c.phone != nil || c.anonymousID != nil
  }

  /// The workspace and seq of the last event of the record `seq` holding `command` (nil:
  /// it has none): `events(seq:command:).last`'s, without building them, and in one
  /// switch (each switch on a `Command` copies it; read for every record of every
  /// retained segment).
  static func lastEvent(seq: UInt64, of command: Command) -> (workspace: String, seq: UInt64)? {
    switch command {
    case .identify(let c): hasEvent(c) ? (c.workspace, seq) : nil
    case .setPreference(let c): (c.workspace, seq)
    case .setGlobal(let c): (c.workspace, seq)
    case .forget(let c): (c.workspace, seq)
    case .suppress(let c):
      c.forget.isEmpty ? nil : (c.workspace, seq + UInt64(c.forget.count) - 1)
    case .expireAnonymous(let c):
      c.profiles.isEmpty ? nil : (c.workspace, seq + UInt64(c.profiles.count) - 1)
    case .configureWorkspace, .recordSends, .override, .unsuppress: nil
    }
  }

  /// A removal record as its tombstone keeps it once its erasure has run, when that is less
  /// than the record: a suppression that forgets someone without its `reason`, free text
  /// the caller wrote (it may name the person). nil when the record is not such a removal.
  static func bareTombstone(of command: Command) -> Command? {
    guard case .suppress(var c) = command, !c.forget.isEmpty, !c.reason.isEmpty else {
      return nil
    }
    c.reason = ""
    return .suppress(c)
  }

  /// The persons a record removes.
  static func removals(of command: Command) -> [PersonKey] {
    switch command {
    case .forget(let c): return [c.person]
    case .suppress(let c): return c.forget
    case .expireAnonymous(let c): return c.profiles.map { .anonymous($0) }
    default: return []
    }
  }
}

/// What erasure removes from the retained log: every record holding data of a person
/// removed by a later record (through the anonymous ids attached to or merged into that
/// person too), except the removal records themselves — the `forget` tombstones, which
/// stay until the change retention passes. Feed it the `SegmentFacts` of every retained
/// segment in seq order (`observe`), then ask `mayErase` which segments to read and
/// `erases` for each of their records.
public struct ErasurePlan: Sendable {
  struct Key: Hashable {
    var workspace: String
    var person: PersonKey
  }

  /// What the plan needs of one log segment, gathered as its records are read once (and
  /// kept while the segment does not change): the attachments of anonymous ids and the
  /// removals, in seq order, and a filter of the persons whose data the records hold, so
  /// a segment holding none of the removed persons is not read again.
  public struct SegmentFacts: Sendable {
    enum Fact {
      case attach(alias: Key, person: Key)
      case removal([Key])
    }
    fileprivate var facts: [(seq: UInt64, fact: Fact)] = []
    /// The first seq of the segment (records before it are not in it).
    let firstSeq: UInt64
    /// The hashes of the keys of the persons whose data its records hold (until `finish()`).
    private var personHashes = Set<Int>()
    fileprivate var persons = KeyFilter(count: 0)
    /// Whether it holds a removal more than its tombstone keeps (`bareTombstone`).
    fileprivate var holdsTombstoneText = false
    /// Every removal up to this seq has been erased from the segment (set once a
    /// compaction has gone through it): `mayErase` looks only at the removals after it.
    public var erasedThrough: UInt64 = 0

    public init(firstSeq: UInt64) { self.firstSeq = firstSeq }

    /// Adds the record `seq` (records in seq order; erased records are not added).
    public mutating func add(seq: UInt64, command: Command) {
      ErasurePlan.forEachKey(of: command) { personHashes.insert($0.hashValue) }
      guard let fact = Self.fact(of: command) else { return }
      facts.append((seq, fact))
      if case .removal = fact, ChangeEvents.bareTombstone(of: command) != nil {
        holdsTombstoneText = true
      }
    }

    /// The fact of a record, if it has one: the anonymous id an identify attaches to a
    /// person, or the persons a removal removes (none: no fact).
    static func fact(of command: Command) -> Fact? {
      switch command {
      case .identify(let c):
        guard let a = c.anonymousID, !c.person.isAnonymous else { return nil }
        return .attach(
          alias: Key(workspace: c.workspace, person: .anonymous(a)),
          person: Key(workspace: c.workspace, person: c.person))
      case .forget, .suppress, .expireAnonymous:
        let removed = ChangeEvents.removals(of: command)
        guard !removed.isEmpty else { return nil }
        let ws = command.workspace
        return .removal(removed.map { Key(workspace: ws, person: $0) })
      case .setPreference, .setGlobal, .recordSends, .override, .configureWorkspace, .unsuppress:
        return nil
      }
    }

    /// Ends the segment: builds the filter of its persons (sized for the distinct ones).
    public mutating func finish() {
      persons = KeyFilter(count: personHashes.count)
      for h in personHashes { persons.insert(h) }
      personHashes = []
    }
  }

  /// Calls `body` with the key of each person a record holds data of (a removal's own
  /// record is its tombstone, not data: see `ChangeEvents.removals(of:)`), without building
  /// an array: it is called for every record of every retained segment.
  static func forEachKey(of command: Command, _ body: (Key) -> Void) {
    switch command {
    case .identify(let c):
      body(Key(workspace: c.workspace, person: c.person))
      if let a = c.anonymousID { body(Key(workspace: c.workspace, person: .anonymous(a))) }
    case .setPreference(let c): body(Key(workspace: c.workspace, person: c.person))
    case .setGlobal(let c): body(Key(workspace: c.workspace, person: c.person))
    case .override(let c): body(Key(workspace: c.workspace, person: c.person))
    case .recordSends(let c): for p in c.persons { body(Key(workspace: c.workspace, person: p)) }
    case .forget, .suppress, .expireAnonymous, .configureWorkspace, .unsuppress: break
    }
  }

  /// Anonymous id → the person it was attached to or merged into (latest wins).
  private var owner: [Key: Key] = [:]
  /// Person → the anonymous ids `owner` gives it (a removal finds them without a scan).
  private var aliases: [Key: Set<Key>] = [:]
  /// Every key that belonged to a person when it was removed, with that seq.
  private var erasedBefore: [Key: UInt64] = [:]
  /// The same removals in seq order, each key's hash with its removal's seq (a key removed
  /// twice is in it twice): `mayErase` takes those after a seq without hashing keys.
  private var removedHashes: [(seq: UInt64, hash: Int)] = []
  /// The seq of the newest removal observed (0: none).
  public private(set) var newestRemoval: UInt64 = 0

  public init() {}

  /// Observes a segment's facts (segments in seq order).
  public mutating func observe(_ segment: SegmentFacts) {
    for (seq, fact) in segment.facts {
      switch fact {
      case .attach(let alias, let person):
        if let previous = owner.updateValue(person, forKey: alias), previous != person {
          aliases[previous]?.remove(alias)
        }
        aliases[person, default: []].insert(alias)
      case .removal(let keys):
        for k in keys { remove(k, at: seq) }
      }
    }
  }

  /// Observes one record (tests): the facts of a segment holding only it.
  public mutating func observe(seq: UInt64, command: Command?) {
    var facts = SegmentFacts(firstSeq: seq)
    if let command { facts.add(seq: seq, command: command) }
    observe(facts)
  }

  private mutating func remove(_ k: Key, at seq: UInt64) {
    erasedBefore[k] = seq
    noteRemoved(k, at: seq)
    newestRemoval = max(newestRemoval, seq)
    // The anonymous ids attached to the person leave with it, and belong to nobody
    // after: a profile made later under one of them is someone else, not erased when
    // a later person of this key is removed.
    for alias in aliases.removeValue(forKey: k) ?? [] {
      erasedBefore[alias] = seq
      noteRemoved(alias, at: seq)
      owner[alias] = nil
    }
  }

  /// Adds to `removedHashes`, keeping it in seq order (segments are observed in order, so
  /// this appends).
  private mutating func noteRemoved(_ k: Key, at seq: UInt64) {
    var i = removedHashes.endIndex
    while i > 0 && removedHashes[i - 1].seq > seq { i -= 1 }
    removedHashes.insert((seq, k.hashValue), at: i)
  }

  /// Whether the segment `facts` describes may hold a record `erases` is true for (false
  /// means it holds none; true may be a false alarm of the filter). Looks at the removals
  /// after the segment's first seq and its `erasedThrough`: a compaction's cost grows with
  /// the retained segments and the removals since they were last erased, not with their
  /// product.
  public func mayErase(in facts: SegmentFacts) -> Bool {
    if facts.holdsTombstoneText { return true }
    let after = max(facts.firstSeq, facts.erasedThrough)
    // The first removal after `after` (removals are observed in seq order).
    var low = 0
    var high = removedHashes.count
    while low < high {
      let mid = (low + high) / 2
      if removedHashes[mid].seq > after { high = mid } else { low = mid + 1 }
    }
    return removedHashes[low...].contains { facts.persons.mayContain($0.hash) }
  }

  /// What erasure does with the record `seq`: nil to keep it.
  public func rewrite(seq: UInt64, command: Command?) -> Rewrite? {
    guard let command, !erasedBefore.isEmpty else { return nil }
    if let bare = ChangeEvents.bareTombstone(of: command) { return .tombstone(bare) }
    var erases = false
    Self.forEachKey(of: command) { k in
      if let s = erasedBefore[k], seq < s { erases = true }
    }
    return erases ? .erase : nil
  }

  /// What erasure does with a record it does not keep.
  public enum Rewrite: Equatable {
    /// Replace it by an erased record (the seq alone): it holds a removed person's data.
    case erase
    /// Replace it by this command: a removal, cut down to its tombstone (`bareTombstone`).
    case tombstone(Command)
  }

  /// True when nothing was removed: no rewrite needed.
  public var isEmpty: Bool { erasedBefore.isEmpty }
}

/// A Bloom filter of `count` hash values: `mayContain` is true for every value inserted,
/// and for about 1% of the others (10 bits and 7 probes a value; at least 512 bits, so a
/// filter of a few values almost never errs; none for no values, as in the many segments
/// that hold only a compaction's tombstones).
struct KeyFilter: Sendable {
  private var bits: [UInt64]

  init(count: Int) {
    bits = count == 0 ? [] : [UInt64](repeating: 0, count: max(8, (count * 10 + 63) / 64))
  }

  /// The next of a value's 7 probes: a fresh splitmix64 step of `state` (the value's hash
  /// at first), mapped onto the `m` bits by multiply-shift. (Probes `h1 + i * h2` modulo
  /// the power-of-two bit count, from one mixed hash, alias each other: they erred ~12
  /// times as often, 5.3e-4 instead of the 4.5e-5 of independent probes, for 20 values in
  /// 512 bits.)
  private static func nextProbe(_ state: inout UInt64, bits m: UInt64) -> UInt64 {
    state &+= 0x9E37_79B9_7F4A_7C15
    var z = state
    z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
    z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
    z ^= z >> 31
    return z.multipliedFullWidth(by: m).high
  }

  mutating func insert(_ hash: Int) {
    let m = UInt64(bits.count) * 64
    var state = UInt64(bitPattern: Int64(hash))
    for _ in 0..<7 {
      let b = Self.nextProbe(&state, bits: m)
      bits[Int(b >> 6)] |= 1 << (b & 63)
    }
  }

  func mayContain(_ hash: Int) -> Bool {
    if bits.isEmpty { return false }
    let m = UInt64(bits.count) * 64
    var state = UInt64(bitPattern: Int64(hash))
    for _ in 0..<7 {
      let b = Self.nextProbe(&state, bits: m)
      if bits[Int(b >> 6)] & (1 << (b & 63)) == 0 { return false }
    }
    return true
  }
}

/// Which log segments the change retention lets go (SPEC §3, §4).
public enum RetentionPlan {
  /// A segment as the retention sees it.
  public struct Segment: Sendable, Equatable {
    public var firstSeq: UInt64
    /// The time of its newest record that erasure left (nil: nothing left but erased
    /// records, or no record).
    public var newestAt: Int64?
    public init(firstSeq: UInt64, newestAt: Int64?) {
      self.firstSeq = firstSeq
      self.newestAt = newestAt
    }
  }

  /// The number of leading segments to delete (a prefix, so the log stays contiguous):
  /// each complete (not the active one, i.e. not the last), every record older than
  /// `cutoff` (ms), and covered by the snapshot at `snapshotSeq`. A segment of erased
  /// records only goes with an expired one after it, never as the last one deleted, so an
  /// erased record never turns a cursor into OUT_OF_RANGE. `uncovered` is true when an
  /// expired segment waits for a newer snapshot.
  public static func deletable(
    _ segments: [Segment], cutoff: Int64, snapshotSeq: UInt64
  ) -> (count: Int, uncovered: Bool) {
    var count = 0
    var i = 0
    while i + 1 < segments.count {
      let s = segments[i]
      if let t = s.newestAt, t >= cutoff { break }
      let covered = segments[i + 1].firstSeq <= snapshotSeq &+ 1
      if !covered { return (count, s.newestAt != nil) }
      if s.newestAt != nil { count = i + 1 }
      i += 1
    }
    return (count, false)
  }
}
