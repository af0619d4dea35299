// grpc-timeout parsing and encoding.

import Testing

@testable import GRPCTransport

@Suite struct GRPCTimeoutTests {
  @Test(
    arguments: [
      ("1H", 3_600_000_000_000), ("2M", 120_000_000_000), ("3S", 3_000_000_000),
      ("4m", 4_000_000), ("5u", 5_000), ("6n", 6), ("0S", 0),
    ] as [(String, UInt64)])
  func everyUnit(text: String, nanos: UInt64) {
    #expect(GRPCTimeout.parse(text) == nanos)
  }

  @Test func eightDigitsAtMost() {
    #expect(GRPCTimeout.parse("99999999n") == 99_999_999)
    #expect(GRPCTimeout.parse("00000001S") == 1_000_000_000)
    #expect(GRPCTimeout.parse("123456789n") == nil)
    #expect(GRPCTimeout.parse("000000001S") == nil)
  }

  @Test(arguments: [
    "", "S", "1", "12", "abc", "-1S", "+1S", "1s", "1.5S", " 1S", "1S ", "1Sm", "１S",
  ])
  func malformedRefused(text: String) {
    #expect(GRPCTimeout.parse(text) == nil)
  }

  @Test func overflowSaturates() {
    #expect(GRPCTimeout.parse("99999999H") == UInt64.max)
    #expect(GRPCTimeout.parse("5124096H") == UInt64.max)  // just past UInt64.max ns
    #expect(GRPCTimeout.parse("5124095H") == UInt64(5_124_095) * 3_600_000_000_000)
  }

  @Test(
    arguments: [
      1, 999, 1_000, 1_001, 99_999_999, 100_000_000, 100_000_001, 1_000_000_000,
      123_456_789_012, 3_600_000_000_000 * 5 + 1, UInt64.max / 2, UInt64.max - 1, UInt64.max,
    ] as [UInt64])
  func encodeRoundTripsWithinRounding(nanos: UInt64) throws {
    let text = GRPCTimeout.encode(nanoseconds: nanos)
    #expect(text.utf8.count <= 9)
    let unit: UInt64 =
      switch text.last {
      case "n": 1
      case "u": 1_000
      case "m": 1_000_000
      case "S": 1_000_000_000
      case "M": 60_000_000_000
      case "H": 3_600_000_000_000
      default: 0
      }
    #expect(unit > 0, "unexpected unit in \(text)")
    let back = try #require(GRPCTimeout.parse(text))
    // Rounded up, never down, and by less than one unit (saturation aside).
    #expect(back >= nanos)
    if back != UInt64.max { #expect(back - nanos < max(unit, 1)) }
  }

  @Test func encodePicksTheFinestUnitThatFits() {
    #expect(GRPCTimeout.encode(nanoseconds: 1_500) == "1500n")
    #expect(GRPCTimeout.encode(nanoseconds: 100_000_000) == "100000u")
    #expect(GRPCTimeout.encode(nanoseconds: 0) == "1n")  // never a zero timeout
    #expect(GRPCTimeout.encode(nanoseconds: UInt64.max) == "5124096H")
  }
}
