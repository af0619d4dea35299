// Command-line flags with environment fallback: `--name VALUE` or `--name=VALUE`, else
// `<PREFIX>NAME` (upper case, dashes as underscores). Flags win over the environment.
// Every bad value is refused with a message naming the flag.

import Glibc

/// A flag a program accepts.
public struct FlagSpec: Sendable {
  public let name: String
  public let takesValue: Bool
  public let defaultValue: String?
  public let help: String

  public init(_ name: String, value: Bool = true, default defaultValue: String? = nil, help: String)
  {
    self.name = name
    takesValue = value
    self.defaultValue = defaultValue
    self.help = help
  }
}

/// A refused flag or value; the description names the flag.
public struct FlagError: Error, CustomStringConvertible, Sendable {
  public let description: String
  public init(_ description: String) { self.description = description }
}

/// Parsed flags.
public struct Flags: Sendable {
  /// The process environment as a dictionary.
  public static func processEnvironment() -> [String: String] {
    var out: [String: String] = [:]
    var p = environ
    while let entry = p.pointee {
      let s = String(cString: entry)
      if let eq = s.firstIndex(of: "=") { out[String(s[..<eq])] = String(s[s.index(after: eq)...]) }
      p += 1
    }
    return out
  }

  private var values: [String: String] = [:]
  private var sources: [String: String] = [:]
  public let specs: [FlagSpec]
  public let envPrefix: String

  /// Parses `arguments` (without the program name), then fills unset flags from
  /// `environment`, then from defaults.
  public init(
    arguments: [String], environment: [String: String], specs: [FlagSpec],
    envPrefix: String = "SUBCENTER_"
  ) throws(FlagError) {
    self.specs = specs
    self.envPrefix = envPrefix
    let byName = Dictionary(specs.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
    var i = 0
    while i < arguments.count {
      let arg = arguments[i]
      guard arg.hasPrefix("--") else { throw FlagError("unexpected argument '\(arg)'") }
      var name = String(arg.dropFirst(2))
      var inline: String?
      if let eq = name.firstIndex(of: "=") {
        inline = String(name[name.index(after: eq)...])
        name = String(name[..<eq])
      }
      guard let spec = byName[name] else { throw FlagError("unknown flag --\(name)") }
      if spec.takesValue {
        if let inline {
          values[name] = inline
        } else {
          guard i + 1 < arguments.count else { throw FlagError("--\(name) needs a value") }
          values[name] = arguments[i + 1]
          i += 1
        }
      } else {
        values[name] = inline ?? "true"
      }
      sources[name] = "--\(name)"
      i += 1
    }
    // `--help` is asked for on the command line only: a variable that asks for it would
    // keep a deployed server from starting.
    for spec in specs where values[spec.name] == nil && spec.name != "help" {
      let env = envPrefix + String(spec.name.uppercased().map { $0 == "-" ? "_" : $0 })
      if let v = environment[env] {
        values[spec.name] = v
        sources[spec.name] = "\(env) (--\(spec.name))"
      } else if let d = spec.defaultValue {
        values[spec.name] = d
        sources[spec.name] = "--\(spec.name)"
      }
    }
  }

  /// How to name the flag in an error: the flag, or the environment variable it came from.
  public func origin(_ name: String) -> String { sources[name] ?? "--\(name)" }

  public func string(_ name: String) -> String? { values[name] }

  /// A boolean flag: set without value, or `true`/`false`/`1`/`0`. An empty value
  /// (`--flag=`, `SUBCENTER_FLAG=`) is refused: a blank variable in a deployment template
  /// usually means "off", and taking it for "on" switched on `--recover-truncate`.
  public func bool(_ name: String) throws(FlagError) -> Bool {
    switch values[name] {
    case nil, "false", "0": return false
    case "true", "1": return true
    case let v?: throw FlagError("\(origin(name)): expected true, false, 1 or 0, got '\(v)'")
    }
  }

  /// An integer in `range`, or nil when unset.
  public func int(_ name: String, in range: ClosedRange<Int>) throws(FlagError) -> Int? {
    guard let v = values[name] else { return nil }
    guard let n = Int(v), range.contains(n) else {
      throw FlagError(
        "\(origin(name)): expected an integer from \(range.lowerBound) to \(range.upperBound), got '\(v)'"
      )
    }
    return n
  }

  /// An unsigned 64-bit integer (0 to 2^64 - 1), or nil when unset.
  public func uint64(_ name: String) throws(FlagError) -> UInt64? {
    guard let v = values[name] else { return nil }
    guard let n = UInt64(v) else {
      throw FlagError("\(origin(name)): expected an integer from 0 to \(UInt64.max), got '\(v)'")
    }
    return n
  }

  /// A `HOST:PORT` address, or nil when unset.
  public func address(_ name: String) throws(FlagError) -> SocketAddress? {
    guard let v = values[name] else { return nil }
    guard let a = SocketAddress(parsing: v) else {
      throw FlagError(
        "\(origin(name)): expected HOST:PORT (an IP address or localhost, a port up to "
          + "65535), got '\(v)'")
    }
    return a
  }

  /// Usage text for `--help`; `environmentNote` replaces the line saying every flag can
  /// be set in the environment.
  public func usage(program: String, environmentNote: String? = nil) -> String {
    var out = "usage: \(program) [flags]\n"
    for s in specs {
      let left = s.takesValue ? "--\(s.name) VALUE" : "--\(s.name)"
      let def = s.defaultValue.map { " (default \($0))" } ?? ""
      let pad = String(repeating: " ", count: max(1, 34 - left.count))
      out += "  \(left)\(pad)\(s.help)\(def)\n"
    }
    if let environmentNote { return out + environmentNote + "\n" }
    let example = String((specs.first?.name ?? "flag").uppercased().map { $0 == "-" ? "_" : $0 })
    out +=
      "Each flag can also be set as \(envPrefix)<FLAG>, e.g. \(envPrefix)\(example); flags win.\n"
    return out
  }
}

extension ServerConfiguration {
  /// A server TLS context from the files `--tls-cert`, `--tls-key` and `--client-ca` name
  /// (read now: at start, and again when a server reloads them); the error names the flag
  /// of the file at fault.
  public static func tlsContext(flags: Flags) throws(FlagError) -> TLSContext {
    let cert = flags.string("tls-cert") ?? "certs/dev/server.pem"
    let key = flags.string("tls-key") ?? "certs/dev/server.key"
    do {
      return try TLSContext.server(
        certificateChainFile: cert, privateKeyFile: key, clientCAFile: flags.string("client-ca"))
    } catch {
      // The flag that named the file the error is about.
      let files = [("tls-key", key), ("tls-cert", cert), ("client-ca", flags.string("client-ca"))]
      let name = files.first { $0.1 != nil && $0.1 == error.file }?.0
      throw FlagError(
        "\(name.map { flags.origin($0) } ?? "--tls-cert/--tls-key/--client-ca"): \(error)")
    }
  }

