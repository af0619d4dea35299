// One accepted socket: TLS over buffers in memory, then an HTTP/2 server session. Owned by
// the loop that accepted it, for life.

import CLinux
import Glibc

final class ServerConnection {
  let fd: Int32
  // The loop and the server outlive every connection (closed before the loop ends).
  unowned(unsafe) let loop: EventLoop
  unowned(unsafe) let server: GRPCServer
  private var tls: TLSSession?
  private var http2: HTTP2ServerSession?
  private var handshakeTimer: LoopTimer?
  private var drainTimer: LoopTimer?
  private var watchdog: LoopTimer?
  /// What the watchdog saw at its last look: streams begun, the header block in progress.
  private var lastStreamsBegun = 0
  private var lastHeaderBlock: Int32?
  private var lastAnswerBytesSent = 0
  private var idleNanos: UInt64 = 0
  private var stalledNanos: UInt64 = 0
  /// Ciphertext the socket did not take yet.
  private var pendingOut: [UInt8] = []
  private var pendingOffset = 0
  private var wantWritable = false
  private(set) var closed = false
  private var peerClosed = false
  var isDirty = false
  /// Reading its input or writing its output: its TLS session and nghttp2 session are in
  /// use, and a flush from elsewhere (`EventLoop.flushOutputNow`) must leave it for later.
  private(set) var isBusy = false

  /// Plaintext frames gathered before one TLS write (fewer, fuller TLS records).
  private static let plainBatch = 16 * 1024 - 64
  /// Ciphertext gathered before one socket write.
  private static let cipherBatch = 64 * 1024
  /// Bytes read from the socket at one readiness event: the calls they hold run before
  /// the loop turns to its other connections, so a client sending large requests back to
  /// back delays the others' calls by at most about this much work at a time (the rest
  /// waits in the socket, which stays readable).
  private static let readBudget = 64 * 1024

  init(fd: Int32, loop: EventLoop, server: GRPCServer) {
    self.fd = fd
    self.loop = loop
    self.server = server
    do {
      tls = try TLSSession(context: server.tlsContext)
    } catch {
      server.log("TLS session setup failed: \(error)")
      close()
      return
    }
    handshakeTimer = loop.schedule(after: server.configuration.handshakeTimeoutNanos) {
      [unowned self] in
      self.handshakeTimer = nil
      self.close()
    }
  }

  // MARK: Socket events

  func socketReadable() {
    guard !closed, let tls else { return }
    isBusy = true
    defer { isBusy = false }
    var n: Int
    repeat {
      n = Glibc.read(fd, loop.readBuffer.baseAddress, min(loop.readBuffer.count, Self.readBudget))
    } while n < 0 && errno == EINTR
    if n < 0 && errno != EAGAIN {
      close()
      return
    }
    if n == 0 { peerClosed = true }
    if n > 0 {
      tls.feed(UnsafeRawBufferPointer(rebasing: loop.readBuffer[0..<n]))
      processTLSInput()
      // A connection with calls keeps its TLS buffers until the watchdog finds it quiet.
      if !tls.keepsBuffers, let http2, http2.activeStreams > 0 { tls.keepsBuffers = true }
    }
    if closed { return }
    if peerClosed {
      close()
      return
    }
    flush()
  }

  func socketWritable() {
    guard !closed else { return }
    flush()
  }

  private func processTLSInput() {
    guard let tls else { return }
    if http2 == nil {
      do {
        guard try tls.handshake() else {
          writeCiphertext()
          return
        }
      } catch {
        writeCiphertext()
        close()
        return
      }
      handshakeTimer?.cancel()
      handshakeTimer = nil
      armWatchdog()
      guard tls.negotiatedProtocol == "h2" else {
        // A client that offered no ALPN (or not h2): gRPC needs HTTP/2.
        tls.shutdown()
        writeCiphertext()
        close()
        return
      }
      do {
        let server = self.server
        // The connection owns the session: these closures never outlive it.
        let session = try HTTP2ServerSession(
          router: server.router, limits: server.configuration.limits, loop: loop,
          onOutputPending: { [unowned(unsafe) self] in
            if !self.isDirty { self.loop.markDirty(self) }
          },
          onCallFinished: { code in server.callFinished(code) })
        http2 = session
        if server.isShuttingDown { beginDrain() }
      } catch {
        server.log("HTTP/2 session setup failed: \(error)")
        close()
        return
      }
    }
    guard let http2 else { return }
    while !closed {
      let result: TLSSession.ReadResult
      do { result = try tls.read(into: loop.plainBuffer) } catch {
        close()
        return
      }
      switch result {
      case .bytes(let n):
        if !http2.receive(UnsafeRawBufferPointer(rebasing: loop.plainBuffer[0..<n])) {
          flush()
          close()
          return
        }
      case .wantMore:
        return
      case .closed:
        peerClosed = true
        return
      }
    }
  }

  // MARK: Output

  /// Moves HTTP/2 output through TLS to the socket, as far as the socket takes it; closes
  /// the connection when HTTP/2 is done with it. Called again when the socket drains, it
  /// first sends what waited and then goes on producing (a client that only reads sends
  /// nothing that would call it otherwise). It returns only when HTTP/2 has nothing more
  /// to send or the socket is full (then waiting for it to drain): stopping at a full
  /// socket that drained before the last write left output unsent with nothing to wake it.
  func flush() {
    guard !closed, let tls else { return }
    let wasBusy = isBusy
    isBusy = true
    defer { isBusy = wasBusy }
    if let http2 {
      var plain: [UInt8] = []
      swap(&plain, &loop.outScratch)
      defer { swap(&plain, &loop.outScratch) }
      while true {
        if pendingBytes > 0 || tls.pendingOutput >= Self.cipherBatch {
          writeCiphertext()
          // Still blocked: the socket draining calls this again.
          if closed || pendingBytes > 0 { return }
        }
        plain.removeAll(keepingCapacity: true)
        guard http2.produce(into: &plain, limit: Self.plainBatch) else {
          close()
          return
        }
        if plain.isEmpty { break }
        do { try plain.withUnsafeBytes { try tls.write($0) } } catch {
          close()
          return
        }
      }
    }
    writeCiphertext()
    if closed || pendingBytes > 0 { return }
    if let http2, !http2.wantsRead, !http2.wantsWrite { close() }
  }

