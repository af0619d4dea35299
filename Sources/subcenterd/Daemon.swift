// subcenterd: parse flags, start the gRPC server, wait for SIGTERM/SIGINT, shut down
// gracefully.

import GRPCTransport
import Glibc
import SubcenterServer

enum Daemon {
  static func run() -> Int32 {
    TerminationSignals.block()
    let args = Array(CommandLine.arguments.dropFirst())
    let options: ServerOptions
    let flags: Flags
    do {
      flags = try Flags(
        arguments: args, environment: Flags.processEnvironment(), specs: ServerOptions.flagSpecs)
      if try flags.bool("help") {
        print(flags.usage(program: "subcenterd"), terminator: "")
        return 0
      }
      options = try ServerOptions(flags: flags)
    } catch {
      writeStderrLine("subcenterd: \(error)")
      writeStderrLine("subcenterd: see subcenterd --help")
      return 2
    }
    if mkdir(options.dataDirectory, 0o700) != 0 && errno != EEXIST {
      writeStderrLine("subcenterd: cannot create data directory \(options.dataDirectory) (--data)")
      return 1
    }
    let server = GRPCServer(configuration: options.transport, services: [])
    do { try server.start() } catch {
      writeStderrLine("subcenterd: cannot listen on \(options.transport.listen) (--listen): \(error)")
      return 1
    }
    writeStderrLine(
      "subcenterd: listening on \(options.transport.listen.host):\(server.port) "
        + "(\(options.transport.loops) loops, TLS, gRPC)")
    let sig = TerminationSignals.wait()
    writeStderrLine("subcenterd: signal \(sig): stopping; finishing calls in flight")
    server.shutdown()
    server.wait()
    writeStderrLine("subcenterd: stopped")
    return 0
  }
}
