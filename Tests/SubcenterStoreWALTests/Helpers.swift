// Helpers shared by the suites: scratch directories on the real file system, and
// threads of their own.

import Glibc
import SubcenterStore

/// A fresh directory under /tmp for one test, removed by `remove()`.
struct TemporaryDirectory {
  let path: String

  init() {
    var template = Array("/tmp/subcenter-wal-test-XXXXXX".utf8CString)
    let p = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
    precondition(p != nil, "mkdtemp failed")
    path = String(cString: p!)
  }

  func remove() {
    let fs = PosixFileSystem()
    for name in (try? fs.list(path)) ?? [] { _ = Glibc.unlink(path + "/" + name) }
    _ = Glibc.rmdir(path)
  }
}

/// Runs `body(i)` on `count` threads of its own (not a pool: Dispatch's concurrentPerform
/// runs no more at once than there are cores) and waits for all of them.
func runThreads(_ count: Int, _ body: @escaping @Sendable (Int) -> Void) {
  final class Job: Sendable {
    let body: @Sendable (Int) -> Void
    let index: Int
    init(_ body: @escaping @Sendable (Int) -> Void, _ index: Int) {
      self.body = body
      self.index = index
    }
  }
  var threads: [pthread_t] = []
  for i in 0..<count {
    var tid = pthread_t()
    let box = Unmanaged.passRetained(Job(body, i)).toOpaque()
    let rc = pthread_create(
      &tid, nil,
      { arg in
        let job = Unmanaged<Job>.fromOpaque(arg!).takeRetainedValue()
        job.body(job.index)
        return nil
      }, box)
    precondition(rc == 0)
    threads.append(tid)
  }
  for t in threads { pthread_join(t, nil) }
}
