// TLS in memory: a client and a server endpoint pumped against each other with no socket,
// and a bare OpenSSL client for what `TLSContext.client` deliberately cannot build (no
// ALPN, or a protocol other than h2).

import CTLS
import GRPCTransport

/// One end of a TLS connection driven with bytes.
public protocol TLSEndpoint: AnyObject {
  func feed(_ bytes: [UInt8])
  func takeOutput() -> [UInt8]
  /// Advances the handshake; true once complete.
  func handshake() throws -> Bool
}

extension TLSSession: TLSEndpoint {}

public enum TLSPump {
  /// Moves ciphertext between `client` and `server` until both handshakes complete.
  /// Throws the first handshake error of either side.
  public static func handshake(
    client: some TLSEndpoint, server: some TLSEndpoint, maxRounds: Int = 8
  ) throws {
    var clientDone = false
    var serverDone = false
    for _ in 0..<maxRounds {
      if !clientDone { clientDone = try client.handshake() }
      server.feed(client.takeOutput())
      if !serverDone { serverDone = try server.handshake() }
      client.feed(server.takeOutput())
      if clientDone && serverDone { return }
    }
    throw TestSupportError("TLS handshake did not complete in \(maxRounds) rounds")
  }

  /// Moves pending ciphertext from `source` to `destination`.
  public static func transfer(from source: some TLSEndpoint, to destination: some TLSEndpoint) {
    destination.feed(source.takeOutput())
  }
}

/// A TLS client made directly with OpenSSL over memory BIOs. It verifies nothing and offers
/// exactly the ALPN protocols it is given (none by default).
public final class RawTLSClient: TLSEndpoint {
  private let ctx: OpaquePointer
  private let ssl: OpaquePointer
  private let rbio: OpaquePointer
  private let wbio: OpaquePointer

  public init(alpn: [String] = []) throws(TestSupportError) {
    guard let ctx = SSL_CTX_new(TLS_client_method()) else {
      throw TestSupportError("SSL_CTX_new")
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, nil)
    if !alpn.isEmpty {
      let wire = alpn.flatMap { [UInt8($0.utf8.count)] + Array($0.utf8) }
      guard SSL_CTX_set_alpn_protos(ctx, wire, UInt32(wire.count)) == 0 else {
        SSL_CTX_free(ctx)
        throw TestSupportError("SSL_CTX_set_alpn_protos")
      }
    }
    guard let ssl = SSL_new(ctx), let r = BIO_new(BIO_s_mem()), let w = BIO_new(BIO_s_mem())
    else {
      SSL_CTX_free(ctx)
      throw TestSupportError("SSL_new/BIO_new")
    }
    CTLS_BIO_set_mem_eof_return(r, -1)
    CTLS_BIO_set_mem_eof_return(w, -1)
    SSL_set_bio(ssl, r, w)
    SSL_set_connect_state(ssl)
    self.ctx = ctx
    self.ssl = ssl
    rbio = r
    wbio = w
  }

  deinit {
    SSL_free(ssl)
    SSL_CTX_free(ctx)
  }

  public func feed(_ bytes: [UInt8]) {
    guard !bytes.isEmpty else { return }
    _ = BIO_write(rbio, bytes, Int32(bytes.count))
  }

  public func takeOutput() -> [UInt8] {
    let count = Int(BIO_ctrl_pending(wbio))
    guard count > 0 else { return [] }
    return [UInt8](unsafeUninitializedCapacity: count) { buf, initialized in
      initialized = max(0, Int(BIO_read(wbio, buf.baseAddress, Int32(count))))
    }
  }

  public func handshake() throws -> Bool {
    let rc = SSL_do_handshake(ssl)
    if rc == 1 { return true }
    let err = SSL_get_error(ssl, rc)
    if err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE { return false }
    ERR_clear_error()
    throw TestSupportError("raw TLS client handshake failed (SSL_get_error \(err))")
  }

  /// The ALPN protocol the server selected, if any.
  public var negotiatedProtocol: String? {
    var data: UnsafePointer<UInt8>? = nil
    var len: UInt32 = 0
    SSL_get0_alpn_selected(ssl, &data, &len)
    guard let data, len > 0 else { return nil }
    return String(decoding: UnsafeBufferPointer(start: data, count: Int(len)), as: UTF8.self)
  }
}
