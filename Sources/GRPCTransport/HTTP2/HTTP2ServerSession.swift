// The server's protocol engine for one connection: an nghttp2 server session that turns
// HTTP/2 bytes into gRPC calls and call results back into bytes. No I/O: bytes in
// (`receive`), bytes out (`produce`). Owned by one thread, the connection's loop.

import CNGHTTP2
import Glibc

/// Limits a server session enforces.
public struct SessionLimits: Sendable {
  public var maxMessageBytes = 4 * 1024 * 1024
  /// Calls a connection may have open at once; one more is answered RESOURCE_EXHAUSTED
  /// (SPEC §3: too many streams).
  public var maxConcurrentStreams = 256
  /// Streams over `maxConcurrentStreams` a client may open before nghttp2 closes the
  /// connection (`GOAWAY(PROTOCOL_ERROR)`): SETTINGS_MAX_CONCURRENT_STREAMS advertises the
  /// sum, so gRPC clients send calls over the limit (and get the error at once) rather
  /// than queue them, while the streams a connection holds stay bounded.
  public static let refusedStreamsInFlight = 128
  var advertisedConcurrentStreams: UInt32 {
    UInt32(min(maxConcurrentStreams + Self.refusedStreamsInFlight, Int(Int32.max)))
  }
  public var maxHeaderListBytes = 16 * 1024
  /// Answer bytes a connection may hold unsent (its client reads slowly or not at all)
  /// before its next calls wait to run until that falls back under it.
  public var maxQueuedResponseBytes = 16 * 1024 * 1024
  /// Request bytes a connection may hold for calls not running yet (messages arriving, or
  /// arrived and waiting to run), at least two messages of `maxMessageBytes`: the call
  /// whose data goes over it is refused RESOURCE_EXHAUSTED and its bytes dropped, so
  /// request bodies that never end cannot take the server's memory. High enough that a
  /// client with dozens of multi-megabyte batches in flight on one connection is served.
  public var maxBufferedRequestBytes = 256 * 1024 * 1024
  var requestBytesLimit: Int { max(maxBufferedRequestBytes, 2 * maxMessageBytes) }
  public init() {}
}

/// One request stream and its response state. Loop thread only.
/// What a request's `content-type` says: gRPC with protobuf messages (`application/grpc`,
/// `application/grpc+proto`, either with `;parameters`), gRPC with another message codec
/// (`application/grpc+json`: answered UNIMPLEMENTED), or not gRPC at all (HTTP 415).
enum GRPCContentType: Equatable {
  case missing
  case notGRPC
  case protobuf
  case otherCodec(String)

  init(_ ct: UnsafeBufferPointer<UInt8>) {
    let prefix: StaticString = "application/grpc"
    let n = prefix.utf8CodeUnitCount
    guard ct.count >= n, memcmp(ct.baseAddress!, prefix.utf8Start, n) == 0 else {
      self = .notGRPC
      return
    }
    if ct.count == n || ct[n] == UInt8(ascii: ";") {
      self = .protobuf
      return
    }
    guard ct[n] == UInt8(ascii: "+") else {
      self = .notGRPC
      return
    }
    let rest = ct[(n + 1)...]
    let codec = rest.prefix { $0 != UInt8(ascii: ";") }
    if codec.elementsEqual("proto".utf8) {
      self = .protobuf
    } else {
      self = .otherCodec(String(decoding: codec.prefix(64), as: UTF8.self))
    }
  }
}

final class HTTP2Stream {
  private(set) var id: Int32
  // The session owns its streams and outlives them: it is not retained for the calls the
  // stream makes to it (`withSession`).
  private let session: Unmanaged<HTTP2ServerSession>
  // Request.
  var isPost = false
  var path = ""
  var contentType = GRPCContentType.missing
  var grpcEncoding: String?
  var timeoutNanos: UInt64?
  var metadata = Metadata()
  var headerBytes = 0
  var headersTooLarge = false
  var deframer: GRPCMessageDeframer
  var requestMessage: [UInt8]?
  /// The request bytes this stream holds, as counted in the session's `requestBytes`.
  var heldRequestBytes = 0
  var requestEnded = false
  var route: ServiceMethod?
  /// What the route's admit check returned (`ServerCall.admission`), once it ran.
  var admission: AnyObject?
  var admitted = false
  var call: ServerCall?
  var deadlineTimer: LoopTimer?
  // Response.
  var headersSent = false
  var finished = false
  var outbound: [UInt8] = []
  var outOffset = 0
  var pendingTrailers: HeaderList?
  var pendingOKTrailers = false
  var deferred = false
  var drainedCallbacks: [@Sendable () -> Void] = []
  /// Armed when a call ended discarding its unsent answer with a message partly sent: the
  /// time its client has to take the rest (`HTTP2ServerSession.partialMessageGraceNanos`).
  var partialMessageTimer: LoopTimer?
  /// Closed by nghttp2 (a held call whose stream closed is not run).
  var closed = false
  // The session's list of open streams (intrusive, so no hashing per call). It does not
  // retain them: nghttp2's stream user data does, until `remove` has unlinked the stream.
  var prev: Unmanaged<HTTP2Stream>?
  var next: Unmanaged<HTTP2Stream>?

  init(id: Int32, session: HTTP2ServerSession, maxMessageBytes: Int) {
    self.id = id
    self.session = Unmanaged.passUnretained(session)
    deframer = GRPCMessageDeframer(maxMessageBytes: maxMessageBytes)
  }

