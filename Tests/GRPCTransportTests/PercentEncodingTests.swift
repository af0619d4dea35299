// grpc-message percent-encoding.

import Testing

@testable import GRPCTransport

@Suite struct PercentEncodingTests {
  @Test func printableASCIIUntouched() {
    let ascii = String(
      decoding: (0x20...0x7E).filter { $0 != 0x25 }.map { UInt8($0) }, as: UTF8.self)
    #expect(PercentEncoding.encode(ascii) == ascii)
    #expect(PercentEncoding.encode("") == "")
    #expect(PercentEncoding.encode("no such method") == "no such method")
  }

  @Test func percentEncoded() {
    #expect(PercentEncoding.encode("100%") == "100%25")
    #expect(PercentEncoding.encode("%25") == "%2525")
  }

  @Test(arguments: [
    ("\t\n", "%09%0A"), ("\u{0}", "%00"), ("\u{7F}", "%7F"), ("☺", "%E2%98%BA"),
    ("😈", "%F0%9F%98%88"), ("é", "%C3%A9"), ("a ☺ b", "a %E2%98%BA b"),
  ])
  func controlAndNonASCIIEncodedUppercase(text: String, encoded: String) {
    #expect(PercentEncoding.encode(text) == encoded)
    #expect(PercentEncoding.decode(encoded) == text)
  }

  @Test func roundTrips() {
    let samples = [
      "", "plain", "100% done", "tab\there", "line\r\nbreak", "☺😈", "日本語のメッセージ",
      "%", "%%", "%2", "ends with %", "mixed % ☺ \u{1} \u{7F} ~",
    ]
    for s in samples { #expect(PercentEncoding.decode(PercentEncoding.encode(s)) == s) }
  }

  @Test func malformedEscapesKept() {
    #expect(PercentEncoding.decode("%G1") == "%G1")
    #expect(PercentEncoding.decode("abc%") == "abc%")
    #expect(PercentEncoding.decode("abc%4") == "abc%4")
    #expect(PercentEncoding.decode("%%41") == "%A")
    #expect(PercentEncoding.decode("%zz%41") == "%zzA")
    #expect(PercentEncoding.decode("%e2%98%ba") == "☺")  // lower-case hex accepted
  }
}
