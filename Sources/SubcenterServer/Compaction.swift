// Background work on the data directory: a snapshot every --snapshot-interval seconds
// when something changed, and erasure compactions (SPEC §4) soon after a person is
// forgotten, well within --erasure-deadline. Everything runs on one serial queue, never
// on an event loop.

import Dispatch
import SubcenterStore
import Synchronization

public final class Compaction: ErasureScheduler, @unchecked Sendable {
  // `timer` is set once in start(); the rest is in `state` or immutable.
  private let durable: DurableStore
  private let queue = DispatchQueue(label: "subcenter.compaction")
  private let log: @Sendable (String) -> Void
  private let intervalSeconds: Int
  private var timer: DispatchSourceTimer?

  private struct State {
    var erasurePending = false
    /// When `erasurePending` was set (monotonic ns).
    var pendingSince: UInt64?
    /// When the erasure the running (or failed, to be retried) compaction serves was
    /// first asked for.
    var compactingSince: UInt64?
    var failed = 0
    /// Set by stop(): a compaction scheduled for later no longer runs.
    var stopped = false
    var erasedThrough: UInt64 = 0
    var waiters: [(seq: UInt64, completion: @Sendable (Result<UInt64, any Error>) -> Void)] = []
  }
  private let state = Mutex(State())

  public init(
    durable: DurableStore, snapshotIntervalSeconds: Int, log: @escaping @Sendable (String) -> Void
  ) {
    self.durable = durable
    intervalSeconds = snapshotIntervalSeconds
    self.log = log
  }

  /// For monitoring: erasure compactions that failed (each retried a second later), and how
  /// long the oldest erasure not yet on disk has waited (0: none waits). An age past
  /// --erasure-deadline means a forgotten person's data is on disk longer than promised.
  public var erasureStatus: (failed: Int, oldestPendingSeconds: Double) {
    let now = DispatchTime.now().uptimeNanoseconds
    return state.withLock { s in
      let since = [s.pendingSince, s.compactingSince].compactMap { $0 }.min()
      return (s.failed, since.map { Double(now &- $0) / 1e9 } ?? 0)
    }
  }

  /// Starts the periodic snapshots.
  public func start() {
    let t = DispatchSource.makeTimerSource(queue: queue)
    t.schedule(
      deadline: .now() + .seconds(intervalSeconds), repeating: .seconds(intervalSeconds))
    t.setEventHandler { [durable, log] in
      do { try durable.snapshot() } catch { log("periodic snapshot failed: \(error)") }
    }
    t.resume()
    timer = t
  }

  /// Stops the timer and waits for queued work. An erasure still waiting (its short pause,
  /// or a retry) runs now: a stopped server must not keep a forgotten person on disk until
  /// its next start (SIGTERM right after a forget left them in the log).
  public func stop() {
    timer?.cancel()
    queue.sync {
      let pending = state.withLock { s in
        defer { s.stopped = true }
        return s.erasurePending || s.compactingSince != nil
      }
      if pending { compact(final: true) }
    }
  }

  /// Finishes, in the background, an erasure a crash interrupted: a forget acknowledged
  /// just before the crash must still leave the disk within the erasure deadline
  /// (`DurableStore.finishInterruptedErasure`). Call once, after recovery.
  public func finishInterruptedErasure() {
    queue.async { [self] in
      // After stop() the store may be closed: the next start checks again.
      guard !state.withLock({ $0.stopped }) else { return }
      do {
        if let seq = try durable.finishInterruptedErasure() {
          log("erasure: finished the erasure a restart interrupted (snapshot at seq \(seq))")
        }
      } catch {
        log("erasure check after recovery failed: \(error); retrying in 1 s")
        queue.asyncAfter(deadline: .now() + .seconds(1)) { self.finishInterruptedErasure() }
      }
    }
  }

  public func scheduleErasure() -> UInt64 {
    let seq = durable.store.lastAppliedSeq
    let start = state.withLock { s -> Bool in
      if s.erasurePending { return false }
      s.erasurePending = true
      s.pendingSince = DispatchTime.now().uptimeNanoseconds
      return true
    }
    // A short pause lets a burst of forgets share one compaction.
    if start { queue.asyncAfter(deadline: .now() + .milliseconds(100)) { self.compact() } }
    return seq
  }

  public func whenErased(
    through seq: UInt64, _ completion: @escaping @Sendable (Result<UInt64, any Error>) -> Void
  ) {
    let done = state.withLock { s -> UInt64? in
      if s.erasedThrough >= seq { return s.erasedThrough }
      s.waiters.append((seq, completion))
      return nil
    }
    if let done {
      completion(.success(done))
    } else if durable.wal.status.failure != nil {
      failWaiters()
    }
  }

  /// Runs an erasure compaction; `final` (at stop) runs once, without a retry.
  private func compact(final: Bool = false) {
    let run = state.withLock { s in
      guard final || !s.stopped else { return false }
      s.compactingSince = s.compactingSince ?? s.pendingSince
      s.erasurePending = false
      s.pendingSince = nil
      return true
    }
    guard run else { return }
    let result: Result<UInt64, any Error>
    do { result = .success(try durable.compact()) } catch {
      result = .failure(error)
      if durable.wal.status.failure != nil {
        // No compaction can succeed before a restart (which finishes the erasure): the
        // calls waiting for it are told now, as every write is.
        log("erasure compaction failed: \(error); the log has failed: erasure resumes at restart")
        failWaiters()
      } else if final {
        log("erasure compaction at shutdown failed: \(error); it finishes at the next start")
      } else {
        log("erasure compaction failed: \(error); retrying in 1 s")
        queue.asyncAfter(deadline: .now() + .seconds(1)) { self.compact() }
      }
    }
    let ready = state.withLock {
      s -> [(Result<UInt64, any Error>, @Sendable (Result<UInt64, any Error>) -> Void)] in
      switch result {
      case .success(let seq):
        s.erasedThrough = max(s.erasedThrough, seq)
        s.compactingSince = nil
      case .failure: s.failed += 1
      }
      let (now, later) = (
        s.waiters.filter { $0.seq <= s.erasedThrough },
        s.waiters.filter { $0.seq > s.erasedThrough }
      )
      s.waiters = later
      return now.map { (.success(s.erasedThrough), $0.completion) }
    }
    for (r, c) in ready { c(r) }
  }

  /// Answers every waiting ForgetPerson: the log has failed for good.
  private func failWaiters() {
    let waiting = state.withLock { s in
      defer { s.waiters = [] }
      return s.waiters.map(\.completion)
    }
    let error = StorageError(
      .unavailable,
      "the write-ahead log has failed: the erasure finishes when subcenterd is "
        + "restarted (the forget itself is durable)")
    for c in waiting { c(.failure(error)) }
  }
}