  /// Makes a closed stream, which nothing else references any more, as `init` leaves a
  /// new one (for stream `id`), so its session can reuse it for a new stream instead of
  /// allocating one (`HTTP2ServerSession.spareStreams`). Every field `init` sets is set
  /// here; a unit test compares a reused stream with a new one field by field.
  func reuse(id: Int32) {
    self.id = id
    isPost = false
    path = ""
    contentType = .missing
    grpcEncoding = nil
    timeoutNanos = nil
    metadata = Metadata()
    headerBytes = 0
    headersTooLarge = false
    deframer = GRPCMessageDeframer(maxMessageBytes: deframer.maxMessageBytes)
    requestMessage = nil
    heldRequestBytes = 0
    requestEnded = false
    route = nil
    admission = nil
    admitted = false
    call = nil
    deadlineTimer = nil
    headersSent = false
    finished = false
    // Emptied, its room kept when small (an answer's, `takeAnswerRoom`).
    if outbound.capacity > HTTP2ServerSession.keptAnswerRoom {
      outbound = []
    } else {
      outbound.removeAll(keepingCapacity: true)
    }
    outOffset = 0
    pendingTrailers = nil
    pendingOKTrailers = false
    deferred = false
    drainedCallbacks = []
    partialMessageTimer = nil
    closed = false
    prev = nil
    next = nil
  }

  func sendHeaders(_ metadata: Metadata) { withSession { $0.sendHeaders(self, metadata) } }

  /// The room an earlier answer left in `outbound` (a reused stream's), handed out empty
  /// for the next answer to be built in; an empty array while the stream holds output.
  func takeAnswerRoom() -> [UInt8] {
    guard outbound.isEmpty else { return [] }
    var room: [UInt8] = []
    swap(&room, &outbound)
    return room
  }
  func sendMessage(_ message: [UInt8], whenDrained: (@Sendable () -> Void)?) {
    withSession { $0.sendMessage(self, message, whenDrained: whenDrained) }
  }
  func sendFramed(_ framed: consuming [UInt8]) {
    // Moved on, not copied: a copy would make the session copy the bytes to write the prefix.
    var framed = Optional(framed)
    withSession { $0.sendFramed(self, framed.take()!) }
  }
  func finish(_ status: RPCStatus, trailers: Metadata, discardingUnsent: Bool = false) {
    withSession {
      $0.finish(self, status, trailers: trailers, discardingUnsent: discardingUnsent)
    }
  }

  /// Calls `body` with the session, not retained for the call.
  @inline(__always)
  private func withSession(_ body: (HTTP2ServerSession) -> Void) {
    session._withUnsafeGuaranteedRef(body)
  }
}

/// The nghttp2 server session of one connection.
final class HTTP2ServerSession {
  private var session: OpaquePointer!
  /// The session's cache of nghttp2's small blocks (CNGHTTP2/shim.h): a stream's frames
  /// and buffers reuse freed blocks instead of a malloc/free pair each.
  private let pool: UnsafeMutablePointer<subcenter_pool> = {
    let p = UnsafeMutablePointer<subcenter_pool>.allocate(capacity: 1)
    p.initialize(to: subcenter_pool())
    return p
  }()
  private let router: Router
  let limits: SessionLimits
  let loop: any CallLoop
  /// Called when there is output to produce outside of a receive/produce cycle (a call
  /// answered later). The owner flushes soon. (Constants, so calling them retains nothing.)
  let onOutputPending: () -> Void
  /// Open streams: a doubly linked list through the streams, which does not retain them;
  /// nghttp2's stream user data does, from a stream's first HEADERS until `remove`.
  private var firstStream: Unmanaged<HTTP2Stream>?
  /// Handlers' per-connection storage.
  let context = ConnectionContext()
  private(set) var activeStreams = 0
  /// Streams begun so far (the connection's watchdog tells idleness by it).
  private(set) var streamsBegun = 0
  /// The stream whose request header block has begun and not ended (HTTP/2 allows one at
  /// a time), if any: its headers go to it without a lookup. Not retained: `remove` clears
  /// it.
  private var headerBlock: Unmanaged<HTTP2Stream>?
  /// The id of `headerBlock`'s stream.
  var headerBlockStream: Int32? { headerBlock?._withUnsafeGuaranteedRef { $0.id } }
  /// The client's connection preface and first SETTINGS have arrived.
  fileprivate(set) var clientStarted = false
  private(set) var isDraining = false
  /// The last path seen and its route: clients mostly repeat one method on a connection,
  /// so this spares a String and a dictionary lookup per call.
  private var lastPathBytes: [UInt8] = []
  private var lastPath = ""
  private var lastRoute: ServiceMethod?
  /// Metadata values this connection sent recently: a client repeats its authorization
  /// and user-agent on every call, so they are shared instead of allocated per call.
  private var recentValues: [RecentValue] = []
  private var nextRecentValue = 0
  /// The metadata of the header block in progress, shared with the last block's when the
  /// client repeats it.
  private var blockMetadata = RepeatedMetadata()
  /// Counts answered calls (OK or not) for the server's metrics.
  let onCallFinished: (RPCStatus.Code) -> Void
  /// Answer bytes queued on streams that nghttp2 has not taken yet.
  private(set) var queuedResponseBytes = 0
  /// Streams whose request ended while `queuedResponseBytes` was over the limit: their
  /// calls run, in order, once it is back under (the handler has not run yet).
  private var held: [HTTP2Stream] = []
  /// Request bytes held for calls not running yet (`SessionLimits.maxBufferedRequestBytes`).
  private(set) var requestBytes = 0
  /// Answer bytes handed to nghttp2 so far (the watchdog tells a stuck answer by it).
  private(set) var answerBytesSent = 0
  /// Closed streams kept for new ones (`HTTP2Stream.reuse`): a busy connection opens and
  /// closes streams all the time, and an allocation and a free cost more than clearing
  /// one. At most `maxSpareStreams`; dropped when the connection is quiet. Each holds the
  /// reference nghttp2's stream user data held, which a reused one hands back to it.
  private var spareStreams: [Unmanaged<HTTP2Stream>] = []
  static let maxSpareStreams = 64
  /// How many closed streams are kept for reuse (tests).
  var spareStreamCount: Int { spareStreams.count }

  /// Some call's request has begun and not ended (nor been answered).
  var hasRequestInProgress: Bool {
    var s = firstStream
    while let stream = s?.takeUnretainedValue() {
      if !stream.requestEnded && !stream.finished { return true }
      s = stream.next
    }
    return false
  }

