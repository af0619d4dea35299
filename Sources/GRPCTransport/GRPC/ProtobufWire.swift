// Just enough of the protobuf wire format for the two health messages, so the transport
// needs no generated code: a varint field and a length-delimited string field.

enum ProtobufWire {
  /// Encodes `field` as a varint (wire type 0); zero is omitted, as proto3 does.
  static func varintField(_ field: Int, _ value: UInt64) -> [UInt8] {
    guard value != 0 else { return [] }
    var out = varint(UInt64(field << 3))
    out += varint(value)
    return out
  }

  static func varint(_ v: UInt64) -> [UInt8] {
    var v = v
    var out: [UInt8] = []
    while v >= 0x80 {
      out.append(UInt8(v & 0x7F) | 0x80)
      v >>= 7
    }
    out.append(UInt8(v))
    return out
  }

  /// Encodes `field` as a length-delimited string.
  static func stringField(_ field: Int, _ value: String) -> [UInt8] {
    guard !value.isEmpty else { return [] }
    let bytes = Array(value.utf8)
    return varint(UInt64(field << 3 | 2)) + varint(UInt64(bytes.count)) + bytes
  }

  /// Reads varint field `field` (0 when absent); nil if the message is malformed.
  static func varint(field: Int, in bytes: [UInt8]) -> UInt64? {
    var result: UInt64 = 0
    return scan(bytes, field: field, onVarint: { result = $0 }, onBytes: { _ in true })
      ? result : nil
  }

  /// Reads string field `field` ("" when absent); nil if malformed or not UTF-8.
  static func string(field: Int, in bytes: [UInt8]) -> String? {
    var result = ""
    return scan(
      bytes, field: field, onVarint: { _ in },
      onBytes: { slice in
        guard let s = String(validating: slice, as: UTF8.self) else { return false }
        result = s
        return true
      }) ? result : nil
  }

  /// Walks the fields of a message, reporting those numbered `field`.
  private static func scan(
    _ bytes: [UInt8], field: Int, onVarint: (UInt64) -> Void,
    onBytes: (ArraySlice<UInt8>) -> Bool
  ) -> Bool {
    var i = 0
    func readVarint() -> UInt64? {
      var v: UInt64 = 0
      var shift: UInt64 = 0
      while i < bytes.count, shift < 64 {
        let b = bytes[i]
        i += 1
        v |= UInt64(b & 0x7F) << shift
        if b < 0x80 { return v }
        shift += 7
      }
      return nil
    }
    while i < bytes.count {
      guard let key = readVarint() else { return false }
      switch key & 7 {
      case 0:
        guard let v = readVarint() else { return false }
        if Int(key >> 3) == field { onVarint(v) }
      case 1: i += 8
      case 5: i += 4
      case 2:
        guard let len = readVarint(), len <= UInt64(bytes.count - i) else { return false }
        let end = i + Int(len)
        if Int(key >> 3) == field, !onBytes(bytes[i..<end]) { return false }
        i = end
      default: return false
      }
      if i > bytes.count { return false }
    }
    return true
  }
}
