// The packed form of a person, as shards hold it: one byte array per person plus its
// counted sends. Packing keeps a person with two entries and a few history entries in
// about 150 bytes instead of the ~600 a `Person` of Swift strings and arrays takes, and
// lets the decision read a person without decoding it.
//
// Layout of `blob` (integers little-endian; "varint" is unsigned LEB128; "zigzag" is a
// zigzag-encoded varint; times are Unix ms). Three sections: the hot one the decision
// reads in place, the history, and the cold rest. The history sits before the cold
// section so that a change appends its history entries where the old cold section began
// and writes a new cold section after them: a write costs the size of the hot and cold
// sections, never the size of the history (a person's history only grows).
//
//   0  u32  coldStart        offset of the cold section
//   4  u16  entryCount
//   6  u16  keyLength
//   8  key bytes             the person id, or an anonymous profile's anonymous id
//      entryCount × 5 bytes  channel u16, topic u16, state u8 — sorted by (channel, topic);
//                            read in place by the decision
//   historyStart (= 8 + keyLength + 5 × entryCount):
//      historyCount entries in (at, seq) order, each
//      varint seq, zigzag at − previous at (the first: − createdAt), u8 action,
//      varint channel, varint topic, ref source, ref actor, ref detail
//   coldStart:
//      zigzag createdAt, zigzag updatedAt − createdAt
//      str email, str phone  (str = varint length + UTF-8; length 0 = none)
//      varint n, n × str     anonymous ids (an anonymous profile's own id is the key and
//                            is not repeated)
//      u8 global             0 never set, 1 unsubscribed, 2 cleared; when set:
//                            zigzag updatedAt − createdAt, ref source
//      per entry, same order: zigzag updatedAt − createdAt, ref source, ref noticeVersion
//      varint nextHistorySeq, varint historyCount, zigzag lastHistoryAt − createdAt
//
// A "ref" is a varint n: 0 is "", odd n is string n >> 1 of the shard's `StringTable`,
// even n is n >> 1 bytes that follow inline.
//
// `sends` holds one UInt64 per counted send: channel << 48 | time (times are clamped to
// 0..<2^48 ms, i.e. until the year 10889).

import SubcenterCore

struct PersonRecord {
  var blob: [UInt8]
  var sends: [UInt64]
  /// The workspace number; 0 marks a free slot.
  var workspace: UInt16
  var flags: UInt8

  static let anonymousFlag: UInt8 = 1
  static let globalFlag: UInt8 = 2

  static let free = PersonRecord(blob: [], sends: [], workspace: 0, flags: 0)

  var isFree: Bool { workspace == 0 }
  var isAnonymous: Bool { flags & Self.anonymousFlag != 0 }
}

/// Where a decoded person's history stood when it was decoded without history, so new
/// entries can be appended without decoding the old ones.
struct HistoryTail {
  var count: Int
  var lastAt: Int64
}

enum PersonCodec {
  // MARK: Encoding

  /// Packs `person` in full.
  static func encode(_ p: Person, workspace: UInt16, strings: inout StringTable) -> PersonRecord {
    var w = ByteWriter()
    w.bytes.reserveCapacity(
      64 + p.key.value.utf8.count + 24 * p.entries.count + 16 * p.history.count)
    writeHot(p, into: &w)
    var previous = p.createdAt
    for r in p.history { writeHistory(r, previous: &previous, into: &w, strings: &strings) }
    writeCold(
      p, historyCount: p.history.count, lastHistoryAt: p.history.last?.at ?? p.createdAt,
      into: &w, strings: &strings)
    return PersonRecord(
      blob: w.bytes, sends: packSends(p.sends), workspace: workspace, flags: flags(p))
  }

