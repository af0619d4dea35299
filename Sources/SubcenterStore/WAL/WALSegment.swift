// Log segment files and how they are read back.
//
// A segment is `wal-<first seq>.log`, the sequence number of its first record written in
// 20 decimal digits, zero-padded (`wal-00000000000000000001.log`), so names sort by seq.
//
//   offset  size  field
//   0       8     magic      "SUBCWLOG"
//   8       4     version    u32 little-endian, 1
//   12      8     first seq  u64 little-endian, the seq in the file name
//   20      4     crc        u32 little-endian: CRC-32C of bytes 0 ..< 20
//   24      ...   records    framed (RecordFrame.swift); each payload is a `LogRecord`
//                            whose first field is its `seq` (field 1, varint: byte 0x08
//                            then the varint), the first record's seq being the file's
//                            first seq and each next one the previous plus 1
//
// Reading a segment back tells a torn tail from damage: a frame that is cut short or
// fails its checksum with no valid frame anywhere after it is a torn tail (a write the
// crash interrupted; the writer never acknowledged it); one followed by a valid frame is
// damage in the middle. A valid frame holding the wrong seq is damage too.

import Glibc
import Synchronization

/// A segment file of the log.
public struct WALSegmentFile: Sendable, Equatable, CustomStringConvertible {
  public let name: String
  /// The seq of its first record (from its name).
  public let firstSeq: UInt64

  public init(firstSeq: UInt64) {
    self.init(name: WALSegment.fileName(firstSeq: firstSeq), firstSeq: firstSeq)
  }

  /// A listed file whose name `WALSegment.firstSeq(fileName:)` read as `firstSeq`.
  fileprivate init(name: String, firstSeq: UInt64) {
    self.name = name
    self.firstSeq = firstSeq
  }

  public var description: String { name }
}

/// Where reading a segment stopped early.
public struct SegmentDamage: Sendable, Equatable, CustomStringConvertible {
  public enum Kind: Sendable, Equatable {
    /// The last frame is incomplete or invalid and nothing valid follows: a torn write.
    case tornTail
    /// Invalid bytes followed by valid ones, a bad header, or a wrong seq.
    case corrupt
  }

  public let kind: Kind
  /// Byte offset in the file where the bad bytes start.
  public let offset: Int
  public let reason: String

  public var description: String {
    "\(kind == .tornTail ? "torn tail" : "damage") at byte offset \(offset): \(reason)"
  }
}

/// The records read from one segment.
public struct SegmentScan: Sendable {
  /// The file name.
  public let file: String
  /// The whole file as read.
  public let bytes: [UInt8]
  /// The payload of every valid record, in order, as ranges of `bytes`.
  public let records: [Range<Int>]
  /// The seq of each record (a record may take several: `LogRecord.seq_count`).
  public let seqs: [UInt64]
  /// The seq after the last valid record's: where the next segment starts.
  public let endSeq: UInt64
  /// Where the last valid record (or the header) ends: the size to cut the file to.
  public let validEnd: Int
  /// Why reading stopped before the end of the file, if it did.
  public let damage: SegmentDamage?

  /// The zeros after the last record of an undamaged segment: space the writer
  /// preallocated and never wrote (0 when the records end the file).
  public var unwrittenBytes: Int { damage == nil ? bytes.count - validEnd : 0 }

  /// Whether the file ends inside a record that a snapshot at `snapshotSeq` holds: not a
  /// crash's torn write (every record a snapshot holds was synced before the snapshot was
  /// written) but a file cut short (a copy that failed), or lost to a power cut under
  /// `--fsync none` or `interval`. A whole last record that does not check out (a flipped
  /// bit) is not this: the snapshot holds it, and cutting it loses nothing.
  public func isCutInsideRecords(heldBy snapshotSeq: UInt64) -> Bool {
    damage?.kind == .tornTail && endSeq <= snapshotSeq && endsInsideARecord
  }

  /// Whether reading stopped at a record whose frame runs past the end of the file (a
  /// write, or a copy, cut short), rather than at a whole frame that does not check out.
  private var endsInsideARecord: Bool {
    guard let d = damage, d.offset >= WALSegment.headerSize else { return false }
    let left = bytes.count - d.offset
    guard left >= RecordFrame.headerSize else { return true }
    let length = bytes.withUnsafeBytes { Int(readLE32($0, d.offset)) }
    return RecordFrame.headerSize + length > left
  }

