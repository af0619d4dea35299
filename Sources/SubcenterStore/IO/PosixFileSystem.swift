// `FileSystem` on the real POSIX calls. Every call turns errno into a thrown
// `FileSystemError` and retries EINTR (`posixCall`, and the loops of write and read);
// nothing else in the storage layer sees errno.

import Glibc
import Synchronization

/// The real file system. Thread-safe: calls on different handles may run concurrently;
/// one handle is used by one thread at a time (its owner's).
public final class PosixFileSystem: FileSystem {
  /// The path each open descriptor was opened with, for error messages.
  private let paths = Mutex<[Int32: String]>([:])

  public init() {}

  private func path(_ f: FileHandle) -> String {
    paths.withLock { $0[f.rawValue] } ?? "\(f)"
  }

  public func open(_ path: String, _ options: OpenOptions, permissions: UInt32)
    throws(FileSystemError) -> FileHandle
  {
    var flags = O_CLOEXEC | (options.contains(.write) ? O_RDWR : O_RDONLY)
    if options.contains(.create) { flags |= O_CREAT }
    if options.contains(.exclusive) { flags |= O_EXCL }
    if options.contains(.truncate) { flags |= O_TRUNC }
    if options.contains(.append) { flags |= O_APPEND }
    let fd = try posixCall("open", path) { Glibc.open(path, flags, mode_t(permissions)) }
    paths.withLock { $0[fd] = path }
    return FileHandle(rawValue: fd)
  }

  public func close(_ file: FileHandle) throws(FileSystemError) {
    let p = paths.withLock { $0.removeValue(forKey: file.rawValue) } ?? "\(file)"
    // Never retried: on Linux the descriptor is released even when close fails (EINTR
    // included), and a retry could close a descriptor another thread just opened.
    if Glibc.close(file.rawValue) == -1 && errno != EINTR {
      throw FileSystemError("close", path: p, errno: errno)
    }
  }

  public func write(_ file: FileHandle, _ bytes: [UInt8]) throws(FileSystemError) {
    let failure: FileSystemError? = bytes.withUnsafeBytes { buf in
      var done = 0
      while done < buf.count {
        let n = Glibc.write(file.rawValue, buf.baseAddress! + done, buf.count - done)
        if n > 0 {
          done += n
        } else if n == 0 {
          // Never for a regular file; refuse to spin on it.
          return FileSystemError("write", path: path(file), errno: EIO)
        } else if errno != EINTR {
          return FileSystemError("write", path: path(file), errno: errno)
        }
      }
      return nil
    }
    if let failure { throw failure }
  }

  public func write(_ file: FileHandle, _ bytes: [UInt8], at offset: Int64)
    throws(FileSystemError)
  {
    let failure: FileSystemError? = bytes.withUnsafeBytes { buf in
      var done = 0
      while done < buf.count {
        let n = pwrite(
          file.rawValue, buf.baseAddress! + done, buf.count - done, off_t(offset) + done)
        if n > 0 {
          done += n
        } else if n == 0 {
          // Never for a regular file; refuse to spin on it.
          return FileSystemError("write", path: path(file), errno: EIO)
        } else if errno != EINTR {
          return FileSystemError("pwrite", path: path(file), errno: errno)
        }
      }
      return nil
    }
    if let failure { throw failure }
  }

  public func read(_ file: FileHandle, count: Int, at offset: Int64) throws(FileSystemError)
    -> [UInt8]
  {
    var out = [UInt8](repeating: 0, count: count)
    var done = 0
    let failure: FileSystemError? = out.withUnsafeMutableBytes { buf in
      while done < buf.count {
        let n = pread(
          file.rawValue, buf.baseAddress! + done, buf.count - done, off_t(offset) + done)
        if n > 0 {
          done += n
        } else if n == 0 {
          break
        } else if errno != EINTR {
          return FileSystemError("pread", path: path(file), errno: errno)
        }
      }
      return nil
    }
    if let failure { throw failure }
    if done < count { out.removeLast(count - done) }
    return out
  }

  public func sync(_ file: FileHandle) throws(FileSystemError) {
    try posixCall("fsync", path(file)) { fsync(file.rawValue) }
  }

  public func syncData(_ file: FileHandle) throws(FileSystemError) {
    try posixCall("fdatasync", path(file)) { fdatasync(file.rawValue) }
  }

  public func size(_ file: FileHandle) throws(FileSystemError) -> Int64 {
    var st = stat()
    try posixCall("fstat", path(file)) { fstat(file.rawValue, &st) }
    return Int64(st.st_size)
  }

  public func truncate(_ file: FileHandle, to size: Int64) throws(FileSystemError) {
    try posixCall("ftruncate", path(file)) { ftruncate(file.rawValue, off_t(size)) }
  }

  public func rename(_ from: String, to: String) throws(FileSystemError) {
    try posixCall("rename", from) { Glibc.rename(from, to) }
  }

  public func unlink(_ path: String) throws(FileSystemError) {
    try posixCall("unlink", path) { Glibc.unlink(path) }
  }

  public func list(_ directory: String) throws(FileSystemError) -> [String] {
    guard let dir = opendir(directory) else {
      throw FileSystemError("opendir", path: directory, errno: errno)
    }
    defer { closedir(dir) }
    var names: [String] = []
    while true {
      errno = 0
      guard let entry = readdir(dir) else {
        if errno != 0 { throw FileSystemError("readdir", path: directory, errno: errno) }
        break
      }
      let name = withUnsafePointer(to: &entry.pointee.d_name) {
        String(cString: UnsafeRawPointer($0).assumingMemoryBound(to: CChar.self))
      }
      if name != "." && name != ".." { names.append(name) }
    }
    return names
  }

  public func syncDirectory(_ path: String) throws(FileSystemError) {
    let fd = try posixCall("open", path) { Glibc.open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC) }
    defer { Glibc.close(fd) }
    try posixCall("fsync", path) { fsync(fd) }
  }

  public func createDirectory(_ path: String, permissions: UInt32) throws(FileSystemError) {
    if mkdir(path, mode_t(permissions)) == 0 { return }
    let e = errno
    var st = stat()
    if e == EEXIST && stat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFDIR { return }
    throw FileSystemError("mkdir", path: path, errno: e)
  }
}

/// Runs `body` until it does not fail with EINTR; throws on -1.
@inline(__always)
@discardableResult
private func posixCall<T: FixedWidthInteger>(
  _ operation: String, _ path: @autoclosure () -> String, _ body: () -> T
) throws(FileSystemError) -> T {
  while true {
    let r = body()
    if r != -1 { return r }
    let e = errno
    if e == EINTR { continue }
    throw FileSystemError(operation, path: path(), errno: e)
  }
}
