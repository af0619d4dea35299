// subcenterd: parse flags, start the gRPC server, wait for SIGTERM/SIGINT, shut down
// gracefully.

import GRPCTransport
import Glibc
import SubcenterServer
import SubcenterStore
import Synchronization

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
    // Every file a flag names is read before anything is written: a bad tokens file leaves
    // no data directory and no new secret.key behind (the TLS files are read above).
    let tokens: TokenStore
    do { tokens = try loadTokens(options) } catch {
      writeStderrLine("subcenterd: \(error)")
      return 2
    }
    // A taken address stops the start before the data directory is touched.
    for (address, flag) in [
      (options.transport.listen, "--listen"), (options.adminListen, "--admin-listen"),
    ] {
      do { try address.checkFree() } catch {
        writeStderrLine("subcenterd: cannot listen on \(address) (\(flag)): \(error)")
        return 1
      }
    }
    if mkdir(options.dataDirectory, 0o700) != 0 && errno != EEXIST {
      let e = errno
      writeStderrLine(
        "subcenterd: cannot create data directory \(options.dataDirectory) "
          + "(\(options.dataOrigin)): \(String(cString: strerror(e)))"
          + (e == ENOSPC || e == EDQUOT
            ? ". The disk is full: free some space and start again." : ""))
      return 1
    }
    var st = stat()
    if stat(options.dataDirectory, &st) == 0, st.st_mode & S_IFMT != S_IFDIR {
      writeStderrLine(
        "subcenterd: \(options.dataOrigin): \(options.dataDirectory) is not a directory")
      return 2
    }
    warnIfOpen(options.dataDirectory, mode: 0o077, "it holds personal data: chmod 700 it")
    warnIfTLSKeyOpen(flags)
    let dataLock: DataDirectoryLock
    do { dataLock = try DataDirectoryLock(directory: options.dataDirectory) } catch {
      writeStderrLine("subcenterd: \(error.message) (\(options.dataOrigin))")
      return 1
    }
    defer { withExtendedLifetime(dataLock) {} }
    let service: SubscriptionService
    let store: SubscriptionStore
    let durable: DurableStore
    let compaction: Compaction
    do {
      let (secret, created) = try ServerSecret.loadOrCreate(
        dataDirectory: options.dataDirectory, origin: options.dataOrigin)
      if created {
        writeStderrLine(
          "subcenterd: new data directory \(options.dataDirectory): created secret.key "
            + "(back it up with the data; it keys suppressions and receipts)")
      }
      warnIfOpen(
        ServerSecret.path(dataDirectory: options.dataDirectory), mode: 0o077,
        "it keys suppressions and receipts: chmod 600")
      let log: @Sendable (String) -> Void = { writeStderrLine("subcenterd: \($0)") }
      let opened: (DurableStore, DurableStore.RecoveryReport)
      do {
        opened = try DurableStore.open(
          directory: options.dataDirectory, clock: SystemClock(), secret: secret,
          fsync: options.fsync, truncateDamaged: options.recoverTruncate,
          changeRetentionSeconds: options.changeRetentionSeconds,
          feedOptions: feedOptions(options),
          preallocateLogBytes: WriteAheadLog.Options.serverPreallocateBytes, log: log)
      } catch {
        writeStderrLine("subcenterd: cannot recover \(options.dataDirectory): \(error)")
        writeStderrLine(
          "subcenterd: nothing was changed on disk. "
            + startUpAdvice(error, truncating: options.recoverTruncate))
        return 1
      }
      durable = opened.0
      let r = opened.1
      for w in r.warnings { writeStderrLine("subcenterd: warning: \(w)") }
      writeStderrLine(
        "subcenterd: recovered \(r.snapshot ?? "no snapshot") (\(count(r.persons, "person"))) + "
          + "\(count(r.recordsReplayed, "log record")); next seq "
          + (r.skippedThrough.map {
            "\($0 + 1) (seqs \(r.nextSeq)-\($0) skipped, so none given out before is reused)"
          } ?? "\(r.nextSeq)"))
      writeStderrLine(
        "subcenterd: data \(options.dataDirectory) (fsync \(options.fsync)); "
          + "\(count(tokens.count, "token")); client certificates "
          + (flags.string("client-ca") == nil ? "not required" : "required"))
      store = durable.store
      compaction = Compaction(
        durable: durable, snapshotIntervalSeconds: options.snapshotIntervalSeconds,
        erasureDeadlineSeconds: options.erasureDeadlineSeconds, log: log)
      service = SubscriptionService(
        store: store, tokens: tokens, secret: secret,
        erasureDeadlineSeconds: options.erasureDeadlineSeconds, erasure: compaction,
        changeFeed: durable.changeFeed)
    } catch let error as StorageError {
      // The server secret could not be written (a full disk, say): not a bad setting.
      writeStderrLine("subcenterd: cannot start on \(options.dataDirectory): \(error)")
      writeStderrLine("subcenterd: " + startUpAdvice(error, truncating: false))
      return 1
    } catch {
      writeStderrLine("subcenterd: \(error)")
      return 2
    }
    compaction.start()
    compaction.finishInterruptedErasure()
    // Every removal (ForgetPerson, a suppression that forgets, the anonymous TTL) is
    // erased from disk within the deadline.
    store.whenPersonsRemoved { _ = compaction.scheduleErasure() }
    durable.startMaintenance(erasureDeadlineSeconds: options.erasureDeadlineSeconds)
    let sweeper = AnonymousProfileSweeper(
      store: store, ttlSeconds: options.anonymousTTLSeconds)
    sweeper.start()
    let server = GRPCServer(configuration: options.transport, services: [service])
    do {
      try server.start()
      // Durable writes are applied and answered on the first event loop (one thread
      // less to wake per batch); its calls' answers then go out without a hand-off.
      store.applyDurableRecords { task in server.submit(toLoop: 0, task) }
      // A long run of durable records (a batch of many calls) sends its answers every 32
      // records, so clients get them while the loop applies the rest.
      store.flushAnswers(every: 32) { server.flushLoopOutput() }
      // Records reach the log writer once per event-loop pass (batches of whole passes),
      // not once per call.
      durable.wal.deferReadiness { task in server.atEndOfLoopPass(task) }
    } catch {
      writeStderrLine(
        "subcenterd: cannot listen on \(options.transport.listen) (--listen): \(error)")
      return 1
    }
    let ready = ReadyFlag()
    let admin = AdminHTTPServer(
      handler: AdminEndpoints.handler(
        server: server, storage: durable, erasure: compaction, isReady: { ready.value }))
    do { try admin.start(options.adminListen) } catch {
      writeStderrLine(
        "subcenterd: cannot listen on \(options.adminListen) (--admin-listen): \(error)")
      return 1
    }
    ready.value = true
    writeStderrLine("subcenterd: admin HTTP on \(options.adminListen.host):\(admin.port)")
    writeStderrLine(
      "subcenterd: listening on \(options.transport.listen.host):\(server.port) "
        + "(\(count(options.transport.loops, "loop")), TLS, gRPC)")
    let sig = TerminationSignals.wait {
      reloadTokens(options, into: service)
      reloadTLS(flags, into: server)
    }
    writeStderrLine("subcenterd: signal \(sig): stopping; finishing calls in flight")
    ready.value = false
    // Watch streams never end by themselves: end them (UNAVAILABLE) so shutdown need not
    // wait for them, and before the GOAWAY, as the health service ends its Watch streams
    // (some HTTP/2 clients drop frames that follow a GOAWAY).
    durable.changeFeed.close()
    server.shutdown()
    server.wait()
    sweeper.stop()
    compaction.stop()
    durable.stopMaintenance()
    do {
      let written = durable.snapshotStatus.written
      let seq = try durable.snapshot()
      writeStderrLine(
        durable.snapshotStatus.written > written
          ? "subcenterd: final snapshot at seq \(seq)"
          : "subcenterd: no final snapshot needed: nothing changed since the one at seq \(seq)")
    } catch {
      writeStderrLine(
        "subcenterd: final snapshot failed (the log still has every change): \(error)")
    }
    // The admin port stays until the end: `/healthz` answers while the process runs and
    // `/readyz` 503 while it stops (the final snapshot of a large state takes seconds).
    admin.stop()
    durable.close()
    writeStderrLine("subcenterd: stopped")
    return 0
  }
}

