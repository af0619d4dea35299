// Client-side helpers for grpc.health.v1 messages (the server side is HealthService).

public enum HealthMessages {
  /// An encoded HealthCheckRequest.
  public static func request(service: String) -> [UInt8] {
    ProtobufWire.stringField(1, service)
  }

  /// The status name in an encoded HealthCheckResponse, e.g. "SERVING".
  public static func statusName(_ response: [UInt8]) -> String {
    let value = ProtobufWire.varint(field: 1, in: response) ?? 0
    switch HealthService.ServingStatus(rawValue: value) {
    case .serving: return "SERVING"
    case .notServing: return "NOT_SERVING"
    case .serviceUnknown: return "SERVICE_UNKNOWN"
    default: return "UNKNOWN"
    }
  }
}
