// The FileSystem protocol on both implementations (the same behaviour on the real POSIX
// file system and the in-memory one), then what only FaultyFileSystem does: power cuts,
// injected failures, running out of space.

import Glibc
import SubcenterStore
import SubcenterTestSupport
import Testing

@Suite struct FileSystemTests {
  /// The same sequence of calls on either file system.
  private func exercise(_ fs: any FileSystem, _ dir: String) throws {
    let a = dir + "/a"
    let f = try fs.open(a, [.write, .create, .exclusive])
    try fs.write(f, [1, 2, 3])
    try fs.write(f, [4, 5])
    try fs.write(f, [9], at: 1)
    #expect(try fs.size(f) == 5)
    #expect(try fs.read(f, count: 10, at: 0) == [1, 9, 3, 4, 5])
    #expect(try fs.read(f, count: 2, at: 3) == [4, 5])
    #expect(try fs.read(f, count: 2, at: 7) == [])
    try fs.write(f, [7], at: 7)
    #expect(try fs.read(f, count: 10, at: 0) == [1, 9, 3, 4, 5, 0, 0, 7])
    try fs.truncate(f, to: 2)
    #expect(try fs.size(f) == 2)
    try fs.syncData(f)
    try fs.sync(f)
    try fs.close(f)
    try fs.syncDirectory(dir)

    // Exclusive creation of an existing file; opening a missing one.
    #expect(throws: FileSystemError.self) { try fs.open(a, [.write, .create, .exclusive]) }
    do {
      _ = try fs.open(dir + "/missing")
      Issue.record("opening a missing file succeeded")
    } catch {
      #expect(error.errno == ENOENT)
      #expect(error.path == dir + "/missing")
      #expect(error.operation == "open")
    }

    // Append mode writes at the end whatever the position.
    let g = try fs.open(a, [.write, .append])
    try fs.write(g, [8])
    try fs.close(g)
    #expect(try fs.readFile(a) == [1, 9, 8])

    // Truncate on open.
    let h = try fs.open(a, [.write, .truncate])
    #expect(try fs.size(h) == 0)
    try fs.close(h)

    try fs.rename(a, to: dir + "/b")
    #expect(try fs.list(dir).sorted() == ["b"])
    #expect(try fs.exists("b", in: dir))
    try fs.unlink(dir + "/b")
    #expect(try fs.list(dir).isEmpty)
    #expect(throws: FileSystemError.self) { try fs.unlink(dir + "/b") }

    try fs.createDirectory(dir + "/sub")
    try fs.createDirectory(dir + "/sub")
    let s = try fs.open(dir + "/sub/x", [.write, .create])
    try fs.close(s)
    #expect(try fs.list(dir + "/sub") == ["x"])
    try fs.unlink(dir + "/sub/x")
  }

  @Test func posix() throws {
    let dir = TemporaryDirectory()
    defer {
      _ = Glibc.rmdir(dir.path + "/sub")
      dir.remove()
    }
    try exercise(PosixFileSystem(), dir.path)
  }

  @Test func aDataDirectoryIsLockedByOneHolderAtATime() throws {
    let dir = TemporaryDirectory()
    defer { dir.remove() }
    var first: DataDirectoryLock? = try DataDirectoryLock(directory: dir.path)
    do {
      _ = try DataDirectoryLock(directory: dir.path)
      Issue.record("a second lock on a held data directory was granted")
    } catch {
      #expect(error.kind == .unavailable)
      #expect(error.message.contains("in use by another running subcenterd"))
    }
    #expect(try PosixFileSystem().list(dir.path).isEmpty, "the lock writes no file")
    withExtendedLifetime(first) {}
    first = nil
    _ = try DataDirectoryLock(directory: dir.path)
    do {
      _ = try DataDirectoryLock(directory: dir.path + "/missing")
      Issue.record("locked a missing directory")
    } catch {
      #expect(error.kind == .io && error.errno == ENOENT)
    }
  }

  @Test func inMemory() throws {
    let fs = FaultyFileSystem()
    try fs.createDirectory("/data")
    try exercise(fs, "/data")
  }

  @Test func posixErrorNamesTheFile() throws {
    let dir = TemporaryDirectory()
    defer { dir.remove() }
    let fs = PosixFileSystem()
    let f = try fs.open(dir.path + "/r", [.write, .create])
    try fs.close(f)
    let ro = try fs.open(dir.path + "/r")
    defer { try? fs.close(ro) }
    do {
      try fs.write(ro, [1])
      Issue.record("writing a read-only descriptor succeeded")
    } catch {
      #expect(error.errno == EBADF)
      #expect(error.path == dir.path + "/r")
      #expect("\(error)".contains("write \(dir.path)/r"))
    }
  }

  // MARK: FaultyFileSystem

  private func fresh() throws -> FaultyFileSystem {
    let fs = FaultyFileSystem()
    try fs.createDirectory("/d")
    return fs
  }

  @Test func crashDropsUnsyncedData() throws {
    let fs = try fresh()
    let f = try fs.open("/d/f", [.write, .create])
    try fs.syncDirectory("/d")
    try fs.write(f, [1, 2, 3], at: 0)
    try fs.syncData(f)
    try fs.write(f, [4, 5], at: 3)
    #expect(fs.contents("/d/f") == [1, 2, 3, 4, 5])
    #expect(fs.durableContents("/d/f") == [1, 2, 3])
    fs.crash()
    #expect(throws: FileSystemError.self) { try fs.list("/d") }
    #expect(throws: FileSystemError.self) { try fs.size(f) }
    fs.restart()
    #expect(fs.contents("/d/f") == [1, 2, 3])
    // Old handles stay invalid after the restart.
    #expect(throws: FileSystemError.self) { try fs.size(f) }
  }

