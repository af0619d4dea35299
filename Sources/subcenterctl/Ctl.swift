// subcenterctl: calls every RPC of the server from the shell (SPEC §6), prints text or
// `--json`, and has the operator commands (tokens, offline data checks, receipts).
// Exit status: 0 done, 1 the call failed (the gRPC status on stderr as `CODE: message`),
// 2 a usage or input problem found before anything was sent.

import GRPCTransport
import Glibc
import SubcenterProto
import SubcenterServer

/// A command line subcenterctl refuses before calling anything (exit status 2).
struct UsageError: Error, CustomStringConvertible {
  let description: String
  init(_ description: String) { self.description = description }
}

/// One command: its words, operands, the flags it takes beyond the connection flags.
struct Command {
  let name: String
  let operands: String
  let help: String
  let min: Int
  let max: Int?
  let flags: [String]

  init(
    _ name: String, _ operands: String, _ help: String, _ min: Int, _ max: Int?,
    flags: [String] = []
  ) {
    self.name = name
    self.operands = operands
    self.help = help
    self.min = min
    self.max = max
    self.flags = flags
  }

  var synopsis: String { operands.isEmpty ? name : "\(name) \(operands)" }
}

enum Ctl {
  /// A call's deadline, and the TLS and HTTP/2 handshakes', without `--timeout-ms`.
  static let defaultTimeoutMillis = 5000

  static let specs: [FlagSpec] = [
    FlagSpec("server", default: "127.0.0.1:50051", help: "server HOST:PORT"),
    FlagSpec("server-name", default: "localhost", help: "name checked in the server certificate"),
    FlagSpec("ca", default: "certs/dev/ca.pem", help: "CA that signed the server certificate"),
    FlagSpec("cert", help: "client certificate chain (PEM), for a server with --client-ca"),
    FlagSpec("key", help: "client private key (PEM), with --cert"),
    FlagSpec("token", help: "bearer token (or SUBCENTER_TOKEN)"),
    FlagSpec(
      "timeout-ms",
      help:
        "deadline of each call (default \(defaultTimeoutMillis); forget --wait 120000; watch: none)"
    ),
    FlagSpec("json", value: false, help: "print responses as JSON, one object per line"),
    FlagSpec("source", help: "subscribe, unsubscribe, unsubscribe-all, resubscribe: the source"),
    FlagSpec("notice-version", help: "subscribe, unsubscribe: consent text version shown"),
    FlagSpec("record-send", value: false, help: "check, check-batch: count an allowed send"),
    FlagSpec("page-size", help: "history: entries per page (server default 100)"),
    FlagSpec("page-token", help: "history: the page after a previous next page token"),
    FlagSpec("also-suppress", value: false, help: "forget: suppress every identifier too"),
    FlagSpec("wait", value: false, help: "forget: return once erased from disk"),
    FlagSpec("reason", help: "suppress, unsuppress: why"),
    FlagSpec("after-seq", help: "watch: events after this seq"),
    FlagSpec("from-oldest", value: false, help: "watch: every retained event"),
    FlagSpec("count", help: "watch, watch-health: stop after this many"),
    FlagSpec("data", default: "./data", help: "verify-receipt: data directory with secret.key"),
    FlagSpec("person", help: "verify-receipt: also check the receipt is about this person id"),
    FlagSpec("help", value: false, help: "print this text"),
  ]

  /// The variables of the environment that may set flags: the connection flags' and
  /// `--data`'s. A leftover `SUBCENTER_RECORD_SEND=1` (or `_ALSO_SUPPRESS`, `_WAIT`) made
  /// every later command count sends (or suppress); what a command does comes from its
  /// own flags.
  static func environment() -> [String: String] {
    let allowed = Set(
      (connectionFlags.subtracting(["json", "help"]) + ["data"]).map {
        "SUBCENTER_" + $0.uppercased().replacingOccurrences(of: "-", with: "_")
      })
    return Flags.processEnvironment().filter { allowed.contains($0.key) }
  }

  /// Flags every calling command takes.
  static let connectionFlags: Set = [
    "server", "server-name", "ca", "cert", "key", "token", "timeout-ms", "json", "help",
  ]

