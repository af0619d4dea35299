// A small blocking gRPC client: one TLS + HTTP/2 connection (an nghttp2 client session
// over memory-BIO TLS), unary and server-streaming calls with deadlines and metadata.
// Calls on one client run one at a time; use several clients for parallel load.

import CNGHTTP2
import Glibc
import Synchronization

/// The answer to a unary call.
public struct UnaryResponse: Sendable {
  public var message: [UInt8]
  public var initialMetadata: Metadata
  public var trailingMetadata: Metadata
}

/// A gRPC client connection. Thread-safe: calls are serialized by a lock.
public final class GRPCClient: @unchecked Sendable {
  // Everything mutable is only touched while holding `lock`.
  private let lock = Mutex(())
  private let fd: Int32
  private let tls: TLSSession
  private var session: OpaquePointer!
  private let authority: String
  private var streams: [Int32: ClientStream] = [:]
  private var broken: RPCStatus?
  private let readBuffer = UnsafeMutableRawBufferPointer.allocate(
    byteCount: 64 * 1024, alignment: 16)

  /// Connects to `address` over TLS, checking the certificate against `serverName`
  /// (default: the address's host), and completes the TLS and HTTP/2 handshakes.
  public init(
    address: SocketAddress, serverName: String? = nil, tls context: TLSContext,
    connectTimeoutMillis: Int32 = 10_000
  ) throws(RPCStatus) {
    do { fd = try Socket.connect(address) } catch {
      throw RPCStatus(.unavailable, "cannot connect to \(address): \(error)")
    }
    let name = serverName ?? address.host
    authority = "\(name):\(address.port)"
    do { tls = try TLSSession(context: context, serverName: name) } catch {
      // Not every property is set yet, so deinit will not run: release by hand.
      Glibc.close(fd)
      readBuffer.deallocate()
      throw RPCStatus(.unavailable, "\(error)")
    }
    // From here on a throw runs deinit (every property is set), which closes the socket
    // and frees the buffer: doing it here too freed them twice.
    try handshake(timeoutMillis: connectTimeoutMillis)
    try startSession()
  }

  deinit {
    if session != nil { nghttp2_session_del(session) }
    Glibc.close(fd)
    readBuffer.deallocate()
  }

  /// Makes a unary call. Throws the call's status when it is not OK.
  public func unary(
    _ path: String, request: [UInt8], metadata: Metadata = Metadata(),
    timeoutMillis: Int? = nil
  ) throws(RPCStatus) -> UnaryResponse {
    var messages: [[UInt8]] = []
    let result = try call(path, request: request, metadata: metadata, timeoutMillis: timeoutMillis)
    {
      messages.append($0)
      return true
    }
    guard messages.count == 1 else {
      throw RPCStatus(.internal, "expected one response message, got \(messages.count)")
    }
    return UnaryResponse(
      message: messages[0], initialMetadata: result.initial, trailingMetadata: result.trailing)
  }

  /// Makes a server-streaming call, handing each message to `onMessage` as it arrives;
  /// return false from it to cancel the call. Returns the trailing metadata on OK.
  @discardableResult
  public func serverStreaming(
    _ path: String, request: [UInt8], metadata: Metadata = Metadata(),
    timeoutMillis: Int? = nil, onMessage: ([UInt8]) -> Bool
  ) throws(RPCStatus) -> Metadata {
    try call(path, request: request, metadata: metadata, timeoutMillis: timeoutMillis, onMessage)
      .trailing
  }

  // MARK: - Call machinery

