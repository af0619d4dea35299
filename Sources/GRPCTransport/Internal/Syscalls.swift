// Thin wrappers over the Linux system calls the event loops use. One helper turns errno
// into a thrown `SystemError` and retries EINTR; nothing else in the module sees errno.

import CLinux
import Glibc
import Synchronization

/// A failed system call: which call, and the errno it set.
public struct SystemError: Error, CustomStringConvertible, Sendable {
  public let call: String
  public let errno: Int32

  public var description: String {
    "\(call): \(String(cString: strerror(errno))) (errno \(errno))"
  }
}

/// Runs `body` until it does not fail with EINTR; throws on -1.
@inline(__always)
@discardableResult
func syscall<T: FixedWidthInteger>(_ name: @autoclosure () -> String, _ body: () -> T)
  throws(SystemError) -> T
{
  while true {
    let r = body()
    if r != -1 { return r }
    let e = Glibc.errno
    if e == EINTR { continue }
    throw SystemError(call: name(), errno: e)
  }
}

/// An IPv4 or IPv6 socket address parsed from `HOST:PORT` or `[V6]:PORT`.
public struct SocketAddress: Sendable, CustomStringConvertible {
  public let host: String
  public let port: UInt16

  public init(host: String, port: UInt16) {
    self.host = host
    self.port = port
  }

  /// Parses `HOST:PORT`; returns nil for anything else.
  public init?(parsing text: String) {
    guard let colon = text.lastIndex(of: ":") else { return nil }
    var host = String(text[..<colon])
    guard let port = UInt16(text[text.index(after: colon)...]) else { return nil }
    if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
    if host.isEmpty { return nil }
    if host == "localhost" { host = "127.0.0.1" }
    self.host = host
    self.port = port
    guard withSockaddr({ _, _ in true }) != nil else { return nil }
  }

  public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }

  var family: Int32 { host.contains(":") ? AF_INET6 : AF_INET }

  /// Calls `body` with a `sockaddr` for this address; nil if the host is not numeric.
  func withSockaddr<R>(_ body: (UnsafePointer<sockaddr>, socklen_t) -> R) -> R? {
    if family == AF_INET6 {
      var a = sockaddr_in6()
      a.sin6_family = sa_family_t(AF_INET6)
      a.sin6_port = port.bigEndian
      guard inet_pton(AF_INET6, host, &a.sin6_addr) == 1 else { return nil }
      return withUnsafePointer(to: &a) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
          body($0, socklen_t(MemoryLayout<sockaddr_in6>.size))
        }
      }
    }
    var a = sockaddr_in()
    a.sin_family = sa_family_t(AF_INET)
    a.sin_port = port.bigEndian
    guard inet_pton(AF_INET, host, &a.sin_addr) == 1 else { return nil }
    return withUnsafePointer(to: &a) {
      $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
        body($0, socklen_t(MemoryLayout<sockaddr_in>.size))
      }
    }
  }
}

enum Socket {
  /// A non-blocking listening socket; with `reusePort` (SO_REUSEPORT) each event loop can
  /// own one on the same address.
  static func listen(
    _ address: SocketAddress, backlog: Int32 = 1024, reusePort: Bool = false
  ) throws(SystemError) -> (fd: Int32, port: UInt16) {
    let fd = try bound(address, reusePort: reusePort)
    do throws(SystemError) {
      try syscall("listen") { Glibc.listen(fd, backlog) }
      return (fd, try localPort(fd))
    } catch {
      close(fd)
      throw error
    }
  }

  /// Fails with EADDRINUSE when something listens on `address`, SO_REUSEPORT listeners of
  /// this user included (which a SO_REUSEPORT bind would silently join: a second server
  /// on the same port would then share the connections).
  static func checkFree(_ address: SocketAddress) throws(SystemError) {
    close(try bound(address, reusePort: false))
  }

