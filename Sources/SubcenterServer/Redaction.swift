// PII redaction for credentials without scope `pii` (SPEC §5).

public enum Redaction {
  /// `jane@example.co.uk` → `j***@e***.uk`; `jane@localhost` → `j***@l***`.
  public static func email(_ email: String) -> String {
    guard !email.isEmpty else { return "" }
    guard let at = email.lastIndex(of: "@") else { return "***" }
    let local = email[..<at]
    let domain = email[email.index(after: at)...]
    var out = local.first.map { String($0) } ?? ""
    out += "***@"
    if let d = domain.first { out.append(d) }
    out += "***"
    if let dot = domain.lastIndex(of: ".") { out += domain[dot...] }
    return out
  }

  /// `+14155550123` → `+******0123`.
  public static func phone(_ phone: String) -> String {
    guard !phone.isEmpty else { return "" }
    return "+******" + phone.suffix(4)
  }

  /// `***` and the last four characters; `***` alone for four or fewer.
  public static func anonymousID(_ id: String) -> String {
    guard !id.isEmpty else { return "" }
    return id.count <= 4 ? "***" : "***" + id.suffix(4)
  }
}
