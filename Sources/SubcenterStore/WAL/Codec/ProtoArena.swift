// Memory for protobuf-c messages being packed, and reading their fields back as Swift
// values. With LogRecordCodec.swift and SnapshotRecordCodec.swift, the only files of the
// store that see protobuf-c and unsafe pointers.

import CProtobufC
import SubcenterCore

/// Allocations that back one protobuf-c message while it is packed: a bump allocator over
/// blocks freed together when the arena goes away. One thread.
final class ProtoArena {
  private var blocks: [UnsafeMutableRawPointer] = []
  private var cursor: UnsafeMutableRawPointer?
  private var remaining = 0
  private static let blockSize = 4096

  deinit { for b in blocks { b.deallocate() } }

  /// `count` bytes aligned to 16.
  func allocate(bytes count: Int) -> UnsafeMutableRawPointer {
    let size = (max(count, 1) + 15) & ~15
    if size > remaining {
      if size > Self.blockSize / 4 {
        let big = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 16)
        blocks.append(big)
        return big
      }
      let block = UnsafeMutableRawPointer.allocate(byteCount: Self.blockSize, alignment: 16)
      blocks.append(block)
      cursor = block
      remaining = Self.blockSize
    }
    let p = cursor!
    cursor = p + size
    remaining -= size
    return p
  }

  /// Uninitialized storage for `count` values of `T` (the caller initializes them).
  func allocate<T>(_ type: T.Type, count: Int) -> UnsafeMutablePointer<T> {
    precondition(MemoryLayout<T>.alignment <= 16)
    return allocate(bytes: MemoryLayout<T>.stride * count).bindMemory(to: T.self, capacity: count)
  }

  /// One message, initialized by its generated `..._init`.
  func make<T>(_ initialize: (UnsafeMutablePointer<T>?) -> Void) -> UnsafeMutablePointer<T> {
    let p = allocate(T.self, count: 1)
    initialize(p)
    return p
  }

  /// A NUL-terminated copy of `s`. Only for identifiers Core validates to hold no control
  /// character: a NUL would end the C string early.
  func cString(_ s: String) -> UnsafeMutablePointer<CChar> {
    var s = s
    return s.withUTF8 { u in
      assert(!u.contains(0), "a stored identifier holds NUL")
      let p = allocate(CChar.self, count: u.count + 1)
      if u.count > 0 {
        UnsafeMutableRawPointer(p).copyMemory(from: u.baseAddress!, byteCount: u.count)
      }
      p[u.count] = 0
      return p
    }
  }

  /// A `bytes` field holding the UTF-8 of `s`.
  func text(_ s: String) -> ProtobufCBinaryData {
    var s = s
    return s.withUTF8 { u in bytes(UnsafeRawBufferPointer(u)) }
  }

  /// A `bytes` field holding a copy of `b`.
  func bytes(_ b: UnsafeRawBufferPointer) -> ProtobufCBinaryData {
    guard b.count > 0 else { return ProtobufCBinaryData(len: 0, data: nil) }
    let p = allocate(bytes: b.count)
    p.copyMemory(from: b.baseAddress!, byteCount: b.count)
    return ProtobufCBinaryData(len: b.count, data: p.assumingMemoryBound(to: UInt8.self))
  }

  /// A 32-byte `bytes` field holding a suppression hash.
  func hash(_ h: SuppressionHash) -> ProtobufCBinaryData {
    h.bytes.withUnsafeBytes { bytes($0) }
  }

  /// A repeated `string` field.
  func cStrings(_ items: [String]) -> UnsafeMutablePointer<UnsafeMutablePointer<CChar>?> {
    let p = allocate(UnsafeMutablePointer<CChar>?.self, count: items.count)
    for (i, s) in items.enumerated() { (p + i).initialize(to: cString(s)) }
    return p
  }

  /// A repeated `bytes` field of suppression hashes.
  func hashes(_ items: [SuppressionHash]) -> UnsafeMutablePointer<ProtobufCBinaryData> {
    let p = allocate(ProtobufCBinaryData.self, count: items.count)
    for (i, h) in items.enumerated() { (p + i).initialize(to: hash(h)) }
    return p
  }

  /// A repeated message field built by `build`.
  func messages<T, E>(_ items: [E], _ build: (E) -> UnsafeMutablePointer<T>)
    -> UnsafeMutablePointer<UnsafeMutablePointer<T>?>
  {
    let p = allocate(UnsafeMutablePointer<T>?.self, count: items.count)
    for (i, e) in items.enumerated() { (p + i).initialize(to: build(e)) }
    return p
  }

  /// A repeated scalar field.
  func scalars<T>(_ items: [T]) -> UnsafeMutablePointer<T> {
    let p = allocate(T.self, count: items.count)
    for (i, v) in items.enumerated() { (p + i).initialize(to: v) }
    return p
  }
}

