// The log writer on the fault-injecting file system: group commit, fsync policies,
// rotation, power cuts at every point, fsync and write errors, a full disk, and reading
// the log back after damage.

import Dispatch
import Foundation
import Glibc
import SubcenterCore
import SubcenterStore
import SubcenterTestSupport
import Synchronization
import Testing

/// Collects what the log answered.
final class Answers: Sendable {
  struct State {
    /// seq → the command acknowledged with it.
    var acked: [UInt64: Command] = [:]
    var failures: [StorageError] = []
    var refused: [StorageError] = []
  }

  let state = Mutex(State())
  let group = DispatchGroup()

  /// Appends `command` (taking `seqCount` seqs); its answer lands in `state`.
  func append(_ command: Command, to wal: WriteAheadLog, seqCount: UInt64 = 1) {
    group.enter()
    do {
      try wal.append(LogRecordCodec.encode(command), seqCount: seqCount) { result in
        self.state.withLock { s in
          switch result {
          case .success(let seq): s.acked[seq] = command
          case .failure(let e): s.failures.append(e)
          }
        }
        self.group.leave()
      }
    } catch {
      state.withLock { $0.refused.append(error) }
      group.leave()
    }
  }

  /// Appends `command` and waits for its answer (on its own, other threads may append).
  func appendAndWait(_ command: Command, to wal: WriteAheadLog) {
    let done = DispatchSemaphore(value: 0)
    group.enter()
    do {
      try wal.append(LogRecordCodec.encode(command)) { result in
        self.state.withLock { s in
          switch result {
          case .success(let seq): s.acked[seq] = command
          case .failure(let e): s.failures.append(e)
          }
        }
        self.group.leave()
        done.signal()
      }
      done.wait()
    } catch {
      state.withLock { $0.refused.append(error) }
      group.leave()
    }
  }

  /// Appends `command`, trying again while the log refuses it for the moment (it refuses
  /// appends while it completes a batch the full disk failed).
  func appendWhenAccepted(_ command: Command, to wal: WriteAheadLog) {
    for _ in 0..<1000 {
      let before = refused.count
      append(command, to: wal)
      wait()
      if refused.count == before { return }
      state.withLock { _ = $0.refused.removeLast() }
      usleep(1000)
    }
  }

  /// Appends the sample commands of `numbers` in order, waiting for the answers after
  /// every `batch` of them (so the writer makes batches of about that size).
  func append(samples numbers: ClosedRange<Int>, to wal: WriteAheadLog, waitingEvery batch: Int) {
    for i in numbers {
      append(Samples.command(i), to: wal)
      if i % batch == 0 { wait() }
    }
    wait()
  }

  /// Waits for every answer.
  func wait() {
    let r = group.wait(timeout: .now() + 30)
    precondition(r == .success, "the log did not answer within 30 s")
  }

  var acked: [UInt64: Command] { state.withLock { $0.acked } }
  var failures: [StorageError] { state.withLock { $0.failures } }
  var refused: [StorageError] { state.withLock { $0.refused } }
}

/// Reads the whole log of `dir` back: seq → command, in order.
func readLog(
  _ fs: any FileSystem, _ dir: String = "/data", after: UInt64 = 0, repair: Bool = true,
  truncateDamaged: Bool = false
) throws -> (report: WALReadReport, records: [(UInt64, Command)]) {
  var records: [(UInt64, Command)] = []
  let report = try WALReader.read(
    directory: dir, fileSystem: fs, after: after, repair: repair,
    truncateDamaged: truncateDamaged
  ) { (seq, payload) throws(StorageError) in
    let (stored, command) = try LogRecordCodec.decode(payload)
    precondition(stored == seq)
    // Erased records (no command) are left out.
    if let command { records.append((seq, command)) }
  }
  return (report, records)
}

/// Asks `wal` for a rotation and waits for it: the new active segment's first seq, nil
/// if it failed.
func rotateAndWait(_ wal: WriteAheadLog) throws -> UInt64? {
  let rotated = Mutex<UInt64?>(nil)
  let done = DispatchSemaphore(value: 0)
  try wal.rotate { r in
    rotated.withLock { $0 = try? r.get() }
    done.signal()
  }
  done.wait()
  return rotated.withLock { $0 }
}

func dataDirectory() throws -> FaultyFileSystem {
  let fs = FaultyFileSystem()
  try fs.createDirectory("/data")
  return fs
}

@Suite struct WriteAheadLogTests {
  /// With `FsyncPolicy.always`, the writer thread is named `log-writer` and runs under
  /// SCHED_BATCH (it does not preempt the event loop on its core when it wakes: see
  /// "Scheduling" in WriteAheadLog.swift), as the kernel reports in /proc/self/task/*/stat.
  @Test func theWriterThreadIsNamedAndRunsUnderBatchScheduling() throws {
    let fs = try dataDirectory()
    let wal = try WriteAheadLog(directory: "/data", fileSystem: fs, nextSeq: 1)
    defer { wal.close() }
    let answers = Answers()
    answers.appendAndWait(Samples.command(1), to: wal)  // the writer thread has started
    // Other tests' logs (some under other policies) may be open too.
    let policies = threadPolicies(named: "log-writer")
    #expect(policies.contains(3), "scheduling policies of the log writers: \(policies)")
  }

  /// With a readiness deferral, an append that finds the writer asleep hands the wake-up to the
  /// deferral: nothing is written until it runs it, then every record appended meanwhile
  /// goes in one batch. A deferral that declines (another thread) leaves the appender to
  /// wake the writer at once.
  @Test func aDeferredWakeWritesWhenTheDeferralRunsIt() throws {
    let fs = try dataDirectory()
    let wal = try WriteAheadLog(directory: "/data", fileSystem: fs, nextSeq: 1)
    let answers = Answers()
    answers.appendAndWait(Samples.command(1), to: wal)
    let held = Mutex<[@Sendable () -> Void]>([])
    let accept = Atomic<Bool>(true)
    wal.deferReadiness { signal in
      guard accept.load(ordering: .relaxed) else { return false }
      held.withLock { $0.append(signal) }
      return true
    }
    usleep(20_000)  // the writer goes back to sleep after record 1
    for i in 2...5 { answers.append(Samples.command(i), to: wal) }
    usleep(100_000)
    #expect(held.withLock { $0.count } == 1, "one wake-up for the four appends")
    #expect(answers.acked.count == 1, "nothing written before the deferred wake-up ran")
    let syncs = fs.count(.sync)
    for signal in held.withLock({ $0 }) { signal() }
    answers.wait()
    #expect(answers.acked.count == 5)
    #expect(fs.count(.sync) == syncs + 1, "records 2-5 in one batch, under one fsync")

    accept.store(false, ordering: .relaxed)
    usleep(20_000)
    answers.appendAndWait(Samples.command(6), to: wal)
    #expect(answers.acked.count == 6)
    #expect(held.withLock { $0.count } == 1)
    wal.close()
  }

