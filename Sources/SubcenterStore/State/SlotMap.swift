// A small map from a shard's slot numbers to values: `Shard.pending`, the slots with
// single-person writes in flight, looked up several times on every write.

/// A map from slot numbers to values: open addressing with linear probing over a
/// multiplicative hash of the slot, at most half full; a removal shifts the entries after
/// it back (no tombstones). Slots are the store's own numbers, not a client's strings, so
/// the map needs no seeded hash: a `Dictionary` ran SipHash on each of a write's four
/// look-ups, ~115 instructions each (callgrind), where these take ~20.
struct SlotMap<Value> {
  /// Slot + 1 of each bucket, 0 for an empty one (a slot is below 2^26).
  private var keys: [UInt32] = []
  private var values: [Value?] = []
  private(set) var count = 0

  var isEmpty: Bool { count == 0 }

  /// The value of `slot`, if it has one.
  subscript(slot: UInt32) -> Value? {
    guard let i = index(slot) else { return nil }
    return values[i]
  }

  /// What `body` reads from the value of `slot`, nil if it has none: read in place, where
  /// the subscript's copy retains and releases what the value holds.
  func read<R>(_ slot: UInt32, _ body: (borrowing Value) -> R) -> R? {
    guard let i = index(slot) else { return nil }
    return body(values[i]!)
  }

  /// Runs `body` on the value of `slot`, given `initial()` first if it has none.
  mutating func update<R>(
    _ slot: UInt32, default initial: () -> Value, _ body: (inout Value) -> R
  ) -> R {
    if let i = index(slot) { return body(&values[i]!) }
    if (count + 1) * 2 > keys.count { grow() }
    let i = emptyBucket(slot)
    keys[i] = slot &+ 1
    values[i] = initial()
    count += 1
    return body(&values[i]!)
  }

  /// Runs `body` on the value of `slot` if it has one, and removes the value when `body`
  /// returns true.
  mutating func update(_ slot: UInt32, removingIf body: (inout Value) -> Bool) {
    guard let i = index(slot) else { return }
    if body(&values[i]!) { remove(at: i) }
  }

  @inline(__always)
  private func home(_ key: UInt32) -> Int {
    // Fibonacci hashing: the product's high bits spread consecutive slots apart.
    Int(truncatingIfNeeded: (UInt64(key) &* 0x9E37_79B9_7F4A_7C15) >> 32) & (keys.count - 1)
  }

  private func index(_ slot: UInt32) -> Int? {
    guard count > 0 else { return nil }
    let key = slot &+ 1
    let mask = keys.count - 1
    var i = home(key)
    while keys[i] != 0 {
      if keys[i] == key { return i }
      i = (i + 1) & mask
    }
    return nil
  }

  private func emptyBucket(_ slot: UInt32) -> Int {
    let mask = keys.count - 1
    var i = home(slot &+ 1)
    while keys[i] != 0 { i = (i + 1) & mask }
    return i
  }

  private mutating func grow() {
    let oldKeys = keys
    var oldValues = values
    keys = [UInt32](repeating: 0, count: max(16, keys.count * 2))
    values = [Value?](repeating: nil, count: keys.count)
    for j in oldKeys.indices where oldKeys[j] != 0 {
      let i = emptyBucket(oldKeys[j] &- 1)
      keys[i] = oldKeys[j]
      values[i] = oldValues[j].take()
    }
  }

  /// Empties bucket `i`, moving back each later entry of the run that its home allows.
  private mutating func remove(at i: Int) {
    let mask = keys.count - 1
    var hole = i
    keys[hole] = 0
    values[hole] = nil
    var j = i
    while true {
      j = (j + 1) & mask
      if keys[j] == 0 { break }
      let h = home(keys[j])
      // The entry stays where it is if its home lies cyclically in (hole, j].
      let stays = hole < j ? (hole < h && h <= j) : (hole < h || h <= j)
      if stays { continue }
      keys[hole] = keys[j]
      values[hole] = values[j].take()
      keys[j] = 0
      hole = j
    }
    count -= 1
  }
}

extension SlotMap: Sendable where Value: Sendable {}
