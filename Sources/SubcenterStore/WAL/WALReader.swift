// Reading the whole log back at start-up: the segments after a snapshot, in seq order,
// checking that seqs follow on from segment to segment.
//
// - A torn tail of the newest segment (a write the crash interrupted, never
//   acknowledged) is cut off, with a warning; zeros after its last record (space the
//   writer preallocated) are cut off silently.
// - Any other damage — a bad record followed by good ones, a torn tail in an older
//   segment, a missing stretch of seqs, a bad header — stops the read with an error naming
//   the file and byte offset, unless `truncateDamaged` (`--recover-truncate`): then the
//   damaged segment is cut at its last good record and every later segment is deleted.
// - Except when the damage is in records the snapshot holds and the log reads on past it
//   (a valid record follows with a seq the state still needs, and valid records to the
//   end of the segment): then no change is lost, only change-feed history, and
//   `--recover-truncate` keeps the records after the damage as a segment of their own
//   (the damaged segment and the older ones are deleted, as history with a hole in it).

/// What reading the log found.
public struct WALReadReport: Sendable, Equatable {
  /// The segments read, in order.
  public var segments: [WALSegmentFile] = []
  /// The seq of the last record in the log, or `after` if the log has none after it.
  public var lastSeq: UInt64 = 0
  /// How many records were handed to the caller.
  public var recordsRead = 0
  /// What was cut or discarded, for the operator.
  public var warnings: [String] = []
  /// Segments deleted because they followed damage (with `truncateDamaged`).
  public var discarded: [String] = []

  /// The seq the writer must continue from.
  public var nextSeq: UInt64 { lastSeq + 1 }
}

