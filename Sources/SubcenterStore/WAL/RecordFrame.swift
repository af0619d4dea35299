// The framing of every record in log segments and snapshot files:
//
//   offset  size  field
//   0       4     length   u32 little-endian: payload bytes, 1 ... 64 MiB
//   4       4     crc      u32 little-endian: CRC-32C of the 4 length bytes followed by
//                          the payload
//   8       len   payload  a protobuf `LogRecord` or `SnapshotRecord`
//
// The checksum covers the length too, so a damaged length is caught by the checksum of
// the record it points to, and a zeroed region (length 0) is never a valid record.

/// Framing of records: `[u32 length][u32 CRC-32C][payload]`.
public enum RecordFrame {
  /// Bytes before the payload.
  public static let headerSize = 8
  /// The largest payload a frame may hold (larger lengths are damage).
  public static let maxPayloadSize = 64 << 20

  /// Appends the frame of `payload` to `buffer`.
  public static func append(_ payload: [UInt8], to buffer: inout [UInt8]) {
    payload.withUnsafeBytes { append(sequence: nil, body: $0, to: &buffer) }
  }

  /// Appends one frame to `buffer` whose payload is `body`, preceded, when `sequence` is
  /// given, by protobuf field 1 (varint) holding it: the `seq` of a `LogRecord`, and, when
  /// `count` is more than one, field 4 (varint): its `seq_count`.
  static func append(
    sequence: UInt64?, count: UInt64 = 1, body: UnsafeRawBufferPointer, to buffer: inout [UInt8]
  ) {
    let start = buffer.count
    // The header's room and the fields before the body, gathered first: two appends of
    // bytes instead of one per byte (at most 8 + 2 × 11).
    var head: (UInt64, UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0, 0)
    withUnsafeMutableBytes(of: &head) { h in
      var n = headerSize
      if let sequence {
        h[n] = 0x08
        n = putVarint(sequence, into: h, at: n + 1)
        if count > 1 {
          h[n] = 0x20
          n = putVarint(count, into: h, at: n + 1)
        }
      }
      buffer.append(contentsOf: UnsafeRawBufferPointer(rebasing: h[..<n]))
    }
    buffer.append(contentsOf: body)
    let length = UInt32(buffer.count - start - headerSize)
    buffer.withUnsafeMutableBytes { b in
      b.storeBytes(of: length.littleEndian, toByteOffset: start, as: UInt32.self)
      let crc = checksum(UnsafeRawBufferPointer(b), start, Int(length))
      b.storeBytes(of: crc.littleEndian, toByteOffset: start + 4, as: UInt32.self)
    }
  }

  /// Writes `value` as a varint at `offset` of `bytes`; returns the offset after it.
  private static func putVarint(
    _ value: UInt64, into bytes: UnsafeMutableRawBufferPointer, at offset: Int
  )
    -> Int
  {
    var v = value
    var i = offset
    while v >= 0x80 {
      bytes[i] = UInt8(truncatingIfNeeded: v) | 0x80
      v >>= 7
      i += 1
    }
    bytes[i] = UInt8(v)
    return i + 1
  }

  /// What is at an offset of framed bytes.
  public enum Parsed: Equatable, Sendable {
    /// A valid frame: its payload, and where the next frame starts.
    case record(payload: Range<Int>, next: Int)
    /// The bytes end inside the frame (a frame cut short, if the rest is missing).
    case incomplete(String)
    /// Not a valid frame: bad length or checksum.
    case invalid(String)
  }

  /// Parses the frame at `offset` of `bytes` (which end at `bytes.count`).
  public static func parse(_ bytes: UnsafeRawBufferPointer, at offset: Int) -> Parsed {
    let available = bytes.count - offset
    if available < headerSize {
      return .incomplete("record header cut short (\(available) of \(headerSize) bytes)")
    }
    let length = Int(readLE32(bytes, offset))
    if length == 0 || length > maxPayloadSize {
      return .invalid("impossible record length \(length)")
    }
    if available - headerSize < length {
      return .incomplete(
        "record of \(length) bytes cut short (\(available - headerSize) bytes present)")
    }
    if checksum(bytes, offset, length) != readLE32(bytes, offset + 4) {
      return .invalid("record checksum mismatch")
    }
    return .record(
      payload: offset + headerSize..<offset + headerSize + length,
      next: offset + headerSize + length)
  }

  /// Whether a valid frame starts anywhere in `from ..< bytes.count`; returns its offset.
  /// Tries `hint` (where the frame after a damaged one would start if its length was
  /// right) first, then every offset.
  static func firstValidFrame(_ bytes: UnsafeRawBufferPointer, from: Int, hint: Int?) -> Int? {
    if let hint, hint >= from, hint < bytes.count, isValid(bytes, at: hint) { return hint }
    var o = from
    while o + headerSize < bytes.count {
      if isValid(bytes, at: o) { return o }
      o += 1
    }
    return nil
  }

  private static func isValid(_ bytes: UnsafeRawBufferPointer, at offset: Int) -> Bool {
    guard bytes.count - offset > headerSize else { return false }
    let length = Int(readLE32(bytes, offset))
    guard length > 0, length <= maxPayloadSize, length <= bytes.count - offset - headerSize else {
      return false
    }
    return checksum(bytes, offset, length) == readLE32(bytes, offset + 4)
  }

  private static func checksum(_ bytes: UnsafeRawBufferPointer, _ offset: Int, _ length: Int)
    -> UInt32
  {
    let crc = CRC32C.update(0, UnsafeRawBufferPointer(rebasing: bytes[offset..<offset + 4]))
    return CRC32C.update(
      crc,
      UnsafeRawBufferPointer(rebasing: bytes[offset + headerSize..<offset + headerSize + length]))
  }
}

@inline(__always)
func readLE32(_ bytes: UnsafeRawBufferPointer, _ offset: Int) -> UInt32 {
  bytes.loadUnaligned(fromByteOffset: offset, as: UInt32.self).littleEndian
}

@inline(__always)
func readLE64(_ bytes: UnsafeRawBufferPointer, _ offset: Int) -> UInt64 {
  bytes.loadUnaligned(fromByteOffset: offset, as: UInt64.self).littleEndian
}

@inline(__always)
func littleEndianBytes(_ v: UInt32) -> [UInt8] {
  [
    UInt8(truncatingIfNeeded: v), UInt8(truncatingIfNeeded: v >> 8),
    UInt8(truncatingIfNeeded: v >> 16), UInt8(truncatingIfNeeded: v >> 24),
  ]
}

@inline(__always)
func littleEndianBytes(_ v: UInt64) -> [UInt8] {
  (0..<8).map { UInt8(truncatingIfNeeded: v >> (8 * $0)) }
}