  /// With a readiness deferral, the writer takes only records whose deferred task has run
  /// (their event-loop pass ended), even when it comes back from an fsync and finds others
  /// queued: they wait for their task and then go in one batch. A rotation asked for
  /// meanwhile comes after the ready records; closing writes everything queued.
  @Test func theWriterTakesOnlyRecordsMadeReady() throws {
    let fs = try dataDirectory()
    let wal = try WriteAheadLog(directory: "/data", fileSystem: fs, nextSeq: 1)
    let answers = Answers()
    let held = Mutex<[@Sendable () -> Void]>([])
    wal.deferReadiness { task in
      held.withLock { $0.append(task) }
      return true
    }
    func runHeld() {
      for task in held.withLock({ h in
        defer { h = [] }; return h
      }) { task() }
    }
    fs.setSyncLatency(microseconds: 100_000)
    answers.append(Samples.command(1), to: wal)
    runHeld()
    usleep(30_000)  // record 1 is in its slow fsync
    for i in 2...4 { answers.append(Samples.command(i), to: wal) }
    #expect(held.withLock { $0.count } == 1, "one task for the three appends")
    usleep(200_000)  // the writer is back from record 1's fsync
    #expect(answers.acked.count == 1, "records 2-4 wait for their task")
    fs.setSyncLatency(microseconds: 0)
    let syncs = fs.count(.sync)
    runHeld()
    answers.wait()
    #expect(answers.acked.count == 4)
    #expect(fs.count(.sync) == syncs + 1, "records 2-4 in one batch, under one fsync")

    // A rotation waits for no record that is not ready; records queued before it are.
    answers.append(Samples.command(5), to: wal)
    #expect(try rotateAndWait(wal) == 6, "record 5, queued before the rotation, precedes it")
    answers.append(Samples.command(6), to: wal)
    usleep(50_000)
    #expect(answers.acked.count == 5, "record 6 waits for its task")
    wal.close()  // writes what is queued, ready or not
    answers.wait()
    #expect(answers.acked.count == 6)
    let (report, records) = try readLog(fs)
    #expect(report.lastSeq == 6 && records.map(\.0) == Array(1...6))
  }

