// The Swift client against a real server over loopback TLS: unary, deferred and
// streaming answers, metadata both ways, deadlines, unknown methods, graceful shutdown.

import Dispatch
import GRPCTransport
import Glibc
import SubcenterTestSupport
import Synchronization
import Testing

/// A service exercising each way a handler can answer.
private struct EchoService: GRPCService {
  let serviceName = "test.Echo"

  var methods: [ServiceMethod] {
    [
      .unary("/test.Echo/Echo") { call in call.request },
      .unary("/test.Echo/Fail") { _ in throw RPCStatus(.notFound, "nothing ☺ here") },
      ServiceMethod(path: "/test.Echo/Later") { call in
        DispatchQueue.global().asyncAfter(deadline: .now() + .milliseconds(20)) {
          call.respond(call.request.reversed(), trailers: ["x-answered": "later"])
        }
      },
      ServiceMethod(path: "/test.Echo/Never") { _ in },
      ServiceMethod(path: "/test.Echo/Count") { call in
        let n = Int(call.request.first ?? 0)
        call.sendInitialMetadata(["x-count": String(n)])
        DispatchQueue.global().async {
          for i in 0..<n { call.send([UInt8(i)]) }
          call.finish(.ok)
        }
      },
      // Answers with a message built with room for the prefix; with a request byte n > 0,
      // sends n plain messages first (the framed one then queues behind them).
      ServiceMethod(path: "/test.Echo/Framed") { call in
        let n = Int(call.request.first ?? 0)
        for i in 0..<n { call.send([UInt8(i), 1, 2]) }
        call.respond(
          framed: [UInt8](repeating: 0xEE, count: GRPCMessageFramer.prefixSize) + [9, 8, 7])
      },
      .unary("/test.Echo/Metadata") { call in
        Array((call.metadata["x-token"] ?? "").utf8) + (call.metadata.binary("x-raw-bin") ?? [])
      },
    ]
  }
}

/// Runs `body` with a started server of `service` (an `EchoService` by default) on `loops`
/// event loops and a function opening a client connection; `publish` gets the server once
/// it runs and nil once it stopped (for handlers that need it).
private func withServer(
  _ service: any GRPCService = EchoService(), loops: Int = 2,
  handshakeTimeoutNanos: UInt64 = 10_000_000_000,
  publish: (GRPCServer?) -> Void = { _ in },
  _ body: (GRPCServer, () throws -> GRPCClient) throws -> Void
) throws {
  let certs = try TestCertificates.shared()
  let tls = try TLSContext.server(
    certificateChainFile: certs.serverCertificateFile, privateKeyFile: certs.serverKeyFile)
  var config = ServerConfiguration(
    listen: SocketAddress(host: "127.0.0.1", port: 0), loops: loops, tls: tls)
  config.handshakeTimeoutNanos = handshakeTimeoutNanos
  let server = GRPCServer(configuration: config, services: [service], logger: { _ in })
  publish(server)
  try server.start()
  defer {
    server.shutdown()
    server.wait()
    publish(nil)
  }
  let clientTLS = try TLSContext.client(trustRootsFile: certs.caFile)
  try body(server) {
    try GRPCClient(
      address: SocketAddress(host: "127.0.0.1", port: server.port), serverName: "localhost",
      tls: clientTLS)
  }
}

@Suite struct ClientServerTests {
  @Test func unaryRoundTrip() throws {
    try withServer { _, connect in
      let client = try connect()
      let payload = (0..<100_000).map { UInt8(truncatingIfNeeded: $0) }
      #expect(try client.unary("/test.Echo/Echo", request: payload).message == payload)
      #expect(try client.unary("/test.Echo/Echo", request: []).message == [])
    }
  }

