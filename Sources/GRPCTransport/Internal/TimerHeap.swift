// Timers of one event loop: a binary min-heap by deadline. Cancelled timers stay in the
// heap until they come due (or until a rebuild when most of the heap is cancelled).

/// A scheduled action; `cancel()` on the loop thread stops it from running.
final class LoopTimer {
  let deadline: UInt64  // monotonic nanoseconds
  private(set) var action: (() -> Void)?

  init(deadline: UInt64, action: @escaping () -> Void) {
    self.deadline = deadline
    self.action = action
  }

  func cancel() { action = nil }
  var isCancelled: Bool { action == nil }

  /// Runs the action once.
  func fire() {
    let a = action
    action = nil
    a?()
  }
}

struct TimerHeap {
  private var heap: [LoopTimer] = []

  var isEmpty: Bool { heap.isEmpty }
  var count: Int { heap.count }

  /// The earliest deadline of a live timer, dropping cancelled ones from the top.
  mutating func nextDeadline() -> UInt64? {
    while let top = heap.first, top.isCancelled { _ = popFirst() }
    return heap.first?.deadline
  }

  mutating func insert(_ t: LoopTimer) {
    heap.append(t)
    var i = heap.count - 1
    while i > 0 {
      let parent = (i - 1) / 2
      if heap[parent].deadline <= heap[i].deadline { break }
      heap.swapAt(parent, i)
      i = parent
    }
    if heap.count > 4096, heap.count % 4096 == 0 { compactIfMostlyCancelled() }
  }

  /// Removes and returns every timer due at `now`.
  mutating func popDue(now: UInt64) -> [LoopTimer] {
    var due: [LoopTimer] = []
    while let top = heap.first, top.deadline <= now {
      let t = popFirst()
      if !t.isCancelled { due.append(t) }
    }
    return due
  }

  private mutating func popFirst() -> LoopTimer {
    let first = heap[0]
    let last = heap.removeLast()
    if !heap.isEmpty {
      heap[0] = last
      var i = 0
      while true {
        let l = 2 * i + 1
        let r = l + 1
        var m = i
        if l < heap.count, heap[l].deadline < heap[m].deadline { m = l }
        if r < heap.count, heap[r].deadline < heap[m].deadline { m = r }
        if m == i { break }
        heap.swapAt(i, m)
        i = m
      }
    }
    return first
  }

  private mutating func compactIfMostlyCancelled() {
    let live = heap.filter { !$0.isCancelled }
    guard live.count * 2 < heap.count else { return }
    heap = []
    for t in live { insert(t) }
  }
}