  /// The payload of record `i`.
  public func payload(_ i: Int) -> ArraySlice<UInt8> { bytes[records[i]] }

  /// How many seqs record `i` takes.
  public func seqCount(_ i: Int) -> UInt64 { (i + 1 < seqs.count ? seqs[i + 1] : endSeq) - seqs[i] }
}

/// Segment file names, headers, and reading.
public enum WALSegment {
  public static let magic: [UInt8] = Array("SUBCWLOG".utf8)
  public static let version: UInt32 = 1
  public static let headerSize = 24

  /// `wal-<firstSeq, 20 digits>.log`.
  public static func fileName(firstSeq: UInt64) -> String {
    let digits = String(firstSeq)
    return "wal-" + String(repeating: "0", count: max(0, 20 - digits.count)) + digits + ".log"
  }

  /// The first seq a segment file name holds, nil if `name` is not a segment's.
  public static func firstSeq(fileName name: String) -> UInt64? {
    guard name.utf8.count == 28, name.hasPrefix("wal-"), name.hasSuffix(".log") else { return nil }
    var seq: UInt64 = 0
    for c in name.utf8.dropFirst(4).prefix(20) {
      guard c >= 0x30 && c <= 0x39 else { return nil }
      let (times10, o1) = seq.multipliedReportingOverflow(by: 10)
      let (sum, o2) = times10.addingReportingOverflow(UInt64(c - 0x30))
      guard !o1 && !o2 else { return nil }
      seq = sum
    }
    return seq
  }

  /// The segment files of `directory`, by first seq.
  public static func list(directory: String, fileSystem fs: any FileSystem)
    throws(StorageError) -> [WALSegmentFile]
  {
    let names: [String]
    do { names = try fs.list(directory) } catch {
      throw StorageError(error, "listing the data directory")
    }
    // The listed names as they are (a data directory may hold tens of thousands of
    // segments, listed at every compaction and retention pass).
    return names.compactMap { n in
      firstSeq(fileName: n).map { WALSegmentFile(name: n, firstSeq: $0) }
    }
    .sorted { $0.firstSeq < $1.firstSeq }
  }

  /// The 24-byte header of a segment whose first record has seq `firstSeq`.
  public static func header(firstSeq: UInt64) -> [UInt8] {
    var h = magic
    h += littleEndianBytes(version)
    h += littleEndianBytes(firstSeq)
    h += littleEndianBytes(CRC32C.checksum(h))
    return h
  }

  /// `body` of each of `segments`, in their order, run on up to `threads` threads at
  /// once (the caller's and threads of their own, ended before it returns), each segment
  /// by one of them: for reading many segments, whose reads and decoding are independent.
  public static func readEach<T: Sendable>(
    _ segments: [WALSegmentFile], threads: Int, _ body: (WALSegmentFile) -> T
  ) -> [T] {
    let threads = min(threads, segments.count)
    guard threads > 1 else { return segments.map(body) }
    let results = Mutex<[T?]>(Array(repeating: nil, count: segments.count))
    let next = Atomic<Int>(0)
    withoutActuallyEscaping(body) { body in
      // `body` runs on this thread and the ones started here, all ended before it returns.
      nonisolated(unsafe) let body = body
      let reader = SegmentReader {
        while true {
          let i = next.add(1, ordering: .relaxed).oldValue
          guard i < segments.count else { return }
          let result = body(segments[i])
          results.withLock { $0[i] = result }
        }
      }
      var started: [pthread_t] = []
      for _ in 1..<threads {
        var tid = pthread_t()
        let box = Unmanaged.passRetained(reader).toOpaque()
        if pthread_create(&tid, nil, segmentReaderMain, box) == 0 {
          started.append(tid)
        } else {
          Unmanaged<SegmentReader>.fromOpaque(box).release()  // fewer threads do it all
        }
      }
      reader.work()
      for tid in started { pthread_join(tid, nil) }
    }
    return results.withLock { $0.map { $0! } }
  }

  /// Reads the segment `name` of `directory`.
  public static func scan(
    _ segment: WALSegmentFile, directory: String, fileSystem fs: any FileSystem
  ) throws(StorageError) -> SegmentScan {
    let bytes: [UInt8]
    do {
      bytes = try fs.readFile(joinPath(directory, segment.name))
    } catch {
      throw StorageError(error, "reading log segment \(segment.name)")
    }
    return scan(bytes, file: segment.name, firstSeq: segment.firstSeq)
  }

