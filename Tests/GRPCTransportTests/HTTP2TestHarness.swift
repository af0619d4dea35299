// Drives an HTTP2ServerSession with no socket: a fake CallLoop whose tasks and timers the
// test runs by hand, and an nghttp2 client session whose bytes are pumped to the server.

import CNGHTTP2
import Synchronization
import Testing

@testable import GRPCTransport

/// A CallLoop run by the test itself: the test's thread is "the loop thread".
final class FakeLoop: CallLoop, @unchecked Sendable {
  // Touched only by the thread running the test (sessions and calls are used from it only).
  private(set) var tasks: [@Sendable () -> Void] = []
  /// Every timer scheduled, with its delay; fire one with `timer.fire()`.
  private(set) var timers: [(delay: UInt64, timer: LoopTimer)] = []

  /// Set to false to act as another thread: calls then hop through `execute`.
  var onLoopThread = true

  var inLoop: Bool { onLoopThread }

  func execute(_ task: @escaping @Sendable () -> Void) { tasks.append(task) }

  func scheduleTimer(after nanoseconds: UInt64, _ action: @escaping () -> Void) -> LoopTimer {
    let t = LoopTimer(deadline: nanoseconds, action: action)
    timers.append((nanoseconds, t))
    return t
  }

  func runTasks() {
    while !tasks.isEmpty {
      let batch = tasks
      tasks = []
      for t in batch { t() }
    }
  }
}

/// What the client saw on one stream.
final class H2Response {
  /// Each HEADERS block received: response headers, then trailers.
  var headerBlocks: [[(name: String, value: String)]] = []
  var data: [UInt8] = []
  var dataFrames = 0
  var endStream = false
  var closed = false
  var resetCode: UInt32?

  /// The first value of `name` in header block `block` (the last block when nil).
  func header(_ name: String, block: Int? = nil) -> String? {
    guard let b = block ?? (headerBlocks.isEmpty ? nil : headerBlocks.count - 1),
      b < headerBlocks.count
    else { return nil }
    return headerBlocks[b].first { $0.name == name }?.value
  }
}

/// An nghttp2 client session collecting what comes back, per stream.
final class H2TestClient {
  private var session: OpaquePointer!
  private(set) var responses: [Int32: H2Response] = [:]
  private var bodies: [Int32: (bytes: [UInt8], offset: Int, endStream: Bool)] = [:]

  /// With `initialWindowSize`, the client advertises that stream window and sends no
  /// WINDOW_UPDATE by itself (it reads nothing): `grant` opens a stream's window.
  init(initialWindowSize: UInt32? = nil) {
    var callbacks: OpaquePointer?
    nghttp2_session_callbacks_new(&callbacks)
    defer { nghttp2_session_callbacks_del(callbacks) }
    nghttp2_session_callbacks_set_on_begin_headers_callback(callbacks) { _, frame, user in
      H2TestClient.of(user).responses[frame!.pointee.hd.stream_id]?.headerBlocks.append([])
      return 0
    }
    nghttp2_session_callbacks_set_on_header_callback(callbacks) {
      _, frame, name, nlen, value, vlen, _, user in
      let r = H2TestClient.of(user).responses[frame!.pointee.hd.stream_id]
      r?.headerBlocks[r!.headerBlocks.count - 1].append(
        (makeString(name!, nlen), makeString(value!, vlen)))
      return 0
    }
    nghttp2_session_callbacks_set_on_frame_recv_callback(callbacks) { _, frame, user in
      let hd = frame!.pointee.hd
      guard let r = H2TestClient.of(user).responses[hd.stream_id] else { return 0 }
      if hd.type == frameData { r.dataFrames += 1 }
      if hd.type == frameRstStream { r.resetCode = frame!.pointee.rst_stream.error_code }
      if (hd.type == frameData || hd.type == frameHeaders) && hd.flags & flagEndStream != 0 {
        r.endStream = true
      }
      return 0
    }
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(callbacks) {
      _, _, id, data, len, user in
      H2TestClient.of(user).responses[id]?.data += UnsafeBufferPointer(start: data, count: len)
      return 0
    }
    nghttp2_session_callbacks_set_on_stream_close_callback(callbacks) { _, id, _, user in
      H2TestClient.of(user).responses[id]?.closed = true
      return 0
    }
    var option: OpaquePointer?
    nghttp2_option_new(&option)
    defer { nghttp2_option_del(option) }
    nghttp2_option_set_no_auto_window_update(option, initialWindowSize == nil ? 0 : 1)
    var s: OpaquePointer?
    let rv = nghttp2_session_client_new2(
      &s, callbacks, Unmanaged.passUnretained(self).toOpaque(), option)
    precondition(rv == 0 && s != nil, "nghttp2_session_client_new2: \(rv)")
    session = s
    var settings =
      initialWindowSize.map {
        [
          nghttp2_settings_entry(
            settings_id: Int32(NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE.rawValue), value: $0)
        ]
      } ?? []
    nghttp2_submit_settings(
      session, UInt8(NGHTTP2_FLAG_NONE.rawValue), &settings, settings.count)
  }

