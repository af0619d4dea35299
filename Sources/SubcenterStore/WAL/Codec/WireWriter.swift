// A direct protobuf writer for the messages written on every call: the log records of
// the commonest writes (LogRecordCodec.swift) and the answers of the hot RPCs
// (SubcenterServer's ProtoMapping), so they need no protobuf-c message tree, C strings or
// arena. proto3 rules, as protobuf-c packs them: a field holding its default (0, false,
// "") is not written, unless it is a oneof member that is set.

/// Appends protobuf fields to a byte array.
///
/// The array is room the writer grows ahead of what it writes: each field is written
/// with one check of room and uniqueness and plain stores, instead of an `append` (with
/// its own checks) per byte. `finish()` hands the written bytes over without copying.
public struct WireWriter {
  /// Room: the first `count` bytes are written, the rest undefined.
  @usableFromInline var storage: [UInt8]
  /// How many bytes are written.
  @usableFromInline var written: Int
  /// How many bytes are written.
  public var count: Int { written }

  /// An empty writer with room for `capacity` bytes; with `reserving`, that many zero
  /// bytes come first (room for a header the caller fills in later, such as gRPC's
  /// message prefix).
  @inlinable public init(capacity: Int = 0, reserving: Int = 0) {
    // Not `[UInt8](repeating:count:)`: that allocates through the standard library's
    // unspecialized path, which looks up the array's storage type at run time (more than
    // the allocation itself costs); reserving capacity in an empty array is specialized.
    storage = []
    storage.reserveCapacity(Swift.max(capacity + reserving, 16))
    written = reserving
    fillRoom()
  }

  /// Zeros to copy into new room (a copy from contiguous bytes is a `memcpy`; appending
  /// a repeated zero goes a byte at a time). Allocated once, never written or freed (so
  /// `nonisolated(unsafe)`), and not an array, whose every use is a retain and release.
  @usableFromInline nonisolated(unsafe) static let zeros: UnsafeBufferPointer<UInt8> = {
    let p = UnsafeMutableBufferPointer<UInt8>.allocate(capacity: 1024)
    p.initialize(repeating: 0)
    return UnsafeBufferPointer(p)
  }()

  /// Makes all of the array's capacity room: appends zeros up to it.
  @usableFromInline mutating func fillRoom() {
    var left = storage.capacity - storage.count
    while left > 0 {
      let n = Swift.min(left, Self.zeros.count)
      storage.append(contentsOf: UnsafeBufferPointer(rebasing: Self.zeros[..<n]))
      left -= n
    }
  }

  /// `init(capacity:reserving:)` in `room`'s memory (emptied; grown if it is too small):
  /// a buffer kept from an earlier message spares an allocation.
  @inlinable public init(reusing room: consuming [UInt8], capacity: Int, reserving: Int = 0) {
    storage = consume room
    storage.removeAll(keepingCapacity: true)
    storage.reserveCapacity(Swift.max(capacity + reserving, 16))
    written = reserving
    fillRoom()
  }

  /// What was written so far (a copy; `finish()` hands over the bytes themselves).
  public var bytes: [UInt8] { Array(storage[..<count]) }

  /// The written bytes, without copying them.
  @inlinable public consuming func finish() -> [UInt8] {
    storage.removeLast(storage.count - count)
    return storage
  }

  /// Runs `body` on the room after the written bytes, at least `room` bytes of it;
  /// `body` returns how many bytes it wrote there.
  @inlinable @inline(__always) mutating func write(
    room: Int, _ body: (UnsafeMutablePointer<UInt8>) -> Int
  ) {
    if storage.count - count < room { grow(room) }
    let at = written
    written += storage.withUnsafeMutableBufferPointer { body($0.baseAddress! + at) }
  }

  @usableFromInline mutating func grow(_ room: Int) {
    storage.reserveCapacity(storage.count + Swift.max(room, storage.count))
    fillRoom()
  }

