// subcenterctl: calls the server from the shell. This first form has the health commands;
// the subscription commands arrive with the service.

import GRPCTransport
import Glibc

enum Ctl {
  static let specs: [FlagSpec] = [
    FlagSpec("server", default: "127.0.0.1:50051", help: "server HOST:PORT"),
    FlagSpec("server-name", default: "localhost", help: "name checked in the server certificate"),
    FlagSpec("ca", default: "certs/dev/ca.pem", help: "CA that signed the server certificate"),
    FlagSpec("token", help: "bearer token (or SUBCENTER_TOKEN)"),
    FlagSpec("timeout-ms", default: "5000", help: "deadline of each call"),
    FlagSpec("help", value: false, help: "print this text"),
  ]

  static let commands = """
    commands:
      health [SERVICE]        Health/Check ("" = the whole server)
      watch-health [SERVICE]  Health/Watch: print each status change until Ctrl-C
    """

  static func run() -> Int32 {
    var args = Array(CommandLine.arguments.dropFirst())
    // Flags come first; the command and its operands follow.
    var flagArgs: [String] = []
    while let a = args.first, a.hasPrefix("--") {
      flagArgs.append(args.removeFirst())
      if !a.contains("="), a != "--help", let v = args.first, !v.hasPrefix("--") {
        flagArgs.append(args.removeFirst())
      }
    }
    let flags: Flags
    do {
      flags = try Flags(
        arguments: flagArgs, environment: Flags.processEnvironment(), specs: specs)
      let help = try flags.bool("help")
      if help || args.isEmpty {
        print(flags.usage(program: "subcenterctl [flags] COMMAND") + commands)
        return help ? 0 : 2
      }
    } catch {
      writeStderrLine("subcenterctl: \(error)")
      return 2
    }
    do {
      return try execute(command: args[0], operands: Array(args.dropFirst()), flags: flags)
    } catch {
      writeStderrLine("subcenterctl: \(error)")
      return 1
    }
  }

  static func connect(_ flags: Flags) throws -> GRPCClient {
    guard let address = try flags.address("server") else { throw FlagError("--server is required") }
    let tls = try TLSContext.client(trustRootsFile: flags.string("ca"))
    return try GRPCClient(address: address, serverName: flags.string("server-name"), tls: tls)
  }

  static func execute(command: String, operands: [String], flags: Flags) throws -> Int32 {
    let timeout = try flags.int("timeout-ms", in: 1...86_400_000) ?? 5000
    switch command {
    case "health":
      let client = try connect(flags)
      let service = operands.first ?? ""
      let r = try client.unary(
        "/grpc.health.v1.Health/Check", request: HealthMessages.request(service: service),
        timeoutMillis: timeout)
      writeStdoutLine(HealthMessages.statusName(r.message))
      return 0
    case "watch-health":
      let client = try connect(flags)
      try client.serverStreaming(
        "/grpc.health.v1.Health/Watch",
        request: HealthMessages.request(service: operands.first ?? "")
      ) { message in
        writeStdoutLine(HealthMessages.statusName(message))
        return true
      }
      return 0
    default:
      writeStderrLine("subcenterctl: unknown command '\(command)'\n\(commands)")
      return 2
    }
  }
}
