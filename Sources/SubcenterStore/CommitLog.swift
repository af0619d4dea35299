// Where every change goes before it is applied, and how the write-ahead log (issue 4)
// plugs in.
//
// Today a write runs entirely inside the critical section that validates it:
//   lock → validate against the state → build one `Command` → `log.append(command)` →
//   apply the command to the state → build the answer → unlock → completion(answer).
// `InMemoryCommitLog` is "immediately durable", so the completion runs before the store
// call returns. A log that throws (`unavailable`) leaves nothing applied.
//
// With the WAL, the same steps split at `append`:
//   1. Under the same locks: validate against the committed state plus the commands
//      still in flight (identifier claims reserved in `IdentityState`, sends reserved per
//      person for message limits, persons being forgotten), then enqueue the command to
//      the single writer thread — still inside the lock, so the log order of commands
//      touching the same shard or workspace identity is their validation order.
//   2. The writer writes a batch, fsyncs once, and hands back the durable commands in log
//      order; for each, the store takes the command's locks, applies it with the very
//      `apply…` function replay uses, drops its reservations and calls the completion
//      from that thread. Readers therefore see a change only once it is durable.
//   3. A failed write completes its commands with `unavailable`, drops their
//      reservations, and nothing is applied.
// The public API does not change: write calls already answer through a completion.

import SubcenterCore
import Synchronization

/// Makes commands durable, in order.
public protocol CommitLog: Sendable {
  /// Called with every lock the command's validation read held, so records of commands
  /// that touch the same state are in the order they were validated and applied.
  /// Returns the record's sequence number once it is durable; throws `unavailable` when
  /// it cannot be made durable (the store then applies nothing).
  func append(_ command: Command) throws(CoreError) -> UInt64
}

/// A log that keeps nothing on disk: every command is "durable" at once. It can keep the
/// commands in memory, for tests that replay them.
public final class InMemoryCommitLog: CommitLog {
  private let state = Mutex<(sequence: UInt64, commands: [Command])>((0, []))
  private let keepsCommands: Bool

  public init(keepsCommands: Bool = false) { self.keepsCommands = keepsCommands }

  public func append(_ command: Command) throws(CoreError) -> UInt64 {
    state.withLock { s in
      s.sequence += 1
      if keepsCommands { s.commands.append(command) }
      return s.sequence
    }
  }

  /// The commands appended so far, in order (empty unless `keepsCommands`).
  public var commands: [Command] { state.withLock { $0.commands } }

  /// The sequence number of the last command.
  public var lastSequence: UInt64 { state.withLock { $0.sequence } }
}
