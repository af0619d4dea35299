// Per-shard interning of the short, repetitive strings persons carry many times: sources,
// notice versions, actors, identify details. A packed person refers to an interned string
// by number instead of holding its bytes. The table only grows (to a cap); strings beyond
// the cap, or long ones, stay inline in the record. It lives in memory only and must stay
// there: a snapshot writes each person's strings in full (`StoreSnapshot.forEachPerson`),
// never this table, so no forgotten person's text outlives erasure on disk because of it.

import Glibc
import SubcenterCore

struct StringTable {
  static let maxEntries = 4096
  static let maxBytes = 128

  private(set) var strings: [String] = [""]
  /// Every interned string's UTF-8, back to back (string n at `offsets[n]..<offsets[n+1]`),
  /// so a look-up compares bytes without touching the String.
  private var bytes: [UInt8] = []
  private var offsets: [UInt32] = [0, 0]
  /// Open addressing over `hashOf`: string number + 1, 0 for an empty slot; at most half
  /// full. (Cheaper than a `Dictionary` of Strings: one FNV-1a pass, no SipHash.)
  private var slots: [UInt16] = []

  /// The number of `s`, interning it if there is room; nil if it must stay inline.
  mutating func id(for s: String) -> UInt32? {
    // The string's own bytes where it has them together (a native or small string): a
    // copy for `withUTF8` was a retain and release a look-up.
    if let id = s.utf8.withContiguousStorageIfAvailable({ b in id(for: b, s) }) { return id }
    var utf8 = s
    return utf8.withUTF8 { b in id(for: b, s) }
  }

  private mutating func id(for b: UnsafeBufferPointer<UInt8>, _ s: String) -> UInt32? {
    if b.isEmpty { return 0 }
    let h = Self.hashOf(b)
    if !slots.isEmpty {
      let mask = slots.count - 1
      var i = Int(h) & mask
      while slots[i] != 0 {
        let n = Int(slots[i]) - 1
        if equals(n, b) { return UInt32(n) }
        i = (i + 1) & mask
      }
    }
    guard b.count <= Self.maxBytes, strings.count < Self.maxEntries else { return nil }
    let n = strings.count
    strings.append(s)
    bytes.append(contentsOf: b)
    offsets.append(UInt32(bytes.count))
    if (n + 1) * 2 > slots.count {
      rebuildSlots(count: max(64, slots.count * 2))
    } else {
      place(n, h)
    }
    return UInt32(n)
  }

  @inline(__always)
  func string(_ id: UInt32) -> String { strings[Int(id)] }

  private func equals(_ n: Int, _ b: UnsafeBufferPointer<UInt8>) -> Bool {
    let start = Int(offsets[n])
    guard Int(offsets[n + 1]) - start == b.count else { return false }
    // One `memcmp`, not a checked subscript a byte.
    return bytes.withUnsafeBufferPointer {
      memcmp($0.baseAddress! + start, b.baseAddress!, b.count) == 0
    }
  }

  private mutating func place(_ n: Int, _ h: UInt32) {
    let mask = slots.count - 1
    var i = Int(h) & mask
    while slots[i] != 0 { i = (i + 1) & mask }
    slots[i] = UInt16(n + 1)
  }

  private mutating func rebuildSlots(count: Int) {
    slots = [UInt16](repeating: 0, count: count)
    for n in 1..<strings.count {
      let h = bytes.withUnsafeBufferPointer {
        Self.hashOf(UnsafeBufferPointer(rebasing: $0[Int(offsets[n])..<Int(offsets[n + 1])]))
      }
      place(n, h)
    }
  }

  /// FNV-1a, folded: spreads short keys well enough for a table at most half full.
  @inline(__always)
  private static func hashOf(_ b: UnsafeBufferPointer<UInt8>) -> UInt32 {
    var h: UInt32 = 2_166_136_261
    for c in b { h = (h ^ UInt32(c)) &* 16_777_619 }
    return h ^ (h >> 15)
  }
}