  static let commands: [Command] = [
    Command("health", "[SERVICE]", "Health/Check (\"\" = the whole server)", 0, 1),
    Command(
      "watch-health", "[SERVICE]", "Health/Watch: each status change", 0, 1, flags: ["count"]),
    Command(
      "identify", "WS PERSON_ID [EMAIL [PHONE [ANONYMOUS_ID]]]",
      "Identify (\"\" skips a field; only ANONYMOUS_ID: anonymous profile)", 2, 5),
    Command("profile", "WS PERSON", "GetProfile", 2, 2),
    Command(
      "subscribe", "WS PERSON CHANNEL [TOPIC]", "Subscribe (CHANNEL may be \"\")", 3, 4,
      flags: ["source", "notice-version"]),
    Command(
      "unsubscribe", "WS PERSON CHANNEL [TOPIC]", "Unsubscribe", 3, 4,
      flags: ["source", "notice-version"]),
    Command("unsubscribe-all", "WS PERSON", "UnsubscribeAll", 2, 2, flags: ["source"]),
    Command("resubscribe", "WS PERSON", "Resubscribe", 2, 2, flags: ["source"]),
    Command("preferences", "WS PERSON", "GetPreferences", 2, 2),
    Command(
      "check", "WS PERSON CHANNEL [TOPIC]", "CheckDelivery", 3, 4, flags: ["record-send"]),
    Command(
      "check-batch", "WS CHANNEL TOPIC PERSON...", "CheckDeliveryBatch (TOPIC may be \"\")", 4,
      nil, flags: ["record-send"]),
    Command(
      "override", "WS PERSON CHANNEL TOPIC MESSAGE_ID JUSTIFICATION",
      "OverrideForImportantMessage", 6, 6),
    Command(
      "history", "WS PERSON", "GetHistory (newest first)", 2, 2,
      flags: ["page-size", "page-token"]),
    Command(
      "forget", "WS PERSON", "ForgetPerson (prints an erasure receipt)", 2, 2,
      flags: ["also-suppress", "wait"]),
    Command("suppress", "WS IDENT...", "SuppressIdentifiers", 2, nil, flags: ["reason"]),
    Command("unsuppress", "WS IDENT...", "UnsuppressIdentifiers", 2, nil, flags: ["reason"]),
    Command("workspace get", "WS", "GetWorkspace", 1, 1),
    Command(
      "workspace set", "WS FILE", "ConfigureWorkspace from a JSON file (- = stdin)", 2, 2),
    Command(
      "watch", "WS", "WatchChanges: print changes as they happen", 1, 1,
      flags: ["after-seq", "from-oldest", "count"]),
    Command(
      "token create", "NAME WORKSPACE SCOPE...", "print a new token and its tokens-file line", 3,
      nil),
    Command(
      "verify-receipt", "RECEIPT", "check an erasure receipt with the data directory's secret", 1,
      1, flags: ["data", "person"]),
    Command(
      "check-data", "DIR",
      "check a data directory offline (exit 0 sound, 1 damaged)", 1, 1),
    Command(
      "find-erased", "DIR RECEIPTS",
      "after a restore: who the erasure receipts in file RECEIPTS (- = stdin) name is back in "
        + "DIR (exit 0 no one, 1 someone)", 2, 2),
  ]

  static var commandHelp: String {
    var out = "commands:\n"
    for c in commands {
      let left = c.synopsis
      if left.count > 40 {
        out += "  \(left)\n" + String(repeating: " ", count: 44) + "\(c.help)\n"
      } else {
        out += "  \(left)\(String(repeating: " ", count: 42 - left.count))\(c.help)\n"
      }
    }
    out += """
      PERSON and IDENT: a person id, or email:ADDRESS, phone:+E164, anon:ANONYMOUS_ID, or
        id:PERSON_ID (needed when the id starts with letters and a colon: id:user:42).
      workspace set FILE: {"channels": ["email"], "topics": [{"id", "name", "description",
        "default_state": "SUBSCRIBED" | "UNSUBSCRIBED"}], "limits": [{"channel",
        "max_messages", "window_seconds"}], "allow_important_override": false}
      exit status: 0 done, 1 the call failed (CODE: message on stderr) or its output could
      not be written, 2 a usage or input problem (nothing was sent). -- ends the flags.

      """
    return out
  }

