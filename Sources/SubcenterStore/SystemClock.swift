// The real wall clock, for the daemon (tests use `ManualClock` from SubcenterCore).

import SubcenterCore

#if canImport(Glibc)
  import Glibc
#elseif canImport(Darwin)
  import Darwin
#endif

/// `CLOCK_REALTIME` in Unix milliseconds.
public struct SystemClock: WallClock {
  public init() {}

  public func nowMillis() -> Int64 {
    var ts = timespec()
    clock_gettime(CLOCK_REALTIME, &ts)
    return Int64(ts.tv_sec) * 1000 + Int64(ts.tv_nsec) / 1_000_000
  }
}
