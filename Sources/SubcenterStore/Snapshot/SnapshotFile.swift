// Snapshot files: the whole state as of one log seq, written once and never changed.
//
// `snapshot-<seq>.snap`, seq in 20 decimal digits, zero-padded: the state after applying
// every log record up to and including seq. Layout (integers little-endian):
//
//   offset      size  field
//   0           8     magic    "SUBCSNAP"
//   8           4     version  u32, 1
//   12          8     seq      u64, the seq in the file name
//   20          ...   records  framed (RecordFrame.swift): [u32 length][u32 CRC-32C of the
//                              length and payload][payload = a `SnapshotRecord`]: each
//                              workspace (id order) with its suppression sets, then
//                              every person
//   size - 8    4     count    u32, the number of records
//   size - 4    4     crc      u32, CRC-32C of every byte before it (header, records, count)
//
// Written as `snapshot-<seq>.snap.tmp`, synced, renamed to its name, and the directory
// synced: a snapshot file that exists under its name is complete (a `.tmp` is a write
// that did not finish and is deleted at start-up). Read back in one pass: each record is
// handed over once its own checksum holds; the file's checksum and count are checked at
// the end, so a reader must not use what it built until `read` returns.

/// A snapshot file, as its name and header give it.
public struct SnapshotInfo: Sendable, Equatable, CustomStringConvertible {
  public let name: String
  /// The state is that after every log record up to this seq.
  public let seq: UInt64
  /// Records in the file (known once read).
  public let records: Int

  public var description: String { name }
}

/// Snapshot file names, listing, reading.
public enum SnapshotFile {
  public static let magic: [UInt8] = Array("SUBCSNAP".utf8)
  public static let version: UInt32 = 1
  public static let headerSize = 20
  public static let trailerSize = 8

  /// `snapshot-<seq, 20 digits>.snap`.
  public static func fileName(seq: UInt64) -> String {
    let digits = String(seq)
    return "snapshot-" + String(repeating: "0", count: max(0, 20 - digits.count)) + digits
      + ".snap"
  }