  private func call(
    _ path: String, request: [UInt8], metadata: Metadata, timeoutMillis: Int?,
    _ onMessage: ([UInt8]) -> Bool
  ) throws(RPCStatus) -> (initial: Metadata, trailing: Metadata) {
    try lock.withLock { (_) throws(RPCStatus) -> (initial: Metadata, trailing: Metadata) in
      if let broken { throw broken }
      let deadline = timeoutMillis.map { monotonicNanos() + UInt64(max($0, 0)) * 1_000_000 }
      var headers = HeaderList([
        (":method", "POST"), (":scheme", "https"), (":path", path), (":authority", authority),
        ("content-type", "application/grpc"), ("te", "trailers"),
      ])
      if let t = timeoutMillis {
        headers.add("grpc-timeout", GRPCTimeout.encode(nanoseconds: UInt64(max(t, 0)) * 1_000_000))
      }
      for (k, v) in metadata { headers.add(k, v) }
      let stream = ClientStream(body: GRPCMessageFramer.frame(request))
      var provider = nghttp2_data_provider(
        source: nghttp2_data_source(ptr: nil), read_callback: clientReadRequest)
      let id = headers.withNVs { nv, n in
        nghttp2_submit_request(
          session, nil, nv, n, &provider, Unmanaged.passUnretained(stream).toOpaque())
      }
      guard id > 0 else { throw RPCStatus(.internal, "nghttp2_submit_request failed (\(id))") }
      streams[id] = stream
      defer { streams[id] = nil }
      while true {
        try pump(deadline: deadline, until: { stream.closed || !stream.messages.isEmpty })
        while !stream.messages.isEmpty {
          let m = stream.messages.removeFirst()
          if !onMessage(m) {
            nghttp2_submit_rst_stream(
              session, UInt8(NGHTTP2_FLAG_NONE.rawValue), id, UInt32(NGHTTP2_CANCEL.rawValue))
            try flush()
            throw RPCStatus(.cancelled, "cancelled by the client")
          }
        }
        if stream.closed { break }
        if let d = deadline, monotonicNanos() >= d {
          nghttp2_submit_rst_stream(
            session, UInt8(NGHTTP2_FLAG_NONE.rawValue), id, UInt32(NGHTTP2_CANCEL.rawValue))
          try flush()
          throw RPCStatus(.deadlineExceeded, "deadline exceeded (client)")
        }
      }
      let status = stream.status()
      guard status.code == .ok else { throw status }
      return (stream.initial, stream.trailing)
    }
  }

  /// Sends pending frames, then reads until `done()` or the deadline.
  private func pump(deadline: UInt64?, until done: () -> Bool) throws(RPCStatus) {
    try flush()
    while !done() {
      var wait: Int32 = 1000
      if let d = deadline {
        let now = monotonicNanos()
        if now >= d { return }
        wait = Int32(min((d - now + 999_999) / 1_000_000, 1000))
      }
      var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
      let r = poll(&p, 1, wait)
      if r < 0 && errno != EINTR { throw fail(RPCStatus(.unavailable, "poll failed")) }
      if r <= 0 { continue }
      try readOnce()
      try flush()
    }
  }

  private func readOnce() throws(RPCStatus) {
    let n = Glibc.read(fd, readBuffer.baseAddress, readBuffer.count)
    if n == 0 { throw fail(RPCStatus(.unavailable, "connection closed by the server")) }
    if n < 0 {
      if errno == EINTR || errno == EAGAIN { return }
      throw fail(
        RPCStatus(.unavailable, "\(SystemError(call: "read from the server", errno: errno))"))
    }
    tls.feed(UnsafeRawBufferPointer(rebasing: readBuffer[0..<n]))
    while true {
      let r: TLSSession.ReadResult
      do { r = try tls.read(into: readBuffer) } catch {
        throw fail(RPCStatus(.unavailable, "\(error)"))
      }
      switch r {
      case .bytes(let k):
        let rv = nghttp2_session_mem_recv(
          session, readBuffer.baseAddress!.assumingMemoryBound(to: UInt8.self), k)
        if rv < 0 {
          throw fail(
            RPCStatus(.internal, "HTTP/2 error: \(String(cString: nghttp2_strerror(Int32(rv))))"))
        }
      case .wantMore: return
      case .closed: throw fail(RPCStatus(.unavailable, "TLS closed by the server"))
      }
    }
  }

