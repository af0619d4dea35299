// A direct reader of the person records of a snapshot (`SnapshotRecord.person`, a
// `PersonSnapshot` of proto/subcenter/v1/storage.proto) into `Person`, so loading a
// snapshot makes no protobuf-c allocations for the millions of persons it may hold. The
// rare workspace and suppression records, and anything unusual at the top level (a oneof
// set twice), still go through protobuf-c (SnapshotRecordCodec.swift).
//
// It reads what protobuf-c reads: fields in any order, unknown fields skipped, a
// singular message field given twice merged, repeated scalars packed or not, uint32 and
// enum values truncated to 32 bits. `string` fields must hold no NUL byte (a stored
// identifier never does); text is decoded as UTF-8, invalid sequences repaired, as
// `Proto.string`/`Proto.text` do. Malformed bytes throw `damaged`; nothing here traps.

import SubcenterCore

/// Protobuf wire-format reading over bytes that outlive the reader.
struct ProtoWireReader {
  private let bytes: UnsafeRawBufferPointer
  private var i = 0

  init(_ bytes: UnsafeRawBufferPointer) { self.bytes = bytes }

  var atEnd: Bool { i >= bytes.count }

  private func malformed(_ what: String) -> StorageError {
    StorageError(.damaged, "\(what) at byte \(i) of \(bytes.count)")
  }

  /// An unsigned LEB128 varint of at most 10 bytes.
  @inline(__always)
  mutating func varint() throws(StorageError) -> UInt64 {
    if i < bytes.count && bytes[i] < 0x80 {  // most values fit in one byte
      i += 1
      return UInt64(bytes[i - 1])
    }
    var v: UInt64 = 0
    var shift: UInt64 = 0
    while i < bytes.count && shift < 70 {
      let b = bytes[i]
      i += 1
      v |= UInt64(b & 0x7F) << shift
      if b < 0x80 { return v }
      shift += 7
    }
    throw malformed(i >= bytes.count ? "a varint runs past the end" : "a varint is too long")
  }

  /// The next field's number and wire type.
  @inline(__always)
  mutating func key() throws(StorageError) -> (field: UInt64, wire: UInt64) {
    let k = try varint()
    guard k >= 8 else { throw malformed("field number 0") }
    return (k >> 3, k & 7)
  }

  /// The next field's tag: its number << 3 | its wire type.
  @inline(__always)
  mutating func tag() throws(StorageError) -> UInt64 {
    let k = try varint()
    guard k >= 8 else { throw malformed("field number 0") }
    return k
  }

  /// Skips the field of `tag`, which no case of its reader took: a field it does not
  /// know, or (damage) one of the `known` ones given with another wire type.
  mutating func skip(tag: UInt64, known: ClosedRange<UInt64>, _ message: StaticString)
    throws(StorageError)
  {
    guard !known.contains(tag >> 3) else {
      throw malformed("\(message) field \(tag >> 3) has wire type \(tag & 7)")
    }
    try skip(tag & 7)
  }

  /// A length-delimited field's bytes.
  @inline(__always)
  mutating func lengthDelimited() throws(StorageError) -> UnsafeRawBufferPointer {
    let n = try varint()
    guard n <= UInt64(bytes.count - i) else {
      throw malformed("a field's length runs past the end")
    }
    let slice = UnsafeRawBufferPointer(start: bytes.baseAddress.map { $0 + i }, count: Int(n))
    i += Int(n)
    return slice
  }

  /// Skips a field of wire type `wire`.
  mutating func skip(_ wire: UInt64) throws(StorageError) {
    switch wire {
    case 0: _ = try varint()
    case 1, 5:
      let n = wire == 1 ? 8 : 4
      guard bytes.count - i >= n else { throw malformed("a fixed-size field runs past the end") }
      i += n
    case 2: _ = try lengthDelimited()
    default: throw malformed("wire type \(wire) is not supported")
    }
  }