  /// The seq a snapshot file name holds, nil if `name` is not a snapshot's.
  public static func seq(fileName name: String) -> UInt64? {
    let utf8 = Array(name.utf8)
    guard utf8.count == 34, name.hasPrefix("snapshot-"), name.hasSuffix(".snap") else {
      return nil
    }
    let digits = utf8[9..<29]
    guard digits.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }) else { return nil }
    return UInt64(String(decoding: digits, as: UTF8.self))
  }

  /// The snapshot files of `directory` (name and seq; `records` is 0), oldest first.
  public static func list(directory: String, fileSystem fs: any FileSystem)
    throws(StorageError) -> [SnapshotInfo]
  {
    let names: [String]
    do { names = try fs.list(directory) } catch {
      throw StorageError(error, "listing the data directory")
    }
    return names.compactMap { n in
      seq(fileName: n).map { SnapshotInfo(name: n, seq: $0, records: 0) }
    }
    .sorted { $0.seq < $1.seq }
  }

  /// Deletes the temporary files of snapshots that were never finished; returns their
  /// names.
  @discardableResult
  public static func removeTemporaryFiles(directory: String, fileSystem fs: any FileSystem)
    throws(StorageError) -> [String]
  {
    try SubcenterStore.removeTemporaryFiles(
      directory: directory, fileSystem: fs, what: "unfinished snapshots"
    ) { seq(fileName: $0) != nil }
  }

  /// Deletes every snapshot but the one at `seq` (once it is durable), syncs the directory;
  /// returns the names deleted. Older ones are covered by it; a newer one can only be
  /// from a history recovery discarded (a damaged snapshot it fell back from, or one past
  /// a log end cut off), and may hold data of persons forgotten since.
  @discardableResult
  public static func remove(except seq: UInt64, directory: String, fileSystem fs: any FileSystem)
    throws(StorageError) -> [String]
  {
    let old = try list(directory: directory, fileSystem: fs).filter { $0.seq != seq }.map(\.name)
    do { try fs.removeFiles(old, in: directory) } catch {
      throw StorageError(error, "removing old snapshots")
    }
    return old
  }

  /// Reads snapshot `name` of `directory`, handing each record's payload (an encoded
  /// `SnapshotRecord`) to `body` in order; throws `damaged` (naming the file and offset)
  /// if anything does not check out.
  @discardableResult
  public static func read(
    _ name: String, directory: String, fileSystem fs: any FileSystem,
    payloads body: (ArraySlice<UInt8>) throws(StorageError) -> Void
  ) throws(StorageError) -> SnapshotInfo {
    try read(
      name, directory: directory, fileSystem: fs,
      rawPayloads: { (payload) throws(StorageError) in try body(Array(payload)[...]) })
  }

  /// `read(_:directory:fileSystem:payloads:)` handing each payload as the bytes of the
  /// read buffer, valid only during the call. `expecting` is first told how many records
  /// the trailer announces (not checked yet; at most one per 9 bytes of the file).
  @discardableResult
  static func read(
    _ name: String, directory: String, fileSystem fs: any FileSystem,
    expecting: (Int) -> Void = { _ in },
    rawPayloads body: (UnsafeRawBufferPointer) throws(StorageError) -> Void
  ) throws(StorageError) -> SnapshotInfo {
    guard let seq = seq(fileName: name) else {
      throw StorageError(.invalid, "\(name) is not a snapshot file name")
    }
    let f: FileHandle
    do { f = try fs.open(joinPath(directory, name)) } catch {
      throw StorageError(error, "opening snapshot \(name)")
    }
    defer { try? fs.close(f) }
    let reader = ChunkReader(fs: fs, file: f, name: name)
    let size = try reader.size()
    guard size >= headerSize + trailerSize else {
      throw .damaged(name, at: 0, "a snapshot of \(size) bytes is cut short")
    }

    // Header.
    try reader.ensure(0, headerSize)
    let header = reader.bytes(0, headerSize)
    guard header.prefix(8).elementsEqual(magic) else {
      throw .damaged(name, at: 0, "not a snapshot (bad magic)")
    }
    let (fileVersion, fileSeq) = (readLE32(header, 8), readLE64(header, 12))
    guard fileVersion == version else {
      throw .damaged(
        name, at: 8,
        "snapshot format version \(fileVersion) is not supported (this build reads \(version))")
    }
    guard fileSeq == seq else {
      throw .damaged(name, at: 12, "the header says seq \(fileSeq), the file name \(seq)")
    }
    var crc = CRC32C.update(0, header)
    do {
      let trailer = try fs.read(f, count: trailerSize, at: Int64(size - trailerSize))
      if trailer.count == trailerSize {
        let announced = trailer.withUnsafeBytes { Int(readLE32($0, 0)) }
        expecting(min(announced, (size - headerSize - trailerSize) / (RecordFrame.headerSize + 1)))
      }
    } catch {
      throw StorageError(error, "reading snapshot \(name)")
    }

    // Records.
    let recordsEnd = size - trailerSize
    var offset = headerSize
    var count = 0
    while offset < recordsEnd {
      guard recordsEnd - offset >= RecordFrame.headerSize else {
        throw .damaged(name, at: Int64(offset), "a record header runs into the trailer")
      }
      try reader.ensure(offset, RecordFrame.headerSize)
      let length = Int(readLE32(reader.bytes(offset, 4), 0))
      guard length > 0, length <= RecordFrame.maxPayloadSize,
        length <= recordsEnd - offset - RecordFrame.headerSize
      else {
        throw .damaged(name, at: Int64(offset), "impossible record length \(length)")
      }
      let frameSize = RecordFrame.headerSize + length
      try reader.ensure(offset, frameSize)
      let frame = reader.bytes(offset, frameSize)
      guard case .record = RecordFrame.parse(frame, at: 0) else {
        throw .damaged(name, at: Int64(offset), "record checksum mismatch")
      }
      crc = CRC32C.update(crc, frame)
      do {
        try body(UnsafeRawBufferPointer(rebasing: frame[RecordFrame.headerSize...]))
      } catch {
        guard error.kind == .damaged, error.file == nil else { throw error }
        throw .damaged(name, at: Int64(offset), "record \(count): \(error.message)")
      }
      offset += frameSize
      count += 1
    }

    // Trailer.
    try reader.ensure(recordsEnd, trailerSize)
    let trailer = reader.bytes(recordsEnd, trailerSize)
    let (storedCount, storedCRC) = (readLE32(trailer, 0), readLE32(trailer, 4))
    crc = CRC32C.update(crc, UnsafeRawBufferPointer(rebasing: trailer[0..<4]))
    guard storedCount == count else {
      throw .damaged(
        name, at: Int64(recordsEnd),
        "the trailer counts \(storedCount) records, the file holds \(count)")
    }
    guard storedCRC == crc else {
      throw .damaged(name, at: Int64(recordsEnd + 4), "file checksum mismatch")
    }
    return SnapshotInfo(name: name, seq: seq, records: count)
  }

  /// Reads snapshot `name`, decoding each record.
  @discardableResult
  public static func read(
    _ name: String, directory: String, fileSystem fs: any FileSystem,
    records body: (SnapshotRecord) throws(StorageError) -> Void
  ) throws(StorageError) -> SnapshotInfo {
    try read(
      name, directory: directory, fileSystem: fs,
      payloads: {
        (payload) throws(StorageError) in try body(SnapshotRecordCodec.decode(payload))
      })
  }

  /// Checks snapshot `name` through (checksums, count) without decoding records.
  @discardableResult
  public static func validate(_ name: String, directory: String, fileSystem fs: any FileSystem)
    throws(StorageError) -> SnapshotInfo
  {
    try read(name, directory: directory, fileSystem: fs, rawPayloads: { _ in })
  }
}

