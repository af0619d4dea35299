// subcenterd's own flags beyond the transport's: --max-watchers at its edges, and an admin
// port that overlaps the gRPC port refused before anything starts.

import GRPCTransport
import SubcenterServer
import SubcenterTestSupport
import Testing

@Suite struct ServerOptionsTests {
  /// `args` after the TLS flags of the test certificates.
  private func options(_ args: [String], env: [String: String] = [:]) throws -> ServerOptions {
    let certs = try TestCertificates.shared()
    let flags = try Flags(
      arguments: ["--tls-cert", certs.serverCertificateFile, "--tls-key", certs.serverKeyFile]
        + args,
      environment: env, specs: ServerOptions.flagSpecs)
    return try ServerOptions(flags: flags)
  }

  private func refusal(_ args: [String]) throws -> String? {
    do {
      _ = try options(args)
      return nil
    } catch let e as FlagError {
      return e.description
    }
  }

  @Test func maxWatchersAtItsEdges() throws {
    #expect(try options([]).maxWatchers == 1000)
    #expect(try options(["--max-watchers", "1"]).maxWatchers == 1)
    #expect(try options(["--max-watchers", "1000000"]).maxWatchers == 1_000_000)
    #expect(try options([], env: ["SUBCENTER_MAX_WATCHERS": "7"]).maxWatchers == 7)
    for bad in ["0", "1000001", "-1", "x"] {
      let why = try refusal(["--max-watchers", bad])
      #expect(why?.contains("--max-watchers") == true, "\(bad): \(why as Any)")
    }
  }

  /// The same port as --listen is refused on the same address or when either is a
  /// wildcard; another address, another port or port 0 (a free one each) is not.
  @Test func anAdminPortOverlappingTheGRPCPortIsRefused() throws {
    for (grpc, admin) in [
      ("127.0.0.1:7000", "127.0.0.1:7000"), ("0.0.0.0:7000", "127.0.0.1:7000"),
      ("127.0.0.1:7000", "0.0.0.0:7000"), ("[::]:7000", "127.0.0.1:7000"),
    ] {
      let why = try refusal(["--listen", grpc, "--admin-listen", admin])
      #expect(
        why?.contains("--admin-listen") == true && why?.contains("overlaps") == true,
        "\(grpc) / \(admin): \(why as Any)")
    }
    for (grpc, admin) in [
      ("127.0.0.1:7000", "127.0.0.2:7000"), ("127.0.0.1:7000", "127.0.0.1:7001"),
      ("127.0.0.1:0", "127.0.0.1:0"),
    ] {
      #expect(
        try refusal(["--listen", grpc, "--admin-listen", admin]) == nil, "\(grpc) / \(admin)")
    }
  }
}