  @Test func appendsAreWrittenInOrderAndReadBack() throws {
    let fs = try dataDirectory()
    let wal = try WriteAheadLog(directory: "/data", fileSystem: fs, nextSeq: 1)
    let answers = Answers()
    for i in 1...50 { answers.append(Samples.command(i), to: wal) }
    answers.wait()
    #expect(answers.acked.count == 50)
    for i in 1...50 { #expect(answers.acked[UInt64(i)] == Samples.command(i)) }
    #expect(wal.status.durableThrough == 50)
    #expect(wal.status.nextSeq == 51)
    wal.close()
    #expect(throws: StorageError.self) { try wal.append([1]) { _ in } }

    let (report, records) = try readLog(fs)
    #expect(report.lastSeq == 50 && report.warnings.isEmpty)
    #expect(records.map(\.0) == Array(1...50))
    #expect(records.map(\.1) == (1...50).map(Samples.command))

    // Every sample command survives the trip through the log.
    let wal2 = try WriteAheadLog(directory: "/data", fileSystem: fs, nextSeq: report.nextSeq)
    let more = Answers()
    for c in Samples.commands { more.append(c, to: wal2) }
    more.wait()
    wal2.close()
    let (_, all) = try readLog(fs)
    #expect(all.suffix(Samples.commands.count).map(\.1) == Samples.commands)
    #expect(try WALSegment.list(directory: "/data", fileSystem: fs).map(\.firstSeq) == [1, 51])
  }

  @Test func groupCommitSharesOneSync() throws {
    let fs = try dataDirectory()
    fs.setSyncLatency(microseconds: 2000)
    let wal = try WriteAheadLog(directory: "/data", fileSystem: fs, nextSeq: 1)
    let syncsBefore = fs.count(.sync)
    let answers = Answers()
    runThreads(8) { t in
      for i in 0..<100 { answers.appendAndWait(Samples.command(t * 1000 + i), to: wal) }
    }
    answers.wait()
    let status = wal.status
    let counters = status.counters
    wal.close()
    let syncs = fs.count(.sync) - syncsBefore
    #expect(answers.acked.count == 800)
    #expect(syncs < 400, "800 records took \(syncs) syncs")
    // The counters /metrics shows: one write and one sync a batch, each sync's time.
    #expect(counters.records == 800)
    #expect(counters.syncs == UInt64(syncs))
    #expect(counters.batches == counters.syncs)
    #expect(counters.syncNanos >= counters.syncs * 2_000_000)
    #expect(counters.failedBatches == 0)
    let segment = try fs.size(fs.open("/data/" + WALSegment.fileName(firstSeq: 1)))
    #expect(counters.bytes == UInt64(segment) - UInt64(WALSegment.headerSize))
    #expect(status.activeDurableBytes == Int(segment))
    let (_, records) = try readLog(fs)
    #expect(records.count == 800)
    // Each thread's records are in the order it appended them.
    for t in 0..<8 {
      let mine = records.compactMap { r -> Int? in
        guard case .setPreference(let p) = r.1 else { return nil }
        return Int(p.at) / 1000 == t ? Int(p.at) : nil
      }
      #expect(mine == mine.sorted())
    }
  }

  @Test func rotationStartsNewSegments() throws {
    let fs = try dataDirectory()
    let wal = try WriteAheadLog(
      directory: "/data", fileSystem: fs, nextSeq: 1,
      options: .init(segmentSize: 1024))
    let answers = Answers()
    answers.append(samples: 1...200, to: wal, waitingEvery: 10)
    let segments = try WALSegment.list(directory: "/data", fileSystem: fs)
    #expect(segments.count > 5)
    #expect(segments.first?.firstSeq == 1)
    // Every segment but a batch's overflow stays within the size.
    for s in segments.dropLast() {
      #expect((fs.contents("/data/" + s.name)?.count ?? 0) <= 1024 + 1024)
    }
    // Each segment's name and creation are durable (directory synced at rotation).
    for s in segments { #expect(fs.durableContents("/data/" + s.name) != nil) }

    // An explicit rotation closes the active segment.
    #expect(try rotateAndWait(wal) == 201)
    #expect(wal.status.activeSegment == 201)

    // Segments a snapshot at seq 150 covers can go; never the active one.
    let removed = try wal.removeSegments(through: 150)
    #expect(!removed.isEmpty)
    let left = try WALSegment.list(directory: "/data", fileSystem: fs)
    #expect(left.first!.firstSeq <= 151)
    #expect(left.last!.firstSeq == 201)
    wal.close()
    let (report, records) = try readLog(fs, after: 150)
    #expect(records.map(\.0) == Array(151...200))
    #expect(report.nextSeq == 201)
  }

  /// With and without preallocated zeros ahead of the records.
  @Test(arguments: [0, 300])
  func acknowledgedRecordsSurviveACrashAtAnyPoint(preallocate: Int) throws {
    // Crash at the nth changing call of the writer (random prefix of unsynced data kept),
    // for every n, with four threads appending.
    var crashed = 0
    for n in 1...120 {
      let fs = try dataDirectory()
      let wal = try WriteAheadLog(
        directory: "/data", fileSystem: fs, nextSeq: 1,
        options: .init(segmentSize: 700, preallocateBytes: preallocate))
      fs.crash(afterOperations: n, seed: UInt64(n))
      let answers = Answers()
      // Each thread waits for its answer before its next append, as callers of an RPC do.
      runThreads(4) { t in
        for i in 0..<25 { answers.appendAndWait(Samples.command(t * 100 + i), to: wal) }
      }
      answers.wait()
      wal.close()
      if fs.crashes == 0 {
        fs.crash(seed: UInt64(n))
      } else {
        crashed += 1
      }
      fs.restart()

      let (report, records) = try readLog(fs)
      let recovered = Dictionary(uniqueKeysWithValues: records)
      for (seq, command) in answers.acked {
        #expect(recovered[seq] == command, "crash at call \(n): acknowledged seq \(seq) lost")
      }
      // Nothing that was never sent appears.
      let sent = Set((0..<4).flatMap { t in (0..<25).map { t * 100 + $0 } }.map { Int64($0) })
      for (_, c) in records {
        guard case .setPreference(let p) = c else {
          Issue.record("unexpected record \(c)")
          continue
        }
        #expect(sent.contains(p.at))
      }
      // The log goes on after recovery, and the next start reads it cleanly.
      let wal2 = try WriteAheadLog(directory: "/data", fileSystem: fs, nextSeq: report.nextSeq)
      let next = Answers()
      next.append(Samples.command(9999), to: wal2)
      next.wait()
      #expect(next.acked.keys.first == report.nextSeq)
      wal2.close()
      let (again, all) = try readLog(fs)
      #expect(again.warnings.isEmpty, "crash at call \(n): \(again.warnings)")
      #expect(all.count == records.count + 1)
    }
    // Most runs crashed while writing (the rest after closing).
    #expect(crashed > 80, "only \(crashed) runs crashed while writing")
  }

  @Test func fsyncFailureFailsTheLogForGood() throws {
    let fs = try dataDirectory()
    let messages = Mutex<[String]>([])
    let wal = try WriteAheadLog(
      directory: "/data", fileSystem: fs, nextSeq: 1,
      options: .init(log: { m in messages.withLock { $0.append(m) } }))
    let first = Answers()
    first.append(Samples.command(1), to: wal)
    first.wait()
    #expect(first.acked.count == 1)

    fs.fail(.sync)
    let second = Answers()
    second.append(Samples.command(2), to: wal)
    second.wait()
    #expect(second.acked.isEmpty)
    #expect(second.failures.first?.kind == .unavailable)
    #expect(wal.status.failure != nil)
    #expect(wal.status.counters.records == 1)
    #expect(wal.status.counters.failedBatches == 1)
    #expect(messages.withLock { $0 }.contains { $0.contains("restart") })

    // Failed for good: later appends are refused at once, even though syncs work again.
    let third = Answers()
    for i in 3...5 { third.append(Samples.command(i), to: wal) }
    third.wait()
    #expect(third.refused.count == 3)
    #expect(third.refused.allSatisfy { $0.kind == .unavailable })
    #expect(third.refused.first?.coreError.kind == .unavailable)
    wal.close()

    // The acknowledged record is there after a power cut; the failed one is not.
    fs.crash()
    fs.restart()
    let (_, records) = try readLog(fs)
    #expect(records.map(\.0) == [1])
  }

  @Test func writeErrorFailsTheLogForGood() throws {
    let fs = try dataDirectory()
    let wal = try WriteAheadLog(directory: "/data", fileSystem: fs, nextSeq: 1)
    fs.fail(.write, nth: 2)
    let answers = Answers()
    answers.append(Samples.command(1), to: wal)
    answers.wait()
    answers.append(Samples.command(2), to: wal)
    answers.wait()
    answers.append(Samples.command(3), to: wal)
    answers.wait()
    #expect(answers.acked.keys.sorted() == [1])
    #expect(answers.failures.count == 1)
    #expect(answers.refused.count == 1)
    wal.close()
  }

  @Test func preallocatedZerosAreCutWhenASegmentIsLeftAndAtClose() throws {
    let fs = try dataDirectory()
    let wal = try WriteAheadLog(
      directory: "/data", fileSystem: fs, nextSeq: 1,
      options: .init(segmentSize: 1024, preallocateBytes: 256))
    let answers = Answers()
    answers.append(samples: 1...60, to: wal, waitingEvery: 5)
    let segments = try WALSegment.list(directory: "/data", fileSystem: fs)
    #expect(segments.count > 2)
    func scan(_ s: WALSegmentFile) throws -> SegmentScan {
      try WALSegment.scan(s, directory: "/data", fileSystem: fs)
    }
    // Left segments end with their last record; the active one in zeros, up to a chunk
    // (a chunk, or a step of a sixteenth when zeros were added ahead).
    for s in segments.dropLast() {
      let left = try scan(s)
      #expect(left.damage == nil && left.unwrittenBytes == 0)
    }
    let active = try scan(segments.last!)
    #expect(active.damage == nil && active.unwrittenBytes > 0)
    #expect(active.bytes.count % 16 == 0)
    // Crashed now (the files as they are): recovery reads every record and cuts the
    // zeros, without a warning.
    let copy = try dataDirectory()
    for s in segments { copy.setContents("/data/" + s.name, fs.contents("/data/" + s.name)!) }
    let (report, records) = try readLog(copy)
    #expect(report.warnings.isEmpty)
    #expect(records.count == 60)
    #expect(
      try WALSegment.scan(segments.last!, directory: "/data", fileSystem: copy)
        .unwrittenBytes == 0)
    // Closed: the active segment is cut back too.
    wal.close()
    #expect(try scan(segments.last!).unwrittenBytes == 0)
    #expect(try readLog(fs).records.count == 60)
  }

  /// With nothing to write, the writer keeps at least half a chunk of zeros ahead of the
  /// records, adding a sixteenth of a chunk at a time, before a batch needs them.
  @Test func zerosArePreallocatedAheadWhileTheWriterIsIdle() throws {
    let fs = try dataDirectory()
    let chunk = 4096
    let wal = try WriteAheadLog(
      directory: "/data", fileSystem: fs, nextSeq: 1, options: .init(preallocateBytes: chunk))
    let answers = Answers()
    // Records up to past half the first chunk (which the first batch preallocated).
    var i = 1
    repeat {
      answers.appendAndWait(Samples.command(i), to: wal)
      i += 1
    } while try activeSegmentScan(fs).validEnd < chunk * 6 / 10 && i < 200
    var scan = try activeSegmentScan(fs)
    for _ in 0..<200 where scan.unwrittenBytes < chunk / 2 {
      usleep(5_000)
      scan = try activeSegmentScan(fs)
    }
    #expect(scan.bytes.count > chunk, "zeros added before the records needed them")
    #expect(scan.unwrittenBytes >= chunk / 2 && scan.unwrittenBytes < chunk / 2 + chunk / 16)
    #expect(scan.bytes.count % (chunk / 16) == 0)
    wal.close()
    #expect(try readLog(fs).records.count == i - 1)
  }

  /// On a full disk a step of zeros the writer tries to add ahead is refused and cut back;
  /// records written over zeros already there go on; once space is back and the records
  /// have passed that step, zeros are added ahead again. At close the segment is cut to
  /// its records.
  @Test func zerosAddedAheadOnAFullDisk() throws {
    let fs = try dataDirectory()
    let chunk = 4096
    let wal = try WriteAheadLog(
      directory: "/data", fileSystem: fs, nextSeq: 1, options: .init(preallocateBytes: chunk))
    let answers = Answers()
    answers.appendAndWait(Samples.command(1), to: wal)
    // At least half a chunk ahead once the writer is idle (its first batch preallocated a
    // chunk, or it added zeros ahead before that batch came).
    for _ in 0..<1000 where try activeSegmentScan(fs).unwrittenBytes < chunk / 2 { usleep(2_000) }
    let size = try activeSegmentScan(fs).bytes.count
    #expect(try activeSegmentScan(fs).unwrittenBytes >= chunk / 2)
    fs.setFreeSpace(0)
    let cutsBefore = fs.count(.truncate)
    var i = 2
    repeat {
      answers.appendAndWait(Samples.command(i), to: wal)
      i += 1
    } while try activeSegmentScan(fs).unwrittenBytes >= chunk / 2 && i < 200
    // Idle, with less than half a chunk ahead: the writer tries to add zeros, the disk
    // refuses them, and the writer cuts the file back.
    for _ in 0..<1000 where fs.count(.truncate) == cutsBefore { usleep(2_000) }
    #expect(fs.count(.truncate) > cutsBefore, "no zeros were tried")
    #expect(try activeSegmentScan(fs).bytes.count == size)
    #expect(answers.failures.isEmpty, "records over preallocated zeros need no space")
    // Space back: more records, and zeros are added ahead again.
    fs.setFreeSpace(nil)
    let start = i
    repeat {
      answers.appendAndWait(Samples.command(i), to: wal)
      i += 1
    } while try activeSegmentScan(fs).bytes.count <= size && i < start + 200
    #expect(try activeSegmentScan(fs).bytes.count > size, "zeros added ahead again")
    #expect(answers.failures.isEmpty)
    wal.close()
    let records = try expectCutToRecordsAndRecovered(fs, acked: answers.acked)
    #expect(records == i - 1)
  }

  /// Zeros added ahead never take a segment past its size.
  @Test func zerosPreallocatedAheadStopAtTheSegmentSize() throws {
    let fs = try dataDirectory()
    let wal = try WriteAheadLog(
      directory: "/data", fileSystem: fs, nextSeq: 1,
      options: .init(segmentSize: 1000, preallocateBytes: 4096))
    let answers = Answers()
    for i in 1...40 {
      answers.appendAndWait(Samples.command(i), to: wal)
      usleep(1_000)  // idle: room to add zeros
      for s in try WALSegment.list(directory: "/data", fileSystem: fs) {
        #expect(try WALSegment.scan(s, directory: "/data", fileSystem: fs).bytes.count <= 1000)
      }
    }
    wal.close()
    #expect(try readLog(fs).records.count == 40)
  }

  @Test func preallocationOnAFullDiskFallsBackToPlainWrites() throws {
    let fs = try dataDirectory()
    let wal = try WriteAheadLog(
      directory: "/data", fileSystem: fs, nextSeq: 1,
      options: .init(preallocateBytes: 4096))
    // Room for a few records, not for a chunk of zeros.
    fs.setFreeSpace(300)
    let answers = Answers()
    for i in 1...2 { answers.appendAndWait(Samples.command(i), to: wal) }
    #expect(answers.acked.keys.sorted() == [1, 2])
    for i in 3...12 { answers.appendAndWait(Samples.command(i), to: wal) }
    #expect(!answers.failures.isEmpty && answers.failures.allSatisfy { $0.kind == .noSpace })
    #expect(wal.status.failure == nil)
    fs.setFreeSpace(nil)
    answers.appendWhenAccepted(Samples.command(13), to: wal)
    let acked = answers.acked
    #expect(acked.values.contains(Samples.command(13)))
    wal.close()
    // Closed: cut back to its records, whatever the failed zeros left.
    try expectCutToRecordsAndRecovered(fs, acked: acked)
  }

  @Test func fullDiskFailsTheBatchThenRecovers() throws {
    let fs = try dataDirectory()
    let messages = Mutex<[String]>([])
    let wal = try WriteAheadLog(
      directory: "/data", fileSystem: fs, nextSeq: 1,
      options: .init(log: { m in messages.withLock { $0.append(m) } }))
    let answers = Answers()
    for i in 1...3 { answers.append(Samples.command(i), to: wal) }
    answers.wait()

    // Room for part of one record: the write fails half done and is cut back.
    fs.setFreeSpace(30)
    for i in 4...6 {
      answers.append(Samples.command(i), to: wal)
      answers.wait()
    }
    #expect(answers.acked.keys.sorted() == [1, 2, 3])
    #expect(answers.failures.count + answers.refused.count == 3)
    #expect(answers.failures.allSatisfy { $0.kind == .noSpace })
    #expect(answers.failures.first?.coreError.kind == .unavailable)
    #expect(wal.status.failure == nil)
    #expect(wal.status.counters.failedBatches == UInt64(answers.failures.count))

    // Space is back: writes resume by themselves, with the next seqs.
    fs.setFreeSpace(nil)
    for i in 7...9 { answers.appendWhenAccepted(Samples.command(i), to: wal) }
    #expect(answers.acked.keys.sorted() == [1, 2, 3, 4, 5, 6])
    #expect(answers.acked[4] == Samples.command(7))
    #expect(messages.withLock { $0 }.count == 2)  // out of space, then space is back
    wal.close()

    fs.crash()
    fs.restart()
    let (report, records) = try readLog(fs)
    #expect(report.warnings.isEmpty)
    #expect(records.map(\.1) == [1, 2, 3, 7, 8, 9].map(Samples.command))
  }

  /// A start's skipped seqs (`skip`) are written in front of the first batch only: a log
  /// that writes nothing writes no record, and a first batch the full disk refuses leaves
  /// the skip to the next, whose records get the seqs after it.
  @Test func skippedSeqsGoWithTheFirstBatchThatIsWritten() throws {
    let fs = try dataDirectory()
    let skip = (record: LogRecordCodec.skippedSeqs(at: 1), through: UInt64(1000))
    let idle = try WriteAheadLog(directory: "/data", fileSystem: fs, nextSeq: 5, skip: skip)
    idle.close()
    #expect(try readLog(fs, after: 4).report.recordsRead == 0)
    #expect(try readLog(fs, after: 4).report.nextSeq == 5)

    let wal = try WriteAheadLog(directory: "/data", fileSystem: fs, nextSeq: 5, skip: skip)
    let answers = Answers()
    fs.setFreeSpace(30)
    answers.append(Samples.command(1), to: wal)
    answers.wait()
    #expect(answers.acked.isEmpty && answers.failures.count == 1)
    fs.setFreeSpace(nil)
    answers.appendWhenAccepted(Samples.command(2), to: wal)
    answers.append(Samples.command(3), to: wal)
    answers.wait()
    #expect(answers.acked == [1001: Samples.command(2), 1002: Samples.command(3)])
    wal.close()

    var skipped: [(UInt64, Bool)] = []
    let report = try WALReader.read(
      directory: "/data", fileSystem: fs, after: 4, repair: false, truncateDamaged: false
    ) { (seq, payload) throws(StorageError) in
      skipped.append((seq, try LogRecordCodec.isSkippedSeqs(payload)))
    }
    #expect(skipped.map(\.0) == [5, 1001, 1002] && skipped.map(\.1) == [true, false, false])
    #expect(report.nextSeq == 1003)
  }

  /// A log of 300-byte segments holding samples 1-4, one batch each (the next records
  /// soon make it rotate).
  private func smallSegmentLog() throws -> (FaultyFileSystem, WriteAheadLog, Answers) {
    let fs = try dataDirectory()
    let wal = try WriteAheadLog(
      directory: "/data", fileSystem: fs, nextSeq: 1, options: .init(segmentSize: 300))
    let answers = Answers()
    for i in 1...4 {
      answers.append(Samples.command(i), to: wal)
      answers.wait()
    }
    return (fs, wal, answers)
  }

  @Test func fullDiskAtRotationFailsTheBatchThenRecovers() throws {
    let (fs, wal, answers) = try smallSegmentLog()
    fs.setFreeSpace(0)
    for i in 5...8 {
      answers.append(Samples.command(i), to: wal)
      answers.wait()
    }
    fs.setFreeSpace(nil)
    for i in 9...12 { answers.appendWhenAccepted(Samples.command(i), to: wal) }
    wal.close()
    #expect(wal.status.failure == nil)
    let (report, records) = try readLog(fs)
    #expect(report.warnings.isEmpty)
    #expect(records.map(\.1) == [1, 2, 3, 4, 9, 10, 11, 12].map(Samples.command))
    #expect(records.map(\.0) == Array(1...8))
  }

  @Test func outOfFileDescriptorsAtRotationFailsOnlyThatThenRecovers() throws {
    let (fs, wal, answers) = try smallSegmentLog()
    // A rotation asked for (as an erasure compaction does) cannot make its segment: it
    // fails, the active segment stays, and writes go on.
    fs.fail(.create, errno: EMFILE)
    #expect(try rotateAndWait(wal) == nil)
    #expect(wal.status.failure == nil)
    answers.append(Samples.command(5), to: wal)
    answers.wait()
    // A rotation the segment size asks for: that batch is refused, the next ones are not.
    fs.fail(.create, errno: ENFILE)
    for i in 6...12 { answers.appendWhenAccepted(Samples.command(i), to: wal) }
    let (acked, failures) = answers.state.withLock { ($0.acked.count, $0.failures.count) }
    #expect(acked == 11 && failures == 1)
    #expect(try rotateAndWait(wal) != nil)
    wal.close()
    #expect(wal.status.failure == nil)
    let (report, records) = try readLog(fs)
    #expect(report.warnings.isEmpty)
    #expect(records.count == 11)
    #expect(records.map(\.0) == Array(1...11))
  }

  @Test func intervalPolicySyncsLater() throws {
    let fs = try dataDirectory()
    let wal = try WriteAheadLog(
      directory: "/data", fileSystem: fs, nextSeq: 1,
      options: .init(fsync: .interval(milliseconds: 50)))
    let answers = Answers()
    let syncs = fs.count(.sync)
    for i in 1...20 { answers.append(Samples.command(i), to: wal) }
    answers.wait()
    #expect(answers.acked.count == 20)
    // Acknowledged once written; synced within the interval even with no more writes.
    var waited = 0
    while wal.status.durableThrough < 20 && waited < 2000 {
      usleep(10_000)
      waited += 10
    }
    #expect(wal.status.durableThrough == 20)
    #expect(fs.count(.sync) - syncs < 10)
    wal.close()
  }

  @Test func nonePolicySyncsOnlyAtRotationAndClose() throws {
    let fs = try dataDirectory()
    let wal = try WriteAheadLog(
      directory: "/data", fileSystem: fs, nextSeq: 1, options: .init(fsync: .none))
    let syncs = fs.count(.sync)
    let answers = Answers()
    for i in 1...20 { answers.append(Samples.command(i), to: wal) }
    answers.wait()
    #expect(answers.acked.count == 20)
    #expect(fs.count(.sync) == syncs)
    #expect(wal.status.durableThrough == 0)
    // Readers may read what is written (the change feed follows it).
    #expect(wal.status.readableThrough == 20)
    #expect(wal.status.activeReadableBytes > WALSegment.headerSize)
    #expect(wal.status.counters.syncs == 0)
    #expect(wal.status.counters.records == 20)
    #expect(wal.status.activeDurableBytes == WALSegment.headerSize)
    wal.close()
    #expect(fs.count(.sync) == syncs + 1)
    fs.crash()
    fs.restart()
    #expect(try readLog(fs).records.count == 20)
  }

  @Test func policyParsing() {
    #expect(FsyncPolicy("always") == .always)
    #expect(FsyncPolicy("none") == FsyncPolicy.none)
    #expect(FsyncPolicy("interval:1000") == .interval(milliseconds: 1000))
    #expect(FsyncPolicy("interval:0") == nil)
    #expect(FsyncPolicy("interval:1") == .interval(milliseconds: 1))
    #expect(FsyncPolicy("interval:60000") == .interval(milliseconds: 60_000))
    #expect(FsyncPolicy("interval:60001") == nil)
    #expect(FsyncPolicy("interval:") == nil)
    #expect(FsyncPolicy("sometimes") == nil)
    #expect(FsyncPolicy.interval(milliseconds: 5).description == "interval:5")
  }

  @Test func refusesToWriteOverASegmentWithRecords() throws {
    let fs = try dataDirectory()
    let wal = try WriteAheadLog(directory: "/data", fileSystem: fs, nextSeq: 1)
    let answers = Answers()
    answers.append(Samples.command(1), to: wal)
    answers.wait()
    wal.close()
    #expect(throws: StorageError.self) {
      _ = try WriteAheadLog(directory: "/data", fileSystem: fs, nextSeq: 1)
    }
    // A start that never wrote a record leaves a segment that may be reused.
    let again = try WriteAheadLog(directory: "/data", fileSystem: fs, nextSeq: 2)
    again.close()
    let reuse = try WriteAheadLog(directory: "/data", fileSystem: fs, nextSeq: 2)
    reuse.close()
    #expect(try readLog(fs).records.count == 1)
  }
}

