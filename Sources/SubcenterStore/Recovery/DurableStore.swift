// A SubscriptionStore kept in a data directory: recovery when it opens (newest valid
// snapshot, then the log after it), every write through the write-ahead log, snapshots
// on demand, and erasure compaction (rotate the log, snapshot, delete what the snapshot
// covers). Files: see docs/storage-format.md.

import Glibc
import SubcenterCore
import Synchronization

/// Makes commands durable through the write-ahead log. Completions come from the log's
/// writer thread, in log order.
final class WALCommitLog: CommitLog {
  private let wal = Mutex<WriteAheadLog?>(nil)

  /// The log, once recovery has read the old one and knows the next seq.
  func attach(_ log: WriteAheadLog) { wal.withLock { $0 = log } }

  func append(
    _ command: Command, completion: @escaping @Sendable (Result<UInt64, CoreError>) -> Void
  ) {
    guard let log = wal.withLock({ $0 }) else {
      completion(.failure(.unavailable("storage: the log is not open")))
      return
    }
    do {
      try log.append(LogRecordCodec.encode(command)) { r in
        completion(r.mapError { $0.coreError })
      }
    } catch {
      completion(.failure(error.coreError))
    }
  }
}

/// The store and its files.
public final class DurableStore: Sendable {
  public let store: SubscriptionStore
  public let wal: WriteAheadLog
  let directory: String
  let fileSystem: any FileSystem
  let log: @Sendable (String) -> Void
  /// One snapshot at a time; the seq of the newest one on disk.
  private let snapshotting = Mutex<UInt64>(0)

  /// What recovery did, for the start-up log.
  public struct RecoveryReport: Sendable {
    public var snapshot: String?
    public var snapshotSeq: UInt64 = 0
    public var persons = 0
    public var recordsReplayed = 0
    public var nextSeq: UInt64 = 1
    public var warnings: [String] = []
  }

  private init(
    store: SubscriptionStore, wal: WriteAheadLog, directory: String, fileSystem: any FileSystem,
    snapshotSeq: UInt64, log: @escaping @Sendable (String) -> Void
  ) {
    self.store = store
    self.wal = wal
    self.directory = directory
    self.fileSystem = fileSystem
    self.log = log
    snapshotting.withLock { $0 = snapshotSeq }
  }

  /// Opens `directory`: loads the newest valid snapshot (falling back to an older one,
  /// with a warning, when the newest is damaged), replays the log after it, and starts the
  /// log writer. Damage in the middle of the log stops here with an error naming file and
  /// offset, unless `truncateDamaged`.
  public static func open(
    directory: String, fileSystem: any FileSystem = PosixFileSystem(), clock: any WallClock,
    secret: [UInt8], fsync: FsyncPolicy, truncateDamaged: Bool,
    log: @escaping @Sendable (String) -> Void
  ) throws(StorageError) -> (DurableStore, RecoveryReport) {
    var report = RecoveryReport()
    for f in try SnapshotFile.removeTemporaryFiles(directory: directory, fileSystem: fileSystem) {
      report.warnings.append("removed \(f), an unfinished snapshot")
    }
    let commitLog = WALCommitLog()
    var store = SubscriptionStore(
      clock: clock, secret: secret, log: commitLog, createDefaultWorkspace: false)

    // The newest snapshot that validates; a damaged one is skipped with a warning.
    let snapshots = try SnapshotFile.list(directory: directory, fileSystem: fileSystem)
    for info in snapshots.sorted(by: { $0.seq > $1.seq }) {
      do {
        _ = try SnapshotFile.validate(info.name, directory: directory, fileSystem: fileSystem)
      } catch {
        report.warnings.append(
          "snapshot \(info.name) is damaged (\(error)); falling back to an older one")
        continue
      }
      let restoring = store
      var persons = 0
      _ = try SnapshotFile.read(info.name, directory: directory, fileSystem: fileSystem) {
        (record) throws(StorageError) in
        do {
          switch record {
          case .workspace(let w): restoring.restore(workspace: try w.restore())
          case .suppressions(let ws, let hashes):
            try restoring.restore(suppressions: hashes, workspace: ws)
          case .person(let ws, let person):
            try restoring.restore(person, workspace: ws)
            persons += 1
          }
        } catch let e as StorageError {
          throw e
        } catch {
          throw StorageError.damaged(info.name, at: 0, "cannot restore a record: \(error)")
        }
      }
      store.restored(through: info.seq)
      report.snapshot = info.name
      report.snapshotSeq = info.seq
      report.persons = persons
      break
    }
    if report.snapshot == nil && !snapshots.isEmpty {
      // Every snapshot is damaged: start over from an empty state and the whole log.
      store = SubscriptionStore(
        clock: clock, secret: secret, log: commitLog, createDefaultWorkspace: false)
    }

    // The log after the snapshot.
    var replayed = 0
    let replaying = store
    let read = try WALReader.read(
      directory: directory, fileSystem: fileSystem, after: report.snapshotSeq, repair: true,
      truncateDamaged: truncateDamaged
    ) { (seq, payload) throws(StorageError) in
      let (_, command) = try LogRecordCodec.decode(payload)
      guard let command else { return }  // erased record
      do { try replaying.replay(command, seq: seq) } catch {
        throw StorageError.damaged(
          WALSegmentFile(firstSeq: seq).name, at: 0,
          "record \(seq) does not apply to the recovered state: \(error)")
      }
      replayed += 1
    }
    store.restored(through: read.lastSeq)
    report.recordsReplayed = replayed
    report.nextSeq = read.nextSeq
    report.warnings += read.warnings
    report.warnings += read.discarded.map { "discarded \($0), which followed damage" }

    let wal = try WriteAheadLog(
      directory: directory, fileSystem: fileSystem, nextSeq: read.nextSeq,
      options: .init(fsync: fsync, log: log))
    commitLog.attach(wal)
    do { try store.ensureDefaultWorkspace() } catch {
      throw StorageError(.unavailable, "cannot create workspace default: \(error)")
    }
    let durable = DurableStore(
      store: store, wal: wal, directory: directory, fileSystem: fileSystem,
      snapshotSeq: report.snapshotSeq, log: log)
    return (durable, report)
  }