  /// Repacks `record` from `p`, a person decoded without history whose `history` holds
  /// only the entries added since: they are appended after the stored ones, in place
  /// (re-sorting everything only when one sorts before the last stored entry). The cost
  /// is that of the hot and cold sections, not of the stored history.
  static func update(
    _ record: inout PersonRecord, with p: Person, tail: HistoryTail, strings: inout StringTable
  ) {
    if let first = p.history.first, first.at < tail.lastAt {
      var full = p
      let old = decodeHistory(record, strings: strings)
      full.history = old
      for r in p.history { full.insertHistory(r) }
      record = encode(full, workspace: record.workspace, strings: &strings)
      return
    }
    var w = ByteWriter()
    swap(&w.bytes, &record.blob)  // keeps the blob uniquely referenced: edited in place
    let oldHotEnd = hotEnd(w.bytes)
    let oldColdStart = Int(w.readU32(at: 0))
    w.bytes.removeSubrange(oldColdStart...)
    var hot = ByteWriter()
    hot.bytes.reserveCapacity(8 + p.key.value.utf8.count + 5 * p.entries.count)
    writeHot(p, into: &hot)
    // Moves the history only when the hot section changed size (a new entry).
    w.bytes.replaceSubrange(0..<oldHotEnd, with: hot.bytes)
    var previous = tail.lastAt
    for r in p.history { writeHistory(r, previous: &previous, into: &w, strings: &strings) }
    writeCold(
      p, historyCount: tail.count + p.history.count,
      lastHistoryAt: p.history.last?.at ?? tail.lastAt, into: &w, strings: &strings)
    swap(&w.bytes, &record.blob)
    record.sends = packSends(p.sends)
    record.flags = flags(p)
  }

  /// `Person.setPreference` on the packed record, without decoding the person: the
  /// entry is set in the hot section (in place, or inserted in order), its history entry
  /// appended after the stored ones, and the cold section rewritten from its bytes with the
  /// new entry's fields. The result equals decode → `setPreference` → `update`, byte for
  /// byte. Returns false, changing nothing, when the new history entry would sort before
  /// the stored ones (`update` re-sorts then): the caller takes the decoding path.
  static func setPreference(
    _ r: inout PersonRecord, channel: NameID, topic: NameID, state: PreferenceState,
    source: String, noticeVersion: String, at: Int64, actor: String,
    strings: inout StringTable, scratch: inout [UInt8]
  ) -> Bool {
    let oldColdStart = coldStart(r.blob)
    let n = entryCount(r)
    let entriesStart = 8 + (Int(r.blob[6]) | Int(r.blob[7]) << 8)
    // The entry's place among the sorted (channel, topic) keys.
    let key = UInt32(channel) << 16 | UInt32(topic)
    var lo = 0
    var hi = n
    while lo < hi {
      let mid = (lo + hi) / 2
      let o = entriesStart + 5 * mid
      let k =
        UInt32(r.blob[o]) << 16 | UInt32(r.blob[o + 1]) << 24 | UInt32(r.blob[o + 2])
        | UInt32(r.blob[o + 3]) << 8
      if k < key { lo = mid + 1 } else { hi = mid }
    }
    let entryAt = entriesStart + 5 * lo
    let exists =
      lo < n && UInt16(r.blob[entryAt]) | UInt16(r.blob[entryAt + 1]) << 8 == channel
      && UInt16(r.blob[entryAt + 2]) | UInt16(r.blob[entryAt + 3]) << 8 == topic

    let cold = coldLayout(r.blob, entryCount: n, entry: lo)
    let (before, after) = (cold.entryStart, exists ? cold.entryEnd : cold.entryStart)
    guard at >= cold.lastHistoryAt else { return false }

    // What follows the stored history: the new history entry, then the new cold section.
    let history = HistoryRecord(
      seq: cold.nextHistorySeq, at: at, action: state == .subscribed ? .subscribe : .unsubscribe,
      channel: channel, topic: topic, source: source, actor: actor,
      detail: noticeVersion.isEmpty ? "" : "notice_version: \(noticeVersion)")
    let tail = changeTail(r.blob, cold, history, strings: &strings, scratch: &scratch) {
      old, tail, strings in
      tail.bytes.append(contentsOf: old[cold.identityStart..<before])
      tail.zigzag(at &- cold.createdAt)
      tail.ref(source, &strings)
      tail.ref(noticeVersion, &strings)
      tail.bytes.append(contentsOf: old[after..<cold.entriesEnd])
    }

    // Edit the record in place: drop the old cold section, set or insert the hot entry,
    // append the tail.
    r.blob.removeSubrange(oldColdStart...)
    let stateByte = UInt8(truncatingIfNeeded: state.rawValue)
    if exists {
      r.blob[entryAt + 4] = stateByte
    } else {
      let entry: [UInt8] = [
        UInt8(truncatingIfNeeded: channel), UInt8(truncatingIfNeeded: channel >> 8),
        UInt8(truncatingIfNeeded: topic), UInt8(truncatingIfNeeded: topic >> 8), stateByte,
      ]
      r.blob.insert(contentsOf: entry, at: entryAt)
      r.blob[4] = UInt8(truncatingIfNeeded: n + 1)
      r.blob[5] = UInt8(truncatingIfNeeded: (n + 1) >> 8)
    }
    append(tail, to: &r, keeping: &scratch)
    return true
  }

