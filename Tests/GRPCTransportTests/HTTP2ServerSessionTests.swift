// HTTP2ServerSession driven with bytes from an nghttp2 client: routing, framing, errors,
// deadlines and cancellation, with no socket.

import Synchronization
import Testing

@testable import GRPCTransport

/// A flag set from any thread.
final class Flag: Sendable {
  private let value = Atomic<Bool>(false)
  func set() { value.store(true, ordering: .releasing) }
  var isSet: Bool { value.load(ordering: .acquiring) }
}

/// Holds the call of a handler that never answers, and whether its onCancel ran.
final class HeldCall: Sendable {
  let call = Mutex<ServerCall?>(nil)
  let cancelHandlerRan = Flag()

  var current: ServerCall? { call.withLock { $0 } }
}

struct MissingThing: RPCStatusConvertible {
  var rpcStatus: RPCStatus { RPCStatus(.notFound, "no such thing ☺") }
}

struct PlainError: Error {}

struct TestService: GRPCService {
  let serviceName = "test.Test"
  let held = HeldCall()

  var methods: [ServiceMethod] {
    let held = held
    return [
      .unary("/test.Test/Echo") { call in call.request },
      .unary("/test.Test/Missing") { _ in throw MissingThing() },
      .unary("/test.Test/Plain") { _ in throw PlainError() },
      ServiceMethod(path: "/test.Test/Hang") { call in
        held.call.withLock { $0 = call }
        call.onCancel { held.cancelHandlerRan.set() }
      },
    ]
  }
}

@Suite struct HTTP2ServerSessionTests {
  let service = TestService()
  let harness: H2Harness

  init() throws { harness = try H2Harness([service]) }

  var client: H2TestClient { harness.client }

  @Test func unaryCall() throws {
    let request = Array("ping".utf8)
    let id = client.request(path: "/test.Test/Echo", body: GRPCMessageFramer.frame(request))
    harness.pump()
    let r = try #require(client.responses[id])
    #expect(r.headerBlocks.count == 2)
    #expect(r.header(":status", block: 0) == "200")
    #expect(r.header("content-type", block: 0) == "application/grpc")
    #expect(r.dataFrames >= 1)
    #expect(r.data == GRPCMessageFramer.frame(request))
    #expect(r.header("grpc-status", block: 1) == "0")
    #expect(r.header("grpc-message", block: 1) == nil)
    #expect(r.endStream && r.closed)
  }

  /// Calls one after another on a connection reuse its closed streams: each call sees
  /// only its own request, metadata and deadline, and gets its own answer.
  @Test func reusedStreamsCarryNothingOver() throws {
    var previous: ServerCall?
    for round in 0..<3 {
      let body = Array("ping \(round)".utf8)
      let first = round == 0
      let id = client.request(
        path: "/test.Test/Hang",
        headers: first ? [("x-trace", "abc"), ("grpc-timeout", "1S")] : [],
        body: GRPCMessageFramer.frame(body))
      harness.pump()
      let call = try #require(service.held.current)
      #expect(call !== previous && call.request == body)
      #expect((call.metadata["x-trace"] == "abc") == first && (call.deadline != nil) == first)
      // A reused stream lends the room its last answer left, empty.
      var answer = call.answerBuffer()
      #expect(answer.isEmpty && (answer.capacity > 0) == !first)
      answer += [0, 0, 0, 0, 0] + body
      call.respond(framed: answer)
      harness.pump()
      let r = try #require(client.responses[id])
      #expect(r.data == GRPCMessageFramer.frame(body))
      #expect(r.header("grpc-status", block: 1) == "0")
      #expect(r.endStream && r.closed)
      #expect(call.stream == nil)
      previous = call
    }
  }

  /// A session keeps at most `maxSpareStreams` closed streams for reuse, however many
  /// closed at once, and drops them all when told the connection is quiet.
  @Test func spareStreamsStopAtTheirLimit() throws {
    let limit = HTTP2ServerSession.maxSpareStreams
    for n in [limit, limit + 6] {
      harness.server.dropSpareStreams()
      let ids = (0..<n).map { i in
        client.request(path: "/test.Test/Echo", body: GRPCMessageFramer.frame([UInt8(i)]))
      }
      harness.pump()
      for (i, id) in ids.enumerated() {
        #expect(client.responses[id]?.data == GRPCMessageFramer.frame([UInt8(i)]))
      }
      #expect(harness.server.spareStreamCount == limit, "\(n) streams closed")
    }
    harness.server.dropSpareStreams()
    #expect(harness.server.spareStreamCount == 0)
  }