  /// The transport flags every server shares.
  public static let flagSpecs: [FlagSpec] = [
    FlagSpec("listen", default: "127.0.0.1:50051", help: "gRPC over TLS address"),
    FlagSpec("loops", help: "event-loop threads (default: number of cores)"),
    FlagSpec("tls-cert", default: "certs/dev/server.pem", help: "server certificate chain (PEM)"),
    FlagSpec("tls-key", default: "certs/dev/server.key", help: "server private key (PEM)"),
    FlagSpec("client-ca", help: "require client certificates signed by this CA (PEM)"),
    FlagSpec("max-message-bytes", default: "4194304", help: "largest request message"),
    FlagSpec("max-concurrent-streams", default: "256", help: "concurrent streams per connection"),
    FlagSpec(
      "max-request-bytes-per-connection", default: "268435456",
      help: "request bytes a connection may hold for calls not running yet (at least twice "
        + "--max-message-bytes)"),
    FlagSpec(
      "max-connections", default: "10000",
      help: "connections open at once; more are closed on arrival (ulimit -n is raised to fit)"),
    FlagSpec(
      "idle-timeout", default: "300",
      help: "seconds a connection may stay without a call before it is closed (0: never)"),
  ]

  /// Builds a configuration from parsed flags; loads the TLS files.
  public init(flags: Flags, defaultLoops: Int) throws(FlagError) {
    let listen = try flags.address("listen") ?? SocketAddress(host: "127.0.0.1", port: 50051)
    let loops = try flags.int("loops", in: 1...256) ?? defaultLoops
    self.init(listen: listen, loops: loops, tls: try Self.tlsContext(flags: flags))
    limits.maxMessageBytes = try flags.int("max-message-bytes", in: 1...(1 << 30)) ?? 4_194_304
    limits.maxConcurrentStreams = try flags.int("max-concurrent-streams", in: 1...65_535) ?? 256
    limits.maxBufferedRequestBytes =
      try flags.int("max-request-bytes-per-connection", in: 1...(1 << 40)) ?? 268_435_456
    maxConnections = try flags.int("max-connections", in: 1...1_000_000) ?? 10_000
    idleTimeoutNanos =
      UInt64(try flags.int("idle-timeout", in: 0...86_400 * 365) ?? 300) * 1_000_000_000
  }
}