  private static func bound(_ address: SocketAddress, reusePort: Bool) throws(SystemError)
    -> Int32
  {
    let fd = try syscall("socket") {
      Glibc.socket(
        address.family,
        Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue),
        0)
    }
    do throws(SystemError) {
      var one: Int32 = 1
      try syscall("setsockopt(SO_REUSEADDR)") {
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
      }
      if reusePort {
        try syscall("setsockopt(SO_REUSEPORT)") {
          setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, socklen_t(MemoryLayout<Int32>.size))
        }
      }
      let rc = address.withSockaddr { sa, len in Glibc.bind(fd, sa, len) } ?? -1
      if rc != 0 { throw SystemError(call: "bind(\(address))", errno: Glibc.errno) }
      return fd
    } catch {
      close(fd)
      throw error
    }
  }

  static func localPort(_ fd: Int32) throws(SystemError) -> UInt16 {
    var storage = sockaddr_storage()
    var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
    try withUnsafeMutablePointer(to: &storage) { (p) throws(SystemError) in
      try p.withMemoryRebound(to: sockaddr.self, capacity: 1) { (sa) throws(SystemError) in
        _ = try syscall("getsockname") { getsockname(fd, sa, &len) }
      }
    }
    if Int32(storage.ss_family) == AF_INET6 {
      return withUnsafePointer(to: &storage) {
        $0.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) {
          UInt16(bigEndian: $0.pointee.sin6_port)
        }
      }
    }
    return withUnsafePointer(to: &storage) {
      $0.withMemoryRebound(to: sockaddr_in.self, capacity: 1) {
        UInt16(bigEndian: $0.pointee.sin_port)
      }
    }
  }

  /// Accepts one connection, non-blocking; nil when none is waiting.
  static func accept(_ listener: Int32) throws(SystemError) -> Int32? {
    while true {
      let fd = accept4(
        listener, nil, nil, Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue))
      if fd >= 0 {
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        return fd
      }
      switch Glibc.errno {
      case EINTR: continue
      case EAGAIN, ECONNABORTED, EPROTO: return nil
      default: throw SystemError(call: "accept4", errno: Glibc.errno)
      }
    }
  }

  /// A blocking client connection (used by the Swift client).
  static func connect(_ address: SocketAddress) throws(SystemError) -> Int32 {
    let fd = try syscall("socket") {
      Glibc.socket(address.family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    }
    while true {
      let rc = address.withSockaddr { sa, len in Glibc.connect(fd, sa, len) } ?? -1
      if rc == 0 { break }
      if Glibc.errno == EINTR { continue }
      let e = Glibc.errno
      close(fd)
      throw SystemError(call: "connect(\(address))", errno: e)
    }
    var one: Int32 = 1
    setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
    return fd
  }
}

/// Writes one line to standard error, unbuffered (safe from any thread).
public func writeStderrLine(_ line: String) { writeLine(line, fd: 2) }

/// Writes one line to standard output, unbuffered. A line that cannot be written all
/// (a full disk, a closed pipe) is noted: `standardOutputFailed`.
public func writeStdoutLine(_ line: String) {
  if !writeLine(line, fd: 1) { stdoutFailed.store(true, ordering: .relaxed) }
}

/// Whether a line written with `writeStdoutLine` did not all reach standard output.
public var standardOutputFailed: Bool { stdoutFailed.load(ordering: .relaxed) }

private let stdoutFailed = Atomic<Bool>(false)

@discardableResult
private func writeLine(_ line: String, fd: Int32) -> Bool {
  var bytes = Array(line.utf8)
  bytes.append(UInt8(ascii: "\n"))
  return bytes.withUnsafeBytes { b in
    var off = 0
    while off < b.count {
      let n = Glibc.write(fd, b.baseAddress! + off, b.count - off)
      if n < 0 && Glibc.errno == EINTR { continue }
      if n <= 0 { return false }
      off += n
    }
    return true
  }
}

/// Monotonic time in nanoseconds.
@inline(__always)
func monotonicNanos() -> UInt64 {
  var ts = timespec()
  clock_gettime(CLOCK_MONOTONIC, &ts)
  return UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
}

extension SocketAddress {
  /// Fails (EADDRINUSE) when something listens here already: checked before a server does
  /// anything it would have to undo.
  public func checkFree() throws(SystemError) {
    if port != 0 { try Socket.checkFree(self) }
  }
}
