// A streaming handler that waits for `whenDrained` before each message never makes the
// server buffer more than one message while the client reads nothing; once the client
// reads, every message arrives.

import Synchronization
import Testing

@testable import GRPCTransport

/// Streams `total` messages of `size` bytes, one after the other has been handed to HTTP/2.
private final class FloodService: GRPCService {
  let serviceName = "test.Flood"
  static let total = 200
  static let size = 16 * 1024
  let produced = Atomic<Int>(0)
  let maxBuffered = Atomic<Int>(0)

  var methods: [ServiceMethod] {
    [
      ServiceMethod(path: "/test.Flood/Flood") { [self] call in
        sendNext(call)
      }
    ]
  }

  private func sendNext(_ call: ServerCall) {
    let n = produced.add(1, ordering: .relaxed).newValue
    guard n <= Self.total else {
      call.finish(.ok)
      return
    }
    call.send([UInt8](repeating: UInt8(truncatingIfNeeded: n), count: Self.size)) {
      [self] in sendNext(call)
    }
    let b = call.bufferedBytes
    if b > maxBuffered.load(ordering: .relaxed) { maxBuffered.store(b, ordering: .relaxed) }
  }
}

@Suite struct FlowControlTests {
  @Test func slowReaderBoundsServerBuffering() throws {
    let service = FloodService()
    let harness = try H2Harness([service])
    let id = harness.client.request(path: "/test.Flood/Flood", body: GRPCMessageFramer.frame([]))
    // Deliver the request, then let the server run while the client reads nothing.
    let request = harness.client.produce()
    _ = request.withUnsafeBytes { harness.server.receive($0) }
    for _ in 0..<50 {
      harness.loop.runTasks()
      var discarded: [UInt8] = []
      #expect(harness.server.produce(into: &discarded, limit: .max))
    }
    // The client's 64 KiB stream window lets at most 4 messages out; one more waits.
    let stalled = service.produced.load(ordering: .relaxed)
    #expect(stalled <= 6)
    #expect(service.maxBuffered.load(ordering: .relaxed) <= FloodService.size + 5)
    #expect(harness.client.responses[id]?.endStream != true)
  }

  @Test func everyMessageArrivesWhenTheClientReads() throws {
    let service = FloodService()
    let harness = try H2Harness([service])
    let id = harness.client.request(path: "/test.Flood/Flood", body: GRPCMessageFramer.frame([]))
    for _ in 0..<5000 where harness.client.responses[id]?.endStream != true {
      let toServer = harness.client.produce()
      if !toServer.isEmpty { _ = toServer.withUnsafeBytes { harness.server.receive($0) } }
      harness.loop.runTasks()
      var toClient: [UInt8] = []
      #expect(harness.server.produce(into: &toClient, limit: .max))
      if !toClient.isEmpty { harness.client.receive(toClient) }
    }
    let r = try #require(harness.client.responses[id])
    #expect(r.header("grpc-status") == "0")
    #expect(r.data.count == FloodService.total * (FloodService.size + 5))
    #expect(service.maxBuffered.load(ordering: .relaxed) <= FloodService.size + 5)
  }
}

/// Answers with as many bytes as its request's four bytes say (big-endian).
private struct SizedAnswerService: GRPCService {
  let serviceName = "test.Sized"

  var methods: [ServiceMethod] {
    [
      .unary("/test.Sized/Answer") { call in
        let size = call.request.prefix(4).reduce(0) { $0 << 8 | Int($1) }
        return [UInt8](repeating: 7, count: size)
      }
    ]
  }
}

@Suite struct UnsentAnswerLimitTests {
  /// A call whose request ends while the connection holds more unsent answer bytes than
  /// `maxQueuedResponseBytes` waits to run; at the limit exactly it runs. Once the client
  /// reads, the waiting call runs.
  @Test(arguments: [0, 1])
  func aCallWaitsOnlyOverTheLimit(over: Int) throws {
    var limits = SessionLimits()
    limits.maxQueuedResponseBytes = 100_000
    let hang = TestService()
    let h = try H2Harness([SizedAnswerService(), hang], limits: limits)
    // The client reads nothing: its 64 KiB - 1 windows let that much of the answer out and
    // the rest stays queued, the limit exactly or one byte more.
    let framed = 65_535 + limits.maxQueuedResponseBytes + over
    let size = UInt32(framed - GRPCMessageFramer.prefixSize)
    let big = h.client.request(
      path: "/test.Sized/Answer",
      body: GRPCMessageFramer.frame(withUnsafeBytes(of: size.bigEndian) { Array($0) }))
    var unread: [UInt8] = []
    func deliverRequests() {
      let bytes = h.client.produce()
      #expect(bytes.withUnsafeBytes { h.server.receive($0) })
      h.loop.runTasks()
    }
    deliverRequests()
    #expect(h.server.produce(into: &unread, limit: .max))
    #expect(h.server.queuedResponseBytes == limits.maxQueuedResponseBytes + over)

    h.client.request(path: "/test.Test/Hang", body: GRPCMessageFramer.frame([]))
    deliverRequests()
    #expect((hang.held.current != nil) == (over == 0))
    #expect(h.server.produce(into: &unread, limit: .max))
    #expect((hang.held.current != nil) == (over == 0), "nothing was read: it still waits")

    h.client.receive(unread)
    h.pump()
    #expect(h.client.responses[big]?.data.count == framed)
    #expect(h.client.responses[big]?.header("grpc-status") == "0")
    #expect(hang.held.current != nil, "the waiting call ran once the client read")
  }
}
