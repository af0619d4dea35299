// Per-shard interning of the short, repetitive strings persons carry many times: sources,
// notice versions, actors, identify details. A packed person refers to an interned string
// by number instead of holding its bytes. The table only grows (to a cap); strings beyond
// the cap, or long ones, stay inline in the record. It lives in memory only and must stay
// there: a snapshot writes each person's strings in full (`StoreSnapshot.forEachPerson`),
// never this table, so no forgotten person's text outlives erasure on disk because of it.

import SubcenterCore

struct StringTable {
  static let maxEntries = 4096
  static let maxBytes = 128

  private(set) var strings: [String] = [""]
  private var ids: [ExactString: UInt32] = [:]

  /// The number of `s`, interning it if there is room; nil if it must stay inline.
  mutating func id(for s: String) -> UInt32? {
    let key = ExactString(s)
    if let id = ids[key] { return id }
    guard s.utf8.count <= Self.maxBytes, strings.count < Self.maxEntries else { return nil }
    let id = UInt32(strings.count)
    strings.append(s)
    ids[key] = id
    return id
  }

  @inline(__always)
  func string(_ id: UInt32) -> String { strings[Int(id)] }
}

/// A string compared and hashed by its UTF-8 bytes.
struct ExactString: Hashable {
  let value: String
  init(_ value: String) { self.value = value }

  static func == (a: ExactString, b: ExactString) -> Bool { sameBytes(a.value, b.value) }

  func hash(into hasher: inout Hasher) {
    var v = value
    v.withUTF8 { hasher.combine(bytes: UnsafeRawBufferPointer($0)) }
  }
}