  /// An error on standard error, escaped: messages may echo what the server or the
  /// command line holds, which must not drive the terminal or fake a line.
  static func report(_ error: any Error) {
    var text = "\(error)"
    if let status = error as? RPCStatus, status.code == .unavailable,
      let advice = tlsAdvice(status.message)
    {
      text += " (\(advice))"
    }
    writeStderrLine("subcenterctl: \(ProtoMessage.printable(text))")
  }

  /// What to change when the TLS handshake with the server failed, from OpenSSL's words for
  /// the failure: its own are about certificates, not about subcenterctl's flags.
  static func tlsAdvice(_ message: String) -> String? {
    let advice = [
      (
        "alert certificate required",
        "the server requires a client certificate: give --cert and --key"
      ),
      (
        "alert unknown ca",
        "the server does not accept this client certificate: --cert must be signed by the server's --client-ca"
      ),
      (
        "alert unsupported certificate",
        "the server does not accept this client certificate: it is not one for clients"
      ),
      ("alert bad certificate", "the server does not accept this client certificate"),
      (
        "hostname mismatch",
        "the server's certificate is not for --server-name, which defaults to localhost"
      ),
      (
        "IP address mismatch",
        "the server's certificate is not for --server-name, which defaults to localhost"
      ),
      (
        "unable to get local issuer certificate",
        "the server's certificate is not signed by the --ca file"
      ),
      ("self-signed certificate", "the server's certificate is not signed by the --ca file"),
      ("certificate has expired", "the server's certificate has expired"),
    ]
    return advice.first { message.contains($0.0) }?.1
  }

  static func run() -> Int32 {
    // Flags may stand anywhere; everything else is the command and its operands.
    var flagArgs: [String] = []
    var given: [String] = []
    var args: [String] = []
    for i in 1..<Int(CommandLine.argc) {
      guard let raw = CommandLine.unsafeArgv[i], String(validatingCString: raw) != nil else {
        writeStderrLine("subcenterctl: argument \(i) is not valid UTF-8")
        return 2
      }
    }
    var rest = Array(CommandLine.arguments.dropFirst())[...]
    while let a = rest.popFirst() {
      if a == "--" {  // the rest are operands, even those starting with --
        args += rest
        break
      }
      guard a.hasPrefix("--"), a.count > 2 else {
        args.append(a)
        continue
      }
      flagArgs.append(a)
      let name = String(a.dropFirst(2).prefix { $0 != "=" })
      given.append(name)
      if !a.contains("="), specs.first(where: { $0.name == name })?.takesValue == true,
        let v = rest.popFirst()
      {
        flagArgs.append(v)
      }
    }
    let flags: Flags
    let command: Command
    let operands: [String]
    do {
      flags = try Flags(arguments: flagArgs, environment: environment(), specs: specs)
      let help = try flags.bool("help")
      if help || args.isEmpty {
        let text =
          flags.usage(
            program: "subcenterctl COMMAND [OPERAND...]",
            environmentNote:
              "The connection flags and --data can also be set as SUBCENTER_<FLAG> (e.g. "
              + "SUBCENTER_SERVER); flags win. What a command does (--record-send, "
              + "--also-suppress, ...) is set by its flags only.") + commandHelp
        if help {
          print(text, terminator: "")
          return 0
        }
        writeStderrLine(String(text.dropLast()))
        return 2
      }
      (command, operands) = try parse(args)
      for name in given where !connectionFlags.contains(name) && !command.flags.contains(name) {
        throw UsageError("--\(name) does not apply to '\(command.name)'")
      }
    } catch {
      report(error)
      return 2
    }
    do {
      return try execute(command, operands, flags: flags)
    } catch let error as UsageError {
      report(error)
      return 2
    } catch let error as FlagError {
      report(error)
      return 2
    } catch let error as TLSError {
      report(error)  // a certificate, key or CA file: nothing was sent
      return 2
    } catch {
      report(error)
      return 1
    }
  }

