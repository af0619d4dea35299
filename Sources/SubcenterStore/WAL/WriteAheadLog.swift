// The log writer: one thread that owns the active segment, takes everything queued,
// writes it with one call and makes it durable with one `fdatasync` (group commit), then
// completes every record of the batch in log order, on its own thread.
//
// Failures (SPEC §4, issue 4):
// - A write or fsync error makes the log fail for good: that batch and everything queued
//   fail with `unavailable`, and every later `append` throws. An fsync is never retried:
//   after a failed fsync the kernel may have dropped the dirty pages, so a retry that
//   succeeds proves nothing.
// - A write that fails with ENOSPC (or EDQUOT) is cut off again (the segment is truncated
//   to where the batch began) and fails that batch and everything queued with it; later
//   appends are tried again, so writes resume by themselves once space is back. An fsync
//   that fails with ENOSPC is an fsync failure: fatal.
// - While a failed batch is being completed, `append` throws instead of queueing: a
//   record validated against a failing one (the store validates against the records in
//   flight) is therefore never written without it.
//
// Ready records (with `deferReadiness`: subcenterd's event loops): the writer takes only
// the records whose appender's event-loop pass has ended (`WALCore.markReady`), whole
// passes, never the part of a pass the loop had queued when the writer came back from its
// last fsync. Such a part (often a record or two) cost a whole fsync of its own, ~40 us of
// kernel CPU on a virtio disk, taken from the loop's core: at -c4 -m32 the log took 57-67
// records a batch, 75-82 with whole passes, and ~7% more durable writes a second.
//
// Scheduling: with `FsyncPolicy.always` the writer thread runs under SCHED_BATCH, so that
// waking up (an fsync done, records made ready) does not preempt the event loop that
// shares its core: the writer runs when the loop waits for events or its time slice ends
// (on an idle core, at once). The loop's passes in the meantime join the next batch. With
// one core shared by a loop and the writer (`make bench`'s durable writes), preempting the
// loop at every wake-up cost two context switches a batch and kept batches at ~52
// records; without it they take ~110, the fsyncs and switches a write halve, and durable
// writes ran ~8% faster (interleaved pairs; bench/RESULTS.md). A lone write on an idle
// server waits no longer; on a machine whose cores are all busy, the writer waits for a
// loop to yield, and the worst durable write took ~2x as long beside a read flood. Under `interval` and `none` the writer applies the records
// itself (no disk wait to overlap), and there SCHED_BATCH measured ~8% slower: it stays
// under the default policy. A thread the writer starts inherits SCHED_BATCH: that happens
// when a completion hands work to Dispatch and Dispatch adds a worker (two of its workers
// were under SCHED_BATCH after a run), so background work (snapshots, retention,
// compaction) may run under SCHED_BATCH too, which only keeps it from preempting an event
// loop when it wakes. Calling completions under the default policy instead (two
// `sched_setscheduler` calls a batch) measured ~2.5% fewer durable writes (4 and 6
// interleaved pairs), so it is not done.
//
// Segments: the writer starts a new segment `wal-<next seq>.log` when it opens and when
// the active one would grow past `segmentSize`. Before a segment is left it is synced
// (whatever the policy), and a new segment's header and directory entry are synced before
// any record goes in it, so every segment but the newest is complete on disk.
//
// Preallocation (`preallocateBytes`, with `FsyncPolicy.always`): the active segment is
// extended with zeros a chunk at a time, ahead of the records, so that most batches write
// over space the file already has and their `fdatasync` need not write the inode (a file
// size that changes costs ext4 a second write and wait per fsync). Zeros after the last
// record end the log (WALSegment.scan; recovery cuts them after a crash); a segment is cut
// back to its records when it is left and at close. A batch that finds no room writes a
// whole chunk first (4 MiB in subcenterd: ~1-10 ms of copying, and the next fsync writes
// it all); so while it has nothing to write, the writer keeps at least half a chunk ahead,
// adding a sixteenth at a time (`preallocateAhead`). That work then falls in the loop's
// idle time, and writes no longer stall behind a chunk: under `-c4 -m32` the standard
// deviation of a durable write's latency went from ~520 us to ~170 us, the worst from
// ~15 ms to ~10 ms, at the same throughput.

import CLinux
import Glibc
import SubcenterCore
import Synchronization

/// When the writer makes written records durable (`--fsync`).
public enum FsyncPolicy: Sendable, Equatable, CustomStringConvertible {
  /// After every batch, before any record of it is acknowledged (the default).
  case always
  /// At most every `milliseconds`; records are acknowledged once written, and those of
  /// the last interval can be lost in a power cut (Redis `everysec`).
  case interval(milliseconds: Int)
  /// Only when a segment is left and at close; records are acknowledged once written.
  case none

