// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78, initial value and final XOR
// 0xFFFFFFFF), the checksum of every framed record and of snapshot files. With the crc32
// instruction of SSE 4.2 when the CPU has it (CLinux/shim.h), eight bytes per instruction;
// otherwise slicing-by-8: eight 256-entry tables, eight bytes per step.

import CLinux

/// CRC-32C checksums.
public enum CRC32C {
  /// The checksum of `bytes`.
  public static func checksum(_ bytes: [UInt8]) -> UInt32 {
    bytes.withUnsafeBytes { update(0, $0) }
  }

  /// The checksum of `bytes`.
  public static func checksum(_ bytes: ArraySlice<UInt8>) -> UInt32 {
    bytes.withUnsafeBytes { update(0, $0) }
  }

  /// The checksum of the bytes already summed into `crc` followed by `bytes`
  /// (`update(0, b)` is the checksum of `b`; `update(checksum(a), b)` that of `a ‖ b`).
  public static func update(_ crc: UInt32, _ bytes: UnsafeRawBufferPointer) -> UInt32 {
    guard let base = bytes.baseAddress, bytes.count > 0 else { return crc }
    if hardware {
      return ~CLinux_crc32c(~crc, base.assumingMemoryBound(to: UInt8.self), bytes.count)
    }
    return software(crc, bytes)
  }

  /// Whether the crc32 instruction is used.
  static let hardware = CLinux_crc32c_hardware() != 0

  /// `update` with the tables (the reference the instruction is tested against).
  static func software(_ crc: UInt32, _ bytes: UnsafeRawBufferPointer) -> UInt32 {
    guard var p = bytes.baseAddress, bytes.count > 0 else { return crc }
    var n = bytes.count
    var c = ~crc
    return tables.withUnsafeBufferPointer { t in
      while n >= 8 {
        let lo = p.loadUnaligned(as: UInt32.self).littleEndian ^ c
        let hi = (p + 4).loadUnaligned(as: UInt32.self).littleEndian
        c =
          t[7 &* 256 &+ Int(lo & 0xFF)] ^ t[6 &* 256 &+ Int((lo >> 8) & 0xFF)]
          ^ t[5 &* 256 &+ Int((lo >> 16) & 0xFF)] ^ t[4 &* 256 &+ Int(lo >> 24)]
          ^ t[3 &* 256 &+ Int(hi & 0xFF)] ^ t[2 &* 256 &+ Int((hi >> 8) & 0xFF)]
          ^ t[1 &* 256 &+ Int((hi >> 16) & 0xFF)] ^ t[Int(hi >> 24)]
        p += 8
        n -= 8
      }
      while n > 0 {
        c = t[Int((c ^ UInt32(p.load(as: UInt8.self))) & 0xFF)] ^ (c >> 8)
        p += 1
        n -= 1
      }
      return ~c
    }
  }

  /// `tables[k * 256 + b]`: the CRC of byte `b` followed by `k` zero bytes.
  private static let tables: [UInt32] = {
    var t = [UInt32](repeating: 0, count: 8 * 256)
    for i in 0..<256 {
      var c = UInt32(i)
      for _ in 0..<8 { c = c & 1 != 0 ? (c >> 1) ^ 0x82F6_3B78 : c >> 1 }
      t[i] = c
    }
    for k in 1..<8 {
      for i in 0..<256 {
        let prev = t[(k - 1) * 256 + i]
        t[k * 256 + i] = (prev >> 8) ^ t[Int(prev & 0xFF)]
      }
    }
    return t
  }()
}
