// Request encoding and text printing for subcenterctl's service commands. Requests are
// small, so they are written field by field; responses arrive as `ProtoMessage`s
// (ProtoValue.swift) and are printed for people here (`--json` prints them as they are).

/// Writes protobuf fields (strings, bools, varints and nested messages).
struct ProtoWriter {
  private(set) var bytes: [UInt8] = []

  mutating func string(_ field: Int, _ value: String) {
    guard !value.isEmpty else { return }
    tag(field, 2)
    varint(UInt64(value.utf8.count))
    bytes += value.utf8
  }

  mutating func bool(_ field: Int, _ value: Bool) {
    guard value else { return }
    tag(field, 0)
    varint(1)
  }

  mutating func int(_ field: Int, _ value: Int64) {
    guard value != 0 else { return }
    tag(field, 0)
    varint(UInt64(bitPattern: value))
  }

  mutating func uint(_ field: Int, _ value: UInt64) {
    guard value != 0 else { return }
    tag(field, 0)
    varint(value)
  }

  mutating func message(_ field: Int, _ m: ProtoWriter) {
    tag(field, 2)
    varint(UInt64(m.bytes.count))
    bytes += m.bytes
  }

  private mutating func tag(_ field: Int, _ wire: Int) { varint(UInt64(field << 3 | wire)) }

  private mutating func varint(_ v: UInt64) {
    var v = v
    while v >= 0x80 {
      bytes.append(UInt8(v & 0x7F) | 0x80)
      v >>= 7
    }
    bytes.append(UInt8(v))
  }

  /// Splits `ID`, `id:…`, `email:…`, `phone:…` or `anon:…` into its kind (the field
  /// number of PersonRef and the IdentifierKind value alike: 1 person id, 2 email, 3 phone,
  /// 4 anonymous id) and value. A word before a colon that is no kind is refused, so a
  /// mistyped `emial:jane@…` is not taken for a person id (a suppression or forget of
  /// nobody, reported as done); a person id holding such a colon is written `id:user:42`.
  static func identifier(_ text: String) throws(UsageError) -> (kind: Int, value: String) {
    let kinds = [("id:", 1), ("email:", 2), ("phone:", 3), ("anon:", 4)]
    for (prefix, kind) in kinds where text.hasPrefix(prefix) {
      guard text.count > prefix.count else {
        throw UsageError("'\(text)' names no \(prefix.dropLast()): give its value after the colon")
      }
      return (kind, String(text.dropFirst(prefix.count)))
    }
    if let colon = text.firstIndex(of: ":"), text[..<colon].allSatisfy(\.isLetter) {
      throw UsageError(
        "'\(text)': unknown kind '\(text[..<colon])' (email:, phone:, anon:, or id: for a "
          + "person id with a colon in it, as id:\(text))")
    }
    return (1, text)
  }

  /// A PersonRef.
  static func person(_ text: String) throws(UsageError) -> ProtoWriter {
    let (kind, value) = try identifier(text)
    var w = ProtoWriter()
    w.string(kind, value)
    return w
  }

  /// An Identifier (for SuppressRequest).
  static func suppressionIdentifier(_ text: String) throws(UsageError) -> ProtoWriter {
    let (kind, value) = try identifier(text)
    var w = ProtoWriter()
    w.int(1, Int64(kind))
    w.string(2, value)
    return w
  }
}

/// Renders responses as text.
enum Printer {
  static func reason(_ m: ProtoMessage) -> String {
    m.enumName("reason", prefix: "DECISION_REASON_")
  }

  static func state(_ m: ProtoMessage) -> String {
    m.enumName("state", prefix: "PREFERENCE_STATE_")
  }

  static func profile(_ p: ProtoMessage) -> String {
    """
    person_id: \(p.text("person_id"))
    email: \(p.text("email"))
    phone: \(p.text("phone"))
    anonymous_ids: \(p.texts("anonymous_ids").joined(separator: ", "))
    created_at: \(p.int("created_at"))  updated_at: \(p.int("updated_at"))\(p.bool("redacted") ? "  (redacted)" : "")
    """
  }

