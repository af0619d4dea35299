// `ServerCall.finish(_:discardingUnsent: true)` ends a call now for a client that reads
// nothing: its unsent messages are dropped (the connection's queued bytes and the call's
// `bufferedBytes` fall) and the trailers go without any window; a message already partly
// sent is completed first, or the stream is reset (ENHANCE_YOUR_CALM) when the client takes
// none of the rest within the grace. A plain `finish` still waits behind its messages.

import CNGHTTP2
import Synchronization
import Testing

@testable import GRPCTransport

/// Queues as many 1000-byte messages as its request's first byte says (message i is
/// filled with byte i) and keeps the call; with a second byte 1, ends it at once
/// discarding them.
private final class BacklogService: GRPCService {
  let serviceName = "test.Backlog"
  static let size = 1000
  static let framed = size + GRPCMessageFramer.prefixSize
  let calls = Mutex<[ServerCall]>([])
  /// `whenDrained` callbacks run.
  let drained = Atomic<Int>(0)

  var methods: [ServiceMethod] {
    [
      ServiceMethod(path: "/test.Backlog/Stream") { [self] call in
        calls.withLock { $0.append(call) }
        for i in 0..<Int(call.request[0]) {
          call.send([UInt8](repeating: UInt8(i), count: Self.size)) { [self] in
            drained.add(1, ordering: .relaxed)
          }
        }
        if call.request.count > 1 && call.request[1] == 1 {
          call.finish(RPCStatus(.resourceExhausted, "too slow"), discardingUnsent: true)
        }
      }
    ]
  }

  func call(on stream: Int32) -> ServerCall? {
    calls.withLock { $0.first { $0.stream?.id == stream } }
  }
}

@Suite struct DiscardingFinishTests {
  private let service = BacklogService()
  let framed = BacklogService.framed

  /// A harness whose client grants each stream `window` bytes and reads nothing more.
  func harness(window: UInt32) throws -> H2Harness {
    try H2Harness([service], client: H2TestClient(initialWindowSize: window))
  }

  @Test func unsentMessagesAreDroppedAndTheStatusGoesWithoutWindow() throws {
    let h = try harness(window: 0)
    let plain = h.client.request(path: "/test.Backlog/Stream", body: GRPCMessageFramer.frame([3]))
    let cut = h.client.request(path: "/test.Backlog/Stream", body: GRPCMessageFramer.frame([3]))
    h.pump()
    let plainCall = try #require(service.call(on: plain))
    let cutCall = try #require(service.call(on: cut))
    #expect(h.server.queuedResponseBytes == 6 * framed)
    #expect(cutCall.bufferedBytes == 3 * framed)
    #expect(h.client.responses[cut]?.headerBlocks.count == 1, "the headers, no data")

    // Ended from another thread: the calls hop onto the loop.
    h.loop.onLoopThread = false
    plainCall.finish(RPCStatus(.resourceExhausted, "too slow"))
    cutCall.finish(RPCStatus(.resourceExhausted, "too slow"), discardingUnsent: true)
    h.loop.onLoopThread = true
    h.pump()

    let r = try #require(h.client.responses[cut])
    #expect(r.data.isEmpty)
    #expect(r.headerBlocks.count == 2)
    #expect(r.header("grpc-status") == "8")
    #expect(r.header("grpc-message") == "too slow")
    #expect(r.endStream && r.closed && r.resetCode == nil)
    #expect(cutCall.bufferedBytes == 0)
    #expect(h.server.queuedResponseBytes == 3 * framed, "only the plain call's answer is left")
    #expect(h.server.activeStreams == 1, "the cut stream is gone")
    #expect(h.loop.timers.isEmpty, "no message was partly sent: no grace to wait out")
    #expect(service.drained.load(ordering: .relaxed) == 0)

    // The plain finish still waits behind its messages, and the client gets them all.
    let p = try #require(h.client.responses[plain])
    #expect(p.headerBlocks.count == 1 && !p.endStream)
    #expect(plainCall.bufferedBytes == 3 * framed)
    h.client.grant(plain, Int32(3 * framed))
    h.pump()
    #expect(p.data.count == 3 * framed)
    #expect(p.header("grpc-status") == "8" && p.endStream)
    #expect(h.server.queuedResponseBytes == 0)
  }

