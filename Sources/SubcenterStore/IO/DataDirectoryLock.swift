// The data directory's lock: `flock(LOCK_EX)` on the directory itself, held for as long as
// a server has it open. A second server on the same directory would append to the same log
// segments and delete the other's snapshots; it is refused at start instead. The kernel
// drops the lock when the holder exits in any way (kill -9 included), and no file is
// written for it, so nothing is left behind to block a restart or to change on disk when
// a start is refused.

import Glibc

/// An exclusive hold on a data directory, released when this object goes away or the
/// process ends.
public final class DataDirectoryLock: Sendable {
  private let fd: Int32

  /// Takes the lock, or throws `unavailable` when another process holds it.
  public init(directory: String) throws(StorageError) {
    let fd = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
    guard fd >= 0 else {
      let e = errno
      throw StorageError(
        .io, "cannot open the data directory \(directory): \(String(cString: strerror(e)))",
        errno: e)
    }
    guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
      let e = errno
      close(fd)
      if e == EWOULDBLOCK {
        throw StorageError(
          .unavailable,
          "the data directory \(directory) is in use by another running subcenterd: "
            + "stop that one first, or give this one another data directory")
      }
      throw StorageError(
        .io, "cannot lock the data directory \(directory): \(String(cString: strerror(e)))",
        errno: e)
    }
    self.fd = fd
  }

  deinit { close(fd) }

  /// Whether a running process holds the lock of `directory` (without taking it).
  public static func isHeld(directory: String) -> Bool {
    let fd = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
    guard fd >= 0 else { return false }
    defer { close(fd) }  // drops the shared lock taken here, if it was
    return flock(fd, LOCK_SH | LOCK_NB) != 0 && errno == EWOULDBLOCK
  }
}