  /// Writes `value` as a varint at `p`; returns its size (at most 10).
  @inlinable @inline(__always) static func put(_ value: UInt64, at p: UnsafeMutablePointer<UInt8>)
    -> Int
  {
    var v = value
    var i = 0
    while v >= 0x80 {
      p[i] = UInt8(truncatingIfNeeded: v) | 0x80
      v >>= 7
      i += 1
    }
    p[i] = UInt8(truncatingIfNeeded: v)
    return i + 1
  }

  @inlinable @inline(__always) public mutating func varint(_ value: UInt64) {
    write(room: 10) { Self.put(value, at: $0) }
  }

  /// A varint field (`int64`, `uint64`, enums); negative values take ten bytes.
  @inlinable public mutating func int(_ field: UInt64, _ value: Int64) {
    guard value != 0 else { return }
    write(room: 20) { p in
      let n = Self.put(field << 3, at: p)
      return n + Self.put(UInt64(bitPattern: value), at: p + n)
    }
  }

  @inlinable public mutating func bool(_ field: UInt64, _ value: Bool) {
    guard value else { return }
    write(room: 11) { p in
      let n = Self.put(field << 3, at: p)
      p[n] = 1
      return n + 1
    }
  }

  /// A `string` or `bytes` field; with `always` (a set oneof member) even when empty.
  @inlinable public mutating func string(_ field: UInt64, _ value: String, always: Bool = false) {
    let length = value.utf8.count
    guard always || length != 0 else { return }
    // `value` itself in the closure, not a `value.utf8` bound outside it: that copy of the
    // string was retained and released around the write.
    write(room: 20 + length) { p in
      var n = Self.put(field << 3 | 2, at: p)
      n += Self.put(UInt64(length), at: p + n)
      let to = p + n
      if value.utf8.withContiguousStorageIfAvailable({
        to.update(from: $0.baseAddress!, count: length)
      }) == nil {
        for (i, b) in value.utf8.enumerated() { to[i] = b }
      }
      return n + length
    }
  }

  /// A length-delimited field holding `message`'s bytes (written even when empty, as a
  /// set message field or a repeated message's element must be).
  @inlinable public mutating func message(_ field: UInt64, _ message: borrowing WireWriter) {
    let length = message.count
    write(room: 20 + length) { p in
      var n = Self.put(field << 3 | 2, at: p)
      n += Self.put(UInt64(length), at: p + n)
      let to = p + n
      message.storage.withUnsafeBufferPointer { to.update(from: $0.baseAddress!, count: length) }
      return n + length
    }
  }

  /// A length-delimited field whose message `body` writes in place, after a length fixed
  /// up once it is known (one byte is kept for it; a message of 128 bytes or more makes
  /// room for the rest). Written even when empty, like `message(_:_:)`.
  @inlinable public mutating func message(_ field: UInt64, _ body: (inout WireWriter) -> Void) {
    write(room: 11) { p in
      let n = Self.put(field << 3 | 2, at: p)
      p[n] = 0
      return n + 1
    }
    let at = count - 1
    body(&self)
    let length = count - at - 1
    if length < 0x80 {
      storage[at] = UInt8(truncatingIfNeeded: length)
      return
    }
    // Move the message up to make room for the longer length.
    let extra = Self.varintSize(UInt64(length)) - 1
    write(room: extra) { _ in extra }
    storage.withUnsafeMutableBufferPointer { b in
      let p = b.baseAddress! + at
      (p + 1 + extra).update(from: p + 1, count: length)
      _ = Self.put(UInt64(length), at: p)
    }
  }

  /// The number of bytes `varint(value)` writes.
  @inlinable public static func varintSize(_ value: UInt64) -> Int {
    var n = 1
    var v = value
    while v >= 0x80 {
      v >>= 7
      n += 1
    }
    return n
  }
}

