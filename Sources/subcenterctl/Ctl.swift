// subcenterctl: calls the server from the shell. This first form has the health commands;
// the subscription commands arrive with the service.

import GRPCTransport
import Glibc
import SubcenterServer

enum Ctl {
  static let specs: [FlagSpec] = [
    FlagSpec("server", default: "127.0.0.1:50051", help: "server HOST:PORT"),
    FlagSpec("server-name", default: "localhost", help: "name checked in the server certificate"),
    FlagSpec("ca", default: "certs/dev/ca.pem", help: "CA that signed the server certificate"),
    FlagSpec("token", help: "bearer token (or SUBCENTER_TOKEN)"),
    FlagSpec("timeout-ms", default: "5000", help: "deadline of each call"),
    FlagSpec("data", help: "data directory (verify-receipt reads its secret.key)"),
    FlagSpec("help", value: false, help: "print this text"),
  ]

  static let commands = """
    commands (PERSON is an id, or email:…, phone:…, anon:…):
      health [SERVICE]                         Health/Check ("" = the whole server)
      watch-health [SERVICE]                   Health/Watch: print each status change
      identify WS PERSON_ID [EMAIL [PHONE]]    create or update a person
      profile WS PERSON                        GetProfile
      subscribe WS PERSON CHANNEL [TOPIC]      Subscribe (CHANNEL may be "")
      unsubscribe WS PERSON CHANNEL [TOPIC]    Unsubscribe
      preferences WS PERSON                    GetPreferences
      check WS PERSON CHANNEL [TOPIC]          CheckDelivery
      history WS PERSON                        GetHistory (newest first)
      forget WS PERSON                         ForgetPerson
      workspace get WS                         GetWorkspace
      token create NAME WORKSPACE SCOPE...     print a new token and its tokens-file line
      verify-receipt RECEIPT --data DIR        check an erasure receipt with DIR/secret.key
      check-data DIR                           check the snapshots and log of a data directory
                                               offline (exit 0 sound, 1 damaged)
    """

  static func run() -> Int32 {
    // Flags may stand anywhere; everything else is the command and its operands.
    var flagArgs: [String] = []
    var args: [String] = []
    var rest = Array(CommandLine.arguments.dropFirst())[...]
    while let a = rest.popFirst() {
      guard a.hasPrefix("--"), a.count > 2 else {
        args.append(a)
        continue
      }
      flagArgs.append(a)
      let name = String(a.dropFirst(2))
      if !name.contains("="), specs.first(where: { $0.name == name })?.takesValue == true,
        let v = rest.popFirst()
      {
        flagArgs.append(v)
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
    case "token":
      guard operands.count >= 4, operands[0] == "create" else { return usage() }
      var scopes: [Scope] = []
      for s in operands[3...] {
        guard let scope = Scope(rawValue: s) else { throw FlagError("unknown scope '\(s)'") }
        scopes.append(scope)
      }
      let t = TokenStore.createToken(name: operands[1], workspace: operands[2], scopes: scopes)
      writeStdoutLine("token: \(t.token)")
      writeStdoutLine("tokens file entry: \(t.entry)")
      return 0
    case "check-data":
      guard operands.count == 1 else { return usage() }
      return CheckData.run(directory: operands[0])
    case "verify-receipt":
      guard operands.count == 1, let dir = flags.string("data") else { return usage() }
      let secret = try ServerSecret.load(dataDirectory: dir)
      guard let json = ErasureReceipts(secret: secret).verify(operands[0]) else {
        writeStdoutLine("INVALID: the signature does not match this server's secret")
        return 1
      }
      writeStdoutLine("VALID: \(json)")
      return 0
    default:
      return try service(command: command, operands: operands, flags: flags, timeout: timeout)
    }
  }

  static func usage() -> Int32 {
    writeStderrLine(commands)
    return 2
  }

  static let rpc = "/subcenter.v1.SubscriptionCenter/"

  /// The service commands: build the request, call, print the answer.
  static func service(command: String, operands o: [String], flags: Flags, timeout: Int) throws
    -> Int32
  {
    var w = ProtoWriter()
    let method: String
    let render: ([UInt8]) -> String
    func need(_ n: Int) throws {
      guard o.count >= n else { throw FlagError("\(command): missing operands\n\(commands)") }
    }
    switch command {
    case "identify":
      try need(2)
      w.string(1, o[0])
      w.string(2, o[1])
      if o.count > 2 { w.string(3, o[2]) }
      if o.count > 3 { w.string(4, o[3]) }
      (method, render) = ("Identify", Printer.profile)
    case "profile", "preferences", "history", "forget":
      try need(2)
      w.string(1, o[0])
      w.message(2, ProtoWriter.person(o[1]))
      switch command {
      case "profile": (method, render) = ("GetProfile", Printer.profile)
      case "preferences": (method, render) = ("GetPreferences", Printer.preferences)
      case "history": (method, render) = ("GetHistory", Printer.history)
      default: (method, render) = ("ForgetPerson", Printer.forget)
      }
    case "subscribe", "unsubscribe", "check":
      try need(3)
      w.string(1, o[0])
      w.message(2, ProtoWriter.person(o[1]))
      w.string(3, o[2])
      if o.count > 3 { w.string(4, o[3]) }
      if command != "check" { w.string(5, "subcenterctl") }
      switch command {
      case "subscribe": (method, render) = ("Subscribe", Printer.preferences)
      case "unsubscribe": (method, render) = ("Unsubscribe", Printer.preferences)
      default: (method, render) = ("CheckDelivery", Printer.decision)
      }
    case "workspace":
      guard o.count == 2, o[0] == "get" else { return usage() }
      w.string(1, o[1])
      (method, render) = ("GetWorkspace", Printer.workspace)
    default:
      writeStderrLine("subcenterctl: unknown command '\(command)'\n\(commands)")
      return 2
    }
    var md = Metadata()
    if let token = flags.string("token") ?? Flags.processEnvironment()["SUBCENTER_TOKEN"] {
      md.add("authorization", "Bearer \(token)")
    }
    let client = try connect(flags)
    let r = try client.unary(rpc + method, request: w.bytes, metadata: md, timeoutMillis: timeout)
    writeStdoutLine(render(r.message))
    return 0
  }
}