/// Reads the log of a data directory.
public enum WALReader {
  /// Hands every record with a seq greater than `after` to `body`, in order, and returns
  /// what it found. With `repair`, a torn tail is cut off the newest segment (and the
  /// newest segment synced, since the writer then starts a new one); without it, nothing
  /// is changed on disk. `truncateDamaged` turns damage into a cut (see above).
  public static func read(
    directory: String, fileSystem fs: any FileSystem, after: UInt64 = 0, repair: Bool = true,
    truncateDamaged: Bool = false,
    _ body: (_ seq: UInt64, _ payload: ArraySlice<UInt8>) throws(StorageError) -> Void
  ) throws(StorageError) -> WALReadReport {
    var report = WALReadReport()
    report.lastSeq = after
    let segments = try WALSegment.list(directory: directory, fileSystem: fs)
    guard !segments.isEmpty else { return report }
    guard let start = segments.lastIndex(where: { $0.firstSeq <= after &+ 1 }) else {
      var missing = StorageError.damaged(
        segments[0].name, at: 0,
        "the log starts at seq \(segments[0].firstSeq), but the records from seq \(after + 1) "
          + "are needed and no segment holds them (a snapshot or segments missing). "
          + "Restore the data directory from a backup.")
      missing.truncateHelps = false
      throw missing
    }

    var expected = segments[start].firstSeq
    var lastInLog: UInt64 = 0
    for i in start..<segments.count {
      var segment = segments[i]
      let newest = i == segments.count - 1
      report.segments.append(segment)

      var damage: (offset: Int, reason: String, torn: Bool)?
      var scan: SegmentScan?
      // The newest segment's torn or unwritten tail is cut only once its records are read:
      // a start they refuse (a record that does not apply, another server secret) changes
      // nothing.
      var cutNewestTo: Int?
      if segment.firstSeq != expected {
        damage = (
          0,
          "the segment starts at seq \(segment.firstSeq) but the previous one ends at seq "
            + "\(expected - 1)", false
        )
      } else {
        let s = try WALSegment.scan(segment, directory: directory, fileSystem: fs)
        scan = s
        if let d = s.damage { damage = (d.offset, d.reason, d.kind == .tornTail) }
      }

      if let d = damage {
        let cutTo = scan?.validEnd ?? 0
        let lastGood = (scan?.records.count ?? 0) > 0 ? scan!.endSeq - 1 : expected - 1
        // What is lost past the damage: the snapshot may cover some of it, or all.
        let resumed =
          d.torn && newest
          ? nil
          : scan.flatMap {
            resumePastDamage($0, at: d.offset, lastGood: lastGood, need: after &+ 1, newest: newest)
          }
        let lost =
          if let resumed, let again = resumed.damage {
            "the changes after seq \(max(after, resumed.scan.endSeq - 1)): valid records follow the damage "
              + "from seq \(resumed.segment.firstSeq) on (the snapshot holds every change up to "
              + "seq \(after)), but the segment is damaged again at byte offset "
              + "\(again.offset) (\(again.reason))"
          } else if let resumed {
            "no change, only the change feed's history before seq \(resumed.segment.firstSeq) "
              + "(the snapshot holds every change up to seq \(after), and valid records "
              + "follow the damage from seq \(resumed.segment.firstSeq) on)"
          } else if lastGood >= after {
            "everything after seq \(lastGood)"
          } else {
            "the changes after seq \(after) (the snapshot holds the state up to there; the "
              + "change feed loses seqs \(lastGood + 1)-\(after) of its history)"
          }
        if newest && !truncateDamaged, scan?.isCutInsideRecords(heldBy: after) == true {
          throw StorageError.damaged(
            segment.name, at: Int64(d.offset),
            "the newest segment ends inside record \(lastGood + 1) (\(d.reason)), which the "
              + "snapshot (seq \(after)) holds: a crash cannot cut a record a snapshot holds, "
              + "so this segment was cut short: if this directory is a copy (a backup, a "
              + "restore), copy the file again from its source; the records after seq "
              + "\(after) it held are lost otherwise. After a power cut under --fsync none or "
              + "interval, start with --recover-truncate to go on from the snapshot")
        }
        if d.torn && newest {
          report.warnings.append(
            "\(segment.name): torn record at byte offset \(d.offset) cut off (\(d.reason)); "
              + "it was never acknowledged")
          if repair { cutNewestTo = cutTo }
        } else if truncateDamaged, let resumed {
          // The records past the damage (up to a second damage, if any) become a segment of
          // their own; the damaged one and the older ones (history with a hole in it) go,
          // after it is durable, and after a second damage every later one, as for a cut.
          let older =
            segments[..<i].map(\.name) + (resumed.segment == segment ? [] : [segment.name])
          let later = resumed.damage == nil ? [] : segments[(i + 1)...].map(\.name)
          try WALSegment.replace(
            resumed.segment, with: Array(resumed.scan.bytes[..<resumed.scan.validEnd]),
            directory: directory, fileSystem: fs)
          try WALSegment.delete(older + later, directory: directory, fileSystem: fs)
          report.discarded = later
          report.warnings.append(
            "\(segment.name) at byte offset \(d.offset): \(d.reason); as --recover-truncate "
              + "asks, the records from seq \(resumed.segment.firstSeq) on are kept in "
              + "\(resumed.segment.name)"
              + (older.isEmpty ? "" : " and \(older.joined(separator: ", ")) deleted")
              + (later.isEmpty ? "" : ", later segments deleted: \(later.joined(separator: ", "))")
              + ", losing \(lost)")
          report.segments[report.segments.count - 1] = resumed.segment
          segment = resumed.segment
          scan = resumed.scan
          // A second damage ends the read here, as a cut does.
          damage = resumed.damage.map { ($0.offset, $0.reason, false) }
        } else if truncateDamaged {
          let later = segments[(i + 1)...].map(\.name)
          report.warnings.append(
            "\(segment.name) at byte offset \(d.offset): \(d.reason); cut there as "
              + "--recover-truncate asks, discarding \(lost) that the log held"
              + (later.isEmpty
                ? "" : ", and later segments deleted: \(later.joined(separator: ", "))"))
          try cut(segment, to: cutTo, directory: directory, fs: fs)
          try WALSegment.delete(later, directory: directory, fileSystem: fs)
          report.discarded = later
        } else {
          throw StorageError.damaged(
            segment.name, at: Int64(d.offset),
            "\(d.reason)\(d.torn ? " (and later segments exist)" : ""). Start-up stopped: the "
              + "log is damaged before its end. "
              + (resumed != nil
                ? "Restarting with --recover-truncate (back up the data directory first) "
                  + "keeps the records after the damage and loses \(lost)"
                  + (resumed!.damage != nil
                    ? "."
                    : laterDamage(segments[(i + 1)...], from: resumed!.scan.endSeq, directory, fs)
                      .map {
                        "; but the log is damaged again further on (\($0)), where "
                          + "--recover-truncate cuts it: what follows is lost unless restored "
                          + "from a backup"
                      } ?? ".")
                : "To start from the last good record (seq \(max(lastGood, after))) and "
                  + "discard \(lost) that the log holds, back up the data directory and "
                  + "restart with --recover-truncate."))
        }
      }

      if let scan {
        for r in 0..<scan.records.count {
          let seq = scan.seqs[r]
          guard seq > after else { continue }
          do { try body(seq, scan.payload(r)) } catch {
            // A record that cannot be decoded: name where it is.
            guard error.kind == .damaged, error.file == nil else { throw error }
            throw StorageError.damaged(
              segment.name, at: Int64(scan.records[r].lowerBound - RecordFrame.headerSize),
              "record seq \(seq): \(error.message)")
          }
          report.recordsRead += 1
        }
        if !scan.records.isEmpty { lastInLog = scan.endSeq - 1 }
        expected = scan.endSeq
      }
      if let cutNewestTo {
        try cut(segment, to: cutNewestTo, directory: directory, fs: fs)
      } else if damage == nil && repair && newest {
        // The writer starts a new segment next: this one must be complete on disk first.
        if let scan, scan.unwrittenBytes > 0 {
          try cut(segment, to: scan.validEnd, directory: directory, fs: fs)
        } else {
          try syncFile(segment.name, directory, fs)
        }
      }
      if damage != nil { break }
    }
    report.lastSeq = max(after, lastInLog)
    if repair { try dropHistoryWithAHole(&report, directory, fs, after: after, end: expected) }
    return report
  }

