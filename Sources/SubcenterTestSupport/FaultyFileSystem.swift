// An in-memory `FileSystem` that loses what a power cut would lose, and fails on demand.
//
// Each file keeps two versions: what readers see (the page cache) and what is durable,
// plus the writes and truncations made since its last sync. Each directory keeps the
// names that are durable plus the creations, renames and removals since its last sync.
// `crash()` throws away everything not durable — optionally keeping a random prefix of
// the unsynced changes, the last write possibly torn — and stops the file system until
// `restart()`, as a machine that lost power and boots again.
//
// Faults: the Nth write, sync or directory sync from now fails (EIO by default, or any
// errno); a failed sync drops the unsynced changes for good, like Linux after an fsync
// error (they stay visible to readers but never become durable); free space is a byte
// budget — a write that needs more writes what fits and fails with ENOSPC — and can be
// raised again.

import Glibc
import SubcenterStore
import Synchronization

/// A file system in memory with power cuts and injected faults. Thread-safe.
public final class FaultyFileSystem: FileSystem {
  /// A kind of call a fault can target.
  public enum Operation: Sendable, Hashable {
    /// `write` (either form).
    case write
    /// `sync` or `syncData` of a file.
    case sync
    case syncDirectory
    case rename
    case truncate
    /// `open` with `.create`.
    case create
  }

  private enum FileOp {
    case write(offset: Int, bytes: [UInt8])
    case truncate(Int)
  }

  private enum NameOp {
    case link(String, Int)
    case remove(String)
  }

  private struct Inode {
    var data: [UInt8] = []
    var durable: [UInt8] = []
    var pending: [FileOp] = []
  }

  private struct Handle {
    var path: String
    var inode: Int
    var position = 0
    var writable: Bool
    var append: Bool
  }

  private struct Fault {
    var operation: Operation
    var remaining: Int
    var errno: Int32
    var sticky: Bool
  }

  private struct State {
    var directories: Set<String> = []
    var inodes: [Int: Inode] = [:]
    var nextInode = 1
    var names: [String: Int] = [:]
    var durableNames: [String: Int] = [:]
    /// Name changes since each directory's last sync, in order.
    var pendingNames: [String: [NameOp]] = [:]
    var handles: [Int32: Handle] = [:]
    var nextHandle: Int32 = 3
    var down = false
    var faults: [Fault] = []
    var counts: [Operation: Int] = [:]
    var capacity: Int?
    var crashCountdown: Int?
    var crashSeed: UInt64?
    var crashes = 0
    var syncLatencyMicros: UInt32 = 0
    var largestRead = 0
    /// Bytes read from each path, by name within its directory.
    var bytesRead: [String: Int] = [:]
    var lists = 0

    var used: Int { inodes.values.reduce(0) { $0 + $1.data.count } }
  }

  private let state = Mutex(State())

  /// A file system holding the directory `/` (and any created later).
  public init() {
    state.withLock { _ = $0.directories.insert("/") }
  }

  // MARK: Control

  /// Makes the `nth` call of `operation` from now fail with `errno` (and every later one
  /// too if `sticky`).
  public func fail(_ operation: Operation, nth: Int = 1, errno: Int32 = EIO, sticky: Bool = false) {
    precondition(nth >= 1)
    state.withLock {
      $0.faults.append(Fault(operation: operation, remaining: nth, errno: errno, sticky: sticky))
    }
  }

  /// Removes every injected fault.
  public func clearFaults() { state.withLock { $0.faults = [] } }

  /// Lets files grow by `bytes` more in total (nil: unlimited). Writes past it fail with
  /// ENOSPC after writing what fits. Calling it again raises (or lowers) the budget.
  public func setFreeSpace(_ bytes: Int?) {
    state.withLock { s in s.capacity = bytes.map { s.used + $0 } }
  }

  /// Makes every file sync take this long (to see group commit at work), outside the lock.
  public func setSyncLatency(microseconds: UInt32) {
    state.withLock { $0.syncLatencyMicros = microseconds }
  }

  /// How many calls of `operation` were made so far.
  public func count(_ operation: Operation) -> Int { state.withLock { $0.counts[operation] ?? 0 } }

