// Snapshot files: written and read back, rejected when damaged or cut short anywhere,
// and never seen half-written under their name whatever point a power cut hits.

import SubcenterCore
import SubcenterStore
import SubcenterTestSupport
import Testing

@Suite struct SnapshotTests {
  /// The records of a small state: a workspace, persons, suppressions.
  static func records(persons: Int = 20) throws -> [SnapshotRecord] {
    let workspace = try Workspace(Samples.config)
    var out: [SnapshotRecord] = [.workspace(WorkspaceSnapshot(workspace))]
    for i in 0..<persons {
      var p = SnapshotRecordCodecTests.person()
      p.key = .person("user-\(i)")
      p.email = "user\(i)@example.com"
      out.append(.person(workspace: "acme", p))
    }
    out.append(.suppressions(workspace: "acme", [Samples.hashA, Samples.hashB]))
    return out
  }

  private func write(_ fs: any FileSystem, seq: UInt64, _ records: [SnapshotRecord])
    throws(StorageError) -> String
  {
    let w = try SnapshotWriter(directory: "/data", seq: seq, fileSystem: fs)
    for r in records { try w.append(r) }
    return try w.commit()
  }

  private func readAll(_ fs: any FileSystem, _ name: String) throws(StorageError)
    -> (SnapshotInfo, [SnapshotRecord])
  {
    var out: [SnapshotRecord] = []
    let info = try SnapshotFile.read(name, directory: "/data", fileSystem: fs) {
      (r) throws(StorageError) in out.append(r)
    }
    return (info, out)
  }

  @Test func writesAndReadsBack() throws {
    let fs = try dataDirectory()
    let records = try Self.records()
    let name = try write(fs, seq: 1234, records)
    #expect(name == "snapshot-00000000000000001234.snap")
    #expect(try fs.list("/data") == [name])
    // Durable under its name without any further sync.
    #expect(fs.durableContents("/data/" + name) == fs.contents("/data/" + name))
    let (info, back) = try readAll(fs, name)
    #expect(info.seq == 1234 && info.records == records.count)
    #expect(back == records)
    #expect(
      try SnapshotFile.validate(name, directory: "/data", fileSystem: fs).records == records.count)
    #expect(try SnapshotFile.list(directory: "/data", fileSystem: fs).map(\.seq) == [1234])

