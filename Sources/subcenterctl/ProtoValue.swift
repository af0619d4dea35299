// Responses as plain Swift values: one walker reads any message protobuf-c unpacked, field
// by field through its `ProtobufCMessageDescriptor`, into a `ProtoMessage` (names as in the
// .proto, every field present, enums by value name). The `--json` printer and the text
// printers work on that value; the unsafe pointer reads of subcenterctl all live here.

import CProtobufC
import GRPCTransport
import SubcenterServer

/// One field's value, in .proto terms.
enum ProtoValue {
  case string(String)
  case bytes([UInt8])
  case bool(Bool)
  case int(Int64)
  case uint(UInt64)
  case double(Double)
  /// The value's name from the enum descriptor (nil for a number the enum lacks).
  case enumeration(name: String?, number: Int32)
  case message(ProtoMessage)
  case list([ProtoValue])
}

/// A decoded message: its fields in tag order, defaults included.
struct ProtoMessage {
  var fields: [(name: String, value: ProtoValue)] = []

  subscript(_ name: String) -> ProtoValue? { fields.first { $0.name == name }?.value }

  /// A string field for a terminal: control characters (C0, DEL, C1) shown escaped as
  /// `\u{1B}`, so a stored value cannot move the cursor or fake a line of output.
  func text(_ name: String) -> String {
    if case .string(let s)? = self[name] { return Self.printable(s) }
    return ""
  }

  func bool(_ name: String) -> Bool {
    if case .bool(let b)? = self[name] { return b }
    return false
  }

  /// An integer field of any width, signed or not.
  func int(_ name: String) -> Int64 {
    switch self[name] {
    case .int(let v)?: return v
    case .uint(let v)?: return Int64(truncatingIfNeeded: v)
    default: return 0
    }
  }

  /// An enum field's value name without the enum's prefix (`DECISION_REASON_SUBSCRIBED` →
  /// `SUBSCRIBED` for `prefix` "DECISION_REASON_"), or its number when it has no name.
  func enumName(_ name: String, prefix: String) -> String {
    guard case .enumeration(let n, let number)? = self[name] else { return "" }
    guard let n else { return "\(number)" }
    return n.hasPrefix(prefix) ? String(n.dropFirst(prefix.count)) : n
  }

  func list(_ name: String) -> [ProtoValue] {
    if case .list(let l)? = self[name] { return l }
    return []
  }

  /// A repeated string field, each as `text` shows it.
  func texts(_ name: String) -> [String] {
    list(name).compactMap {
      if case .string(let s) = $0 { return Self.printable(s) }
      return nil
    }
  }

  static func printable(_ s: String) -> String {
    func isControl(_ u: Unicode.Scalar) -> Bool {
      u.value < 0x20 || (0x7F...0x9F).contains(u.value)
    }
    guard s.unicodeScalars.contains(where: isControl) else { return s }
    var out = ""
    for u in s.unicodeScalars {
      if isControl(u) {
        out += "\\u{" + String(u.value, radix: 16, uppercase: true) + "}"
      } else {
        out.unicodeScalars.append(u)
      }
    }
    return out
  }

  func messages(_ name: String) -> [ProtoMessage] {
    list(name).compactMap {
      if case .message(let m) = $0 { return m }
      return nil
    }
  }
}

extension ProtoMessage {
  /// A decoder for one message type, from its generated `..._unpack` function.
  static func decoder<T>(
    _ unpack:
      @escaping (UnsafeMutablePointer<ProtobufCAllocator>?, Int, UnsafePointer<UInt8>?) ->
      UnsafeMutablePointer<T>?
  ) -> ([UInt8]) -> ProtoMessage? {
    { bytes in
      guard let m = bytes.withUnsafeBufferPointer({ unpack(nil, $0.count, $0.baseAddress) }) else {
        return nil
      }
      return m.withMemoryRebound(to: ProtobufCMessage.self, capacity: 1) { message in
        defer { protobuf_c_message_free_unpacked(message, nil) }
        return ProtoMessage(unpacked: UnsafeRawPointer(message))
      }
    }
  }

  /// Reads an unpacked message whose first member is its `ProtobufCMessage` header.
  private init(unpacked message: UnsafeRawPointer) {
    let descriptor = message.load(as: ProtobufCMessage.self).descriptor.pointee
    for i in 0..<Int(descriptor.n_fields) {
      let f = descriptor.fields[i]
      let name = String(cString: f.name)
      if f.flags & PROTOBUF_C_FIELD_FLAG_ONEOF.rawValue != 0 {
        // A oneof member is present only when the oneof's case names it.
        let chosen = message.load(fromByteOffset: Int(f.quantifier_offset), as: UInt32.self)
        guard chosen == f.id else { continue }
      }
      if f.label == PROTOBUF_C_LABEL_REPEATED {
        let count = message.load(fromByteOffset: Int(f.quantifier_offset), as: Int.self)
        let array = message.load(fromByteOffset: Int(f.offset), as: UnsafeRawPointer?.self)
        var items: [ProtoValue] = []
        if let array {
          let stride = Self.stride(f.type)
          for j in 0..<count { items.append(Self.value(f, at: array + j * stride)) }
        }
        fields.append((name, .list(items)))
      } else {
        fields.append((name, Self.value(f, at: message + Int(f.offset))))
      }
    }
  }

