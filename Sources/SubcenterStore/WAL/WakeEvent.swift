// A latched wake-up for a thread that sleeps until work arrives or a deadline passes
// (pthread mutex + condition variable on the monotonic clock; Synchronization's `Mutex`
// has no condition variable).

import Glibc

/// One thread waits, any thread signals; a signal sent before the wait is not lost.
/// `@unchecked Sendable`: the pthread objects are made for sharing between threads, are
/// allocated once and never move, and `signaled` is only touched with `mutex` held.
final class WakeEvent: @unchecked Sendable {
  private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
  private let cond = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
  private var signaled = false

  init() {
    pthread_mutex_init(mutex, nil)
    var attr = pthread_condattr_t()
    pthread_condattr_init(&attr)
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC)
    pthread_cond_init(cond, &attr)
    pthread_condattr_destroy(&attr)
  }

  deinit {
    pthread_cond_destroy(cond)
    pthread_mutex_destroy(mutex)
    cond.deallocate()
    mutex.deallocate()
  }

  /// Signals after unlocking: the woken thread (often on the signaler's core, where it
  /// runs at once) would otherwise block on the mutex still held and switch back, a
  /// futex wait and wake and two context switches more per wake-up.
  func signal() {
    pthread_mutex_lock(mutex)
    signaled = true
    pthread_mutex_unlock(mutex)
    pthread_cond_signal(cond)
  }

  /// Returns once signaled (consuming the signal) or, with a deadline, once the monotonic
  /// clock reaches it (nanoseconds, `monotonicNanos()`).
  func wait(until deadline: UInt64?) {
    pthread_mutex_lock(mutex)
    while !signaled {
      if let deadline {
        var ts = timespec(
          tv_sec: Int(deadline / 1_000_000_000), tv_nsec: Int(deadline % 1_000_000_000))
        if pthread_cond_timedwait(cond, mutex, &ts) == ETIMEDOUT { break }
      } else {
        pthread_cond_wait(cond, mutex)
      }
    }
    signaled = false
    pthread_mutex_unlock(mutex)
  }
}

/// The monotonic clock, in nanoseconds.
func monotonicNanos() -> UInt64 {
  var ts = timespec()
  clock_gettime(CLOCK_MONOTONIC, &ts)
  return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}
