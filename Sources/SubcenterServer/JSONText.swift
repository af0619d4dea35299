// JSON text the server and subcenterctl write by hand (erasure receipts, tokens-file lines,
// `--json` output): one string quoting for all of them.

/// JSON string literals.
public enum JSONText {
  /// `s` as a JSON string literal: quotes and backslashes escaped, control characters
  /// (C0 and DEL) as `\u00XX`, everything else as is (UTF-8).
  public static func quoted(_ s: String) -> String {
    var out = ""
    append(s, to: &out)
    return out
  }

  /// Appends `s` as a JSON string literal to `out`.
  public static func append(_ s: String, to out: inout String) {
    out += "\""
    for u in s.unicodeScalars {
      switch u {
      case "\"": out += "\\\""
      case "\\": out += "\\\\"
      case _ where u.value < 0x20 || u.value == 0x7F:
        let hex = String(u.value, radix: 16, uppercase: true)
        out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
      default: out.unicodeScalars.append(u)
      }
    }
    out += "\""
  }
}