  /// Bytes per element of a repeated field of `type`.
  private static func stride(_ type: ProtobufCType) -> Int {
    switch type {
    case PROTOBUF_C_TYPE_INT64, PROTOBUF_C_TYPE_SINT64, PROTOBUF_C_TYPE_SFIXED64,
      PROTOBUF_C_TYPE_UINT64, PROTOBUF_C_TYPE_FIXED64, PROTOBUF_C_TYPE_DOUBLE:
      return 8
    case PROTOBUF_C_TYPE_STRING, PROTOBUF_C_TYPE_MESSAGE:
      return MemoryLayout<UnsafeRawPointer?>.stride
    case PROTOBUF_C_TYPE_BYTES: return MemoryLayout<ProtobufCBinaryData>.stride
    default: return 4  // int32 kinds, float, enum, protobuf_c_boolean
    }
  }

  /// The value of field `f` stored at `p`.
  private static func value(_ f: ProtobufCFieldDescriptor, at p: UnsafeRawPointer) -> ProtoValue {
    switch f.type {
    case PROTOBUF_C_TYPE_INT32, PROTOBUF_C_TYPE_SINT32, PROTOBUF_C_TYPE_SFIXED32:
      return .int(Int64(p.load(as: Int32.self)))
    case PROTOBUF_C_TYPE_INT64, PROTOBUF_C_TYPE_SINT64, PROTOBUF_C_TYPE_SFIXED64:
      return .int(p.load(as: Int64.self))
    case PROTOBUF_C_TYPE_UINT32, PROTOBUF_C_TYPE_FIXED32:
      return .uint(UInt64(p.load(as: UInt32.self)))
    case PROTOBUF_C_TYPE_UINT64, PROTOBUF_C_TYPE_FIXED64:
      return .uint(p.load(as: UInt64.self))
    case PROTOBUF_C_TYPE_FLOAT: return .double(Double(p.load(as: Float.self)))
    case PROTOBUF_C_TYPE_DOUBLE: return .double(p.load(as: Double.self))
    case PROTOBUF_C_TYPE_BOOL: return .bool(p.load(as: protobuf_c_boolean.self) != 0)
    case PROTOBUF_C_TYPE_ENUM:
      let number = p.load(as: Int32.self)
      let named = f.descriptor.flatMap {
        protobuf_c_enum_descriptor_get_value(
          $0.assumingMemoryBound(to: ProtobufCEnumDescriptor.self), number)
      }
      return .enumeration(name: named.map { String(cString: $0.pointee.name) }, number: number)
    case PROTOBUF_C_TYPE_STRING:
      return .string(p.load(as: UnsafePointer<CChar>?.self).map { String(cString: $0) } ?? "")
    case PROTOBUF_C_TYPE_BYTES:
      let b = p.load(as: ProtobufCBinaryData.self)
      return .bytes(b.data.map { Array(UnsafeBufferPointer(start: $0, count: b.len)) } ?? [])
    case PROTOBUF_C_TYPE_MESSAGE:
      if let sub = p.load(as: UnsafeRawPointer?.self) {
        return .message(ProtoMessage(unpacked: sub))
      }
      // Unset: the type's defaults, read from an instance unpacked from zero bytes.
      let type = f.descriptor.assumingMemoryBound(to: ProtobufCMessageDescriptor.self)
      guard let empty = protobuf_c_message_unpack(type, nil, 0, nil) else {
        return .message(ProtoMessage())
      }
      defer { protobuf_c_message_free_unpacked(empty, nil) }
      return .message(ProtoMessage(unpacked: UnsafeRawPointer(empty)))
    default:
      preconditionFailure("protobuf-c field type \(f.type.rawValue) unknown to this printer")
    }
  }
}

// MARK: - JSON

extension ProtoMessage {
  /// The message as one line of JSON: keys as in the .proto, 64-bit integers as numbers,
  /// enums by name, bytes as base64.
  var json: String {
    var out = ""
    ProtoValue.message(self).writeJSON(to: &out)
    return out
  }
}

extension ProtoValue {
  func writeJSON(to out: inout String) {
    switch self {
    case .string(let s): JSONText.append(s, to: &out)
    case .bytes(let b): JSONText.append(Base64.encode(b), to: &out)
    case .bool(let b): out += b ? "true" : "false"
    case .int(let v): out += String(v)
    case .uint(let v): out += String(v)
    case .double(let v):
      if v.isFinite {
        out += "\(v)"
      } else {
        JSONText.append(v.isNaN ? "NaN" : v > 0 ? "Infinity" : "-Infinity", to: &out)
      }
    case .enumeration(let name, let number):
      if let name { JSONText.append(name, to: &out) } else { out += String(number) }
    case .message(let m):
      out += "{"
      for (i, f) in m.fields.enumerated() {
        if i > 0 { out += ", " }
        JSONText.append(f.name, to: &out)
        out += ": "
        f.value.writeJSON(to: &out)
      }
      out += "}"
    case .list(let items):
      out += "["
      for (i, v) in items.enumerated() {
        if i > 0 { out += ", " }
        v.writeJSON(to: &out)
      }
      out += "]"
    }
  }
}
