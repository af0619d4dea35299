// Time comes from an injected clock so that every rule with a time in it (message-limit
// windows, anonymous-profile TTL, history order) is testable to the millisecond.

import Synchronization

/// Wall-clock time in Unix milliseconds. The store takes one; tests pass a `ManualClock`.
public protocol WallClock: Sendable {
  func nowMillis() -> Int64
}

/// A clock that moves only when told to (tests, replay).
public final class ManualClock: WallClock {
  private let now: Atomic<Int64>

  public init(_ start: Int64 = 1_700_000_000_000) { now = Atomic(start) }

  public func nowMillis() -> Int64 { now.load(ordering: .relaxed) }

  /// Moves the clock forward (or back, with a negative amount).
  public func advance(by milliseconds: Int64) {
    now.wrappingAdd(milliseconds, ordering: .relaxed)
  }

  public func set(_ millis: Int64) { now.store(millis, ordering: .relaxed) }
}