@Suite struct WALReaderTests {
  /// A closed log of `count` records in `/data`, in segments of `segmentSize`.
  private func log(count: Int, segmentSize: Int = 64 << 20) throws -> FaultyFileSystem {
    let fs = try dataDirectory()
    let wal = try WriteAheadLog(
      directory: "/data", fileSystem: fs, nextSeq: 1, options: .init(segmentSize: segmentSize))
    let answers = Answers()
    for i in 1...count {
      answers.append(Samples.command(i), to: wal)
      answers.wait()
    }
    wal.close()
    return fs
  }

  @Test func truncationAtEveryByteOfTheLastTwoRecordsRecoversTheExactPrefix() throws {
    let source = try log(count: 10)
    let name = WALSegment.fileName(firstSeq: 1)
    let full = source.contents("/data/" + name)!
    let scan = WALSegment.scan(full, file: name, firstSeq: 1)
    let starts = scan.records.map { $0.lowerBound - RecordFrame.headerSize }
    let boundaries = starts + [full.count]
    for cut in starts[8]...full.count {
      let fs = try dataDirectory()
      fs.setContents("/data/" + name, Array(full[0..<cut]))
      let (report, records) = try readLog(fs)
      let whole = boundaries.filter { $0 <= cut }.count - 1
      #expect(records.map(\.0) == Array(1...UInt64(whole)), "cut \(cut)")
      #expect(records.map(\.1) == (1...whole).map(Samples.command), "cut \(cut)")
      #expect(report.warnings.isEmpty == boundaries.contains(cut), "cut \(cut)")
      // The torn part is cut off on disk, durably.
      #expect(fs.durableContents("/data/" + name)?.count == boundaries[whole], "cut \(cut)")

      // The next append survives a restart, and the log reads cleanly.
      let wal = try WriteAheadLog(directory: "/data", fileSystem: fs, nextSeq: report.nextSeq)
      let answers = Answers()
      answers.append(Samples.command(1000), to: wal)
      answers.wait()
      wal.close()
      fs.crash()
      fs.restart()
      let (again, after) = try readLog(fs)
      #expect(again.warnings.isEmpty, "cut \(cut)")
      #expect(after.map(\.0) == Array(1...UInt64(whole + 1)), "cut \(cut)")
      #expect(after.last?.1 == Samples.command(1000))
    }
  }