  init(
    router: Router, limits: SessionLimits, loop: any CallLoop,
    onOutputPending: @escaping () -> Void = {},
    onCallFinished: @escaping (RPCStatus.Code) -> Void = { _ in }
  ) throws(HTTP2Error) {
    self.router = router
    self.limits = limits
    self.loop = loop
    self.onOutputPending = onOutputPending
    self.onCallFinished = onCallFinished
    var callbacks: OpaquePointer?
    nghttp2_session_callbacks_new(&callbacks)
    defer { nghttp2_session_callbacks_del(callbacks) }
    nghttp2_session_callbacks_set_on_begin_headers_callback(callbacks, onBeginHeaders)
    nghttp2_session_callbacks_set_on_header_callback(callbacks, onHeader)
    nghttp2_session_callbacks_set_on_frame_recv_callback(callbacks, onFrameRecv)
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(callbacks, onDataChunk)
    nghttp2_session_callbacks_set_on_stream_close_callback(callbacks, onStreamClose)
    nghttp2_session_callbacks_set_on_frame_send_callback(callbacks, onFrameSend)

    var option: OpaquePointer?
    nghttp2_option_new(&option)
    defer { nghttp2_option_del(option) }
    // Rapid reset (CVE-2023-44487) and CONTINUATION flood (CVE-2024-27316) limits.
    nghttp2_option_set_stream_reset_rate_limit(option, 1000, 33)
    nghttp2_option_set_max_continuations(option, 8)
    nghttp2_option_set_no_http_messaging(option, 0)
    // A value with leading or trailing whitespace (`authorization: Bearer `) reaches the
    // service, which answers with a gRPC status, instead of a reset stream.
    nghttp2_option_set_no_rfc9113_leading_and_trailing_ws_validation(option, 1)

    var s: OpaquePointer?
    var mem = subcenter_pool_mem(pool)  // copied by nghttp2
    let rv = nghttp2_session_server_new3(
      &s, callbacks, Unmanaged.passUnretained(self).toOpaque(), option, &mem)
    guard rv == 0, let s else {
      throw HTTP2Error(code: Int(rv), what: "nghttp2_session_server_new3")
    }
    session = s

    var settings = [
      nghttp2_settings_entry(
        settings_id: Int32(NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS.rawValue),
        value: limits.advertisedConcurrentStreams),
      nghttp2_settings_entry(
        settings_id: Int32(NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE.rawValue),
        value: UInt32(limits.maxHeaderListBytes)),
      nghttp2_settings_entry(
        settings_id: Int32(NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE.rawValue), value: 1 << 20),
    ]
    let srv = nghttp2_submit_settings(
      session, UInt8(NGHTTP2_FLAG_NONE.rawValue), &settings, settings.count)
    guard srv == 0 else { throw HTTP2Error(code: Int(srv), what: "nghttp2_submit_settings") }
    nghttp2_session_set_local_window_size(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), 0, 8 << 20)
  }

  deinit {
    dropSpareStreams()
    nghttp2_session_del(session)
    subcenter_pool_destroy(pool)
    pool.deallocate()
  }

  // MARK: Bytes in and out

  /// Feeds plaintext HTTP/2 bytes. Returns false on a fatal protocol error: the owner
  /// flushes what is queued (GOAWAY) and closes.
  func receive(_ bytes: UnsafeRawBufferPointer) -> Bool {
    let rv = nghttp2_session_mem_recv(
      session, bytes.baseAddress!.assumingMemoryBound(to: UInt8.self), bytes.count)
    return rv >= 0
  }

  /// Appends outgoing HTTP/2 bytes to `out` until nghttp2 has no more or `out` holds at
  /// least `limit` bytes. Returns false on a fatal error.
  func produce(into out: inout [UInt8], limit: Int) -> Bool {
    while out.count < limit {
      var data: UnsafePointer<UInt8>?
      let n = nghttp2_session_mem_send(session, &data)
      if n < 0 { return false }
      if n == 0 { break }
      out.append(contentsOf: UnsafeBufferPointer(start: data, count: n))
    }
    if !held.isEmpty { runHeldCalls() }
    return true
  }

  /// Runs the held calls while the queued answers stay under the limit.
  private func runHeldCalls() {
    var next = 0
    while next < held.count, queuedResponseBytes <= limits.maxQueuedResponseBytes {
      let s = held[next]
      next += 1
      if !s.closed, !s.finished, let route = s.route, s.requestMessage != nil {
        startCall(s, route)
      }
    }
    held.removeFirst(next)
  }

  var wantsRead: Bool { nghttp2_session_want_read(session) != 0 }
  var wantsWrite: Bool { nghttp2_session_want_write(session) != 0 }

  /// Graceful shutdown, step 1: a GOAWAY announcing the end, streams still accepted.
  func beginDrain() {
    guard !isDraining else { return }
    isDraining = true
    nghttp2_submit_shutdown_notice(session)
  }

  /// Graceful shutdown, step 2: the final GOAWAY; streams above the last one processed
  /// are refused, those below finish.
  func finalGoAway() {
    nghttp2_submit_goaway(
      session, UInt8(NGHTTP2_FLAG_NONE.rawValue), nghttp2_session_get_last_proc_stream_id(session),
      UInt32(NGHTTP2_NO_ERROR.rawValue), nil, 0)
  }

  /// A GOAWAY for an abrupt close (protocol error).
  func terminate(_ code: UInt32 = UInt32(NGHTTP2_PROTOCOL_ERROR.rawValue)) {
    nghttp2_session_terminate_session(session, code)
  }

  /// A GOAWAY (NO_ERROR) for a connection closed because its calls were stuck.
  func terminateStuck() { terminate(UInt32(NGHTTP2_NO_ERROR.rawValue)) }

  /// The connection is gone: cancel every call still running.
  func cancelAll() {
    while let first = firstStream {
      // nghttp2's reference, taken over: the stream goes at the end of the iteration.
      let s = first.takeRetainedValue()
      nghttp2_session_set_stream_user_data(session, s.id, nil)
      remove(s)
    }
  }

  /// Unlinks `s` and cancels its call if unfinished. The caller has taken over the reference
  /// nghttp2's stream user data held (and cleared it).
  private func remove(_ s: HTTP2Stream) {
    if let p = s.prev {
      p._withUnsafeGuaranteedRef { $0.next = s.next }
    } else {
      firstStream = s.next
    }
    s.next?._withUnsafeGuaranteedRef { $0.prev = s.prev }
    s.prev = nil
    s.next = nil
    if headerBlock?.toOpaque() == Unmanaged.passUnretained(s).toOpaque() { headerBlock = nil }
    activeStreams -= 1
    s.closed = true
    dropUnsentOutput(s)
    dropRequest(s)
    detach(s)
  }

  private func detach(_ s: HTTP2Stream) {
    s.deadlineTimer.take()?.cancel()
    s.partialMessageTimer.take()?.cancel()
    // Taken out of the stream (moved, not retained once more).
    if let call = s.call.take() {
      call.stream = nil
      if !s.finished {
        // The client reset the stream or went away before the answer: a cancelled call.
        s.finished = true
        onCallFinished(.cancelled)
        call.cancel()
      }
    }
  }

  // MARK: Request events (nghttp2 callbacks land here)

  fileprivate func beginHeaders(_ streamID: Int32) {
    // A reference for nghttp2's stream user data: a spare's, or a new stream's.
    let unretained: Unmanaged<HTTP2Stream>
    if let spare = spareStreams.popLast() {
      spare._withUnsafeGuaranteedRef { $0.reuse(id: streamID) }
      unretained = spare
    } else {
      unretained = Unmanaged.passRetained(
        HTTP2Stream(id: streamID, session: self, maxMessageBytes: limits.maxMessageBytes))
    }
    unretained._withUnsafeGuaranteedRef { $0.next = firstStream }
    firstStream?._withUnsafeGuaranteedRef { $0.prev = unretained }
    firstStream = unretained
    activeStreams += 1
    streamsBegun += 1
    headerBlock = unretained
    blockMetadata.begin()
    nghttp2_session_set_stream_user_data(session, streamID, unretained.toOpaque())
  }

  /// Runs `body` on stream `id`, whose request header block is in progress: `headerBlock`,
  /// not retained for the call (no handler runs from a header), or if it is not that one,
  /// the stream nghttp2 holds.
  @inline(__always)
  fileprivate func withHeaderBlockStream(_ id: Int32, _ body: (HTTP2Stream) -> Void) {
    if let b = headerBlock, b._withUnsafeGuaranteedRef({ $0.id == id }) {
      b._withUnsafeGuaranteedRef(body)
    } else {
      _ = withStream(session, id, body)
    }
  }

  fileprivate func header(
    _ s: HTTP2Stream, _ name: UnsafePointer<UInt8>, _ nlen: Int, _ value: UnsafePointer<UInt8>,
    _ vlen: Int
  ) {
    s.headerBytes += nlen + vlen + 32
    if s.headerBytes > limits.maxHeaderListBytes {
      s.headersTooLarge = true
      return
    }
    if name[0] == UInt8(ascii: ":") {
      if bytesEqual(name, nlen, ":path") {
        if vlen == lastPathBytes.count && memcmp(value, lastPathBytes, vlen) == 0 {
          s.path = lastPath
        } else {
          lastPathBytes = Array(UnsafeBufferPointer(start: value, count: vlen))
          lastPath = makeString(value, vlen)
          lastRoute = router.method(for: lastPath)
          s.path = lastPath
        }
      } else if bytesEqual(name, nlen, ":method") {
        s.isPost = bytesEqual(value, vlen, "POST")
      }
      return
    }
    if bytesEqual(name, nlen, "content-type") {
      s.contentType = GRPCContentType(UnsafeBufferPointer(start: value, count: vlen))
    } else if bytesEqual(name, nlen, "grpc-timeout") {
      s.timeoutNanos = GRPCTimeout.parse(makeString(value, vlen))
    } else if bytesEqual(name, nlen, "grpc-encoding") {
      s.grpcEncoding = makeString(value, vlen)
    } else if bytesEqual(name, nlen, "te") || bytesEqual(name, nlen, "grpc-accept-encoding") {
      return
    } else {
      blockMetadata.add(
        UnsafeBufferPointer(start: name, count: nlen),
        UnsafeBufferPointer(start: value, count: vlen)
      ) { (Self.headerName(name, nlen), metadataValue(value, vlen)) }
    }
  }

  private struct RecentValue {
    var bytes: [UInt8]
    var string: String
  }

  /// A metadata value as a String, shared with an earlier call of this connection when
  /// the bytes are the same (comparing them costs less than decoding them again). Long
  /// values are not worth keeping.
  private func metadataValue(_ p: UnsafePointer<UInt8>, _ n: Int) -> String {
    guard n <= 256 else { return makeString(p, n) }
    for v in recentValues where v.bytes.count == n && memcmp(p, v.bytes, n) == 0 {
      return v.string
    }
    let v = RecentValue(
      bytes: Array(UnsafeBufferPointer(start: p, count: n)), string: makeString(p, n))
    if recentValues.count < 4 {
      recentValues.append(v)
    } else {
      recentValues[nextRecentValue] = v
      nextRecentValue = (nextRecentValue + 1) % recentValues.count
    }
    return v.string
  }

  /// Request headers complete: validate, route, and arm the deadline.
  fileprivate func requestHeadersDone(_ s: HTTP2Stream, endStream: Bool) {
    headerBlock = nil
    s.metadata = blockMetadata.end()
    if s.headersTooLarge {
      respondImmediately(
        s,
        RPCStatus(
          .resourceExhausted, "request header list exceeds \(limits.maxHeaderListBytes) bytes"))
      return
    }
    if !s.isPost {
      respondHTTP(s, status: "405")
      return
    }
    if activeStreams > limits.maxConcurrentStreams {
      respondImmediately(
        s,
        RPCStatus(
          .resourceExhausted,
          "too many concurrent streams on this connection: the limit is "
            + "\(limits.maxConcurrentStreams) (--max-concurrent-streams)"))
      return
    }
    switch s.contentType {
    case .protobuf: break
    case .missing, .notGRPC:
      respondHTTP(s, status: "415")
      return
    case .otherCodec(let codec):
      respondImmediately(
        s,
        RPCStatus(
          .unimplemented,
          "content-type application/grpc+\(codec) is not supported: this server speaks "
            + "protobuf (application/grpc or application/grpc+proto)"))
      return
    }
    guard let route = s.path == lastPath ? lastRoute : router.method(for: s.path) else {
      respondImmediately(s, RPCStatus(.unimplemented, "unknown method \(s.path)"))
      return
    }
    s.route = route
    if let t = s.timeoutNanos {
      s.deadlineTimer = loop.scheduleTimer(after: t) { [unowned self, unowned s] in
        s.deadlineTimer = nil
        self.deadlineExceeded(s)
      }
    }
    if endStream { requestEnded(s) }
  }

  /// Header names most requests carry, shared instead of allocated per call.
  private static func headerName(_ p: UnsafePointer<UInt8>, _ n: Int) -> String {
    if bytesEqual(p, n, "authorization") { return "authorization" }
    if bytesEqual(p, n, "user-agent") { return "user-agent" }
    if bytesEqual(p, n, "accept-encoding") { return "accept-encoding" }
    return makeString(p, n)
  }

  fileprivate func data(_ s: HTTP2Stream, _ bytes: UnsafeRawBufferPointer) {
    guard s.route != nil, !s.finished else { return }
    do {
      try s.deframer.process(bytes) { (m) throws(RPCStatus) in
        if m.compressed {
          guard let enc = s.grpcEncoding, enc != "identity" else {
            throw RPCStatus(
              .internal,
              s.grpcEncoding == nil
                ? "compressed message without grpc-encoding"
                : "compressed message with grpc-encoding identity")
          }
          throw RPCStatus(.unimplemented, "grpc-encoding \(enc) is not supported")
        }
        guard s.requestMessage == nil else {
          throw RPCStatus(.internal, "more than one request message for \(s.path)")
        }
        s.requestMessage = m.bytes
      }
    } catch {
      respondImmediately(s, error)
      return
    }
    countRequestBytes(s)
    if s.heldRequestBytes > Self.admitAfterBytes && !s.admitted, let admit = s.route?.admit {
      s.admitted = true
      do { s.admission = try admit(s.metadata, context) } catch {
        respondImmediately(s, error)
        return
      }
    }
    if requestBytes > limits.requestBytesLimit {
      respondImmediately(
        s,
        RPCStatus(
          .resourceExhausted,
          "request messages arriving on this connection exceed \(limits.requestBytesLimit) "
            + "bytes (calls not running yet hold them; --max-request-bytes-per-connection): "
            + "send fewer large requests at once"))
    }
  }

  /// A request larger than this has its route's admit check run once this much of it has
  /// arrived, before more is kept: a caller without the credential cannot make the server
  /// hold its large bodies. Smaller ones (nearly all) are checked by their handler alone,
  /// which costs a call less than checking twice; their connection's watchdog closes
  /// streams whose request never ends.
  static let admitAfterBytes = 64 * 1024

  /// Brings `s`'s share of `requestBytes` up to date.
  private func countRequestBytes(_ s: HTTP2Stream) {
    let now = s.deframer.bufferedBytes + (s.requestMessage?.count ?? 0)
    requestBytes += now - s.heldRequestBytes
    s.heldRequestBytes = now
  }

  /// Frees what `s` holds of its request (answered, or closed, before its call ran).
  private func dropRequest(_ s: HTTP2Stream) {
    guard s.heldRequestBytes > 0 || !s.deframer.isIdle || s.requestMessage != nil else { return }
    s.deframer = GRPCMessageDeframer(maxMessageBytes: limits.maxMessageBytes)
    s.requestMessage = nil
    countRequestBytes(s)
  }

  fileprivate func requestEnded(_ s: HTTP2Stream) {
    s.requestEnded = true
    guard let route = s.route, !s.finished, s.call == nil else { return }
    guard s.deframer.isIdle, s.requestMessage != nil else {
      respondImmediately(
        s,
        RPCStatus(
          .internal,
          s.deframer.isIdle
            ? "no request message for \(s.path)"
            : "the request body does not end at the end of a message (is its length prefix "
              + "right?)"))
      return
    }
    if queuedResponseBytes > limits.maxQueuedResponseBytes {
      held.append(s)
      return
    }
    startCall(s, route)
  }

  /// Runs the call of `s`, whose request message has arrived.
  private func startCall(_ s: HTTP2Stream, _ route: ServiceMethod) {
    let request = s.requestMessage.take()!
    countRequestBytes(s)
    let call = ServerCall(
      path: s.path, metadata: s.metadata, request: request,
      deadline: s.timeoutNanos.map { min(monotonicNanos(), .max - $0) + $0 }, loop: loop, stream: s,
      connection: context, admission: s.admission)
    s.admission = nil
    s.call = call
    route.handler(call)
  }

  private func deadlineExceeded(_ s: HTTP2Stream) {
    guard !s.finished else { return }
    finish(s, RPCStatus(.deadlineExceeded, "deadline exceeded"), trailers: Metadata())
    if let call = s.call { call.cancel() }
  }

  /// Stream `closing` is closed: takes over nghttp2's reference to it. The stream goes
  /// once done with, unless kept for a new one (nothing else references it any more).
  fileprivate func streamClosed(_ closing: Unmanaged<HTTP2Stream>) {
    closing._withUnsafeGuaranteedRef { s in
      nghttp2_session_set_stream_user_data(session, s.id, nil)
      remove(s)
    }
    var s = closing.takeRetainedValue()
    // Its timers capture it unowned (not counted here): `remove` cancelled them, and a
    // stream with one still set is not reused.
    if spareStreams.count < Self.maxSpareStreams && isKnownUniquelyReferenced(&s)
      && s.deadlineTimer == nil && s.partialMessageTimer == nil
    {
      spareStreams.append(Unmanaged.passRetained(s))
    }
  }

  /// Frees the streams kept for reuse (the connection is quiet).
  func dropSpareStreams() {
    for s in spareStreams { s.release() }
    spareStreams = []
  }

  /// Our side ended the stream while the client was still sending: tell it to stop.
  fileprivate func frameSent(_ s: HTTP2Stream) {
    guard !s.requestEnded else { return }
    if nghttp2_session_get_stream_remote_close(session, s.id) == 0 {
      nghttp2_submit_rst_stream(
        session, UInt8(NGHTTP2_FLAG_NONE.rawValue), s.id, UInt32(NGHTTP2_NO_ERROR.rawValue))
    }
  }

  // MARK: Responses

  private static let okHeaders = HeaderList([
    (":status", "200"), ("content-type", "application/grpc"),
  ])

  func sendHeaders(_ s: HTTP2Stream, _ metadata: Metadata) {
    guard !s.headersSent, !s.finished else { return }
    s.headersSent = true
    var provider = nghttp2_data_provider(
      source: nghttp2_data_source(ptr: nil), read_callback: readResponseData)
    if metadata.isEmpty {
      _ = nghttp2_submit_response(
        session, s.id, StaticHeaders.ok.nv, StaticHeaders.ok.count, &provider)
    } else {
      var headers = Self.okHeaders
      for (k, v) in metadata { headers.add(k, v) }
      headers.withNVs { nv, n in _ = nghttp2_submit_response(session, s.id, nv, n, &provider) }
    }
    onOutputPending()
  }

  func sendMessage(_ s: HTTP2Stream, _ message: [UInt8], whenDrained: (@Sendable () -> Void)?) {
    guard !s.finished else {
      s.call?.noteHandedOff(message.count + 5)
      return
    }
    if s.outOffset == s.outbound.count {
      if !s.outbound.isEmpty { s.outbound.removeAll(keepingCapacity: true) }
      s.outOffset = 0
      s.outbound.reserveCapacity(message.count + 5)
    } else if s.outOffset >= Self.sentBytesKept {
      dropSentMessages(s)
    }
    GRPCMessageFramer.frame(message, into: &s.outbound)
    queuedResponseBytes += message.count + GRPCMessageFramer.prefixSize
    outboundAdded(s, whenDrained: whenDrained)
  }

  /// Sends a message whose first `GRPCMessageFramer.prefixSize` bytes are spare: they
  /// take the prefix, and the array becomes the stream's output without a copy when
  /// nothing else is waiting to go out.
  /// `framed` is consumed: the prefix is written into the caller's buffer, not a copy.
  func sendFramed(_ s: HTTP2Stream, _ framed: consuming [UInt8]) {
    guard !s.finished else {
      s.call?.noteHandedOff(framed.count)
      return
    }
    var framed = consume framed
    GRPCMessageFramer.writePrefix(&framed)
    queuedResponseBytes += framed.count
    if s.outOffset == s.outbound.count {
      s.outbound = framed
      s.outOffset = 0
    } else {
      if s.outOffset >= Self.sentBytesKept { dropSentMessages(s) }
      s.outbound.append(contentsOf: framed)
    }
    outboundAdded(s, whenDrained: nil)
  }

  private func outboundAdded(_ s: HTTP2Stream, whenDrained: (@Sendable () -> Void)?) {
    if let w = whenDrained { s.drainedCallbacks.append(w) }
    if !s.headersSent {
      sendHeaders(s, Metadata())
    } else if s.deferred {
      s.deferred = false
      nghttp2_session_resume_data(session, s.id)
      onOutputPending()
    }
  }

  /// How long a call ended with `discardingUnsent` while a message of its answer was
  /// partly sent may take to send the rest before its stream is reset. The rest is at most
  /// one message, and such an end comes from a handler giving up on a client that reads
  /// too slowly (the change feed's cut-off comes after 30 s without progress): a client
  /// that still reads takes it in well under a second; one that grants no window in 5 s
  /// is taken for one that never will.
  static let partialMessageGraceNanos: UInt64 = 5_000_000_000

  /// Ends the call with `status`. The trailers follow the answer queued so far; with
  /// `discardingUnsent` (`ServerCall.finish`), the messages not yet started on the wire are
  /// dropped and the trailers go at once, after the rest of a partly sent message only.
  func finish(
    _ s: HTTP2Stream, _ status: RPCStatus, trailers: Metadata, discardingUnsent: Bool = false
  ) {
    guard !s.finished else { return }
    s.finished = true
    dropRequest(s)
    s.deadlineTimer?.cancel()
    s.deadlineTimer = nil
    onCallFinished(status.code)
    var list = HeaderList()
    if !s.headersSent {
      // Trailers-Only: one HEADERS frame with END_STREAM.
      s.headersSent = true
      list = Self.okHeaders
      appendStatus(&list, status, trailers)
      list.withNVs { nv, n in _ = nghttp2_submit_response(session, s.id, nv, n, nil) }
    } else if s.outOffset == s.outbound.count || (discardingUnsent && dropUnsentMessages(s)) {
      // Nothing is left to send but the trailers: HEADERS are not flow-controlled, so they
      // go now, even to a client that grants no window (it would otherwise keep the stream
      // and its status until it reads). The stream's DATA source, deferred or not, is
      // dropped by nghttp2 once END_STREAM has gone.
      appendStatus(&list, status, trailers)
      list.withNVs { nv, n in _ = nghttp2_submit_trailer(session, s.id, nv, n) }
    } else {
      if status.code == .ok && status.message.isEmpty && trailers.isEmpty {
        s.pendingOKTrailers = true
      } else {
        appendStatus(&list, status, trailers)
        s.pendingTrailers = list
      }
      if s.deferred {
        s.deferred = false
        nghttp2_session_resume_data(session, s.id)
      }
      if discardingUnsent {
        s.partialMessageTimer = loop.scheduleTimer(after: Self.partialMessageGraceNanos) {
          [unowned self, unowned s] in
          s.partialMessageTimer = nil
          self.partialMessageGraceOver(s)
        }
      }
    }
    onOutputPending()
  }

  /// The bytes stream `id` keeps for its answer, sent or not (tests).
  func outboundBytes(of id: Int32) -> Int? {
    streamOf(session, id)?.outbound.count
  }

  /// Sent bytes a stream's `outbound` may keep in front of its unsent ones. It is emptied
  /// when all is sent; a client that stays a little behind a long stream (a change feed
  /// reader) would otherwise keep everything ever sent on it.
  static let sentBytesKept = 256 * 1024

  /// Where the message holding byte `outOffset` of `s.outbound` starts and ends.
  /// `outbound` starts at a message boundary (it is emptied only once wholly sent, cut
  /// only at a message's start, and messages are appended whole, prefix included): the
  /// prefixes are walked from there.
  private func currentMessage(_ s: HTTP2Stream) -> (start: Int, end: Int) {
    var start = 0
    var end = 0
    s.outbound.withUnsafeBufferPointer { b in
      while end <= s.outOffset && end < b.count {
        start = end
        let length =
          Int(b[end + 1]) << 24 | Int(b[end + 2]) << 16 | Int(b[end + 3]) << 8 | Int(b[end + 4])
        end += GRPCMessageFramer.prefixSize + length
      }
    }
    return (start, end)
  }

  /// Takes `n` bytes of `s`'s answer off the queued counts (the connection's and the
  /// call's): handed to nghttp2, or dropped.
  private func unqueue(_ n: Int, of s: HTTP2Stream) {
    guard n != 0 else { return }
    queuedResponseBytes -= n
    s.call?.noteHandedOff(n)
  }

  /// Drops all of `s`'s answer bytes not yet handed to nghttp2, off the counts too.
  private func dropUnsentOutput(_ s: HTTP2Stream) {
    unqueue(s.outbound.count - s.outOffset, of: s)
    // An empty buffer of at most `keptAnswerRoom` is the room a sent answer left: it stays.
    if !s.outbound.isEmpty || s.outbound.capacity > Self.keptAnswerRoom { s.outbound = [] }
    s.outOffset = 0
  }

  /// The capacity of an answer buffer a finished stream keeps for its next answer.
  static let keptAnswerRoom = 1024

  /// Frees the wholly sent messages in front of `s.outbound`.
  private func dropSentMessages(_ s: HTTP2Stream) {
    let start = currentMessage(s).start
    s.outbound.removeSubrange(0..<start)
    s.outOffset -= start
  }

  /// Drops the messages queued on `s` that no byte of has been handed to nghttp2, and the
  /// stream's `whenDrained` callbacks (they never run: the call is over, as when the client
  /// cancels). Returns true when nothing is left to send; false when a message is partly
  /// sent: its rest stays, alone in `outbound`.
  private func dropUnsentMessages(_ s: HTTP2Stream) -> Bool {
    s.drainedCallbacks = []
    let sent = s.outOffset
    let (start, end) = currentMessage(s)
    guard start < sent && sent < s.outbound.count else {
      // No byte of the message at `outOffset` went (or nothing is left): all goes.
      dropUnsentOutput(s)
      return true
    }
    unqueue(s.outbound.count - end, of: s)
    // A copy of the rest of that message only: the memory of the others goes now.
    s.outbound = Array(s.outbound[start..<end])
    s.outOffset = sent - start
    return false
  }

  /// The rest of the partly sent message of a call that ended discarding its answer did
  /// not go within `partialMessageGraceNanos` (its client grants no window): the stream is
  /// reset with ENHANCE_YOUR_CALM, which gRPC clients report as RESOURCE_EXHAUSTED, and
  /// its output is dropped, so nothing of it stays until the client goes away.
  private func partialMessageGraceOver(_ s: HTTP2Stream) {
    guard !s.closed, s.outOffset < s.outbound.count else { return }
    dropUnsentOutput(s)
    s.pendingTrailers = nil
    s.pendingOKTrailers = false
    nghttp2_submit_rst_stream(
      session, UInt8(NGHTTP2_FLAG_NONE.rawValue), s.id,
      UInt32(NGHTTP2_ENHANCE_YOUR_CALM.rawValue))
    onOutputPending()
  }

  private func appendStatus(_ list: inout HeaderList, _ status: RPCStatus, _ trailers: Metadata) {
    list.add("grpc-status", String(status.code.rawValue))
    if !status.message.isEmpty { list.add("grpc-message", PercentEncoding.encode(status.message)) }
    if status.code == .unimplemented && status.message.hasPrefix("grpc-encoding") {
      list.add("grpc-accept-encoding", "identity")
    }
    for (k, v) in trailers { list.add(k, v) }
  }

  /// An error known before the handler ran: Trailers-Only, and the stream reset with
  /// NO_ERROR if the client is still sending.
  private func respondImmediately(_ s: HTTP2Stream, _ status: RPCStatus) {
    s.route = nil
    finish(s, status, trailers: Metadata())
  }

  /// A non-gRPC HTTP answer (405, 415): headers only.
  private func respondHTTP(_ s: HTTP2Stream, status: String) {
    s.route = nil
    s.finished = true
    s.headersSent = true
    HeaderList([(":status", status)]).withNVs { nv, n in
      _ = nghttp2_submit_response(session, s.id, nv, n, nil)
    }
    onCallFinished(.unknown)
  }

  /// nghttp2 asks for response body bytes of `s`.
  fileprivate func readData(
    _ s: HTTP2Stream, _ buf: UnsafeMutablePointer<UInt8>, _ length: Int,
    _ flags: UnsafeMutablePointer<UInt32>
  ) -> Int {
    let available = s.outbound.count - s.outOffset
    var n = 0
    if available > 0 {
      n = min(length, available)
      s.outbound.withUnsafeBytes { src in
        buf.update(
          from: src.baseAddress!.assumingMemoryBound(to: UInt8.self) + s.outOffset, count: n)
      }
      s.outOffset += n
      answerBytesSent += n
      unqueue(n, of: s)
      if s.outOffset == s.outbound.count {
        if s.finished {
          // No message follows: a small buffer is kept, empty, for the answer of the next
          // call the stream is reused for (`takeAnswerRoom`); a larger one goes now.
          s.outbound.removeAll(keepingCapacity: s.outbound.capacity <= Self.keptAnswerRoom)
        } else {
          s.outbound.removeAll(keepingCapacity: s.outbound.count <= 64 * 1024)
        }
        s.outOffset = 0
        if !s.drainedCallbacks.isEmpty {
          let cbs = s.drainedCallbacks
          s.drainedCallbacks = []
          loop.execute { for cb in cbs { cb() } }
        }
      } else {
        return n
      }
    }
    if s.pendingOKTrailers {
      s.pendingOKTrailers = false
      flags.pointee |= UInt32(
        NGHTTP2_DATA_FLAG_EOF.rawValue | NGHTTP2_DATA_FLAG_NO_END_STREAM.rawValue)
      _ = nghttp2_submit_trailer(
        session, s.id, StaticHeaders.okStatus.nv, StaticHeaders.okStatus.count)
      return n
    }
    if let trailers = s.pendingTrailers {
      s.pendingTrailers = nil
      flags.pointee |= UInt32(
        NGHTTP2_DATA_FLAG_EOF.rawValue | NGHTTP2_DATA_FLAG_NO_END_STREAM.rawValue)
      trailers.withNVs { nv, count in _ = nghttp2_submit_trailer(session, s.id, nv, count) }
      return n
    }
    if n > 0 { return n }
    s.deferred = true
    return errDeferred
  }
}

