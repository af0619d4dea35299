// A direct protobuf reader for the hottest requests, DeliveryRequest and
// PreferenceRequest, so CheckDelivery, Subscribe and Unsubscribe need no protobuf-c
// allocations. Same rules as ProtoMapping: strings must be UTF-8
// without NUL (INVALID_ARGUMENT naming the field); malformed bytes are INTERNAL.

import GRPCTransport
import SubcenterCore

struct WireReader {
  private let bytes: UnsafeRawBufferPointer
  private var i = 0

  init(_ bytes: UnsafeRawBufferPointer) { self.bytes = bytes }

  var atEnd: Bool { i >= bytes.count }

  static let malformed = RPCStatus(.internal, "could not parse the request message")

  /// A varint: of one byte inline (keys and short lengths, nearly all), else `longVarint`.
  @inline(__always)
  mutating func varint() throws(RPCStatus) -> UInt64 {
    if i < bytes.count, bytes[i] < 0x80 {
      i += 1
      return UInt64(bytes[i - 1])
    }
    return try longVarint()
  }

  private mutating func longVarint() throws(RPCStatus) -> UInt64 {
    var v: UInt64 = 0
    var shift: UInt64 = 0
    while i < bytes.count, shift < 64 {
      let b = bytes[i]
      i += 1
      v |= UInt64(b & 0x7F) << shift
      if b < 0x80 { return v }
      shift += 7
    }
    throw Self.malformed
  }

  /// The next field's number and wire type.
  mutating func key() throws(RPCStatus) -> (field: Int, wire: UInt64) {
    let k = try varint()
    return (Int(k >> 3), k & 7)
  }

  mutating func lengthDelimited() throws(RPCStatus) -> UnsafeRawBufferPointer {
    let n = try varint()
    guard n <= UInt64(bytes.count - i) else { throw Self.malformed }
    let slice = UnsafeRawBufferPointer(start: bytes.baseAddress! + i, count: Int(n))
    i += Int(n)
    return slice
  }

  mutating func string(_ field: @autoclosure () -> String) throws(RPCStatus) -> String {
    let b = try lengthDelimited().bindMemory(to: UInt8.self)
    var ascii = true
    for byte in b {
      if byte == 0 {
        throw RPCStatus(.invalidArgument, "\(field()): must not contain a NUL character")
      }
      if byte >= 0x80 { ascii = false }
    }
    // ASCII is valid UTF-8: copied in place (a string of up to 15 bytes is stored inline).
    // The initializer still validates what it was given (~110 instructions a string), but
    // measured cheaper than `String(decoding:)`'s repairing path (~170).
    if ascii {
      return String(unsafeUninitializedCapacity: b.count) { $0.initialize(fromContentsOf: b) }
    }
    guard let s = String(validating: b, as: UTF8.self) else {
      throw RPCStatus(.invalidArgument, "\(field()): not valid UTF-8")
    }
    return s
  }

  mutating func skip(_ wire: UInt64) throws(RPCStatus) {
    switch wire {
    case 0: _ = try varint()
    case 1: i += 8
    case 2: _ = try lengthDelimited()
    case 5: i += 4
    default: throw Self.malformed
    }
    guard i <= bytes.count else { throw Self.malformed }
  }

  /// A PersonRef message (the last oneof member set wins, as protobuf says).
  static func personRef(_ b: UnsafeRawBufferPointer, field: String) throws(RPCStatus) -> PersonRef?
  {
    var r = WireReader(b)
    var ref: PersonRef?
    while !r.atEnd {
      let k = try r.key()
      guard k.wire == 2, (1...4).contains(k.field) else {
        try r.skip(k.wire)
        continue
      }
      switch k.field {
      case 1: ref = .personID(try r.string("\(field).person_id"))
      case 2: ref = .email(try r.string("\(field).email"))
      case 3: ref = .phone(try r.string("\(field).phone"))
      default: ref = .anonymousID(try r.string("\(field).anonymous_id"))
      }
    }
    return ref
  }

  /// Runs `body` on a reader of `bytes`.
  private static func read<T>(
    _ bytes: [UInt8], _ body: (inout WireReader) throws(RPCStatus) -> T
  ) throws(RPCStatus) -> T {
    let result = bytes.withUnsafeBytes { raw in
      Result { () throws(RPCStatus) -> T in
        var r = WireReader(raw)
        return try body(&r)
      }
    }
    return try result.get()
  }

  /// subcenter.v1.DeliveryRequest.
  static func deliveryRequest(_ bytes: [UInt8]) throws(RPCStatus) -> DeliveryRequest {
    try read(bytes) { (r) throws(RPCStatus) in
      var req = DeliveryRequest(workspace: "", person: nil, channel: "")
      while !r.atEnd {
        let k = try r.key()
        switch (k.field, k.wire) {
        case (1, 2): req.workspace = try r.string("workspace")
        case (2, 2): req.person = try personRef(try r.lengthDelimited(), field: "person")
        case (3, 2): req.channel = try r.string("channel")
        case (4, 2): req.topic = try r.string("topic")
        case (5, 0): req.recordSend = try r.varint() != 0
        default: try r.skip(k.wire)
        }
      }
      return req
    }
  }

  /// subcenter.v1.PreferenceRequest (Subscribe, Unsubscribe).
  static func preferenceRequest(_ bytes: [UInt8]) throws(RPCStatus) -> PreferenceRequest {
    try read(bytes) { (r) throws(RPCStatus) in
      var req = PreferenceRequest(workspace: "", person: nil)
      while !r.atEnd {
        let k = try r.key()
        switch (k.field, k.wire) {
        case (1, 2): req.workspace = try r.string("workspace")
        case (2, 2): req.person = try personRef(try r.lengthDelimited(), field: "person")
        case (3, 2): req.channel = try r.string("channel")
        case (4, 2): req.topic = try r.string("topic")
        case (5, 2): req.source = try r.string("source")
        case (6, 2): req.noticeVersion = try r.string("notice_version")
        default: try r.skip(k.wire)
        }
      }
      return req
    }
  }
}