  /// A field of wire type `expected` (anything else is damage).
  @inline(__always)
  func expect(_ wire: UInt64, _ expected: UInt64, _ field: StaticString) throws(StorageError) {
    guard wire == expected else { throw malformed("\(field) has wire type \(wire)") }
  }

  /// A varint field's value (`wire` 0).
  @inline(__always)
  mutating func varint(_ wire: UInt64, _ field: StaticString) throws(StorageError) -> UInt64 {
    try expect(wire, 0, field)
    return try varint()
  }

  /// A length-delimited field's bytes (`wire` 2).
  @inline(__always)
  mutating func bytes(_ wire: UInt64, _ field: StaticString) throws(StorageError)
    -> UnsafeRawBufferPointer
  {
    try expect(wire, 2, field)
    return try lengthDelimited()
  }

  /// A `string` field: UTF-8 without NUL.
  @inline(__always)
  mutating func string(_ wire: UInt64, _ field: StaticString) throws(StorageError) -> String {
    try Self.string(bytes(wire, field), field)
  }

  /// `string` field bytes as a String: UTF-8 without NUL.
  @inline(__always)
  static func string(_ b: UnsafeRawBufferPointer, _ field: StaticString) throws(StorageError)
    -> String
  {
    guard !b.contains(0) else { throw StorageError(.damaged, "\(field) holds a NUL byte") }
    return text(b)
  }

  /// A `bytes` field holding UTF-8 text.
  @inline(__always)
  mutating func text(_ wire: UInt64, _ field: StaticString) throws(StorageError) -> String {
    Self.text(try bytes(wire, field))
  }

  @inline(__always)
  static func text(_ b: UnsafeRawBufferPointer) -> String {
    b.isEmpty ? "" : String(decoding: b.assumingMemoryBound(to: UInt8.self), as: UTF8.self)
  }

  /// The values of a repeated varint field, packed (`wire` 2) or not (`wire` 0).
  mutating func varints(_ wire: UInt64, _ field: StaticString, into body: (UInt64) -> Void)
    throws(StorageError)
  {
    if wire == 0 {
      body(try varint())
      return
    }
    var packed = ProtoWireReader(try bytes(wire, field))
    while !packed.atEnd { body(try packed.varint()) }
  }
}

extension ProtoWireReader {
  /// A `PersonKey` message, snapshot's or log record's (a second one given for the same
  /// field is merged into the first: the oneof member set last wins).
  static func personKey(_ m: UnsafeRawBufferPointer, merging key: PersonKey?)
    throws(StorageError) -> PersonKey?
  {
    var key = key
    var r = ProtoWireReader(m)
    while !r.atEnd {
      let (field, wire) = try r.key()
      switch field {
      case 1: key = .person(try r.string(wire, "person_key.person_id"))
      case 2: key = .anonymous(try r.string(wire, "person_key.anonymous_id"))
      default: try r.skip(wire)
      }
    }
    return key
  }
}

/// A person record as read: the person and its workspace id's bytes (pointing into the
/// record).
struct PersonSnapshotBytes {
  var workspace: UnsafeRawBufferPointer
  var person: Person
}

extension SnapshotRecordCodec {
  /// The person of a `SnapshotRecord` payload, or nil when the record is not simply a
  /// person (then `decode` reads it with protobuf-c). Damage is `damaged`.
  static func person(in payload: UnsafeRawBufferPointer) throws(StorageError)
    -> PersonSnapshotBytes?
  {
    var r = ProtoWireReader(payload)
    var message: UnsafeRawBufferPointer?
    while !r.atEnd {
      let (field, wire) = try r.key()
      switch field {
      case 1, 3: return nil
      case 2:
        // Given twice, protobuf merges the two: leave that to protobuf-c.
        if message != nil { return nil }
        message = try r.bytes(wire, "snapshot record.person")
      default: try r.skip(wire)
      }
    }
    guard let message else { return nil }
    return try personSnapshot(message)
  }