/// Reads a file front to back in large chunks into one buffer it reuses, keeping the
/// bytes not yet consumed. The bytes it hands out are valid until the next `ensure`.
private final class ChunkReader {
  let fs: any FileSystem
  let file: FileHandle
  let name: String
  /// File bytes `start ..< start + held` are at the front of `storage`.
  private var storage = UnsafeMutableRawBufferPointer(start: nil, count: 0)
  private var start = 0
  private var held = 0
  private var fileSize = -1
  private static let chunk = 4 << 20

  init(fs: any FileSystem, file: FileHandle, name: String) {
    self.fs = fs
    self.file = file
    self.name = name
  }

  deinit { storage.deallocate() }

  func size() throws(StorageError) -> Int {
    if fileSize < 0 {
      do { fileSize = Int(try fs.size(file)) } catch {
        throw StorageError(error, "reading snapshot \(name)")
      }
    }
    return fileSize
  }

  /// Makes file bytes `offset ..< offset + count` available (`offset` never goes back);
  /// bytes before `offset` are dropped.
  func ensure(_ offset: Int, _ count: Int) throws(StorageError) {
    if offset >= start && offset + count <= start + held { return }
    let kept = offset >= start && offset < start + held ? start + held - offset : 0
    let capacity = max(count, Self.chunk)
    if storage.count < capacity {
      let bigger = UnsafeMutableRawBufferPointer.allocate(byteCount: capacity, alignment: 16)
      if kept > 0 {
        bigger.baseAddress!.copyMemory(
          from: storage.baseAddress! + (offset - start), byteCount: kept)
      }
      storage.deallocate()
      storage = bigger
    } else if kept > 0 {
      storage.baseAddress!.copyMemory(
        from: storage.baseAddress! + (offset - start), byteCount: kept)
    }
    start = offset
    held = kept
    let more: [UInt8]
    do { more = try fs.read(file, count: capacity - kept, at: Int64(offset + kept)) } catch {
      throw StorageError(error, "reading snapshot \(name)")
    }
    if !more.isEmpty {
      more.withUnsafeBytes {
        (storage.baseAddress! + kept).copyMemory(from: $0.baseAddress!, byteCount: $0.count)
      }
      held += more.count
    }
    guard count <= held else {
      throw .damaged(name, at: Int64(start + held), "the file ended while being read")
    }
  }