/// The change feed's options: the defaults with `--max-watchers` and `--watch-stall-limit`.
func feedOptions(_ options: ServerOptions) -> ChangeFeed.Options {
  var feed = ChangeFeed.Options()
  feed.maxWatchers = options.maxWatchers
  feed.stallLimitNanos = UInt64(options.watchStallLimitSeconds) * 1_000_000_000
  return feed
}

/// What an operator does about a failed recovery: only damage calls for a backup or
/// `--recover-truncate` (unless it was given: then only a backup); a full disk, too few
/// descriptors or an I/O error do not.
func startUpAdvice(_ error: StorageError, truncating: Bool) -> String {
  switch error.kind {
  case .damaged where truncating:
    return "--recover-truncate cannot start from this data: restore the data directory "
      + "from a backup."
  case .damaged where !error.truncateHelps:
    return "Restore the data directory from a backup (--recover-truncate cannot help: "
      + "records are missing, not damaged)."
  case .damaged:
    return "Restore the data directory from a backup, or start with --recover-truncate (the "
      + "message above says what it keeps and what it loses)."
  case .noSpace:
    return "The disk is full: free some space and start again (the data is intact)."
  case .wrongSecret:
    return "Put back the secret.key backed up with this data directory (`subcenterctl "
      + "check-data DIR` names the snapshots it does not match); the data is intact."
  case .io where error.isOutOfDescriptors:
    return "Out of file descriptors: raise the limit (ulimit -n) and start again."
  default:
    return "Check the disk and its permissions, then start again; "
      + "`subcenterctl check-data DIR` tells whether the files are intact."
  }
}

