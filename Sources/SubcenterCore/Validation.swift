// Field validation and identifier normalization (SPEC §1, §3). Each check names the field
// as the proto does and returns the normalized value; a refused request changes nothing.
//
// Strings arrive as Swift `String`s, which are always valid UTF-8: the server refuses
// invalid UTF-8 when it turns protobuf bytes into a `String` (`String(validating:as:)`).

/// Limits of SPEC §1 and §3, in UTF-8 bytes unless said otherwise.
public enum Limits {
  public static let idBytes = 64
  public static let personIDBytes = 256
  public static let anonymousIDBytes = 256
  public static let emailBytes = 254
  public static let sourceBytes = 128
  public static let noticeVersionBytes = 128
  public static let justificationBytes = 1024
  public static let messageIDBytes = 256
  public static let suppressReasonBytes = 256
  public static let topicNameBytes = 256
  public static let topicDescriptionBytes = 4096
  public static let maxWindowSeconds: Int64 = 31_536_000
  /// Persons in one CheckDeliveryBatch.
  public static let batchPersons = 10_000
  /// Identifiers in one SuppressIdentifiers or UnsuppressIdentifiers call (each may forget
  /// a person: one call is one log record and one step of the store).
  public static let suppressIdentifiers = 10_000
  /// GetHistory page size when the request says 0, and the largest allowed.
  public static let defaultPageSize = 100
  public static let maxPageSize = 1000
}

/// Validation of single fields. Every function throws `invalidArgument` naming `field`.
public enum Validate {
  /// A workspace id: `[a-z0-9_-]{1,64}`.
  public static func workspaceID(_ s: String, field: String = "workspace") throws(CoreError) {
    try id(s, field: field, allowDot: false)
  }

  /// A channel or topic id: `[a-z0-9_.-]{1,64}`.
  public static func channelOrTopicID(_ s: String, field: String) throws(CoreError) {
    try id(s, field: field, allowDot: true)
  }

  private static func id(_ s: String, field: String, allowDot: Bool) throws(CoreError) {
    let n = s.utf8.count
    guard n >= 1 else { throw .invalidArgument(field, "must not be empty") }
    guard n <= Limits.idBytes else {
      throw .invalidArgument(field, "longer than \(Limits.idBytes) bytes")
    }
    for b in s.utf8 {
      switch b {
      case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
        UInt8(ascii: "_"), UInt8(ascii: "-"):
        continue
      case UInt8(ascii: ".") where allowDot:
        continue
      default:
        let allowed = allowDot ? "[a-z0-9_.-]" : "[a-z0-9_-]"
        throw .invalidArgument(field, "may only contain \(allowed)")
      }
    }
  }

  /// A person id: 1–256 bytes without control characters (C0, DEL, C1).
  public static func personID(_ s: String, field: String = "person_id") throws(CoreError) {
    try opaqueID(s, max: Limits.personIDBytes, field: field)
  }

  /// An anonymous id: 1–256 bytes without control characters.
  public static func anonymousID(_ s: String, field: String = "anonymous_id") throws(CoreError) {
    try opaqueID(s, max: Limits.anonymousIDBytes, field: field)
  }

  /// An override's message id: 1–256 bytes without control characters (an id, and part of
  /// the history entry's `detail`, which a line break or escape sequence would garble).
  public static func messageID(_ s: String, field: String = "message_id") throws(CoreError) {
    try opaqueID(s, max: Limits.messageIDBytes, field: field)
  }

  private static func opaqueID(_ s: String, max: Int, field: String) throws(CoreError) {
    let n = s.utf8.count
    guard n >= 1 else { throw .invalidArgument(field, "must not be empty") }
    guard n <= max else { throw .invalidArgument(field, "longer than \(max) bytes") }
    guard !containsControl(s) else {
      throw .invalidArgument(field, "must not contain control characters")
    }
  }

  /// True if `s` holds a C0 control, DEL or a C1 control character.
  public static func containsControl(_ s: String) -> Bool {
    func scan(_ bytes: UnsafeBufferPointer<UInt8>) -> Bool {
      // C1 controls (U+0080–U+009F) are encoded as C2 80 … C2 9F.
      var previous: UInt8 = 0
      for b in bytes {
        if b < 0x20 || b == 0x7F || (previous == 0xC2 && b <= 0x9F && b >= 0x80) { return true }
        previous = b
      }
      return false
    }
    // In place where the string has its bytes together (a copy for `withUTF8` is a retain
    // and release).
    if let found = s.utf8.withContiguousStorageIfAvailable(scan) { return found }
    var s = s
    return s.withUTF8(scan)
  }

