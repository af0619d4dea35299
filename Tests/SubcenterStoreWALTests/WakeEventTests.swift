// WakeEvent, the latched wake-up of the log writer and the change feed: a signal sent
// before the wait is kept, a deadline ends a wait, and no wake-up is lost when two threads
// hand a turn back and forth (signal is sent after the mutex is released).

import Synchronization
import Testing

@testable import SubcenterStore

@Suite struct WakeEventTests {
  @Test func aSignalBeforeTheWaitIsKeptOnce() {
    let event = WakeEvent()
    event.signal()
    event.signal()
    let start = monotonicNanos()
    event.wait(until: nil)  // would hang if the signal were lost
    #expect(monotonicNanos() - start < 1_000_000_000)
    // Two signals latch as one: the next wait runs to its deadline.
    let deadline = monotonicNanos() + 20_000_000
    event.wait(until: deadline)
    #expect(monotonicNanos() >= deadline)
  }

  @Test func twoThreadsTakeTurnsWithoutLosingAWakeUp() {
    let events = [WakeEvent(), WakeEvent()]  // to thread 0, to thread 1
    let rounds = 20_000
    let turn = Atomic<Int>(0)  // whose move: even, thread 0; odd, thread 1
    runThreads(2) { me in
      for i in 0..<rounds {
        let move = 2 * i + me
        while turn.load(ordering: .acquiring) != move {
          // Bounded: a lost wake-up fails the test instead of hanging it.
          let deadline = monotonicNanos() + 5_000_000_000
          events[me].wait(until: deadline)
          if monotonicNanos() >= deadline { return }
        }
        turn.store(move + 1, ordering: .releasing)
        events[1 - me].signal()
      }
    }
    #expect(turn.load(ordering: .acquiring) == 2 * rounds)
  }
}
