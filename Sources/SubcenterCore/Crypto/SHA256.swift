// SHA-256 (FIPS 180-4) in pure Swift, for keyed hashes of suppressed identifiers, history
// cursors and receipts. Tested against the FIPS 180-4 / NIST example vectors.

/// An incremental SHA-256. A value type: copying it forks the computation, which HMAC
/// uses to reuse the keyed inner and outer states.
public struct SHA256: Sendable {
  public static let digestSize = 32
  static let blockSize = 64

  private var h: (UInt32, UInt32, UInt32, UInt32, UInt32, UInt32, UInt32, UInt32) = (
    0x6a09_e667, 0xbb67_ae85, 0x3c6e_f372, 0xa54f_f53a,
    0x510e_527f, 0x9b05_688c, 0x1f83_d9ab, 0x5be0_cd19
  )
  private var buffer = InlineArray<64, UInt8>(repeating: 0)
  private var buffered = 0
  private var length: UInt64 = 0

  public init() {}

  /// The digest of `bytes`.
  public static func hash<Bytes: Sequence<UInt8>>(_ bytes: Bytes) -> [UInt8] {
    var s = SHA256()
    s.update(bytes)
    return s.finalize()
  }

  public mutating func update<Bytes: Sequence<UInt8>>(_ bytes: Bytes) {
    for b in bytes { update(byte: b) }
  }

  /// Feeds one byte.
  @inline(__always)
  public mutating func update(byte: UInt8) {
    buffer[buffered] = byte
    buffered += 1
    length &+= 1
    if buffered == 64 {
      compress()
      buffered = 0
    }
  }

  /// Finishes and returns the 32-byte digest.
  public mutating func finalize() -> [UInt8] {
    let bitLength = length &* 8
    buffer[buffered] = 0x80
    buffered += 1
    if buffered > 56 {
      while buffered < 64 {
        buffer[buffered] = 0
        buffered += 1
      }
      compress()
      buffered = 0
    }
    while buffered < 56 {
      buffer[buffered] = 0
      buffered += 1
    }
    for i in 0..<8 { buffer[56 + i] = UInt8(truncatingIfNeeded: bitLength >> (56 - 8 * i)) }
    compress()
    buffered = 0
    var out = [UInt8]()
    out.reserveCapacity(32)
    for word in [h.0, h.1, h.2, h.3, h.4, h.5, h.6, h.7] {
      out.append(UInt8(truncatingIfNeeded: word >> 24))
      out.append(UInt8(truncatingIfNeeded: word >> 16))
      out.append(UInt8(truncatingIfNeeded: word >> 8))
      out.append(UInt8(truncatingIfNeeded: word))
    }
    return out
  }

  private static let k: [UInt32] = [
    0x428a_2f98, 0x7137_4491, 0xb5c0_fbcf, 0xe9b5_dba5, 0x3956_c25b, 0x59f1_11f1, 0x923f_82a4,
    0xab1c_5ed5, 0xd807_aa98, 0x1283_5b01, 0x2431_85be, 0x550c_7dc3, 0x72be_5d74, 0x80de_b1fe,
    0x9bdc_06a7, 0xc19b_f174, 0xe49b_69c1, 0xefbe_4786, 0x0fc1_9dc6, 0x240c_a1cc, 0x2de9_2c6f,
    0x4a74_84aa, 0x5cb0_a9dc, 0x76f9_88da, 0x983e_5152, 0xa831_c66d, 0xb003_27c8, 0xbf59_7fc7,
    0xc6e0_0bf3, 0xd5a7_9147, 0x06ca_6351, 0x1429_2967, 0x27b7_0a85, 0x2e1b_2138, 0x4d2c_6dfc,
    0x5338_0d13, 0x650a_7354, 0x766a_0abb, 0x81c2_c92e, 0x9272_2c85, 0xa2bf_e8a1, 0xa81a_664b,
    0xc24b_8b70, 0xc76c_51a3, 0xd192_e819, 0xd699_0624, 0xf40e_3585, 0x106a_a070, 0x19a4_c116,
    0x1e37_6c08, 0x2748_774c, 0x34b0_bcb5, 0x391c_0cb3, 0x4ed8_aa4a, 0x5b9c_ca4f, 0x682e_6ff3,
    0x748f_82ee, 0x78a5_636f, 0x84c8_7814, 0x8cc7_0208, 0x90be_fffa, 0xa450_6ceb, 0xbef9_a3f7,
    0xc671_78f2,
  ]

  private mutating func compress() {
    var w = InlineArray<64, UInt32>(repeating: 0)
    for i in 0..<16 {
      w[i] =
        UInt32(buffer[4 * i]) << 24 | UInt32(buffer[4 * i + 1]) << 16
        | UInt32(buffer[4 * i + 2]) << 8 | UInt32(buffer[4 * i + 3])
    }
    for i in 16..<64 {
      let x = w[i - 15]
      let y = w[i - 2]
      let s0 = x.rotatedRight(7) ^ x.rotatedRight(18) ^ (x >> 3)
      let s1 = y.rotatedRight(17) ^ y.rotatedRight(19) ^ (y >> 10)
      w[i] = w[i - 16] &+ s0 &+ w[i - 7] &+ s1
    }
    var (a, b, c, d, e, f, g, hh) = h
    let k = SHA256.k
    for i in 0..<64 {
      let s1 = e.rotatedRight(6) ^ e.rotatedRight(11) ^ e.rotatedRight(25)
      let ch = (e & f) ^ (~e & g)
      let t1 = hh &+ s1 &+ ch &+ k[i] &+ w[i]
      let s0 = a.rotatedRight(2) ^ a.rotatedRight(13) ^ a.rotatedRight(22)
      let maj = (a & b) ^ (a & c) ^ (b & c)
      let t2 = s0 &+ maj
      hh = g
      g = f
      f = e
      e = d &+ t1
      d = c
      c = b
      b = a
      a = t1 &+ t2
    }
    h = (h.0 &+ a, h.1 &+ b, h.2 &+ c, h.3 &+ d, h.4 &+ e, h.5 &+ f, h.6 &+ g, h.7 &+ hh)
  }
}

extension UInt32 {
  @inline(__always) fileprivate func rotatedRight(_ n: UInt32) -> UInt32 {
    (self >> n) | (self << (32 - n))
  }
}
