// `subcenterctl check-data DIR`: checks a data directory offline, like `redis-check-aof`,
// with the readers the server's recovery uses (docs/storage-format.md), and changes
// nothing on disk.
//
// One line per file: snapshots (`snapshot-<seq>.snap`: records, seq, the trailer's count
// and checksum, every record decoded) and log segments (`wal-<first seq>.log`: header,
// every frame's checksum, consecutive seqs, every record decoded), then the log as a
// whole as recovery would read it from the newest valid snapshot on (segments following
// on from each other, the log reaching back to the snapshot). Exit status: 0 when every
// file is sound (a torn tail of the newest segment — a write a crash interrupted, never
// acknowledged, which start-up cuts off — is only a warning), 1 when anything is
// damaged, the data's secret.key is missing or not the one the snapshots were written
// under, or the directory holds no data at all, 2 when the directory cannot be read or a
// running server holds it (its files change under the reader: check a copy).

import GRPCTransport
import Glibc
import SubcenterCore
import SubcenterServer
import SubcenterStore

enum CheckData {
  /// Checks `directory`; prints the report, or with `json` one object holding it:
  /// `{"sound": BOOL, "exit_status": N, "report": [LINE, ...]}`. Returns the exit status.
  static func run(directory: String, json: Bool) -> Int32 {
    guard json else { return check(directory: directory, say: writeStdoutLine) }
    var lines: [String] = []
    let status = check(directory: directory) { lines.append($0) }
    writeStdoutLine(
      "{\"sound\": \(status == 0), \"exit_status\": \(status), \"report\": ["
        + lines.map(JSONText.quoted).joined(separator: ", ") + "]}")
    return status
  }