  /// Parses `always`, `none` or `interval:MS` (MS from 1 to 60,000).
  public init?(_ text: String) {
    switch text {
    case "always": self = .always
    case "none": self = .none
    default:
      guard text.hasPrefix("interval:"), let ms = Int(text.dropFirst("interval:".count)),
        (1...60_000).contains(ms)
      else { return nil }
      self = .interval(milliseconds: ms)
    }
  }

  public var description: String {
    switch self {
    case .always: "always"
    case .interval(let ms): "interval:\(ms)"
    case .none: "none"
    }
  }
}

/// The write-ahead log's writer. Thread-safe: `append` may be called from any thread.
public final class WriteAheadLog: Sendable {
  public struct Options: Sendable {
    public var fsync: FsyncPolicy
    /// A segment is left once the next batch would make it larger than this.
    public var segmentSize: Int
    /// At most this many bytes of records go in one write (a single larger record goes
    /// alone).
    public var maxBatchBytes: Int
    /// With `FsyncPolicy.always`, the active segment is extended with zeros this many
    /// bytes at a time ahead of its records (0: never; see the top of this file).
    public var preallocateBytes: Int
    /// What subcenterd preallocates at a time.
    public static let serverPreallocateBytes = 4 << 20
    /// Where the writer reports failures, for the operator.
    public var log: @Sendable (String) -> Void

    public init(
      fsync: FsyncPolicy = .always, segmentSize: Int = 64 << 20, maxBatchBytes: Int = 8 << 20,
      preallocateBytes: Int = 0, log: @escaping @Sendable (String) -> Void = { _ in }
    ) {
      self.fsync = fsync
      self.segmentSize = segmentSize
      self.maxBatchBytes = maxBatchBytes
      self.preallocateBytes = preallocateBytes
      self.log = log
    }
  }

  /// Called on the writer thread with a record's seq once it is written and, under
  /// `FsyncPolicy.always`, durable; or with the error that kept it from being so (the
  /// record is then not in the log).
  public typealias Completion = @Sendable (Result<UInt64, StorageError>) -> Void

  /// What the log has done so far.
  public struct Status: Sendable, Equatable {
    /// The seq the next record will get.
    public var nextSeq: UInt64
    /// Every record with a smaller seq has been written (acknowledged unless failed).
    public var writtenThrough: UInt64
    /// Every record up to this seq is durable (synced).
    public var durableThrough: UInt64
    /// The first seq of the segment being written; older segments are complete.
    public var activeSegment: UInt64
    /// How many bytes from its start the segment being written holds of durable records
    /// (beyond: records not yet synced, or preallocated zeros).
    public var activeDurableBytes: Int
    /// What readers of the log (the change feed) may read: the durable records, or under
    /// `FsyncPolicy.none`, which syncs only when a segment is left, every written one
    /// (they are in the file; only an OS crash or power loss could still lose them, as it
    /// may lose acknowledged writes under that policy).
    public var readableThrough: UInt64
    /// Bytes of the segment being written that hold readable records.
    public var activeReadableBytes: Int
    /// Why the log refuses writes for good, if it does.
    public var failure: StorageError?
    /// What the writer has done since the log was opened.
    public var counters: Counters
  }

  /// What the writer has done since the log was opened (for /metrics: records per
  /// fsync and the time an fsync takes are what bound durable writes).
  public struct Counters: Sendable, Equatable {
    /// Records written (and, with `FsyncPolicy.always`, synced) and acknowledged.
    public var records: UInt64 = 0
    /// The writes that took them: one a batch of queued records (group commit).
    public var batches: UInt64 = 0
    /// Bytes of framed records in those batches.
    public var bytes: UInt64 = 0
    /// `fdatasync` calls on the active segment, and the time spent in them.
    public var syncs: UInt64 = 0
    public var syncNanos: UInt64 = 0
    /// Batches answered with an error instead: a full disk or an I/O error.
    public var failedBatches: UInt64 = 0
  }

  let core: WALCore
  private let thread = Mutex<pthread_t?>(nil)

  public var directory: String { core.directory }

