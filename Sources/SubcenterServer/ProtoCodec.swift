// The one place that touches protobuf-c for the service: unpacking requests into Swift
// values and packing responses from them. C strings and arrays for a response live in a
// `ProtoArena` freed after packing.

import CProtobufC
import GRPCTransport
import Glibc
import SubcenterProto

/// Allocations that back one protobuf-c message while it is packed.
final class ProtoArena {
  private var blocks: [UnsafeMutableRawPointer] = []

  deinit { for b in blocks { b.deallocate() } }

  /// A NUL-terminated copy of `s`.
  func cString(_ s: String) -> UnsafeMutablePointer<CChar> {
    let utf8 = Array(s.utf8)
    let p = UnsafeMutablePointer<CChar>.allocate(capacity: utf8.count + 1)
    utf8.withUnsafeBufferPointer { b in
      for i in 0..<b.count { p[i] = CChar(bitPattern: b[i]) }
    }
    p[utf8.count] = 0
    blocks.append(UnsafeMutableRawPointer(p))
    return p
  }

  /// Uninitialized storage for `count` values (the caller initializes every one).
  func allocate<T>(_ type: T.Type, count: Int) -> UnsafeMutablePointer<T> {
    let p = UnsafeMutablePointer<T>.allocate(capacity: max(count, 1))
    blocks.append(UnsafeMutableRawPointer(p))
    return p
  }

  /// One value, initialized by `initialize` (a generated `..._init`).
  func make<T>(_ initialize: (UnsafeMutablePointer<T>) -> Void) -> UnsafeMutablePointer<T> {
    let p = allocate(T.self, count: 1)
    initialize(p)
    return p
  }

  /// An array of pointers to messages built by `build`.
  func messages<T, E>(_ items: [E], _ build: (E) -> UnsafeMutablePointer<T>)
    -> UnsafeMutablePointer<UnsafeMutablePointer<T>?>
  {
    let p = allocate(UnsafeMutablePointer<T>?.self, count: items.count)
    for (i, e) in items.enumerated() { (p + i).initialize(to: build(e)) }
    return p
  }

  /// An array of C strings.
  func strings(_ items: [String]) -> UnsafeMutablePointer<UnsafeMutablePointer<CChar>?> {
    let p = allocate(UnsafeMutablePointer<CChar>?.self, count: items.count)
    for (i, s) in items.enumerated() { (p + i).initialize(to: cString(s)) }
    return p
  }
}

enum ProtoCodec {
  /// Unpacks `bytes` with a generated `..._unpack`, hands the message to `body`, frees it.
  /// Unparsable bytes are INTERNAL, as gRPC asks.
  static func withUnpacked<T, R>(
    _ bytes: [UInt8],
    _ unpack: (UnsafeMutablePointer<ProtobufCAllocator>?, Int, UnsafePointer<UInt8>?) ->
      UnsafeMutablePointer<T>?,
    _ body: (UnsafeMutablePointer<T>) throws -> R
  ) throws -> R {
    let message = bytes.withUnsafeBufferPointer { unpack(nil, $0.count, $0.baseAddress) }
    guard let message else { throw RPCStatus(.internal, "could not parse the request message") }
    defer {
      message.withMemoryRebound(to: ProtobufCMessage.self, capacity: 1) {
        protobuf_c_message_free_unpacked($0, nil)
      }
    }
    return try body(message)
  }

  /// Refuses a request whose string fields hold a NUL byte, by walking the wire bytes
  /// with the message's descriptor. protobuf-c hands strings over as C strings, so an
  /// embedded NUL would otherwise silently cut the value short. (UTF-8 is checked when
  /// the fields become Swift strings.)
  static func checkStrings(
    _ bytes: UnsafeBufferPointer<UInt8>, _ descriptor: UnsafePointer<ProtobufCMessageDescriptor>,
    path: String = ""
  ) throws(RPCStatus) {
    var r = WireReader(UnsafeRawBufferPointer(bytes))
    let d = descriptor.pointee
    var seen: [Int] = []  // per field of a repeated one, the elements read so far
    while !r.atEnd {
      let (number, wire) = try r.key()
      guard wire == 2 else {
        try r.skip(wire)
        continue
      }
      let value = try r.lengthDelimited().bindMemory(to: UInt8.self)
      var k = 0
      while k < Int(d.n_fields) && d.fields[k].id != UInt32(truncatingIfNeeded: number) { k += 1 }
      guard k < Int(d.n_fields) else { continue }
      let f = d.fields[k]
      // The field as the error names it: `persons[2]` for an element of a repeated one.
      var index: Int?
      if f.label == PROTOBUF_C_LABEL_REPEATED {
        if seen.isEmpty { seen = Array(repeating: 0, count: Int(d.n_fields)) }
        index = seen[k]
        seen[k] += 1
      }
      func name() -> String { path + String(cString: f.name) + (index.map { "[\($0)]" } ?? "") }
      if f.type == PROTOBUF_C_TYPE_STRING {
        if !value.isEmpty, memchr(value.baseAddress!, 0, value.count) != nil {
          throw RPCStatus(.invalidArgument, "\(name()): must not contain a NUL character")
        }
      } else if f.type == PROTOBUF_C_TYPE_MESSAGE, let sub = f.descriptor {
        try checkStrings(
          value, sub.assumingMemoryBound(to: ProtobufCMessageDescriptor.self), path: name() + ".")
      }
    }
  }

  /// Packs a message whose first member is its `ProtobufCMessage base`.
  static func pack<T>(_ message: UnsafeMutablePointer<T>) -> [UInt8] {
    message.withMemoryRebound(to: ProtobufCMessage.self, capacity: 1) { m in
      let size = protobuf_c_message_get_packed_size(m)
      return [UInt8](unsafeUninitializedCapacity: size) { buf, n in
        n = protobuf_c_message_pack(m, buf.baseAddress)
      }
    }
  }

  /// A C string field as Swift (empty when NULL).
  static func string(_ p: UnsafeMutablePointer<CChar>?) -> String {
    guard let p else { return "" }
    return String(cString: p)
  }

  /// A repeated string field.
  static func strings(_ p: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?, _ n: Int)
    -> [String]
  {
    guard let p else { return [] }
    return (0..<n).map { string(p[$0]) }
  }
}
