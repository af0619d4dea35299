// GRPCMessageDeframer and GRPCMessageFramer: length-prefixed messages in chunks of any size.

import Testing

@testable import GRPCTransport

/// Feeds `chunks` in order and returns every message the deframer produced.
private func deframe(
  _ deframer: inout GRPCMessageDeframer, _ chunks: [[UInt8]]
) throws(RPCStatus) -> [GRPCMessage] {
  var out: [GRPCMessage] = []
  for chunk in chunks {
    let result = chunk.withUnsafeBytes { bytes in
      Result { () throws(RPCStatus) in
        try deframer.process(bytes) { (m) throws(RPCStatus) in out.append(m) }
      }
    }
    try result.get()
  }
  return out
}

private func prefix(flag: UInt8 = 0, length: UInt32) -> [UInt8] {
  [
    flag, UInt8(length >> 24), UInt8(length >> 16 & 0xFF), UInt8(length >> 8 & 0xFF),
    UInt8(length & 0xFF),
  ]
}

@Suite struct MessageFramerTests {
  let hello = Array("hello".utf8)

  @Test func wholeMessage() throws {
    var d = GRPCMessageDeframer(maxMessageBytes: 1024)
    let messages = try deframe(&d, [prefix(length: 5) + hello])
    #expect(messages == [GRPCMessage(compressed: false, bytes: hello)])
    #expect(d.isIdle)
  }

  @Test func byteByByte() throws {
    var d = GRPCMessageDeframer(maxMessageBytes: 1024)
    let wire = prefix(length: 5) + hello + prefix(length: 3) + [1, 2, 3]
    var messages: [GRPCMessage] = []
    for (i, b) in wire.enumerated() {
      messages += try deframe(&d, [[b]])
      // Nothing is delivered before the last byte of each message.
      #expect(messages.count == (i >= 17 ? 2 : i >= 9 ? 1 : 0))
      #expect(d.isIdle == (i == 9 || i == 17))
    }
    #expect(messages.map(\.bytes) == [hello, [1, 2, 3]])
  }

  @Test func severalMessagesInOneChunk() throws {
    var d = GRPCMessageDeframer(maxMessageBytes: 1024)
    let wire = prefix(length: 1) + [7] + prefix(length: 0) + prefix(length: 5) + hello
    let messages = try deframe(&d, [wire])
    #expect(messages.map(\.bytes) == [[7], [], hello])
    #expect(d.isIdle)
  }

  @Test func chunksSplitInsidePrefixAndBody() throws {
    var d = GRPCMessageDeframer(maxMessageBytes: 1024)
    let wire = prefix(length: 5) + hello + prefix(length: 5) + hello
    let messages = try deframe(&d, [Array(wire[0..<3]), Array(wire[3..<12]), Array(wire[12...])])
    #expect(messages.map(\.bytes) == [hello, hello])
  }

  @Test func emptyMessage() throws {
    var d = GRPCMessageDeframer(maxMessageBytes: 1024)
    #expect(try deframe(&d, [prefix(length: 0)]) == [GRPCMessage(compressed: false, bytes: [])])
    #expect(d.isIdle)
    // And when its prefix arrives one byte at a time.
    let messages = try deframe(&d, prefix(length: 0).map { [$0] })
    #expect(messages == [GRPCMessage(compressed: false, bytes: [])])
  }

  @Test func oversizedPrefixRefusedBeforeAnyBody() throws {
    var d = GRPCMessageDeframer(maxMessageBytes: 16)
    let error = #expect(throws: RPCStatus.self) { _ = try deframe(&d, [prefix(length: 17)]) }
    #expect(error?.code == .resourceExhausted)

    var huge = GRPCMessageDeframer(maxMessageBytes: 4 * 1024 * 1024)
    let chunks = prefix(length: 0xFFFF_FFFF).map { [$0] }
    _ = try deframe(&huge, Array(chunks.prefix(4)))  // four bytes: no verdict yet
    let error2 = #expect(throws: RPCStatus.self) { _ = try deframe(&huge, [chunks[4]]) }
    #expect(error2?.code == .resourceExhausted)
  }

  @Test func messageOfExactlyTheLimitAccepted() throws {
    var d = GRPCMessageDeframer(maxMessageBytes: 16)
    let body = [UInt8](repeating: 0xAB, count: 16)
    #expect(try deframe(&d, [prefix(length: 16) + body]).map(\.bytes) == [body])
  }

  @Test func badFlagIsInternal() {
    var d = GRPCMessageDeframer(maxMessageBytes: 16)
    let error = #expect(throws: RPCStatus.self) {
      _ = try deframe(&d, [prefix(flag: 2, length: 1)])
    }
    #expect(error?.code == .internal)
  }

  @Test func compressedFlagSurfaced() throws {
    var d = GRPCMessageDeframer(maxMessageBytes: 16)
    let messages = try deframe(&d, [prefix(flag: 1, length: 2) + [9, 9] + prefix(length: 1) + [8]])
    #expect(
      messages == [
        GRPCMessage(compressed: true, bytes: [9, 9]), GRPCMessage(compressed: false, bytes: [8]),
      ])
  }

  @Test func framerRoundTripsThroughDeframer() throws {
    let payloads: [[UInt8]] = [[], [0], hello, [UInt8](repeating: 0x5A, count: 70_000)]
    var wire: [UInt8] = []
    for p in payloads { GRPCMessageFramer.frame(p, into: &wire) }
    #expect(Array(GRPCMessageFramer.frame(hello).prefix(5)) == prefix(length: 5))
    var d = GRPCMessageDeframer(maxMessageBytes: 100_000)
    #expect(try deframe(&d, [wire]).map(\.bytes) == payloads)
    var d2 = GRPCMessageDeframer(maxMessageBytes: 100_000)
    let chunks = stride(from: 0, to: wire.count, by: 7).map {
      Array(wire[$0..<min($0 + 7, wire.count)])
    }
    #expect(try deframe(&d2, chunks).map(\.bytes) == payloads)
  }
}