  /// Opens the log in `directory` (which must exist) for records from `nextSeq` on, and
  /// starts the writer thread. Recovery must have run first: it gives `nextSeq`, and an
  /// existing segment `wal-<nextSeq>.log` must hold no record. With `skip`, the first
  /// batch written is preceded by `skip.record` (without its seq) taking the seqs from
  /// `nextSeq` through `skip.through`; records appended get seqs after those.
  public init(
    directory: String, fileSystem: any FileSystem, nextSeq: UInt64,
    skip: (record: [UInt8], through: UInt64)? = nil, options: Options = Options()
  ) throws(StorageError) {
    precondition(nextSeq >= 1, "seqs start at 1")
    precondition(skip.map { $0.through >= nextSeq } ?? true, "a skip takes at least one seq")
    core = WALCore(
      directory: directory, fileSystem: fileSystem, options: options, nextSeq: nextSeq)
    let writer = WALWriter(core: core, fileSystem: fileSystem, nextSeq: nextSeq, skip: skip)
    try writer.openFirstSegment()
    let box = Unmanaged.passRetained(writer).toOpaque()
    var tid = pthread_t()
    let rc = pthread_create(&tid, nil, walWriterThreadMain, box)
    guard rc == 0 else {
      Unmanaged<WALWriter>.fromOpaque(box).release()
      throw StorageError(.io, "cannot start the log writer thread (errno \(rc))", errno: rc)
    }
    thread.withLock { $0 = tid }
  }

  deinit { close() }

  /// Queues a record: `record` is a `LogRecord` without its seq
  /// (`LogRecordCodec.encode(_:)`); the writer gives it the next `seqCount` seqs (writing
  /// the first as its `seq`, and the count as its `seq_count` when more than one), and
  /// `completion` the first. Records are written in the order `append` is called.
  /// `completion` runs later on the writer thread. Throws (and queues nothing, and never
  /// calls `completion`) when the log has failed, is completing a failed batch, or is
  /// closed: all `unavailable`.
  public func append(
    _ record: [UInt8], seqCount: UInt64 = 1, completion: @escaping Completion
  ) throws(StorageError) {
    try enqueue(record, seqCount: seqCount, .record(completion))
  }

  /// `append` for the store's commit log (`WALCommitLog`): `completion` gets the record's
  /// last seq or the error as a `CoreError`; once a batch holding such records is durable
  /// and their completions have run, the feed (`notifyCommands(to:)`) is told, once. The
  /// log does the mapping, so no closure wraps `completion` (one allocation a write).
  func appendCommand(
    _ record: consuming [UInt8], seqCount: UInt64,
    completion: consuming @escaping @Sendable (Result<UInt64, CoreError>) -> Void
  ) throws(StorageError) {
    try enqueue(record, seqCount: seqCount, .command(completion))
  }

  /// The change feed told when `appendCommand` records become durable.
  func notifyCommands(to feed: ChangeFeed) { core.shared.withLock { $0.feed = feed } }

  private func enqueue(
    _ record: consuming [UInt8], seqCount: UInt64, _ completion: consuming WALCore.Pending.Notify
  ) throws(StorageError) {
    precondition(seqCount >= 1)
    let size = record.count
    guard size <= RecordFrame.maxPayloadSize - 22 else {  // room for seq and count
      throw StorageError(.invalid, "a log record of \(size) bytes is too large")
    }
    // Moved into the queue, not copied (a closure copies what it captures).
    var pending: WALCore.Pending? = WALCore.Pending(
      bytes: record, seqCount: seqCount, completion: completion)
    let (act, deferral) = try core.shared.withLock {
      (s) throws(StorageError) -> (Bool, TaskRunner?) in
      if let refusal = s.refusal { throw refusal }
      s.queue.append(pending.take()!)
      s.queuedBytes += size
      guard let deferral = s.readyDeferral else {
        s.ready = s.queue.count
        guard s.writerIdle else { return (false, nil) }
        s.writerIdle = false
        return (true, nil)
      }
      if s.readyScheduled { return (false, nil) }
      s.readyScheduled = true
      return (true, deferral)
    }
    guard act else { return }
    guard let deferral else { return core.wake.signal() }
    // Ready (and the writer woken) once per pass of the appender's event loop rather than
    // at once: the records of every call handled in that pass then go in one batch (and
    // the writer does not take the core from the loop after each call).
    let core = self.core
    if deferral.run({ core.markReady() }) { return }
    core.markReady()
  }

  /// Has `deferral` make appended records ready for the writer (waking it if it sleeps)
  /// instead of the appender: after the first append since the last time, it takes that
  /// task and returns true if it will run it soon (at the end of the current event-loop
  /// pass, `GRPCServer.atEndOfLoopPass`), or returns false (called from another thread),
  /// and the appender runs it at once.
  public func deferReadiness(
    to deferral: @escaping @Sendable (@escaping @Sendable () -> Void) -> Bool
  ) {
    core.shared.withLock { $0.readyDeferral = TaskRunner(run: deferral) }
  }

