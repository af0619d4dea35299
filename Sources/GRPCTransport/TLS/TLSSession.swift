// One TLS connection over two buffers in memory: ciphertext in through `feed`, ciphertext
// out through `takeOutput`. No sockets here, so tests pump a client and a server in memory.

import CTLS

/// A TLS endpoint driven with bytes. Owned by one thread (the connection's loop).
public final class TLSSession {
  private let ssl: OpaquePointer
  /// Network → SSL and SSL → network. The session owns them, so they outlive `ssl` (whose
  /// BIOs point at them unretained).
  private let input = CipherBuffer()
  private let output = CipherBuffer()

  /// What a read produced.
  public enum ReadResult: Equatable {
    /// This many plaintext bytes.
    case bytes(Int)
    /// More ciphertext is needed.
    case wantMore
    /// The peer closed the TLS session (close_notify).
    case closed
  }

  /// A session in the role of `context` (server or client). For a client, `serverName`
  /// is sent as SNI and checked against the certificate (a DNS name or an IP address).
  public init(context: TLSContext, serverName: String? = nil) throws(TLSError) {
    guard let ssl = SSL_new(context.handle) else { throw TLSError("SSL_new") }
    guard let r = input.makeBIO(CipherBuffer.reader) else {
      SSL_free(ssl)
      throw TLSError("BIO_new")
    }
    guard let w = output.makeBIO(CipherBuffer.writer) else {
      BIO_free(r)
      SSL_free(ssl)
      throw TLSError("BIO_new")
    }
    SSL_set_bio(ssl, r, w)  // ssl owns both BIOs from here
    self.ssl = ssl
    if context.isServer {
      SSL_set_accept_state(ssl)
    } else {
      SSL_set_connect_state(ssl)
      if let name = serverName {
        // An IP address is checked against the certificate's IP SANs, anything else as a
        // DNS name (and sent as SNI).
        if X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), name) != 1 {
          guard CTLS_SSL_set_tlsext_host_name(ssl, name) == 1, SSL_set1_host(ssl, name) == 1
          else { throw TLSError("invalid server name '\(name)'") }  // deinit frees ssl
        }
      }
    }
  }

  deinit { SSL_free(ssl) }

  /// Hands ciphertext received from the network to TLS.
  public func feed(_ bytes: UnsafeRawBufferPointer) {
    input.append(bytes)
  }

  public func feed(_ bytes: [UInt8]) { bytes.withUnsafeBytes { feed($0) } }

  /// Whether the session keeps its record buffers (about 34 KiB) between reads and
  /// writes. Off (at the start; the context's `SSL_MODE_RELEASE_BUFFERS`), TLS frees each
  /// buffer once it is empty, so an idle connection holds none. On, a busy connection
  /// spares an allocation and a free of a buffer per read and per write. Turned off, the
  /// buffers go at once (or, holding bytes not yet taken, once they are empty).
  public var keepsBuffers = false {
    didSet {
      guard keepsBuffers != oldValue else { return }
      input.keepsRoom = keepsBuffers
      output.keepsRoom = keepsBuffers
      if keepsBuffers {
        _ = CTLS_SSL_clear_mode(ssl, CTLS_MODE_RELEASE_BUFFERS)
      } else {
        _ = CTLS_SSL_set_mode(ssl, CTLS_MODE_RELEASE_BUFFERS)
        _ = SSL_free_buffers(ssl)
      }
    }
  }

  /// True once the handshake has completed.
  public var isHandshakeComplete: Bool { SSL_is_init_finished(ssl) == 1 }

  /// Advances the handshake; returns true when it has completed.
  public func handshake() throws(TLSError) -> Bool {
    let rc = SSL_do_handshake(ssl)
    if rc == 1 { return true }
    let err = SSL_get_error(ssl, rc)
    if err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE { return false }
    // OpenSSL's error queue says only "certificate verify failed"; the verification's own
    // result says why (a hostname mismatch, an unknown issuer, an expired certificate).
    let verify = SSL_get_verify_result(ssl)
    guard verify != Int(X509_V_OK) else { throw TLSError("TLS handshake failed") }
    let why = String(cString: X509_verify_cert_error_string(verify))
    throw TLSError("TLS handshake failed (\(why))")
  }

  /// The ALPN protocol both sides agreed on, if any.
  public var negotiatedProtocol: String? {
    var data: UnsafePointer<UInt8>? = nil
    var len: UInt32 = 0
    SSL_get0_alpn_selected(ssl, &data, &len)
    guard let data, len > 0 else { return nil }
    return String(decoding: UnsafeBufferPointer(start: data, count: Int(len)), as: UTF8.self)
  }

  /// The negotiated protocol version, e.g. "TLSv1.3".
  public var protocolVersion: String { String(cString: SSL_get_version(ssl)) }

  /// Decrypts into `buffer`.
  public func read(into buffer: UnsafeMutableRawBufferPointer) throws(TLSError) -> ReadResult {
    let n = SSL_read(ssl, buffer.baseAddress, Int32(buffer.count))
    if n > 0 { return .bytes(Int(n)) }
    switch SSL_get_error(ssl, n) {
    case SSL_ERROR_WANT_READ, SSL_ERROR_WANT_WRITE: return .wantMore
    case SSL_ERROR_ZERO_RETURN: return .closed
    default: throw TLSError("TLS read failed")
    }
  }

  /// Encrypts all of `bytes` into the outgoing buffer.
  public func write(_ bytes: UnsafeRawBufferPointer) throws(TLSError) {
    var offset = 0
    while offset < bytes.count {
      let n = SSL_write(ssl, bytes.baseAddress! + offset, Int32(min(bytes.count - offset, 1 << 20)))
      if n <= 0 { throw TLSError("TLS write failed") }
      offset += Int(n)
    }
  }

  public func write(_ bytes: [UInt8]) throws(TLSError) {
    let ok = bytes.withUnsafeBytes { b in Result { () throws(TLSError) in try write(b) } }
    try ok.get()
  }

  /// Sends close_notify.
  public func shutdown() { _ = SSL_shutdown(ssl) }

  /// Count of ciphertext bytes waiting to go to the network.
  public var pendingOutput: Int { output.pending }

  /// Moves up to `buffer.count` bytes of outgoing ciphertext into `buffer`.
  public func takeOutput(into buffer: UnsafeMutableRawBufferPointer) -> Int {
    output.take(into: buffer)
  }

  /// All outgoing ciphertext, as an array (tests and the client).
  public func takeOutput() -> [UInt8] {
    let count = pendingOutput
    guard count > 0 else { return [] }
    return [UInt8](unsafeUninitializedCapacity: count) { buf, initialized in
      initialized = takeOutput(into: UnsafeMutableRawBufferPointer(buf))
    }
  }
}

