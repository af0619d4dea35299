// grpc.health.v1.Health: Check and Watch for "" and each registered service. Needs no
// credentials. Watch streams the current status and every change.

import Synchronization

/// The standard health service of a server.
public final class HealthService: GRPCService, @unchecked Sendable {
  // All mutable state is in `state` (a Mutex).
  public enum ServingStatus: UInt64, Sendable {
    case unknown = 0
    case serving = 1
    case notServing = 2
    case serviceUnknown = 3
  }

  private struct Watcher {
    let id: Int
    let service: String
    let call: ServerCall
  }

  private struct State {
    var statuses: [String: ServingStatus] = [:]
    /// `statuses[""]`, the server's own status: what most checks ask for, read here without
    /// hashing the name.
    var serverStatus = ServingStatus.serving
    var watchers: [Watcher] = []
    var nextID = 0
  }

  private let state: Mutex<State>

  public let serviceName = "grpc.health.v1.Health"

  init(serviceNames: [String]) {
    var s = State()
    s.statuses[""] = .serving
    for n in serviceNames { s.statuses[n] = .serving }
    s.statuses["grpc.health.v1.Health"] = .serving
    state = Mutex(s)
  }

  /// Sets the status of `service` ("" for the server) and notifies its watchers.
  public func setStatus(_ status: ServingStatus, for service: String) {
    let toNotify = state.withLock { s -> [ServerCall] in
      guard s.statuses[service] != status else { return [] }
      s.statuses[service] = status
      if service.isEmpty { s.serverStatus = status }
      return s.watchers.filter { $0.service == service }.map(\.call)
    }
    let message = Self.encode(status)
    for call in toNotify { call.send(message) }
  }

  /// Sets every known service to `status`.
  public func setAll(_ status: ServingStatus) {
    let names = state.withLock { Array($0.statuses.keys) }
    for n in names { setStatus(status, for: n) }
  }

  /// Server shutdown: every service NOT_SERVING, and each Watch stream ends (UNAVAILABLE)
  /// so it does not hold the graceful shutdown open.
  func shutdown() {
    setAll(.notServing)
    let calls = state.withLock { s -> [ServerCall] in
      defer { s.watchers = [] }
      return s.watchers.map(\.call)
    }
    for c in calls { c.finish(RPCStatus(.unavailable, "the server is shutting down")) }
  }

  public var methods: [ServiceMethod] {
    [
      .unary("/grpc.health.v1.Health/Check") { [self] call in
        let service: String
        if call.request.isEmpty {
          service = ""
        } else if let s = ProtobufWire.string(field: 1, in: call.request) {
          service = s
        } else {
          throw RPCStatus(.internal, "could not parse HealthCheckRequest")
        }
        guard
          let status = state.withLock({ service.isEmpty ? $0.serverStatus : $0.statuses[service] })
        else {
          throw RPCStatus(.notFound, "unknown service \(service)")
        }
        return Self.encode(status)
      },
      ServiceMethod(path: "/grpc.health.v1.Health/Watch") { [self] call in
        guard let service = ProtobufWire.string(field: 1, in: call.request) else {
          call.finish(RPCStatus(.internal, "could not parse HealthCheckRequest"))
          return
        }
        let (id, status) = state.withLock { s -> (Int, ServingStatus) in
          s.nextID += 1
          s.watchers.append(Watcher(id: s.nextID, service: service, call: call))
          return (s.nextID, s.statuses[service] ?? .serviceUnknown)
        }
        call.onCancel { [self] in
          state.withLock { $0.watchers.removeAll { $0.id == id } }
        }
        call.send(Self.encode(status))
      },
    ]
  }

  static func encode(_ status: ServingStatus) -> [UInt8] {
    encoded[Int(status.rawValue)]
  }

  private static let encoded: [[UInt8]] = (0...3).map { ProtobufWire.varintField(1, UInt64($0)) }
}