  /// The command the words name, and its operands (counted).
  static func parse(_ args: [String]) throws(UsageError) -> (Command, [String]) {
    let two = args.count > 1 ? "\(args[0]) \(args[1])" : nil
    let command: Command
    let operands: [String]
    if let c = commands.first(where: { $0.name == two }) {
      (command, operands) = (c, Array(args.dropFirst(2)))
    } else if let c = commands.first(where: { $0.name == args[0] }) {
      (command, operands) = (c, Array(args.dropFirst()))
    } else {
      let group = commands.filter { $0.name.hasPrefix(args[0] + " ") }
      guard group.isEmpty else {
        throw UsageError(
          "'\(args.prefix(2).joined(separator: " "))': expected "
            + group.map(\.synopsis).joined(separator: " or "))
      }
      throw UsageError("unknown command '\(args[0])' (subcenterctl --help lists the commands)")
    }
    guard operands.count >= command.min, operands.count <= command.max ?? .max else {
      throw UsageError(
        "\(command.name): \(operands.count < command.min ? "missing" : "too many") operands; "
          + "usage: subcenterctl [flags] \(command.synopsis)")
    }
    return (command, operands)
  }

  static func connect(_ flags: Flags) throws -> GRPCClient {
    guard let address = try flags.address("server") else {
      throw UsageError("--server is required")
    }
    let cert = flags.string("cert")
    let key = flags.string("key")
    guard (cert == nil) == (key == nil) else {
      throw UsageError("--cert and --key go together (the client certificate and its key)")
    }
    let tls = try TLSContext.client(
      trustRootsFile: flags.string("ca"), certificateChainFile: cert, privateKeyFile: key)
    // --timeout-ms also bounds the TLS and HTTP/2 handshakes (its default without it).
    let handshake = try flags.int("timeout-ms", in: 1...86_400_000) ?? defaultTimeoutMillis
    if let name = flags.string("server-name"), name.isEmpty {
      throw UsageError("--server-name must not be empty")
    }
    return try GRPCClient(
      address: address, serverName: flags.string("server-name"), tls: tls,
      connectTimeoutMillis: Int32(handshake))
  }

  static func execute(_ command: Command, _ o: [String], flags: Flags) throws -> Int32 {
    let json = try flags.bool("json")
    let timeout = try flags.int("timeout-ms", in: 1...86_400_000)
    switch command.name {
    case "health", "watch-health":
      let client = try connect(flags)
      let request = HealthMessages.request(service: o.first ?? "")
      func show(_ message: [UInt8]) {
        let status = HealthMessages.statusName(message)
        writeStdoutLine(json ? "{\"status\": \"\(status)\"}" : status)
      }
      if command.name == "health" {
        let r = try client.unary(
          "/grpc.health.v1.Health/Check", request: request,
          timeoutMillis: timeout ?? defaultTimeoutMillis)
        show(r.message)
        return 0
      }
      return try stream(
        client, "/grpc.health.v1.Health/Watch", request: request, metadata: Metadata(),
        timeout: timeout, count: flags.int("count", in: 1...Int.max), show)
    case "token create":
      guard !o[0].isEmpty, !o[1].isEmpty else {
        throw UsageError("token create: NAME and WORKSPACE must not be empty")
      }
      if let why = TokenStore.workspaceProblem(o[1]) { throw UsageError("token create: \(why)") }
      var scopes: [Scope] = []
      for s in o[2...] {
        guard let scope = Scope(rawValue: s) else { throw UsageError("unknown scope '\(s)'") }
        scopes.append(scope)
      }
      let t = TokenStore.createToken(name: o[0], workspace: o[1], scopes: scopes)
      if json {
        writeStdoutLine("{\"token\": \(JSONText.quoted(t.token)), \"entry\": \(t.entry)}")
      } else {
        writeStdoutLine("token: \(t.token)")
        writeStdoutLine("tokens file entry: \(t.entry)")
      }
      return 0
    case "check-data":
      return CheckData.run(directory: o[0], json: json)
    case "find-erased":
      return FindErased.run(directory: o[0], receiptsPath: o[1], json: json)
    case "verify-receipt":
      let dir = flags.string("data") ?? "./data"
      guard access(ServerSecret.path(dataDirectory: dir), F_OK) == 0 else {
        throw UsageError(
          "verify-receipt: no \(dir)/secret.key: name the data directory of the server that "
            + "issued the receipt with --data DIR (default ./data)")
      }
      let secret = try ServerSecret.load(dataDirectory: dir)
      let receipts = ErasureReceipts(secret: secret)
      guard let claims = receipts.verify(o[0]) else {
        writeStdoutLine(
          json
            ? "{\"valid\": false}"
            : "INVALID: not a receipt of this server (its signature does not match this "
              + "server's secret, or it is not in the form the server writes)")
        return 1
      }
      guard let person = flags.string("person") else {
        writeStdoutLine(
          json ? "{\"valid\": true, \"claims\": \(claims.json)}" : "VALID: \(claims.json)")
        return 0
      }
      // The person hash is keyed: only the secret tells whose receipt it is.
      let about =
        receipts.personHash(workspace: claims.workspace, personID: person) == claims.personHash
      if json {
        writeStdoutLine(
          "{\"valid\": true, \"about_person\": \(about), \"claims\": \(claims.json)}")
      } else {
        writeStdoutLine(
          about
            ? "VALID, about \(person): \(claims.json)"
            : "VALID, but NOT about \(person) (another person of \(claims.workspace)): "
              + claims.json)
      }
      return about ? 0 : 1
    default:
      return try call(command, o, flags: flags, json: json, timeout: timeout)
    }
  }

