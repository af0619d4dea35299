// The direct reader of snapshot person records (PersonSnapshotReader.swift): it reads
// back what the writer writes, agrees with protobuf-c on damaged bytes (or refuses them
// with a clear error, never a crash), and a snapshot loaded in one pass still falls back
// to an older one when it turns out damaged.

import SubcenterCore
import SubcenterTestSupport
import Testing

@testable import SubcenterStore

@Suite struct PersonSnapshotReaderTests {
  /// A person with every field set, awkward values included.
  static func everything() -> Person {
    var p = SnapshotRecordCodecTests.person()
    p.key = .anonymous("anon-Ω-1")
    p.anonymousIDs = ["anon-Ω-1", "a2", String(repeating: "x", count: 300)]
    p.createdAt = -5
    p.updatedAt = Int64.max
    p.global = GlobalFlag(unsubscribed: false, updatedAt: Int64.min, source: "s\u{0}ürce")
    p.entries.append(
      PreferenceRecord(
        channel: NameID.max, topic: NameID.max, state: .unspecified, updatedAt: -1,
        source: "🙂", noticeVersion: String(repeating: "v", count: 200)))
    p.history.append(
      HistoryRecord(
        seq: UInt32.max, at: Int64.max, action: .override, channel: NameID.max, topic: 7,
        source: "src", actor: "actor", detail: "detail\nwith a newline"))
    p.nextHistorySeq = UInt32.max
    p.sends.append(SendRecord(channel: NameID.max, at: -3))
    return p
  }

  static let samples: [SnapshotRecord] = [
    .person(workspace: "acme", SnapshotRecordCodecTests.person()),
    .person(workspace: "acme", everything()),
    .person(workspace: "w", Person(key: .person("bare"), at: 0)),
    .person(workspace: "w", Person(key: .anonymous("anon"), at: 9)),
  ]

  @Test func readsBackWhatIsWritten() throws {
    for r in Self.samples {
      let bytes = SnapshotRecordCodec.encode(r)
      let direct = try bytes.withUnsafeBytes { try SnapshotRecordCodec.person(in: $0)?.person }
      #expect(direct != nil, "a person record went to protobuf-c")
      #expect(try SnapshotRecordCodec.decode(bytes[...]) == r)
      #expect(try SnapshotRecordCodec.decodeWithProtobufC(bytes[...]) == r)
    }
  }

  @Test func otherRecordsGoToProtobufC() throws {
    let records: [SnapshotRecord] = [
      .workspace(WorkspaceSnapshot(try Workspace(Samples.config))),
      .suppressions(workspace: "acme", [Samples.hashA]),
    ]
    for r in records {
      let bytes = SnapshotRecordCodec.encode(r)
      #expect(try bytes.withUnsafeBytes { try SnapshotRecordCodec.person(in: $0)?.person } == nil)
      #expect(try SnapshotRecordCodec.decode(bytes[...]) == r)
    }
  }

  /// The direct reader and protobuf-c agree: both refuse, or both read the same record.
  /// The direct reader may refuse more: a NUL byte in a `string` field (protobuf-c would
  /// cut the string there).
  private func agree(_ bytes: [UInt8], _ what: String) {
    let direct = Result { () throws(StorageError) in try SnapshotRecordCodec.decode(bytes[...]) }
    let reference = Result { () throws(StorageError) in
      try SnapshotRecordCodec.decodeWithProtobufC(bytes[...])
    }
    switch (direct, reference) {
    case (.success(let a), .success(let b)):
      #expect(a == b, "\(what): read differently")
    case (.failure(let e), .success):
      #expect(e.message.contains("NUL"), "\(what): refused (\(e)), protobuf-c reads it")
    case (.success, .failure(let e)):
      Issue.record("\(what): read, protobuf-c refuses it (\(e))")
    case (.failure(let e), .failure):
      #expect(e.kind == .damaged, "\(what): \(e)")
    }
  }

  @Test func agreesWithProtobufCOnEveryTruncation() {
    for r in Self.samples {
      let bytes = SnapshotRecordCodec.encode(r)
      for n in 0..<bytes.count { agree(Array(bytes[..<n]), "cut to \(n) of \(bytes.count)") }
    }
  }