  private var pendingBytes: Int { pendingOut.count - pendingOffset }

  /// Writes queued ciphertext, then what TLS produced, to the socket.
  private func writeCiphertext() {
    guard let tls else { return }
    if pendingBytes > 0 {
      let n = pendingOut.withUnsafeBytes {
        Glibc.write(fd, $0.baseAddress! + pendingOffset, pendingBytes)
      }
      if n > 0 { pendingOffset += n }
      if n < 0 && errno != EAGAIN && errno != EINTR {
        close()
        return
      }
      if pendingBytes > 0 {
        setWritable(true)
        // Keep TLS output in the BIO until the socket drains.
        return
      }
      pendingOut.removeAll(keepingCapacity: false)
      pendingOffset = 0
    }
    let buf = loop.readBuffer
    while tls.pendingOutput > 0 {
      let count = tls.takeOutput(into: buf)
      var off = 0
      while off < count {
        let n = Glibc.write(fd, buf.baseAddress! + off, count - off)
        if n > 0 {
          off += n
        } else if n < 0 && errno == EINTR {
          continue
        } else if n < 0 && errno == EAGAIN {
          pendingOut.append(contentsOf: UnsafeRawBufferPointer(rebasing: buf[off..<count]))
          setWritable(true)
          return
        } else {
          close()
          return
        }
      }
    }
    setWritable(false)
  }

  private func setWritable(_ on: Bool) {
    guard on != wantWritable, !closed else { return }
    wantWritable = on
    loop.setInterest(fd: fd, writable: on)
  }

  // MARK: Lifecycle

  /// The watchdog's period: the handshake deadline, or the idle timeout if shorter.
  private var watchdogPeriod: UInt64 {
    let idle = server.configuration.idleTimeoutNanos
    let handshake = server.configuration.handshakeTimeoutNanos
    return idle == 0 ? handshake : min(idle, handshake)
  }

  private func armWatchdog() {
    watchdog = loop.schedule(after: watchdogPeriod) { [unowned self] in
      self.watchdog = nil
      self.watch()
    }
  }

  /// Closes a connection that holds a descriptor for nothing: no HTTP/2 preface one period
  /// after TLS, a request header block begun and unfinished for a whole period (nothing
  /// else can go on the connection meanwhile), calls stuck for longer than the idle timeout
  /// (a request that does not end, an answer the client takes nothing of: closed at once),
  /// or no stream for the idle timeout (GOAWAY first, as at shutdown).
  private func watch() {
    guard !closed, let http2 else { return }
    if !http2.clientStarted {
      close()
      return
    }
    if let stuck = http2.headerBlockStream, stuck == lastHeaderBlock {
      http2.terminate()
      flush()
      close()
      return
    }
    lastHeaderBlock = http2.headerBlockStream
    // No call begun and no answer byte sent for a whole period: TLS frees its buffers and
    // HTTP/2 its spare streams (kept while the connection is busy).
    if http2.streamsBegun == lastStreamsBegun && http2.answerBytesSent == lastAnswerBytesSent {
      tls?.keepsBuffers = false
      http2.dropSpareStreams()
    }
    let idleTimeout = server.configuration.idleTimeoutNanos
    // Calls that hold the connection without moving: a request that does not end (no
    // call here streams its request), or an answer the client takes none of.
    let stuck =
      http2.hasRequestInProgress
      || (http2.queuedResponseBytes > 0 && http2.answerBytesSent == lastAnswerBytesSent)
    lastAnswerBytesSent = http2.answerBytesSent
    stalledNanos = stuck ? stalledNanos + watchdogPeriod : 0
    if idleTimeout > 0 && stalledNanos > idleTimeout {
      http2.terminateStuck()
      flush()
      close()
      return
    }
    if http2.activeStreams == 0 && http2.streamsBegun == lastStreamsBegun {
      idleNanos += watchdogPeriod
    } else {
      idleNanos = 0
    }
    lastStreamsBegun = http2.streamsBegun
    if idleTimeout > 0 && idleNanos >= idleTimeout && !http2.isDraining {
      beginDrain()
      return
    }
    armWatchdog()
  }

  /// Graceful shutdown of this connection: GOAWAY now, the final GOAWAY shortly after.
  func beginDrain() {
    guard !closed else { return }
    guard let http2 else {
      close()
      return
    }
    guard !http2.isDraining else { return }
    // What is queued first (the last message and trailers of the Watch streams shutdown
    // ends): nghttp2 would send its GOAWAY ahead of them, and some HTTP/2 clients drop
    // every frame that follows a GOAWAY.
    flush()
    if closed { return }
    http2.beginDrain()
    drainTimer = loop.schedule(after: 100_000_000) { [unowned self] in
      self.drainTimer = nil
      self.http2?.finalGoAway()
      self.loop.markDirty(self)
    }
    loop.markDirty(self)
  }

  func close() {
    guard !closed else { return }
    closed = true
    handshakeTimer?.cancel()
    drainTimer?.cancel()
    watchdog?.cancel()
    http2?.cancelAll()
    http2 = nil
    tls = nil
    Glibc.close(fd)
    loop.connectionClosed(self)
  }
}