  /// `Person.setGlobal` on the packed record, as `setPreference` does it: the history
  /// entry appended after the stored ones, the cold section rewritten from its bytes with
  /// the new global flag, the record's flag byte set. Equals decode → `setGlobal` →
  /// `update`, byte for byte; returns false, changing nothing, when the history entry would
  /// sort before the stored ones.
  static func setGlobal(
    _ r: inout PersonRecord, unsubscribed: Bool, source: String, at: Int64, actor: String,
    strings: inout StringTable, scratch: inout [UInt8]
  ) -> Bool {
    let oldColdStart = coldStart(r.blob)
    let n = entryCount(r)
    let cold = coldLayout(r.blob, entryCount: n, entry: n)
    guard at >= cold.lastHistoryAt else { return false }
    let history = HistoryRecord(
      seq: cold.nextHistorySeq, at: at, action: unsubscribed ? .unsubscribeAll : .resubscribe,
      channel: 0, topic: 0, source: source, actor: actor, detail: "")
    let tail = changeTail(r.blob, cold, history, strings: &strings, scratch: &scratch) {
      old, tail, strings in
      tail.bytes.append(contentsOf: old[cold.identityStart..<cold.globalStart])
      tail.u8(unsubscribed ? 1 : 2)
      tail.zigzag(at &- cold.createdAt)
      tail.ref(source, &strings)
      tail.bytes.append(contentsOf: old[cold.globalEnd..<cold.entriesEnd])
    }
    r.blob.removeSubrange(oldColdStart...)
    append(tail, to: &r, keeping: &scratch)
    r.flags =
      unsubscribed ? r.flags | PersonRecord.globalFlag : r.flags & ~PersonRecord.globalFlag
    return true
  }

  /// What follows the stored history after an in-place change: `history`, then a new cold
  /// section whose fields from the identifiers to the entries' `middle` writes (from the
  /// old record's bytes); the change's time is the new `updatedAt` and last history time.
  /// It is written in `scratch` (the shard's: its capacity spares an allocation a change),
  /// which `append(_:to:keeping:)` gives back.
  private static func changeTail(
    _ blob: [UInt8], _ cold: ColdLayout, _ history: HistoryRecord, strings: inout StringTable,
    scratch: inout [UInt8],
    middle: (UnsafeBufferPointer<UInt8>, inout ByteWriter, inout StringTable) -> Void
  ) -> (bytes: ByteWriter, coldOffset: Int) {
    var tail = ByteWriter()
    swap(&tail.bytes, &scratch)
    tail.bytes.removeAll(keepingCapacity: true)
    tail.bytes.reserveCapacity(blob.count - coldStart(blob) + 48)
    var previous = cold.lastHistoryAt
    writeHistory(history, previous: &previous, into: &tail, strings: &strings)
    let coldOffset = tail.bytes.count
    tail.zigzag(cold.createdAt)
    tail.zigzag(history.at &- cold.createdAt)
    blob.withUnsafeBufferPointer { middle($0, &tail, &strings) }
    tail.varint(UInt64(cold.nextHistorySeq &+ 1))
    tail.varint(UInt64(cold.historyCount + 1))
    tail.zigzag(history.at &- cold.createdAt)
    return (tail, coldOffset)
  }

  /// Appends a `changeTail` to a record whose old cold section was removed, pointing the
  /// header at the new one; the tail's buffer goes back to `scratch`.
  private static func append(
    _ tail: consuming (bytes: ByteWriter, coldOffset: Int), to r: inout PersonRecord,
    keeping scratch: inout [UInt8]
  ) {
    let newColdStart = UInt32(r.blob.count + tail.coldOffset)
    r.blob.append(contentsOf: tail.bytes.bytes)
    for i in 0..<4 { r.blob[i] = UInt8(truncatingIfNeeded: newColdStart >> (8 * i)) }
    scratch = tail.bytes.bytes
  }

  /// Offsets in a record's cold section (see the layout above).
  private struct ColdLayout {
    var createdAt: Int64 = 0
    /// Where email, phone, anonymous ids and the global flag begin.
    var identityStart = 0
    /// Where the global flag (its byte, and its time and source when set) begins and ends.
    var globalStart = 0
    var globalEnd = 0
    /// Where entry `entry`'s fields begin and end (both at `entriesEnd` for an entry past
    /// the last).
    var entryStart = 0
    var entryEnd = 0
    var entriesEnd = 0
    var nextHistorySeq: UInt32 = 0
    var historyCount = 0
    var lastHistoryAt: Int64 = 0
  }