  /// The log read, the segments before it must lead up to it, and it must reach the
  /// snapshot's seq (`after`): otherwise the log has a hole (a torn record the snapshot
  /// held, cut; records lost under `--fsync none`; an older segment damaged or left by
  /// an interrupted `--recover-truncate`). Every record in such segments is in the
  /// snapshot, so they are only change-feed history, and history with a hole in it cannot
  /// be served: they are deleted, with a warning, and the log goes on without a gap.
  /// `end` is the seq after the last record read.
  private static func dropHistoryWithAHole(
    _ report: inout WALReadReport, _ directory: String, _ fs: any FileSystem, after: UInt64,
    end: UInt64
  ) throws(StorageError) {
    let existing = try WALSegment.list(directory: directory, fileSystem: fs)
    let doomed: [WALSegmentFile]
    let why: String
    if end <= after, !existing.isEmpty {
      doomed = existing
      why = "the log ends at seq \(end - 1) but the snapshot holds the state up to seq \(after)"
    } else if let first = report.segments.first,
      let previous = existing.last(where: { $0.firstSeq < first.firstSeq })
    {
      let scan = try WALSegment.scan(previous, directory: directory, fileSystem: fs)
      guard scan.damage != nil || scan.endSeq != first.firstSeq else { return }
      doomed = existing.filter { $0.firstSeq < first.firstSeq }
      why =
        scan.damage != nil
        ? "\(previous.name) is damaged (\(scan.damage!))"
        : "\(previous.name) ends at seq \(scan.endSeq - 1) but \(first.name) starts at seq "
          + "\(first.firstSeq)"
    } else {
      return
    }
    try WALSegment.delete(doomed.map(\.name), directory: directory, fileSystem: fs)
    report.segments.removeAll { doomed.contains($0) }
    report.warnings.append(
      "\(why): deleted \(doomed.map(\.name).joined(separator: ", ")), whose records the snapshot "
        + "holds, so that the log goes on without a gap (only change-feed history is lost)")
  }

