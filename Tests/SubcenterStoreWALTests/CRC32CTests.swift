// CRC-32C against published test vectors, and incremental use; the table path (used on
// CPUs without SSE 4.2) and the crc32 instruction against a bitwise reference.

import Testing

@testable import SubcenterStore

@Suite struct CRC32CTests {
  @Test func knownVectors() {
    #expect(CRC32C.checksum(Array("123456789".utf8)) == 0xE306_9283)
    #expect(CRC32C.checksum([]) == 0)
    // RFC 3720 (iSCSI) B.4 vectors.
    #expect(CRC32C.checksum([UInt8](repeating: 0, count: 32)) == 0x8A91_36AA)
    #expect(CRC32C.checksum([UInt8](repeating: 0xFF, count: 32)) == 0x62A8_AB43)
    #expect(CRC32C.checksum((0..<32).map { UInt8($0) }) == 0x46DD_794E)
    #expect(CRC32C.checksum((0..<32).map { UInt8(31 - $0) }) == 0x113F_DB5C)
  }

  @Test func incrementalEqualsWhole() {
    var rng = SystemRandomNumberGenerator()
    let data = (0..<1000).map { _ in UInt8.random(in: 0...255, using: &rng) }
    let whole = CRC32C.checksum(data)
    for cut in [0, 1, 7, 8, 9, 500, 999, 1000] {
      let a = data[..<cut].withUnsafeBytes { CRC32C.update(0, $0) }
      let ab = data[cut...].withUnsafeBytes { CRC32C.update(a, $0) }
      #expect(ab == whole, "cut at \(cut)")
    }
    // Every alignment and length against a bytewise reference.
    for start in 0..<9 {
      for length in [0, 1, 3, 8, 15, 16, 17, 64] {
        let slice = data[start..<start + length]
        #expect(CRC32C.checksum(slice) == reference(slice))
      }
    }
  }

  @Test func tablesAndInstructionAgreeWithTheReference() {
    var rng = SystemRandomNumberGenerator()
    let data = (0..<300).map { _ in UInt8.random(in: 0...255, using: &rng) }
    for start in 0..<9 {
      for length in 0..<(300 - start) where length < 40 || length % 37 == 0 {
        let slice = data[start..<start + length]
        let want = reference(slice)
        #expect(slice.withUnsafeBytes { CRC32C.software(0, $0) } == want)
        #expect(CRC32C.checksum(slice) == want)
        // Continued from a running checksum, as snapshot files are summed.
        let half = slice.count / 2
        let first = slice.prefix(half).withUnsafeBytes { CRC32C.software(0, $0) }
        #expect(slice.dropFirst(half).withUnsafeBytes { CRC32C.update(first, $0) } == want)
      }
    }
  }

  private func reference(_ bytes: ArraySlice<UInt8>) -> UInt32 {
    var c: UInt32 = 0xFFFF_FFFF
    for b in bytes {
      c ^= UInt32(b)
      for _ in 0..<8 { c = c & 1 != 0 ? (c >> 1) ^ 0x82F6_3B78 : c >> 1 }
    }
    return ~c
  }
}
