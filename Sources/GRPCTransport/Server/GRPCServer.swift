// The gRPC server: N event loops each with a SO_REUSEPORT listener, a routing table,
// the health service, counters, and graceful shutdown.

import CLinux
import Glibc
import Synchronization

/// How a server listens and what it enforces.
public struct ServerConfiguration: Sendable {
  public var listen: SocketAddress
  public var loops: Int
  public var tls: TLSContext
  public var limits = SessionLimits()
  /// A connection must finish TLS within this, and then send its HTTP/2 preface and any
  /// request header block it begins within about as long again (the watchdog's period).
  public var handshakeTimeoutNanos: UInt64 = 10_000_000_000
  /// A connection without a stream for this long is closed with GOAWAY (0: never).
  public var idleTimeoutNanos: UInt64 = 300_000_000_000
  /// Connections open at once at most; more are closed as soon as they are accepted.
  public var maxConnections = 10_000
  public var shutdownGraceNanos: UInt64 = 10_000_000_000

  public init(listen: SocketAddress, loops: Int, tls: TLSContext) {
    self.listen = listen
    self.loops = loops
    self.tls = tls
  }
}

/// A running gRPC server. Start it, then `wait` or `shutdown`.
public final class GRPCServer: @unchecked Sendable {
  // Immutable after init except the atomics and `threads` (start/wait on one thread).
  public let configuration: ServerConfiguration
  let router: Router
  /// The TLS context new connections use (`replaceTLS`).
  private let tls: Mutex<TLSContext>
  /// The standard health service, always served.
  public let health: HealthService
  private var loops: [EventLoop] = []
  private var threads: [pthread_t] = []
  private let shuttingDown = Atomic<Bool>(false)
  private let openConnections = Atomic<Int>(0)
  private let refusedConnections = Atomic<Int>(0)
  /// `configuration.maxConnections`, or fewer if the descriptor limit holds no more (`start`).
  public private(set) var connectionLimit = 0
  private let callsOK = Atomic<Int>(0)
  /// Calls answered with each status but OK, by code (rarer than OK: a lock is cheap).
  private let callsNotOK = Mutex([Int](repeating: 0, count: RPCStatus.Code.allCases.count))
  private let logger: @Sendable (String) -> Void
  /// The port actually bound (differs from the configuration when it asked for port 0).
  public private(set) var port: UInt16 = 0

  /// A server for `services` (plus `grpc.health.v1.Health`).
  public init(
    configuration: ServerConfiguration, services: [any GRPCService],
    logger: @escaping @Sendable (String) -> Void = writeStderrLine
  ) {
    self.configuration = configuration
    tls = Mutex(configuration.tls)
    health = HealthService(serviceNames: services.map(\.serviceName))
    router = Router(services + [health])
    self.logger = logger
  }

  /// The TLS context of connections accepted from now on.
  var tlsContext: TLSContext { tls.withLock { $0 } }

  /// Makes connections accepted from now on use `context` (a renewed certificate);
  /// connections already open keep theirs.
  public func replaceTLS(_ context: TLSContext) { tls.withLock { $0 = context } }

  /// Binds every loop's listener and starts the loop threads.
  public func start() throws(SystemError) {
    connectionLimit = Self.fitDescriptorLimit(configuration.maxConnections, log: logger)
    var port = configuration.listen.port
    if port != 0 {
      try Socket.checkFree(SocketAddress(host: configuration.listen.host, port: port))
    }
    for i in 0..<max(configuration.loops, 1) {
      let loop = try EventLoop(index: i)
      loop.server = self
      let l = try Socket.listen(
        SocketAddress(host: configuration.listen.host, port: port), reusePort: true)
      port = l.port
      try loop.setListener(l.fd)
      loops.append(loop)
    }
    self.port = port
    for loop in loops {
      let box = Unmanaged.passRetained(loop).toOpaque()
      var tid = pthread_t()
      let rc = pthread_create(&tid, nil, loopThreadMain, box)
      if rc != 0 { throw SystemError(call: "pthread_create", errno: rc) }
      threads.append(tid)
    }
  }

  /// Descriptors kept for everything but connections (log segments, snapshots, the admin
  /// port's connections, the listeners): `descriptorReserve`, or a quarter of a lower limit.
  static func reservedDescriptors(limit: Int) -> Int { min(descriptorReserve, limit / 4) }
  static let descriptorReserve = 256