  /// How many times a directory was listed so far.
  public var listCount: Int { state.withLock { $0.lists } }

  /// Bytes read so far from files named `name` (in any directory).
  public func bytesRead(_ name: String) -> Int { state.withLock { $0.bytesRead[name] ?? 0 } }

  /// The most bytes one `read` returned since the last call (which starts a new count).
  public func takeLargestRead() -> Int {
    state.withLock { s in
      defer { s.largestRead = 0 }
      return s.largestRead
    }
  }

  /// Crashes (as `crash(seed:)`) when the `n`th changing call from now (write, truncate,
  /// sync, directory sync, rename, unlink, create) is made: that call fails with EIO and
  /// does nothing.
  public func crash(afterOperations n: Int, seed: UInt64? = nil) {
    state.withLock { s in
      s.crashCountdown = n
      s.crashSeed = seed
    }
  }

  /// How many crashes happened so far.
  public var crashes: Int { state.withLock { $0.crashes } }

  /// Whether the file system is down after a crash.
  public var isDown: Bool { state.withLock { $0.down } }

  /// Cuts the power: every change not made durable is lost — all of them, or with a
  /// `seed`, a random prefix of each file's and each directory's unsynced changes
  /// survives (the last write of a file possibly torn). Every open handle becomes invalid
  /// and every call fails with EIO until `restart()`.
  public func crash(seed: UInt64? = nil) {
    state.withLock { Self.crash(&$0, seed: seed) }
  }

  /// Boots again after a crash.
  public func restart() {
    state.withLock { s in
      s.down = false
      s.crashCountdown = nil
    }
  }

  /// What readers of `path` see now, nil if it does not exist.
  public func contents(_ path: String) -> [UInt8]? {
    state.withLock { s in s.names[path].flatMap { s.inodes[$0]?.data } }
  }

  /// What would be left of `path` after a crash now, nil if its name is not durable.
  public func durableContents(_ path: String) -> [UInt8]? {
    state.withLock { s in s.durableNames[path].flatMap { s.inodes[$0]?.durable } }
  }

  /// Replaces a file's content, durably (creating it): for tests that damage files.
  public func setContents(_ path: String, _ bytes: [UInt8]) {
    state.withLock { s in
      let id: Int
      if let existing = s.names[path] {
        id = existing
      } else {
        id = s.nextInode
        s.nextInode += 1
        s.names[path] = id
      }
      s.durableNames[path] = id
      s.inodes[id] = Inode(data: bytes, durable: bytes, pending: [])
    }
  }

  // MARK: FileSystem

  public func open(_ path: String, _ options: OpenOptions, permissions: UInt32)
    throws(FileSystemError) -> FileHandle
  {
    try state.withLock { (s) throws(FileSystemError) -> FileHandle in
      if options.contains(.create) || options.contains(.truncate) {
        try Self.step(&s, .create, "open", path)
      } else {
        try Self.up(&s, "open", path)
      }
      let id: Int
      if let existing = s.names[path] {
        if options.contains(.create) && options.contains(.exclusive) {
          throw FileSystemError("open", path: path, errno: EEXIST)
        }
        id = existing
        if options.contains(.truncate) && options.contains(.write) {
          s.inodes[id]!.data = []
          s.inodes[id]!.pending.append(.truncate(0))
        }
      } else {
        guard options.contains(.create) else {
          throw FileSystemError("open", path: path, errno: ENOENT)
        }
        let dir = Self.parent(path)
        guard s.directories.contains(dir) else {
          throw FileSystemError("open", path: path, errno: ENOENT)
        }
        id = s.nextInode
        s.nextInode += 1
        s.inodes[id] = Inode()
        s.names[path] = id
        s.pendingNames[dir, default: []].append(.link(path, id))
      }
      let h = s.nextHandle
      s.nextHandle += 1
      s.handles[h] = Handle(
        path: path, inode: id, writable: options.contains(.write),
        append: options.contains(.append))
      return FileHandle(rawValue: h)
    }
  }

  public func close(_ file: FileHandle) throws(FileSystemError) {
    try state.withLock { (s) throws(FileSystemError) in
      guard s.handles.removeValue(forKey: file.rawValue) != nil else {
        throw FileSystemError("close", path: "\(file)", errno: EBADF)
      }
    }
  }

