// A commit log for tests that behaves like the write-ahead log's writer without a disk:
// commands wait in a queue until the test (or a background writer) makes them durable —
// in order, giving each the next sequence number — or fails them.

import Dispatch
import Glibc
import SubcenterCore
import SubcenterStore
import Synchronization

final class DeferredCommitLog: CommitLog {
  typealias Done = @Sendable (Result<UInt64, CoreError>) -> Void

  private struct State {
    var queue: [(Command, Done)] = []
    var committed: [Command] = []
    var sequence: UInt64 = 0
    /// While a failure is being reported, appends are refused (as the WAL does).
    var refusing = false
    var writer = false
    var failNextBatch = false
  }

  private let state = Mutex(State())
  /// One completer at a time, so completions come in log order.
  private let completer = Mutex(())
  private let writerDone = DispatchSemaphore(value: 0)
  /// As the write-ahead log with `--fsync always`: the store applies completed records
  /// on its own queue (or its executor), not on the completing thread.
  let appliesElsewhere: Bool

  init(appliesElsewhere: Bool = false) { self.appliesElsewhere = appliesElsewhere }

  func append(_ command: Command, completion: @escaping Done) {
    let refused = state.withLock { s -> Bool in
      if s.refusing { return true }
      s.queue.append((command, completion))
      return false
    }
    if refused { completion(.failure(.unavailable("the log is failing a batch"))) }
  }

  /// Commands waiting to be made durable.
  var queued: Int { state.withLock { $0.queue.count } }
  var queuedCommands: [Command] { state.withLock { $0.queue.map(\.0) } }
  /// The durable commands, in log order (the command with seq n is at n - 1).
  var commands: [Command] { state.withLock { $0.committed } }
  var lastSequence: UInt64 { state.withLock { $0.sequence } }

  /// Makes the first `count` queued commands (all by default) durable and completes them,
  /// in order, on this thread. Returns how many.
  @discardableResult
  func complete(_ count: Int = .max) -> Int {
    completer.withLock { _ in
      let batch = state.withLock { s -> [(Done, UInt64)] in
        let n = min(count, s.queue.count)
        var out: [(Done, UInt64)] = []
        for (command, done) in s.queue.prefix(n) {
          s.sequence += 1
          s.committed.append(command)
          out.append((done, s.sequence))
        }
        s.queue.removeFirst(n)
        return out
      }
      for (done, seq) in batch { done(.success(seq)) }
      return batch.count
    }
  }

  /// Fails every queued command — the batch being written and everything queued behind
  /// it, as the write-ahead log does — refusing appends meanwhile. Returns how many.
  @discardableResult
  func fail(_ reason: String = "disk full") -> Int {
    completer.withLock { _ in
      let batch = state.withLock { s -> [Done] in
        s.refusing = true
        defer { s.queue = [] }
        return s.queue.map(\.1)
      }
      for done in batch { done(.failure(.unavailable(reason))) }
      state.withLock { $0.refusing = false }
      return batch.count
    }
  }

  /// Starts a background writer that completes everything queued about every
  /// `intervalMicros` (a group commit), until `stopWriter()`.
  func startWriter(intervalMicros: UInt32 = 100) {
    state.withLock { $0.writer = true }
    DispatchQueue.global().async { [self] in
      while state.withLock({ $0.writer }) {
        usleep(intervalMicros)
        let failing = state.withLock { s -> Bool in
          defer { s.failNextBatch = false }
          return s.failNextBatch
        }
        if failing { fail() } else { complete() }
      }
      writerDone.signal()
    }
  }

  /// Makes the background writer's next batch fail.
  func failNextBatch() { state.withLock { $0.failNextBatch = true } }

  /// Stops the background writer, then completes whatever is still queued.
  func stopWriter() {
    state.withLock { $0.writer = false }
    writerDone.wait()
    while complete() > 0 {}
  }
}

/// Polls `condition` every millisecond for up to `seconds`; returns its last value.
func waitUntil(seconds: Double = 10, _ condition: () -> Bool) -> Bool {
  let deadline = DispatchTime.now() + seconds
  while !condition() {
    if DispatchTime.now() > deadline { return false }
    usleep(1000)
  }
  return true
}