/// Ciphertext on its way into or out of a session: bytes `start..<bytes.count` of `bytes`,
/// which TLS reads or writes through a BIO of our own. (A memory BIO zeroes each byte it
/// takes before copying it in.)
final class CipherBuffer {
  var bytes: [UInt8] = []
  var start = 0
  var pending: Int { bytes.count - start }
  /// Emptied, the buffer keeps its room for the next bytes (while its session keeps its
  /// record buffers, `TLSSession.keepsBuffers`); else it frees it.
  var keepsRoom = false {
    didSet { if !keepsRoom && pending == 0 { bytes = [] } }
  }

  /// Appends `more` after the pending bytes (first moved to the front when some were taken).
  func append(_ more: UnsafeRawBufferPointer) {
    if start > 0 {
      bytes.removeSubrange(0..<start)
      start = 0
    }
    bytes.append(contentsOf: more)
  }

  /// Moves up to `buffer.count` bytes into `buffer`; returns how many.
  func take(into buffer: UnsafeMutableRawBufferPointer) -> Int {
    let n = min(buffer.count, pending)
    guard n > 0 else { return 0 }
    bytes.withUnsafeBytes { b in
      buffer.baseAddress!.copyMemory(from: b.baseAddress! + start, byteCount: n)
    }
    start += n
    if start == bytes.count {
      bytes.removeAll(keepingCapacity: keepsRoom)
      start = 0
    }
    return n
  }

  /// A BIO of `method` over this buffer. It points at the buffer unretained: its owner
  /// keeps the buffer for as long as the BIO lives.
  func makeBIO(_ method: OpaquePointer) -> OpaquePointer? {
    guard let bio = BIO_new(method) else { return nil }
    BIO_set_data(bio, Unmanaged.passUnretained(self).toOpaque())
    BIO_set_init(bio, 1)
    return bio
  }

  /// Whose BIO `bio` is.
  private static func of(_ bio: OpaquePointer?) -> CipherBuffer {
    Unmanaged<CipherBuffer>.fromOpaque(BIO_get_data(bio)!).takeUnretainedValue()
  }

  /// The pending count is the buffer's and a flush succeeds. Nothing else (TLS asks
  /// whether kernel TLS is on, among others) is supported.
  private static let control:
    @convention(c) (OpaquePointer?, Int32, Int, UnsafeMutableRawPointer?)
      -> Int = { bio, command, _, _ in
        switch command {
        case BIO_CTRL_FLUSH: return 1
        case BIO_CTRL_PENDING: return of(bio).pending
        default: return 0
        }
      }

  /// The BIO TLS reads ciphertext from: an empty buffer asks it to retry (a memory BIO's
  /// `eof_return` -1), once more has been fed.
  nonisolated(unsafe) static let reader: OpaquePointer = {
    let m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "subcenter TLS input")!
    _ = BIO_meth_set_read(m) { bio, out, length in
      CTLS_BIO_clear_retry_flags(bio)
      guard length > 0, let out else { return 0 }
      let n = of(bio).take(into: UnsafeMutableRawBufferPointer(start: out, count: Int(length)))
      if n == 0 {
        CTLS_BIO_set_retry_read(bio)
        return -1
      }
      return Int32(n)
    }
    _ = BIO_meth_set_ctrl(m, control)
    return m
  }()

  /// The BIO TLS writes ciphertext to: it takes all the bytes.
  nonisolated(unsafe) static let writer: OpaquePointer = {
    let m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "subcenter TLS output")!
    _ = BIO_meth_set_write(m) { bio, data, length in
      CTLS_BIO_clear_retry_flags(bio)
      guard length > 0, let data else { return 0 }
      of(bio).append(UnsafeRawBufferPointer(start: data, count: Int(length)))
      return length
    }
    _ = BIO_meth_set_ctrl(m, control)
    return m
  }()
}