  /// The first damage in `segments` (read after records ending before seq `from`) that
  /// recovery would not simply cut (a torn tail of the newest), described; nil if none.
  private static func laterDamage(
    _ segments: ArraySlice<WALSegmentFile>, from: UInt64, _ directory: String,
    _ fs: any FileSystem
  ) -> String? {
    var expected = from
    for s in segments {
      guard s.firstSeq == expected else {
        return "\(s.name) starts at seq \(s.firstSeq), not \(expected)"
      }
      guard let scan = try? WALSegment.scan(s, directory: directory, fileSystem: fs) else {
        return "\(s.name) cannot be read"
      }
      if let d = scan.damage, d.kind != .tornTail || s != segments.last {
        return "\(s.name) at byte offset \(d.offset): \(d.reason)"
      }
      expected = scan.endSeq
    }
    return nil
  }

  /// The records after damage at `offset` of `scan`, as a segment of their own, when
  /// the first valid frame after it holds a seq from `lastGood + 1` to `need` (the first
  /// seq the state needs), so that the damage itself costs no change: the records of
  /// consecutive seqs from there, up to the end of the segment (a torn tail of the newest
  /// is cut off) or to a second damage, which `damage` then describes (with its byte
  /// offset in the original segment).
  private static func resumePastDamage(
    _ scan: SegmentScan, at offset: Int, lastGood: UInt64, need: UInt64, newest: Bool
  ) -> (segment: WALSegmentFile, scan: SegmentScan, damage: (offset: Int, reason: String)?)? {
    guard lastGood < need else { return nil }
    let found = scan.bytes.withUnsafeBytes { b -> (offset: Int, seq: UInt64)? in
      guard let o = RecordFrame.firstValidFrame(b, from: offset + 1, hint: nil),
        case .record(let payload, _) = RecordFrame.parse(b, at: o),
        let seq = WALSegment.leadingSequence(UnsafeRawBufferPointer(rebasing: b[payload]))
      else { return nil }
      return (o, seq)
    }
    guard let found, found.seq > lastGood, found.seq <= need else { return nil }
    let segment = WALSegmentFile(firstSeq: found.seq)
    let rest = WALSegment.scan(
      WALSegment.header(firstSeq: found.seq) + scan.bytes[found.offset...], file: segment.name,
      firstSeq: found.seq)
    let again = rest.damage.flatMap { d -> (offset: Int, reason: String)? in
      d.kind == .tornTail && newest
        ? nil : (found.offset + d.offset - WALSegment.headerSize, d.reason)
    }
    return (segment, rest, again)
  }

  /// Cuts a segment to `size` bytes and syncs it; a segment left without a valid header
  /// is deleted.
  private static func cut(
    _ segment: WALSegmentFile, to size: Int, directory: String, fs: any FileSystem
  ) throws(StorageError) {
    let path = joinPath(directory, segment.name)
    do {
      if size < WALSegment.headerSize {
        try fs.unlink(path)
        try fs.syncDirectory(directory)
        return
      }
      let f = try fs.open(path, .write)
      defer { try? fs.close(f) }
      try fs.truncate(f, to: Int64(size))
      try fs.syncData(f)
    } catch {
      throw StorageError(error, "cutting log segment \(segment.name)")
    }
  }

  private static func syncFile(_ name: String, _ directory: String, _ fs: any FileSystem)
    throws(StorageError)
  {
    do {
      let f = try fs.open(joinPath(directory, name), .write)
      defer { try? fs.close(f) }
      try fs.syncData(f)
    } catch {
      throw StorageError(error, "syncing log segment \(name)")
    }
  }
}