  public func write(_ file: FileHandle, _ bytes: [UInt8]) throws(FileSystemError) {
    try state.withLock { (s) throws(FileSystemError) in
      let h = try Self.handle(&s, file, "write", writing: true)
      try Self.step(&s, .write, "write", h.path)
      let offset = h.append ? s.inodes[h.inode]!.data.count : h.position
      let written = try Self.write(&s, h, bytes, at: offset)
      s.handles[file.rawValue]!.position = offset + written
    }
  }

  public func write(_ file: FileHandle, _ bytes: [UInt8], at offset: Int64)
    throws(FileSystemError)
  {
    try state.withLock { (s) throws(FileSystemError) in
      let h = try Self.handle(&s, file, "pwrite", writing: true)
      try Self.step(&s, .write, "pwrite", h.path)
      _ = try Self.write(&s, h, bytes, at: Int(offset))
    }
  }

  public func read(_ file: FileHandle, count: Int, at offset: Int64) throws(FileSystemError)
    -> [UInt8]
  {
    try state.withLock { (s) throws(FileSystemError) -> [UInt8] in
      let h = try Self.handle(&s, file, "pread", writing: false)
      let data = s.inodes[h.inode]!.data
      let start = min(Int(offset), data.count)
      let end = min(start + count, data.count)
      s.largestRead = max(s.largestRead, end - start)
      s.bytesRead[String(h.path.split(separator: "/").last ?? ""), default: 0] += end - start
      return Array(data[start..<end])
    }
  }

  public func sync(_ file: FileHandle) throws(FileSystemError) {
    try syncFile(file, "fsync")
  }

  public func syncData(_ file: FileHandle) throws(FileSystemError) {
    try syncFile(file, "fdatasync")
  }

  private func syncFile(_ file: FileHandle, _ call: String) throws(FileSystemError) {
    let latency = state.withLock { $0.syncLatencyMicros }
    if latency > 0 { usleep(latency) }
    try state.withLock { (s) throws(FileSystemError) in
      let h = try Self.handle(&s, file, call, writing: false)
      do throws(FileSystemError) {
        try Self.step(&s, .sync, call, h.path)
      } catch {
        // Like Linux after a failed fsync: the unsynced changes are dropped from the
        // writeback and will never reach the disk (readers still see them).
        if !s.down { s.inodes[h.inode]!.pending = [] }
        throw error
      }
      var inode = s.inodes[h.inode]!
      for op in inode.pending { Self.apply(op, to: &inode.durable) }
      inode.pending = []
      s.inodes[h.inode] = inode
    }
  }

  public func size(_ file: FileHandle) throws(FileSystemError) -> Int64 {
    try state.withLock { (s) throws(FileSystemError) -> Int64 in
      let h = try Self.handle(&s, file, "fstat", writing: false)
      return Int64(s.inodes[h.inode]!.data.count)
    }
  }

  public func truncate(_ file: FileHandle, to size: Int64) throws(FileSystemError) {
    try state.withLock { (s) throws(FileSystemError) in
      let h = try Self.handle(&s, file, "ftruncate", writing: true)
      try Self.step(&s, .truncate, "ftruncate", h.path)
      let size = Int(size)
      let growth = size - s.inodes[h.inode]!.data.count
      if growth > 0, let capacity = s.capacity, s.used + growth > capacity {
        throw FileSystemError("ftruncate", path: h.path, errno: ENOSPC)
      }
      Self.apply(.truncate(size), to: &s.inodes[h.inode]!.data)
      s.inodes[h.inode]!.pending.append(.truncate(size))
    }
  }

  public func rename(_ from: String, to: String) throws(FileSystemError) {
    try state.withLock { (s) throws(FileSystemError) in
      try Self.step(&s, .rename, "rename", from)
      guard let id = s.names[from] else {
        throw FileSystemError("rename", path: from, errno: ENOENT)
      }
      guard s.directories.contains(Self.parent(to)) else {
        throw FileSystemError("rename", path: to, errno: ENOENT)
      }
      s.names[from] = nil
      s.names[to] = id
      // One directory's entries change together (both names are in the same directory
      // in this code base); the new name appears before the old one goes.
      s.pendingNames[Self.parent(to), default: []].append(.link(to, id))
      s.pendingNames[Self.parent(from), default: []].append(.remove(from))
      Self.collect(&s)
    }
  }