  private func flush() throws(RPCStatus) {
    while true {
      var data: UnsafePointer<UInt8>?
      let n = nghttp2_session_mem_send(session, &data)
      if n < 0 { throw fail(RPCStatus(.internal, "HTTP/2 send error")) }
      if n == 0 { break }
      do { try tls.write(UnsafeRawBufferPointer(start: data, count: n)) } catch {
        throw fail(RPCStatus(.unavailable, "\(error)"))
      }
    }
    try writeCiphertext()
  }

  private func writeCiphertext() throws(RPCStatus) {
    let out = tls.takeOutput()
    var off = 0
    while off < out.count {
      // MSG_NOSIGNAL: a peer that closed is an error here, not a SIGPIPE that kills the
      // process using this client.
      let n = out.withUnsafeBytes {
        Glibc.send(fd, $0.baseAddress! + off, out.count - off, Int32(MSG_NOSIGNAL))
      }
      if n < 0 && errno == EINTR { continue }
      if n <= 0 {
        let status = RPCStatus(
          .unavailable, "\(SystemError(call: "write to the server", errno: errno))")
        throw fail(alertReceived() ?? status)
      }
      off += n
    }
  }

  /// The TLS alert a server sent before it closed the connection, if one is waiting: why it
  /// closed (a client certificate it requires and did not get, say), which a write to the
  /// closed connection reports only as a broken pipe.
  private func alertReceived() -> RPCStatus? {
    while true {
      let n = recv(fd, readBuffer.baseAddress, readBuffer.count, Int32(MSG_DONTWAIT))
      if n <= 0 { break }
      tls.feed(UnsafeRawBufferPointer(rebasing: readBuffer[0..<n]))
    }
    do {
      while case .bytes = try tls.read(into: readBuffer) {}
    } catch {
      return RPCStatus(.unavailable, "\(error)")
    }
    return nil
  }

  private func fail(_ status: RPCStatus) -> RPCStatus {
    broken = status
    return status
  }

  private func handshake(timeoutMillis: Int32) throws(RPCStatus) {
    let deadline = monotonicNanos() + UInt64(timeoutMillis) * 1_000_000
    while true {
      let done: Bool
      do { done = try tls.handshake() } catch {
        try? writeCiphertext()
        throw RPCStatus(.unavailable, "\(error)")
      }
      try writeCiphertext()
      if done { break }
      let now = monotonicNanos()
      if now >= deadline { throw RPCStatus(.unavailable, "TLS handshake timed out") }
      var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
      if poll(&p, 1, Int32((deadline - now) / 1_000_000) + 1) <= 0 { continue }
      let n = Glibc.read(fd, readBuffer.baseAddress, readBuffer.count)
      if n <= 0 { throw RPCStatus(.unavailable, "connection closed during the TLS handshake") }
      tls.feed(UnsafeRawBufferPointer(rebasing: readBuffer[0..<n]))
    }
    guard tls.negotiatedProtocol == "h2" else {
      throw RPCStatus(.unavailable, "the server did not agree to HTTP/2 (ALPN h2)")
    }
  }

  private func startSession() throws(RPCStatus) {
    var callbacks: OpaquePointer?
    nghttp2_session_callbacks_new(&callbacks)
    defer { nghttp2_session_callbacks_del(callbacks) }
    nghttp2_session_callbacks_set_on_header_callback(callbacks, clientOnHeader)
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(callbacks, clientOnData)
    nghttp2_session_callbacks_set_on_stream_close_callback(callbacks, clientOnClose)
    var s: OpaquePointer?
    guard nghttp2_session_client_new(&s, callbacks, Unmanaged.passUnretained(self).toOpaque()) == 0
    else { throw RPCStatus(.internal, "nghttp2_session_client_new failed") }
    session = s
    var settings = [
      nghttp2_settings_entry(
        settings_id: Int32(NGHTTP2_SETTINGS_ENABLE_PUSH.rawValue), value: 0),
      nghttp2_settings_entry(
        settings_id: Int32(NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE.rawValue), value: 4 << 20),
    ]
    nghttp2_submit_settings(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), &settings, settings.count)
    nghttp2_session_set_local_window_size(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), 0, 16 << 20)
    try flush()
  }

  fileprivate func stream(_ id: Int32) -> ClientStream? { streams[id] }
}