  /// Raises the soft descriptor limit (`ulimit -n`) so that `wanted` connections and the
  /// reserved descriptors fit, as far as the hard limit allows; returns how many
  /// connections fit (`wanted`, or fewer with a warning), so that clients cannot take the
  /// descriptors the log needs.
  static func fitDescriptorLimit(_ wanted: Int, log: (String) -> Void) -> Int {
    var limit = rlimit()
    guard getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit) == 0 else {
      return wanted
    }
    let needed = rlim_t(wanted + descriptorReserve)
    if limit.rlim_cur < needed {
      var raised = limit
      raised.rlim_cur = min(needed, limit.rlim_max)
      if setrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &raised) == 0 { limit = raised }
    }
    let available = Int(min(limit.rlim_cur, rlim_t(Int.max / 2)))
    let fits = max(available - reservedDescriptors(limit: available), 1)
    guard fits < wanted else { return wanted }
    log(
      "the descriptor limit (ulimit -n: \(limit.rlim_cur), hard \(limit.rlim_max)) leaves room "
        + "for \(fits) connections, not --max-connections \(wanted): raise it to \(needed)")
    return fits
  }

  /// Sends the pending output of the calling thread's event loop now (the answers given
  /// since its pass began) rather than at the end of the pass, except on a connection in
  /// the middle of its own input or output (the one whose input the loop is reading);
  /// does nothing on any other thread.
  public func flushLoopOutput() {
    for loop in loops where loop.inLoop { loop.flushOutputNow() }
  }

  /// Runs `task` at the end of the current pass of the event loop whose thread calls this
  /// (`EventLoop.atEndOfPass`); returns false, running nothing, on any other thread.
  public func atEndOfLoopPass(_ task: @escaping @Sendable () -> Void) -> Bool {
    for loop in loops where loop.atEndOfPass(task) { return true }
    return false
  }

  /// Runs `task` on event loop `index` (modulo the number of loops) and returns true, or
  /// returns false when that loop is not running (not started, or stopped).
  public func submit(toLoop index: Int, _ task: @escaping @Sendable () -> Void) -> Bool {
    guard !loops.isEmpty else { return false }
    return loops[index % loops.count].submit(task)
  }

  /// Graceful shutdown: stop accepting, GOAWAY every connection, let calls in flight
  /// finish for up to the grace period, then close the rest. Returns at once; `wait`
  /// returns when it is done.
  public func shutdown() {
    guard !shuttingDown.exchange(true, ordering: .acquiringAndReleasing) else { return }
    health.shutdown()
    let grace = configuration.shutdownGraceNanos
    for loop in loops { loop.execute { loop.beginShutdown(gracePeriod: grace) } }
  }

  /// Blocks until every loop thread has ended (after `shutdown`).
  public func wait() {
    for t in threads { pthread_join(t, nil) }
    threads = []
  }

  var isShuttingDown: Bool { shuttingDown.load(ordering: .relaxed) }

  /// Counters for metrics and benchmarks.
  public struct Stats: Sendable {
    public var openConnections: Int
    /// Connections closed on arrival because `connectionLimit` were open.
    public var refusedConnections: Int
    public var callsOK: Int
    /// By status code (`RPCStatus.Code.rawValue`); OK's entry is 0 (see `callsOK`).
    public var callsNotOK: [Int]
  }

  public var stats: Stats {
    Stats(
      openConnections: openConnections.load(ordering: .relaxed),
      refusedConnections: refusedConnections.load(ordering: .relaxed),
      callsOK: callsOK.load(ordering: .relaxed), callsNotOK: callsNotOK.withLock { $0 })
  }

  /// Counts a connection just accepted as open and returns true, or returns false (counting
  /// it refused) when `connectionLimit` are open already.
  func admitConnection() -> Bool {
    var open = openConnections.load(ordering: .relaxed)
    while open < connectionLimit {
      let (done, seen) = openConnections.compareExchange(
        expected: open, desired: open + 1, ordering: .relaxed)
      if done { return true }
      open = seen
    }
    let refused = refusedConnections.wrappingAdd(1, ordering: .relaxed).newValue
    if refused % 1000 == 1 {
      log(
        "\(connectionLimit) connections open (--max-connections): closing new ones "
          + "(\(refused) so far)")
    }
    return false
  }
  func connectionClosed() { openConnections.subtract(1, ordering: .relaxed) }
  func callFinished(_ code: RPCStatus.Code) {
    if code == .ok {
      callsOK.add(1, ordering: .relaxed)
    } else {
      callsNotOK.withLock { $0[code.rawValue] += 1 }
    }
  }

  func log(_ line: String) { logger(line) }
}

/// Thread entry point of a loop (kept out of main.swift: see NOTES.md).
private func loopThreadMain(_ arg: UnsafeMutableRawPointer?) -> UnsafeMutableRawPointer? {
  let loop = Unmanaged<EventLoop>.fromOpaque(arg!).takeRetainedValue()
  CLinux_set_thread_name("loop-\(loop.index)")
  loop.run()
  return nil
}