  static let rpc = "/subcenter.v1.SubscriptionCenter/"

  /// The service commands: build the request, call, print the answer.
  static func call(_ command: Command, _ o: [String], flags: Flags, json: Bool, timeout: Int?)
    throws -> Int32
  {
    var w = ProtoWriter()
    let method: String
    var decode: ([UInt8]) -> ProtoMessage?
    var render: (ProtoMessage) -> String
    var timeout = timeout ?? defaultTimeoutMillis
    switch command.name {
    case "identify":
      w.string(1, o[0])
      // PERSON_ID in the PERSON syntax's rules: `id:user:42` is the id `user:42`, and
      // another kind (or a mistyped one) is refused rather than stored as the id.
      var values = Array(o.dropFirst())
      if !values[0].isEmpty {
        let (kind, value) = try ProtoWriter.identifier(values[0])
        guard kind == 1 else {
          throw UsageError(
            "identify: PERSON_ID '\(values[0])' is not a person id: give the email, phone and "
              + "anonymous id as the operands after it (\"\" for none)")
        }
        values[0] = value
      }
      for (i, value) in values.enumerated() { w.string(2 + i, value) }
      method = "Identify"
      (decode, render) = (ProtoMessage.decoder(subcenter__v1__profile__unpack), Printer.profile)
    case "profile", "preferences", "history", "forget", "unsubscribe-all", "resubscribe":
      w.string(1, o[0])
      w.message(2, try ProtoWriter.person(o[1]))
      (decode, render) = (
        ProtoMessage.decoder(subcenter__v1__preferences__unpack), Printer.preferences
      )
      switch command.name {
      case "profile":
        method = "GetProfile"
        (decode, render) = (ProtoMessage.decoder(subcenter__v1__profile__unpack), Printer.profile)
      case "preferences": method = "GetPreferences"
      case "history":
        method = "GetHistory"
        w.int(3, Int64(try flags.int("page-size", in: Int(Int32.min)...Int(Int32.max)) ?? 0))
        w.string(4, flags.string("page-token") ?? "")
        decode = ProtoMessage.decoder(subcenter__v1__history_response__unpack)
        render = Printer.history
      case "forget":
        method = "ForgetPerson"
        let wait = try flags.bool("wait")
        w.bool(3, try flags.bool("also-suppress"))
        w.bool(4, wait)
        if wait && flags.string("timeout-ms") == nil { timeout = 120_000 }
        decode = ProtoMessage.decoder(subcenter__v1__forget_response__unpack)
        render = Printer.forget
      case "unsubscribe-all":
        method = "UnsubscribeAll"
        w.string(3, flags.string("source") ?? "subcenterctl")
      default:
        method = "Resubscribe"
        w.string(3, flags.string("source") ?? "subcenterctl")
      }
    case "subscribe", "unsubscribe", "check", "override":
      w.string(1, o[0])
      w.message(2, try ProtoWriter.person(o[1]))
      w.string(3, o[2])
      if o.count > 3 { w.string(4, o[3]) }
      switch command.name {
      case "check":
        method = "CheckDelivery"
        w.bool(5, try flags.bool("record-send"))
        (decode, render) = (
          ProtoMessage.decoder(subcenter__v1__delivery_decision__unpack), Printer.decision
        )
      case "override":
        method = "OverrideForImportantMessage"
        w.string(5, o[4])
        w.string(6, o[5])
        (decode, render) = (
          ProtoMessage.decoder(subcenter__v1__delivery_decision__unpack), Printer.decision
        )
      default:
        method = command.name == "subscribe" ? "Subscribe" : "Unsubscribe"
        w.string(5, flags.string("source") ?? "subcenterctl")
        w.string(6, flags.string("notice-version") ?? "")
        (decode, render) = (
          ProtoMessage.decoder(subcenter__v1__preferences__unpack), Printer.preferences
        )
      }
    case "check-batch":
      w.string(1, o[0])
      w.string(2, o[1])
      w.string(3, o[2])
      for p in o[3...] { w.message(4, try ProtoWriter.person(p)) }
      w.bool(5, try flags.bool("record-send"))
      method = "CheckDeliveryBatch"
      decode = ProtoMessage.decoder(subcenter__v1__delivery_batch_response__unpack)
      render = { Printer.batch($0, persons: Array(o[3...])) }
    case "suppress", "unsuppress":
      w.string(1, o[0])
      for i in o[1...] { w.message(2, try ProtoWriter.suppressionIdentifier(i)) }
      w.string(3, flags.string("reason") ?? "")
      method = command.name == "suppress" ? "SuppressIdentifiers" : "UnsuppressIdentifiers"
      decode = ProtoMessage.decoder(subcenter__v1__suppress_response__unpack)
      render = { Printer.suppress($0, removed: command.name == "unsuppress") }
    case "workspace get", "workspace set":
      if command.name == "workspace get" {
        w.string(1, o[0])
        method = "GetWorkspace"
      } else {
        w = try WorkspaceJSON.request(workspace: o[0], file: o[1])
        method = "ConfigureWorkspace"
      }
      decode = ProtoMessage.decoder(subcenter__v1__workspace_config__unpack)
      render = Printer.workspace
    case "watch":
      w.string(1, o[0])
      w.uint(2, try flags.uint64("after-seq") ?? 0)
      w.bool(3, try flags.bool("from-oldest"))
      let decodeEvent = ProtoMessage.decoder(subcenter__v1__change_event__unpack)
      // A feed has no deadline unless one is asked for.
      return try stream(
        connect(flags), rpc + "WatchChanges", request: w.bytes, metadata: metadata(flags),
        timeout: flags.int("timeout-ms", in: 1...86_400_000),
        count: flags.int("count", in: 1...Int.max)
      ) { bytes in
        guard let event = decodeEvent(bytes) else {
          writeStderrLine("subcenterctl: an event did not decode as a ChangeEvent")
          return
        }
        writeStdoutLine(json ? event.json : Printer.event(event))
      }
    default:
      preconditionFailure("command '\(command.name)' has no request")
    }
    let client = try connect(flags)
    let r = try client.unary(
      rpc + method, request: w.bytes, metadata: metadata(flags), timeoutMillis: timeout)
    guard let message = decode(r.message) else {
      throw RPCStatus(.internal, "the \(method) response does not decode")
    }
    let text = json ? message.json : render(message)
    writeStdoutLine(text.hasSuffix("\n") ? String(text.dropLast()) : text)
    return 0
  }