  @Test func aRecordMayTakeSeveralSeqs() throws {
    let fs = try dataDirectory()
    let wal = try WriteAheadLog(directory: "/data", fileSystem: fs, nextSeq: 1)
    let answers = Answers()
    for (i, count) in [1, 3, 1].enumerated() {
      answers.append(Samples.command(i + 1), to: wal, seqCount: UInt64(count))
      answers.wait()
    }
    #expect(answers.state.withLock { $0.acked.keys.sorted() } == [1, 2, 5])
    #expect(wal.status.nextSeq == 6 && wal.status.durableThrough == 5)
    wal.close()
    let (report, records) = try readLog(fs)
    #expect(records.map(\.0) == [1, 2, 5] && report.nextSeq == 6)
    // Reading after a seq the record taking 2-4 ends at; erasing that record keeps its seqs.
    let (after, rest) = try readLog(fs, after: 4)
    #expect(rest.map(\.0) == [5] && after.nextSeq == 6)
    let segment = try #require(try WALSegment.list(directory: "/data", fileSystem: fs).first)
    let erased = try WALSegment.rewrite(segment, directory: "/data", fileSystem: fs) { seq, _ in
      seq == 2 ? .erase : .keep
    }
    #expect(erased == 1)
    let (again, left) = try readLog(fs)
    #expect(left.map(\.0) == [1, 5] && again.nextSeq == 6)
  }

