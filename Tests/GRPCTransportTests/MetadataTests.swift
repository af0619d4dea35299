// Base64 (RFC 4648) and Metadata.

import Testing

@testable import GRPCTransport

@Suite struct Base64Tests {
  static let vectors = [
    ("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg=="),
    ("fooba", "Zm9vYmE="), ("foobar", "Zm9vYmFy"),
  ]

  @Test(arguments: vectors)
  func rfc4648Vectors(plain: String, encoded: String) {
    #expect(Base64.encode(Array(plain.utf8)) == encoded)
    #expect(Base64.decode(encoded) == Array(plain.utf8))
  }

  @Test(arguments: vectors)
  func unpaddedDecode(plain: String, encoded: String) {
    let unpadded = String(encoded.filter { $0 != "=" })
    #expect(Base64.decode(unpadded) == Array(plain.utf8))
  }

  @Test func urlAlphabet() {
    let bytes: [UInt8] = [0xFB, 0xFF, 0xBF]
    #expect(Base64.encode(bytes) == "+/+/")
    #expect(Base64.encode(bytes, url: true) == "-_-_")
    #expect(Base64.encode([0xFB, 0xFF]) == "+/8=")
    #expect(Base64.encode([0xFB, 0xFF], url: true) == "-_8")
    #expect(Base64.encode(Array("f".utf8), url: true) == "Zg")
    #expect(Base64.decode("-_8") == [0xFB, 0xFF])
    #expect(Base64.decode("+/8=") == [0xFB, 0xFF])
  }

  @Test func allByteValuesRoundTrip() {
    let bytes = (0...255).map { UInt8($0) }
    #expect(Base64.decode(Base64.encode(bytes)) == bytes)
    #expect(Base64.decode(Base64.encode(bytes, url: true)) == bytes)
  }

  @Test func garbageRefused() {
    #expect(Base64.decode("Zm9v!") == nil)
    #expect(Base64.decode("Zm 9v") == nil)
    #expect(Base64.decode("☺") == nil)
  }
}

@Suite struct MetadataTests {
  @Test func namesLowerCased() {
    var md = Metadata()
    md.add("X-Request-ID", "abc")
    md.add("x-request-id", "def")
    let literal: Metadata = ["Authorization": "Bearer t"]
    #expect(md.entries.map(\.name) == ["x-request-id", "x-request-id"])
    #expect(md["x-request-id"] == "abc")  // the first value
    #expect(md.map(\.value) == ["abc", "def"])
    #expect(literal["authorization"] == "Bearer t")
    #expect(Metadata().isEmpty && !md.isEmpty)
  }

  @Test func binaryValues() {
    var md = Metadata()
    let bytes: [UInt8] = [0, 1, 2, 0xFF, 0xFE]
    md.add("Trace-Bin", binary: bytes)
    md.add("unpadded-bin", "AAEC/w")
    md.add("broken-bin", "not base64!")
    #expect(md["trace-bin"] == "AAEC//4=")
    #expect(md.binary("trace-bin") == bytes)
    #expect(md.binary("unpadded-bin") == [0, 1, 2, 0xFF])
    #expect(md.binary("broken-bin") == nil)
    #expect(md.binary("absent-bin") == nil)
  }
}
