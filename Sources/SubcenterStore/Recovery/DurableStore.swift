// A SubscriptionStore kept in a data directory: recovery when it opens (newest valid
// snapshot, then the log after it), every write through the write-ahead log, snapshots
// on demand, erasure compaction, and the change retention. Files: see
// docs/storage-format.md.
//
// Change retention (`--change-retention`, SPEC §3/§4): log segments stay after a snapshot
// covers them, for the change feed (ChangeFeed/). A segment is deleted once it is complete,
// covered by the newest snapshot and every record left in it is older than the retention
// (oldest first, so the log stays contiguous). The retention pass (`startMaintenance`)
// runs every `pass` = clamp(min(retention, erasure deadline) / 4, 0.5 s, 30 s): it leaves
// an active segment whose records are older than 2 × `pass` for a new one (so segments
// span little time and expire whole), snapshots when an expired segment is not covered
// yet, and deletes expired segments. An event — a `forget` tombstone included — thus
// leaves the disk within retention + erasure deadline. Since the retained segments are on
// disk, the retention survives restarts.
//
// Erasure (`compact`): a snapshot is written (older ones deleted), the log rotated, then
// every retained segment is rewritten without the records of persons removed later
// (`ErasurePlan`; the anonymous ids attached to them included), each replaced by an erased
// record with the same seq; the removal records (the `forget` tombstones) stay. Each
// complete segment is read once into a summary (`SegmentSummary`: for the retention, its
// newest times and events; for erasure, the attachments and removals in it and a filter of
// its persons), kept until the segment is rewritten or deleted: an erasure reads only the
// segments that may hold a removed person's records, not the whole retained log.

import CLinux
import Dispatch
import Glibc
import SubcenterCore
import Synchronization

/// Makes commands durable through the write-ahead log. Completions come from the log's
/// writer thread, in log order.
final class WALCommitLog: CommitLog {
  private let wal = Mutex<WriteAheadLog?>(nil)

  /// The log, once recovery has read the old one and knows the next seq.
  func attach(_ log: WriteAheadLog) { wal.withLock { $0 = log } }

  /// With `--fsync always` the writer goes back to writing (and waiting on the disk)
  /// while the store applies the last batch on its own queue; with the other policies
  /// there is no wait to overlap, and applying on the writer thread saves a thread hop.
  let appliesElsewhere: Bool
  /// The server secret's check, written into records that hold suppression hashes.
  let secretCheck: [UInt8]

  init(appliesElsewhere: Bool, secretCheck: [UInt8]) {
    self.appliesElsewhere = appliesElsewhere
    self.secretCheck = secretCheck
  }