  /// A finished stream keeps its answer's buffer for the next call only up to
  /// `keptAnswerRoom` bytes of capacity.
  @Test func onlyASmallAnswerBufferIsKept() throws {
    for (size, kept) in [(1000, true), (HTTP2ServerSession.keptAnswerRoom + 1, false)] {
      harness.server.dropSpareStreams()
      for round in 0..<2 {
        let id = client.request(path: "/test.Test/Hang", body: GRPCMessageFramer.frame([1]))
        harness.pump()
        let call = try #require(service.held.current)
        let room = call.answerBuffer()
        if round == 1 {
          #expect((room.capacity > 0) == kept, "after an answer of \(size) bytes")
        }
        call.respond(framed: [UInt8](repeating: 0, count: size))
        harness.pump()
        #expect(client.responses[id]?.data.count == size)
      }
    }
  }

  /// `HTTP2Stream.reuse` sets every field as `init` does: a stream with every field
  /// changed, reused, reads the same as a new one. A field added to the stream must be
  /// added to `reuse` (and to the list here).
  @Test func reusedStreamEqualsNewOne() throws {
    let server = harness.server
    let s = HTTP2Stream(id: 1, session: server, maxMessageBytes: 100)
    s.isPost = true
    s.path = "/a/b"
    s.contentType = .protobuf
    s.grpcEncoding = "gzip"
    s.timeoutNanos = 5
    s.metadata.add("x", "y")
    s.headerBytes = 7
    s.headersTooLarge = true
    let prefix: [UInt8] = [0, 0]
    _ = prefix.withUnsafeBytes { b in try? s.deframer.process(b) { _ in } }
    s.requestMessage = [1]
    s.heldRequestBytes = 3
    s.requestEnded = true
    s.route = ServiceMethod(path: "/a/b") { _ in }
    s.admission = s
    s.admitted = true
    s.call = ServerCall(
      path: "/a/b", metadata: Metadata(), request: [], deadline: nil, loop: harness.loop,
      stream: s, connection: server.context)
    s.deadlineTimer = harness.loop.scheduleTimer(after: 1) {}
    s.headersSent = true
    s.finished = true
    s.outbound = [1, 2]
    s.outOffset = 1
    s.pendingTrailers = HeaderList([("a", "b")])
    s.pendingOKTrailers = true
    s.deferred = true
    s.drainedCallbacks = [{}]
    s.partialMessageTimer = harness.loop.scheduleTimer(after: 1) {}
    s.closed = true
    s.prev = Unmanaged.passUnretained(s)
    s.next = Unmanaged.passUnretained(s)
    s.reuse(id: 3)
    let fresh = HTTP2Stream(id: 3, session: server, maxMessageBytes: 100)
    let reused = Mirror(reflecting: s).children.map { "\($0.label!): \($0.value)" }
    let new = Mirror(reflecting: fresh).children.map { "\($0.label!): \($0.value)" }
    #expect(reused == new)
    #expect(
      Mirror(reflecting: fresh).children.map { $0.label! } == [
        "id", "session", "isPost", "path", "contentType", "grpcEncoding", "timeoutNanos",
        "metadata", "headerBytes", "headersTooLarge", "deframer", "requestMessage",
        "heldRequestBytes", "requestEnded", "route", "admission", "admitted", "call",
        "deadlineTimer", "headersSent", "finished", "outbound", "outOffset",
        "pendingTrailers", "pendingOKTrailers", "deferred", "drainedCallbacks",
        "partialMessageTimer", "closed", "prev", "next",
      ])
  }

  @Test func unaryCallFedByteByByte() throws {
    let id = client.request(path: "/test.Test/Echo", body: GRPCMessageFramer.frame([1, 2, 3]))
    harness.pump(byteByByte: true)
    let r = try #require(client.responses[id])
    #expect(r.data == GRPCMessageFramer.frame([1, 2, 3]))
    #expect(r.header("grpc-status") == "0")
  }

  @Test func unknownPathIsTrailersOnlyUnimplemented() throws {
    let id = client.request(path: "/test.Test/Nope", body: GRPCMessageFramer.frame([]))
    harness.pump()
    let r = try #require(client.responses[id])
    #expect(r.headerBlocks.count == 1)  // Trailers-Only: one HEADERS with END_STREAM
    #expect(r.header(":status") == "200")
    #expect(r.header("content-type") == "application/grpc")
    #expect(r.header("grpc-status") == "12")
    #expect(r.header("grpc-message")?.contains("/test.Test/Nope") == true)
    #expect(r.data.isEmpty && r.endStream)
  }

  @Test func nonGRPCContentTypeIs415() throws {
    let id = client.request(path: "/test.Test/Echo", contentType: "text/plain")
    harness.pump()
    let r = try #require(client.responses[id])
    #expect(r.headerBlocks.count == 1)
    #expect(r.header(":status") == "415")
    #expect(r.header("grpc-status") == nil)
    #expect(r.endStream)
  }

  @Test(arguments: ["application/grpc+proto", "application/grpc;charset=utf-8"])
  func grpcContentTypeVariantsAccepted(contentType: String) throws {
    let id = client.request(
      path: "/test.Test/Echo", contentType: contentType, body: GRPCMessageFramer.frame([7]))
    harness.pump()
    #expect(client.responses[id]?.header("grpc-status") == "0")
  }

  @Test func nonPOSTIs405() throws {
    let id = client.request(path: "/test.Test/Echo", method: "PUT")
    harness.pump()
    #expect(client.responses[id]?.header(":status") == "405")
  }

  @Test func contentTypeWithGRPCPrefixOnlyIs415() throws {
    let id = client.request(path: "/test.Test/Echo", contentType: "application/grpcx")
    harness.pump()
    #expect(client.responses[id]?.header(":status") == "415")
  }

  @Test(arguments: [false, true])
  func oversizedPrefixRefusedAtOnce(byteByByte: Bool) throws {
    // The prefix alone, and the request stream left open: the verdict must not wait for
    // the body or for END_STREAM.
    let id = client.request(
      path: "/test.Test/Echo", body: [0, 0xFF, 0xFF, 0xFF, 0xFF], endStream: false)
    harness.pump(byteByByte: byteByByte)
    let r = try #require(client.responses[id])
    #expect(r.headerBlocks.count == 1)
    #expect(r.header("grpc-status") == "8")
    #expect(r.header("grpc-message")?.contains("4294967295") == true)
    #expect(r.endStream)
    // The client was still sending: the server resets the stream with NO_ERROR.
    #expect(r.resetCode == 0)
    #expect(r.closed)
  }

  @Test func messageOverSmallLimitRefused() throws {
    var limits = SessionLimits()
    limits.maxMessageBytes = 4
    let h = try H2Harness([service], limits: limits)
    let ok = h.client.request(path: "/test.Test/Echo", body: GRPCMessageFramer.frame([1, 2, 3, 4]))
    let big = h.client.request(
      path: "/test.Test/Echo", body: GRPCMessageFramer.frame([1, 2, 3, 4, 5]))
    h.pump()
    #expect(h.client.responses[ok]?.header("grpc-status") == "0")
    #expect(h.client.responses[big]?.header("grpc-status") == "8")
  }

  @Test func statusConvertibleErrorMapsToItsStatus() throws {
    let id = client.request(path: "/test.Test/Missing", body: GRPCMessageFramer.frame([]))
    harness.pump()
    let r = try #require(client.responses[id])
    #expect(r.header("grpc-status") == "5")
    #expect(r.header("grpc-message") == "no such thing %E2%98%BA")
  }

  @Test func otherErrorsAreUnknown() throws {
    let id = client.request(path: "/test.Test/Plain", body: GRPCMessageFramer.frame([]))
    harness.pump()
    #expect(client.responses[id]?.header("grpc-status") == "2")
  }

  @Test func deadlineTimerEndsCallWithDeadlineExceeded() throws {
    let id = client.request(
      path: "/test.Test/Hang", headers: [("grpc-timeout", "1m")], body: GRPCMessageFramer.frame([]))
    harness.pump()
    let call = try #require(service.held.current)
    #expect(call.deadline != nil)
    #expect(!call.isCancelled)
    #expect(client.responses[id]?.headerBlocks.isEmpty == true)
    #expect(harness.loop.timers.count == 1)
    let timer = try #require(harness.loop.timers.first)
    #expect(timer.delay == 1_000_000)

    timer.timer.fire()
    harness.pump()
    let r = try #require(client.responses[id])
    #expect(r.headerBlocks.count == 1)
    #expect(r.header("grpc-status") == "4")
    #expect(r.endStream && r.closed)
    #expect(call.isCancelled)
    #expect(service.held.cancelHandlerRan.isSet)

    // A late answer is dropped.
    call.respond([1])
    harness.pump()
    #expect(r.headerBlocks.count == 1 && r.data.isEmpty)
  }

  @Test func clientResetCancelsCall() throws {
    let id = client.request(path: "/test.Test/Hang", body: GRPCMessageFramer.frame([]))
    harness.pump()
    let call = try #require(service.held.current)
    #expect(!call.isCancelled)
    #expect(harness.loop.timers.isEmpty)  // no grpc-timeout, no timer

    client.cancel(id)
    harness.pump()
    #expect(call.isCancelled)
    #expect(service.held.cancelHandlerRan.isSet)
    #expect(harness.server.activeStreams == 0)

    call.respond([1])  // nothing to answer any more
    harness.pump()
    #expect(client.responses[id]?.headerBlocks.isEmpty == true)
  }

  @Test func onCancelAfterCancellationRunsAtOnce() throws {
    client.request(path: "/test.Test/Hang", body: GRPCMessageFramer.frame([]))
    harness.pump()
    let call = try #require(service.held.current)
    harness.server.cancelAll()
    #expect(call.isCancelled)
    let ran = Flag()
    call.onCancel { ran.set() }
    #expect(ran.isSet)
  }

  @Test func answerLaterAsAStreamWithMetadataAndTrailers() throws {
    let id = client.request(path: "/test.Test/Hang", body: GRPCMessageFramer.frame([]))
    harness.pump()
    let call = try #require(service.held.current)
    #expect(client.responses[id]?.headerBlocks.isEmpty == true)

    call.sendInitialMetadata(["X-Server": "yes"])
    harness.pump()
    let r = try #require(client.responses[id])
    #expect(r.headerBlocks.count == 1)
    #expect(r.header(":status", block: 0) == "200")
    #expect(r.header("x-server", block: 0) == "yes")

    let drained = Flag()
    call.send([1], whenDrained: { drained.set() })
    call.send([2, 2])
    harness.pump()
    #expect(drained.isSet)
    #expect(r.data == GRPCMessageFramer.frame([1]) + GRPCMessageFramer.frame([2, 2]))
    #expect(call.bufferedBytes == 0)
    #expect(!r.endStream)

    var trailers = Metadata()
    trailers.add("x-count", "2")
    call.finish(RPCStatus(.aborted, "100% done"), trailers: trailers)
    harness.pump()
    #expect(r.headerBlocks.count == 2)
    #expect(r.header("grpc-status") == "10")
    #expect(r.header("grpc-message") == "100%25 done")
    #expect(r.header("x-count") == "2")
    #expect(r.endStream && r.closed)
    #expect(!call.isCancelled)  // finished, not cancelled
  }

  @Test func answerFromAnotherThreadGoesThroughExecute() throws {
    let id = client.request(path: "/test.Test/Hang", body: GRPCMessageFramer.frame([]))
    harness.pump()
    let call = try #require(service.held.current)
    harness.loop.onLoopThread = false
    call.respond([9])
    harness.loop.onLoopThread = true
    #expect(harness.loop.tasks.count == 1)  // queued, not run yet
    #expect(client.responses[id]?.headerBlocks.isEmpty == true)
    harness.pump()
    #expect(client.responses[id]?.data == GRPCMessageFramer.frame([9]))
    #expect(client.responses[id]?.header("grpc-status") == "0")
  }

  @Test func requestMetadataReachesTheHandler() throws {
    client.request(
      path: "/test.Test/Hang", headers: [("x-trace", "abc"), ("trace-bin", "AAEC")],
      body: GRPCMessageFramer.frame([5]))
    harness.pump()
    let call = try #require(service.held.current)
    #expect(call.path == "/test.Test/Hang")
    #expect(call.request == [5])
    #expect(call.metadata["x-trace"] == "abc")
    #expect(call.metadata.binary("trace-bin") == [0, 1, 2])
    #expect(call.metadata["te"] == nil && call.metadata["content-type"] == nil)
    #expect(call.deadline == nil)
  }

  @Test func compressedMessageWithoutEncodingIsInternal() throws {
    let id = client.request(path: "/test.Test/Echo", body: [1, 0, 0, 0, 1, 0xAA])
    harness.pump()
    #expect(client.responses[id]?.header("grpc-status") == "13")
  }

  @Test func unsupportedEncodingIsUnimplemented() throws {
    let id = client.request(
      path: "/test.Test/Echo", headers: [("grpc-encoding", "gzip")], body: [1, 0, 0, 0, 1, 0xAA])
    harness.pump()
    let r = try #require(client.responses[id])
    #expect(r.header("grpc-status") == "12")
    #expect(r.header("grpc-accept-encoding") == "identity")
  }

  @Test func missingOrExtraRequestMessageIsInternal() throws {
    let none = client.request(path: "/test.Test/Echo")
    let two = client.request(
      path: "/test.Test/Echo", body: GRPCMessageFramer.frame([1]) + GRPCMessageFramer.frame([2]))
    let truncated = client.request(path: "/test.Test/Echo", body: [0, 0, 0, 0, 9, 1])
    harness.pump()
    #expect(client.responses[none]?.header("grpc-status") == "13")
    #expect(client.responses[two]?.header("grpc-status") == "13")
    #expect(client.responses[truncated]?.header("grpc-status") == "13")
    #expect(
      client.responses[truncated]?.header("grpc-message")
        == "the request body does not end at the end of a message (is its length prefix right?)")
  }

  @Test func compressedFlagNamesTheEncodingThatDoesNotAllowIt() throws {
    let none = client.request(path: "/test.Test/Echo", body: [1, 0, 0, 0, 1, 0xAA])
    let identity = client.request(
      path: "/test.Test/Echo", headers: [("grpc-encoding", "identity")],
      body: [1, 0, 0, 0, 1, 0xAA])
    harness.pump()
    #expect(client.responses[none]?.header("grpc-status") == "13")
    #expect(
      client.responses[none]?.header("grpc-message") == "compressed message without grpc-encoding")
    #expect(client.responses[identity]?.header("grpc-status") == "13")
    #expect(
      client.responses[identity]?.header("grpc-message")
        == "compressed message with grpc-encoding identity")
  }

  @Test func oversizedHeaderListIsResourceExhausted() throws {
    var limits = SessionLimits()
    limits.maxHeaderListBytes = 256
    let h = try H2Harness([service], limits: limits)
    let id = h.client.request(
      path: "/test.Test/Echo", headers: [("x-big", String(repeating: "a", count: 300))],
      body: GRPCMessageFramer.frame([]))
    h.pump()
    #expect(h.client.responses[id]?.header("grpc-status") == "8")
  }

  /// The limit counts name + value + 32 per field (RFC 7541), pseudo-headers included: a
  /// list of exactly the limit passes, one byte more is refused.
  @Test(arguments: [(695, "0"), (696, "8")])
  func headerListLimitAtItsEdge(valueLength: Int, status: String) throws {
    var limits = SessionLimits()
    limits.maxHeaderListBytes = 1024
    let h = try H2Harness([service], limits: limits)
    // :method POST, :scheme https, :path /test.Test/Echo, :authority localhost,
    // content-type application/grpc, te trailers: 100 bytes + 6 × 32; x-big: 5 + 32 + value.
    let id = h.client.request(
      path: "/test.Test/Echo", headers: [("x-big", String(repeating: "a", count: valueLength))],
      body: GRPCMessageFramer.frame([]))
    h.pump()
    #expect(h.client.responses[id]?.header("grpc-status") == status)
  }

  @Test func hugeTimeoutIsAFarDeadlineNotAPastOne() throws {
    // "99999999H" is a valid grpc-timeout; it parses to UInt64.max (saturated).
    client.request(
      path: "/test.Test/Hang", headers: [("grpc-timeout", "99999999H")],
      body: GRPCMessageFramer.frame([]))
    harness.pump()
    let call = try #require(service.held.current)
    let deadline = try #require(call.deadline)
    #expect(deadline > monotonicNanos() + 3_600_000_000_000)
  }

  @Test func eventLoopTimerWithHugeDelayIsInTheFuture() throws {
    let loop = try EventLoop(index: 0)
    let timer = loop.schedule(after: .max) {}
    #expect(timer.deadline > monotonicNanos() + 3_600_000_000_000)
    timer.cancel()
  }

  @Test func manyCallsOnOneConnection() throws {
    let ids = (0..<20).map { i in
      client.request(path: "/test.Test/Echo", body: GRPCMessageFramer.frame([UInt8(i)]))
    }
    harness.pump()
    for (i, id) in ids.enumerated() {
      #expect(client.responses[id]?.data == GRPCMessageFramer.frame([UInt8(i)]))
      #expect(client.responses[id]?.header("grpc-status") == "0")
    }
    #expect(harness.server.activeStreams == 0)
  }
}