  /// Leaves the active segment (if it holds a record) for a new one, after the records
  /// queued before this call. `completion` gets the new active segment's first seq: every
  /// record before it is in a complete, synced segment that the writer no longer touches
  /// (it may be rewritten or deleted).
  public func rotate(
    completion: @escaping @Sendable (Result<UInt64, StorageError>) -> Void
  ) throws(StorageError) {
    try core.shared.withLock { (s) throws(StorageError) in
      if let refusal = s.refusal, refusal.kind != .noSpace { throw refusal }
      s.rotations.append(completion)
      s.ready = s.queue.count
      s.writerIdle = false
    }
    core.wake.signal()
  }

  /// Writes and syncs what is queued, closes the active segment and stops the writer
  /// thread (waiting for it, unless called from a completion). Later appends throw
  /// `unavailable`. Idempotent.
  public func close() {
    let tid = thread.withLock { t -> pthread_t? in
      defer { t = nil }
      return t
    }
    guard let tid else { return }
    core.shared.withLock { $0.closing = true }
    core.wake.signal()
    if pthread_equal(tid, pthread_self()) != 0 {
      // Closed from a completion, on the writer thread itself: it stops after this batch.
      pthread_detach(tid)
    } else {
      pthread_join(tid, nil)
    }
  }

  public var status: Status {
    let readAsWritten = core.options.fsync == .none
    return core.shared.withLock { s in
      Status(
        nextSeq: s.nextSeq, writtenThrough: s.nextSeq - 1, durableThrough: s.durableThrough,
        activeSegment: s.activeSegment, activeDurableBytes: s.activeDurableBytes,
        readableThrough: readAsWritten ? s.nextSeq - 1 : s.durableThrough,
        activeReadableBytes: readAsWritten ? s.activeWrittenBytes : s.activeDurableBytes,
        failure: s.failure, counters: s.counters)
    }
  }

  /// Deletes the segments every record of which has a seq ≤ `seq` (a snapshot covers
  /// them), never the active one; syncs the directory. Returns the names deleted.
  @discardableResult
  public func removeSegments(through seq: UInt64) throws(StorageError) -> [String] {
    let fs = core.fileSystem
    let active = core.shared.withLock { $0.activeSegment }
    let segments = try WALSegment.list(directory: directory, fileSystem: fs)
    var removed: [String] = []
    for (i, s) in segments.enumerated() where i + 1 < segments.count {
      // All of segment i is ≤ seq when the next segment starts at or before seq + 1.
      guard s.firstSeq < active, segments[i + 1].firstSeq <= seq &+ 1 else { continue }
      removed.append(s.name)
    }
    try WALSegment.delete(removed, directory: directory, fileSystem: fs)
    return removed
  }
}

/// What appenders and the writer share.
final class WALCore: Sendable {
  struct Pending {
    var bytes: [UInt8]
    var seqCount: UInt64
    var completion: Notify

    /// Who is told of the record.
    enum Notify {
      /// `append`'s completion: the first seq, or the error.
      case record(WriteAheadLog.Completion)
      /// `appendCommand`'s: the last seq, or the error as a `CoreError`.
      case command(@Sendable (Result<UInt64, CoreError>) -> Void)
    }

    /// Whether the change feed is told when it is durable (`appendCommand`).
    var isCommand: Bool {
      if case .command = completion { return true }
      return false
    }

    /// Tells the appender the record's `result` (its first seq, or the error).
    func complete(_ result: Result<UInt64, StorageError>) {
      switch completion {
      case .record(let f): f(result)
      case .command(let f): f(result.map { $0 + seqCount - 1 }.mapError { $0.coreError })
      }
    }
  }

  struct Shared {
    var queue: [Pending] = []
    var queuedBytes = 0
    /// Told of durable commands (`notifyCommands(to:)`). Weak: the feed holds the log.
    weak var feed: ChangeFeed?
    var rotations: [@Sendable (Result<UInt64, StorageError>) -> Void] = []
    /// The writer is about to sleep: whoever makes records ready must signal `wake`.
    var writerIdle = false
    var readyDeferral: TaskRunner?
    /// How many records, from the front of `queue`, the writer may take (all of them,
    /// without a readiness deferral).
    var ready = 0
    /// The deferral holds a `markReady` that has not run yet.
    var readyScheduled = false
    var closing = false
    /// Why appends throw right now: a permanent failure, a batch being failed, closed.
    var refusal: StorageError?
    /// The permanent failure, if any.
    var failure: StorageError?
    var nextSeq: UInt64
    var durableThrough: UInt64
    var activeSegment: UInt64
    var activeDurableBytes = WALSegment.headerSize
    var activeWrittenBytes = WALSegment.headerSize
    var counters = WriteAheadLog.Counters()
  }

  let directory: String
  let fileSystem: any FileSystem
  let options: WriteAheadLog.Options
  let shared: Mutex<Shared>
  let wake = WakeEvent()