  /// Whether `person(in:)` reads `payload` (a `SnapshotRecord` holding only a person),
  /// without decoding the person.
  static func isPerson(_ payload: UnsafeRawBufferPointer) throws(StorageError) -> Bool {
    var r = ProtoWireReader(payload)
    var persons = 0
    while !r.atEnd {
      let (field, wire) = try r.key()
      switch field {
      case 1, 3: return false
      case 2:
        persons += 1
        _ = try r.bytes(wire, "snapshot record.person")
      default: try r.skip(wire)
      }
    }
    return persons == 1
  }

  /// A `PersonSnapshot` message.
  private static func personSnapshot(_ m: UnsafeRawBufferPointer) throws(StorageError)
    -> PersonSnapshotBytes
  {
    // The person only lives until it is packed: room for a typical person up front
    // saves the reallocations of growing each array from empty.
    var workspace = UnsafeRawBufferPointer(start: nil, count: 0)
    var key: PersonKey?
    var keySeen = false
    var email = ""
    var phone = ""
    var anonymousIDs: [String] = []

    var createdAt: Int64 = 0
    var updatedAt: Int64 = 0
    var global: GlobalFlag?
    var entries: [PreferenceRecord] = []
    entries.reserveCapacity(4)
    var history: [HistoryRecord] = []
    history.reserveCapacity(8)
    var nextHistorySeq: UInt32 = 0
    var sendChannels: [UInt64] = []
    var sendTimes: [UInt64] = []

    var r = ProtoWireReader(m)
    while !r.atEnd {
      let (field, wire) = try r.key()
      switch field {
      case 1: workspace = try r.bytes(wire, "person.workspace")
      case 2:
        keySeen = true
        key = try ProtoWireReader.personKey(r.bytes(wire, "person.key"), merging: key)
      case 3: email = try r.string(wire, "person.email")
      case 4: phone = try r.string(wire, "person.phone")
      case 5: anonymousIDs.append(try r.string(wire, "person.anonymous_ids"))
      case 6: createdAt = Int64(bitPattern: try r.varint(wire, "person.created_at"))
      case 7: updatedAt = Int64(bitPattern: try r.varint(wire, "person.updated_at"))
      case 8:
        global = try globalFlag(
          r.bytes(wire, "person.global"),
          merging: global ?? GlobalFlag(unsubscribed: false, updatedAt: 0))
      case 9: entries.append(try entry(r.bytes(wire, "person.entries")))
      case 10: history.append(try historyEntry(r.bytes(wire, "person.history")))
      case 11:
        nextHistorySeq = UInt32(
          truncatingIfNeeded: try r.varint(wire, "person.next_history_seq"))
      case 12: try r.varints(wire, "person.send_channels") { sendChannels.append($0) }
      case 13: try r.varints(wire, "person.send_times") { sendTimes.append($0) }
      default: try r.skip(wire)
      }
    }

    guard keySeen else { throw StorageError(.damaged, "person.key is missing") }
    guard let key else { throw StorageError(.damaged, "person.key: no person key") }
    guard sendChannels.count == sendTimes.count else {
      throw StorageError(
        .damaged,
        "person: \(sendChannels.count) send channels but \(sendTimes.count) send times")
    }
    var sends: [SendRecord] = []
    if !sendTimes.isEmpty {
      sends.reserveCapacity(sendTimes.count)
      for (c, t) in zip(sendChannels, sendTimes) {
        sends.append(
          SendRecord(
            channel: try nameID(UInt32(truncatingIfNeeded: c), "person.send_channels"),
            at: Int64(bitPattern: t)))
      }
    }
    let person = Person(
      key: key, email: email, phone: phone, anonymousIDs: anonymousIDs, createdAt: createdAt,
      updatedAt: updatedAt, global: global, entries: entries, history: history,
      nextHistorySeq: nextHistorySeq, sends: sends)
    return PersonSnapshotBytes(workspace: workspace, person: person)
  }

