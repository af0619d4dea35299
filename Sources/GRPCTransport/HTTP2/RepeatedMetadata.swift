// The request metadata of a connection's last header block, shared with the blocks that
// repeat it: a client sends the same metadata (authorization, user-agent) on every call.

import Glibc

/// Builds the metadata of one request header block at a time (HTTP/2 allows no other). A
/// block whose metadata headers are the bytes of the last block's, in the same order, takes
/// the last block's `Metadata` as it is: no String, array or entry is made for it.
struct RepeatedMetadata {
  /// The last block's metadata, and its headers as they came: for each, the name's and the
  /// value's length (4 bytes each, native byte order), then the name and the value.
  private var last = Metadata()
  private var lastHeaders: [UInt8] = []
  /// The block in progress: how many bytes of `lastHeaders` and entries of `last` its
  /// headers repeat so far.
  private var matchedBytes = 0
  private var matchedEntries = 0
  /// Once a header of the block differs: the block's own metadata and headers.
  private var diverged = false
  private var own = Metadata()
  private var ownHeaders: [UInt8] = []

  /// A header block begins.
  mutating func begin() {
    matchedBytes = 0
    matchedEntries = 0
    diverged = false
  }

  /// Adds a metadata header of the block; `entry` makes its name and value, called only
  /// when the block no longer repeats the last one.
  mutating func add(
    _ name: UnsafeBufferPointer<UInt8>, _ value: UnsafeBufferPointer<UInt8>,
    entry: () -> (name: String, value: String)
  ) {
    if !diverged {
      if let next = Self.match(lastHeaders, at: matchedBytes, name, value) {
        matchedBytes = next
        matchedEntries += 1
        return
      }
      diverge()
    }
    let e = entry()
    own.addLowercased(e.name, e.value)
    Self.append(name, value, to: &ownHeaders)
  }

  /// The block's metadata, kept as the last block's for the next one.
  mutating func end() -> Metadata {
    if !diverged {
      if matchedBytes == lastHeaders.count { return last }
      diverge()
    }
    swap(&last, &own)
    swap(&lastHeaders, &ownHeaders)
    own = Metadata()
    ownHeaders = []
    diverged = false
    return last
  }

  /// The block differs from the last one from here on: its own metadata starts with the
  /// entries it repeated.
  private mutating func diverge() {
    diverged = true
    own = Metadata()
    var i = 0
    for (n, v) in last {
      guard i < matchedEntries else { break }
      own.addLowercased(n, v)
      i += 1
    }
    ownHeaders = Array(lastHeaders[0..<matchedBytes])
  }

  /// Where the header after the one at `offset` of `headers` starts, if that header is
  /// `name` and `value`.
  private static func match(
    _ headers: [UInt8], at offset: Int, _ name: UnsafeBufferPointer<UInt8>,
    _ value: UnsafeBufferPointer<UInt8>
  ) -> Int? {
    headers.withUnsafeBytes { h -> Int? in
      let nameAt = offset + 8
      let valueAt = nameAt + name.count
      let end = valueAt + value.count
      guard end <= h.count,
        h.loadUnaligned(fromByteOffset: offset, as: UInt32.self) == UInt32(name.count),
        h.loadUnaligned(fromByteOffset: offset + 4, as: UInt32.self) == UInt32(value.count),
        name.isEmpty || memcmp(h.baseAddress! + nameAt, name.baseAddress!, name.count) == 0,
        value.isEmpty || memcmp(h.baseAddress! + valueAt, value.baseAddress!, value.count) == 0
      else { return nil }
      return end
    }
  }

  private static func append(
    _ name: UnsafeBufferPointer<UInt8>, _ value: UnsafeBufferPointer<UInt8>,
    to headers: inout [UInt8]
  ) {
    withUnsafeBytes(of: UInt32(name.count)) { headers.append(contentsOf: $0) }
    withUnsafeBytes(of: UInt32(value.count)) { headers.append(contentsOf: $0) }
    headers.append(contentsOf: name)
    headers.append(contentsOf: value)
  }
}