  public func unlink(_ path: String) throws(FileSystemError) {
    try state.withLock { (s) throws(FileSystemError) in
      try Self.step(&s, nil, "unlink", path)
      guard s.names.removeValue(forKey: path) != nil else {
        throw FileSystemError("unlink", path: path, errno: ENOENT)
      }
      s.pendingNames[Self.parent(path), default: []].append(.remove(path))
      Self.collect(&s)
    }
  }

  public func list(_ directory: String) throws(FileSystemError) -> [String] {
    try state.withLock { (s) throws(FileSystemError) -> [String] in
      try Self.up(&s, "opendir", directory)
      s.lists += 1
      let dir = Self.normalized(directory)
      guard s.directories.contains(dir) else {
        throw FileSystemError("opendir", path: directory, errno: ENOENT)
      }
      let prefix = dir == "/" ? "/" : dir + "/"
      return s.names.keys.filter { $0.hasPrefix(prefix) && Self.parent($0) == dir }
        .map { String($0.dropFirst(prefix.count)) }
    }
  }

  public func syncDirectory(_ path: String) throws(FileSystemError) {
    try state.withLock { (s) throws(FileSystemError) in
      try Self.step(&s, .syncDirectory, "fsync", path)
      let dir = Self.normalized(path)
      guard s.directories.contains(dir) else {
        throw FileSystemError("open", path: path, errno: ENOENT)
      }
      for op in s.pendingNames.removeValue(forKey: dir) ?? [] {
        Self.apply(op, to: &s.durableNames)
      }
      Self.collect(&s)
    }
  }

  public func createDirectory(_ path: String, permissions: UInt32) throws(FileSystemError) {
    try state.withLock { (s) throws(FileSystemError) in
      try Self.up(&s, "mkdir", path)
      let dir = Self.normalized(path)
      guard s.directories.contains(Self.parent(dir)) else {
        throw FileSystemError("mkdir", path: path, errno: ENOENT)
      }
      // Directories are durable at once (the data directory is made once, before use).
      s.directories.insert(dir)
    }
  }

  // MARK: Internals

  private static func normalized(_ path: String) -> String {
    path.count > 1 && path.hasSuffix("/") ? String(path.dropLast()) : path
  }

  private static func parent(_ path: String) -> String {
    guard let slash = path.lastIndex(of: "/") else { return "." }
    return slash == path.startIndex ? "/" : String(path[..<slash])
  }

  private static func up(_ s: inout State, _ call: String, _ path: String)
    throws(FileSystemError)
  {
    if s.down { throw FileSystemError(call, path: path, errno: EIO) }
  }

  /// Counts a changing call: the scheduled crash, then injected faults.
  private static func step(
    _ s: inout State, _ operation: Operation?, _ call: String, _ path: String
  ) throws(FileSystemError) {
    try up(&s, call, path)
    if let n = s.crashCountdown {
      if n <= 1 {
        crash(&s, seed: s.crashSeed)
        throw FileSystemError(call, path: path, errno: EIO)
      }
      s.crashCountdown = n - 1
    }
    guard let operation else { return }
    s.counts[operation, default: 0] += 1
    var failure: Int32?
    for i in s.faults.indices where s.faults[i].operation == operation {
      s.faults[i].remaining -= 1
      if s.faults[i].remaining <= 0 && failure == nil { failure = s.faults[i].errno }
    }
    s.faults.removeAll { $0.remaining <= 0 && !$0.sticky }
    if let failure { throw FileSystemError(call, path: path, errno: failure) }
  }

  private static func handle(
    _ s: inout State, _ file: FileHandle, _ call: String, writing: Bool
  ) throws(FileSystemError) -> Handle {
    guard let h = s.handles[file.rawValue] else {
      throw FileSystemError(call, path: "\(file)", errno: s.down ? EIO : EBADF)
    }
    try up(&s, call, h.path)
    if writing && !h.writable { throw FileSystemError(call, path: h.path, errno: EBADF) }
    return h
  }