  /// Reads the segment held in `bytes` (named `file`, first seq `firstSeq`).
  public static func scan(_ bytes: [UInt8], file: String, firstSeq: UInt64) -> SegmentScan {
    var records: [Range<Int>] = []
    var firstSeqs: [UInt64] = []
    var expected = firstSeq
    let (validEnd, damage) = bytes.withUnsafeBytes { b -> (Int, SegmentDamage?) in
      // Damage at `offset`: torn if no valid frame follows it, corrupt otherwise.
      func stop(_ offset: Int, _ reason: String, hint: Int? = nil) -> (Int, SegmentDamage?) {
        if let valid = RecordFrame.firstValidFrame(b, from: offset + 1, hint: hint) {
          return (
            offset,
            SegmentDamage(
              kind: .corrupt, offset: offset,
              reason: "\(reason), and a valid record follows at byte offset \(valid)")
          )
        }
        return (offset, SegmentDamage(kind: .tornTail, offset: offset, reason: reason))
      }

      // The header.
      if b.count < headerSize {
        return stop(0, "segment header cut short (\(b.count) of \(headerSize) bytes)")
      }
      if !b.prefix(8).elementsEqual(magic) {
        return stop(0, "not a log segment (bad magic)")
      }
      if CRC32C.update(0, UnsafeRawBufferPointer(rebasing: b[0..<20])) != readLE32(b, 20) {
        return stop(0, "segment header checksum mismatch")
      }
      let v = readLE32(b, 8)
      if v != version {
        return (
          0,
          SegmentDamage(
            kind: .corrupt, offset: 0,
            reason: "segment format version \(v) is not supported (this build reads \(version))")
        )
      }
      let headerSeq = readLE64(b, 12)
      if headerSeq != firstSeq {
        return (
          0,
          SegmentDamage(
            kind: .corrupt, offset: 0,
            reason: "segment header says first seq \(headerSeq), its name \(firstSeq)")
        )
      }

      // The records, up to the end of the file or to zeros that fill the rest of it
      // (preallocated space, never written: zeros are never a record).
      var offset = headerSize
      while offset < b.count {
        if b[offset] == 0 && !b[offset...].contains(where: { $0 != 0 }) { return (offset, nil) }
        switch RecordFrame.parse(b, at: offset) {
        case .record(let payload, let next):
          let seqs = leadingSequences(UnsafeRawBufferPointer(rebasing: b[payload]))
          guard let seqs, seqs.first == expected else {
            let found = seqs.map { "seq \($0.first)" } ?? "no seq"
            return (
              offset,
              SegmentDamage(
                kind: .corrupt, offset: offset,
                reason: "record holds \(found) where seq \(expected) was expected")
            )
          }
          records.append(payload)
          firstSeqs.append(expected)
          expected += seqs.count
          offset = next
        case .incomplete(let reason):
          return stop(offset, reason)
        case .invalid(let reason):
          let length = Int(readLE32(b, offset))
          return stop(offset, reason, hint: offset + RecordFrame.headerSize + length)
        }
      }
      return (offset, nil)
    }
    return SegmentScan(
      file: file, bytes: bytes, records: records, seqs: firstSeqs, endSeq: expected,
      validEnd: validEnd, damage: damage)
  }

  /// The `seq` a log record's payload starts with (field 1, varint), nil if it does not.
  static func leadingSequence(_ payload: UnsafeRawBufferPointer) -> UInt64? {
    leadingSequences(payload)?.first
  }

  /// The seqs a log record takes: the `seq` its payload starts with (field 1, varint) and
  /// the `seq_count` that follows it when it takes more than one (field 4, varint); nil
  /// if the payload does not start so.
  static func leadingSequences(_ payload: UnsafeRawBufferPointer) -> (first: UInt64, count: UInt64)?
  {
    guard payload.count >= 2, payload[0] == 0x08,
      let (first, end) = varint(payload, at: 1)
    else { return nil }
    guard end < payload.count, payload[end] == 0x20 else { return (first, 1) }
    guard let (count, _) = varint(payload, at: end + 1), count >= 1 else { return nil }
    return (first, count)
  }

  private static func varint(_ b: UnsafeRawBufferPointer, at start: Int) -> (UInt64, Int)? {
    var v: UInt64 = 0
    var shift: UInt64 = 0
    for i in start..<min(b.count, start + 10) {
      let byte = b[i]
      v |= UInt64(byte & 0x7F) << shift
      if byte < 0x80 { return (v, i + 1) }
      shift += 7
    }
    return nil
  }

