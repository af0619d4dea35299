// Deletes anonymous profiles unchanged for `--anonymous-ttl` (SPEC §1), checking at start
// (profiles whose TTL ran out while the server was down go at once) and then once a minute
// (or every TTL, if shorter) on a background queue. (Their erasure from disk is
// scheduled like every removal's: `SubscriptionStore.whenPersonsRemoved`.)

import Dispatch
import SubcenterStore

// DispatchSourceTimer is thread-safe (its methods may be called from any thread).
public final class AnonymousProfileSweeper: @unchecked Sendable {
  private let store: SubscriptionStore
  private let ttlMillis: Int64
  private let timer: DispatchSourceTimer

  public init(store: SubscriptionStore, ttlSeconds: Int) {
    self.store = store
    ttlMillis = Int64(ttlSeconds) * 1000
    timer = DispatchSource.makeTimerSource(queue: DispatchQueue(label: "subcenter.sweeper"))
  }

  public func start() {
    let period = DispatchTimeInterval.milliseconds(Int(min(ttlMillis, 60_000)))
    timer.schedule(deadline: .now(), repeating: period)
    timer.setEventHandler { [store, ttlMillis] in
      store.expireAnonymousProfiles(ttlMillis: ttlMillis) { _ in }
    }
    timer.resume()
  }

  public func stop() { timer.cancel() }
}