  /// Reads the cold section's layout. (A function of its own, so its reader's reference to
  /// `blob` is gone before the caller edits the record in place.)
  private static func coldLayout(_ blob: [UInt8], entryCount n: Int, entry: Int) -> ColdLayout {
    var l = ColdLayout()
    var rd = ByteReader(blob)
    rd.i = coldStart(blob)
    l.createdAt = rd.zigzag()
    _ = rd.zigzag()
    l.identityStart = rd.i
    rd.skipString()
    rd.skipString()
    for _ in 0..<Int(rd.varint()) { rd.skipString() }
    l.globalStart = rd.i
    if rd.u8() != 0 {
      _ = rd.zigzag()
      rd.skipRef()
    }
    l.globalEnd = rd.i
    for i in 0..<n {
      if i == entry { l.entryStart = rd.i }
      _ = rd.zigzag()
      rd.skipRef()
      rd.skipRef()
      if i == entry { l.entryEnd = rd.i }
    }
    l.entriesEnd = rd.i
    if entry >= n { (l.entryStart, l.entryEnd) = (rd.i, rd.i) }
    l.nextHistorySeq = UInt32(truncatingIfNeeded: rd.varint())
    l.historyCount = Int(rd.varint())
    l.lastHistoryAt = l.createdAt &+ rd.zigzag()
    return l
  }

  /// What GetPreferences and the write RPCs answer with, read from the record: the person
  /// id, the global flag and the entries (no identifiers, history or sends decoded).
  /// With `key`, the record's key when the caller has it (no String is made of the record's
  /// bytes then).
  static func preferences(
    _ r: borrowing PersonRecord, model: Workspace, strings: StringTable, now: Int64,
    key: PersonKey? = nil
  ) -> Preferences {
    var rd = ByteReader(r.blob)
    let entriesStart = 8 + (Int(r.blob[6]) | Int(r.blob[7]) << 8)
    rd.i = coldStart(r.blob)
    let createdAt = rd.zigzag()
    _ = rd.zigzag()
    rd.skipString()
    rd.skipString()
    for _ in 0..<Int(rd.varint()) { rd.skipString() }
    // The entries as the answer shows them, as they are read (no array of the stored ones).
    let count = entryCount(r)
    var shown: [PreferenceEntry] = []
    shown.reserveCapacity(count)
    let global = readGlobalAndEntries(
      &rd, createdAt: createdAt, entriesStart: entriesStart, count: count, strings: strings
    ) { e in
      if let s = model.shownEntry(e) { shown.append(s) }
    }
    let personID =
      r.isAnonymous
      ? "" : key?.personID ?? String(decoding: r.blob[8..<entriesStart], as: UTF8.self)
    return withSubject(r) { subject in
      model.preferences(
        personID: personID, global: global, shown: shown, subject: subject, now: now)
    }
  }

  private static func flags(_ p: Person) -> UInt8 {
    (p.isAnonymous ? PersonRecord.anonymousFlag : 0)
      | (p.isGloballyUnsubscribed ? PersonRecord.globalFlag : 0)
  }

  /// The hot section; `coldStart` is left 0 for `writeCold` to fill in.
  private static func writeHot(_ p: Person, into w: inout ByteWriter) {
    w.u32(0)
    w.u16(UInt16(p.entries.count))
    let key = p.key.value.utf8
    w.u16(UInt16(key.count))
    w.bytes.append(contentsOf: key)
    for e in p.entries {
      w.u16(e.channel)
      w.u16(e.topic)
      w.u8(UInt8(e.state.rawValue))
    }
  }

  /// The cold section, at the end of `w`, and its offset in the header.
  private static func writeCold(
    _ p: Person, historyCount: Int, lastHistoryAt: Int64, into w: inout ByteWriter,
    strings: inout StringTable
  ) {
    w.setU32(UInt32(w.bytes.count), at: 0)
    let base = p.createdAt
    w.zigzag(p.createdAt)
    w.zigzag(p.updatedAt &- base)
    w.string(p.email)
    w.string(p.phone)
    let ids = p.isAnonymous ? Array(p.anonymousIDs.dropFirst()) : p.anonymousIDs
    w.varint(UInt64(ids.count))
    for a in ids { w.string(a) }
    if let g = p.global {
      w.u8(g.unsubscribed ? 1 : 2)
      w.zigzag(g.updatedAt &- base)
      w.ref(g.source, &strings)
    } else {
      w.u8(0)
    }
    for e in p.entries {
      w.zigzag(e.updatedAt &- base)
      w.ref(e.source, &strings)
      w.ref(e.noticeVersion, &strings)
    }
    w.varint(UInt64(p.nextHistorySeq))
    w.varint(UInt64(historyCount))
    w.zigzag(lastHistoryAt &- base)
  }

