// Waiting for a completion-style store call in a test.

import Glibc
import SubcenterCore
import SubcenterStore
import Synchronization

/// Runs a completion-style store call and waits for its answer (10 s at most).
public func awaitStoreCall<T: Sendable>(_ body: (@escaping Completion<T>) -> Void) -> Result<
  T, CoreError
> {
  let box = Mutex<Result<T, CoreError>?>(nil)
  body { r in box.withLock { $0 = r } }
  for _ in 0..<200_000 {
    if let r = box.withLock({ $0 }) { return r }
    usleep(50)
  }
  fatalError("a store call did not complete within 10 s")
}
