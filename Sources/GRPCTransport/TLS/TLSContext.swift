// TLS configuration: one OpenSSL `SSL_CTX` per server or client, set up for gRPC:
// TLS 1.2 and 1.3 only, Mozilla "intermediate" cipher suites, ALPN "h2" required.

import CTLS

/// An OpenSSL failure, with the error queue rendered as text.
public struct TLSError: Error, CustomStringConvertible, Sendable {
  public let description: String
  /// The file the failure is about (a certificate, key or CA), when it is about one.
  public let file: String?

  init(_ what: String, file: String? = nil) {
    self.file = file
    var parts: [String] = []
    while true {
      let code = ERR_get_error()
      if code == 0 { break }
      var buf = [CChar](repeating: 0, count: 256)
      ERR_error_string_n(code, &buf, buf.count)
      parts.append(
        String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))
    }
    description = parts.isEmpty ? what : "\(what): \(parts.joined(separator: "; "))"
  }
}

/// An immutable, shareable TLS configuration (`SSL_CTX`). Thread-safe once built.
public final class TLSContext: @unchecked Sendable {
  // SSL_CTX is reference counted and safe to share once configured: nothing mutates it
  // after init.
  let handle: OpaquePointer
  let isServer: Bool

  /// Mozilla "intermediate" TLS 1.2 suites; TLS 1.3 uses OpenSSL's default three.
  static let intermediateCiphers =
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    + "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    + "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
    + "DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384:DHE-RSA-CHACHA20-POLY1305"

  private init(server: Bool) throws(TLSError) {
    guard let ctx = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method()) else {
      throw TLSError("SSL_CTX_new")
    }
    handle = ctx
    isServer = server
    guard CTLS_SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) == 1,
      CTLS_SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION) == 1,
      SSL_CTX_set_cipher_list(ctx, Self.intermediateCiphers) == 1,
      CTLS_SSL_CTX_set1_groups_list(ctx, "X25519:prime256v1:secp384r1") == 1
    else { throw TLSError("configuring TLS versions and ciphers") }
    _ = SSL_CTX_set_options(ctx, CTLS_OP_NO_COMPRESSION | CTLS_OP_NO_RENEGOTIATION)
    _ = CTLS_SSL_CTX_set_mode(
      ctx,
      CTLS_MODE_RELEASE_BUFFERS | CTLS_MODE_ENABLE_PARTIAL_WRITE
        | CTLS_MODE_ACCEPT_MOVING_WRITE_BUFFER)
  }

  deinit { SSL_CTX_free(handle) }

  /// A server context: certificate chain and key (PEM files), and optionally a CA whose
  /// signature every client certificate must carry (mTLS).
  public static func server(
    certificateChainFile: String, privateKeyFile: String, clientCAFile: String? = nil
  ) throws(TLSError) -> TLSContext {
    let c = try TLSContext(server: true)
    let ctx = c.handle
    try c.use(certificateChainFile: certificateChainFile, privateKeyFile: privateKeyFile)
    _ = SSL_CTX_set_options(ctx, CTLS_OP_CIPHER_SERVER_PREFERENCE | CTLS_OP_NO_TICKET)
    _ = SSL_CTX_set_num_tickets(ctx, 0)
    _ = CTLS_SSL_CTX_set_session_cache_mode(ctx, CTLS_SESS_CACHE_OFF)
    SSL_CTX_set_alpn_select_cb(
      ctx,
      { _, out, outlen, input, inlen, _ in
        CTLS_select_h2(out, outlen, input, inlen) == 1
          ? SSL_TLSEXT_ERR_OK : SSL_TLSEXT_ERR_ALERT_FATAL
      }, nil)
    if let ca = clientCAFile {
      guard SSL_CTX_load_verify_locations(ctx, ca, nil) == 1 else {
        throw TLSError("loading client CA \(ca)", file: ca)
      }
      if let names = SSL_load_client_CA_file(ca) { SSL_CTX_set_client_CA_list(ctx, names) }
      SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nil)
    }
    return c
  }

  /// A client context that trusts `trustRootsFile` (PEM CA certificates), offers ALPN h2,
  /// and optionally presents a client certificate (chain and key, PEM; both or neither).
  public static func client(
    trustRootsFile: String?, certificateChainFile: String? = nil, privateKeyFile: String? = nil
  ) throws(TLSError) -> TLSContext {
    let c = try TLSContext(server: false)
    let ctx = c.handle
    if let roots = trustRootsFile {
      guard SSL_CTX_load_verify_locations(ctx, roots, nil) == 1 else {
        throw TLSError("loading CA \(roots)")
      }
    } else {
      SSL_CTX_set_default_verify_paths(ctx)
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nil)
    let alpn: [UInt8] = [2, UInt8(ascii: "h"), UInt8(ascii: "2")]
    guard SSL_CTX_set_alpn_protos(ctx, alpn, UInt32(alpn.count)) == 0 else {
      throw TLSError("setting ALPN")
    }
    switch (certificateChainFile, privateKeyFile) {
    case (nil, nil): break
    case (let cert?, let key?):
      try c.use(certificateChainFile: cert, privateKeyFile: key)
    default:
      throw TLSError("a client certificate needs both its chain and its private key")
    }
    return c
  }

  /// Loads the certificate chain and private key (PEM files) this side presents.
  private func use(certificateChainFile: String, privateKeyFile: String) throws(TLSError) {
    guard SSL_CTX_use_certificate_chain_file(handle, certificateChainFile) == 1 else {
      throw TLSError(
        "loading certificate chain \(certificateChainFile)", file: certificateChainFile)
    }
    guard SSL_CTX_use_PrivateKey_file(handle, privateKeyFile, SSL_FILETYPE_PEM) == 1 else {
      throw TLSError("loading private key \(privateKeyFile)", file: privateKeyFile)
    }
    guard SSL_CTX_check_private_key(handle) == 1 else {
      throw TLSError(
        "private key \(privateKeyFile) does not match the certificate \(certificateChainFile)",
        file: privateKeyFile)
    }
  }
}