  private static func writeHistory(
    _ r: HistoryRecord, previous: inout Int64, into w: inout ByteWriter,
    strings: inout StringTable
  ) {
    w.varint(UInt64(r.seq))
    w.zigzag(r.at &- previous)
    previous = r.at
    w.u8(r.action.rawValue)
    w.varint(UInt64(r.channel))
    w.varint(UInt64(r.topic))
    w.ref(r.source, &strings)
    w.ref(r.actor, &strings)
    w.ref(r.detail, &strings, intern: r.action != .override)
  }

  private static func packSends(_ sends: [SendRecord]) -> [UInt64] {
    if sends.isEmpty { return [] }
    return sends.map { UInt64($0.channel) << 48 | UInt64(clampTime($0.at)) }
  }

  @inline(__always)
  static func clampTime(_ t: Int64) -> Int64 { min(max(t, 0), (1 << 48) - 1) }

  // MARK: Decoding

  /// Unpacks a person; without `history` its history is left empty and `HistoryTail`
  /// says where the stored one ends.
  static func decode(_ r: borrowing PersonRecord, history: Bool, strings: StringTable)
    -> (person: Person, tail: HistoryTail)
  {
    var rd = ByteReader(r.blob)
    let coldStart = Int(rd.u32())
    let entryCount = Int(rd.u16())
    let keyLength = Int(rd.u16())
    let keyString = rd.rawString(keyLength)
    let anonymous = r.isAnonymous
    let entriesStart = rd.i
    let historyStart = entriesStart + 5 * entryCount
    rd.i = coldStart
    let createdAt = rd.zigzag()
    let updatedAt = createdAt &+ rd.zigzag()
    let email = rd.string()
    let phone = rd.string()
    var ids: [String] = anonymous ? [keyString] : []
    for _ in 0..<Int(rd.varint()) { ids.append(rd.string()) }
    let (global, entries) = readGlobalAndEntries(
      &rd, createdAt: createdAt, entriesStart: entriesStart, count: entryCount, strings: strings)
    let nextSeq = UInt32(truncatingIfNeeded: rd.varint())
    let historyCount = Int(rd.varint())
    let lastAt = createdAt &+ rd.zigzag()
    var records: [HistoryRecord] = []
    if history {
      rd.i = historyStart
      records = readHistory(&rd, count: historyCount, createdAt: createdAt, strings: strings)
    }
    let person = Person(
      key: PersonKey(keyString, anonymous: anonymous), email: email, phone: phone,
      anonymousIDs: ids, createdAt: createdAt, updatedAt: updatedAt, global: global,
      entries: entries, history: records, nextHistorySeq: nextSeq,
      sends: r.sends.map {
        SendRecord(channel: NameID(truncatingIfNeeded: $0 >> 48), at: Int64($0 & 0xFFFF_FFFF_FFFF))
      })
    return (person, HistoryTail(count: historyCount, lastAt: lastAt))
  }

  /// The global flag and the entries: `rd` at the cold section's global flag (left after
  /// the entries' fields), the entries' keys and states read from the hot section at
  /// `entriesStart`.
  private static func readGlobalAndEntries(
    _ rd: inout ByteReader, createdAt: Int64, entriesStart: Int, count: Int,
    strings: StringTable
  ) -> (GlobalFlag?, [PreferenceRecord]) {
    var entries: [PreferenceRecord] = []
    entries.reserveCapacity(count)
    let global = readGlobalAndEntries(
      &rd, createdAt: createdAt, entriesStart: entriesStart, count: count, strings: strings
    ) { entries.append($0) }
    return (global, entries)
  }

