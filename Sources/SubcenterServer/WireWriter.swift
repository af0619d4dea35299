// A direct protobuf writer for the responses every call of a hot RPC carries (decisions,
// `Preferences`), so they need no protobuf-c message tree, no C strings and no arena.
// proto3 rules: a field holding its default (0, false, "") is not written.

struct WireWriter {
  private(set) var bytes: [UInt8] = []

  init(capacity: Int = 0) { bytes.reserveCapacity(capacity) }

  mutating func varint(_ value: UInt64) {
    var v = value
    while v >= 0x80 {
      bytes.append(UInt8(truncatingIfNeeded: v) | 0x80)
      v >>= 7
    }
    bytes.append(UInt8(v))
  }

  /// A varint field (`int64`, `uint64`, enums); negative values take ten bytes.
  mutating func int(_ field: UInt64, _ value: Int64) {
    guard value != 0 else { return }
    varint(field << 3)
    varint(UInt64(bitPattern: value))
  }

  mutating func bool(_ field: UInt64, _ value: Bool) {
    guard value else { return }
    varint(field << 3)
    bytes.append(1)
  }

  mutating func string(_ field: UInt64, _ value: String) {
    let utf8 = value.utf8
    guard !utf8.isEmpty else { return }
    varint(field << 3 | 2)
    varint(UInt64(utf8.count))
    bytes.append(contentsOf: utf8)
  }

  /// A length-delimited field holding `message`'s bytes (written even when empty, as a
  /// repeated message's element must be).
  mutating func message(_ field: UInt64, _ message: borrowing WireWriter) {
    varint(field << 3 | 2)
    varint(UInt64(message.bytes.count))
    bytes.append(contentsOf: message.bytes)
  }

  /// Empties the writer, keeping its storage (for a scratch writer reused per element).
  mutating func reset() { bytes.removeAll(keepingCapacity: true) }
}