  func append(
    _ command: Command, completion: @escaping @Sendable (Result<UInt64, CoreError>) -> Void
  ) {
    guard let log = wal.withLock({ $0 }) else {
      completion(.failure(.unavailable("storage: the log is not open")))
      return
    }
    do {
      try log.appendCommand(
        LogRecordCodec.encode(command, secretCheck: secretCheck),
        seqCount: ChangeEvents.seqCount(command), completion: completion)
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
  /// What snapshots did, the newest one's seq among it; held only to read or update it,
  /// so /metrics never waits for a snapshot being written.
  private let snapshots = Mutex(SnapshotStatus())
  /// Snapshots, erasure and retention passes, one at a time.
  private let maintenance = Mutex<Maintenance>(Maintenance())
  /// The change feed over the retained log.
  public let changeFeed: ChangeFeed
  /// `--change-retention`, in ms.
  public let changeRetentionMillis: Int64
  let clock: any WallClock
  private let timer = Mutex<MaintenanceTimer?>(nil)

  struct Maintenance {
    /// What is left in each complete segment (by first seq), once read.
    var summaries: [UInt64: SegmentSummary] = [:]
    /// The active segment and when a retention pass first saw records in it (ms).
    var active: (seq: UInt64, since: Int64) = (0, 0)
    /// Complete segments whose newest record is dated after now (written while the clock
    /// was ahead, then stepped back), by first seq: when a pass first saw them so (ms).
    var aheadSince: [UInt64: Int64] = [:]
  }

  /// What a complete segment holds, for the retention and erasure: read once, kept until
  /// the segment is rewritten or deleted (complete segments change no other way).
  struct SegmentSummary {
    /// The time of its newest record erasure left (nil: none left).
    var newestAt: Int64?
    /// The newest event seq of each workspace in it (once `finish()` has run).
    var newestEvents: [String: UInt64] = [:]
    /// The workspace of the newest event added, with its last seq, not yet in
    /// `newestEvents`: runs of records of one workspace write the dictionary once, when
    /// another workspace's event comes or at `finish()`.
    private var newestEvent: (workspace: String, seq: UInt64)?
    /// The seq after its last record, and where it is damaged, if it is.
    var endSeq: UInt64
    var damage: SegmentDamage?
    /// What erasure needs of it.
    var erasure: ErasurePlan.SegmentFacts

    init(firstSeq: UInt64, endSeq: UInt64, damage: SegmentDamage?) {
      self.endSeq = endSeq
      self.damage = damage
      erasure = ErasurePlan.SegmentFacts(firstSeq: firstSeq)
    }

    /// Adds record `seq` (records in seq order; then `finish()`).
    mutating func add(seq: UInt64, command c: Command) {
      erasure.add(seq: seq, command: c)
      let at = c.at
      newestAt = max(newestAt ?? at, at)
      if let last = ChangeEvents.lastEvent(seq: seq, of: c) { noteEvent(last) }
    }

    /// Notes the newest event so far of its workspace.
    private mutating func noteEvent(_ event: (workspace: String, seq: UInt64)) {
      if let last = newestEvent, last.workspace != event.workspace {
        newestEvents[last.workspace] = last.seq
      }
      newestEvent = event
    }

    /// Ends the segment: completes `newestEvents` and the erasure facts.
    mutating func finish() {
      if let last = newestEvent { newestEvents[last.workspace] = last.seq }
      newestEvent = nil
      erasure.finish()
    }
  }

  /// What snapshots have done since the store was opened.
  public struct SnapshotStatus: Sendable, Equatable {
    /// The seq the newest snapshot on disk covers (0: none).
    public var seq: UInt64 = 0
    /// When this process last wrote one (Unix ms; 0: not yet).
    public var writtenAt: Int64 = 0
    /// Snapshots written, and attempts that failed (the state stays in the log).
    public var written: UInt64 = 0
    public var failed: UInt64 = 0
    /// The newest snapshot on disk is in an older format (an earlier version wrote it,
    /// without the secret check): the next snapshot is written even if nothing changed, so
    /// a directory left without writes across upgrades does not keep a format that a later
    /// version may no longer read.
    public var olderFormat = false
  }

  /// What snapshots have done; never waits for one being written.
  public var snapshotStatus: SnapshotStatus { snapshots.withLock { $0 } }

  /// What recovery did, for the start-up log.
  public struct RecoveryReport: Sendable {
    public var snapshot: String?
    public var snapshotSeq: UInt64 = 0
    public var persons = 0
    public var recordsReplayed = 0
    public var nextSeq: UInt64 = 1
    /// The last seq the start skipped (`skipSeqs`), nil when it skipped none.
    public var skippedThrough: UInt64?
    /// The snapshot loaded is in an older format (`SnapshotStatus.olderFormat`).
    public var snapshotInOlderFormat = false
    public var warnings: [String] = []
  }

  /// A seq is never reused (SPEC §3), yet the log a start finds may end before seqs that
  /// were handed out: a backup restored over newer data, or an acknowledged tail lost
  /// under `--fsync interval`/`none` that the change feed had sent. So every start of an
  /// existing directory (`next` > 1) skips the seqs from `next` up to the start's time in
  /// microseconds: the log writes a `SkippedSeqs` record taking them in front of its first
  /// batch (so a start that writes nothing writes nothing, and a full disk fails only that
  /// batch, as any), and the first change gets the seq after. Seqs handed out since the
  /// last start stay below that as long as fewer than a million were taken per second on
  /// average since then, which this server cannot reach. Nil when the log is new or the
  /// clock is behind it.
  private static func skippedSeqs(next: UInt64, clock: any WallClock)
    -> (record: [UInt8], through: UInt64)?
  {
    let now = clock.nowMillis()
    let through = UInt64(clamping: now) &* 1000
    guard next > 1, through >= next else { return nil }
    return (LogRecordCodec.skippedSeqs(at: now), through)
  }

  private init(
    store: SubscriptionStore, wal: WriteAheadLog, directory: String, fileSystem: any FileSystem,
    snapshotSeq: UInt64, snapshotInOlderFormat: Bool, changeRetentionMillis: Int64,
    clock: any WallClock,
    feedOptions: ChangeFeed.Options, log: @escaping @Sendable (String) -> Void
  ) {
    self.changeRetentionMillis = changeRetentionMillis
    self.clock = clock
    // Every retained segment, the covered history before the recovery's read included.
    let oldest = (try? WALSegment.list(directory: directory, fileSystem: fileSystem))?.first
    self.changeFeed = ChangeFeed(
      directory: directory, fileSystem: fileSystem, wal: wal, options: feedOptions,
      oldestRetained: oldest?.firstSeq ?? wal.status.nextSeq,
      // Weak: the store holds this feed (through its commit log), a strong capture would
      // keep both alive after close.
      lastEventSeq: { [weak store] in store?.lastEventSeq(workspace: $0) ?? 0 })
    self.store = store
    self.wal = wal
    self.directory = directory
    self.fileSystem = fileSystem
    self.log = log
    snapshots.withLock {
      $0.seq = snapshotSeq
      $0.olderFormat = snapshotInOlderFormat
    }
  }

  /// Opens `directory`: loads the newest valid snapshot (falling back to an older one,
  /// with a warning, when the newest is damaged), replays the log after it, and starts the
  /// log writer. Damage in the middle of the log stops here with an error naming file and
  /// offset, unless `truncateDamaged`.
  public static func open(
    directory: String, fileSystem: any FileSystem = PosixFileSystem(), clock: any WallClock,
    secret: [UInt8], fsync: FsyncPolicy, truncateDamaged: Bool,
    changeRetentionSeconds: Int = 86_400, feedOptions: ChangeFeed.Options = .init(),
    preallocateLogBytes: Int = 0, log: @escaping @Sendable (String) -> Void
  ) throws(StorageError) -> (DurableStore, RecoveryReport) {
    var report = RecoveryReport()
    for f in try SnapshotFile.removeTemporaryFiles(directory: directory, fileSystem: fileSystem) {
      report.warnings.append("removed \(f), an unfinished snapshot")
    }
    for f in try WALSegment.removeTemporaryFiles(directory: directory, fileSystem: fileSystem) {
      report.warnings.append("removed \(f), an unfinished log segment rewrite")
    }
    let secretCheck = IdentifierHasher(secret: secret).secretCheck
    let commitLog = WALCommitLog(appliesElsewhere: fsync == .always, secretCheck: secretCheck)
    var store = SubscriptionStore(
      clock: clock, secret: secret, log: commitLog, createDefaultWorkspace: false)

    // The newest snapshot that reads through; a damaged one is skipped with a warning.
    // One pass: records are restored as they are read, and a snapshot found damaged on
    // the way is dropped with what was restored from it (its records are only usable
    // once the file's checksum holds at the end). A record that does not restore is an
    // error, unless the file turns out damaged too (as a validation before loading
    // would have found).
    let snapshots = try SnapshotFile.list(directory: directory, fileSystem: fileSystem)
    for (n, info) in snapshots.sorted(by: { $0.seq > $1.seq }).enumerated() {
      if n > 0 {
        store = SubscriptionStore(
          clock: clock, secret: secret, log: commitLog, createDefaultWorkspace: false)
      }
      let restorer = SnapshotRestorer(store: store, fileName: info.name)
      var recordFailed = false
      func restoring(_ body: () throws(StorageError) -> Void) throws(StorageError) {
        do { try body() } catch {
          recordFailed = true
          throw error
        }
      }
      do throws(StorageError) {
        _ = try SnapshotFile.read(
          info.name, directory: directory, fileSystem: fileSystem,
          expecting: { [store] in store.reserve(persons: $0) }
        ) { (payload: UnsafeRawBufferPointer) throws(StorageError) in
          try restoring { () throws(StorageError) in try restorer.restore(payload) }
        }
        try restoring { () throws(StorageError) in try restorer.finish() }
      } catch {
        // A secret check read intact (its record's own checksum held) is believed even in a
        // file damaged further on: falling back would read the data under the wrong secret.
        if error.kind == .wrongSecret { throw error.explained(by: info.name) }
        var damage = error
        if recordFailed {
          let fileDamage: StorageError?
          do {
            _ = try SnapshotFile.validate(info.name, directory: directory, fileSystem: fileSystem)
            fileDamage = nil
          } catch {
            fileDamage = error
          }
          guard let fileDamage else { throw error }
          damage = fileDamage
        }
        let fallback = n + 1 < snapshots.count ? "an older snapshot" : "the whole log"
        report.warnings.append(
          "snapshot \(info.name) is damaged (\(damage)); falling back to \(fallback)")
        continue
      }
      store.restored(through: info.seq)
      report.snapshot = info.name
      report.snapshotSeq = info.seq
      report.persons = restorer.persons
      report.snapshotInOlderFormat = !restorer.sawSecretCheck
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
    let read: WALReadReport
    do {
      read = try readLog()
    } catch {
      // Say what led here (e.g. a damaged snapshot skipped), not only where it stopped.
      guard !report.warnings.isEmpty else { throw error }
      throw error.explained(by: "after: \(report.warnings.joined(separator: "; "))")
    }
    func readLog() throws(StorageError) -> WALReadReport {
      try WALReader.read(
        directory: directory, fileSystem: fileSystem, after: report.snapshotSeq, repair: true,
        truncateDamaged: truncateDamaged
      ) { (seq, payload) throws(StorageError) in
        let (_, command) = try LogRecordCodec.decode(payload)
        guard let command else { return }  // erased record
        // Suppression hashes keyed with another secret would silently match nothing.
        if LogRecordCodec.holdsSuppressionHashes(command),
          let check = try LogRecordCodec.secretCheck(in: payload), check != secretCheck
        {
          throw StorageError.wrongSecret.explained(by: "log record \(seq)")
        }
        let last = seq + ChangeEvents.seqCount(command) - 1
        do { try replaying.replay(command, seq: last) } catch {
          throw StorageError.damaged(
            WALSegmentFile(firstSeq: seq).name, at: 0,
            "record \(seq) does not apply to the recovered state: \(error)")
        }
        replayed += 1
      }
    }
    store.restored(through: read.lastSeq)
    report.recordsReplayed = replayed
    report.nextSeq = read.nextSeq
    report.warnings += read.warnings
    report.warnings += read.discarded.map { "discarded \($0), which followed damage" }

    let skip = skippedSeqs(next: read.nextSeq, clock: clock)
    report.skippedThrough = skip?.through
    let wal = try WriteAheadLog(
      directory: directory, fileSystem: fileSystem, nextSeq: read.nextSeq, skip: skip,
      options: .init(fsync: fsync, preallocateBytes: preallocateLogBytes, log: log))
    commitLog.attach(wal)
    do { try store.ensureDefaultWorkspace() } catch {
      throw StorageError(.unavailable, "cannot create workspace default: \(error)")
    }
    let durable = DurableStore(
      store: store, wal: wal, directory: directory, fileSystem: fileSystem,
      snapshotSeq: report.snapshotSeq, snapshotInOlderFormat: report.snapshotInOlderFormat,
      changeRetentionMillis: Int64(changeRetentionSeconds) * 1000, clock: clock,
      feedOptions: feedOptions, log: log)
    wal.notifyCommands(to: durable.changeFeed)
    return (durable, report)
  }

  /// Writes a snapshot of the committed state if anything changed since the last one,
  /// then deletes older snapshots and the log segments it covers. Returns its seq (the
  /// existing one's when nothing changed). Blocking: call it off the event loops.
  @discardableResult
  public func snapshot(force: Bool = false) throws(StorageError) -> UInt64 {
    try maintenance.withLock { (m: inout Maintenance) throws(StorageError) -> UInt64 in
      let seq = try writeSnapshot(force: force, &m)
      try deleteExpiredSegments(&m)
      return seq
    }
  }

  /// `writeSnapshotFile`, counting a failure in `snapshotStatus`. Under `maintenance`
  /// (its state passed as the proof), so one snapshot is written at a time.
  private func writeSnapshot(force: Bool, _: inout Maintenance) throws(StorageError) -> UInt64 {
    do { return try writeSnapshotFile(force: force) } catch {
      snapshots.withLock { $0.failed += 1 }
      throw error
    }
  }

  private func writeSnapshotFile(force: Bool) throws(StorageError) -> UInt64 {
    let (last, olderFormat) = snapshots.withLock { ($0.seq, $0.olderFormat) }
    let state = store.snapshotState()
    guard force || state.seq > last || last == 0 || olderFormat else { return last }
    let writer = try SnapshotWriter(directory: directory, seq: state.seq, fileSystem: fileSystem)
    do throws(StorageError) {
      try writer.append(.secretCheck(store.hasher.secretCheck))
      for w in state.workspaces {
        try writer.append(.workspace(state.snapshot(of: w)))
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
    let at = clock.nowMillis()
    snapshots.withLock { s in
      s.seq = state.seq
      s.writtenAt = at
      s.written += 1
      s.olderFormat = false
    }
    for old in try SnapshotFile.remove(
      except: state.seq, directory: directory, fileSystem: fileSystem)
    {
      log("removed \(old), replaced by the new snapshot")
    }
    return state.seq
  }

  /// Erasure compaction: snapshots (deleting every older snapshot), closes the active log
  /// segment, and rewrites every retained segment without the records of the persons
  /// removed since, but their removal records (the `forget` tombstones). Returns the
  /// snapshot's seq (for the erasure receipt): every removal through it is erased, as the
  /// snapshot comes first and every record it holds is in the segments closed after it.
  /// (Closed first, a removal applied between the two was in the snapshot but not in the
  /// rewritten segments, and a caller waiting through the snapshot's seq was answered
  /// before its person's records left the log.)
  public func compact() throws(StorageError) -> UInt64 {
    try maintenance.withLock { (m: inout Maintenance) throws(StorageError) -> UInt64 in
      let seq = try writeSnapshot(force: true, &m)
      let active = try rotateLog()
      try eraseRetained(before: active, &m)
      try deleteExpiredSegments(&m)
      return seq
    }
  }

  /// After a restart: finishes the erasure a crash interrupted, with a compaction, when
  /// a removal is newer than the newest snapshot (the crash came before its compaction's
  /// snapshot), an older snapshot is left (before the deletion of older snapshots) or a
  /// complete segment still holds a record of a person removed later (during the
  /// rewrite). Reads every retained segment. Returns the compaction's snapshot seq, nil
  /// when nothing was left to erase.
  public func finishInterruptedErasure() throws(StorageError) -> UInt64? {
    let outstanding = try maintenance.withLock { (m: inout Maintenance) throws(StorageError) in
      m.summaries.removeAll()  // read every segment as it is now (empty after a restart)
      let segments: [WALSegmentFile]
      let plan: ErasurePlan
      do throws(StorageError) {
        (segments, plan) = try erasurePlan(
          before: wal.status.activeSegment, dropDamaged: false, &m)
      } catch {
        // A segment no erasure can read: the compaction deals with it.
        guard error.kind == .damaged else { throw error }
        return true
      }
      if plan.newestRemoval > snapshotStatus.seq { return true }
      let snapshots = try SnapshotFile.list(directory: directory, fileSystem: fileSystem)
      if snapshots.count > 1 && plan.newestRemoval > 0 { return true }
      guard !plan.isEmpty else { return false }
      var candidates: [WALSegmentFile] = []
      for s in segments where plan.mayErase(in: try summary(s, &m).erasure) { candidates.append(s) }
      let left = WALSegment.readEach(candidates, threads: Self.segmentReaders) { s in
        Result { () throws(StorageError) in try holdsErasable(s, plan) }
      }
      for holds in left where try holds.get() { return true }
      // Nothing left to erase: the next compaction reads none of these for these removals.
      markErased(segments, through: plan.newestRemoval, &m)
      return false
    }
    return outstanding ? try compact() : nil
  }

  /// The complete segments before `active`, and the `ErasurePlan` of their records (from
  /// their summaries: a segment is read once, not at every erasure).
  ///
  /// A damaged segment cannot be read or rewritten, so it could hold a removed person's
  /// records for good. When the newest snapshot holds all its changes (every record of it
  /// has a seq at or below the snapshot's), `dropDamaged` deletes it and every older
  /// segment (history with a hole in it is of no use to the change feed): only change-feed
  /// history is lost, and an erasure does not wait for an operator. The same for a segment
  /// that does not end where the next one starts (a hole). A damaged segment the snapshot
  /// does not cover, or any with `dropDamaged` false, is an error.
  private func erasurePlan(
    before active: UInt64, dropDamaged: Bool, _ m: inout Maintenance
  ) throws(StorageError) -> ([WALSegmentFile], ErasurePlan) {
    var segments = try WALSegment.list(directory: directory, fileSystem: fileSystem)
      .filter { $0.firstSeq < active }
    readSummaries(segments, &m)
    let covered = snapshotStatus.seq
    var plan = ErasurePlan()
    var dropThrough: Int?
    for (i, s) in segments.enumerated() {
      let summary = try summary(s, &m)
      let next = i + 1 < segments.count ? segments[i + 1].firstSeq : active
      // A segment that does not lead up to the next one leaves a hole in the history.
      let problem =
        summary.damage.map { (Int64($0.offset), $0.reason) }
        ?? (summary.endSeq == next
          ? nil
          : (0, "it ends at seq \(summary.endSeq - 1) but the next segment starts at seq \(next)"))
      if let (offset, reason) = problem {
        guard dropDamaged, next <= covered &+ 1 else {
          throw StorageError.damaged(s.name, at: offset, reason)
        }
        dropThrough = i
        plan = ErasurePlan()  // what it saw goes with the segments
        continue
      }
      plan.observe(summary.erasure)
    }
    if let last = dropThrough {
      let dropped = segments[...last].map(\.name)
      changeFeed.expiringUnread(
        before: last + 1 < segments.count ? segments[last + 1].firstSeq : active)
      try WALSegment.delete(dropped, directory: directory, fileSystem: fileSystem)
      for s in segments[...last] { m.summaries[s.firstSeq] = nil }
      segments.removeFirst(last + 1)
      log(
        "erasure: deleted \(dropped.joined(separator: ", ")): \(dropped.last!) is damaged or "
          + "followed by a hole; the snapshot at seq \(covered) holds all their changes, so "
          + "only the change feed's history before seq "
          + "\(segments.first?.firstSeq ?? active) is lost")
    }
    return (segments, plan)
  }

  /// Rewrites the complete segments before `active` without the records `ErasurePlan`
  /// erases. A segment found damaged since it was summarized makes it read every segment
  /// again and start over, so the plan sees the damage (`erasurePlan`).
  private func eraseRetained(before active: UInt64, _ m: inout Maintenance)
    throws(StorageError)
  {
    do throws(StorageError) {
      try eraseRetainedOnce(before: active, &m)
    } catch {
      guard error.kind == .damaged else { throw error }
      m.summaries.removeAll()
      try eraseRetainedOnce(before: active, &m)
    }
  }

  private func eraseRetainedOnce(before active: UInt64, _ m: inout Maintenance)
    throws(StorageError)
  {
    let (segments, plan) = try erasurePlan(before: active, dropDamaged: true, &m)
    guard !plan.isEmpty else { return }
    var erased = Set<UInt64>()
    for s in segments {
      let old = try summary(s, &m)
      guard plan.mayErase(in: old.erasure) else { continue }
      // What is left, summarized as it is written: the persons erased from the segment
      // no longer make it a candidate.
      var left = SegmentSummary(firstSeq: s.firstSeq, endSeq: old.endSeq, damage: nil)
      let n = try WALSegment.rewrite(s, directory: directory, fileSystem: fileSystem) {
        (seq, payload) throws(StorageError) -> WALSegment.RewriteDecision in
        guard let command = try LogRecordCodec.decode(payload).command else { return .keep }
        switch plan.rewrite(seq: seq, command: command) {
        case nil:
          left.add(seq: seq, command: command)
          return .keep
        case .tombstone(let bare):
          left.add(seq: seq, command: bare)
          return .replace(LogRecordCodec.encode(bare, secretCheck: store.hasher.secretCheck))
        case .erase:
          erased.insert(seq)
          return .erase
        }
      }
      if n > 0 {
        left.finish()
        m.summaries[s.firstSeq] = left
        log("erasure: rewrote \(s.name): \(n) records erased or cut to their tombstone")
      }
    }
    markErased(segments, through: plan.newestRemoval, &m)
    changeFeed.erased(erased)
  }

  /// Notes that `segments` hold nothing of the persons removed through seq `removal`:
  /// later compactions look at them only for removals after it.
  private func markErased(
    _ segments: [WALSegmentFile], through removal: UInt64, _ m: inout Maintenance
  ) {
    for s in segments { m.summaries[s.firstSeq]?.erasure.erasedThrough = removal }
  }

  /// Leaves the active segment for a new one; returns the new one's first seq.
  private func rotateLog() throws(StorageError) -> UInt64 {
    let rotated = Mutex<Result<UInt64, StorageError>?>(nil)
    let done = DispatchSemaphore(value: 0)
    try wal.rotate { r in
      rotated.withLock { $0 = r }
      done.signal()
    }
    done.wait()
    return try rotated.withLock({ $0! }).get()
  }

  /// What is left in a complete segment, read once.
  private func summary(_ s: WALSegmentFile, _ m: inout Maintenance) throws(StorageError)
    -> SegmentSummary
  {
    if let cached = m.summaries[s.firstSeq] { return cached }
    let summary = try readSummary(s)
    m.summaries[s.firstSeq] = summary
    return summary
  }

  /// Reads the summaries of `segments` not read yet, several segments at once. One that
  /// cannot be read is left out, for `summary` to read again and throw in their order.
  private func readSummaries(_ segments: [WALSegmentFile], _ m: inout Maintenance) {
    let unread = segments.filter { m.summaries[$0.firstSeq] == nil }
    let read = WALSegment.readEach(unread, threads: Self.segmentReaders) { try? readSummary($0) }
    for (s, summary) in zip(unread, read) where summary != nil { m.summaries[s.firstSeq] = summary }
  }

  private func readSummary(_ s: WALSegmentFile) throws(StorageError) -> SegmentSummary {
    let scan = try WALSegment.scan(s, directory: directory, fileSystem: fileSystem)
    var summary = SegmentSummary(firstSeq: s.firstSeq, endSeq: scan.endSeq, damage: scan.damage)
    for i in 0..<scan.records.count {
      let seq = scan.seqs[i]
      try LogRecordCodec.withCommand(in: scan.payload(i)) { summary.add(seq: seq, command: $0) }
    }
    summary.finish()
    return summary
  }

  /// Whether segment `s` still holds a record `plan` would erase or cut to its tombstone.
  private func holdsErasable(_ s: WALSegmentFile, _ plan: ErasurePlan) throws(StorageError)
    -> Bool
  {
    let scan = try WALSegment.scan(s, directory: directory, fileSystem: fileSystem)
    var holds = false
    for i in 0..<scan.records.count where !holds {
      let seq = scan.seqs[i]
      try LogRecordCodec.withCommand(in: scan.payload(i)) {
        holds = plan.rewrite(seq: seq, command: $0) != nil
      }
    }
    return holds
  }

  /// Threads that read segments at once where many are read in one go: after a start,
  /// every retained segment into its summary, then the candidates of the erasure check.
  static let segmentReaders = min(4, cores)

  /// The CPUs this process may run on (its affinity mask), for the threads a start and a
  /// compaction use for a short while. A cgroup CPU quota (which `--loops` follows) only
  /// throttles such a burst, so it is not read here.
  static let cores = max(1, Int(CLinux_affinity_cpu_count()))

  /// Deletes the expired segments the newest snapshot covers (`RetentionPlan`). Returns
  /// true when an expired segment waits for a snapshot.
  @discardableResult
  private func deleteExpiredSegments(_ m: inout Maintenance) throws(StorageError) -> Bool {
    let now = clock.nowMillis()
    let cutoff = now - changeRetentionMillis
    let active = wal.status.activeSegment
    let segments = try WALSegment.list(directory: directory, fileSystem: fileSystem)
    var plan: [RetentionPlan.Segment] = []
    var expiredSoFar = true
    for s in segments {
      // Only a prefix of expired segments matters: read no further than the first live one.
      if expiredSoFar && s.firstSeq < active && s != segments.last {
        var t = try summary(s, &m).newestAt
        if let future = t, future > now {
          // Dated ahead of the clock, which has been set back since: it ages from when it
          // was first seen so, else it (and every segment after it) would stay for as long
          // as the clock was wrong, past the retention and past erasures of its ids.
          t = m.aheadSince[s.firstSeq, default: now]
          m.aheadSince[s.firstSeq] = t
        }
        if let t, t >= cutoff { expiredSoFar = false }
        plan.append(.init(firstSeq: s.firstSeq, newestAt: t))
      } else {
        expiredSoFar = false
        plan.append(.init(firstSeq: s.firstSeq, newestAt: .max))
      }
    }
    let (count, uncovered) = RetentionPlan.deletable(
      plan, cutoff: cutoff, snapshotSeq: snapshotStatus.seq)
    guard count > 0 else { return uncovered }
    var newestEvents: [String: UInt64] = [:]
    for s in segments[0..<count] {
      newestEvents.merge(try summary(s, &m).newestEvents) { max($0, $1) }
    }
    changeFeed.expiring(newestEvents: newestEvents)
    try WALSegment.delete(
      segments[0..<count].map(\.name), directory: directory, fileSystem: fileSystem)
    for s in segments[0..<count] {
      m.summaries[s.firstSeq] = nil
      m.aheadSince[s.firstSeq] = nil
      log("removed \(s.name): older than the change retention")
    }
    return uncovered
  }

  /// One retention pass (see the top of the file).
  public func retentionPass(rotateAfterMillis: Int64) throws(StorageError) {
    try maintenance.withLock { (m: inout Maintenance) throws(StorageError) in
      let now = clock.nowMillis()
      let st = wal.status
      if st.nextSeq > st.activeSegment {
        if m.active.seq != st.activeSegment { m.active = (st.activeSegment, now) }
        if now - m.active.since >= rotateAfterMillis { _ = try rotateLog() }
      }
      if try deleteExpiredSegments(&m) {
        _ = try writeSnapshot(force: false, &m)
        try deleteExpiredSegments(&m)
      }
    }
  }

  /// Starts the periodic retention pass (`erasureDeadlineSeconds`: `--erasure-deadline`).
  public func startMaintenance(erasureDeadlineSeconds: Int) {
    let bound = min(changeRetentionMillis, Int64(erasureDeadlineSeconds) * 1000)
    let pass = min(max(bound / 4, 500), 30_000)
    let queue = DispatchQueue(label: "subcenter.retention")
    let t = DispatchSource.makeTimerSource(queue: queue)
    t.schedule(deadline: .now() + .milliseconds(Int(pass)), repeating: .milliseconds(Int(pass)))
    t.setEventHandler { [weak self] in
      guard let self else { return }
      do { try self.retentionPass(rotateAfterMillis: 2 * pass) } catch {
        self.log("change retention pass failed: \(error)")
      }
    }
    t.resume()
    timer.withLock { $0 = MaintenanceTimer(timer: t, queue: queue) }
  }

  /// Stops the retention pass (waiting for one under way).
  public func stopMaintenance() {
    guard
      let t = timer.withLock({ m -> MaintenanceTimer? in
        defer { m = nil }
        return m
      })
    else { return }
    t.timer.cancel()
    t.queue.sync {}
  }

  /// Stops the log writer (after a final snapshot, if asked).
  public func close() {
    stopMaintenance()
    changeFeed.close()
    wal.close()
  }
}

/// The retention timer. `@unchecked Sendable`: set once, then only cancelled.
final class MaintenanceTimer: @unchecked Sendable {
  let timer: any DispatchSourceTimer
  let queue: DispatchQueue
  init(timer: any DispatchSourceTimer, queue: DispatchQueue) {
    self.timer = timer
    self.queue = queue
  }
}
