// TLSContext and TLSSession pumped against each other in memory.

import SubcenterTestSupport
import Testing

@testable import GRPCTransport

@Suite struct TLSTests {
  let certs: TestCertificates

  init() throws { certs = try TestCertificates.shared() }

  func server(clientCA: String? = nil) throws -> TLSSession {
    let ctx = try TLSContext.server(
      certificateChainFile: certs.serverCertificateFile, privateKeyFile: certs.serverKeyFile,
      clientCAFile: clientCA)
    return try TLSSession(context: ctx)
  }

  func client(
    trust: String? = nil, serverName: String? = "localhost", withCertificate: Bool = false
  ) throws -> TLSSession {
    let ctx = try TLSContext.client(
      trustRootsFile: trust ?? certs.caFile,
      certificateChainFile: withCertificate ? certs.clientCertificateFile : nil,
      privateKeyFile: withCertificate ? certs.clientKeyFile : nil)
    return try TLSSession(context: ctx, serverName: serverName)
  }

  /// Everything `session` can decrypt now.
  func readAll(_ session: TLSSession) throws -> [UInt8] {
    var out: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 4096)
    while true {
      let r = try buffer.withUnsafeMutableBytes { try session.read(into: $0) }
      guard case .bytes(let n) = r else { return out }
      out += buffer[0..<n]
    }
  }

  @Test func handshakeALPNVersionAndDataBothWays() throws {
    let s = try server()
    let c = try client()
    try TLSPump.handshake(client: c, server: s)
    #expect(c.isHandshakeComplete && s.isHandshakeComplete)
    #expect(c.negotiatedProtocol == "h2")
    #expect(s.negotiatedProtocol == "h2")
    #expect(c.protocolVersion == "TLSv1.3")
    #expect(s.protocolVersion == "TLSv1.3")

    let request = Array("PRI * HTTP/2.0".utf8)
    try c.write(request)
    TLSPump.transfer(from: c, to: s)
    #expect(try readAll(s) == request)

    let big = (0..<100_000).map { UInt8(truncatingIfNeeded: $0 &* 31) }
    try s.write(big)
    TLSPump.transfer(from: s, to: c)
    #expect(try readAll(c) == big)

    // Nothing more to read: the session asks for more ciphertext.
    var one = [UInt8](repeating: 0, count: 1)
    #expect(try one.withUnsafeMutableBytes { try c.read(into: $0) } == .wantMore)

    c.shutdown()
    TLSPump.transfer(from: c, to: s)
    #expect(try one.withUnsafeMutableBytes { try s.read(into: $0) } == .closed)
  }

  /// Buffers kept between reads and writes (a busy connection), then freed (a quiet one):
  /// data goes both ways in either mode, also fed a byte at a time and taken in pieces.
  @Test func keptBuffersAndPiecemealCiphertext() throws {
    let s = try server()
    let c = try client()
    try TLSPump.handshake(client: c, server: s)
    for keep in [true, false, true] {
      s.keepsBuffers = keep
      c.keepsBuffers = keep
      let request = (0..<3000).map { UInt8(truncatingIfNeeded: $0 &* 7) }
      try c.write(request)
      for byte in c.takeOutput() { s.feed([byte]) }
      #expect(try readAll(s) == request)

      let answer = (0..<40_000).map { UInt8(truncatingIfNeeded: $0 &* 13) }
      try s.write(answer)
      var piece = [UInt8](repeating: 0, count: 1000)
      while s.pendingOutput > 0 {
        let n = piece.withUnsafeMutableBytes { s.takeOutput(into: $0) }
        c.feed(Array(piece[0..<n]))
      }
      #expect(try readAll(c) == answer)
    }
  }

  @Test func ipAddressServerName() throws {
    try TLSPump.handshake(client: client(serverName: "127.0.0.1"), server: server())
  }

  @Test func wrongCAFails() throws {
    let c = try client(trust: certs.otherCAFile)
    #expect(throws: (any Error).self) { try TLSPump.handshake(client: c, server: server()) }
    #expect(!c.isHandshakeComplete)
  }

  @Test func wrongServerNameFails() throws {
    let c = try client(serverName: "example.com")
    #expect(throws: (any Error).self) { try TLSPump.handshake(client: c, server: server()) }
  }

  @Test func clientWithoutALPNGetsNoProtocol() throws {
    let s = try server()
    let c = try RawTLSClient()
    try TLSPump.handshake(client: c, server: s)
    #expect(s.negotiatedProtocol == nil)
    #expect(c.negotiatedProtocol == nil)
  }

  @Test func clientOfferingOnlyHTTP1IsRefused() throws {
    let s = try server()
    #expect(throws: (any Error).self) {
      try TLSPump.handshake(client: RawTLSClient(alpn: ["http/1.1"]), server: s)
    }
    #expect(!s.isHandshakeComplete)
  }

  @Test func rawClientOfferingH2Negotiates() throws {
    let c = try RawTLSClient(alpn: ["http/1.1", "h2"])
    try TLSPump.handshake(client: c, server: server())
    #expect(c.negotiatedProtocol == "h2")
  }

  @Test func mutualTLSWithoutClientCertificateFails() throws {
    let s = try server(clientCA: certs.caFile)
    #expect(throws: (any Error).self) { try TLSPump.handshake(client: client(), server: s) }
    #expect(!s.isHandshakeComplete)
  }

  @Test func mutualTLSWithClientCertificateSucceeds() throws {
    let s = try server(clientCA: certs.caFile)
    let c = try client(withCertificate: true)
    try TLSPump.handshake(client: c, server: s)
    #expect(s.negotiatedProtocol == "h2")
    try c.write([1, 2, 3])
    TLSPump.transfer(from: c, to: s)
    #expect(try readAll(s) == [1, 2, 3])
  }

  @Test func mutualTLSWithCertificateFromAnotherCAFails() throws {
    let s = try server(clientCA: certs.otherCAFile)
    let c = try client(withCertificate: true)
    #expect(throws: (any Error).self) { try TLSPump.handshake(client: c, server: s) }
  }

  @Test func missingFilesRefused() throws {
    let e = #expect(throws: TLSError.self) {
      try TLSContext.server(
        certificateChainFile: certs.directory + "/absent.pem", privateKeyFile: certs.serverKeyFile)
    }
    #expect(e?.description.contains("absent.pem") == true)
    #expect(throws: TLSError.self) {
      try TLSContext.server(
        certificateChainFile: certs.serverCertificateFile, privateKeyFile: certs.clientKeyFile)
    }
  }
}
