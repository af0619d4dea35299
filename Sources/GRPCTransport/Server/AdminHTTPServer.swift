// A tiny plain-HTTP/1.1 server for operators beside the gRPC port: GET and HEAD (probes,
// metrics) and POST (operator actions) without a body, one short answer each; what each
// path answers is its handler's (SubcenterServer's AdminEndpoints). Not on any hot path.
// One thread accepts; each connection is answered on a thread of its own (at most
// `maxConnections` at once), so a client that connects and sends nothing delays no one's
// probe. At the limit a new connection takes the place of the oldest one still waiting for
// its request, so silent clients cannot keep a probe out either.

import CLinux
import Glibc
import Synchronization

/// One answer of the admin server.
public struct AdminResponse: Sendable {
  public var status: Int
  public var contentType: String
  public var body: String
  /// The methods a 405 names in its `Allow` header (nil: all the server serves).
  public var allow: String?

  public init(
    status: Int, contentType: String = "text/plain; charset=utf-8", body: String,
    allow: String? = nil
  ) {
    self.status = status
    self.contentType = contentType
    self.body = body
    self.allow = allow
  }
}

/// One request to the admin server: GET (HEAD is GET without the body) or POST, and the
/// path without its query.
public struct AdminRequest: Sendable, Equatable {
  public var method: String
  public var path: String

  public init(_ method: String, _ path: String) {
    self.method = method
    self.path = path
  }
}

/// Serves GET, HEAD and POST requests: one accepting thread, connections answered
/// concurrently.
public final class AdminHTTPServer: @unchecked Sendable {
  static let maxConnections = 128
  /// The connections being served, by a number of their own (a descriptor number is
  /// reused once closed). Descriptors are closed, and shut down to make room, only under
  /// its lock, so one is never shut down after its number went to a newer connection.
  private let connections = Mutex<(next: Int, open: [Int: Connection])>((0, [:]))
  private struct Connection {
    var fd: Int32
    var since: UInt64
    /// Whether its request has arrived (it is being answered: not shut down for room).
    var requested = false
  }
  // `fd` and `thread` are set in start() and read by stop() on the same controlling thread.
  private let handler: @Sendable (AdminRequest) -> AdminResponse
  private var fd: Int32 = -1
  private var thread = pthread_t()
  /// The bound port.
  public private(set) var port: UInt16 = 0

  /// `handler` answers each request; a method it does not serve is its 405.
  public init(handler: @escaping @Sendable (AdminRequest) -> AdminResponse) {
    self.handler = handler
  }

  public func start(_ address: SocketAddress) throws(SystemError) {
    let l = try Socket.listen(address, backlog: 64)
    fd = l.fd
    port = l.port
    let box = Unmanaged.passRetained(self).toOpaque()
    let rc = pthread_create(&thread, nil, adminThreadMain, box)
    if rc != 0 { throw SystemError(call: "pthread_create", errno: rc) }
  }

  /// Stops accepting (the thread ends at its next poll).
  public func stop() {
    let f = fd
    fd = -1
    if f >= 0 { shutdown(f, Int32(SHUT_RDWR)) }
  }

  fileprivate func serve() {
    let listener = fd
    while fd >= 0 {
      var p = pollfd(fd: listener, events: Int16(POLLIN), revents: 0)
      if poll(&p, 1, 200) <= 0 { continue }
      guard let c = try? Socket.accept(listener) else { continue }
      guard let id = admit(c) else {
        close(c)
        continue
      }
      let job = Unmanaged.passRetained(AdminConnection(server: self, fd: c, id: id)).toOpaque()
      var tid = pthread_t()
      if pthread_create(&tid, nil, adminConnectionMain, job) == 0 {
        pthread_detach(tid)
      } else {
        Unmanaged<AdminConnection>.fromOpaque(job).release()
        answer(c, id: id)
      }
    }
    close(listener)
  }

  /// Registers connection `c`; at the limit the oldest connection still waiting for its
  /// request is shut down (its thread then ends) to make room. nil when every connection
  /// is being answered: `c` is refused.
  private func admit(_ c: Int32) -> Int? {
    connections.withLock { s in
      if s.open.count >= Self.maxConnections {
        guard
          let oldest = s.open.filter({ !$0.value.requested }).min(by: {
            $0.value.since < $1.value.since
          })
        else { return nil }
        shutdown(oldest.value.fd, Int32(SHUT_RDWR))
        s.open[oldest.key] = nil
      }
      s.next += 1
      s.open[s.next] = Connection(fd: c, since: monotonicNanos())
      return s.next
    }
  }

  /// Answers connection `c` and closes it.
  fileprivate func answer(_ c: Int32, id: Int) {
    handle(c, id: id)
    connections.withLock { s in
      s.open[id] = nil
      close(c)
    }
  }

  /// Whether `request` holds the blank line that ends HTTP/1 headers (CRLF or LF); a body
  /// may follow it.
  static func endsHeaders(_ request: [UInt8]) -> Bool {
    guard request.count >= 2 else { return false }
    for i in 1..<request.count where request[i] == 10 {
      if request[i - 1] == 10 { return true }
      if i >= 3, request[i - 1] == 13, request[i - 2] == 10, request[i - 3] == 13 { return true }
    }
    return false
  }