  @Test func statusAndMessageArrive() throws {
    try withServer { _, connect in
      let client = try connect()
      #expect(throws: RPCStatus(.notFound, "nothing ☺ here")) {
        try client.unary("/test.Echo/Fail", request: [])
      }
      #expect(throws: RPCStatus(.unimplemented, "unknown method /test.Echo/Nope")) {
        try client.unary("/test.Echo/Nope", request: [])
      }
      // The connection is still good after errors.
      #expect(try client.unary("/test.Echo/Echo", request: [1]).message == [1])
    }
  }

  @Test func answerFromAnotherThreadWithTrailers() throws {
    try withServer { _, connect in
      let r = try connect().unary("/test.Echo/Later", request: [1, 2, 3])
      #expect(r.message == [3, 2, 1])
      #expect(r.trailingMetadata["x-answered"] == "later")
    }
  }

  @Test func serverStreamingDeliversEveryMessageInOrder() throws {
    try withServer { _, connect in
      var got: [UInt8] = []
      try connect().serverStreaming("/test.Echo/Count", request: [200]) { m in
        got += m
        return true
      }
      #expect(got == (0..<200).map { UInt8($0) })
    }
  }

  @Test func framedAnswersArriveWhole() throws {
    try withServer { _, connect in
      let client = try connect()
      for n in [0, 1, 3] {
        var got: [[UInt8]] = []
        try client.serverStreaming("/test.Echo/Framed", request: [UInt8(n)]) { m in
          got.append(m)
          return true
        }
        #expect(got == (0..<n).map { [UInt8($0), 1, 2] } + [[9, 8, 7]])
      }
    }
  }

  @Test func metadataReachesTheHandler() throws {
    try withServer { _, connect in
      var md = Metadata()
      md.add("x-token", "abc")
      md.add("x-raw-bin", binary: [0, 255, 10])
      let r = try connect().unary("/test.Echo/Metadata", request: [], metadata: md)
      #expect(r.message == Array("abc".utf8) + [0, 255, 10])
    }
  }

  /// Long values a connection repeats are shared between its calls: a changed value, or
  /// more distinct values than are kept, must still reach each call exactly.
  @Test func repeatedMetadataValuesOnOneConnection() throws {
    try withServer { _, connect in
      let client = try connect()
      let values = (0..<6).map { "token-value-number-\($0)-" + String(repeating: "x", count: $0) }
      for round in 0..<3 {
        for v in values + [values[0], "short", String(repeating: "y", count: 257)] {
          var md = Metadata()
          md.add("x-token", v)
          let r = try client.unary("/test.Echo/Metadata", request: [], metadata: md)
          #expect(r.message == Array(v.utf8), "round \(round)")
        }
      }
    }
  }

  @Test func deadlineExceededWhenTheHandlerNeverAnswers() throws {
    try withServer { _, connect in
      let client = try connect()
      let error = #expect(throws: RPCStatus.self) {
        try client.unary("/test.Echo/Never", request: [], timeoutMillis: 50)
      }
      #expect(error?.code == .deadlineExceeded)
      #expect(try client.unary("/test.Echo/Echo", request: [7]).message == [7])
    }
  }

  @Test func tasksHandedToALoopRunThereUntilItStops() throws {
    let certs = try TestCertificates.shared()
    let tls = try TLSContext.server(
      certificateChainFile: certs.serverCertificateFile, privateKeyFile: certs.serverKeyFile)
    let server = GRPCServer(
      configuration: ServerConfiguration(
        listen: SocketAddress(host: "127.0.0.1", port: 0), loops: 2, tls: tls),
      services: [EchoService()], logger: { _ in })
    #expect(!server.submit(toLoop: 0) {}, "no loop before start")
    try server.start()
    let ran = DispatchSemaphore(value: 0)
    let ranOnLoop = Mutex(0)
    for i in 0..<4 {
      #expect(
        server.submit(toLoop: i) {
          ranOnLoop.withLock { $0 += 1 }
          ran.signal()
        })
    }
    for _ in 0..<4 { #expect(ran.wait(timeout: .now() + 5) == .success) }
    #expect(ranOnLoop.withLock { $0 } == 4)
    server.shutdown()
    server.wait()
    #expect(!server.submit(toLoop: 0) { Issue.record("ran on a stopped loop") })
    #expect(!server.submit(toLoop: 1) { Issue.record("ran on a stopped loop") })
  }

  @Test func healthIsServedForEachService() throws {
    try withServer { _, connect in
      let client = try connect()
      for name in ["", "test.Echo", "grpc.health.v1.Health"] {
        let r = try client.unary(
          "/grpc.health.v1.Health/Check", request: HealthMessages.request(service: name))
        #expect(HealthMessages.statusName(r.message) == "SERVING")
      }
      #expect(throws: RPCStatus(.notFound, "unknown service other")) {
        try client.unary(
          "/grpc.health.v1.Health/Check", request: HealthMessages.request(service: "other"))
      }
    }
  }

  @Test func silentConnectionIsClosedAtTheHandshakeDeadline() throws {
    try withServer(handshakeTimeoutNanos: 200_000_000) { server, _ in
      let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
      defer { close(fd) }
      var addr = sockaddr_in()
      addr.sin_family = sa_family_t(AF_INET)
      addr.sin_port = server.port.bigEndian
      addr.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
      let rc = withUnsafePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
          connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
        }
      }
      #expect(rc == 0)
      let start = ContinuousClock.now
      var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
      #expect(poll(&p, 1, 5000) == 1)  // readable: the server closed it
      var byte: UInt8 = 0
      #expect(read(fd, &byte, 1) == 0)
      let waited = ContinuousClock.now - start
      #expect(waited >= .milliseconds(150) && waited < .seconds(4))
    }
  }

  @Test func manyClientsInParallel() throws {
    try withServer { server, connect in
      let clients = try (0..<8).map { _ in try connect() }
      let failures = Mutex(0)
      DispatchQueue.concurrentPerform(iterations: 8) { i in
        for j in 0..<100 {
          let req = [UInt8(i), UInt8(j)]
          if (try? clients[i].unary("/test.Echo/Echo", request: req).message) != req {
            failures.withLock { $0 += 1 }
          }
        }
      }
      #expect(failures.withLock { $0 } == 0)
      #expect(server.stats.callsOK >= 800)
    }
  }
}

