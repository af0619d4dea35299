// Record framing and segment scanning: a torn tail at every byte offset, zeros at the end,
// damage in the middle named by offset, wrong seqs, damaged headers.

import Dispatch
import SubcenterCore
import SubcenterStore
import Synchronization
import Testing

/// A segment built in memory: header + records 1...n (seq first in each payload).
func segmentBytes(firstSeq: UInt64 = 1, count: Int) -> (bytes: [UInt8], recordStarts: [Int]) {
  var bytes = WALSegment.header(firstSeq: firstSeq)
  var starts: [Int] = []
  for i in 0..<count {
    starts.append(bytes.count)
    let seq = firstSeq + UInt64(i)
    RecordFrame.append(LogRecordCodec.encode(Samples.command(Int(seq)), seq: seq), to: &bytes)
  }
  return (bytes, starts)
}

@Suite struct SegmentTests {
  @Test func framesParse() {
    var buf: [UInt8] = []
    RecordFrame.append([1, 2, 3], to: &buf)
    RecordFrame.append([4], to: &buf)
    #expect(buf.count == 8 + 3 + 8 + 1)
    buf.withUnsafeBytes { b in
      #expect(RecordFrame.parse(b, at: 0) == .record(payload: 8..<11, next: 11))
      #expect(RecordFrame.parse(b, at: 11) == .record(payload: 19..<20, next: 20))
    }
    // The checksum covers the length: changing it is caught.
    var bad = buf
    bad[0] = 2
    bad.withUnsafeBytes { b in
      guard case .invalid = RecordFrame.parse(b, at: 0) else {
        Issue.record("a changed length passed")
        return
      }
    }
    // Zeros are never a record.
    let zeros = [UInt8](repeating: 0, count: 16)
    zeros.withUnsafeBytes { b in
      guard case .invalid = RecordFrame.parse(b, at: 0) else {
        Issue.record("zeros parsed")
        return
      }
    }
  }

  @Test func names() {
    #expect(WALSegment.fileName(firstSeq: 1) == "wal-00000000000000000001.log")
    #expect(WALSegment.fileName(firstSeq: UInt64.max) == "wal-18446744073709551615.log")
    #expect(WALSegment.firstSeq(fileName: "wal-00000000000000000042.log") == 42)
    #expect(WALSegment.firstSeq(fileName: "wal-42.log") == nil)
    #expect(WALSegment.firstSeq(fileName: "wal-0000000000000000004x.log") == nil)
    #expect(WALSegment.firstSeq(fileName: "wal-00000000000000000042.log.tmp") == nil)
    // The edges of 20 digits: the largest seq, and one past it.
    #expect(WALSegment.firstSeq(fileName: "wal-18446744073709551615.log") == UInt64.max)
    #expect(WALSegment.firstSeq(fileName: "wal-18446744073709551616.log") == nil)
    #expect(WALSegment.firstSeq(fileName: "wal-99999999999999999999.log") == nil)
    #expect(WALSegment.firstSeq(fileName: "wal-000000000000000000é.log") == nil)
  }

  /// `readEach` gives each segment's result in the segments' order and calls its body once
  /// a segment, whatever the number of threads.
  @Test func readEachKeepsTheOrderAndReadsEachSegmentOnce() {
    for count in [0, 1, 2, 7, 200] {
      let segments = (0..<count).map { WALSegmentFile(firstSeq: UInt64($0) * 10 + 1) }
      for threads in [1, 2, 3, 8] {
        let calls = Mutex<[UInt64: Int]>([:])
        let names = WALSegment.readEach(segments, threads: threads) { s in
          calls.withLock { $0[s.firstSeq, default: 0] += 1 }
          return s.name
        }
        #expect(names == segments.map(\.name), "\(count) segments, \(threads) threads")
        let counts = calls.withLock { $0 }
        #expect(counts.count == count && counts.values.allSatisfy { $0 == 1 })
      }
    }
  }

  /// With two threads, two segments are read at the same time: each read waits for the
  /// other to have started (one thread at a time would wait for ever; bounded at 10 s).
  @Test func readEachReadsSegmentsAtTheSameTime() {
    let segments = [WALSegmentFile(firstSeq: 1), WALSegmentFile(firstSeq: 2)]
    let started = [DispatchSemaphore(value: 0), DispatchSemaphore(value: 0)]
    let met = WALSegment.readEach(segments, threads: 2) { s in
      let i = Int(s.firstSeq) - 1
      started[i].signal()
      return started[1 - i].wait(timeout: .now() + .seconds(10)) == .success
    }
    #expect(met == [true, true])
  }

  @Test func cleanSegment() throws {
    let (bytes, _) = segmentBytes(firstSeq: 5, count: 4)
    let scan = WALSegment.scan(bytes, file: "f", firstSeq: 5)
    #expect(scan.damage == nil)
    #expect(scan.records.count == 4)
    #expect(scan.validEnd == bytes.count)
    for i in 0..<4 {
      let (seq, command) = try LogRecordCodec.decode(scan.payload(i))
      #expect(seq == UInt64(5 + i))
      #expect(command == Samples.command(5 + i))
    }
    // An empty segment (header only) is clean too.
    let empty = WALSegment.scan(WALSegment.header(firstSeq: 9), file: "f", firstSeq: 9)
    #expect(empty.damage == nil && empty.records.isEmpty)
  }