  /// Why a complete request is malformed (RFC 9112), if it is: a request line that is not
  /// `METHOD TARGET HTTP/1.x`, a `Content-Length` that is not one number, or a
  /// `Transfer-Encoding` (no body is read). Such a request gets 400, and `POST /snapshot`
  /// does not run on it.
  static func malformed(_ requestLine: [Substring], _ request: [UInt8]) -> String? {
    guard requestLine.count == 3, requestLine[2] == "HTTP/1.1" || requestLine[2] == "HTTP/1.0"
    else { return "malformed request line: expected METHOD TARGET HTTP/1.1" }
    var length: Substring?
    // Lines split on LF bytes (a Swift `Character` would take CR LF as one).
    var lines = request.split(separator: 10, omittingEmptySubsequences: false).dropFirst()
    while let bytes = lines.popFirst().map({ $0.last == 13 ? $0.dropLast() : $0 }),
      !bytes.isEmpty
    {
      let line = String(decoding: bytes, as: UTF8.self)
      // A name ends at its colon: no whitespace before it (RFC 9112 §5.1), nor a line
      // folded onto the one before (obsolete line folding).
      guard let colon = line.firstIndex(of: ":"), colon > line.startIndex,
        !line[..<colon].contains(where: { $0 == " " || $0 == "\t" })
      else { return "malformed header line" }
      let name = line[..<colon].lowercased()
      var value = line[line.index(after: colon)...]
      while value.first == " " || value.first == "\t" { value.removeFirst() }
      while value.last == " " || value.last == "\t" { value.removeLast() }
      if name == "transfer-encoding" { return "Transfer-Encoding is not accepted" }
      guard name == "content-length" else { continue }
      guard !value.isEmpty, value.count <= 18,
        value.utf8.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }),
        length == nil || length == value
      else { return "invalid Content-Length" }
      length = value
    }
    return nil
  }

  private func handle(_ c: Int32, id: Int) {
    var request: [UInt8] = []
    var buf = [UInt8](repeating: 0, count: 4096)
    let deadline = monotonicNanos() + 2_000_000_000
    while request.count < 16384, monotonicNanos() < deadline {
      var p = pollfd(fd: c, events: Int16(POLLIN), revents: 0)
      if poll(&p, 1, 200) <= 0 { continue }
      let n = buf.withUnsafeMutableBytes { read(c, $0.baseAddress, $0.count) }
      if n <= 0 { break }
      request.append(contentsOf: buf[0..<n])
      // Empty lines before the request line are ignored (RFC 9112 §2.2).
      if let start = request.firstIndex(where: { $0 != 13 && $0 != 10 }) {
        request.removeFirst(start)
      } else {
        request.removeAll()
      }
      if Self.endsHeaders(request) { break }
    }
    // A connection that sent nothing is closed unanswered; one whose request did not end
    // (no blank line within 2 s or 16 KiB) gets 400.
    if request.isEmpty { return }
    let complete = Self.endsHeaders(request)
    connections.withLock { $0.open[id]?.requested = true }
    let line = String(decoding: request.prefix { $0 != 13 && $0 != 10 }, as: UTF8.self)
    let parts = line.split(separator: " ", omittingEmptySubsequences: false)
    let response: AdminResponse
    // HEAD (as load balancers probe) is GET without the body.
    let isHead = parts.first == "HEAD"
    if !complete {
      response = AdminResponse(
        status: 400,
        body: request.count >= 16384 ? "request too large (over 16 KiB)\n" : "incomplete request\n")
    } else if let problem = Self.malformed(parts, request) {
      response = AdminResponse(status: 400, body: problem + "\n")
    } else if parts[0] == "GET" || parts[0] == "POST" || isHead {
      // The origin form (`/healthz`) or the absolute form (`http://host:port/healthz`).
      var target = parts[1]
      for scheme in ["http://", "https://"] where target.lowercased().hasPrefix(scheme) {
        let rest = target.dropFirst(scheme.count)
        target = rest.firstIndex(of: "/").map { rest[$0...] } ?? "/"
      }
      let path = String(target.split(separator: "?", maxSplits: 1).first ?? "")
      response = handler(AdminRequest(isHead ? "GET" : String(parts[0]), path))
    } else {
      response = AdminResponse(status: 405, body: "only GET, HEAD and POST are served\n")
    }
    let reason =
      [
        200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
        503: "Service Unavailable",
      ][
        response.status] ?? "Status"
    let body = Array(response.body.utf8)
    let allow = response.status == 405 ? "Allow: \(response.allow ?? "GET, HEAD, POST")\r\n" : ""
    let head =
      "HTTP/1.1 \(response.status) \(reason)\r\nContent-Type: \(response.contentType)\r\n"
      + "Content-Length: \(body.count)\r\n\(allow)Connection: close\r\n\r\n"
    let all = Array(head.utf8) + (isHead ? [] : body)
    var off = 0
    while off < all.count {
      let n = all.withUnsafeBytes { write(c, $0.baseAddress! + off, all.count - off) }
      if n <= 0 { break }
      off += n
    }
  }
}

/// One accepted connection, handed to its thread.
private final class AdminConnection {
  let server: AdminHTTPServer
  let fd: Int32
  let id: Int
  init(server: AdminHTTPServer, fd: Int32, id: Int) {
    self.server = server
    self.fd = fd
    self.id = id
  }
}

private func adminConnectionMain(_ arg: UnsafeMutableRawPointer?) -> UnsafeMutableRawPointer? {
  let job = Unmanaged<AdminConnection>.fromOpaque(arg!).takeRetainedValue()
  job.server.answer(job.fd, id: job.id)
  return nil
}

private func adminThreadMain(_ arg: UnsafeMutableRawPointer?) -> UnsafeMutableRawPointer? {
  let server = Unmanaged<AdminHTTPServer>.fromOpaque(arg!).takeRetainedValue()
  CLinux_set_thread_name("admin-http")
  server.serve()
  return nil
}