/// The server, for a handler that needs it, and how often the end-of-pass work ran.
private final class PassState: Sendable {
  let server = Mutex<GRPCServer?>(nil)
  let ran = Atomic<Int>(0)
}

/// A handler that asks for work at the end of its loop's pass and answers whether it was
/// taken and whether it already ran.
private struct EndOfPassService: GRPCService {
  let serviceName = "test.Pass"
  let state: PassState

  var methods: [ServiceMethod] {
    [
      .unary("/test.Pass/Mark") { [state] _ in
        let server = state.server.withLock { $0 }!
        let taken = server.atEndOfLoopPass { state.ran.add(1, ordering: .relaxed) }
        return [taken ? 1 : 0, UInt8(state.ran.load(ordering: .relaxed))]
      }
    ]
  }
}

@Suite struct EndOfLoopPassTests {
  /// Work handed over on a loop thread runs after the handler, on that loop, before it
  /// waits again (with nothing else arriving); on any other thread it is refused.
  @Test func endOfPassWorkRunsAfterTheHandler() throws {
    let state = PassState()
    try withServer(
      EndOfPassService(state: state), publish: { s in state.server.withLock { $0 = s } }
    ) {
      server, connect in
      #expect(!server.atEndOfLoopPass { state.ran.add(100, ordering: .relaxed) })
      let client = try connect()
      for call in 0..<3 {
        let answer = try client.unary("/test.Pass/Mark", request: []).message
        #expect(answer == [1, UInt8(call)], "taken, and not run inside the handler")
        for _ in 0..<1000 where state.ran.load(ordering: .relaxed) == call { usleep(1000) }
        #expect(state.ran.load(ordering: .relaxed) == call + 1)
      }
    }
  }
}

/// The calls a `FlushService` holds, and whether the held call's client got its answer.
private final class FlushState: Sendable {
  let server = Mutex<GRPCServer?>(nil)
  let held = Mutex<ServerCall?>(nil)
  let heldAnswered = DispatchSemaphore(value: 0)
}

/// `Hold` keeps its call unanswered; `Release` (on another connection, same loop) answers
/// the held call, sends the loop's output now, and waits for the held call's client to
/// have its answer before answering itself: [1] if it came while the loop was still in
/// this handler, [0] if not.
private struct FlushService: GRPCService {
  let serviceName = "test.Flush"
  let state: FlushState

  var methods: [ServiceMethod] {
    [
      ServiceMethod(path: "/test.Flush/Hold") { [state] call in
        state.held.withLock { $0 = call }
      },
      ServiceMethod(path: "/test.Flush/Release") { [state] call in
        state.held.withLock { $0 }!.respond([7])
        state.server.withLock { $0 }!.flushLoopOutput()
        let inTime = state.heldAnswered.wait(timeout: .now() + .seconds(3)) == .success
        call.respond([inTime ? 1 : 0])
        state.server.withLock { $0 }!.flushLoopOutput()  // its own input: left for the pass
      },
    ]
  }
}

@Suite struct FlushLoopOutputTests {
  /// An answer given on the loop leaves at `flushLoopOutput`, before the loop's pass ends
  /// (here while the loop is still in another connection's handler); the connection whose
  /// input is being processed is left for the end of the pass; off the loop it does
  /// nothing.
  @Test func answersLeaveBeforeTheEndOfThePass() throws {
    let state = FlushState()
    try withServer(
      FlushService(state: state), loops: 1, publish: { s in state.server.withLock { $0 = s } }
    ) {
      server, connect in
      server.flushLoopOutput()  // not a loop thread: nothing to do
      let holder = try connect()
      let releaser = try connect()
      let heldAnswer = Mutex<[UInt8]?>(nil)
      let holding = DispatchGroup()
      holding.enter()
      DispatchQueue.global().async {
        let answer = try? holder.unary("/test.Flush/Hold", request: []).message
        heldAnswer.withLock { $0 = answer }
        state.heldAnswered.signal()
        holding.leave()
      }
      for _ in 0..<1000 where state.held.withLock({ $0 }) == nil { usleep(1000) }
      #expect(try releaser.unary("/test.Flush/Release", request: []).message == [1])
      holding.wait()
      #expect(heldAnswer.withLock { $0 } == [7])
    }
  }
}
