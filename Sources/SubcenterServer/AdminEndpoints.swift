// The admin HTTP endpoints: /metrics (Prometheus text), /healthz (the process answers),
// /readyz (ready to serve gRPC).

import GRPCTransport

public enum AdminEndpoints {
  /// The handler for `AdminHTTPServer`, reading live figures from `server`.
  public static func handler(server: GRPCServer, isReady: @escaping @Sendable () -> Bool)
    -> @Sendable (String) -> AdminResponse
  {
    { path in
      switch path {
      case "/healthz":
        return AdminResponse(status: 200, body: "ok\n")
      case "/readyz":
        return isReady()
          ? AdminResponse(status: 200, body: "ready\n")
          : AdminResponse(status: 503, body: "not ready\n")
      case "/metrics":
        let s = server.stats
        let text = """
          # HELP subcenter_grpc_calls_total gRPC calls answered, by status (OK or other).
          # TYPE subcenter_grpc_calls_total counter
          subcenter_grpc_calls_total{code="OK"} \(s.callsOK)
          subcenter_grpc_calls_total{code="other"} \(s.callsFailed)
          # HELP subcenter_open_connections TLS connections open now.
          # TYPE subcenter_open_connections gauge
          subcenter_open_connections \(s.openConnections)

          """
        return AdminResponse(status: 200, contentType: "text/plain; version=0.0.4", body: text)
      default:
        return AdminResponse(status: 404, body: "not found: try /metrics, /healthz, /readyz\n")
      }
    }
  }
}