  @Test func agreesWithProtobufCOnDamagedBytes() {
    for r in Self.samples.prefix(2) {
      let bytes = SnapshotRecordCodec.encode(r)
      for i in bytes.indices {
        for v: UInt8 in [0x00, 0x80, 0xFF, bytes[i] ^ 0x01, bytes[i] ^ 0x08] {
          var b = bytes
          b[i] = v
          agree(b, "byte \(i) set to \(v)")
        }
      }
    }
  }

  @Test func refusesWithClearErrors() throws {
    func refusal(_ bytes: [UInt8]) -> String {
      do {
        _ = try SnapshotRecordCodec.decode(bytes[...])
        return "read"
      } catch {
        return error.message
      }
    }
    // record.person = { workspace: "w" } (no key).
    #expect(refusal([0x12, 0x03, 0x0A, 0x01, 0x77]) == "person.key is missing")
    // record.person = { key: {} }.
    #expect(refusal([0x12, 0x02, 0x12, 0x00]) == "person.key: no person key")
    // A length running past the end of the person message.
    #expect(refusal([0x12, 0x03, 0x0A, 0x05, 0x77]).contains("runs past the end"))
    // A varint cut short.
    #expect(refusal([0x12, 0x02, 0x30, 0x80]).contains("varint runs past the end"))
    // An eleven-byte varint.
    #expect(
      refusal([0x12, 0x0C, 0x30] + [UInt8](repeating: 0xFF, count: 10) + [0x01])
        .contains("too long"))
    // A key given as a varint.
    #expect(refusal([0x12, 0x02, 0x10, 0x01]).contains("person.key has wire type 0"))
    // Two send channels, one send time.
    #expect(
      refusal([0x12, 0x0C, 0x12, 0x03, 0x0A, 0x01, 0x70, 0x62, 0x02, 0x01, 0x01, 0x6A, 0x01, 0x05])
        == "person: 2 send channels but 1 send times")
    // A channel number beyond NameID.
    #expect(
      refusal([0x12, 0x0B, 0x12, 0x03, 0x0A, 0x01, 0x70, 0x4A, 0x04, 0x08, 0x80, 0x80, 0x04])
        .contains("is not a channel or topic number"))
    // A NUL in an identifier.
    #expect(
      refusal([0x12, 0x05, 0x12, 0x03, 0x0A, 0x01, 0x00]) == "person_key.person_id holds a NUL byte"
    )
  }
}

@Suite struct SnapshotLoadTests {
  private let secret = Array("snapshot-load-test-secret".utf8)

  private func writeSnapshot(_ fs: any FileSystem, seq: UInt64, _ records: [SnapshotRecord])
    throws
  {
    let w = try SnapshotWriter(directory: "/data", seq: seq, fileSystem: fs)
    for r in records { try w.append(r) }
    try w.commit()
  }

  private func open(_ fs: any FileSystem) throws -> (DurableStore, DurableStore.RecoveryReport) {
    try DurableStore.open(
      directory: "/data", fileSystem: fs, clock: ManualClock(), secret: secret, fsync: .none,
      truncateDamaged: false, log: { _ in })
  }

  private func persons(_ keys: [String]) throws -> [SnapshotRecord] {
    var out: [SnapshotRecord] = [.workspace(WorkspaceSnapshot(try Workspace(Samples.config)))]
    for k in keys {
      var p = SnapshotRecordCodecTests.person()
      p.key = .person(k)
      p.email = "\(k)@example.com"
      p.phone = ""
      p.anonymousIDs = []
      out.append(.person(workspace: "acme", p))
    }
    return out
  }