/// Packing and unpacking, and fields as Swift values.
enum Proto {
  /// Packs a message whose first member is its `ProtobufCMessage base`.
  static func pack<T>(_ message: UnsafeMutablePointer<T>) -> [UInt8] {
    message.withMemoryRebound(to: ProtobufCMessage.self, capacity: 1) { m in
      let size = protobuf_c_message_get_packed_size(m)
      return [UInt8](unsafeUninitializedCapacity: size) { buf, n in
        n = protobuf_c_message_pack(m, buf.baseAddress)
      }
    }
  }

  /// Unpacks `bytes` with a generated `..._unpack`, hands the message to `body`, frees it.
  static func withUnpacked<T, R>(
    _ bytes: ArraySlice<UInt8>, _ what: String,
    _ unpack: (UnsafeMutablePointer<ProtobufCAllocator>?, Int, UnsafePointer<UInt8>?) ->
      UnsafeMutablePointer<T>?,
    _ body: (borrowing T) throws(StorageError) -> R
  ) throws(StorageError) -> R {
    let message = bytes.withUnsafeBufferPointer { unpack(nil, $0.count, $0.baseAddress) }
    guard let message else {
      throw StorageError(.damaged, "\(what) is not a valid protobuf message")
    }
    defer {
      message.withMemoryRebound(to: ProtobufCMessage.self, capacity: 1) {
        protobuf_c_message_free_unpacked($0, nil)
      }
    }
    return try body(message.pointee)
  }

  /// A `string` field (empty when NULL).
  static func string(_ p: UnsafeMutablePointer<CChar>?) -> String {
    guard let p else { return "" }
    return String(cString: p)
  }

  /// A repeated `string` field.
  static func strings(_ p: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?, _ n: Int)
    -> [String]
  {
    guard let p, n > 0 else { return [] }
    var out: [String] = []
    out.reserveCapacity(n)
    for i in 0..<n { out.append(string(p[i])) }
    return out
  }

  /// A `bytes` field holding UTF-8 text.
  static func text(_ b: ProtobufCBinaryData) -> String {
    guard let data = b.data, b.len > 0 else { return "" }
    return String(decoding: UnsafeBufferPointer(start: data, count: b.len), as: UTF8.self)
  }

  /// A `bytes` field holding a 32-byte suppression hash.
  static func hash(_ b: ProtobufCBinaryData, _ field: String) throws(StorageError)
    -> SuppressionHash
  {
    guard let data = b.data, b.len == 32 else {
      throw StorageError(.damaged, "\(field): a suppression hash of \(b.len) bytes, not 32")
    }
    return SuppressionHash(bytes: Array(UnsafeBufferPointer(start: data, count: 32)))
  }

  /// A repeated `bytes` field of suppression hashes.
  static func hashes(_ p: UnsafeMutablePointer<ProtobufCBinaryData>?, _ n: Int, _ field: String)
    throws(StorageError) -> [SuppressionHash]
  {
    guard let p, n > 0 else { return [] }
    var out: [SuppressionHash] = []
    out.reserveCapacity(n)
    for i in 0..<n { out.append(try hash(p[i], field)) }
    return out
  }

  /// The messages of a repeated message field, each converted by `convert`.
  static func messages<T, E>(
    _ p: UnsafeMutablePointer<UnsafeMutablePointer<T>?>?, _ n: Int,
    _ convert: (borrowing T) throws(StorageError) -> E
  ) throws(StorageError) -> [E] {
    guard let p, n > 0 else { return [] }
    var out: [E] = []
    out.reserveCapacity(n)
    for i in 0..<n {
      guard let m = p[i] else { throw StorageError(.damaged, "a repeated message is missing") }
      out.append(try convert(m.pointee))
    }
    return out
  }

  /// A repeated scalar field.
  static func scalars<T>(_ p: UnsafeMutablePointer<T>?, _ n: Int) -> [T] {
    guard let p, n > 0 else { return [] }
    return Array(UnsafeBufferPointer(start: p, count: n))
  }
}
