// The handler-facing side of one call: the request, its metadata and deadline, and the
// means to answer: now, later from any thread, or as a stream of messages.

import Synchronization

/// What a loop offers to the calls and sessions it owns.
protocol CallLoop: AnyObject, Sendable {
  /// True on the loop's own thread.
  var inLoop: Bool { get }
  /// Runs `task` on the loop thread. Safe from any thread.
  func execute(_ task: @escaping @Sendable () -> Void)
  /// Schedules `action` on the loop thread. Loop thread only.
  func scheduleTimer(after nanoseconds: UInt64, _ action: @escaping () -> Void) -> LoopTimer
}

extension EventLoop: CallLoop {
  func scheduleTimer(after nanoseconds: UInt64, _ action: @escaping () -> Void)
    -> LoopTimer
  { schedule(after: nanoseconds, action) }
}

/// Per-connection storage for handlers, e.g. a credential already verified on this
/// connection. Read and written only on the connection's loop thread (where handlers
/// start); never from a thread a handler hands work to.
public final class ConnectionContext {
  public var userData: AnyObject?
  init() {}
}

/// One incoming call. Its answering methods are safe from any thread: off the loop they
/// hop onto the connection's loop, which owns the HTTP/2 stream.
public final class ServerCall: @unchecked Sendable {
  // `stream` is read and written only on the loop thread; the rest is immutable or
  // behind `cancellation`.
  /// `/package.Service/Method`.
  public let path: String
  /// Request metadata (headers that are not pseudo-headers or gRPC-reserved).
  public let metadata: Metadata
  /// The request message (unary and server-streaming calls have exactly one).
  public let request: [UInt8]
  /// Monotonic deadline in nanoseconds (CLOCK_MONOTONIC), if the client set grpc-timeout.
  public let deadline: UInt64?

  let loop: any CallLoop
  var stream: HTTP2Stream?
  /// The connection's storage: use it only in the handler's synchronous part.
  public let connection: ConnectionContext
  /// What the method's admit check returned for this call, if it has one
  /// (`ServiceMethod.init(path:admit:handler:)`).
  public let admission: AnyObject?
  private let cancellation = Mutex<CancelState>(CancelState())
  private let cancelled = Atomic<Bool>(false)
  private let buffered = Atomic<Int>(0)

  private struct CancelState {
    var handlers: [@Sendable () -> Void] = []
  }

  init(
    path: String, metadata: Metadata, request: [UInt8], deadline: UInt64?, loop: any CallLoop,
    stream: HTTP2Stream, connection: ConnectionContext, admission: AnyObject? = nil
  ) {
    self.connection = connection
    self.admission = admission
    self.path = path
    self.metadata = metadata
    self.request = request
    self.deadline = deadline
    self.loop = loop
    self.stream = stream
  }

  /// True once the client cancelled, the deadline passed, or the connection went away.
  public var isCancelled: Bool { cancelled.load(ordering: .acquiring) }

  /// Bytes of response messages accepted by `send` and not yet handed to HTTP/2 (flow
  /// control holds them while the client reads slowly).
  public var bufferedBytes: Int { buffered.load(ordering: .relaxed) }

  /// Runs `body` (on the loop thread) when the call is cancelled; at once if it already is.
  public func onCancel(_ body: @escaping @Sendable () -> Void) {
    let runNow = cancellation.withLock { s -> Bool in
      if cancelled.load(ordering: .acquiring) { return true }
      s.handlers.append(body)
      return false
    }
    if runNow { body() }
  }

  /// Sends response headers with `metadata` now (otherwise they go with the first message).
  public func sendInitialMetadata(_ metadata: Metadata) {
    onLoop { $0.sendHeaders(metadata) }
  }

  /// Queues one response message. `whenBuffered`, if given, runs on the loop once the
  /// stream's buffer is empty again (all handed to HTTP/2): the signal for a streaming
  /// producer to send more.
  public func send(_ message: [UInt8], whenDrained: (@Sendable () -> Void)? = nil) {
    buffered.add(message.count + 5, ordering: .relaxed)
    if loop.inLoop {
      stream?.sendMessage(message, whenDrained: whenDrained)
    } else {
      onLoop { $0.sendMessage(message, whenDrained: whenDrained) }
    }
  }