  /// A `GlobalFlag` message merged into `flag`.
  private static func globalFlag(_ m: UnsafeRawBufferPointer, merging flag: GlobalFlag)
    throws(StorageError) -> GlobalFlag
  {
    var g = flag
    var r = ProtoWireReader(m)
    while !r.atEnd {
      let (field, wire) = try r.key()
      switch field {
      case 1: g.unsubscribed = try r.varint(wire, "person.global.unsubscribed") != 0
      case 2: g.updatedAt = Int64(bitPattern: try r.varint(wire, "person.global.updated_at"))
      case 3: g.source = try r.text(wire, "person.global.source")
      default: try r.skip(wire)
      }
    }
    return g
  }

  /// A `PreferenceEntry` message. Values are checked once read (the last of a field
  /// given twice is the one that counts).
  private static func entry(_ m: UnsafeRawBufferPointer) throws(StorageError)
    -> PreferenceRecord
  {
    var channel: UInt32 = 0
    var topic: UInt32 = 0
    var state: Int32 = 0
    var e = PreferenceRecord(channel: 0, topic: 0, state: .unspecified, updatedAt: 0)
    var r = ProtoWireReader(m)
    while !r.atEnd {
      let tag = try r.tag()
      switch tag {
      case 0x08: channel = UInt32(truncatingIfNeeded: try r.varint())
      case 0x10: topic = UInt32(truncatingIfNeeded: try r.varint())
      case 0x18: state = Int32(truncatingIfNeeded: try r.varint())
      case 0x20: e.updatedAt = Int64(bitPattern: try r.varint())
      case 0x2A: e.source = ProtoWireReader.text(try r.lengthDelimited())
      case 0x32: e.noticeVersion = ProtoWireReader.text(try r.lengthDelimited())
      default: try r.skip(tag: tag, known: 1...6, "person.entries")
      }
    }
    e.channel = try nameID(channel, "person.entries.channel")
    e.topic = try nameID(topic, "person.entries.topic")
    guard let s = PreferenceState(rawValue: state) else {
      throw StorageError(
        .damaged, "person.entries.state: unknown value \(UInt32(bitPattern: state))")
    }
    e.state = s
    return e
  }

  /// A `HistoryEntry` message.
  private static func historyEntry(_ m: UnsafeRawBufferPointer) throws(StorageError)
    -> HistoryRecord
  {
    var seq: UInt32 = 0
    var at: Int64 = 0
    var action: UInt32 = 0
    var channel: UInt32 = 0
    var topic: UInt32 = 0
    var source = ""
    var actor = ""
    var detail = ""
    var r = ProtoWireReader(m)
    while !r.atEnd {
      let tag = try r.tag()
      switch tag {
      case 0x08: seq = UInt32(truncatingIfNeeded: try r.varint())
      case 0x10: at = Int64(bitPattern: try r.varint())
      case 0x18: action = UInt32(truncatingIfNeeded: try r.varint())
      case 0x20: channel = UInt32(truncatingIfNeeded: try r.varint())
      case 0x28: topic = UInt32(truncatingIfNeeded: try r.varint())
      case 0x32: source = ProtoWireReader.text(try r.lengthDelimited())
      case 0x3A: actor = ProtoWireReader.text(try r.lengthDelimited())
      case 0x42: detail = ProtoWireReader.text(try r.lengthDelimited())
      default: try r.skip(tag: tag, known: 1...8, "person.history")
      }
    }
    guard action <= UInt8.max, let a = HistoryAction(rawValue: UInt8(action)) else {
      throw StorageError(.damaged, "person.history.action: unknown value \(action)")
    }
    return HistoryRecord(
      seq: seq, at: at, action: a, channel: try nameID(channel, "person.history.channel"),
      topic: try nameID(topic, "person.history.topic"), source: source,
      actor: actor, detail: detail)
  }
}