  /// `readGlobalAndEntries`, handing each entry to `body` as it is read.
  private static func readGlobalAndEntries(
    _ rd: inout ByteReader, createdAt: Int64, entriesStart: Int, count: Int,
    strings: StringTable, _ body: (PreferenceRecord) -> Void
  ) -> GlobalFlag? {
    var global: GlobalFlag?
    let g = rd.u8()
    if g != 0 {
      let at = createdAt &+ rd.zigzag()
      global = GlobalFlag(unsubscribed: g == 1, updatedAt: at, source: rd.ref(strings))
    }
    for i in 0..<count {
      let o = entriesStart + 5 * i
      let at = createdAt &+ rd.zigzag()
      let source = rd.ref(strings)
      let notice = rd.ref(strings)
      body(
        PreferenceRecord(
          channel: UInt16(rd.bytes[o]) | UInt16(rd.bytes[o + 1]) << 8,
          topic: UInt16(rd.bytes[o + 2]) | UInt16(rd.bytes[o + 3]) << 8,
          state: PreferenceState(rawValue: Int32(rd.bytes[o + 4])) ?? .unspecified,
          updatedAt: at, source: source, noticeVersion: notice))
    }
    return global
  }

  /// The stored history alone.
  static func decodeHistory(_ r: borrowing PersonRecord, strings: StringTable) -> [HistoryRecord] {
    decode(r, history: true, strings: strings).person.history
  }

  private static func readHistory(
    _ rd: inout ByteReader, count: Int, createdAt: Int64, strings: StringTable
  ) -> [HistoryRecord] {
    var out: [HistoryRecord] = []
    out.reserveCapacity(count)
    var previous = createdAt
    for _ in 0..<count {
      let seq = UInt32(truncatingIfNeeded: rd.varint())
      let at = previous &+ rd.zigzag()
      previous = at
      let action = HistoryAction(rawValue: rd.u8()) ?? .identify
      let channel = NameID(truncatingIfNeeded: rd.varint())
      let topic = NameID(truncatingIfNeeded: rd.varint())
      let source = rd.ref(strings)
      let actor = rd.ref(strings)
      let detail = rd.ref(strings)
      out.append(
        HistoryRecord(
          seq: seq, at: at, action: action, channel: channel, topic: topic, source: source,
          actor: actor, detail: detail))
    }
    return out
  }

  // MARK: Reading in place

  /// `key(r)` of the record `ref` found: the id `ref` holds when it names a person by it
  /// (the record holds the same bytes), without making a String of the record's bytes.
  static func key(_ r: borrowing PersonRecord, foundBy ref: PersonRef) -> PersonKey {
    if case .personID(let id) = ref { return .person(id) }
    return key(r)
  }

  /// The key, without decoding anything else.
  static func key(_ r: borrowing PersonRecord) -> PersonKey {
    let n = Int(r.blob[6]) | Int(r.blob[7]) << 8
    return PersonKey(
      String(decoding: r.blob[8..<(8 + n)], as: UTF8.self), anonymous: r.isAnonymous)
  }

  /// True if the record is `key` of workspace `workspace`.
  @inline(__always)
  static func matches(_ r: borrowing PersonRecord, workspace: UInt16, key: PersonKey) -> Bool {
    guard r.workspace == workspace, r.isAnonymous == key.isAnonymous else { return false }
    let n = Int(r.blob[6]) | Int(r.blob[7]) << 8
    func equal(_ k: UnsafeBufferPointer<UInt8>) -> Bool {
      guard k.count == n else { return false }
      return r.blob.withUnsafeBufferPointer { b in
        for i in 0..<n where b[8 + i] != k[i] { return false }
        return true
      }
    }
    // In place where the key has its bytes together (a copy for `withUTF8` is a retain
    // and release).
    if let same = key.value.utf8.withContiguousStorageIfAvailable(equal) { return same }
    var value = key.value
    return value.withUTF8(equal)
  }

  /// The number of explicit entries (at most `UInt16.max`: the store refuses more).
  static func entryCount(_ r: borrowing PersonRecord) -> Int {
    Int(r.blob[4]) | Int(r.blob[5]) << 8
  }

  /// True if the record has an entry for (channel, topic).
  static func hasEntry(_ r: borrowing PersonRecord, channel: NameID, topic: NameID) -> Bool {
    withSubject(r) { $0.explicitState(channel: channel, topic: topic) != nil }
  }

  /// When the person last changed (the anonymous TTL runs from here).
  static func updatedAt(_ r: borrowing PersonRecord) -> Int64 {
    var rd = ByteReader(r.blob)
    rd.i = coldStart(r.blob)
    let created = rd.zigzag()
    return created &+ rd.zigzag()
  }