  @Test func withoutRepairNothingChangesOnDisk() throws {
    let source = try log(count: 3)
    let name = "/data/" + WALSegment.fileName(firstSeq: 1)
    let full = source.contents(name)!
    let fs = try dataDirectory()
    fs.setContents(name, Array(full.dropLast(3)))
    let (report, records) = try readLog(fs, repair: false)
    #expect(records.count == 2 && report.warnings.count == 1)
    #expect(fs.contents(name)?.count == full.count - 3)
  }

  /// A log of 40 records in 1 KiB segments with a bit flipped in record `record` of its
  /// second segment (the victim): the file system, the segments, the victim's path and
  /// damaged bytes, and the damaged record's byte offset.
  private func logDamaged(inRecord record: Int) throws -> (
    fs: FaultyFileSystem, segments: [WALSegmentFile], path: String, bytes: [UInt8], offset: Int
  ) {
    let fs = try log(count: 40, segmentSize: 1024)
    let segments = try WALSegment.list(directory: "/data", fileSystem: fs)
    #expect(segments.count >= 3)
    let victim = segments[1]
    let path = "/data/" + victim.name
    var bytes = fs.contents(path)!
    let scan = WALSegment.scan(bytes, file: victim.name, firstSeq: victim.firstSeq)
    #expect(scan.records.count >= 5)
    let offset = scan.records[record].lowerBound - RecordFrame.headerSize
    bytes[offset + 12] ^= 0x04
    fs.setContents(path, bytes)
    return (fs, segments, path, bytes, offset)
  }

