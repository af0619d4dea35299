// Where every change goes before it is applied.
//
// A write runs in two halves (Store+Commit.swift holds the rule and all of its
// machinery):
//   1. Under the locks its validation needs: validate against the committed state plus
//      the commands still in flight (the reservations of State/Reservations.swift:
//      identifier claims and releases, suppressions and removals in `IdentityState`,
//      sends and writes per person in `Shard`, configurations in `Registry`), build one
//      `Command`, `append` it to the log — still inside the locks, so the log order of
//      commands touching the same state is their validation order — and register its
//      reservations.
//   2. When the log reports the record durable (in log order, from its writer thread),
//      the store takes the command's locks, applies it with the very `apply` that
//      replay uses, drops its reservations, builds the answer and completes the call.
//      Readers therefore see a change only once it is durable. When the log reports a
//      failure, the reservations are dropped, nothing is applied and the call gets
//      `unavailable`.
// The public write API answers through completions, so it is the same whether the log
// completes at once (`InMemoryCommitLog`) or later (the write-ahead log).

import SubcenterCore
import Synchronization

/// Makes commands durable, in order.
///
/// Contract (the store's validation relies on it):
/// - `append` is called with every lock the command's validation held, so records of
///   commands that touch the same state are in the order they were validated.
/// - `completion` is called exactly once per append: with the record's last sequence
///   number once it is durable (a record takes `ChangeEvents.seqCount` of them: one per
///   person it removes, at least one), or with an error (`unavailable`) when it cannot
///   be; then the record is not in the log and consumes no sequence number. Sequence
///   numbers grow with log order.
/// - Completions come in log order, one at a time. A completion may come inline, from
///   inside `append` (a log that completes at once, or refuses at once); otherwise it
///   must come from a thread that holds none of the store's locks (the writer thread).
/// - Failures are suffix-closed: when a record fails, every record appended after it
///   before its failure was reported fails too, and so does every `append` made while
///   failures are being reported. (A command validated against a failing one is thus
///   never made durable without it.)
public protocol CommitLog: Sendable {
  func append(
    _ command: Command, completion: @escaping @Sendable (Result<UInt64, CoreError>) -> Void)

  /// True for a log whose completions come from a writer thread that should go straight
  /// back to writing: the store then applies completed records on its own queue, so
  /// applying and answering one batch overlaps the next write and fsync. False (the
  /// default): the completing thread applies them before its completion returns.
  var appliesElsewhere: Bool { get }
}

extension CommitLog {
  public var appliesElsewhere: Bool { false }
}

/// A log that keeps nothing on disk: every command is "durable" at once and completes
/// inline, before `append` returns. It can keep the commands in memory, for tests that
/// replay them.
public final class InMemoryCommitLog: CommitLog {
  private let state = Mutex<(sequence: UInt64, commands: [Command])>((0, []))
  private let keepsCommands: Bool

  public init(keepsCommands: Bool = false) { self.keepsCommands = keepsCommands }

  public func append(
    _ command: Command, completion: @escaping @Sendable (Result<UInt64, CoreError>) -> Void
  ) {
    // Completing inside the lock keeps completions in sequence order across threads.
    state.withLock { s in
      s.sequence += ChangeEvents.seqCount(command)
      if keepsCommands { s.commands.append(command) }
      completion(.success(s.sequence))
    }
  }

  /// The commands appended so far, in order (empty unless `keepsCommands`).
  public var commands: [Command] { state.withLock { $0.commands } }

  /// The sequence number of the last command.
  public var lastSequence: UInt64 { state.withLock { $0.sequence } }
}