  /// Makes every record queued so far ready for the writer, waking it if it sleeps.
  func markReady() {
    let signal = shared.withLock { s -> Bool in
      s.ready = s.queue.count
      s.readyScheduled = false
      guard s.writerIdle && s.ready > 0 else { return false }
      s.writerIdle = false
      return true
    }
    if signal { wake.signal() }
  }

  init(
    directory: String, fileSystem: any FileSystem, options: WriteAheadLog.Options,
    nextSeq: UInt64
  ) {
    self.directory = directory
    self.fileSystem = fileSystem
    self.options = options
    shared = Mutex(
      Shared(nextSeq: nextSeq, durableThrough: nextSeq - 1, activeSegment: nextSeq))
  }
}

/// The writer thread's state. `@unchecked Sendable`: built by `WriteAheadLog.init`, then
/// handed to the writer thread, the only one that touches it afterwards.
final class WALWriter: @unchecked Sendable {
  let core: WALCore
  let fs: any FileSystem
  var options: WriteAheadLog.Options { core.options }

  private var active: FileHandle?
  private var activeFirstSeq: UInt64 = 0
  private var activeName = ""
  private var segmentBytes = 0
  /// The size the active segment may have on disk: `segmentBytes` plus preallocated
  /// zeros (or zeros a failed preallocation may have left).
  private var fileBytes = 0
  private var segmentRecords = 0
  private var nextSeq: UInt64
  /// Written but not yet synced.
  private var unsynced = false
  private var lastSync = monotonicNanos()
  private var failed = false
  /// The last batch failed for lack of space (so the operator hears once per episode).
  private var outOfSpace = false
  private var buffer: [UInt8] = []
  /// One step of zeros for `preallocateAhead`.
  private var zeros: [UInt8] = []
  /// The record that skips seqs, written in front of the first batch (then nil), and the
  /// last seq it takes (`WriteAheadLog.init`).
  private var skip: (record: [UInt8], through: UInt64)?

  init(
    core: WALCore, fileSystem: any FileSystem, nextSeq: UInt64,
    skip: (record: [UInt8], through: UInt64)?
  ) {
    self.core = core
    self.fs = fileSystem
    self.nextSeq = nextSeq
    self.skip = skip
  }

  // MARK: The loop

  private enum Work {
    case batch([WALCore.Pending], rotations: [@Sendable (Result<UInt64, StorageError>) -> Void])
    case idle
    case close
  }

  func run() {
    while true {
      let work = core.shared.withLock { s -> Work in
        if s.closing { s.ready = s.queue.count }
        if s.ready == 0 && s.rotations.isEmpty {
          if s.closing {
            if s.failure == nil {
              s.refusal = StorageError(.unavailable, "the write-ahead log is closed")
            }
            return .close
          }
          s.writerIdle = true
          return .idle
        }
        s.writerIdle = false
        var batch: [WALCore.Pending]
        if s.ready == s.queue.count && s.queuedBytes <= options.maxBatchBytes {
          batch = s.queue
          s.queue = []
          s.queuedBytes = 0
        } else {
          // A prefix of the ready records, at most `maxBatchBytes` of them (at least one
          // record); the rest stays queued, in order.
          var n = 0
          var bytes = 0
          while n < s.ready && (n == 0 || bytes + s.queue[n].bytes.count <= options.maxBatchBytes) {
            bytes += s.queue[n].bytes.count
            n += 1
          }
          batch = Array(s.queue[..<n])
          s.queue.removeFirst(n)
          s.queuedBytes -= bytes
        }
        s.ready -= batch.count
        // Rotations come after the records queued before them, which were all ready.
        let rotations = s.ready == 0 ? s.rotations : []
        if s.ready == 0 { s.rotations = [] }
        return .batch(batch, rotations: rotations)
      }
      switch work {
      case .batch(let batch, let rotations):
        if !batch.isEmpty { write(batch) }
        for r in rotations { r(rotateOnRequest()) }
        syncIfDue()
      case .idle:
        if preallocateAhead() { continue }
        var deadline: UInt64?
        if unsynced, case .interval(let ms) = options.fsync {
          deadline = lastSync + UInt64(ms) * 1_000_000
        }
        core.wake.wait(until: deadline)
        syncIfDue()
      case .close:
        finish()
        return
      }
    }
  }

  // MARK: Batches

