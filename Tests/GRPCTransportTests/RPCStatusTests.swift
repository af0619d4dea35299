// Status codes, their names, and the HTTP status mapping.

import Testing

@testable import GRPCTransport

@Suite struct RPCStatusTests {
  @Test func rawValuesAndNames() {
    let names = [
      "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
      "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
      "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
      "UNAUTHENTICATED",
    ]
    #expect(RPCStatus.Code.allCases.map(\.rawValue) == Array(0...16))
    #expect(RPCStatus.Code.allCases.map(\.name) == names)
    for raw in 0...16 { #expect(RPCStatus.Code(rawValue: raw)?.rawValue == raw) }
    #expect(RPCStatus.Code(rawValue: 17) == nil)
    #expect(RPCStatus.Code.invalidArgument.name == "INVALID_ARGUMENT")
  }

  @Test(
    arguments: [
      (400, .internal), (401, .unauthenticated), (403, .permissionDenied), (404, .unimplemented),
      (429, .unavailable), (502, .unavailable), (503, .unavailable), (504, .unavailable),
      (200, .unknown), (415, .unknown), (500, .unknown), (0, .unknown),
    ] as [(Int, RPCStatus.Code)])
  func httpStatusMapping(http: Int, code: RPCStatus.Code) {
    #expect(RPCStatus.Code(httpStatus: http) == code)
  }

  struct MissingThing: RPCStatusConvertible {
    var rpcStatus: RPCStatus { RPCStatus(.notFound, "no such thing") }
  }

  @Test func convertibleErrors() {
    let errors: [any Error] = [MissingThing(), RPCStatus(.aborted, "retry")]
    let statuses = errors.map { ($0 as? any RPCStatusConvertible)?.rpcStatus }
    #expect(statuses == [RPCStatus(.notFound, "no such thing"), RPCStatus(.aborted, "retry")])
    #expect(RPCStatus.ok.code == .ok && RPCStatus.ok.message.isEmpty)
  }

  @Test func description() {
    #expect(RPCStatus(.ok).description == "OK")
    #expect(RPCStatus(.notFound, "no such thing").description == "NOT_FOUND: no such thing")
  }
}
