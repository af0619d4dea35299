// One event-loop thread: its own epoll, its own SO_REUSEPORT listener, the connections it
// accepted (for life), an eventfd through which other threads hand it work, and timers.

import CLinux
import Glibc
import Synchronization

/// An event loop. `execute` may be called from any thread; everything else runs on the
/// loop's own thread.
public final class EventLoop: @unchecked Sendable {
  // Mutable state below is touched only on the loop thread, except `tasks` (Mutex) and
  // `threadID` (written once before any task runs).
  let index: Int
  private let epfd: Int32
  private let wakeFD: Int32
  private let tasks = Mutex(TaskQueue())
  private let wakePending = Atomic<Bool>(false)
  private var threadID: UInt = 0
  private var timers = TimerHeap()
  private var connections: [ServerConnection?] = []
  private var dirty: [ServerConnection] = []
  /// Work for the end of this pass (`atEndOfPass`).
  private var endOfPass: [() -> Void] = []
  private var listenFD: Int32 = -1
  private var running = true
  private var draining = false
  unowned(unsafe) var server: GRPCServer!

  /// Shared buffers for socket reads and TLS plaintext (one loop, one call at a time).
  let readBuffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 256 * 1024, alignment: 16)
  let plainBuffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 64 * 1024, alignment: 16)
  /// Reused buffer for outgoing HTTP/2 frames before encryption.
  var outScratch: [UInt8] = []

  init(index: Int) throws(SystemError) {
    self.index = index
    epfd = try syscall("epoll_create1") { epoll_create1(Int32(EPOLL_CLOEXEC)) }
    wakeFD = try syscall("eventfd") { eventfd(0, Int32(EFD_NONBLOCK | EFD_CLOEXEC)) }
    try register(fd: wakeFD, events: EPOLLIN.rawValue)
  }

  deinit {
    close(epfd)
    close(wakeFD)
    readBuffer.deallocate()
    plainBuffer.deallocate()
  }

  /// True when called on this loop's thread.
  public var inLoop: Bool { CLinux_pthread_self() == threadID }

  /// Work handed to the loop by other threads.
  private struct TaskQueue {
    var tasks: [@Sendable () -> Void] = []
    /// The loop has stopped: nothing handed to it runs any more.
    var closed = false
  }

  /// Runs `task` on the loop thread, soon. Safe from any thread. A task handed to a loop
  /// that has stopped is dropped.
  public func execute(_ task: @escaping @Sendable () -> Void) { _ = submit(task) }

  /// `execute`, saying whether the task will run: false once the loop has stopped.
  public func submit(_ task: @escaping @Sendable () -> Void) -> Bool {
    let accepted = tasks.withLock { q in
      if q.closed { return false }
      q.tasks.append(task)
      return true
    }
    guard accepted else { return false }
    if !wakePending.exchange(true, ordering: .acquiringAndReleasing) {
      var one: UInt64 = 1
      _ = Glibc.write(wakeFD, &one, 8)
    }
    return true
  }

  /// Schedules `action` on the loop thread after `nanoseconds`. Loop thread only.
  func schedule(after nanoseconds: UInt64, _ action: @escaping () -> Void) -> LoopTimer {
    let t = LoopTimer(
      deadline: min(monotonicNanos(), .max - nanoseconds) + nanoseconds, action: action)
    timers.insert(t)
    return t
  }

  /// Runs `task` at the end of this pass of the loop, after the events it handles and the
  /// output they made are flushed, before the loop waits again; returns false (running
  /// nothing) when not called on this loop's thread. For work worth doing once per pass
  /// rather than once per call (waking the log writer).
  func atEndOfPass(_ task: @escaping () -> Void) -> Bool {
    guard inLoop else { return false }
    endOfPass.append(task)
    return true
  }

  /// Asks for `conn` to be flushed at the end of this loop iteration.
  func markDirty(_ conn: ServerConnection) {
    if !conn.isDirty {
      conn.isDirty = true
      dirty.append(conn)
    }
  }

  func setListener(_ fd: Int32) throws(SystemError) {
    listenFD = fd
    try register(fd: fd, events: EPOLLIN.rawValue)
  }

  private func register(fd: Int32, events: UInt32) throws(SystemError) {
    var ev = epoll_event()
    ev.events = events
    ev.data.fd = fd
    try syscall("epoll_ctl(ADD)") { epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) }
  }

  func setInterest(fd: Int32, writable: Bool) {
    var ev = epoll_event()
    ev.events = EPOLLIN.rawValue | (writable ? EPOLLOUT.rawValue : 0)
    ev.data.fd = fd
    _ = epoll_ctl(epfd, EPOLL_CTL_MOD, fd, &ev)
  }

  /// The loop body; returns when the loop has drained after shutdown.
  func run() {
    threadID = CLinux_pthread_self()
    let maxEvents = 256
    let events = UnsafeMutablePointer<epoll_event>.allocate(capacity: maxEvents)
    defer { events.deallocate() }
    while running {
      var timeout: Int32 = -1
      if let next = timers.nextDeadline() {
        let now = monotonicNanos()
        timeout = next <= now ? 0 : Int32(min((next - now + 999_999) / 1_000_000, 60_000))
      }
      let n = epoll_wait(epfd, events, Int32(maxEvents), timeout)
      if n < 0 && errno != EINTR {
        fatalError("epoll_wait: \(SystemError(call: "epoll_wait", errno: errno))")
      }
      for i in 0..<max(Int(n), 0) {
        let ev = events[i]
        let fd = ev.data.fd
        if fd == wakeFD {
          var v: UInt64 = 0
          _ = Glibc.read(wakeFD, &v, 8)
        } else if fd == listenFD {
          acceptAll()
        } else if Int(fd) < connections.count, let conn = connections[Int(fd)] {
          if ev.events & EPOLLOUT.rawValue != 0 { conn.socketWritable() }
          if ev.events & (EPOLLIN.rawValue | EPOLLHUP.rawValue | EPOLLERR.rawValue) != 0 {
            conn.socketReadable()
          }
        }
      }
      runTasks()
      let now = monotonicNanos()
      for t in timers.popDue(now: now) { t.fire() }
      flushDirty()
      runEndOfPass()
      if draining && liveConnections == 0 { running = false }
    }
    // What was handed over before the loop stopped still runs; later tasks are refused.
    tasks.withLock { $0.closed = true }
    runTasks()
    runEndOfPass()
    for case let c? in connections { c.close() }
  }

  private func runTasks() {
    wakePending.store(false, ordering: .releasing)
    let batch = tasks.withLock { q -> [@Sendable () -> Void] in
      let b = q.tasks
      q.tasks.removeAll(keepingCapacity: true)
      return b
    }
    for task in batch { task() }
  }

  private func runEndOfPass() {
    while !endOfPass.isEmpty {
      let batch = endOfPass
      endOfPass.removeAll(keepingCapacity: true)
      for task in batch { task() }
    }
  }

  private func flushDirty() {
    while !dirty.isEmpty {
      let batch = dirty
      dirty.removeAll(keepingCapacity: true)
      for c in batch {
        c.isDirty = false
        c.flush()
      }
    }
  }

  /// Sends the output of every connection that has some now, but of those busy with
  /// their own input or output (left for the end of the pass, as everyone's was). On the
  /// loop's thread (`GRPCServer.flushLoopOutput`).
  func flushOutputNow() {
    let batch = dirty
    dirty.removeAll(keepingCapacity: true)
    for c in batch {
      if c.isBusy {
        dirty.append(c)
        continue
      }
      c.isDirty = false
      c.flush()
    }
  }

  private var liveConnections = 0

  private func acceptAll() {
    while !draining {
      let fd: Int32?
      do { fd = try Socket.accept(listenFD) } catch {
        pauseAccepting(error)
        return
      }
      guard let fd else { return }
      guard server.admitConnection() else {
        close(fd)
        continue
      }
      do {
        try register(fd: fd, events: EPOLLIN.rawValue)
      } catch {
        close(fd)
        server.connectionClosed()
        continue
      }
      let conn = ServerConnection(fd: fd, loop: self, server: server)
      if conn.closed {
        // Its TLS session could not be made: closed (and logged) already.
        server.connectionClosed()
        continue
      }
      if Int(fd) >= connections.count {
        connections.append(contentsOf: repeatElement(nil, count: Int(fd) + 64 - connections.count))
      }
      connections[Int(fd)] = conn
      liveConnections += 1
    }
  }

  /// After a failed accept (out of file descriptors or memory) the listener, still
  /// readable, would wake the loop at once, again and again: stop watching it for a
  /// second (connections wait in the kernel's backlog), and say so once per pause.
  private func pauseAccepting(_ error: SystemError) {
    _ = epoll_ctl(epfd, EPOLL_CTL_DEL, listenFD, nil)
    server.log("accept failed: \(error); accepting again in 1 s")
    _ = schedule(after: 1_000_000_000) { [unowned self] in
      guard !self.draining, self.listenFD >= 0 else { return }
      try? self.register(fd: self.listenFD, events: EPOLLIN.rawValue)
    }
  }

  /// Called by a connection as it closes its socket.
  func connectionClosed(_ conn: ServerConnection) {
    if Int(conn.fd) < connections.count, connections[Int(conn.fd)] === conn {
      connections[Int(conn.fd)] = nil
      liveConnections -= 1
      server.connectionClosed()
    }
  }

  /// Stops accepting and drains every connection (GOAWAY, calls finish); after
  /// `gracePeriod` nanoseconds, closes whatever is left. Loop thread only.
  func beginShutdown(gracePeriod: UInt64) {
    guard !draining else { return }
    draining = true
    if listenFD >= 0 {
      _ = epoll_ctl(epfd, EPOLL_CTL_DEL, listenFD, nil)
      close(listenFD)
      listenFD = -1
    }
    for case let c? in connections { c.beginDrain() }
    _ = schedule(after: gracePeriod) { [unowned self] in
      for case let c? in self.connections { c.close() }
    }
  }
}
