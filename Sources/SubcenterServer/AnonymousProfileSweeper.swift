// Deletes anonymous profiles unchanged for `--anonymous-ttl` (SPEC §1), checking once a
// minute (or every TTL, if shorter) on a background queue, and has the deleted profiles
// erased from disk like any other removal (SPEC §3, §4).

import Dispatch
import SubcenterStore

// DispatchSourceTimer is thread-safe (its methods may be called from any thread).
public final class AnonymousProfileSweeper: @unchecked Sendable {
  private let store: SubscriptionStore
  private let erasure: (any ErasureScheduler)?
  private let ttlMillis: Int64
  private let timer: DispatchSourceTimer

  public init(store: SubscriptionStore, ttlSeconds: Int, erasure: (any ErasureScheduler)?) {
    self.store = store
    self.erasure = erasure
    ttlMillis = Int64(ttlSeconds) * 1000
    timer = DispatchSource.makeTimerSource(queue: DispatchQueue(label: "subcenter.sweeper"))
  }

  public func start() {
    let period = DispatchTimeInterval.milliseconds(Int(min(ttlMillis, 60_000)))
    timer.schedule(deadline: .now() + period, repeating: period)
    timer.setEventHandler { [store, ttlMillis, erasure] in
      // Answered once the removals are applied, so the compaction covers them.
      store.expireAnonymousProfiles(ttlMillis: ttlMillis) { r in
        if case .success(let removed) = r, removed > 0 { _ = erasure?.scheduleErasure() }
      }
    }
    timer.resume()
  }

  public func stop() { timer.cancel() }
}