// MARK: - nghttp2 callbacks: find the session or stream, hand off to Swift at once.

/// Runs `body` on the session, not retained for the call: every callback comes from
/// `nghttp2_session_mem_recv` or `_mem_send`, which the session itself is running.
@inline(__always)
private func withSession<R>(_ user: UnsafeMutableRawPointer?, _ body: (HTTP2ServerSession) -> R)
  -> R
{
  Unmanaged<HTTP2ServerSession>.fromOpaque(user!)._withUnsafeGuaranteedRef(body)
}

@inline(__always)
private func streamOf(_ session: OpaquePointer?, _ id: Int32) -> HTTP2Stream? {
  guard let p = nghttp2_session_get_stream_user_data(session, id) else { return nil }
  return Unmanaged<HTTP2Stream>.fromOpaque(p).takeUnretainedValue()
}

/// Runs `body` on stream `id`, if it is open, not retained for the call: for the callbacks
/// whose handling never drops a stream (only `streamClosed` and `cancelAll` do, and no
/// handler runs from these).
@inline(__always)
private func withStream<R>(_ session: OpaquePointer?, _ id: Int32, _ body: (HTTP2Stream) -> R)
  -> R?
{
  guard let p = nghttp2_session_get_stream_user_data(session, id) else { return nil }
  return Unmanaged<HTTP2Stream>.fromOpaque(p)._withUnsafeGuaranteedRef(body)
}

