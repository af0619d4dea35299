// HMAC-SHA-256 (RFC 2104), tested against RFC 4231. The keyed inner and outer states are
// computed once per key, so each message costs two compressions when it is short.

/// HMAC-SHA-256 with a fixed key.
public struct HMACSHA256: Sendable {
  private let inner: SHA256
  private let outer: SHA256

  public init<Key: Collection<UInt8>>(key: Key) {
    var block = [UInt8](repeating: 0, count: SHA256.blockSize)
    if key.count > SHA256.blockSize {
      for (i, b) in SHA256.hash(key).enumerated() { block[i] = b }
    } else {
      for (i, b) in key.enumerated() { block[i] = b }
    }
    var i = SHA256()
    i.update(block.map { $0 ^ 0x36 })
    var o = SHA256()
    o.update(block.map { $0 ^ 0x5c })
    inner = i
    outer = o
  }

  /// The 32-byte tag of `message`.
  public func authenticate<Message: Sequence<UInt8>>(_ message: Message) -> [UInt8] {
    var i = inner
    i.update(message)
    return finish(&i)
  }

  /// The tag of the concatenation of `parts`.
  public func authenticate(parts: [[UInt8]]) -> [UInt8] {
    var i = inner
    for p in parts { i.update(p) }
    return finish(&i)
  }

  /// The tag of a message fed by `body` (avoids building it).
  public func authenticate(_ body: (inout SHA256) -> Void) -> [UInt8] {
    var i = inner
    body(&i)
    return finish(&i)
  }

  private func finish(_ i: inout SHA256) -> [UInt8] {
    let innerDigest = i.finalize()
    var o = outer
    o.update(innerDigest)
    return o.finalize()
  }

  /// Compares two tags in time independent of where they differ.
  public static func equal(_ a: [UInt8], _ b: [UInt8]) -> Bool {
    guard a.count == b.count else { return false }
    var diff: UInt8 = 0
    for i in 0..<a.count { diff |= a[i] ^ b[i] }
    return diff == 0
  }
}

/// Lower-case hexadecimal.
public enum Hex {
  private static let digits = Array("0123456789abcdef".utf8)

  public static func encode<Bytes: Sequence<UInt8>>(_ bytes: Bytes) -> String {
    var out: [UInt8] = []
    for b in bytes {
      out.append(digits[Int(b >> 4)])
      out.append(digits[Int(b & 15)])
    }
    return String(decoding: out, as: UTF8.self)
  }

  /// Decodes lower- or upper-case hex; nil if `text` is not hex of whole bytes.
  public static func decode(_ text: String) -> [UInt8]? {
    let u = Array(text.utf8)
    guard u.count % 2 == 0 else { return nil }
    var out: [UInt8] = []
    out.reserveCapacity(u.count / 2)
    var i = 0
    while i < u.count {
      guard let hi = nibble(u[i]), let lo = nibble(u[i + 1]) else { return nil }
      out.append(hi << 4 | lo)
      i += 2
    }
    return out
  }

  private static func nibble(_ c: UInt8) -> UInt8? {
    switch c {
    case UInt8(ascii: "0")...UInt8(ascii: "9"): c - UInt8(ascii: "0")
    case UInt8(ascii: "a")...UInt8(ascii: "f"): c - UInt8(ascii: "a") + 10
    case UInt8(ascii: "A")...UInt8(ascii: "F"): c - UInt8(ascii: "A") + 10
    default: nil
    }
  }
}