/// Warns when `path`'s permission bits include any of `mode` (others may read or write
/// what they should not), saying why it matters.
/// Reads the tokens file (at start, and again at SIGHUP) and warns about what is wrong
/// with it but allowed: others may write it, or it holds no token (health still answers).
func loadTokens(_ options: ServerOptions) throws(FlagError) -> TokenStore {
  let tokens = try TokenStore(file: options.tokensFile, origin: options.tokensOrigin)
  warnIfOpen(
    options.tokensFile, mode: 0o022, "others may add a token (an admin one) to it: chmod go-w")
  if tokens.count == 0 {
    writeStderrLine(
      "subcenterd: warning: \(options.tokensOrigin): \(options.tokensFile): no tokens: every "
        + "call will be UNAUTHENTICATED")
  }
  return tokens
}

func warnIfTLSKeyOpen(_ flags: Flags) {
  guard let key = flags.string("tls-key") else { return }
  warnIfOpen(key, mode: 0o004, "anyone on the host can read the TLS private key: chmod o-r")
}

/// SIGHUP: reads the tokens file again and puts it in force, or keeps the tokens in force
/// when the file is refused.
func reloadTokens(_ options: ServerOptions, into service: SubscriptionService) {
  let tokens: TokenStore
  do { tokens = try loadTokens(options) } catch {
    writeStderrLine("subcenterd: SIGHUP: \(error); the tokens in force stay (nothing changed)")
    return
  }
  service.replaceTokens(tokens)
  writeStderrLine(
    "subcenterd: SIGHUP: reloaded \(options.tokensOrigin) \(options.tokensFile): "
      + "\(count(tokens.count, "token")) in force for every call from now on; watch streams "
      + "whose token lost its access end")
}

/// SIGHUP: reads the TLS certificate, key and client CA again for the connections accepted
/// from now on (those open keep theirs), or keeps them when the files are refused.
func reloadTLS(_ flags: Flags, into server: GRPCServer) {
  let tls: TLSContext
  do { tls = try ServerConfiguration.tlsContext(flags: flags) } catch {
    writeStderrLine(
      "subcenterd: SIGHUP: \(error); the TLS certificate in force stays (nothing changed)")
    return
  }
  warnIfTLSKeyOpen(flags)
  server.replaceTLS(tls)
  writeStderrLine(
    "subcenterd: SIGHUP: reloaded the TLS certificate and key (\(flags.origin("tls-cert")) "
      + "\(flags.string("tls-cert") ?? "certs/dev/server.pem")) for connections from now on")
}

func warnIfOpen(_ path: String, mode: mode_t, _ why: String) {
  var st = stat()
  guard stat(path, &st) == 0, st.st_mode & mode != 0 else { return }
  writeStderrLine(
    "subcenterd: warning: \(path) has mode 0\(String(st.st_mode & 0o777, radix: 8)); \(why)")
}

/// `n` and the noun, plural unless `n` is 1: "1 loop", "2 loops".
func count(_ n: some BinaryInteger, _ noun: String) -> String {
  n == 1 ? "1 \(noun)" : "\(n) \(noun)s"
}

/// Whether /readyz answers 200.
final class ReadyFlag: Sendable {
  private let state = Mutex(false)
  var value: Bool {
    get { state.withLock { $0 } }
    set { state.withLock { $0 = newValue } }
  }
}