  @Test func aPartlySentMessageIsCompletedBeforeTheStatus() throws {
    let h = try harness(window: 1500)
    let id = h.client.request(path: "/test.Backlog/Stream", body: GRPCMessageFramer.frame([3]))
    h.pump()
    let call = try #require(service.call(on: id))
    let r = try #require(h.client.responses[id])
    // The first message went whole, the second 495 bytes of its 1005.
    #expect(r.data.count == 1500)
    #expect(h.server.queuedResponseBytes == 3 * framed - 1500)

    call.finish(RPCStatus(.resourceExhausted, "too slow"), discardingUnsent: true)
    h.pump()
    #expect(h.server.queuedResponseBytes == 2 * framed - 1500, "the third message is gone")
    #expect(call.bufferedBytes == 2 * framed - 1500)
    #expect(r.headerBlocks.count == 1 && !r.endStream, "no status before the second message")
    let grace = try #require(h.loop.timers.last)
    #expect(grace.delay == HTTP2ServerSession.partialMessageGraceNanos)

    // The client takes exactly the rest of the second message: then comes the status.
    h.client.grant(id, Int32(2 * framed - 1500))
    h.pump()
    #expect(
      r.data
        == GRPCMessageFramer.frame([UInt8](repeating: 0, count: BacklogService.size))
        + GRPCMessageFramer.frame([UInt8](repeating: 1, count: BacklogService.size)))
    #expect(r.headerBlocks.count == 2 && r.header("grpc-status") == "8")
    #expect(r.endStream && r.closed && r.resetCode == nil)
    #expect(h.server.queuedResponseBytes == 0 && call.bufferedBytes == 0)
    #expect(grace.timer.isCancelled)
    #expect(h.server.activeStreams == 0)
    #expect(service.drained.load(ordering: .relaxed) == 0)
  }

  @Test func aPartlySentMessageTheClientDoesNotTakeEndsInAReset() throws {
    let h = try harness(window: 1500)
    let id = h.client.request(path: "/test.Backlog/Stream", body: GRPCMessageFramer.frame([3]))
    h.pump()
    let call = try #require(service.call(on: id))
    call.finish(RPCStatus(.resourceExhausted, "too slow"), discardingUnsent: true)
    h.pump()
    let grace = try #require(h.loop.timers.last)
    #expect(grace.delay == HTTP2ServerSession.partialMessageGraceNanos)

    grace.timer.fire()
    h.pump()
    let r = try #require(h.client.responses[id])
    #expect(r.resetCode == NGHTTP2_ENHANCE_YOUR_CALM.rawValue)
    #expect(r.closed && r.headerBlocks.count == 1 && r.data.count == 1500)
    #expect(h.server.queuedResponseBytes == 0 && call.bufferedBytes == 0)
    #expect(h.server.activeStreams == 0, "the stream's state is gone")
  }

  @Test func messagesQueuedAndDiscardedAtOnceNeverGoOut() throws {
    // The client's window is open: the trailers overtake the DATA nghttp2 was about to ask for.
    let h = try H2Harness([service])
    let id = h.client.request(
      path: "/test.Backlog/Stream", body: GRPCMessageFramer.frame([3, 1]))
    h.pump()
    let r = try #require(h.client.responses[id])
    #expect(r.data.isEmpty && r.dataFrames == 0)
    #expect(r.headerBlocks.count == 2 && r.header("grpc-status") == "8")
    #expect(r.endStream && r.closed && r.resetCode == nil)
    #expect(h.server.queuedResponseBytes == 0)
    #expect(service.calls.withLock { $0.first?.bufferedBytes } == 0)

    // The connection serves on.
    let next = h.client.request(path: "/test.Backlog/Stream", body: GRPCMessageFramer.frame([2]))
    h.pump()
    #expect(h.client.responses[next]?.data.count == 2 * framed)
  }

  @Test func aPlainFinishWithNothingUnsentGoesWithoutWindow() throws {
    // The one message takes the whole window: the status needs none.
    let h = try harness(window: UInt32(framed))
    let id = h.client.request(path: "/test.Backlog/Stream", body: GRPCMessageFramer.frame([1]))
    h.pump()
    let call = try #require(service.call(on: id))
    let r = try #require(h.client.responses[id])
    #expect(r.data.count == framed && !r.endStream)
    call.finish(RPCStatus(.outOfRange, "expired"))
    h.pump()
    #expect(r.headerBlocks.count == 2 && r.header("grpc-status") == "11")
    #expect(r.endStream && r.closed && r.resetCode == nil)
    #expect(h.server.activeStreams == 0)
  }

  @Test func aReaderThatStaysBehindDoesNotMakeTheStreamKeepWhatWasSent() throws {
    // Two messages of window: each new message is sent while the one before waits, so the
    // stream's output is never empty; 600 messages go through it.
    let h = try harness(window: UInt32(2 * framed))
    h.client.grant(0, 1 << 30)  // the connection's window: only the stream's holds it back
    let id = h.client.request(path: "/test.Backlog/Stream", body: GRPCMessageFramer.frame([3]))
    h.pump()
    let call = try #require(service.call(on: id))
    var most = 0
    for i in 3..<600 {
      call.send([UInt8](repeating: UInt8(i % 256), count: BacklogService.size))
      h.client.grant(id, Int32(framed))
      h.pump()
      most = max(most, try #require(h.server.outboundBytes(of: id)))
    }
    #expect(most <= HTTP2ServerSession.sentBytesKept + 3 * framed, "kept \(most) bytes")
    h.client.grant(id, Int32(framed))
    h.pump()
    let r = try #require(h.client.responses[id])
    #expect(r.data.count == 600 * framed, "every message, whole and in order")
    for i in [0, 299, 599] {
      let message = r.data[(i * framed)..<((i + 1) * framed)]
      #expect(
        Array(message)
          == GRPCMessageFramer.frame([UInt8](repeating: UInt8(i % 256), count: BacklogService.size))
      )
    }
  }
}