  /// True if the person holds the identifier (an anonymous profile holds its key).
  static func holds(_ r: borrowing PersonRecord, kind: IdentifierKind, value: String) -> Bool {
    var rd = ByteReader(r.blob)
    rd.i = coldStart(r.blob)
    _ = rd.zigzag()
    _ = rd.zigzag()
    switch kind {
    case .email:
      return rd.stringEquals(value)
    case .phone:
      rd.skipString()
      return rd.stringEquals(value)
    case .anonymousID:
      if r.isAnonymous { return matches(r, workspace: r.workspace, key: .anonymous(value)) }
      rd.skipString()
      rd.skipString()
      for _ in 0..<Int(rd.varint()) where rd.stringEquals(value) { return true }
      return false
    case .personID:
      return !r.isAnonymous && matches(r, workspace: r.workspace, key: .person(value))
    case .unspecified:
      return false
    }
  }

  @inline(__always)
  private static func coldStart(_ b: [UInt8]) -> Int {
    Int(b[0]) | Int(b[1]) << 8 | Int(b[2]) << 16 | Int(b[3]) << 24
  }

  /// Where the hot section ends and the history begins.
  @inline(__always)
  private static func hotEnd(_ b: [UInt8]) -> Int {
    let n = Int(b[4]) | Int(b[5]) << 8
    let k = Int(b[6]) | Int(b[7]) << 8
    return 8 + k + 5 * n
  }

  /// Runs `body` with a decision view of the record, reading it in place.
  @inline(__always)
  static func withSubject<R>(
    _ r: borrowing PersonRecord, pendingSends: Int = 0, _ body: (PackedSubject) -> R
  ) -> R {
    r.blob.withUnsafeBufferPointer { blob in
      r.sends.withUnsafeBufferPointer { sends in
        body(PackedSubject(blob: blob, sends: sends, flags: r.flags, pendingSends: pendingSends))
      }
    }
  }
}

/// A packed person as the decision reads it.
struct PackedSubject: DecisionSubject {
  let blob: UnsafeBufferPointer<UInt8>
  let sends: UnsafeBufferPointer<UInt64>
  let flags: UInt8
  /// Sends counted earlier in the same batch and not yet in `sends`.
  let pendingSends: Int

  var isGloballyUnsubscribed: Bool { flags & PersonRecord.globalFlag != 0 }

  @inline(__always)
  func explicitState(channel: NameID, topic: NameID) -> PreferenceState? {
    let n = Int(blob[4]) | Int(blob[5]) << 8
    var o = 8 + (Int(blob[6]) | Int(blob[7]) << 8)
    for _ in 0..<n {
      let c = UInt16(blob[o]) | UInt16(blob[o + 1]) << 8
      let t = UInt16(blob[o + 2]) | UInt16(blob[o + 3]) << 8
      if c == channel && t == topic { return PreferenceState(rawValue: Int32(blob[o + 4])) }
      o += 5
    }
    return nil
  }

  var explicitEntryCount: Int { Int(blob[4]) | Int(blob[5]) << 8 }

  func forEachExplicitEntry(_ body: (UInt32, PreferenceState) -> Void) {
    var o = 8 + (Int(blob[6]) | Int(blob[7]) << 8)
    for _ in 0..<explicitEntryCount {
      let c = UInt32(blob[o]) | UInt32(blob[o + 1]) << 8
      let t = UInt32(blob[o + 2]) | UInt32(blob[o + 3]) << 8
      if let s = PreferenceState(rawValue: Int32(blob[o + 4])) { body(c << 16 | t, s) }
      o += 5
    }
  }

  @inline(__always)
  func sendCount(channel: NameID, in window: SendWindow) -> Int {
    var n = pendingSends
    let ch = UInt64(channel)
    for s in sends where s >> 48 == ch && window.contains(Int64(s & 0xFFFF_FFFF_FFFF)) {
      n += 1
    }
    return n
  }
}

// MARK: Bytes

struct ByteWriter {
  var bytes: [UInt8] = []

  @inline(__always) mutating func u8(_ v: UInt8) { bytes.append(v) }

  mutating func u16(_ v: UInt16) {
    bytes.append(UInt8(truncatingIfNeeded: v))
    bytes.append(UInt8(truncatingIfNeeded: v >> 8))
  }

  mutating func u32(_ v: UInt32) {
    for i in 0..<4 { bytes.append(UInt8(truncatingIfNeeded: v >> (8 * i))) }
  }

  func readU32(at o: Int) -> UInt32 {
    var v: UInt32 = 0
    for k in 0..<4 { v |= UInt32(bytes[o + k]) << (8 * k) }
    return v
  }

