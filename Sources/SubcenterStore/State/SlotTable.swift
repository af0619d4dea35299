// An open-addressing hash multimap from 64-bit hashes to 32-bit values, 8 bytes a slot:
// the high 32 bits of the hash (which also pick the bucket) and the value + 1. It keeps
// no keys: a caller verifies each candidate against the record it points to, which also
// settles the rare equal fragments. Linear probing, backward-shift deletion, grows at 80%.

struct SlotTable {
  private var slots: [UInt64] = []
  private(set) var count = 0

  @inline(__always)
  private static func fragment(_ hash: UInt64) -> UInt32 { UInt32(truncatingIfNeeded: hash >> 32) }

  @inline(__always)
  private static func entry(_ hash: UInt64, _ value: UInt32) -> UInt64 {
    UInt64(fragment(hash)) << 32 | UInt64(value &+ 1)
  }

  /// Calls `body` with each value stored under `hash` until it returns true; returns
  /// whether one did.
  @inline(__always)
  func first(_ hash: UInt64, where body: (UInt32) -> Bool) -> Bool {
    if slots.isEmpty { return false }
    let mask = slots.count - 1
    let frag = Self.fragment(hash)
    var i = Int(frag) & mask
    while true {
      let e = slots[i]
      if e == 0 { return false }
      if UInt32(truncatingIfNeeded: e >> 32) == frag
        && body(UInt32(truncatingIfNeeded: e) &- 1)
      {
        return true
      }
      i = (i + 1) & mask
    }
  }

  /// The first value stored under `hash`'s fragment (a candidate to verify).
  @inline(__always)
  func firstValue(_ hash: UInt64) -> UInt32? {
    var found: UInt32?
    _ = first(hash) { v in
      found = v
      return true
    }
    return found
  }

  /// Every value stored under `hash`.
  func values(_ hash: UInt64) -> [UInt32] {
    var out: [UInt32] = []
    _ = first(hash) { v in
      out.append(v)
      return false
    }
    return out
  }

  mutating func insert(_ hash: UInt64, _ value: UInt32) {
    precondition(value != UInt32.max, "slot table values stop below UInt32.max")
    if (count + 1) * 5 > slots.count * 4 { grow() }
    place(Self.entry(hash, value))
    count += 1
  }

  /// Removes the entry (`hash`, `value`) if present.
  mutating func remove(_ hash: UInt64, _ value: UInt32) {
    if slots.isEmpty { return }
    let mask = slots.count - 1
    let target = Self.entry(hash, value)
    var i = Int(Self.fragment(hash)) & mask
    while true {
      let e = slots[i]
      if e == 0 { return }
      if e == target { break }
      i = (i + 1) & mask
    }
    // Backward-shift: pull later entries of the run into the hole when their home
    // bucket allows it.
    var hole = i
    var j = (i + 1) & mask
    while true {
      let e = slots[j]
      if e == 0 { break }
      let home = Int(UInt32(truncatingIfNeeded: e >> 32)) & mask
      let between = hole <= j ? (home > hole && home <= j) : (home > hole || home <= j)
      if !between {
        slots[hole] = e
        hole = j
      }
      j = (j + 1) & mask
    }
    slots[hole] = 0
    count -= 1
  }

  /// Makes room for `n` entries in all without growing again.
  mutating func reserve(_ n: Int) {
    var size = max(16, slots.count)
    while n * 5 > size * 4 { size *= 2 }
    if size > slots.count { rehash(size) }
  }

  private mutating func place(_ e: UInt64) {
    let mask = slots.count - 1
    var i = Int(UInt32(truncatingIfNeeded: e >> 32)) & mask
    while slots[i] != 0 { i = (i + 1) & mask }
    slots[i] = e
  }

  private mutating func grow() { rehash(max(16, slots.count * 2)) }

  private mutating func rehash(_ size: Int) {
    let old = slots
    slots = [UInt64](repeating: 0, count: size)
    for e in old where e != 0 { place(e) }
  }

  /// Bytes held by the table (for memory accounting in tests).
  var capacityBytes: Int { slots.count * 8 }
}