  @Test func damageInTheMiddleStopsWithFileAndOffset() throws {
    let (fs, segments, path, bytes, offset) = try logDamaged(inRecord: 2)
    let victim = segments[1]

    do {
      _ = try readLog(fs)
      Issue.record("damage in the middle was accepted")
    } catch {
      let e = try #require(error as? StorageError)
      #expect(e.kind == .damaged)
      #expect(e.file == victim.name)
      #expect(e.offset == Int64(offset))
      #expect(e.message.contains(victim.name))
      #expect(e.message.contains("byte offset \(offset)"))
      #expect(e.message.contains("--recover-truncate"))
    }
    // Nothing was changed by the refused start.
    #expect(fs.contents(path) == bytes)

    // --recover-truncate: cut at the last good record, later segments deleted.
    let (report, records) = try readLog(fs, truncateDamaged: true)
    let lastGood = victim.firstSeq + 1
    #expect(records.map(\.0) == Array(1...lastGood))
    #expect(report.nextSeq == lastGood + 1)
    #expect(report.discarded == segments[2...].map(\.name))
    #expect(
      try WALSegment.list(directory: "/data", fileSystem: fs).map(\.name)
        == segments[0...1].map(\.name))
    let (again, _) = try readLog(fs)
    #expect(again.warnings.isEmpty && again.nextSeq == lastGood + 1)
  }

  @Test func damageTheSnapshotHoldsLosesNoChangeWithRecoverTruncate() throws {
    // A snapshot at seq `after` in the middle of the second segment; a bit flipped in a
    // record it holds.
    let (fs, segments, path, bytes, offset) = try logDamaged(inRecord: 1)
    let victim = segments[1]
    let after = victim.firstSeq + 3

    // Without the flag: refused, saying that the flag loses no change.
    do {
      _ = try readLog(fs, after: after)
      Issue.record("damage in the middle was accepted")
    } catch {
      let e = try #require(error as? StorageError)
      #expect(e.file == victim.name && e.offset == Int64(offset))
      #expect(e.message.contains("--recover-truncate"))
      #expect(e.message.contains("loses no change"), "\(e.message)")
    }
    #expect(fs.contents(path) == bytes)

    // With it: every record after the snapshot is read, the records past the damage are a
    // segment of their own, the damaged and older segments are gone.
    let resumedAt = victim.firstSeq + 2
    let (report, records) = try readLog(fs, after: after, truncateDamaged: true)
    #expect(records.map(\.0) == Array((after + 1)...40))
    #expect(records.map(\.1) == ((after + 1)...40).map { Samples.command(Int($0)) })
    #expect(report.nextSeq == 41 && report.discarded.isEmpty)
    #expect(report.warnings.count == 1 && report.warnings[0].contains("no change"))
    let now = try WALSegment.list(directory: "/data", fileSystem: fs)
    #expect(now.first == WALSegmentFile(firstSeq: resumedAt))
    #expect(now.dropFirst().map(\.name) == segments[2...].map(\.name))
    // It survives a crash (the new segment and the deletions were synced) and reads
    // cleanly without the flag.
    fs.crash()
    fs.restart()
    let (again, recordsAgain) = try readLog(fs, after: after)
    #expect(again.warnings.isEmpty && recordsAgain.map(\.0) == Array((after + 1)...40))
    let (all, history) = try readLog(fs, after: resumedAt - 1)
    #expect(all.nextSeq == 41 && history.first?.0 == resumedAt)
  }

  @Test func theRefusalSaysWhenTheLogIsDamagedAgainFurtherOn() throws {
    // Damage the snapshot holds in the second segment, and damage after it in the third:
    // --recover-truncate would keep the records past the first and cut at the second, so
    // the refusal must not promise that nothing is lost.
    let (fs, segments, _, _, _) = try logDamaged(inRecord: 1)
    let third = "/data/" + segments[2].name
    var bytes = fs.contents(third)!
    let scan = WALSegment.scan(bytes, file: segments[2].name, firstSeq: segments[2].firstSeq)
    bytes[scan.records[1].lowerBound + 2] ^= 0x01
    fs.setContents(third, bytes)
    do {
      _ = try readLog(fs, after: segments[1].firstSeq + 3)
      Issue.record("damage in the middle was accepted")
    } catch {
      let e = try #require(error as? StorageError)
      #expect(
        e.message.contains("damaged again further on") && e.message.contains(segments[2].name))
    }
  }

  @Test func aSecondDamageAfterTheSnapshotIsCutThere() throws {
    // The same damage, and a second one after the snapshot's seq in the same segment: the
    // records between the two are kept, the log is cut at the second, later segments go.
    let fs = try log(count: 40, segmentSize: 1024)
    let segments = try WALSegment.list(directory: "/data", fileSystem: fs)
    let victim = segments[1]
    let path = "/data/" + victim.name
    var bytes = fs.contents(path)!
    let scan = WALSegment.scan(bytes, file: victim.name, firstSeq: victim.firstSeq)
    let after = victim.firstSeq + 1
    for r in [1, 4] {
      bytes[scan.records[r].lowerBound + 4] ^= 0x10
    }
    fs.setContents(path, bytes)
    do {
      _ = try readLog(fs, after: after)
      Issue.record("damage in the middle was accepted")
    } catch {
      let e = try #require(error as? StorageError)
      #expect(e.message.contains("damaged again at byte offset"), "\(e.message)")
      #expect(e.message.contains("the changes after seq \(victim.firstSeq + 3)"), "\(e.message)")
    }
    let (report, records) = try readLog(fs, after: after, truncateDamaged: true)
    #expect(records.map(\.0) == [victim.firstSeq + 2, victim.firstSeq + 3])
    #expect(report.nextSeq == victim.firstSeq + 4)
    #expect(report.discarded == segments[2...].map(\.name))
    let (again, _) = try readLog(fs, after: after)
    #expect(again.warnings.isEmpty && again.nextSeq == victim.firstSeq + 4)
  }

  @Test func tornTailOfAnOlderSegmentIsDamage() throws {
    let fs = try log(count: 30, segmentSize: 1024)
    let segments = try WALSegment.list(directory: "/data", fileSystem: fs)
    let path = "/data/" + segments[0].name
    fs.setContents(path, Array(fs.contents(path)!.dropLast(5)))
    #expect(throws: StorageError.self) { _ = try readLog(fs) }
  }

  @Test func aMissingSegmentIsDamage() throws {
    let fs = try log(count: 40, segmentSize: 1024)
    let segments = try WALSegment.list(directory: "/data", fileSystem: fs)
    try fs.unlink("/data/" + segments[1].name)
    do {
      _ = try readLog(fs)
      Issue.record("a gap in the log was accepted")
    } catch {
      let e = try #require(error as? StorageError)
      #expect(e.file == segments[2].name)
      #expect(e.message.contains("previous one ends"))
    }
  }

  @Test func readingAfterASnapshot() throws {
    let fs = try log(count: 40, segmentSize: 1024)
    let (report, records) = try readLog(fs, after: 25)
    #expect(records.map(\.0) == Array(26...40))
    #expect(report.lastSeq == 40)
    // Records needed but gone.
    let segments = try WALSegment.list(directory: "/data", fileSystem: fs)
    try fs.unlink("/data/" + segments[0].name)
    #expect(throws: StorageError.self) { _ = try readLog(fs, after: 0) }
    // Without repair (check-data), a snapshot newer than the log's end changes nothing.
    let (peek, _) = try readLog(fs, after: 90, repair: false)
    #expect(peek.nextSeq == 91)
    #expect(try WALSegment.list(directory: "/data", fileSystem: fs).count == segments.count - 1)
  }

  /// A snapshot newer than the log's end (records lost under `--fsync none`, a torn record
  /// the snapshot held): the log would go on from the snapshot's seq with a hole before it,
  /// so its segments, all history, are deleted.
  @Test func aLogEndingBeforeTheSnapshotIsDeleted() throws {
    let fs = try log(count: 40, segmentSize: 1024)
    let (ahead, none) = try readLog(fs, after: 90)
    #expect(none.isEmpty && ahead.nextSeq == 91)
    #expect(ahead.warnings.count == 1 && ahead.warnings[0].contains("ends at seq 40"))
    #expect(try WALSegment.list(directory: "/data", fileSystem: fs).isEmpty)
  }

  /// The segments before the one recovery starts from must lead up to it: a gap or
  /// damage there (history the snapshot holds) makes them go, at start-up only.
  @Test func olderSegmentsWithAHoleBeforeTheLogReadAreDeleted() throws {
    let fs = try log(count: 40, segmentSize: 1024)
    let segments = try WALSegment.list(directory: "/data", fileSystem: fs)
    #expect(segments.count >= 3)
    // The record before the third segment is lost: the second ends one seq early.
    let path = "/data/" + segments[1].name
    let bytes = fs.contents(path)!
    let scan = WALSegment.scan(bytes, file: segments[1].name, firstSeq: segments[1].firstSeq)
    fs.setContents(path, Array(bytes[..<(scan.records.last!.lowerBound - RecordFrame.headerSize)]))
    let after = segments[2].firstSeq + 1
    let (peek, _) = try readLog(fs, after: after, repair: false)
    #expect(peek.warnings.isEmpty)
    #expect(try WALSegment.list(directory: "/data", fileSystem: fs) == segments)
    let (report, records) = try readLog(fs, after: after)
    #expect(records.map(\.0) == Array((after + 1)...40) && report.nextSeq == 41)
    #expect(report.warnings.count == 1 && report.warnings[0].contains(segments[1].name))
    #expect(try WALSegment.list(directory: "/data", fileSystem: fs) == Array(segments[2...]))
    let (again, _) = try readLog(fs, after: after)
    #expect(again.warnings.isEmpty)
  }

  @Test func emptyDirectoryAndTornNewHeader() throws {
    let fs = try dataDirectory()
    let (report, records) = try readLog(fs, after: 7)
    #expect(records.isEmpty && report.nextSeq == 8)
    // A new segment whose header never reached the disk is removed.
    let source = try log(count: 2)
    let first = source.contents("/data/" + WALSegment.fileName(firstSeq: 1))!
    fs.setContents("/data/" + WALSegment.fileName(firstSeq: 1), first)
    fs.setContents(
      "/data/" + WALSegment.fileName(firstSeq: 3), Array(WALSegment.header(firstSeq: 3).prefix(10)))
    let (r2, recs2) = try readLog(fs)
    #expect(recs2.count == 2 && r2.warnings.count == 1 && r2.nextSeq == 3)
    #expect(try WALSegment.list(directory: "/data", fileSystem: fs).count == 1)
  }
}

