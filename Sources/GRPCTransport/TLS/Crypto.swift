// Small crypto helpers over OpenSSL for the layers above (random secrets and tokens, and
// comparing digests), so no other module touches OpenSSL. The digests themselves
// (SHA-256, HMAC-SHA-256) are SubcenterCore's, one implementation for every layer.

import CTLS

public enum Crypto {
  /// `count` bytes from OpenSSL's CSPRNG.
  public static func randomBytes(count: Int) -> [UInt8] {
    var out = [UInt8](repeating: 0, count: count)
    guard RAND_bytes(&out, Int32(count)) == 1 else {
      fatalError("RAND_bytes failed: no secure randomness available")
    }
    return out
  }

  /// Compares two byte strings in time independent of where they differ.
  public static func constantTimeEqual(_ a: [UInt8], _ b: [UInt8]) -> Bool {
    guard a.count == b.count else { return false }
    var diff: UInt8 = 0
    for i in 0..<a.count { diff |= a[i] ^ b[i] }
    return diff == 0
  }

  /// Lower-case hex.
  public static func hex(_ bytes: [UInt8]) -> String {
    let digits = Array("0123456789abcdef".utf8)
    var out: [UInt8] = []
    out.reserveCapacity(bytes.count * 2)
    for b in bytes {
      out.append(digits[Int(b >> 4)])
      out.append(digits[Int(b & 15)])
    }
    return String(decoding: out, as: UTF8.self)
  }

  /// Parses lower- or upper-case hex; nil on anything else.
  public static func unhex(_ text: String) -> [UInt8]? {
    let u = Array(text.utf8)
    guard u.count % 2 == 0 else { return nil }
    func v(_ c: UInt8) -> UInt8? {
      switch c {
      case 48...57: c - 48
      case 97...102: c - 87
      case 65...70: c - 55
      default: nil
      }
    }
    var out: [UInt8] = []
    out.reserveCapacity(u.count / 2)
    var i = 0
    while i < u.count {
      guard let h = v(u[i]), let l = v(u[i + 1]) else { return nil }
      out.append(h << 4 | l)
      i += 2
    }
    return out
  }
}