  private func write(_ batch: [WALCore.Pending]) {
    if failed {
      complete(batch, .failure(core.shared.withLock { $0.failure! }))
      return
    }
    // The frames go into a local array (the buffer's memory, swapped in and back): a
    // property written from the closures below is checked for exclusive access each time.
    var frames: [UInt8] = []
    swap(&frames, &buffer)
    frames.removeAll(keepingCapacity: true)
    // The first seq written: the skip's while it is pending, else the batch's first.
    let start = nextSeq
    if let skip {
      skip.record.withUnsafeBytes {
        RecordFrame.append(
          sequence: start, count: skip.through - start + 1, body: $0, to: &frames)
      }
    }
    let written = batch.count + (skip == nil ? 0 : 1)
    let first = skip.map { $0.through + 1 } ?? start
    var end = first
    // By index: `for p in batch` would copy each record (retaining what it holds).
    for i in batch.indices {
      let count = batch[i].seqCount
      batch[i].bytes.withUnsafeBytes {
        RecordFrame.append(sequence: end, count: count, body: $0, to: &frames)
      }
      end += count
    }
    swap(&frames, &buffer)

    do {
      if active == nil || (segmentRecords > 0 && segmentBytes + buffer.count > options.segmentSize)
      {
        try rotate(firstSeq: start)
      }
    } catch {
      fail(batch, error)
      return
    }

    preallocate(for: buffer.count)
    do {
      try fs.write(active!, buffer, at: Int64(segmentBytes))
    } catch {
      if error.isNoSpace {
        // Cut off what part of the batch reached the file; a file that cannot be cut
        // back holds bytes no record owns, so the log cannot go on.
        do {
          try fs.truncate(active!, to: Int64(segmentBytes))
          fileBytes = segmentBytes
        } catch {
          fail(batch, StorageError(error, "cutting off a batch the full disk refused"))
          return
        }
        fail(batch, StorageError(error, "writing to log segment \(activeName)"))
      } else {
        fail(batch, StorageError(error, "writing to log segment \(activeName)"))
      }
      return
    }
    segmentBytes += buffer.count
    fileBytes = max(fileBytes, segmentBytes)
    segmentRecords += written
    nextSeq = end
    unsynced = true
    core.shared.withLock { [segmentBytes] s in
      s.nextSeq = end
      s.activeWrittenBytes = segmentBytes
    }

    if options.fsync == .always {
      do { try syncActive() } catch {
        // The batch was answered UNAVAILABLE, so it must not come back at the next start:
        // cut it off the segment and try once to make that durable (best effort: a disk
        // whose fsync failed may keep the batch; the log is failed for good either way).
        let before = segmentBytes - buffer.count
        if (try? fs.truncate(active!, to: Int64(before))) != nil { try? fs.syncData(active!) }
        segmentBytes = before
        fileBytes = before
        segmentRecords -= written
        nextSeq = start
        core.shared.withLock { $0.nextSeq = start }
        fail(batch, error)
        return
      }
    }
    skip = nil
    if outOfSpace {
      outOfSpace = false
      options.log("write-ahead log: writes are accepted again")
    }
    let bytes = buffer.count
    let feed = core.shared.withLock { s in
      s.counters.records += UInt64(batch.count)
      s.counters.batches += 1
      s.counters.bytes += UInt64(bytes)
      return s.feed
    }
    var seq = first
    var commands = false
    for i in batch.indices {
      batch[i].complete(.success(seq))
      seq += batch[i].seqCount
      commands = commands || batch[i].isCommand
    }
    // Once a batch: the feed only wakes its thread, which reads every durable record.
    if commands { feed?.recordsDurable() }
  }

  /// Extends the active segment with zeros, a `preallocateBytes` chunk at a time, so the
  /// next `count` bytes of records fall in space the file has. Best effort: when the
  /// zeros cannot be written (a full disk), the file is cut back, the batch is written as
  /// without preallocation, and no more is tried before the records pass that chunk.
  private func preallocate(for count: Int) {
    let chunk = preallocationChunk
    guard chunk > 0, segmentBytes + count > fileBytes else { return }
    _ = extendWithZeros(to: (segmentBytes + count + chunk - 1) / chunk * chunk)
  }

  /// With nothing to write, extends the active segment's preallocated zeros by a step
  /// when less than half a chunk is left ahead of the records, so that batches rarely
  /// wait for a whole chunk of zeros: the zeros are written while the writer would
  /// sleep, which under SCHED_BATCH is when the event loop has nothing to do (see the
  /// top of this file). Returns true when it wrote (the caller looks for work again
  /// before the next step).
  private func preallocateAhead() -> Bool {
    let chunk = preallocationChunk
    let step = max(chunk / 16, 1)
    let end = (fileBytes / step + 1) * step  // sizes stay multiples of a step
    guard chunk > 0, active != nil, !failed, fileBytes - segmentBytes < chunk / 2,
      end <= options.segmentSize
    else { return false }
    if zeros.count != step { zeros = [UInt8](repeating: 0, count: step) }
    return extendWithZeros(to: end)
  }

