// Suppression by keyed hash (SPEC §1): an identifier that may never be used again is kept
// only as HMAC-SHA-256(server secret, kind byte ‖ normalized value), never in clear.
//
// Hashing costs two SHA-256 compressions, so the store hashes only on a miss: a person
// that exists never holds a suppressed identifier (suppression forgets the holder;
// Identify refuses suppressed identifiers), hence CheckDelivery of a known person needs
// no hash, and only an identifier that names nobody is looked up in the suppression set.

/// The keyed hash of one suppressed identifier (32 bytes).
public struct SuppressionHash: Sendable, Hashable, Comparable, CustomStringConvertible {
  public let w0: UInt64
  public let w1: UInt64
  public let w2: UInt64
  public let w3: UInt64

  /// From 32 bytes.
  public init(bytes: [UInt8]) {
    precondition(bytes.count == 32, "a suppression hash is 32 bytes")
    func word(_ at: Int) -> UInt64 {
      var v: UInt64 = 0
      for i in 0..<8 { v = v << 8 | UInt64(bytes[at + i]) }
      return v
    }
    w0 = word(0)
    w1 = word(8)
    w2 = word(16)
    w3 = word(24)
  }

  public var bytes: [UInt8] {
    var out: [UInt8] = []
    out.reserveCapacity(32)
    for w in [w0, w1, w2, w3] {
      for i in 0..<8 { out.append(UInt8(truncatingIfNeeded: w >> (56 - 8 * i))) }
    }
    return out
  }

  public var hex: String { Hex.encode(bytes) }
  public var description: String { hex }

  public static func < (a: SuppressionHash, b: SuppressionHash) -> Bool {
    (a.w0, a.w1, a.w2, a.w3) < (b.w0, b.w1, b.w2, b.w3)
  }
}

/// Keyed hashes of identifiers under the server secret.
public struct IdentifierHasher: Sendable {
  private let hmac: HMACSHA256

  public init(secret: [UInt8]) { hmac = HMACSHA256(key: secret) }

  /// HMAC-SHA-256(secret, kind.rawValue as one byte ‖ UTF-8 of the normalized value).
  public func hash(kind: IdentifierKind, normalizedValue: String) -> SuppressionHash {
    SuppressionHash(
      bytes: hmac.authenticate { sha in
        sha.update(byte: UInt8(truncatingIfNeeded: kind.rawValue))
        sha.update(normalizedValue.utf8)
      })
  }

  /// Names the secret without revealing it: the first 16 bytes of the tag of
  /// "subcenter secret check". Snapshots hold it, so data is never read under another
  /// secret (its suppressions would silently stop matching).
  public var secretCheck: [UInt8] { Array(tag("subcenter secret check".utf8).prefix(16)) }

  /// The tag of arbitrary bytes under the same secret (history cursors, receipts).
  public func tag<Message: Sequence<UInt8>>(_ message: Message) -> [UInt8] {
    hmac.authenticate(message)
  }
}