  static func preferences(_ p: ProtoMessage) -> String {
    var out = "person_id: \(p.text("person_id"))\n"
    out += "global_unsubscribed: \(p.bool("global_unsubscribed"))"
    if p.int("global_updated_at") != 0 {
      out += " (at \(p.int("global_updated_at")), source=\(p.text("global_source")))"
    }
    out += "\n"
    for e in p.messages("entries") {
      out += "entry (\(e.text("channel")), \(e.text("topic"))): \(state(e)) "
      out += "source=\(e.text("source"))"
      if !e.text("notice_version").isEmpty { out += " notice=\(e.text("notice_version"))" }
      out += "\n"
    }
    for e in p.messages("effective") {
      out +=
        "effective (\(e.text("channel")), \(e.text("topic"))): "
        + "\(e.bool("allowed") ? "allowed" : "denied") \(reason(e))\n"
    }
    return out
  }

  static func decision(_ d: ProtoMessage) -> String {
    "\(d.bool("allowed") ? "allowed" : "denied") \(reason(d)) person_id=\(d.text("person_id"))"
  }

  /// One line per person, in request order: the PERSON operand, then the decision.
  static func batch(_ b: ProtoMessage, persons: [String]) -> String {
    b.messages("decisions").enumerated().map { i, d in
      "\(i < persons.count ? persons[i] : "#\(i)"): \(decision(d))"
    }.joined(separator: "\n")
  }

  static func history(_ h: ProtoMessage) -> String {
    var out = ""
    for e in h.messages("entries") {
      out +=
        "\(e.int("at")) \(e.text("action")) (\(e.text("channel")), \(e.text("topic"))) "
        + "source=\(e.text("source")) actor=\(e.text("actor")) \(e.text("detail"))\n"
    }
    let next = h.text("next_page_token")
    if !next.isEmpty { out += "next page: \(next)\n" }
    return out
  }

  static func workspace(_ w: ProtoMessage) -> String {
    var out = "workspace: \(w.text("workspace"))\n"
    out += "channels: \(w.texts("channels").joined(separator: ", "))\n"
    for t in w.messages("topics") {
      out +=
        "topic \(t.text("id")): \(t.text("name")) "
        + "(default \(t.enumName("default_state", prefix: "TOPIC_DEFAULT_")))\n"
    }
    for l in w.messages("limits") {
      out +=
        "limit \(l.text("channel")): \(l.int("max_messages")) per "
        + "\(l.int("window_seconds")) s\n"
    }
    out += "allow_important_override: \(w.bool("allow_important_override"))\n"
    return out
  }

  static func forget(_ f: ProtoMessage) -> String {
    """
    person_id: \(f.text("person_id"))
    erased_at: \(f.int("erased_at"))  erasure_deadline: \(f.int("erasure_deadline"))
    receipt: \(f.text("receipt"))
    """
  }

  static func suppress(_ r: ProtoMessage, removed: Bool) -> String {
    let forgotten = r.texts("forgotten_person_ids").joined(separator: ", ")
    return
      "\(removed ? "unsuppressed" : "suppressed"): \(r.int("suppressed"))\n"
      + "forgotten_person_ids: \(forgotten)"
  }

  /// One line per change event.
  static func event(_ e: ProtoMessage) -> String {
    var out = "seq \(e.int("seq")) at \(e.int("at")) \(e.text("action"))"
    out += " person_id=\(e.text("person_id"))"
    if !e.text("anonymous_id").isEmpty { out += " anonymous_id=\(e.text("anonymous_id"))" }
    if !e.text("channel").isEmpty || !e.text("topic").isEmpty {
      out += " (\(e.text("channel")), \(e.text("topic")))"
    }
    let s = state(e)
    if s != "UNSPECIFIED" { out += " \(s)" }
    if !e.text("source").isEmpty { out += " source=\(e.text("source"))" }
    return out
  }
}
