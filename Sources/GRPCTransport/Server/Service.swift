// What a server serves: methods by path, grouped into services.

/// One method a server routes to. The handler runs on the connection's loop thread once
/// the request message has arrived; it must not block, and answers through the call
/// (now, or later from any thread). A class: a call's stream and its session hold the
/// route with one reference count, not one per closure and the path.
public final class ServiceMethod: Sendable {
  /// `/package.Service/Method`.
  public let path: String
  let handler: @Sendable (ServerCall) -> Void
  /// Checked on the loop thread once 64 KiB of a request have arrived, before more of it
  /// is kept (`HTTP2ServerSession.admitAfterBytes`; smaller requests go to the handler
  /// unchecked): a thrown status refuses the call at once (the body is dropped); what it
  /// returns is handed to the handler (`ServerCall.admission`), so that it need not work it
  /// out again. For what the metadata alone decides, such as the credential.
  let admit: (@Sendable (Metadata, ConnectionContext) throws(RPCStatus) -> AnyObject?)?

  /// A method that answers through `call` whenever it is ready (from any thread),
  /// possibly with a stream of messages; `admit`, if given, may refuse a call with a large
  /// request by its metadata before the rest of its body is read.
  public init(
    path: String,
    admit: (@Sendable (Metadata, ConnectionContext) throws(RPCStatus) -> AnyObject?)? = nil,
    handler: @escaping @Sendable (ServerCall) -> Void
  ) {
    self.path = path
    self.admit = admit
    self.handler = handler
  }

  /// A unary method answered on the loop thread: return the response bytes or throw a
  /// status.
  public static func unary(
    _ path: String, _ body: @escaping @Sendable (ServerCall) throws -> [UInt8]
  ) -> ServiceMethod {
    ServiceMethod(path: path) { call in
      do { call.respond(try body(call)) } catch { call.fail(error) }
    }
  }
}

/// A named group of methods (`package.Service`), registered with a server.
public protocol GRPCService: Sendable {
  /// The fully qualified service name, e.g. `grpc.health.v1.Health`.
  var serviceName: String { get }
  var methods: [ServiceMethod] { get }
}

/// The immutable routing table of a server.
struct Router: Sendable {
  private var table: [String: ServiceMethod] = [:]
  private(set) var serviceNames: [String] = []

  init(_ services: [any GRPCService]) {
    for s in services {
      serviceNames.append(s.serviceName)
      for m in s.methods { table[m.path] = m }
    }
  }

  func method(for path: String) -> ServiceMethod? { table[path] }
}
