// Measurements of the storage layer on the real file system, printed, never asserted:
// skipped unless SUBCENTER_MEASURE=1, and meant for release builds:
//
//   SUBCENTER_MEASURE=1 swift test -c release -Xswiftc -enable-testing \
//     --scratch-path /tmp/subcenter-measure --filter Measurements
//
// SUBCENTER_MEASURE_DIR picks the directory (default /tmp: it must not be a tmpfs for the
// fsync numbers to mean anything).

import Dispatch
import Glibc
import SubcenterCore
import SubcenterStore
import Synchronization
import Testing

private let measuring = getenv("SUBCENTER_MEASURE") != nil

/// Counts syncs on the way to the real file system.
private final class CountingFileSystem: FileSystem {
  let base = PosixFileSystem()
  let syncs = Atomic<Int>(0)

  func open(_ path: String, _ options: OpenOptions, permissions: UInt32) throws(FileSystemError)
    -> FileHandle
  { try base.open(path, options, permissions: permissions) }
  func close(_ file: FileHandle) throws(FileSystemError) { try base.close(file) }
  func write(_ file: FileHandle, _ bytes: [UInt8]) throws(FileSystemError) {
    try base.write(file, bytes)
  }
  func write(_ file: FileHandle, _ bytes: [UInt8], at offset: Int64) throws(FileSystemError) {
    try base.write(file, bytes, at: offset)
  }
  func read(_ file: FileHandle, count: Int, at offset: Int64) throws(FileSystemError) -> [UInt8] {
    try base.read(file, count: count, at: offset)
  }
  func sync(_ file: FileHandle) throws(FileSystemError) {
    syncs.add(1, ordering: .relaxed)
    try base.sync(file)
  }
  func syncData(_ file: FileHandle) throws(FileSystemError) {
    syncs.add(1, ordering: .relaxed)
    try base.syncData(file)
  }
  func size(_ file: FileHandle) throws(FileSystemError) -> Int64 { try base.size(file) }
  func truncate(_ file: FileHandle, to size: Int64) throws(FileSystemError) {
    try base.truncate(file, to: size)
  }
  func rename(_ from: String, to: String) throws(FileSystemError) { try base.rename(from, to: to) }
  func unlink(_ path: String) throws(FileSystemError) { try base.unlink(path) }
  func list(_ directory: String) throws(FileSystemError) -> [String] { try base.list(directory) }
  func syncDirectory(_ path: String) throws(FileSystemError) { try base.syncDirectory(path) }
  func createDirectory(_ path: String, permissions: UInt32) throws(FileSystemError) {
    try base.createDirectory(path, permissions: permissions)
  }
}

private func nowNanos() -> UInt64 {
  var ts = timespec()
  clock_gettime(CLOCK_MONOTONIC, &ts)
  return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}

private func scratchDirectory() -> TemporaryDirectory {
  if let base = getenv("SUBCENTER_MEASURE_DIR") {
    var template = Array((String(cString: base) + "/subcenter-measure-XXXXXX").utf8CString)
    let p = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
    return TemporaryDirectory(existing: String(cString: p!))
  }
  return TemporaryDirectory()
}

extension TemporaryDirectory {
  init(existing path: String) { self.path = path }
}

private func say(_ s: String) {
  let line = s + "\n"
  _ = line.withCString { Glibc.write(2, $0, strlen($0)) }
}

/// `v` with `places` decimals.
private func fmt(_ v: Double, _ places: Int = 2) -> String {
  var scale = 1.0
  for _ in 0..<places { scale *= 10 }
  let r = (v * scale).rounded() / scale
  var text = "\(r)"
  if let dot = text.firstIndex(of: ".") {
    let decimals = text.distance(from: dot, to: text.endIndex) - 1
    if decimals < places { text += String(repeating: "0", count: places - decimals) }
  }
  return text
}