  @Test func tornTailAtEveryByteOfTheLastTwoRecords() {
    let (bytes, starts) = segmentBytes(count: 6)
    let boundaries = starts + [bytes.count]
    for cut in starts[4]...bytes.count {
      let scan = WALSegment.scan(Array(bytes[0..<cut]), file: "f", firstSeq: 1)
      let whole = boundaries.filter { $0 <= cut }.count - 1
      #expect(scan.records.count == whole, "cut \(cut)")
      #expect(scan.validEnd == boundaries[whole], "cut \(cut)")
      if boundaries.contains(cut) {
        #expect(scan.damage == nil, "cut \(cut)")
      } else {
        #expect(scan.damage?.kind == .tornTail, "cut \(cut)")
        #expect(scan.damage?.offset == boundaries[whole], "cut \(cut)")
      }
    }
  }

  @Test func tornHeader() {
    let (bytes, _) = segmentBytes(count: 1)
    for cut in 0..<WALSegment.headerSize {
      let scan = WALSegment.scan(Array(bytes[0..<cut]), file: "f", firstSeq: 1)
      #expect(scan.damage?.kind == .tornTail)
      #expect(scan.validEnd == 0)
    }
  }

  @Test func zerosAfterTheRecordsAreUnwrittenSpaceNotDamage() {
    let (bytes, starts) = segmentBytes(count: 3)
    // Zeros the writer preallocated (or blocks that never got their data): the end.
    var zeroed = bytes + [UInt8](repeating: 0, count: 4096)
    var scan = WALSegment.scan(zeroed, file: "f", firstSeq: 1)
    #expect(scan.damage == nil)
    #expect(scan.records.count == 3)
    #expect(scan.validEnd == bytes.count)
    #expect(scan.unwrittenBytes == 4096)
    // The last record zeroed in place: it is gone, the rest reads.
    zeroed = bytes
    for i in starts[2]..<bytes.count { zeroed[i] = 0 }
    scan = WALSegment.scan(zeroed, file: "f", firstSeq: 1)
    #expect(scan.damage == nil)
    #expect(scan.records.count == 2)
    // A record cut short and followed by zeros is torn; one followed by a non-zero byte
    // after the zeros is torn too.
    zeroed = Array(bytes[..<(bytes.count - 3)]) + [UInt8](repeating: 0, count: 100)
    scan = WALSegment.scan(zeroed, file: "f", firstSeq: 1)
    #expect(scan.damage?.kind == .tornTail)
    #expect(scan.records.count == 2)
    zeroed = bytes + [UInt8](repeating: 0, count: 100) + [7]
    scan = WALSegment.scan(zeroed, file: "f", firstSeq: 1)
    #expect(scan.damage?.kind == .tornTail)
    #expect(scan.records.count == 3)
  }

  @Test func damageInTheMiddleNamesItsOffset() {
    let (bytes, starts) = segmentBytes(count: 5)
    // A flipped bit in every byte of record 2 (its length, checksum or payload).
    for i in starts[1]..<starts[2] {
      var damaged = bytes
      damaged[i] ^= 0x10
      let scan = WALSegment.scan(damaged, file: "wal-x.log", firstSeq: 1)
      #expect(scan.damage?.kind == .corrupt, "byte \(i)")
      #expect(scan.damage?.offset == starts[1], "byte \(i)")
      #expect(scan.records.count == 1)
      #expect(scan.validEnd == starts[1])
    }
  }

  @Test func wrongSeqIsDamage() {
    var (bytes, starts) = segmentBytes(count: 2)
    // Replace record 2 with a valid frame holding seq 7.
    bytes.removeSubrange(starts[1]...)
    RecordFrame.append(LogRecordCodec.encode(Samples.command(7), seq: 7), to: &bytes)
    let scan = WALSegment.scan(bytes, file: "f", firstSeq: 1)
    #expect(scan.damage?.kind == .corrupt)
    #expect(scan.damage?.offset == starts[1])
    #expect(scan.damage?.reason.contains("seq 7") == true)
    // A header for another first seq.
    let other = segmentBytes(firstSeq: 3, count: 1).bytes
    #expect(WALSegment.scan(other, file: "f", firstSeq: 1).damage?.kind == .corrupt)
  }

  @Test func damagedHeaderWithRecordsAfterIsDamage() {
    var (bytes, _) = segmentBytes(count: 2)
    bytes[2] ^= 1
    let scan = WALSegment.scan(bytes, file: "f", firstSeq: 1)
    #expect(scan.damage?.kind == .corrupt)
    #expect(scan.damage?.offset == 0)
    // Version 2 is refused even with a valid checksum.
    var v2 = Array(WALSegment.magic) + [2, 0, 0, 0] + [1, 0, 0, 0, 0, 0, 0, 0]
    let crc = CRC32C.checksum(v2)
    v2 += [UInt8(crc & 0xFF), UInt8(crc >> 8 & 0xFF), UInt8(crc >> 16 & 0xFF), UInt8(crc >> 24)]
    let v2scan = WALSegment.scan(v2, file: "f", firstSeq: 1)
    #expect(v2scan.damage?.kind == .corrupt)
    #expect(v2scan.damage?.reason.contains("version 2") == true)
  }
}