  mutating func setU32(_ v: UInt32, at o: Int) {
    for i in 0..<4 { bytes[o + i] = UInt8(truncatingIfNeeded: v >> (8 * i)) }
  }

  /// Inlined (with `zigzag`): a write's history entry and cold section write a dozen.
  @inline(__always)
  mutating func varint(_ value: UInt64) {
    var v = value
    while v >= 0x80 {
      bytes.append(UInt8(truncatingIfNeeded: v) | 0x80)
      v >>= 7
    }
    bytes.append(UInt8(v))
  }

  @inline(__always)
  mutating func zigzag(_ v: Int64) { varint(UInt64(bitPattern: (v << 1) ^ (v >> 63))) }

  mutating func string(_ s: String) {
    varint(UInt64(s.utf8.count))
    bytes.append(contentsOf: s.utf8)
  }

  mutating func ref(_ s: String, _ strings: inout StringTable, intern: Bool = true) {
    if s.isEmpty {
      varint(0)
    } else if intern, let id = strings.id(for: s) {
      varint(UInt64(id) << 1 | 1)
    } else {
      varint(UInt64(s.utf8.count) << 1)
      bytes.append(contentsOf: s.utf8)
    }
  }
}

struct ByteReader {
  let bytes: [UInt8]
  var i = 0

  init(_ bytes: [UInt8]) { self.bytes = bytes }

  mutating func u8() -> UInt8 {
    defer { i += 1 }
    return bytes[i]
  }

  mutating func u16() -> UInt16 {
    defer { i += 2 }
    return UInt16(bytes[i]) | UInt16(bytes[i + 1]) << 8
  }

  mutating func u32() -> UInt32 {
    var v: UInt32 = 0
    for k in 0..<4 { v |= UInt32(bytes[i + k]) << (8 * k) }
    i += 4
    return v
  }

  mutating func varint() -> UInt64 {
    var v: UInt64 = 0
    var shift: UInt64 = 0
    while true {
      let b = bytes[i]
      i += 1
      v |= UInt64(b & 0x7F) << shift
      if b < 0x80 { return v }
      shift += 7
    }
  }

  mutating func zigzag() -> Int64 {
    let u = varint()
    return Int64(bitPattern: u >> 1) ^ -Int64(bitPattern: u & 1)
  }

  mutating func rawString(_ n: Int) -> String {
    defer { i += n }
    return String(decoding: bytes[i..<(i + n)], as: UTF8.self)
  }

  mutating func string() -> String { rawString(Int(varint())) }

  mutating func skipString() { i += Int(varint()) }

  /// Skips a `ref` (an inline one's bytes too).
  mutating func skipRef() {
    let n = varint()
    if n & 1 == 0 { i += Int(n >> 1) }
  }

  /// Reads a `str` and compares it with `value` byte for byte.
  mutating func stringEquals(_ value: String) -> Bool {
    let n = Int(varint())
    defer { i += n }
    guard n == value.utf8.count else { return false }
    return bytes[i..<(i + n)].elementsEqual(value.utf8)
  }

  mutating func ref(_ strings: StringTable) -> String {
    let n = varint()
    if n == 0 { return "" }
    if n & 1 == 1 { return strings.string(UInt32(truncatingIfNeeded: n >> 1)) }
    return rawString(Int(n >> 1))
  }
}

// MARK: Hashing

/// In-memory hashes (per-process seed; never persisted).
enum KeyHash {
  /// Picks a person's shard (low bits) and slot-table bucket (high bits).
  @inline(__always)
  static func person(_ workspace: UInt16, _ key: PersonKey) -> UInt64 {
    var h = Hasher()
    h.combine(workspace)
    h.combine(key.isAnonymous)
    combine(&h, key.value)
    return UInt64(bitPattern: Int64(h.finalize()))
  }

  /// Keys the identifier index of a workspace.
  @inline(__always)
  static func identifier(_ kind: IdentifierKind, _ value: String) -> UInt64 {
    var h = Hasher()
    h.combine(kind.rawValue)
    combine(&h, value)
    return UInt64(bitPattern: Int64(h.finalize()))
  }

  @inline(__always)
  private static func combine(_ h: inout Hasher, _ s: String) {
    // In place where the string has its bytes together (a copy for `withUTF8` is a retain
    // and release).
    let done: Void? = s.utf8.withContiguousStorageIfAvailable {
      h.combine(bytes: UnsafeRawBufferPointer($0))
    }
    if done != nil { return }
    var s = s
    s.withUTF8 { h.combine(bytes: UnsafeRawBufferPointer($0)) }
  }
}