  /// The chunk of zeros the active segment is extended by (0: no preallocation, which
  /// only `FsyncPolicy.always` uses).
  private var preallocationChunk: Int {
    options.fsync == .always ? min(options.preallocateBytes, options.segmentSize) : 0
  }

  /// Writes zeros from `fileBytes` to `end` (from the `preallocateAhead` step when it is
  /// one). Best effort: when the disk refuses them, the file is cut back, and `end` still
  /// counts as the size it may have (the cut may fail too; the segment is cut to its
  /// records when it is left), so no more is tried before the records pass it.
  private func extendWithZeros(to end: Int) -> Bool {
    let count = end - fileBytes
    let bytes = count == zeros.count ? zeros : [UInt8](repeating: 0, count: count)
    defer { fileBytes = end }
    do { try fs.write(active!, bytes, at: Int64(fileBytes)) } catch {
      try? fs.truncate(active!, to: Int64(fileBytes))
      return false
    }
    return true
  }

  /// Cuts the active segment back to its records (dropping preallocated zeros), before it
  /// is synced and left.
  private func dropPreallocated() throws(StorageError) {
    guard let active, fileBytes > segmentBytes else { return }
    do { try fs.truncate(active, to: Int64(segmentBytes)) } catch {
      throw StorageError(error, "cutting log segment \(activeName) back to its records")
    }
    fileBytes = segmentBytes
    unsynced = true
  }

  /// Syncs under `interval` when the interval has passed.
  private func syncIfDue() {
    guard unsynced, !failed, case .interval(let ms) = options.fsync else { return }
    guard monotonicNanos() >= lastSync + UInt64(ms) * 1_000_000 else { return }
    do { try syncActive() } catch { fail([], error) }
  }

  private func syncActive() throws(StorageError) {
    guard let active, unsynced else { return }
    let start = monotonicNanos()
    do { try fs.syncData(active) } catch {
      throw StorageError(error, "syncing log segment \(activeName)")
    }
    unsynced = false
    lastSync = monotonicNanos()
    let (through, bytes, took) = (nextSeq - 1, segmentBytes, lastSync - start)
    core.shared.withLock { s in
      s.durableThrough = through
      s.activeDurableBytes = bytes
      s.counters.syncs += 1
      s.counters.syncNanos += took
    }
  }

  // MARK: Segments

  func openFirstSegment() throws(StorageError) {
    let name = WALSegment.fileName(firstSeq: nextSeq)
    let names: [String]
    do { names = try fs.list(core.directory) } catch {
      throw StorageError(error, "listing the data directory")
    }
    if names.contains(name) {
      // Only a segment that holds no record (a start that stopped before writing one)
      // may be written over.
      let size: Int64
      do {
        let f = try fs.open(joinPath(core.directory, name))
        defer { try? fs.close(f) }
        size = try fs.size(f)
      } catch {
        throw StorageError(error, "opening log segment \(name)")
      }
      guard size <= WALSegment.headerSize else {
        throw StorageError(
          .damaged,
          "log segment \(name) already holds records: run recovery before opening the log",
          file: name)
      }
    }
    try openSegment(firstSeq: nextSeq)
  }

  /// Leaves the active segment for `wal-<firstSeq>.log`. The new segment is made before
  /// the old one is left: when it cannot be (out of file descriptors, a full disk), the
  /// old one stays active and the log goes on.
  private func rotate(firstSeq: UInt64) throws(StorageError) {
    let next = try createSegment(firstSeq: firstSeq)
    if let old = active {
      // Every segment but the newest is complete on disk, whatever the policy.
      do {
        try dropPreallocated()
        try syncActive()
      } catch {
        try? fs.close(next)
        throw error
      }
      try? fs.close(old)
    }
    adopt(next, firstSeq: firstSeq)
  }

  private func rotateOnRequest() -> Result<UInt64, StorageError> {
    if failed { return .failure(core.shared.withLock { $0.failure! }) }
    if active != nil && segmentRecords == 0 { return .success(activeFirstSeq) }
    do {
      try rotate(firstSeq: nextSeq)
      return .success(nextSeq)
    } catch {
      // Out of space or of file descriptors, the old segment stays active: only this
      // rotation fails (the compaction asking for it retries).
      if !Self.isTransient(error) { fail([], error) }
      return .failure(error)
    }
  }

  /// Creates the segment, writes its header, syncs it and the directory, and makes it
  /// the active one.
  private func openSegment(firstSeq: UInt64) throws(StorageError) {
    adopt(try createSegment(firstSeq: firstSeq), firstSeq: firstSeq)
  }