  /// The seq of the newest snapshot on disk (0 when none).
  public var snapshotSeq: UInt64 { snapshotting.withLock { $0 } }

  /// Writes a snapshot of the committed state if anything changed since the last one,
  /// then deletes older snapshots and the log segments it covers. Returns its seq (the
  /// existing one's when nothing changed). Blocking: call it off the event loops.
  @discardableResult
  public func snapshot(force: Bool = false) throws(StorageError) -> UInt64 {
    try snapshotting.withLock { (last: inout UInt64) throws(StorageError) -> UInt64 in
      let state = store.snapshotState()
      guard force || state.seq > last || last == 0 else { return last }
      let writer = try SnapshotWriter(directory: directory, seq: state.seq, fileSystem: fileSystem)
      do throws(StorageError) {
        for w in state.workspaces {
          try writer.append(.workspace(WorkspaceSnapshot(w)))
          for r in SnapshotRecord.suppressions(
            workspace: w.id, set: Set(state.suppressions(in: w.id)))
          {
            try writer.append(r)
          }
        }
        try state.forEachPerson { (ws, person) throws(StorageError) in
          try writer.append(.person(workspace: ws, person))
        }
        let name = try writer.commit()
        log("snapshot \(name) written (\(state.personCount) persons)")
      } catch {
        writer.abandon()
        throw error
      }
      last = state.seq
      for old in try SnapshotFile.remove(
        olderThan: state.seq, directory: directory, fileSystem: fileSystem)
      {
        log("removed \(old), covered by the new snapshot")
      }
      _ = try wal.removeSegments(through: state.seq)
      return state.seq
    }
  }

  /// Erasure compaction: closes the active log segment, snapshots, and deletes every
  /// older snapshot and every segment the snapshot covers, so nothing of a forgotten
  /// person stays on disk. Returns the snapshot's seq (for the erasure receipt).
  public func compact() throws(StorageError) -> UInt64 {
    let rotated = Mutex<Result<UInt64, StorageError>?>(nil)
    let done = Mutex<Bool>(false)
    try wal.rotate { r in
      rotated.withLock { $0 = r }
      done.withLock { $0 = true }
    }
    while !done.withLock({ $0 }) { usleepMillis(1) }
    if case .failure(let e) = rotated.withLock({ $0! }) { throw e }
    return try snapshot(force: true)
  }

  /// Stops the log writer (after a final snapshot, if asked).
  public func close() { wal.close() }
}

private func usleepMillis(_ ms: Int) {
  var ts = timespec(tv_sec: 0, tv_nsec: ms * 1_000_000)
  nanosleep(&ts, nil)
}