  /// Ends the call with `status` and trailing metadata. Later calls are ignored.
  ///
  /// The status follows the messages sent before, once the client has taken them. With
  /// `discardingUnsent`, the call ends now instead, for a client that reads too slowly or
  /// not at all: the messages not yet started on the wire are dropped (their memory goes,
  /// `bufferedBytes` falls, their `whenDrained` callbacks never run) and the status goes at
  /// once, however little the client reads (HTTP/2 does not hold trailers for flow
  /// control). A message already partly sent is completed first, so the client never sees
  /// one cut short; if the client has not taken its rest 5 s later, the stream is reset
  /// with ENHANCE_YOUR_CALM instead (gRPC clients report RESOURCE_EXHAUSTED) and nothing of
  /// the call stays.
  public func finish(
    _ status: RPCStatus, trailers: Metadata = Metadata(), discardingUnsent: Bool = false
  ) {
    if loop.inLoop {
      stream?.finish(status, trailers: trailers, discardingUnsent: discardingUnsent)
    } else {
      onLoop { $0.finish(status, trailers: trailers, discardingUnsent: discardingUnsent) }
    }
  }

  /// Sends `message` and ends the call with OK.
  public func respond(_ message: [UInt8], trailers: Metadata = Metadata()) {
    buffered.add(message.count + 5, ordering: .relaxed)
    if loop.inLoop {
      guard let s = stream else { return }
      s.sendMessage(message, whenDrained: nil)
      s.finish(.ok, trailers: trailers)
    } else {
      onLoop {
        $0.sendMessage(message, whenDrained: nil)
        $0.finish(.ok, trailers: trailers)
      }
    }
  }

  /// An empty buffer to build the answer for `respond(framed:)` in. On the loop thread,
  /// the room an earlier call's answer left in the call's stream (a busy connection reuses
  /// its streams), so that answer needs no allocation of its own; elsewhere, a new array.
  public func answerBuffer() -> [UInt8] {
    guard loop.inLoop, let s = stream else { return [] }
    return s.takeAnswerRoom()
  }

  /// `respond` for a message built with `GRPCMessageFramer.prefixSize` spare bytes in
  /// front (the transport writes the prefix there), which is then sent without a copy.
  public func respond(framed: consuming [UInt8]) {
    precondition(framed.count >= GRPCMessageFramer.prefixSize, "no room for the prefix")
    buffered.add(framed.count, ordering: .relaxed)
    if loop.inLoop {
      guard let s = stream else { return }
      s.sendFramed(consume framed)
      s.finish(.ok, trailers: Metadata())
    } else {
      let framed = consume framed
      onLoop {
        $0.sendFramed(framed)
        $0.finish(.ok, trailers: Metadata())
      }
    }
  }

  /// Ends the call with the status of `error` (UNKNOWN for errors that carry none).
  public func fail(_ error: any Error) {
    let status = (error as? any RPCStatusConvertible)?.rpcStatus ?? RPCStatus(.unknown, "\(error)")
    finish(status)
  }

  private func onLoop(_ body: @escaping @Sendable (HTTP2Stream) -> Void) {
    if loop.inLoop {
      if let s = stream { body(s) }
    } else {
      loop.execute { [self] in
        if let s = self.stream { body(s) }
      }
    }
  }

  func noteHandedOff(_ bytes: Int) { buffered.subtract(bytes, ordering: .relaxed) }

  /// Marks the call cancelled and runs the cancel handlers. Loop thread.
  func cancel() {
    let handlers = cancellation.withLock { s -> [@Sendable () -> Void] in
      if cancelled.exchange(true, ordering: .acquiringAndReleasing) { return [] }
      let h = s.handlers
      s.handlers = []
      return h
    }
    for h in handlers { h() }
  }
}