private let onBeginHeaders: nghttp2_on_begin_headers_callback = { _, frame, user in
  let hd = frame!.pointee.hd
  if hd.type == frameHeaders && frame!.pointee.headers.cat == NGHTTP2_HCAT_REQUEST {
    withSession(user) { $0.beginHeaders(hd.stream_id) }
  }
  return 0
}

private let onHeader: nghttp2_on_header_callback = {
  session, frame, name, nlen, value, vlen, _, user in
  // Request headers only; trailers from a client carry nothing we use.
  guard frame!.pointee.headers.cat == NGHTTP2_HCAT_REQUEST else { return 0 }
  withSession(user) { me in
    me.withHeaderBlockStream(frame!.pointee.hd.stream_id) { s in
      me.header(s, name!, nlen, value!, vlen)
    }
  }
  return 0
}

private let onFrameRecv: nghttp2_on_frame_recv_callback = { session, frame, user in
  let hd = frame!.pointee.hd
  if hd.type == frameSettings {
    withSession(user) { $0.clientStarted = true }
    return 0
  }
  guard hd.type == frameHeaders || hd.type == frameData, let s = streamOf(session, hd.stream_id)
  else { return 0 }
  let endStream = hd.flags & flagEndStream != 0
  let isRequestHeaders =
    hd.type == frameHeaders && frame!.pointee.headers.cat == NGHTTP2_HCAT_REQUEST
  withSession(user) { me in
    if isRequestHeaders {
      me.requestHeadersDone(s, endStream: endStream)
    } else if endStream {
      me.requestEnded(s)
    }
  }
  return 0
}

private let onDataChunk: nghttp2_on_data_chunk_recv_callback = { session, _, id, data, len, user in
  withSession(user) { me in
    withStream(session, id) { s in me.data(s, UnsafeRawBufferPointer(start: data, count: len)) }
  }
  return 0
}

private let onStreamClose: nghttp2_on_stream_close_callback = { session, id, _, user in
  guard let p = nghttp2_session_get_stream_user_data(session, id) else { return 0 }
  withSession(user) { $0.streamClosed(Unmanaged<HTTP2Stream>.fromOpaque(p)) }
  return 0
}

private let onFrameSend: nghttp2_on_frame_send_callback = { session, frame, user in
  let hd = frame!.pointee.hd
  if (hd.type == frameHeaders || hd.type == frameData) && hd.flags & flagEndStream != 0 {
    withSession(user) { me in withStream(session, hd.stream_id) { s in me.frameSent(s) } }
  }
  return 0
}

private let readResponseData: nghttp2_data_source_read_callback = {
  session, id, buf, length, flags, _, user in
  let n = withSession(user) { me in
    withStream(session, id) { s in me.readData(s, buf!, length, flags!) }
  }
  return n ?? Int(NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE.rawValue)
}