  /// The seq of a log record's payload, nil if it does not start with one.
  public static func sequence(of payload: ArraySlice<UInt8>) -> UInt64? {
    payload.withUnsafeBytes { leadingSequence($0) }
  }
}

// MARK: Erasure

extension WALSegment {
  /// What `rewrite` does with a record.
  public enum RewriteDecision: Sendable, Equatable {
    case keep
    /// Replace it by `LogRecordCodec.erased(seq:)`: the seq stays, the change goes.
    case erase
    /// Replace it by this record (`LogRecordCodec.encode`, no seq: it keeps its seqs).
    case replace([UInt8])
  }

  /// Rewrites a complete segment — never the active one (`WriteAheadLog.rotate` first) —
  /// replacing each record `decide` says to erase by an erased record with the same seq,
  /// so seqs stay consecutive, or by the record it gives. The new file is written as
  /// `<name>.tmp`, synced, renamed over the segment and the directory synced: a crash
  /// leaves either the old segment or the new one. Returns how many records were erased or
  /// replaced; with none, the file is left untouched. A damaged segment is refused
  /// (`damaged`).
  @discardableResult
  public static func rewrite(
    _ segment: WALSegmentFile, directory: String, fileSystem fs: any FileSystem,
    _ decide: (_ seq: UInt64, _ payload: ArraySlice<UInt8>) throws(StorageError) -> RewriteDecision
  ) throws(StorageError) -> Int {
    let scan = try scan(segment, directory: directory, fileSystem: fs)
    if let damage = scan.damage {
      throw StorageError.damaged(segment.name, at: Int64(damage.offset), damage.reason)
    }
    var out = header(firstSeq: segment.firstSeq)
    out.reserveCapacity(scan.bytes.count)
    var changed = 0
    for i in 0..<scan.records.count {
      let seq = scan.seqs[i]
      let payload = scan.payload(i)
      switch try decide(seq, payload) {
      case .keep:
        payload.withUnsafeBytes { RecordFrame.append(sequence: nil, body: $0, to: &out) }
        continue
      case .erase:
        RecordFrame.append(LogRecordCodec.erased(seq: seq, count: scan.seqCount(i)), to: &out)
      case .replace(let record):
        record.withUnsafeBytes {
          RecordFrame.append(sequence: seq, count: scan.seqCount(i), body: $0, to: &out)
        }
      }
      changed += 1
    }
    guard changed > 0 else { return 0 }
    try replace(segment, with: out, directory: directory, fileSystem: fs)
    return changed
  }

  /// Writes `bytes` (a header and frames) as `segment` (`FileSystem.replaceFile`).
  static func replace(
    _ segment: WALSegmentFile, with bytes: [UInt8], directory: String,
    fileSystem fs: any FileSystem
  ) throws(StorageError) {
    do { try fs.replaceFile(segment.name, in: directory, with: bytes) } catch {
      throw StorageError(error, "rewriting log segment \(segment.name)")
    }
  }

  /// Deletes the segments named `names` (file names) and syncs the directory (nothing to
  /// do for none).
  public static func delete(_ names: [String], directory: String, fileSystem fs: any FileSystem)
    throws(StorageError)
  {
    do { try fs.removeFiles(names, in: directory) } catch {
      throw StorageError(error, "deleting log segments \(names.joined(separator: ", "))")
    }
  }

  /// Deletes the temporary files of segment rewrites that never finished; returns their
  /// names.
  @discardableResult
  public static func removeTemporaryFiles(directory: String, fileSystem fs: any FileSystem)
    throws(StorageError) -> [String]
  {
    try SubcenterStore.removeTemporaryFiles(
      directory: directory, fileSystem: fs, what: "unfinished segment rewrites"
    ) { firstSeq(fileName: $0) != nil }
  }
}

/// What a thread of `WALSegment.readEach` runs.
private final class SegmentReader {
  let work: () -> Void
  init(_ work: @escaping () -> Void) { self.work = work }
}

private func segmentReaderMain(_ arg: UnsafeMutableRawPointer?) -> UnsafeMutableRawPointer? {
  Unmanaged<SegmentReader>.fromOpaque(arg!).takeRetainedValue().work()
  return nil
}
