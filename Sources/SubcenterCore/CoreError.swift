// The one error type of the domain and the store. The server maps each kind to a gRPC
// status code in one place; messages never contain an identifier's value (no PII).

/// A refused call: what went wrong (`kind`), the request field it is about when there is
/// one (named as the proto names it: `email`, `person.phone`, `topics[2].name`), and a
/// human-readable reason.
public struct CoreError: Error, Equatable, Sendable, CustomStringConvertible {
  /// The kinds the server maps to gRPC codes: each name is the code's.
  public enum Kind: Sendable, Equatable {
    case invalidArgument
    case notFound
    case alreadyExists
    case failedPrecondition
    case permissionDenied
    case resourceExhausted
    case unavailable
  }

  public let kind: Kind
  /// The request field this error is about, when there is one.
  public let field: String?
  /// Why, without the field name.
  public let reason: String

  public init(_ kind: Kind, field: String? = nil, _ reason: String) {
    self.kind = kind
    self.field = field
    self.reason = reason
  }

  /// The status message: `field: reason`, or the reason alone.
  public var message: String {
    guard let field else { return reason }
    return "\(field): \(reason)"
  }

  public var description: String { "\(kind): \(message)" }

  public static func invalidArgument(_ field: String, _ reason: String) -> CoreError {
    CoreError(.invalidArgument, field: field, reason)
  }
  public static func notFound(_ reason: String) -> CoreError { CoreError(.notFound, reason) }
  public static func alreadyExists(_ field: String, _ reason: String) -> CoreError {
    CoreError(.alreadyExists, field: field, reason)
  }
  public static func failedPrecondition(_ field: String?, _ reason: String) -> CoreError {
    CoreError(.failedPrecondition, field: field, reason)
  }
  public static func permissionDenied(_ reason: String) -> CoreError {
    CoreError(.permissionDenied, reason)
  }
  public static func resourceExhausted(_ reason: String) -> CoreError {
    CoreError(.resourceExhausted, reason)
  }
  public static func unavailable(_ reason: String) -> CoreError { CoreError(.unavailable, reason) }
}
