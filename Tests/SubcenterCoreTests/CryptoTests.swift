// SHA-256 against the FIPS 180-4 (NIST CSRC) examples, HMAC-SHA-256 against RFC 4231, and
// the suppression hash built on them.

import SubcenterCore
import Testing

@Suite struct SHA256Tests {
  @Test(arguments: [
    ("", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
    ("abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
    (
      "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
      "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
    ),
    (
      "abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmnopqrlmnopqrsmnopqrstnopqrstu",
      "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1"
    ),
  ])
  func vectors(message: String, digest: String) {
    #expect(Hex.encode(SHA256.hash(Array(message.utf8))) == digest)
  }

  @Test func oneMillionAs() {
    var s = SHA256()
    let chunk = [UInt8](repeating: UInt8(ascii: "a"), count: 1000)
    for _ in 0..<1000 { s.update(chunk) }
    #expect(
      Hex.encode(s.finalize()) == "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"
    )
  }

  /// Padding edges: 55, 56, 63, 64 and 65 bytes, fed whole and byte by byte.
  @Test func incrementalEqualsOneShot() {
    for n in [0, 1, 55, 56, 57, 63, 64, 65, 127, 128, 129] {
      let msg = (0..<n).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) }
      var s = SHA256()
      for b in msg { s.update(byte: b) }
      #expect(s.finalize() == SHA256.hash(msg), "length \(n)")
    }
  }
}

@Suite struct HMACTests {
  static let cases: [([UInt8], [UInt8], String)] = [
    (
      [UInt8](repeating: 0x0b, count: 20), Array("Hi There".utf8),
      "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
    ),
    (
      Array("Jefe".utf8), Array("what do ya want for nothing?".utf8),
      "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    ),
    (
      [UInt8](repeating: 0xaa, count: 20), [UInt8](repeating: 0xdd, count: 50),
      "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe"
    ),
    (
      Array(1...25), [UInt8](repeating: 0xcd, count: 50),
      "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b"
    ),
    (
      [UInt8](repeating: 0xaa, count: 131),
      Array("Test Using Larger Than Block-Size Key - Hash Key First".utf8),
      "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
    ),
    (
      [UInt8](repeating: 0xaa, count: 131),
      Array(
        ("This is a test using a larger than block-size key and a larger than block-size data."
          + " The key needs to be hashed before being used by the HMAC algorithm.").utf8),
      "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2"
    ),
  ]

  @Test func rfc4231() {
    for (i, (key, data, tag)) in Self.cases.enumerated() {
      #expect(Hex.encode(HMACSHA256(key: key).authenticate(data)) == tag, "case \(i)")
    }
  }

  /// RFC 4231 test case 5: the tag truncated to 128 bits.
  @Test func rfc4231Truncated() {
    let tag = HMACSHA256(key: [UInt8](repeating: 0x0c, count: 20))
      .authenticate(Array("Test With Truncation".utf8))
    #expect(Hex.encode(tag.prefix(16)) == "a3b6167473100ee06e0c796c2955552b")
  }

  @Test func keyIsReusable() {
    let h = HMACSHA256(key: Array("Jefe".utf8))
    let a = h.authenticate(Array("what do ya want for nothing?".utf8))
    let b = h.authenticate(parts: [Array("what do ya ".utf8), Array("want for nothing?".utf8)])
    #expect(a == b)
    #expect(HMACSHA256.equal(a, b))
    #expect(!HMACSHA256.equal(a, Array(b.dropLast()) + [b.last! ^ 1]))
  }
}

@Suite struct SuppressionHashTests {
  @Test func keyedByKindAndValue() {
    let hasher = IdentifierHasher(secret: Array("secret".utf8))
    let a = hasher.hash(kind: .email, normalizedValue: "x@y.com")
    #expect(a == hasher.hash(kind: .email, normalizedValue: "x@y.com"))
    #expect(a != hasher.hash(kind: .anonymousID, normalizedValue: "x@y.com"))
    #expect(
      a
        != IdentifierHasher(secret: Array("other".utf8)).hash(
          kind: .email, normalizedValue: "x@y.com"))
    // HMAC(secret, kind byte ‖ value), as documented.
    let expected = HMACSHA256(key: Array("secret".utf8)).authenticate([2] + Array("x@y.com".utf8))
    #expect(a.bytes == expected)
    #expect(SuppressionHash(bytes: a.bytes) == a)
    #expect(a.hex == Hex.encode(expected))
  }

  @Test func hexRoundTrip() {
    #expect(Hex.decode("00ff10Ab") == [0, 255, 16, 171])
    #expect(Hex.decode("0") == nil)
    #expect(Hex.decode("zz") == nil)
  }
}
