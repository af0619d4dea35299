// subcenterd's flags (SPEC §6), each also read from SUBCENTER_<FLAG>. Parsing validates
// every value and names the flag in its error.

import GRPCTransport
import SubcenterStore

/// Everything subcenterd is configured with.
public struct ServerOptions: Sendable {
  public var transport: ServerConfiguration
  public var adminListen: SocketAddress
  public var dataDirectory: String
  /// How the data directory was given (`--data`, or `SUBCENTER_DATA (--data)`), for errors.
  public var dataOrigin: String
  public var tokensFile: String
  /// How the tokens file was given, for errors.
  public var tokensOrigin: String
  public var fsync: FsyncPolicy
  public var snapshotIntervalSeconds: Int
  public var erasureDeadlineSeconds: Int
  public var changeRetentionSeconds: Int
  public var anonymousTTLSeconds: Int
  public var recoverTruncate: Bool
  /// WatchChanges streams open at once, server-wide (not in SPEC).
  public var maxWatchers: Int
  /// Seconds a WatchChanges stream may stay stuck before it is cut off (not in SPEC).
  public var watchStallLimitSeconds: Int

  /// Every flag of SPEC §6.
  public static let flagSpecs: [FlagSpec] =
    ServerConfiguration.flagSpecs + [
      FlagSpec(
        "admin-listen", default: "127.0.0.1:9090",
        help: "plain HTTP: /metrics, /healthz, /readyz"),
      FlagSpec("data", default: "./data", help: "data directory (created)"),
      FlagSpec("tokens", default: "certs/dev/tokens.json", help: "bearer tokens file (JSON)"),
      FlagSpec("fsync", default: "always", help: "always | interval:MS | none"),
      FlagSpec("snapshot-interval", default: "300", help: "seconds between snapshots with changes"),
      FlagSpec(
        "erasure-deadline", default: "60", help: "seconds until a forgotten person is off disk"),
      FlagSpec("change-retention", default: "86400", help: "seconds WatchChanges can replay"),
      FlagSpec(
        "anonymous-ttl", default: "2592000", help: "seconds before idle anonymous profiles go"),
      FlagSpec(
        "max-watchers", default: "1000",
        help: "WatchChanges streams open at once; more are refused RESOURCE_EXHAUSTED"),
      FlagSpec(
        "watch-stall-limit", default: "30",
        help: "seconds a WatchChanges client may read nothing before it is cut off"),
      FlagSpec(
        "recover-truncate", value: false, help: "start from the last good record after damage"),
      FlagSpec("help", value: false, help: "print this text"),
    ]

  /// Parses and validates flags; TLS files are loaded here so a bad path fails at start.
  public init(flags: Flags) throws(FlagError) {
    transport = try ServerConfiguration(flags: flags, defaultLoops: UsableCores.count)
    adminListen = try flags.address("admin-listen") ?? SocketAddress(host: "127.0.0.1", port: 9090)
    let (grpc, admin) = (transport.listen, adminListen)
    let wildcards: Set = ["0.0.0.0", "::"]
    if admin.port != 0 && admin.port == grpc.port
      && (admin.host == grpc.host || wildcards.contains(admin.host)
        || wildcards.contains(grpc.host))
    {
      throw FlagError(
        "\(flags.origin("admin-listen")): \(admin) overlaps \(flags.origin("listen")) "
          + "(\(grpc)): give the admin port another port")
    }
    dataDirectory = flags.string("data") ?? "./data"
    dataOrigin = flags.origin("data")
    guard !dataDirectory.isEmpty else {
      throw FlagError("\(flags.origin("data")): must not be empty")
    }
    tokensFile = flags.string("tokens") ?? "certs/dev/tokens.json"
    tokensOrigin = flags.origin("tokens")
    let fsyncText = flags.string("fsync") ?? "always"
    guard let fsync = FsyncPolicy(fsyncText) else {
      throw FlagError(
        "\(flags.origin("fsync")): expected always, none or interval:MS (1-60000), got '\(fsyncText)'"
      )
    }
    self.fsync = fsync
    let year = 31_536_000
    snapshotIntervalSeconds = try flags.int("snapshot-interval", in: 1...year) ?? 300
    erasureDeadlineSeconds = try flags.int("erasure-deadline", in: 1...year) ?? 60
    changeRetentionSeconds = try flags.int("change-retention", in: 1...(10 * year)) ?? 86_400
    anonymousTTLSeconds = try flags.int("anonymous-ttl", in: 1...(10 * year)) ?? 2_592_000
    recoverTruncate = try flags.bool("recover-truncate")
    maxWatchers = try flags.int("max-watchers", in: 1...1_000_000) ?? 1000
    watchStallLimitSeconds = try flags.int("watch-stall-limit", in: 1...3600) ?? 30
  }
}