extension WireWriter {
  /// Writes fields in one go into room sized beforehand: `body` writes them through a
  /// `WireCursor` over `bound` bytes after those written, with one check of room and
  /// uniqueness for all of them. (Not `[UInt8](unsafeUninitializedCapacity:)`: its
  /// allocation takes the standard library's unspecialized path, dearer than this room.)
  @inlinable public mutating func withCursor(bound: Int, _ body: (inout WireCursor) -> Void) {
    if storage.count - count < bound { grow(bound) }
    let at = written
    written = storage.withUnsafeMutableBufferPointer { b in
      let base = b.baseAddress!
      var c = WireCursor(base + at, end: base + at + bound)
      body(&c)
      return c.p - base
    }
  }
}

/// Writes protobuf fields, as `WireWriter` does, into room `WireWriter.withCursor` sized:
/// each field checks the room left and stores its bytes. The room must hold
/// `WireCursor.fieldRoom` bytes a field (a nested message counts as one) plus the bytes of
/// its strings; a field past it stops the process. Its field bodies repeat `WireWriter`'s:
/// shared as static functions on a pointer, the answer's encoding took ~240 more
/// instructions a call (measured), so each writer keeps its own.
public struct WireCursor {
  /// Room enough for any field's tag and length or value (two varints), and for a
  /// message's tag and its longest length.
  public static let fieldRoom = 20
  @usableFromInline let end: UnsafeMutablePointer<UInt8>
  /// Where the next field goes.
  @usableFromInline var p: UnsafeMutablePointer<UInt8>

  @inlinable init(_ start: UnsafeMutablePointer<UInt8>, end: UnsafeMutablePointer<UInt8>) {
    p = start
    self.end = end
  }

  /// Runs `body` at the next byte, which has `room` bytes after it; `body` returns how
  /// many it wrote.
  @inlinable @inline(__always) mutating func write(
    room: Int, _ body: (UnsafeMutablePointer<UInt8>) -> Int
  ) {
    precondition(end - p >= room, "a field past the room WireWriter.withCursor was given")
    p += body(p)
  }

  /// A varint field (`int64`, `uint64`, enums); negative values take ten bytes.
  @inlinable public mutating func int(_ field: UInt64, _ value: Int64) {
    guard value != 0 else { return }
    write(room: 20) { p in
      let n = WireWriter.put(field << 3, at: p)
      return n + WireWriter.put(UInt64(bitPattern: value), at: p + n)
    }
  }

  @inlinable public mutating func bool(_ field: UInt64, _ value: Bool) {
    guard value else { return }
    write(room: 11) { p in
      let n = WireWriter.put(field << 3, at: p)
      p[n] = 1
      return n + 1
    }
  }

  /// A `string` or `bytes` field (not written when empty).
  @inlinable public mutating func string(_ field: UInt64, _ value: String) {
    let length = value.utf8.count
    guard length != 0 else { return }
    write(room: 20 + length) { p in
      var n = WireWriter.put(field << 3 | 2, at: p)
      n += WireWriter.put(UInt64(length), at: p + n)
      let to = p + n
      if value.utf8.withContiguousStorageIfAvailable({
        to.update(from: $0.baseAddress!, count: length)
      }) == nil {
        for (i, b) in value.utf8.enumerated() { to[i] = b }
      }
      return n + length
    }
  }

  /// A length-delimited field whose message `body` writes in place, after a length fixed
  /// up once it is known (as `WireWriter.message(_:_:)` does). Written even when empty.
  @inlinable public mutating func message(_ field: UInt64, _ body: (inout WireCursor) -> Void) {
    write(room: 11) { p in
      let n = WireWriter.put(field << 3 | 2, at: p)
      p[n] = 0
      return n + 1
    }
    let at = p - 1
    body(&self)
    let length = p - at - 1
    if length < 0x80 {
      at.pointee = UInt8(truncatingIfNeeded: length)
      return
    }
    // Move the message up to make room for the longer length.
    let extra = WireWriter.varintSize(UInt64(length)) - 1
    write(room: extra) { _ in extra }
    (at + 1 + extra).update(from: at + 1, count: length)
    _ = WireWriter.put(UInt64(length), at: at)
  }
}
