// The file operations the write-ahead log and snapshots need, behind one protocol so tests
// can run them on a file system that loses unsynced data, fails the Nth write or fsync, or
// runs out of space (SubcenterTestSupport's `FaultyFileSystem`). `PosixFileSystem` is the
// real one. Calls block: they run on the log writer's or the snapshot thread, never on an
// event loop.

import Glibc

/// An open file of a `FileSystem`; meaningful only to the file system that opened it.
public struct FileHandle: Sendable, Hashable, CustomStringConvertible {
  public let rawValue: Int32

  public init(rawValue: Int32) { self.rawValue = rawValue }

  public var description: String { "file #\(rawValue)" }
}

/// How `FileSystem.open` opens a file (no option: read only, the file must exist).
public struct OpenOptions: OptionSet, Sendable, Hashable {
  public let rawValue: UInt8

  public init(rawValue: UInt8) { self.rawValue = rawValue }

  /// Open for writing as well as reading.
  public static let write = OpenOptions(rawValue: 1)
  /// Create the file if it does not exist (a new name needs `syncDirectory` to be durable).
  public static let create = OpenOptions(rawValue: 2)
  /// With `create`: fail with EEXIST if the file exists.
  public static let exclusive = OpenOptions(rawValue: 4)
  /// Cut the file to 0 bytes.
  public static let truncate = OpenOptions(rawValue: 8)
  /// Every `write` goes to the end of the file.
  public static let append = OpenOptions(rawValue: 16)
}

/// A failed file-system call: which call, on which path, and the errno it set.
public struct FileSystemError: Error, Sendable, Equatable, CustomStringConvertible {
  /// The call: `open`, `write`, `fdatasync`, `rename`…
  public let operation: String
  /// The file (or directory) it was about.
  public let path: String
  public let errno: Int32

  public init(_ operation: String, path: String, errno: Int32) {
    self.operation = operation
    self.path = path
    self.errno = errno
  }

  /// The disk (or the quota) is full: ENOSPC or EDQUOT.
  public var isNoSpace: Bool { errno == ENOSPC || errno == EDQUOT }

  public var description: String {
    "\(operation) \(path): \(String(cString: strerror(errno))) (errno \(errno))"
  }
}

/// Blocking file operations, as the storage layer uses them. Paths are plain strings
/// (directory + "/" + name). Every call either does all it says or throws; a throwing
/// `write` may still have written part of its bytes.
public protocol FileSystem: Sendable {
  /// Opens (or creates, with `.create`, with mode `permissions`) a file.
  func open(_ path: String, _ options: OpenOptions, permissions: UInt32) throws(FileSystemError)
    -> FileHandle
  /// Closes a file. The handle is invalid afterwards, even if this throws.
  func close(_ file: FileHandle) throws(FileSystemError)
  /// Writes all of `bytes` at the file's position (its end with `.append`) and moves the
  /// position past them.
  func write(_ file: FileHandle, _ bytes: [UInt8]) throws(FileSystemError)
  /// Writes all of `bytes` at `offset`, without moving the position.
  func write(_ file: FileHandle, _ bytes: [UInt8], at offset: Int64) throws(FileSystemError)
  /// Reads up to `count` bytes at `offset`: fewer only at the end of the file.
  func read(_ file: FileHandle, count: Int, at offset: Int64) throws(FileSystemError) -> [UInt8]
  /// Makes the file's data and metadata durable (`fsync`).
  func sync(_ file: FileHandle) throws(FileSystemError)
  /// Makes the file's data durable, and its size (`fdatasync`).
  func syncData(_ file: FileHandle) throws(FileSystemError)
  /// The file's size in bytes.
  func size(_ file: FileHandle) throws(FileSystemError) -> Int64
  /// Cuts (or extends with zeros) the file to `size` bytes.
  func truncate(_ file: FileHandle, to size: Int64) throws(FileSystemError)
  /// Renames a file, replacing `to` atomically if it exists (durable after
  /// `syncDirectory`).
  func rename(_ from: String, to: String) throws(FileSystemError)
  /// Removes a file (durable after `syncDirectory`).
  func unlink(_ path: String) throws(FileSystemError)
  /// The names in a directory (without `.` and `..`), in no particular order.
  func list(_ directory: String) throws(FileSystemError) -> [String]
  /// Makes the directory's entries durable: files created, renamed or removed in it.
  func syncDirectory(_ path: String) throws(FileSystemError)
  /// Creates a directory (mode `permissions`); succeeds if it exists.
  func createDirectory(_ path: String, permissions: UInt32) throws(FileSystemError)
}

