// The grpc-timeout header: 1–8 ASCII digits and a unit (H M S m u n).

public enum GRPCTimeout {
  /// Parses a grpc-timeout value into nanoseconds; nil when malformed.
  public static func parse(_ text: String) -> UInt64? {
    let bytes = Array(text.utf8)
    guard bytes.count >= 2, bytes.count <= 9 else { return nil }
    var value: UInt64 = 0
    for b in bytes.dropLast() {
      guard b >= UInt8(ascii: "0"), b <= UInt8(ascii: "9") else { return nil }
      value = value * 10 + UInt64(b - UInt8(ascii: "0"))
    }
    let perUnit: UInt64
    switch bytes.last! {
    case UInt8(ascii: "H"): perUnit = 3_600_000_000_000
    case UInt8(ascii: "M"): perUnit = 60_000_000_000
    case UInt8(ascii: "S"): perUnit = 1_000_000_000
    case UInt8(ascii: "m"): perUnit = 1_000_000
    case UInt8(ascii: "u"): perUnit = 1_000
    case UInt8(ascii: "n"): perUnit = 1
    default: return nil
    }
    let (r, overflow) = value.multipliedReportingOverflow(by: perUnit)
    return overflow ? UInt64.max : r
  }

  /// Encodes a timeout for the grpc-timeout header, at most 8 digits, rounding up.
  public static func encode(nanoseconds: UInt64) -> String {
    let units: [(UInt64, Character)] = [
      (1, "n"), (1_000, "u"), (1_000_000, "m"), (1_000_000_000, "S"), (60_000_000_000, "M"),
      (3_600_000_000_000, "H"),
    ]
    for (per, unit) in units {
      let v = nanoseconds / per + (nanoseconds % per == 0 ? 0 : 1)  // rounds up, no overflow
      if v <= 99_999_999 { return "\(max(v, 1))\(unit)" }
    }
    return "99999999H"
  }
}