  /// Normalizes an email: trimmed of whitespace, lower-cased; then at most 254 bytes,
  /// exactly one `@` with text on each side, no whitespace or control character inside.
  /// Format characters (U+200C/U+200D joiners, which Persian words and emoji sequences
  /// need) are kept: refusing them refused look-ups of addresses already stored.
  public static func email(_ raw: String, field: String = "email") throws(CoreError) -> String {
    var raw = raw
    // ASCII (the usual case): trim and lower-case bytes, keeping `raw` when it is already
    // normalized. Anything else goes through Unicode trimming and lower-casing.
    let ascii: String?? = raw.withUTF8 { b in
      guard b.allSatisfy({ $0 < 0x80 }) else { return .none }
      var lo = 0
      var hi = b.count
      while lo < hi && isASCIIWhitespace(b[lo]) { lo += 1 }
      while hi > lo && isASCIIWhitespace(b[hi - 1]) { hi -= 1 }
      let upper = b[lo..<hi].contains { $0 >= UInt8(ascii: "A") && $0 <= UInt8(ascii: "Z") }
      if !upper && lo == 0 && hi == b.count { return .some(nil) }
      return .some(
        String(
          decoding: b[lo..<hi].map {
            $0 >= UInt8(ascii: "A") && $0 <= UInt8(ascii: "Z") ? $0 | 0x20 : $0
          }, as: UTF8.self))
    }
    var s: String
    switch ascii {
    case .some(.some(let normalized)): s = normalized
    case .some(.none): s = raw
    case .none: s = trimWhitespace(raw).lowercased()
    }
    let n = s.utf8.count
    guard n >= 1 else { throw .invalidArgument(field, "must not be empty") }
    guard n <= Limits.emailBytes else {
      throw .invalidArgument(field, "longer than \(Limits.emailBytes) bytes")
    }
    let problem: String? = s.withUTF8 { b in
      var ats = 0
      var atIndex = 0
      for (i, c) in b.enumerated() where c == UInt8(ascii: "@") {
        ats += 1
        atIndex = i
      }
      guard ats == 1 else { return "must contain exactly one '@'" }
      guard atIndex > 0, atIndex < n - 1 else { return "needs text on both sides of '@'" }
      if b.contains(where: isASCIIWhitespace) { return "must not contain whitespace" }
      return nil
    }
    if let problem { throw .invalidArgument(field, problem) }
    if n != s.unicodeScalars.count  // non-ASCII: Unicode whitespace too
      && s.unicodeScalars.contains(where: { $0.properties.isWhitespace })
    {
      throw .invalidArgument(field, "must not contain whitespace")
    }
    guard !containsControl(s) else {
      throw .invalidArgument(field, "must not contain control characters")
    }
    return s
  }

  @inline(__always)
  static func isASCIIWhitespace(_ b: UInt8) -> Bool { b == 0x20 || (b >= 0x09 && b <= 0x0D) }

  /// A phone number in E.164 exactly: `+` and 8–15 digits (not normalized).
  public static func phone(_ s: String, field: String = "phone") throws(CoreError) {
    let u = s.utf8
    guard u.first == UInt8(ascii: "+") else {
      throw .invalidArgument(field, "must be E.164: '+' and 8-15 digits")
    }
    let digits = u.count - 1
    guard (8...15).contains(digits),
      u.dropFirst().allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") })
    else { throw .invalidArgument(field, "must be E.164: '+' and 8-15 digits") }
  }

  /// At most `max` bytes (empty allowed).
  public static func maxBytes(_ s: String, _ max: Int, field: String) throws(CoreError) {
    guard s.utf8.count <= max else { throw .invalidArgument(field, "longer than \(max) bytes") }
  }

  /// Between 1 and `max` bytes.
  public static func requiredBytes(_ s: String, _ max: Int, field: String) throws(CoreError) {
    guard !s.isEmpty else { throw .invalidArgument(field, "must not be empty") }
    try maxBytes(s, max, field: field)
  }

  static func trimWhitespace(_ s: String) -> String {
    let scalars = s.unicodeScalars
    guard let first = scalars.firstIndex(where: { !$0.properties.isWhitespace }) else {
      return ""
    }
    let last = scalars.lastIndex(where: { !$0.properties.isWhitespace })!
    return String(scalars[first...last])
  }
}