  /// Writes what the free space allows; ENOSPC if that is not all. Returns bytes written.
  private static func write(_ s: inout State, _ h: Handle, _ bytes: [UInt8], at offset: Int)
    throws(FileSystemError) -> Int
  {
    let size = s.inodes[h.inode]!.data.count
    var n = bytes.count
    if let capacity = s.capacity {
      let free = max(0, capacity - s.used)
      n = max(0, min(n, size + free - offset))
    }
    if n > 0 {
      let chunk = n == bytes.count ? bytes : Array(bytes[0..<n])
      apply(.write(offset: offset, bytes: chunk), to: &s.inodes[h.inode]!.data)
      s.inodes[h.inode]!.pending.append(.write(offset: offset, bytes: chunk))
    }
    if n < bytes.count { throw FileSystemError("write", path: h.path, errno: ENOSPC) }
    return n
  }

  private static func apply(_ op: FileOp, to data: inout [UInt8]) {
    switch op {
    case .write(let offset, let bytes):
      guard !bytes.isEmpty else { return }
      if offset > data.count { data += [UInt8](repeating: 0, count: offset - data.count) }
      if offset == data.count {
        data += bytes
        return
      }
      let end = offset + bytes.count
      if end > data.count { data += [UInt8](repeating: 0, count: end - data.count) }
      data.withUnsafeMutableBufferPointer { d in
        bytes.withUnsafeBufferPointer { b in
          (d.baseAddress! + offset).update(from: b.baseAddress!, count: b.count)
        }
      }
    case .truncate(let size):
      if size < data.count {
        data.removeSubrange(size...)
      } else if size > data.count {
        data += [UInt8](repeating: 0, count: size - data.count)
      }
    }
  }

  private static func apply(_ op: NameOp, to names: inout [String: Int]) {
    switch op {
    case .link(let path, let id): names[path] = id
    case .remove(let path): names[path] = nil
    }
  }

  /// Forgets files no name (current or durable) or handle refers to.
  private static func collect(_ s: inout State) {
    var live = Set(s.names.values)
    live.formUnion(s.durableNames.values)
    for h in s.handles.values { live.insert(h.inode) }
    for id in s.inodes.keys where !live.contains(id) { s.inodes[id] = nil }
  }

  private static func crash(_ s: inout State, seed: UInt64?) {
    var rng = seed.map { SplitMix64(seed: $0) }
    // Directories: the durable names, plus perhaps some of the changes since.
    for dir in s.pendingNames.keys.sorted() {
      let ops = s.pendingNames[dir]!
      var keep = 0
      if var r = rng {
        keep = Int(r.next() % UInt64(ops.count + 1))
        rng = r
      }
      for op in ops.prefix(keep) { apply(op, to: &s.durableNames) }
    }
    s.pendingNames = [:]
    s.names = s.durableNames
    // Files: the durable bytes, plus perhaps some of the changes since (the last one
    // perhaps only in part).
    var inodes: [Int: Inode] = [:]
    for id in Set(s.durableNames.values).sorted() {
      guard var inode = s.inodes[id] else { continue }
      if var r = rng, !inode.pending.isEmpty {
        let keep = Int(r.next() % UInt64(inode.pending.count + 1))
        for op in inode.pending.prefix(keep) { apply(op, to: &inode.durable) }
        if keep < inode.pending.count, case .write(let offset, let bytes) = inode.pending[keep] {
          let part = Int(r.next() % UInt64(bytes.count + 1))
          if part > 0 {
            apply(.write(offset: offset, bytes: Array(bytes[0..<part])), to: &inode.durable)
          }
        }
        rng = r
      }
      inodes[id] = Inode(data: inode.durable, durable: inode.durable, pending: [])
    }
    s.inodes = inodes
    s.handles = [:]
    s.down = true
    s.crashCountdown = nil
    s.crashes += 1
  }
}

/// A small deterministic random generator (SplitMix64) for reproducible fault tests.
public struct SplitMix64: RandomNumberGenerator, Sendable {
  private var state: UInt64

  public init(seed: UInt64) { state = seed }

  public mutating func next() -> UInt64 {
    state &+= 0x9E37_79B9_7F4A_7C15
    var z = state
    z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
    z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
    return z ^ (z >> 31)
  }
}
