// A direct protobuf writer for the messages written on every call: the log records of
// the commonest writes (LogRecordCodec.swift) and the answers of the hot RPCs
// (SubcenterServer's ProtoMapping), so they need no protobuf-c message tree, C strings or
// arena. proto3 rules, as protobuf-c packs them: a field holding its default (0, false,
// "") is not written, unless it is a oneof member that is set.

/// Appends protobuf fields to a byte array.
public struct WireWriter {
  /// What was written so far.
  public var bytes: [UInt8] = []

  /// An empty writer; with `reserving`, that many zero bytes come first (room for a
  /// header the caller fills in later, such as gRPC's message prefix).
  @inlinable public init(capacity: Int = 0, reserving: Int = 0) {
    bytes.reserveCapacity(capacity + reserving)
    if reserving > 0 { bytes.append(contentsOf: repeatElement(0, count: reserving)) }
  }

  @inlinable @inline(__always) public mutating func varint(_ value: UInt64) {
    if value < 0x80 {  // tags, lengths, enums: one byte
      bytes.append(UInt8(truncatingIfNeeded: value))
      return
    }
    var v = value
    while v >= 0x80 {
      bytes.append(UInt8(truncatingIfNeeded: v) | 0x80)
      v >>= 7
    }
    bytes.append(UInt8(v))
  }

  /// A varint field (`int64`, `uint64`, enums); negative values take ten bytes.
  @inlinable public mutating func int(_ field: UInt64, _ value: Int64) {
    guard value != 0 else { return }
    varint(field << 3)
    varint(UInt64(bitPattern: value))
  }

  @inlinable public mutating func bool(_ field: UInt64, _ value: Bool) {
    guard value else { return }
    varint(field << 3)
    bytes.append(1)
  }

  /// A `string` or `bytes` field; with `always` (a set oneof member) even when empty.
  @inlinable public mutating func string(_ field: UInt64, _ value: String, always: Bool = false) {
    let utf8 = value.utf8
    let n = utf8.count
    guard always || n != 0 else { return }
    varint(field << 3 | 2)
    varint(UInt64(n))
    if utf8.withContiguousStorageIfAvailable({ bytes.append(contentsOf: $0) }) == nil {
      bytes.append(contentsOf: utf8)
    }
  }

  /// A length-delimited field holding `message`'s bytes (written even when empty, as a
  /// set message field or a repeated message's element must be).
  @inlinable public mutating func message(_ field: UInt64, _ message: borrowing WireWriter) {
    varint(field << 3 | 2)
    varint(UInt64(message.bytes.count))
    bytes.append(contentsOf: message.bytes)
  }

  /// A length-delimited field whose message `body` writes in place, after a length fixed
  /// up once it is known (one byte is kept for it; a message of 128 bytes or more makes
  /// room for the rest). Written even when empty, like `message(_:_:)`.
  @inlinable public mutating func message(_ field: UInt64, _ body: (inout WireWriter) -> Void) {
    varint(field << 3 | 2)
    let at = bytes.count
    bytes.append(0)
    body(&self)
    let n = bytes.count - at - 1
    if n < 0x80 {
      bytes[at] = UInt8(truncatingIfNeeded: n)
      return
    }
    var length = WireWriter(capacity: 10)
    length.varint(UInt64(n))
    bytes.replaceSubrange(at..<(at + 1), with: length.bytes)
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

  /// Empties the writer, keeping its storage (for a scratch writer reused per element).
  @inlinable public mutating func reset() { bytes.removeAll(keepingCapacity: true) }
}
