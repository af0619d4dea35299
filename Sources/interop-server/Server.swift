// Starts the interop server: the transport flags, TestService and Health.

import GRPCTransport
import Glibc

enum InteropServer {
  static func run() -> Int32 {
    TerminationSignals.block()
    let flags: Flags
    let config: ServerConfiguration
    do {
      let args = Array(CommandLine.arguments.dropFirst())
      flags = try Flags(
        arguments: args, environment: Flags.processEnvironment(),
        specs: ServerConfiguration.flagSpecs)
      config = try ServerConfiguration(flags: flags, defaultLoops: UsableCores.count)
    } catch {
      writeStderrLine("interop-server: \(error)")
      return 2
    }
    let server = GRPCServer(configuration: config, services: [TestService()])
    do { try server.start() } catch {
      writeStderrLine("interop-server: cannot listen on \(config.listen): \(error)")
      return 1
    }
    writeStderrLine(
      "interop-server: listening on \(config.listen.host):\(server.port) (\(config.loops) loops)")
    _ = TerminationSignals.wait()
    writeStderrLine("interop-server: shutting down")
    server.shutdown()
    server.wait()
    writeStderrLine("interop-server: stopped")
    return 0
  }
}
