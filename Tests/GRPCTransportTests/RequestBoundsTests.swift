// The edges of what a connection keeps of requests: a method's admit check runs once more
// than `HTTP2ServerSession.admitAfterBytes` of a request have arrived (not for one of
// exactly that many), and the bound on a connection's request bytes is never below two
// messages of `maxMessageBytes`.

import Synchronization
import Testing

@testable import GRPCTransport

/// A method whose admit check refuses every call, counting its runs.
private final class RefusingService: GRPCService {
  let serviceName = "test.Refusing"
  let checks = Atomic<Int>(0)

  var methods: [ServiceMethod] {
    [
      ServiceMethod(
        path: "/test.Refusing/Call",
        admit: { [self] _, _ throws(RPCStatus) in
          checks.add(1, ordering: .relaxed)
          throw RPCStatus(.unauthenticated, "no token")
        }
      ) { call in call.respond([]) }
    ]
  }
}

@Suite struct RequestBoundsTests {
  /// A request message claiming 1 MB: its prefix and the first `bytes` bytes of its body
  /// (what counts as kept).
  private func unfinished(_ bytes: Int) -> [UInt8] {
    [0, 0, 0x0F, 0x42, 0x40] + [UInt8](repeating: 7, count: bytes)
  }

  @Test func theAdmitCheckRunsOnlyPastItsThreshold() throws {
    let service = RefusingService()
    let h = try H2Harness([service])
    let at = h.client.request(
      path: "/test.Refusing/Call", body: unfinished(HTTP2ServerSession.admitAfterBytes),
      endStream: false)
    h.pump()
    #expect(service.checks.load(ordering: .relaxed) == 0)
    #expect(h.client.responses[at]?.headerBlocks.isEmpty ?? true, "not answered")
    #expect(h.server.requestBytes == HTTP2ServerSession.admitAfterBytes)

    let over = h.client.request(
      path: "/test.Refusing/Call", body: unfinished(HTTP2ServerSession.admitAfterBytes + 1),
      endStream: false)
    h.pump()
    #expect(service.checks.load(ordering: .relaxed) == 1)
    let r = try #require(h.client.responses[over])
    #expect(r.header("grpc-status") == "16" && r.header("grpc-message") == "no token")
    #expect(h.server.requestBytes == HTTP2ServerSession.admitAfterBytes, "its bytes dropped")
  }

  @Test func theRequestBoundIsAtLeastTwoMessages() {
    var limits = SessionLimits()
    limits.maxMessageBytes = 4 << 20
    limits.maxBufferedRequestBytes = 1000
    #expect(limits.requestBytesLimit == 8 << 20)
    limits.maxBufferedRequestBytes = (8 << 20) + 1
    #expect(limits.requestBytesLimit == (8 << 20) + 1)
  }
}