  @Test func crashDropsNamesNotDirectorySynced() throws {
    let fs = try fresh()
    let f = try fs.open("/d/new", [.write, .create])
    try fs.write(f, [1])
    try fs.sync(f)  // the data is durable, but its name is not
    fs.crash()
    fs.restart()
    #expect(try fs.list("/d").isEmpty)

    // A rename not followed by a directory sync is undone; with one it stays.
    let g = try fs.open("/d/tmp", [.write, .create])
    try fs.write(g, [7])
    try fs.sync(g)
    try fs.close(g)
    try fs.syncDirectory("/d")
    try fs.rename("/d/tmp", to: "/d/final")
    fs.crash()
    fs.restart()
    #expect(try fs.list("/d") == ["tmp"])
    try fs.rename("/d/tmp", to: "/d/final")
    try fs.syncDirectory("/d")
    fs.crash()
    fs.restart()
    #expect(try fs.list("/d") == ["final"])
    #expect(fs.contents("/d/final") == [7])

    // An unlink not directory-synced is undone too.
    try fs.unlink("/d/final")
    fs.crash()
    fs.restart()
    #expect(try fs.list("/d") == ["final"])
  }

  @Test func randomCrashKeepsAPrefixOfUnsyncedWrites() throws {
    var outcomes = Set<[UInt8]>()
    for seed in 0..<200 {
      let fs = try fresh()
      let f = try fs.open("/d/f", [.write, .create])
      try fs.syncDirectory("/d")
      try fs.write(f, [1, 1], at: 0)
      try fs.syncData(f)
      try fs.write(f, [2, 2, 2], at: 2)
      try fs.write(f, [3, 3, 3], at: 5)
      fs.crash(seed: UInt64(seed))
      fs.restart()
      let c = try #require(fs.contents("/d/f"))
      // Always the synced part, then a prefix of what followed, in order.
      let full: [UInt8] = [1, 1, 2, 2, 2, 3, 3, 3]
      #expect(c.count >= 2 && Array(full.prefix(c.count)) == c, "seed \(seed): \(c)")
      outcomes.insert(c)
    }
    #expect(outcomes.count > 4, "random crashes should vary: \(outcomes)")
  }

  @Test func failedSyncLosesTheDataForGood() throws {
    let fs = try fresh()
    let f = try fs.open("/d/f", [.write, .create])
    try fs.syncDirectory("/d")
    try fs.write(f, [1, 2], at: 0)
    fs.fail(.sync)
    #expect(throws: FileSystemError.self) { try fs.syncData(f) }
    // Readers still see it and a second sync succeeds, yet it never became durable.
    #expect(fs.contents("/d/f") == [1, 2])
    try fs.syncData(f)
    #expect(fs.durableContents("/d/f") == [])
    fs.crash()
    fs.restart()
    #expect(fs.contents("/d/f") == [])
  }

  @Test func nthWriteFails() throws {
    let fs = try fresh()
    let f = try fs.open("/d/f", [.write, .create])
    fs.fail(.write, nth: 3, errno: EIO)
    try fs.write(f, [1])
    try fs.write(f, [2])
    do {
      try fs.write(f, [3])
      Issue.record("the third write succeeded")
    } catch {
      #expect(error.errno == EIO)
    }
    try fs.write(f, [4])
    #expect(fs.contents("/d/f") == [1, 2, 4])
    #expect(fs.count(.write) == 4)

    fs.fail(.write, nth: 1, sticky: true)
    #expect(throws: FileSystemError.self) { try fs.write(f, [5]) }
    #expect(throws: FileSystemError.self) { try fs.write(f, [5]) }
    fs.clearFaults()
    try fs.write(f, [5])
  }

  @Test func noSpaceWritesWhatFitsAndRecovers() throws {
    let fs = try fresh()
    let f = try fs.open("/d/f", [.write, .create])
    fs.setFreeSpace(5)
    try fs.write(f, [1, 2, 3], at: 0)
    do {
      try fs.write(f, [4, 5, 6, 7], at: 3)
      Issue.record("a write past the free space succeeded")
    } catch {
      #expect(error.isNoSpace)
    }
    #expect(fs.contents("/d/f") == [1, 2, 3, 4, 5])
    // Overwriting in place needs no space; truncating frees some.
    try fs.write(f, [9], at: 0)
    try fs.truncate(f, to: 3)
    try fs.write(f, [4, 5], at: 3)
    #expect(throws: FileSystemError.self) { try fs.write(f, [6], at: 5) }
    fs.setFreeSpace(100)
    try fs.write(f, [6], at: 5)
    fs.setFreeSpace(nil)
    try fs.write(f, [UInt8](repeating: 0, count: 10_000), at: 6)
  }

  @Test func scheduledCrashFailsThatCall() throws {
    let fs = try fresh()
    let f = try fs.open("/d/f", [.write, .create])
    try fs.syncDirectory("/d")
    fs.crash(afterOperations: 2)
    try fs.write(f, [1], at: 0)
    #expect(throws: FileSystemError.self) { try fs.syncData(f) }
    #expect(fs.isDown)
    #expect(fs.crashes == 1)
    fs.restart()
    #expect(fs.contents("/d/f") == [])
  }
}