/// Response state of one client call.
final class ClientStream {
  let body: [UInt8]
  var offset = 0
  var initial = Metadata()
  var trailing = Metadata()
  var httpStatus = 0
  var grpcStatus: Int?
  var grpcMessage = ""
  var sawHeaders = false
  var deframer = GRPCMessageDeframer(maxMessageBytes: 1 << 30)
  var messages: [[UInt8]] = []
  var closed = false
  var resetCode: UInt32 = 0
  var protocolError: RPCStatus?

  init(body: [UInt8]) { self.body = body }

  func status() -> RPCStatus {
    if let e = protocolError { return e }
    if let code = grpcStatus {
      return RPCStatus(
        RPCStatus.Code(rawValue: code) ?? .unknown, PercentEncoding.decode(grpcMessage))
    }
    if resetCode != 0 {
      return RPCStatus(
        resetCode == UInt32(NGHTTP2_REFUSED_STREAM.rawValue) ? .unavailable : .internal,
        "stream reset by the server (HTTP/2 error \(resetCode))")
    }
    if httpStatus != 200 && httpStatus != 0 {
      return RPCStatus(RPCStatus.Code(httpStatus: httpStatus), "HTTP status \(httpStatus)")
    }
    return RPCStatus(.internal, "the server sent no grpc-status")
  }
}

private func clientOf(_ user: UnsafeMutableRawPointer?) -> GRPCClient {
  Unmanaged<GRPCClient>.fromOpaque(user!).takeUnretainedValue()
}

private let clientReadRequest: nghttp2_data_source_read_callback = {
  session, id, buf, length, flags, _, user in
  guard let p = nghttp2_session_get_stream_user_data(session, id) else { return 0 }
  let s = Unmanaged<ClientStream>.fromOpaque(p).takeUnretainedValue()
  let n = min(length, s.body.count - s.offset)
  s.body.withUnsafeBufferPointer { b in buf!.update(from: b.baseAddress! + s.offset, count: n) }
  s.offset += n
  if s.offset == s.body.count { flags!.pointee |= UInt32(NGHTTP2_DATA_FLAG_EOF.rawValue) }
  return n
}

private let clientOnHeader: nghttp2_on_header_callback = {
  _, frame, name, nlen, value, vlen, _, user in
  guard let s = clientOf(user).stream(frame!.pointee.hd.stream_id) else { return 0 }
  let n = makeString(name!, nlen)
  let v = makeString(value!, vlen)
  let isTrailer = s.sawHeaders && frame!.pointee.headers.cat == NGHTTP2_HCAT_HEADERS
  switch n {
  case ":status": s.httpStatus = Int(v) ?? 0
  case "grpc-status": s.grpcStatus = Int(v)
  case "grpc-message": s.grpcMessage = v
  case "content-type": break
  default: if isTrailer { s.trailing.add(n, v) } else { s.initial.add(n, v) }
  }
  if frame!.pointee.headers.cat == NGHTTP2_HCAT_RESPONSE { s.sawHeaders = true }
  return 0
}

private let clientOnData: nghttp2_on_data_chunk_recv_callback = { _, _, id, data, len, user in
  guard let s = clientOf(user).stream(id) else { return 0 }
  do throws(RPCStatus) {
    try s.deframer.process(UnsafeRawBufferPointer(start: data, count: len)) {
      (m) throws(RPCStatus) in
      s.messages.append(m.bytes)
    }
  } catch {
    s.protocolError = error
  }
  return 0
}

private let clientOnClose: nghttp2_on_stream_close_callback = { _, id, code, user in
  if let s = clientOf(user).stream(id) {
    s.closed = true
    s.resetCode = code
  }
  return 0
}
