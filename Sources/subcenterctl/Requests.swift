// Request encoding and response printing for subcenterctl's service commands. Requests
// are small, so they are written field by field; responses are unpacked with protobuf-c.

import CProtobufC
import GRPCTransport
import SubcenterProto

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

  /// A PersonRef from `id`, `email:…`, `phone:…` or `anon:…`.
  static func person(_ text: String) -> ProtoWriter {
    var w = ProtoWriter()
    if text.hasPrefix("email:") {
      w.string(2, String(text.dropFirst(6)))
    } else if text.hasPrefix("phone:") {
      w.string(3, String(text.dropFirst(6)))
    } else if text.hasPrefix("anon:") {
      w.string(4, String(text.dropFirst(5)))
    } else {
      w.string(1, text)
    }
    return w
  }
}

/// Renders responses as text.
enum Printer {
  static func str(_ p: UnsafeMutablePointer<CChar>?) -> String {
    p.map { String(cString: $0) } ?? ""
  }

  static func unpacked<T>(
    _ bytes: [UInt8],
    _ unpack: (UnsafeMutablePointer<ProtobufCAllocator>?, Int, UnsafePointer<UInt8>?) ->
      UnsafeMutablePointer<T>?,
    _ body: (T) -> String
  ) -> String {
    guard let m = bytes.withUnsafeBufferPointer({ unpack(nil, $0.count, $0.baseAddress) }) else {
      return "(unparsable response)"
    }
    defer {
      m.withMemoryRebound(to: ProtobufCMessage.self, capacity: 1) {
        protobuf_c_message_free_unpacked($0, nil)
      }
    }
    return body(m.pointee)
  }

  static func profile(_ b: [UInt8]) -> String {
    unpacked(b, subcenter__v1__profile__unpack) { p in
      var anon: [String] = []
      for i in 0..<p.n_anonymous_ids { anon.append(str(p.anonymous_ids[i])) }
      return """
        person_id: \(str(p.person_id))
        email: \(str(p.email))
        phone: \(str(p.phone))
        anonymous_ids: \(anon.joined(separator: ", "))
        created_at: \(p.created_at)  updated_at: \(p.updated_at)\(p.redacted != 0 ? "  (redacted)" : "")
        """
    }
  }

  static let reasons = [
    "UNSPECIFIED", "SUBSCRIBED", "OVERRIDDEN_IMPORTANT", "SUPPRESSED", "UNKNOWN_PERSON",
    "GLOBAL_UNSUBSCRIBED", "CHANNEL_UNSUBSCRIBED", "TOPIC_UNSUBSCRIBED", "TOPIC_NOT_OPTED_IN",
    "MESSAGE_LIMIT_REACHED",
  ]

  static func reason(_ raw: UInt32) -> String {
    Int(raw) < reasons.count ? reasons[Int(raw)] : "\(raw)"
  }

  static func preferences(_ b: [UInt8]) -> String {
    unpacked(b, subcenter__v1__preferences__unpack) { p in
      var out = "person_id: \(str(p.person_id))\n"
      out += "global_unsubscribed: \(p.global_unsubscribed != 0)\n"
      for i in 0..<p.n_entries {
        let e = p.entries[i]!.pointee
        let state = e.state.rawValue == 1 ? "SUBSCRIBED" : "UNSUBSCRIBED"
        out += "entry (\(str(e.channel)), \(str(e.topic))): \(state) source=\(str(e.source))\n"
      }
      for i in 0..<p.n_effective {
        let e = p.effective[i]!.pointee
        out +=
          "effective (\(str(e.channel)), \(str(e.topic))): "
          + "\(e.allowed != 0 ? "allowed" : "denied") \(reason(e.reason.rawValue))\n"
      }
      return out
    }
  }

  static func decision(_ b: [UInt8]) -> String {
    unpacked(b, subcenter__v1__delivery_decision__unpack) { d in
      "\(d.allowed != 0 ? "allowed" : "denied") \(reason(d.reason.rawValue)) person_id=\(str(d.person_id))"
    }
  }

  static func history(_ b: [UInt8]) -> String {
    unpacked(b, subcenter__v1__history_response__unpack) { h in
      var out = ""
      for i in 0..<h.n_entries {
        let e = h.entries[i]!.pointee
        out +=
          "\(e.at) \(str(e.action)) (\(str(e.channel)), \(str(e.topic))) source=\(str(e.source)) "
          + "actor=\(str(e.actor)) \(str(e.detail))\n"
      }
      let next = str(h.next_page_token)
      if !next.isEmpty { out += "next page: \(next)\n" }
      return out
    }
  }

  static func workspace(_ b: [UInt8]) -> String {
    unpacked(b, subcenter__v1__workspace_config__unpack) { w in
      var channels: [String] = []
      for i in 0..<w.n_channels { channels.append(str(w.channels[i])) }
      var out = "workspace: \(str(w.workspace))\nchannels: \(channels.joined(separator: ", "))\n"
      for i in 0..<w.n_topics {
        let t = w.topics[i]!.pointee
        let d = t.default_state.rawValue == 1 ? "SUBSCRIBED" : "UNSUBSCRIBED"
        out += "topic \(str(t.id)): \(str(t.name)) (default \(d))\n"
      }
      for i in 0..<w.n_limits {
        let l = w.limits[i]!.pointee
        out += "limit \(str(l.channel)): \(l.max_messages) per \(l.window_seconds) s\n"
      }
      out += "allow_important_override: \(w.allow_important_override != 0)\n"
      return out
    }
  }

  static func forget(_ b: [UInt8]) -> String {
    unpacked(b, subcenter__v1__forget_response__unpack) { f in
      """
      person_id: \(str(f.person_id))
      erased_at: \(f.erased_at)  erasure_deadline: \(f.erasure_deadline)
      receipt: \(str(f.receipt))
      """
    }
  }
}