@Suite struct ErasureRewriteTests {
  /// A log of 40 records in small segments, the active one left for a new one.
  private func closedLog() throws -> FaultyFileSystem {
    let fs = try dataDirectory()
    let wal = try WriteAheadLog(
      directory: "/data", fileSystem: fs, nextSeq: 1, options: .init(segmentSize: 1024))
    let answers = Answers()
    for i in 1...40 {
      answers.append(Samples.command(i), to: wal)
      answers.wait()
    }
    wal.close()
    return fs
  }

  @Test func erasedRecordsKeepTheirSeq() throws {
    #expect(try LogRecordCodec.decode(LogRecordCodec.erased(seq: 77)[...]) == (77, nil))
    let fs = try closedLog()
    let segments = try WALSegment.list(directory: "/data", fileSystem: fs)
    let target = segments[1]
    let erased = try WALSegment.rewrite(target, directory: "/data", fileSystem: fs) {
      (seq, payload) throws(StorageError) in
      let command = try LogRecordCodec.decode(payload).command
      guard case .setPreference(let p) = command else { return .keep }
      return p.at % 2 == 0 ? .erase : .keep
    }
    #expect(erased > 0)
    let (report, records) = try readLog(fs)
    #expect(report.warnings.isEmpty && report.lastSeq == 40)
    let seqs = Set(records.map(\.0))
    for seq in 1...UInt64(40) {
      let inTarget =
        seq >= target.firstSeq && seq < segments[2].firstSeq
      #expect(seqs.contains(seq) == !(inTarget && seq % 2 == 0), "seq \(seq)")
    }
    for (seq, c) in records { #expect(c == Samples.command(Int(seq))) }
    #expect(try fs.list("/data").allSatisfy { !$0.hasSuffix(".tmp") })

    // Nothing to erase: the file is not touched.
    let before = fs.contents("/data/" + segments[0].name)
    #expect(
      try WALSegment.rewrite(segments[0], directory: "/data", fileSystem: fs) { _, _ in .keep } == 0
    )
    #expect(fs.contents("/data/" + segments[0].name) == before)
  }

  @Test func aCrashDuringARewriteLeavesTheOldOrTheNewSegment() throws {
    var sawOld = false
    var sawNew = false
    for n in 1...6 {
      let fs = try closedLog()
      let target = try WALSegment.list(directory: "/data", fileSystem: fs)[0]
      fs.crash(afterOperations: n, seed: UInt64(n))
      _ = try? WALSegment.rewrite(target, directory: "/data", fileSystem: fs) { seq, _ in
        seq == 2 ? .erase : .keep
      }
      if fs.crashes == 0 { fs.crash() }
      fs.restart()
      try WALSegment.removeTemporaryFiles(directory: "/data", fileSystem: fs)
      let (report, records) = try readLog(fs)
      #expect(report.warnings.isEmpty && report.lastSeq == 40, "crash at call \(n)")
      if records.contains(where: { $0.0 == 2 }) { sawOld = true } else { sawNew = true }
      #expect(try fs.list("/data").allSatisfy { !$0.hasSuffix(".tmp") })
    }
    #expect(sawOld && sawNew)
  }

  @Test func otherSnapshotsCanBeRemoved() throws {
    // 15: a newer snapshot recovery fell back from (damaged), from a history it discarded.
    let fs = try dataDirectory()
    for seq: UInt64 in [3, 9, 12, 15] {
      let w = try SnapshotWriter(directory: "/data", seq: seq, fileSystem: fs)
      try w.commit()
    }
    let removed = try SnapshotFile.remove(except: 12, directory: "/data", fileSystem: fs)
    #expect(removed.sorted() == [3, 9, 15].map { SnapshotFile.fileName(seq: $0) })
    #expect(try SnapshotFile.list(directory: "/data", fileSystem: fs).map(\.seq) == [12])
    fs.crash()
    fs.restart()
    #expect(try SnapshotFile.list(directory: "/data", fileSystem: fs).map(\.seq) == [12])
  }
}

/// After the log in `/data` is closed: every segment ends with its last record (no
/// preallocated zeros left), and after a power cut recovery reads, without a warning,
/// exactly the `acked` records. Returns how many it read.
@discardableResult
private func expectCutToRecordsAndRecovered(
  _ fs: FaultyFileSystem, acked: [UInt64: Command]
) throws -> Int {
  for s in try WALSegment.list(directory: "/data", fileSystem: fs) {
    #expect(try WALSegment.scan(s, directory: "/data", fileSystem: fs).unwrittenBytes == 0)
  }
  fs.crash()
  fs.restart()
  let (report, records) = try readLog(fs)
  #expect(report.warnings.isEmpty)
  #expect(Dictionary(uniqueKeysWithValues: records) == acked)
  return records.count
}

/// The scan of the newest segment in `/data`.
private func activeSegmentScan(_ fs: FaultyFileSystem) throws -> SegmentScan {
  let active = try #require(try WALSegment.list(directory: "/data", fileSystem: fs).last)
  return try WALSegment.scan(active, directory: "/data", fileSystem: fs)
}

/// The scheduling policy (field 41 of /proc/self/task/<tid>/stat: 0 other, 3 batch) of
/// every thread of this process named `name`.
private func threadPolicies(named name: String) -> [Int] {
  let tids = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/task")) ?? []
  return tids.compactMap { tid in
    guard let stat = try? String(contentsOfFile: "/proc/self/task/\(tid)/stat", encoding: .utf8),
      let open = stat.firstIndex(of: "("), let close = stat.lastIndex(of: ")"),
      stat[stat.index(after: open)..<close] == name
    else { return nil }
    // Fields after the comm start at field 3 (state).
    let fields = stat[stat.index(close, offsetBy: 2)...].split(separator: " ")
    return fields.count > 38 ? Int(fields[38]) : nil
  }
}