@Suite(.serialized, .enabled(if: measuring)) struct Measurements {
  @Test func rawFdatasyncRate() throws {
    let dir = scratchDirectory()
    defer { dir.remove() }
    let fs = PosixFileSystem()
    let f = try fs.open(dir.path + "/raw", [.write, .create])
    let record = [UInt8](repeating: 7, count: 100)
    var offset: Int64 = 0
    let start = nowNanos()
    var n = 0
    while nowNanos() - start < 2_000_000_000 {
      try fs.write(f, record, at: offset)
      offset += 100
      try fs.syncData(f)
      n += 1
    }
    let secs = Double(nowNanos() - start) / 1e9
    say("raw write(100 B)+fdatasync, one thread: \(Int(Double(n) / secs)) /s")
    try fs.close(f)
  }

  /// Threads that each append and wait for the answer, for `seconds`.
  private func threads(_ count: Int, policy: FsyncPolicy, seconds: Double = 3) throws {
    let dir = scratchDirectory()
    defer { dir.remove() }
    let fs = CountingFileSystem()
    let wal = try WriteAheadLog(
      directory: dir.path, fileSystem: fs, nextSeq: 1, options: .init(fsync: policy))
    let syncsBefore = fs.syncs.load(ordering: .relaxed)
    let record = LogRecordCodec.encode(Samples.command(1))
    let latencies = Mutex<[UInt64]>([])
    let deadline = nowNanos() + UInt64(seconds * 1e9)
    let start = nowNanos()
    runThreads(count) { _ in
      var mine: [UInt64] = []
      let done = DispatchSemaphore(value: 0)
      while nowNanos() < deadline {
        let t0 = nowNanos()
        try! wal.append(record) { _ in done.signal() }
        done.wait()
        mine.append(nowNanos() - t0)
      }
      latencies.withLock { $0 += mine }
    }
    let secs = Double(nowNanos() - start) / 1e9
    let syncs = fs.syncs.load(ordering: .relaxed) - syncsBefore
    wal.close()
    let all = latencies.withLock { $0 }.sorted()
    let n = all.count
    let rate = Int(Double(n) / secs)
    let perSync = fmt(Double(n) / Double(max(syncs, 1)), 1)
    let p50 = all[n / 2] / 1000
    let p99 = all[n * 99 / 100] / 1000
    say(
      "WAL \(policy), \(count) appender thread(s), each waiting for its ack: \(rate) records/s, "
        + "\(syncs) fdatasyncs (\(perSync) records each), latency p50 \(p50) µs, p99 \(p99) µs")
  }

  /// `window` records in flight at all times: each completion appends the next one (as an
  /// event loop answering pipelined calls would), for `seconds`.
  private func window(_ window: Int, policy: FsyncPolicy, seconds: Double = 3) throws {
    let dir = scratchDirectory()
    defer { dir.remove() }
    let fs = CountingFileSystem()
    let wal = try WriteAheadLog(
      directory: dir.path, fileSystem: fs, nextSeq: 1, options: .init(fsync: policy))
    let record = LogRecordCodec.encode(Samples.command(1))
    let acked = Atomic<Int>(0)
    let deadline = nowNanos() + UInt64(seconds * 1e9)
    let finished = DispatchGroup()
    let start = nowNanos()
    @Sendable func next() {
      guard nowNanos() < deadline else {
        finished.leave()
        return
      }
      try! wal.append(record) { _ in
        acked.add(1, ordering: .relaxed)
        next()
      }
    }
    for _ in 0..<window {
      finished.enter()
      next()
    }
    finished.wait()
    let secs = Double(nowNanos() - start) / 1e9
    let n = acked.load(ordering: .relaxed)
    let syncs = fs.syncs.load(ordering: .relaxed)
    wal.close()
    let rate = Int(Double(n) / secs)
    let perSync = fmt(Double(n) / Double(max(syncs, 1)), 1)
    say("WAL \(policy), \(window) records in flight: \(rate) records/s, \(perSync) per fdatasync")
  }

  @Test func appendThroughputFsyncAlways() throws {
    say("record: \(LogRecordCodec.encode(Samples.command(1)).count) bytes (a SetPreference)")
    for n in [1, 4, 16, 64] { try threads(n, policy: .always) }
    for w in [32, 128, 512] { try window(w, policy: .always) }
  }

  @Test func appendThroughputOtherPolicies() throws {
    try threads(4, policy: .none, seconds: 2)
    try window(128, policy: .none, seconds: 2)
    try window(128, policy: .interval(milliseconds: 1000), seconds: 2)
  }

  @Test func replayOneMillionRecords() throws {
    let dir = scratchDirectory()
    defer { dir.remove() }
    let fs = PosixFileSystem()
    let count = 1_000_000
    // Write them fast (fsync none), in 64 MiB segments.
    let wal = try WriteAheadLog(
      directory: dir.path, fileSystem: fs, nextSeq: 1, options: .init(fsync: .none))
    let bodies = (0..<1000).map { LogRecordCodec.encode(Samples.command($0)) }
    let all = DispatchSemaphore(value: 0)
    let left = Atomic<Int>(count)
    for i in 0..<count {
      try wal.append(bodies[i % 1000]) { _ in
        if left.subtract(1, ordering: .relaxed).newValue == 0 { all.signal() }
      }
    }
    all.wait()
    wal.close()
    let segments = try WALSegment.list(directory: dir.path, fileSystem: fs)

    var t = nowNanos()
    var n = 0
    _ = try WALReader.read(directory: dir.path, fileSystem: fs) { _, _ in n += 1 }
    let scanSecs = Double(nowNanos() - t) / 1e9
    t = nowNanos()
    var decoded = 0
    _ = try WALReader.read(directory: dir.path, fileSystem: fs) {
      (_, payload) throws(StorageError) in
      _ = try LogRecordCodec.decode(payload)
      decoded += 1
    }
    let decodeSecs = Double(nowNanos() - t) / 1e9
    let rate = Int(Double(decoded) / decodeSecs)
    say(
      "replay of \(n) records in \(segments.count) segments: read + checksums \(fmt(scanSecs)) s; "
        + "with decoding to Command \(fmt(decodeSecs)) s (\(rate) records/s)")
  }

  @Test func snapshotOfOneMillionPersons() throws {
    let dir = scratchDirectory()
    defer { dir.remove() }
    let fs = PosixFileSystem()
    let count = 1_000_000
    // A typical person: an email, two entries, three history entries.
    var base = Person(key: .person("x"), at: 1_700_000_000_000)
    base.email = "someone@example.com"
    base.setPreference(
      channel: 1, topic: 0, state: .unsubscribed, source: "preference_center",
      noticeVersion: "v2", at: 1_700_000_100_000, actor: "web")
    base.setPreference(
      channel: 1, topic: 2, state: .subscribed, source: "one_click", noticeVersion: "",
      at: 1_700_000_200_000, actor: "web")
    base.appendHistory(action: .identify, actor: "crm", at: 1_700_000_000_000)

    var t = nowNanos()
    let w = try SnapshotWriter(directory: dir.path, seq: 1, fileSystem: fs)
    try w.append(.workspace(WorkspaceSnapshot(try Workspace(Samples.config))))
    for i in 0..<count {
      var p = base
      p.key = .person("customer-\(i)")
      p.email = "customer\(i)@example.com"
      try w.append(.person(workspace: "acme", p))
    }
    let name = try w.commit()
    let writeSecs = Double(nowNanos() - t) / 1e9
    let size = try fs.readFile(dir.path + "/" + name).count

    t = nowNanos()
    _ = try SnapshotFile.validate(name, directory: dir.path, fileSystem: fs)
    let validateSecs = Double(nowNanos() - t) / 1e9
    t = nowNanos()
    var persons = 0
    _ = try SnapshotFile.read(name, directory: dir.path, fileSystem: fs) {
      (r) throws(StorageError) in
      if case .person = r { persons += 1 }
    }
    let readSecs = Double(nowNanos() - t) / 1e9
    let mb = size / 1_000_000
    say(
      "snapshot of \(persons) persons: \(mb) MB, written (encode + fsync + rename) in "
        + "\(fmt(writeSecs)) s; read + checksums \(fmt(validateSecs)) s; read + decode to "
        + "Person \(fmt(readSecs)) s")
  }
}