  @Test func loadsEveryRecord() throws {
    let fs = FaultyFileSystem()
    try fs.createDirectory("/data")
    let records =
      try persons((0..<50).map { "p\($0)" })
      + [.suppressions(workspace: "acme", [Samples.hashA])]
    try writeSnapshot(fs, seq: 3, records)
    let (durable, report) = try open(fs)
    defer { durable.close() }
    #expect(report.snapshot == SnapshotFile.fileName(seq: 3))
    #expect(report.persons == 50)
    #expect(report.warnings.isEmpty)
    let want = records.compactMap { r -> Person? in
      if case .person(_, let p) = r { return p }
      return nil
    }
    #expect(
      durable.store.persons(in: "acme").sorted { $0.key.value < $1.key.value }
        == want.sorted { $0.key.value < $1.key.value })
    #expect(durable.store.snapshotState().suppressions(in: "acme") == [Samples.hashA])
  }

  @Test func aSnapshotDamagedAfterItsFirstPersonsFallsBack() throws {
    let fs = FaultyFileSystem()
    try fs.createDirectory("/data")
    try writeSnapshot(fs, seq: 1, try persons(["old"]))
    try writeSnapshot(fs, seq: 2, try persons((0..<20).map { "p\($0)" }))
    let path = "/data/" + SnapshotFile.fileName(seq: 2)
    var bytes = try #require(fs.contents(path))
    bytes[bytes.count - 40] ^= 0x20  // inside the last person record
    fs.setContents(path, bytes)
    let (durable, report) = try open(fs)
    defer { durable.close() }
    #expect(report.snapshot == SnapshotFile.fileName(seq: 1))
    #expect(report.persons == 1)
    #expect(report.warnings.contains { $0.contains("falling back") })
    #expect(durable.store.persons(in: "acme").map(\.key.value) == ["old"])
  }

  @Test func aRecordThatDoesNotRestoreIsAnErrorUnlessTheFileIsDamaged() throws {
    let fs = FaultyFileSystem()
    try fs.createDirectory("/data")
    try writeSnapshot(fs, seq: 1, try persons(["old"]))
    // A person of a workspace the snapshot never configured.
    try writeSnapshot(
      fs, seq: 2,
      try persons(["p"]) + [.person(workspace: "nowhere", Person(key: .person("x"), at: 0))])
    // Named by its place: the third record (workspace, p, then it), after 20 + 2 frames.
    #expect {
      _ = try open(fs)
    } throws: {
      guard let e = $0 as? StorageError, let at = e.offset else { return false }
      return e.message.contains("record 2: cannot restore a record") && at > 20
        && e.file == SnapshotFile.fileName(seq: 2)
    }

    // The same, with the file damaged after that record: the older snapshot is used.
    let path = "/data/" + SnapshotFile.fileName(seq: 2)
    var bytes = try #require(fs.contents(path))
    bytes[bytes.count - 1] ^= 0x01  // the file checksum
    fs.setContents(path, bytes)
    let (durable, report) = try open(fs)
    defer { durable.close() }
    #expect(report.snapshot == SnapshotFile.fileName(seq: 1))
    #expect(report.warnings.contains { $0.contains("file checksum mismatch") })
  }

  /// Persons are restored in batches on worker threads (`SnapshotRestorer.batchSize`):
  /// several batches, a workspace configured between persons (restored once the batches
  /// before it are), and suppressions after them all load.
  @Test func loadsPersonsAcrossManyBatches() throws {
    let fs = FaultyFileSystem()
    try fs.createDirectory("/data")
    let n = 2 * SnapshotRestorer.batchSize + 100
    var second = Samples.config
    second.workspace = "beta"
    var records = try persons((0..<n).map { "p\($0)" })
    records.append(.workspace(WorkspaceSnapshot(try Workspace(second))))
    records.append(.person(workspace: "beta", Person(key: .person("b0"), at: 0)))
    records.append(.suppressions(workspace: "acme", [Samples.hashA]))
    try writeSnapshot(fs, seq: 3, records)
    let (durable, report) = try open(fs)
    defer { durable.close() }
    #expect(report.persons == n + 1)
    #expect(durable.store.persons(in: "acme").count == n)
    #expect(durable.store.persons(in: "beta").map(\.key.value) == ["b0"])
    #expect(
      try durable.store.profile(workspace: "acme", person: .email("p\(n - 1)@example.com")).email
        == "p\(n - 1)@example.com")
    #expect(durable.store.snapshotState().suppressions(in: "acme") == [Samples.hashA])
  }

  /// A record that fails in a later batch is reported as restoring in order would: by its
  /// number and offset in the file, and the first one in the file when several fail.
  @Test func aFailingPersonInALaterBatchIsNamedByItsPlace() throws {
    let fs = FaultyFileSystem()
    try fs.createDirectory("/data")
    let w = try SnapshotWriter(directory: "/data", seq: 5, fileSystem: fs)
    let records = try persons((0..<3000).map { "p\($0)" })
    for r in records { try w.append(r) }
    // A SnapshotRecord holding one person (field 2) whose message is not a PersonSnapshot.
    let bad: [UInt8] = [0x12, 0x02, 0xFF, 0xFF]
    try w.append(payload: bad)
    for r in try persons((3000..<3100).map { "q\($0)" }).dropFirst() { try w.append(r) }
    try w.append(payload: bad)
    try w.commit()
    let name = SnapshotFile.fileName(seq: 5)
    var error: StorageError?
    #expect {
      _ = try open(fs)
    } throws: {
      error = $0 as? StorageError
      return true
    }
    let e = try #require(error)
    #expect(e.kind == .damaged && e.file == name, "\(e)")
    #expect(e.message.contains("record \(records.count):"), "\(e)")
    let bytes = try #require(fs.contents("/data/" + name))
    let at = Int(try #require(e.offset))
    // The frame at that offset is the bad record's: its length, then its bytes.
    #expect(bytes[at..<at + 4].elementsEqual([UInt8(bad.count), 0, 0, 0]))
    #expect(bytes[(at + RecordFrame.headerSize)...].starts(with: bad))
  }

  /// The same person twice, in two batches: the second is refused, whichever ran first.
  @Test func aPersonTwiceInTwoBatchesIsRefused() throws {
    let fs = FaultyFileSystem()
    try fs.createDirectory("/data")
    var records = try persons((0..<SnapshotRestorer.batchSize + 10).map { "p\($0)" })
    records.append(records[1])
    try writeSnapshot(fs, seq: 2, records)
    // Either copy may be the second packed: the error names the one that was.
    let ends = [1, records.count - 1].map { "record \($0): cannot restore a record" }
    #expect {
      _ = try open(fs)
    } throws: {
      guard let e = $0 as? StorageError else { return false }
      return e.message.contains("restored twice") && ends.contains { e.message.contains($0) }
        && (e.offset ?? 0) > 0
    }
  }

  @Test func anImpossibleRecordCountInTheTrailerFallsBack() throws {
    let fs = FaultyFileSystem()
    try fs.createDirectory("/data")
    try writeSnapshot(fs, seq: 1, try persons(["old"]))
    try writeSnapshot(fs, seq: 2, try persons(["p"]))
    let path = "/data/" + SnapshotFile.fileName(seq: 2)
    var bytes = try #require(fs.contents(path))
    for i in bytes.count - 8..<bytes.count - 4 { bytes[i] = 0xFF }  // the record count
    fs.setContents(path, bytes)
    let (durable, report) = try open(fs)
    defer { durable.close() }
    #expect(report.snapshot == SnapshotFile.fileName(seq: 1))
    #expect(report.warnings.contains { $0.contains("the trailer counts 4294967295 records") })
  }

  @Test func slotTableReserveKeepsEveryEntry() {
    var t = SlotTable()
    for v in 0..<100 as Range<UInt32> { t.insert(UInt64(v) &* 0x9E37_79B9_7F4A_7C15, v) }
    t.reserve(10_000)
    let before = t.capacityBytes
    for v in 100..<10_000 as Range<UInt32> { t.insert(UInt64(v) &* 0x9E37_79B9_7F4A_7C15, v) }
    #expect(t.capacityBytes == before, "grew after reserving")
    for v in 0..<10_000 as Range<UInt32> {
      #expect(t.values(UInt64(v) &* 0x9E37_79B9_7F4A_7C15).contains(v))
    }
    #expect(t.count == 10_000)
  }
}