  /// The call's `authorization` header; a token with anything but visible ASCII (say a
  /// CR from a token file saved with CRLF) is a usage error, not a reset stream.
  static func metadata(_ flags: Flags) throws -> Metadata {
    var md = Metadata()
    if let token = flags.string("token") ?? Flags.processEnvironment()["SUBCENTER_TOKEN"] {
      guard !token.isEmpty, token.utf8.allSatisfy({ (0x21...0x7E).contains($0) }) else {
        throw UsageError(
          "the token must be visible ASCII characters only (no spaces, control characters "
            + "or line ends)")
      }
      md.add("authorization", "Bearer \(token)")
    }
    return md
  }

  /// Prints each message of a server stream as it arrives (stdout is unbuffered), until
  /// the server ends it, the deadline passes, or `count` messages were printed.
  static func stream(
    _ client: GRPCClient, _ path: String, request: [UInt8], metadata: Metadata, timeout: Int?,
    count: Int?, _ show: ([UInt8]) -> Void
  ) throws -> Int32 {
    var seen = 0
    do {
      try client.serverStreaming(
        path, request: request, metadata: metadata, timeoutMillis: timeout
      ) { message in
        show(message)
        seen += 1
        return seen < count ?? .max
      }
    } catch {
      // Cancelled by us after `count` messages is the normal end.
      guard error.code == .cancelled, seen == count else { throw error }
    }
    return 0
  }
}