  /// The report, a line at a time through `say` (what stops the check goes to stderr).
  private static func check(directory: String, say: (String) -> Void) -> Int32 {
    let fs = PosixFileSystem()
    var damagedSnapshots = 0
    var damaged = 0  // in the log
    var truncateHelps = true  // whether --recover-truncate gets past the log's damage
    var secretMissing = false
    var wrongSecret: [String] = []  // snapshots written under another secret
    var warnings = 0
    func ok(_ line: String) { say(line) }
    func warn(_ line: String) {
      warnings += 1
      say(line)
    }
    func bad(_ line: String) {
      damaged += 1
      say(line)
    }

    let names: [String]
    let snapshots: [SnapshotInfo]
    let segments: [WALSegmentFile]
    do throws(StorageError) {
      do { names = try fs.list(directory) } catch {
        throw StorageError(error, "listing \(directory)")
      }
      snapshots = try SnapshotFile.list(directory: directory, fileSystem: fs)
      segments = try WALSegment.list(directory: directory, fileSystem: fs)
    } catch {
      writeStderrLine("subcenterctl check-data: \(error)")
      return 2
    }
    if DataDirectoryLock.isHeld(directory: directory) {
      writeStderrLine(
        "subcenterctl check-data: a subcenterd is running on \(directory): its files change "
          + "(segments rewritten, snapshots replaced) while they are read. Check a copy "
          + "(README: Back up), or stop the server first")
      return 2
    }
    say(
      "checking \(directory): \(snapshots.count) snapshot(s), \(segments.count) log segment(s)")
    // Every directory subcenterd has started on holds a log segment: an empty one is most
    // likely a backup whose copy failed or went elsewhere, not data that is fine.
    guard !snapshots.isEmpty || !segments.isEmpty else {
      say(
        "EMPTY: no snapshot and no log segment: this holds no data (subcenterd would start "
          + "with an empty state); if it is a backup, its copy failed or went elsewhere")
      return 1
    }

    // Leftovers of writes that never finished: start-up deletes them.
    for n in names.sorted() where n.hasSuffix(".tmp") {
      warn(
        n == "secret.key.tmp"
          ? "\(n): WARNING: left by a crash while secret.key was first written; harmless"
          : "\(n): WARNING: an unfinished snapshot or segment rewrite (start-up deletes it)")
    }

    // The secret the data's suppression hashes, receipts and page tokens are keyed with.
    let key = ServerSecret.path(dataDirectory: directory)
    if access(key, F_OK) == 0 && access(key, R_OK) != 0 {
      writeStderrLine(
        "subcenterctl check-data: cannot read \(key): \(String(cString: strerror(errno))) "
          + "(run it as the user that owns the data)")
      return 2
    }
    let secret = try? ServerSecret.load(dataDirectory: directory)
    if secret == nil {
      secretMissing = true
      let what =
        access(key, F_OK) == 0 ? "NOT 32 BYTES (a secret is exactly 32)" : "MISSING"
      say(
        "secret.key: \(what): subcenterd refuses to start on this data; "
          + "restore the secret.key backed up with it (a new one would make every "
          + "suppression stop matching)")
    } else {
      ok("secret.key: OK")
    }

    let secretCheck = secret.map { IdentifierHasher(secret: $0).secretCheck }

    // Snapshots, newest first: the newest valid one is where recovery starts.
    var base: SnapshotInfo?
    for info in snapshots.sorted(by: { $0.seq > $1.seq }) {
      var written: [UInt8]?  // its secret check (the first record: read even if damage follows)
      let foreign = { () -> Bool in
        guard let written, let secretCheck else { return false }
        return written != secretCheck
      }
      do throws(StorageError) {
        // Every record decoded, as recovery decodes it.
        let read = try SnapshotFile.read(
          info.name, directory: directory, fileSystem: fs,
          records: { (r: SnapshotRecord) throws(StorageError) in
            if case .secretCheck(let check) = r { written = check }
          })
        if foreign(), let base {
          // Recovery loads the newer one and never reads this one (the next snapshot
          // deletes it).
          say(
            "\(info.name): written under another secret.key, older than \(base.name), which "
              + "recovery loads: not read (the next snapshot deletes it)")
        } else if foreign() {
          wrongSecret.append(info.name)
          say(
            "\(info.name): WRONG SECRET: written under another secret.key than this "
              + "directory's (\(read.records) records, seq \(info.seq), otherwise intact)")
        } else {
          ok("\(info.name): \(read.records) records, seq \(info.seq): OK")
        }
        if base == nil { base = read }
      } catch {
        guard error.kind == .damaged else {
          writeStderrLine("subcenterctl check-data: \(describe(error, file: info.name))")
          return 2
        }
        damagedSnapshots += 1
        say("\(info.name): DAMAGED: \(describe(error, file: info.name))")
        if foreign() {
          // Recovery refuses it for this before its damage.
          wrongSecret.append(info.name)
          say("\(info.name): WRONG SECRET too: written under another secret.key")
        }
        if base == nil {
          say(
            "  (start-up skips it and falls back to an older snapshot, or to the whole log)")
        }
      }
    }
    let after = base?.seq ?? 0

    // Each log segment on its own. Damage whose unreadable or missing records all lie at
    // or below the newest valid snapshot does not stop start-up (recovery reads from the
    // segment holding the snapshot's next seq on); only the change feed's history is hurt.
    func belowSnapshot(_ line: String) {
      warn(
        line + " (WARNING only: every record it loses is at or below the snapshot's seq "
          + "\(after), so start-up does not need them; subcenterd deletes the segments "
          + "before the hole, history the snapshot holds, when it next starts or erases, "
          + "losing only change-feed history: do not delete segments by hand)")
    }
    var expected: UInt64?
    for (i, segment) in segments.enumerated() {
      let newest = i == segments.count - 1
      // The records up to the next segment's first seq are in this one.
      let coveredBySnapshot = !newest && segments[i + 1].firstSeq - 1 <= after
      let scan: SegmentScan
      do throws(StorageError) {
        scan = try WALSegment.scan(segment, directory: directory, fileSystem: fs)
      } catch {
        guard error.kind == .damaged else {
          writeStderrLine("subcenterctl check-data: \(describe(error, file: segment.name))")
          return 2
        }
        let line = "\(segment.name): DAMAGED: \(describe(error, file: segment.name))"
        if coveredBySnapshot { belowSnapshot(line) } else { bad(line) }
        expected = nil
        continue
      }
      let count = scan.records.count
      let range =
        count == 0
        ? "no records (first seq \(segment.firstSeq))"
        : "\(count) records, seq \(segment.firstSeq)-\(scan.endSeq - 1)"
      // Every record must decode as the server's replay decodes it.
      var undecodable: String?
      var foreignRecords = 0  // suppression hashes keyed with another secret
      for r in 0..<count {
        do throws(StorageError) {
          let payload = scan.payload(r)
          if let command = try LogRecordCodec.decode(payload).command,
            LogRecordCodec.holdsSuppressionHashes(command), let check = secretCheck,
            let written = try LogRecordCodec.secretCheck(in: payload), written != check
          {
            foreignRecords += 1
          }
        } catch {
          undecodable =
            "record seq \(scan.seqs[r]) at byte offset "
            + "\(scan.records[r].lowerBound - RecordFrame.headerSize) does not decode: "
            + "\(error.message)"
          break
        }
      }
      if foreignRecords > 0 {
        wrongSecret.append(segment.name)
        say(
          "\(segment.name): WRONG SECRET: \(foreignRecords) record(s) of suppressions keyed "
            + "with another secret.key than this directory's")
      }
      var problems: [String] = []
      var onlyBelowSnapshot = undecodable == nil
      if let expected, segment.firstSeq != expected {
        onlyBelowSnapshot = onlyBelowSnapshot && segment.firstSeq - 1 <= after
        problems.append(
          "starts at seq \(segment.firstSeq) but the previous segment ends at seq \(expected - 1)"
        )
      }
      if let undecodable { problems.append(undecodable) }
      if let d = scan.damage {
        if newest && scan.isCutInsideRecords(heldBy: after) {
          onlyBelowSnapshot = false
          problems.append(
            "cut short at byte offset \(d.offset) inside record \(scan.endSeq), which the "
              + "snapshot (seq \(after)) holds: not a crash's torn write (a record a snapshot "
              + "holds was synced before it); a copy cut short: copy the file again")
        } else if d.kind == .tornTail && newest {
          if problems.isEmpty {
            warn(
              "\(segment.name): \(range): WARNING: torn tail at byte offset \(d.offset) "
                + "(\(d.reason)); a write a crash interrupted, never acknowledged: start-up "
                + "cuts the file to \(scan.validEnd) bytes")
          }
        } else {
          onlyBelowSnapshot = onlyBelowSnapshot && coveredBySnapshot
          problems.append(
            "at byte offset \(d.offset): \(d.reason)"
              + (d.kind == .tornTail ? " (cut short, but later segments exist)" : ""))
        }
      }
      if problems.isEmpty {
        if scan.damage == nil {
          ok("\(segment.name): \(range): OK")
          if scan.unwrittenBytes > 0 {
            say(
              "  followed by \(scan.unwrittenBytes) bytes of zeros: space the writer "
                + "preallocated and never wrote (start-up cuts it)")
          }
        }
      } else {
        let line = "\(segment.name): \(range): DAMAGED: \(problems.joined(separator: "; "))"
        if onlyBelowSnapshot { belowSnapshot(line) } else { bad(line) }
      }
      // After damage, where the next segment starts says nothing new: not a second problem.
      expected = scan.damage == nil ? scan.endSeq : nil
    }

    // The log as recovery reads it after the newest valid snapshot (nothing is repaired).
    if damaged == 0 {
      do throws(StorageError) {
        var (erased, starts) = (0, 0)
        let report = try WALReader.read(
          directory: directory, fileSystem: fs, after: after, repair: false,
          truncateDamaged: false
        ) { (_, payload) throws(StorageError) in
          guard try LogRecordCodec.decode(payload).1 == nil else { return }
          if try LogRecordCodec.isSkippedSeqs(payload) { starts += 1 } else { erased += 1 }
        }
        var skips: [String] = []
        if erased > 0 { skips.append("\(erased) record(s) an erasure emptied") }
        if starts > 0 { skips.append("\(starts) record(s) of seqs a start skipped") }
        say(
          "recovery would load \(base?.name ?? "no snapshot") and replay "
            + "\(report.recordsRead - erased - starts) log record(s), up to seq "
            + "\(report.lastSeq)"
            + (skips.isEmpty ? "" : " (and skip \(skips.joined(separator: " and ")))"))
      } catch {
        bad("log: DAMAGED: \(describe(error, file: error.file))")
        truncateHelps = error.truncateHelps
      }
    }

    if secretMissing {
      say(
        "MISSING or BAD secret.key: subcenterd refuses to start on this data until the secret.key "
          + "backed up with it is restored (--recover-truncate does not help)"
          + (damaged + damagedSnapshots > 0 ? "; and:" : "."))
    }
    if !wrongSecret.isEmpty {
      say(
        "WRONG secret.key: \(wrongSecret.joined(separator: ", ")) written under another "
          + "secret: subcenterd refuses to start on this data until the secret.key backed "
          + "up with it is restored (with this one, suppressed identifiers would match "
          + "nothing, and receipts and page tokens would not verify)"
          + (damaged + damagedSnapshots > 0 ? "; and:" : "."))
    }
    if damaged > 0 {
      let remedy =
        truncateHelps
        ? "restore it from a backup or start with --recover-truncate (subcenterd's error "
          + "says what it keeps and what it drops)."
        : "restore it from a backup (--recover-truncate cannot help: records are missing, "
          + "not damaged)."
      say(
        "DAMAGED: \(damaged + damagedSnapshots) problem(s). subcenterd refuses to start on a "
          + "damaged log; back up the directory, then \(remedy)")
      return 1
    }
    if damagedSnapshots > 0 {
      say(
        "DAMAGED: \(damagedSnapshots) snapshot(s); the log is sound. subcenterd starts: it "
          + "skips a damaged snapshot and recovers as above. Keep a copy for inspection; the "
          + "next snapshot written replaces it.")
      return 1
    }
    if secretMissing || !wrongSecret.isEmpty { return 1 }
    say(warnings > 0 ? "OK, with \(warnings) warning(s)" : "OK")
    return 0
  }

  /// An error's message, with its file and offset when the message lacks them.
  private static func describe(_ error: StorageError, file: String?) -> String {
    var text = error.message
    if let f = error.file ?? file, !text.contains(f) { text = "\(f): " + text }
    if let o = error.offset, !text.contains("byte offset") { text += " (byte offset \(o))" }
    return text
  }
}
