// grpc-message is percent-encoded UTF-8: bytes outside 0x20...0x7E, and '%' itself,
// become %XX (PROTOCOL-HTTP2.md, "Responses").

public enum PercentEncoding {
  private static let hex: [UInt8] = Array("0123456789ABCDEF".utf8)

  /// Encodes a status message for the grpc-message header.
  public static func encode(_ message: String) -> String {
    let utf8 = message.utf8
    if utf8.allSatisfy({ $0 >= 0x20 && $0 <= 0x7E && $0 != UInt8(ascii: "%") }) { return message }
    var out: [UInt8] = []
    out.reserveCapacity(utf8.count * 3)
    for b in utf8 {
      if b >= 0x20 && b <= 0x7E && b != UInt8(ascii: "%") {
        out.append(b)
      } else {
        out.append(UInt8(ascii: "%"))
        out.append(hex[Int(b >> 4)])
        out.append(hex[Int(b & 0xF)])
      }
    }
    return String(decoding: out, as: UTF8.self)
  }

  /// Decodes a grpc-message header. Malformed escapes are kept as they are, as the spec
  /// asks of receivers.
  public static func decode(_ text: String) -> String {
    let bytes = Array(text.utf8)
    guard bytes.contains(UInt8(ascii: "%")) else { return text }
    var out: [UInt8] = []
    out.reserveCapacity(bytes.count)
    var i = 0
    while i < bytes.count {
      if bytes[i] == UInt8(ascii: "%"), i + 2 < bytes.count,
        let h = hexValue(bytes[i + 1]), let l = hexValue(bytes[i + 2])
      {
        out.append(h << 4 | l)
        i += 3
      } else {
        out.append(bytes[i])
        i += 1
      }
    }
    return String(decoding: out, as: UTF8.self)
  }

  private static func hexValue(_ c: UInt8) -> UInt8? {
    switch c {
    case UInt8(ascii: "0")...UInt8(ascii: "9"): c - UInt8(ascii: "0")
    case UInt8(ascii: "a")...UInt8(ascii: "f"): c - UInt8(ascii: "a") + 10
    case UInt8(ascii: "A")...UInt8(ascii: "F"): c - UInt8(ascii: "A") + 10
    default: nil
    }
  }
}
