// Background work on the data directory: a snapshot every --snapshot-interval seconds
// when something changed, and erasure compactions (SPEC §4) soon after a person is
// forgotten, well within --erasure-deadline (`ErasureSchedule`). Everything runs on one
// serial queue, never on an event loop.

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
    var schedule: ErasureSchedule
    var waiters: [(seq: UInt64, completion: @Sendable (Result<UInt64, any Error>) -> Void)] = []
  }
  private let state: Mutex<State>

  /// `erasureDeadlineSeconds` bounds how long an erasure compaction may be put off.
  public init(
    durable: DurableStore, snapshotIntervalSeconds: Int, erasureDeadlineSeconds: Int,
    log: @escaping @Sendable (String) -> Void
  ) {
    self.durable = durable
    intervalSeconds = snapshotIntervalSeconds
    self.log = log
    state = Mutex(
      State(
        schedule: ErasureSchedule(deadlineNanos: UInt64(erasureDeadlineSeconds) * 1_000_000_000)))
  }

  /// For monitoring: erasure compactions that failed (each retried a second later), how
  /// long the oldest erasure not yet on disk has waited (0: none waits; an age past
  /// --erasure-deadline means a forgotten person's data is on disk longer than promised),
  /// and how long the last compaction took.
  public var erasureStatus: (failed: Int, oldestPendingSeconds: Double, lastSeconds: Double) {
    let now = DispatchTime.now().uptimeNanoseconds
    return state.withLock { s in
      let since = [s.pendingSince, s.compactingSince].compactMap { $0 }.min()
      return (
        s.failed, since.map { Double(now &- $0) / 1e9 } ?? 0,
        Double(s.schedule.lastDuration) / 1e9
      )
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
    let now = DispatchTime.now().uptimeNanoseconds
    let delay = state.withLock { s -> UInt64? in
      if s.erasurePending { return nil }
      s.erasurePending = true
      s.pendingSince = now
      return s.schedule.start(pendingSince: now) &- now
    }
    if let delay { compact(after: delay) }
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

  /// Runs `compact()` on the queue in `nanoseconds`.
  private func compact(after nanoseconds: UInt64) {
    queue.asyncAfter(deadline: .now() + .nanoseconds(Int(min(nanoseconds, UInt64(Int.max))))) {
      self.compact()
    }
  }

  /// Runs an erasure compaction when one is due (`ErasureSchedule`); `final` (at stop)
  /// runs at once and once, without a retry.
  private func compact(final: Bool = false) {
    enum Step { case run, later(UInt64), nothing }
    let step = state.withLock { s -> Step in
      guard final || !s.stopped else { return .nothing }
      if !final, s.compactingSince == nil {
        // Not a retry: an erasure asked for since the last compaction, if it is due.
        guard s.erasurePending, let since = s.pendingSince else { return .nothing }
        let now = DispatchTime.now().uptimeNanoseconds
        let at = s.schedule.start(pendingSince: since)
        if at > now { return .later(at - now) }
      }
      s.compactingSince = s.compactingSince ?? s.pendingSince
      s.erasurePending = false
      s.pendingSince = nil
      return .run
    }
    switch step {
    case .nothing: return
    case .later(let wait):
      compact(after: wait)
      return
    case .run: break
    }
    let result: Result<UInt64, any Error>
    let started = DispatchTime.now().uptimeNanoseconds
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
        s.schedule.ended(at: DispatchTime.now().uptimeNanoseconds, startedAt: started)
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

/// When an erasure compaction starts. Each writes a whole snapshot (seconds of a core, and
/// the whole state to disk, for a million persons), so a steady trickle of forgets (a
/// deletion job) must not run them back to back: after a compaction that took D, the next
/// starts no sooner than 3·D after it ended (compactions take at most about a quarter of
/// the time), and no sooner than 100 ms after the first forget it serves (a burst shares
/// one); but never later than a quarter of the erasure deadline after that forget, so the
/// deadline holds while a compaction takes under about three quarters of it.
struct ErasureSchedule {
  /// The pause that lets a burst of forgets share one compaction.
  static let pauseNanos: UInt64 = 100_000_000
  let deadlineNanos: UInt64
  /// When the last compaction ended and how long it took (monotonic ns; 0: none yet).
  private(set) var lastEnd: UInt64 = 0
  private(set) var lastDuration: UInt64 = 0

  /// When the compaction serving an erasure first asked for at `pendingSince` starts.
  func start(pendingSince: UInt64) -> UInt64 {
    let soonest = pendingSince + Self.pauseNanos
    let spaced = lastEnd + 3 * lastDuration
    let latest = pendingSince + max(Self.pauseNanos, deadlineNanos / 4)
    return min(max(soonest, spaced), latest)
  }

  mutating func ended(at end: UInt64, startedAt start: UInt64) {
    lastEnd = end
    lastDuration = end &- start
  }
}
