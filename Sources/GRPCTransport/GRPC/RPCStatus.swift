// gRPC status codes and the status a call ends with (grpc's doc/statuscodes.md).

/// A call's outcome: a code and an optional human-readable message.
public struct RPCStatus: Error, Equatable, Sendable, CustomStringConvertible {
  /// The canonical gRPC status codes.
  public enum Code: Int, Sendable, CaseIterable {
    case ok = 0
    case cancelled = 1
    case unknown = 2
    case invalidArgument = 3
    case deadlineExceeded = 4
    case notFound = 5
    case alreadyExists = 6
    case permissionDenied = 7
    case resourceExhausted = 8
    case failedPrecondition = 9
    case aborted = 10
    case outOfRange = 11
    case unimplemented = 12
    case `internal` = 13
    case unavailable = 14
    case dataLoss = 15
    case unauthenticated = 16

    /// The name gRPC uses, e.g. `INVALID_ARGUMENT`.
    public var name: String {
      switch self {
      case .ok: "OK"
      case .cancelled: "CANCELLED"
      case .unknown: "UNKNOWN"
      case .invalidArgument: "INVALID_ARGUMENT"
      case .deadlineExceeded: "DEADLINE_EXCEEDED"
      case .notFound: "NOT_FOUND"
      case .alreadyExists: "ALREADY_EXISTS"
      case .permissionDenied: "PERMISSION_DENIED"
      case .resourceExhausted: "RESOURCE_EXHAUSTED"
      case .failedPrecondition: "FAILED_PRECONDITION"
      case .aborted: "ABORTED"
      case .outOfRange: "OUT_OF_RANGE"
      case .unimplemented: "UNIMPLEMENTED"
      case .internal: "INTERNAL"
      case .unavailable: "UNAVAILABLE"
      case .dataLoss: "DATA_LOSS"
      case .unauthenticated: "UNAUTHENTICATED"
      }
    }

    /// The status a client infers from an HTTP status when no grpc-status came
    /// (grpc's doc/http-grpc-status-mapping.md).
    public init(httpStatus: Int) {
      switch httpStatus {
      case 400: self = .internal
      case 401: self = .unauthenticated
      case 403: self = .permissionDenied
      case 404: self = .unimplemented
      case 429, 502, 503, 504: self = .unavailable
      default: self = .unknown
      }
    }
  }

  public var code: Code
  public var message: String

  public init(_ code: Code, _ message: String = "") {
    self.code = code
    self.message = message
  }

  public static let ok = RPCStatus(.ok)

  public var description: String { message.isEmpty ? code.name : "\(code.name): \(message)" }
}

/// An error a handler throws that knows its gRPC status. Domain errors conform to this in
/// one place each, so the mapping to status codes is never scattered.
public protocol RPCStatusConvertible: Error {
  var rpcStatus: RPCStatus { get }
}

extension RPCStatus: RPCStatusConvertible {
  public var rpcStatus: RPCStatus { self }
}