  /// Lets the server send `bytes` more on stream `id` (a WINDOW_UPDATE).
  func grant(_ id: Int32, _ bytes: Int32) {
    let rv = nghttp2_submit_window_update(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), id, bytes)
    precondition(rv == 0, "nghttp2_submit_window_update: \(rv)")
  }

  deinit { nghttp2_session_del(session) }

  private static func of(_ user: UnsafeMutableRawPointer?) -> H2TestClient {
    Unmanaged<H2TestClient>.fromOpaque(user!).takeUnretainedValue()
  }

  /// Submits a gRPC-style POST. With `body`, the request's DATA carries it (and ends the
  /// stream when `endStream`); without, HEADERS end the stream.
  @discardableResult
  func request(
    path: String, method: String = "POST", contentType: String = "application/grpc",
    headers extra: [(String, String)] = [], body: [UInt8]? = nil, endStream: Bool = true
  ) -> Int32 {
    let headers = HeaderList(
      [
        (":method", method), (":scheme", "https"), (":path", path),
        (":authority", "localhost"), ("content-type", contentType), ("te", "trailers"),
      ] + extra)
    var provider = nghttp2_data_provider(
      source: nghttp2_data_source(ptr: nil),
      read_callback: { _, id, buf, length, flags, _, user in
        let client = H2TestClient.of(user)
        guard var b = client.bodies[id] else { return 0 }
        let n = min(length, b.bytes.count - b.offset)
        b.bytes.withUnsafeBytes { src in
          buf!.update(
            from: src.baseAddress!.assumingMemoryBound(to: UInt8.self) + b.offset, count: n)
        }
        b.offset += n
        client.bodies[id] = b
        if b.offset == b.bytes.count {
          flags!.pointee |= UInt32(NGHTTP2_DATA_FLAG_EOF.rawValue)
          if !b.endStream { flags!.pointee |= UInt32(NGHTTP2_DATA_FLAG_NO_END_STREAM.rawValue) }
        }
        return n
      })
    let id = headers.withNVs { nv, n in
      body == nil
        ? nghttp2_submit_request(session, nil, nv, n, nil, nil)
        : nghttp2_submit_request(session, nil, nv, n, &provider, nil)
    }
    precondition(id > 0, "nghttp2_submit_request: \(id)")
    if let body { bodies[id] = (body, 0, endStream) }
    responses[id] = H2Response()
    return id
  }

  /// Resets stream `id` with CANCEL, as a client does when its caller gives up.
  func cancel(_ id: Int32) {
    nghttp2_submit_rst_stream(
      session, UInt8(NGHTTP2_FLAG_NONE.rawValue), id, UInt32(NGHTTP2_CANCEL.rawValue))
  }

  /// Everything the client has to send now.
  func produce() -> [UInt8] {
    var out: [UInt8] = []
    while true {
      var data: UnsafePointer<UInt8>?
      let n = nghttp2_session_mem_send(session, &data)
      precondition(n >= 0, "nghttp2_session_mem_send: \(n)")
      if n == 0 { return out }
      out += UnsafeBufferPointer(start: data, count: n)
    }
  }

  func receive(_ bytes: [UInt8]) {
    let n = bytes.withUnsafeBufferPointer {
      nghttp2_session_mem_recv(session, $0.baseAddress, $0.count)
    }
    #expect(n == bytes.count, "client nghttp2_session_mem_recv: \(n)")
  }
}

/// A server session, its fake loop and a client, pumped against each other.
final class H2Harness {
  let loop = FakeLoop()
  let server: HTTP2ServerSession
  let client: H2TestClient

  init(
    _ services: [any GRPCService], limits: SessionLimits = SessionLimits(),
    client: H2TestClient = H2TestClient()
  ) throws {
    server = try HTTP2ServerSession(router: Router(services), limits: limits, loop: loop)
    self.client = client
  }

  /// Moves bytes both ways (and runs loop tasks) until neither side has anything to send.
  /// With `byteByByte`, the server receives its input one byte per call.
  func pump(byteByByte: Bool = false, sourceLocation: SourceLocation = #_sourceLocation) {
    for _ in 0..<50 {
      let toServer = client.produce()
      if byteByByte {
        for b in toServer { feedServer([b], sourceLocation) }
      } else if !toServer.isEmpty {
        feedServer(toServer, sourceLocation)
      }
      loop.runTasks()
      var toClient: [UInt8] = []
      #expect(server.produce(into: &toClient, limit: .max), sourceLocation: sourceLocation)
      if !toClient.isEmpty { client.receive(toClient) }
      if toServer.isEmpty && toClient.isEmpty { return }
    }
    Issue.record("the sessions kept talking", sourceLocation: sourceLocation)
  }

  private func feedServer(_ bytes: [UInt8], _ sourceLocation: SourceLocation) {
    let ok = bytes.withUnsafeBytes { server.receive($0) }
    #expect(ok, "server refused its input", sourceLocation: sourceLocation)
  }
}