    // An empty snapshot is valid too.
    let empty = try write(fs, seq: 1, [])
    #expect(try readAll(fs, empty).1.isEmpty)
    #expect(try SnapshotFile.list(directory: "/data", fileSystem: fs).map(\.seq) == [1, 1234])
  }

  @Test func aLargeSnapshotSpansManyReads() throws {
    // More than the reader's 4 MiB chunks and the writer's 1 MiB flushes.
    let fs = try dataDirectory()
    var big = SnapshotRecordCodecTests.person()
    big.history = (1...3000).map {
      HistoryRecord(
        seq: UInt32($0), at: Int64($0), action: .subscribe, source: "s", actor: "a",
        detail: String(repeating: "x", count: 100))
    }
    let records = (0..<30).map { i -> SnapshotRecord in
      var p = big
      p.key = .person("p\(i)")
      return .person(workspace: "w", p)
    }
    let name = try write(fs, seq: 9, records)
    #expect((fs.contents("/data/" + name)?.count ?? 0) > 8 << 20)
    let (info, back) = try readAll(fs, name)
    #expect(info.records == 30)
    #expect(back == records)
  }

  @Test func everyTruncationIsRejected() throws {
    let fs = try dataDirectory()
    let records = try Self.records(persons: 3)
    let name = try write(fs, seq: 5, records)
    let full = fs.contents("/data/" + name)!
    for cut in 0..<full.count {
      let damaged = try dataDirectory()
      damaged.setContents("/data/" + name, Array(full[0..<cut]))
      do {
        _ = try readAll(damaged, name)
        Issue.record("a snapshot cut at \(cut) of \(full.count) was accepted")
      } catch {
        #expect(error.kind == .damaged)
        #expect(error.file == name)
      }
    }
  }

  @Test func everyFlippedByteIsRejected() throws {
    let fs = try dataDirectory()
    let records = try Self.records(persons: 2)
    let name = try write(fs, seq: 5, records)
    let full = fs.contents("/data/" + name)!
    for i in 0..<full.count {
      var bytes = full
      bytes[i] ^= 0x01
      let damaged = try dataDirectory()
      damaged.setContents("/data/" + name, bytes)
      do {
        _ = try readAll(damaged, name)
        Issue.record("a snapshot with byte \(i) flipped was accepted")
      } catch {
        #expect(error.kind == .damaged, "byte \(i): \(error)")
        #expect(error.message.contains(name))
      }
    }
    // Extra bytes at the end are damage too.
    let longer = try dataDirectory()
    longer.setContents("/data/" + name, full + [0])
    #expect(throws: StorageError.self) { _ = try readAll(longer, name) }
  }

  @Test func headerChecks() throws {
    let fs = try dataDirectory()
    let name = try write(fs, seq: 5, [])
    var bytes = fs.contents("/data/" + name)!
    // Renamed to another seq: the header disagrees with the name.
    fs.setContents("/data/" + SnapshotFile.fileName(seq: 6), bytes)
    do {
      _ = try readAll(fs, SnapshotFile.fileName(seq: 6))
      Issue.record("a snapshot under another seq was accepted")
    } catch {
      #expect(error.message.contains("seq"))
    }
    // Another version.
    bytes[8] = 2
    fs.setContents("/data/" + name, bytes)
    do {
      _ = try readAll(fs, name)
      Issue.record("version 2 was accepted")
    } catch {
      #expect(error.message.contains("version 2"))
    }
  }

  @Test func aPowerCutNeverLeavesAHalfSnapshotUnderItsName() throws {
    let records = try Self.records(persons: 5)
    var sawNone = false
    var sawWhole = false
    for n in 1...12 {
      for seed in [nil, UInt64(n)] as [UInt64?] {
        let fs = try dataDirectory()
        fs.crash(afterOperations: n, seed: seed)
        do {
          _ = try write(fs, seq: 77, records)
        } catch {
          #expect(error.kind == .io || error.kind == .noSpace)
        }
        if fs.crashes == 0 { fs.crash(seed: seed) }
        fs.restart()
        let names = try SnapshotFile.list(directory: "/data", fileSystem: fs).map(\.name)
        if names.isEmpty {
          sawNone = true
        } else {
          // Under its name, it is whole.
          #expect(try readAll(fs, names[0]).1 == records, "crash at call \(n)")
          sawWhole = true
        }
        try SnapshotFile.removeTemporaryFiles(directory: "/data", fileSystem: fs)
        #expect(try fs.list("/data").allSatisfy { !$0.hasSuffix(".tmp") })
      }
    }
    #expect(sawNone && sawWhole)
  }

  @Test func abandonedSnapshotsLeaveNothing() throws {
    let fs = try dataDirectory()
    let w = try SnapshotWriter(directory: "/data", seq: 3, fileSystem: fs)
    try w.append(.suppressions(workspace: "w", [Samples.hashA]))
    w.abandon()
    #expect(try fs.list("/data").isEmpty)
    // A write error abandons too.
    fs.fail(.write)
    let w2 = try SnapshotWriter(directory: "/data", seq: 4, fileSystem: fs)
    #expect(throws: StorageError.self) { try w2.commit() }
    #expect(try fs.list("/data").isEmpty)
  }

  @Test func names() {
    #expect(SnapshotFile.fileName(seq: 42) == "snapshot-00000000000000000042.snap")
    #expect(SnapshotFile.seq(fileName: "snapshot-00000000000000000042.snap") == 42)
    #expect(SnapshotFile.seq(fileName: "snapshot-00000000000000000042.snap.tmp") == nil)
    #expect(SnapshotFile.seq(fileName: "snapshot-42.snap") == nil)
  }
}
