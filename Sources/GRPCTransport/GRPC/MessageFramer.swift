// gRPC length-prefixed messages: [1 byte compressed flag][4 bytes big-endian length][bytes].
// The deframer checks the prefix before buffering anything, so a length over the limit
// is refused without allocating it.

/// One deframed message.
public struct GRPCMessage: Sendable, Equatable {
  public var compressed: Bool
  public var bytes: [UInt8]
}

/// Reassembles messages from DATA chunks of any size, one byte at a time included.
public struct GRPCMessageDeframer {
  public let maxMessageBytes: Int
  private var headerValue: UInt64 = 0  // prefix bytes gathered so far, big-endian
  private var headerCount = 0
  private var body: [UInt8] = []
  private var expected = -1  // body length once the prefix is read, else -1
  private var compressed = false

  public init(maxMessageBytes: Int) {
    self.maxMessageBytes = maxMessageBytes
  }

  /// True when no partial message is buffered.
  public var isIdle: Bool { headerCount == 0 && expected < 0 }

  /// Bytes of a partial message held (its prefix or body so far).
  public var bufferedBytes: Int { headerCount + body.count }

  /// Consumes `bytes`, calling `onMessage` for each complete message. Throws
  /// RESOURCE_EXHAUSTED for a prefix over the limit and INTERNAL for a bad flag.
  @inline(__always)
  public mutating func process(
    _ bytes: UnsafeRawBufferPointer, _ onMessage: (GRPCMessage) throws(RPCStatus) -> Void
  ) throws(RPCStatus) {
    var i = 0
    let n = bytes.count
    while i < n {
      if expected < 0 {
        // Fast path: a whole prefix in this chunk.
        if headerCount == 0 && n - i >= 5 {
          try startMessage(
            flag: bytes[i],
            length: Int(bytes[i + 1]) << 24 | Int(bytes[i + 2]) << 16 | Int(bytes[i + 3]) << 8
              | Int(bytes[i + 4]))
          i += 5
        } else {
          headerValue = headerValue << 8 | UInt64(bytes[i])
          headerCount += 1
          i += 1
          if headerCount == 5 {
            let h = headerValue
            headerValue = 0
            headerCount = 0
            try startMessage(flag: UInt8(truncatingIfNeeded: h >> 32), length: Int(h & 0xFFFF_FFFF))
          }
        }
        if expected == 0 {
          expected = -1
          try onMessage(GRPCMessage(compressed: compressed, bytes: []))
        }
        continue
      }
      if body.isEmpty && n - i >= expected {
        // The whole message is in this chunk: its array is made at once, nothing buffered.
        let message = Array(UnsafeRawBufferPointer(rebasing: bytes[i..<(i + expected)]))
        i += expected
        expected = -1
        try onMessage(GRPCMessage(compressed: compressed, bytes: message))
        continue
      }
      if body.isEmpty { body.reserveCapacity(expected) }
      let take = min(expected - body.count, n - i)
      body.append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes[i..<(i + take)]))
      i += take
      if body.count == expected {
        var bytes: [UInt8] = []
        swap(&bytes, &body)  // moved out, not copied
        expected = -1
        try onMessage(GRPCMessage(compressed: compressed, bytes: bytes))
      }
    }
  }

  private mutating func startMessage(flag: UInt8, length: Int) throws(RPCStatus) {
    guard flag <= 1 else {
      throw RPCStatus(.internal, "invalid gRPC message flag \(flag)")
    }
    guard length <= maxMessageBytes else {
      throw RPCStatus(
        .resourceExhausted,
        "request message of \(length) bytes exceeds the server's limit of \(maxMessageBytes) "
          + "bytes (--max-message-bytes)")
    }
    compressed = flag == 1
    expected = length
  }
}

public enum GRPCMessageFramer {
  /// The size of the prefix: a message built with this many leading bytes to spare can
  /// be sent without a copy (`ServerCall.respond(framed:)`).
  public static let prefixSize = 5

  /// Fills the first `prefixSize` bytes of `framed` with the prefix of the rest.
  static func writePrefix(_ framed: inout [UInt8]) {
    let n = UInt32(framed.count - prefixSize)
    framed[0] = 0
    framed[1] = UInt8(truncatingIfNeeded: n >> 24)
    framed[2] = UInt8(truncatingIfNeeded: n >> 16)
    framed[3] = UInt8(truncatingIfNeeded: n >> 8)
    framed[4] = UInt8(truncatingIfNeeded: n)
  }

  /// Appends `message` with its 5-byte prefix (never compressed) to `buffer`.
  public static func frame(_ message: [UInt8], into buffer: inout [UInt8]) {
    let n = UInt32(message.count)
    buffer.append(0)
    buffer.append(UInt8(truncatingIfNeeded: n >> 24))
    buffer.append(UInt8(truncatingIfNeeded: n >> 16))
    buffer.append(UInt8(truncatingIfNeeded: n >> 8))
    buffer.append(UInt8(truncatingIfNeeded: n))
    buffer.append(contentsOf: message)
  }

  /// `message` with its 5-byte prefix.
  public static func frame(_ message: [UInt8]) -> [UInt8] {
    var out: [UInt8] = []
    out.reserveCapacity(message.count + 5)
    frame(message, into: &out)
    return out
  }
}
