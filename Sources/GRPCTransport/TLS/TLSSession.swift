// One TLS connection over two memory BIOs: ciphertext in through `feed`, ciphertext out
// through `takeOutput`. No sockets here, so tests pump a client and a server in memory.

import CTLS

/// A TLS endpoint driven with bytes. Owned by one thread (the connection's loop).
public final class TLSSession {
  private let ssl: OpaquePointer
  private let rbio: OpaquePointer  // network → SSL
  private let wbio: OpaquePointer  // SSL → network

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
    guard let r = BIO_new(BIO_s_mem()), let w = BIO_new(BIO_s_mem()) else {
      SSL_free(ssl)
      throw TLSError("BIO_new")
    }
    CTLS_BIO_set_mem_eof_return(r, -1)
    CTLS_BIO_set_mem_eof_return(w, -1)
    SSL_set_bio(ssl, r, w)  // ssl owns both BIOs from here
    self.ssl = ssl
    rbio = r
    wbio = w
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
    guard let base = bytes.baseAddress, bytes.count > 0 else { return }
    _ = BIO_write(rbio, base, Int32(bytes.count))
  }

  public func feed(_ bytes: [UInt8]) { bytes.withUnsafeBytes { feed($0) } }

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
  public var pendingOutput: Int { Int(BIO_ctrl_pending(wbio)) }

  /// Moves up to `buffer.count` bytes of outgoing ciphertext into `buffer`.
  public func takeOutput(into buffer: UnsafeMutableRawBufferPointer) -> Int {
    let n = BIO_read(wbio, buffer.baseAddress, Int32(buffer.count))
    return n > 0 ? Int(n) : 0
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