  /// Creates `wal-<firstSeq>.log` with its header, synced, and syncs the directory.
  private func createSegment(firstSeq: UInt64) throws(StorageError) -> FileHandle {
    let name = WALSegment.fileName(firstSeq: firstSeq)
    let path = joinPath(core.directory, name)
    let f: FileHandle
    do { f = try fs.open(path, [.write, .create, .truncate]) } catch {
      throw StorageError(error, "creating log segment \(name)")
    }
    do {
      try fs.write(f, WALSegment.header(firstSeq: firstSeq), at: 0)
      try fs.syncData(f)
      try fs.syncDirectory(core.directory)
    } catch {
      try? fs.close(f)
      if error.isNoSpace { try? fs.unlink(path) }
      throw StorageError(error, "creating log segment \(name)")
    }
    return f
  }

  /// Makes `f`, the segment `createSegment` made for `firstSeq`, the active one.
  private func adopt(_ f: FileHandle, firstSeq: UInt64) {
    active = f
    activeFirstSeq = firstSeq
    activeName = WALSegment.fileName(firstSeq: firstSeq)
    segmentBytes = WALSegment.headerSize
    fileBytes = segmentBytes
    segmentRecords = 0
    unsynced = false
    core.shared.withLock { s in
      s.activeSegment = firstSeq
      s.activeDurableBytes = WALSegment.headerSize
      s.activeWrittenBytes = WALSegment.headerSize
    }
  }

  // MARK: Failure and close

  /// Fails `batch` and everything queued. ENOSPC, and a segment that could not be made
  /// for want of file descriptors, fail only them; anything else fails the log for good.
  private func fail(_ batch: [WALCore.Pending], _ error: StorageError) {
    let outOfDescriptors = error.isOutOfDescriptors
    let transient = Self.isTransient(error)
    let message: String
    if outOfDescriptors {
      message =
        "write-ahead log: \(error.message). Out of file descriptors: writes are refused "
        + "with UNAVAILABLE until some are free, then resume by themselves; reads continue."
    } else if transient {
      message =
        "write-ahead log: \(error.message). The disk is full: writes are refused with "
        + "UNAVAILABLE until space is freed, then resume by themselves; reads continue."
    } else {
      failed = true
      message =
        "write-ahead log failed: \(error.message). No write is acknowledged from now on "
        + "(UNAVAILABLE); reads continue. Nothing unacknowledged was applied in memory; the "
        + "writes refused at this failure were cut off the log, but a disk that fails its "
        + "fsync may still hold them, so they can reappear after a restart, as after a crash. "
        + "Fix the disk, then restart subcenterd: recovery replays every acknowledged write."
    }
    let refusal = StorageError(
      transient ? .noSpace : .unavailable, message, file: error.file, errno: error.errno)
    let queued = core.shared.withLock { s -> [WALCore.Pending] in
      s.refusal = refusal
      if !transient { s.failure = refusal }
      if !batch.isEmpty { s.counters.failedBatches += 1 }
      let q = s.queue
      s.queue = []
      s.queuedBytes = 0
      s.ready = 0
      return q
    }
    if !transient || !outOfSpace { options.log(message) }
    if transient { outOfSpace = true }
    complete(batch, .failure(refusal))
    complete(queued, .failure(refusal))
    if transient {
      core.shared.withLock { s in
        if s.failure == nil && !s.closing { s.refusal = nil }
      }
    }
  }

  /// A failure that passes by itself (space or descriptors freed): it fails a batch or a
  /// rotation, not the log.
  private static func isTransient(_ error: StorageError) -> Bool {
    error.kind == .noSpace || error.isOutOfDescriptors
  }

  private func complete(_ batch: [WALCore.Pending], _ result: Result<UInt64, StorageError>) {
    for p in batch { p.complete(result) }
  }

  /// At close (appends are refused already): syncs whatever the policy, closes the
  /// segment.
  private func finish() {
    if !failed {
      do {
        try dropPreallocated()
        try syncActive()
      } catch { fail([], error) }
    }
    if let active { try? fs.close(active) }
    active = nil
  }
}

/// The writer thread's entry point (a top-level function: see NOTES.md on main.swift).
private func walWriterThreadMain(_ arg: UnsafeMutableRawPointer?) -> UnsafeMutableRawPointer? {
  let writer = Unmanaged<WALWriter>.fromOpaque(arg!).takeRetainedValue()
  CLinux_set_thread_name("log-writer")
  // See "Scheduling" at the top of this file. Best effort: without it, only slower.
  if writer.options.fsync == .always { _ = CLinux_set_batch_scheduling() }
  writer.run()
  return nil
}