extension FileSystem {
  /// Opens a file with mode 0600 when it is created (the data holds personal data).
  public func open(_ path: String, _ options: OpenOptions = []) throws(FileSystemError)
    -> FileHandle
  {
    try open(path, options, permissions: 0o600)
  }

  /// Creates a directory with mode 0700; succeeds if it exists.
  public func createDirectory(_ path: String) throws(FileSystemError) {
    try createDirectory(path, permissions: 0o700)
  }

  /// The whole content of a file.
  public func readFile(_ path: String) throws(FileSystemError) -> [UInt8] {
    let f = try open(path)
    defer { try? close(f) }
    let n = try size(f)
    return try read(f, count: Int(n), at: 0)
  }

  /// Writes `bytes` as `name` in `directory` so that a crash leaves either the old file
  /// (or none) or the whole new one: as `<name>.tmp`, synced, renamed over `name`, the
  /// directory synced. On failure the temporary file is removed.
  public func replaceFile(_ name: String, in directory: String, with bytes: [UInt8])
    throws(FileSystemError)
  {
    let path = joinPath(directory, name)
    let temporary = path + temporaryFileSuffix
    do throws(FileSystemError) {
      let f = try open(temporary, [.write, .create, .truncate])
      do throws(FileSystemError) {
        try write(f, bytes, at: 0)
        try sync(f)
        try close(f)
      } catch {
        try? close(f)
        throw error
      }
      try rename(temporary, to: path)
      try syncDirectory(directory)
    } catch {
      try? unlink(temporary)
      throw error
    }
  }

  /// Deletes the files `names` of `directory`, then syncs the directory so the deletions
  /// are durable (nothing to do for none).
  public func removeFiles(_ names: [String], in directory: String) throws(FileSystemError) {
    guard !names.isEmpty else { return }
    for name in names { try unlink(joinPath(directory, name)) }
    try syncDirectory(directory)
  }

  /// Whether `name` exists in `directory`.
  public func exists(_ name: String, in directory: String) throws(FileSystemError) -> Bool {
    try list(directory).contains(name)
  }
}

/// The suffix of a file being written before it is renamed into place (snapshots,
/// segment rewrites).
let temporaryFileSuffix = ".tmp"

/// Deletes the temporary files in `directory` whose name without the suffix `isOurs`
/// (files a writer never finished), syncing the directory if it removed any; returns
/// their names. `what` names them in the error.
func removeTemporaryFiles(
  directory: String, fileSystem fs: any FileSystem, what: String, isOurs: (String) -> Bool
) throws(StorageError) -> [String] {
  var removed: [String] = []
  do {
    for n in try fs.list(directory)
    where n.hasSuffix(temporaryFileSuffix)
      && isOurs(String(n.dropLast(temporaryFileSuffix.count)))
    {
      try fs.unlink(joinPath(directory, n))
      removed.append(n)
    }
    if !removed.isEmpty { try fs.syncDirectory(directory) }
  } catch {
    throw StorageError(error, "removing \(what)")
  }
  return removed
}

/// `directory/name`.
@inlinable
func joinPath(_ directory: String, _ name: String) -> String {
  directory.hasSuffix("/") ? directory + name : directory + "/" + name
}