  /// File bytes `offset ..< offset + count` (made available by `ensure`).
  func bytes(_ offset: Int, _ count: Int) -> UnsafeRawBufferPointer {
    UnsafeRawBufferPointer(start: storage.baseAddress! + (offset - start), count: count)
  }
}

/// Writes one snapshot file (temp → sync → rename → sync directory). One thread.
public final class SnapshotWriter {
  public let seq: UInt64
  public let directory: String
  private let fs: any FileSystem
  private var file: FileHandle?
  private let name: String
  private var buffer: [UInt8] = []
  private var crc: UInt32 = 0
  private var count = 0
  private static let flushSize = 1 << 20

  /// Starts `snapshot-<seq>.snap.tmp` in `directory` (replacing an unfinished one).
  public init(directory: String, seq: UInt64, fileSystem: any FileSystem) throws(StorageError) {
    self.seq = seq
    self.directory = directory
    self.fs = fileSystem
    self.name = SnapshotFile.fileName(seq: seq)
    do {
      file = try fs.open(
        joinPath(directory, name + temporaryFileSuffix), [.write, .create, .truncate])
    } catch {
      throw StorageError(error, "creating snapshot \(name)")
    }
    buffer = SnapshotFile.magic + littleEndianBytes(SnapshotFile.version) + littleEndianBytes(seq)
    buffer.reserveCapacity(Self.flushSize + 4096)
  }

  deinit { abandon() }

  /// Adds a record.
  public func append(_ record: SnapshotRecord) throws(StorageError) {
    try append(payload: SnapshotRecordCodec.encode(record))
  }

  /// Adds an encoded `SnapshotRecord`.
  public func append(payload: [UInt8]) throws(StorageError) {
    guard payload.count > 0, payload.count <= RecordFrame.maxPayloadSize else {
      throw StorageError(.invalid, "a snapshot record of \(payload.count) bytes cannot be framed")
    }
    guard count < Int(UInt32.max) else {
      throw StorageError(.invalid, "a snapshot holds at most \(UInt32.max) records")
    }
    RecordFrame.append(payload, to: &buffer)
    count += 1
    if buffer.count >= Self.flushSize { try flush() }
  }

  /// Finishes the file and makes it durable under its name; returns the name.
  @discardableResult
  public func commit() throws(StorageError) -> String {
    guard let f = file else { throw StorageError(.invalid, "snapshot \(name) is finished") }
    buffer += littleEndianBytes(UInt32(count))
    try flush()
    buffer = littleEndianBytes(crc)
    let temporary = joinPath(directory, name + temporaryFileSuffix)
    do {
      try fs.write(f, buffer)
      try fs.sync(f)
      file = nil
      try fs.close(f)
      try fs.rename(temporary, to: joinPath(directory, name))
      try fs.syncDirectory(directory)
    } catch {
      if file != nil { try? fs.close(f) }
      file = nil
      try? fs.unlink(temporary)
      throw StorageError(error, "writing snapshot \(name)")
    }
    return name
  }

  /// Gives up: closes and deletes the temporary file. Idempotent.
  public func abandon() {
    guard let f = file else { return }
    file = nil
    try? fs.close(f)
    try? fs.unlink(joinPath(directory, name + temporaryFileSuffix))
  }

  private func flush() throws(StorageError) {
    guard let f = file, !buffer.isEmpty else { return }
    crc = buffer.withUnsafeBytes { CRC32C.update(crc, $0) }
    do { try fs.write(f, buffer) } catch {
      abandon()
      throw StorageError(error, "writing snapshot \(name)")
    }
    buffer.removeAll(keepingCapacity: true)
  }
}
