// The state as a snapshot needs it, and rebuilding it from one.
//
// `snapshotState()` holds `Applier.gate` (no command is being applied, and every record
// up to `lastAppliedSeq` has been) and copies each shard under its own lock: Swift
// collections are copy-on-write, so each copy is O(1) and the shards stay locked only
// for that instant; decoding and encoding happen later, off every lock, on the copy.
// Commands in flight are not in the copy (they are not applied), so a snapshot holds
// exactly the records up to its `seq`, and recovery replays the log after it.
//
// `restore(…)` rebuilds the state from a snapshot's records at start-up, before any
// write and before replay of the log after the snapshot.

import Dispatch
import SubcenterCore
import Synchronization

/// A consistent copy of the committed state: exactly the records up to `seq` applied.
public struct StoreSnapshot: Sendable {
  /// Every record with a sequence number up to this one is in the copy, none after it.
  public let seq: UInt64
  /// Every workspace, ordered by id, with its name numbering.
  public let workspaces: [Workspace]
  let lastEventSeqs: [String: UInt64]
  let ids: [UInt16: String]
  let suppressed: [String: Set<SuppressionHash>]
  let shards: [Shard]

  /// A workspace's snapshot record.
  public func snapshot(of workspace: Workspace) -> WorkspaceSnapshot {
    WorkspaceSnapshot(workspace, lastEventSeq: lastEventSeqs[workspace.id] ?? 0)
  }

  /// A workspace's suppressed identifiers' hashes, sorted.
  public func suppressions(in workspace: String) -> [SuppressionHash] {
    (suppressed[workspace] ?? []).sorted()
  }

  /// The number of persons and anonymous profiles.
  public var personCount: Int { shards.reduce(0) { $0 + $1.records.count - $1.freeSlots.count } }

  /// Decodes every person in full (history and counted sends included) and hands it to
  /// `body` with its workspace's id, shard by shard. Takes no lock.
  public func forEachPerson<E: Error>(_ body: (String, Person) throws(E) -> Void) throws(E) {
    for shard in shards {
      for r in shard.records where !r.isFree {
        guard let id = ids[r.workspace] else { continue }
        try body(id, PersonCodec.decode(r, history: true, strings: shard.strings).person)
      }
    }
  }
}

extension SubscriptionStore {
  /// The sequence number of the last record applied (by the live path, `replay` or
  /// `restored(through:)`).
  public var lastAppliedSeq: UInt64 { applier.applied.load(ordering: .acquiring) }

  /// A consistent copy of the committed state, for a snapshot (see the top of this
  /// file). Waits for the command being applied, if any; must not be called from a
  /// write's completion.
  public func snapshotState() -> StoreSnapshot {
    applier.gate.withLock { last in
      let handles = registry.withLock { Array($0.byID.values) }.sorted { $0.id < $1.id }
      var ids: [UInt16: String] = [:]
      var suppressed: [String: Set<SuppressionHash>] = [:]
      for h in handles {
        ids[h.number] = h.id
        suppressed[h.id] = h.identity.withLock { $0.suppressed }
      }
      let copies = shards.map { box in
        box.withLock { shard -> Shard in
          var copy = shard
          copy.pending = SlotMap()
          return copy
        }
      }
      return StoreSnapshot(
        seq: last, workspaces: handles.map(\.current),
        lastEventSeqs: Dictionary(
          uniqueKeysWithValues: handles.map { ($0.id, $0.lastEventSeq.load(ordering: .relaxed)) }),
        ids: ids, suppressed: suppressed, shards: copies)
    }
  }

  // MARK: Restoring

  /// Recovery: adds (or replaces) a workspace with the name numbering and the newest
  /// event's seq a snapshot kept.
  public func restore(workspace model: Workspace, lastEventSeq: UInt64 = 0) {
    let h = registry.withLock { reg in
      applyConfigure(model, registry: &reg)
      return reg.handle(model.id)
    }
    h?.lastEventSeq.store(lastEventSeq, ordering: .relaxed)
  }

  /// The seq of the newest log record holding a change-feed event of `workspace` (0 when
  /// it has none, or does not exist). The change feed uses it to tell a watcher whose
  /// cursor is older than the retention whether it missed anything.
  public func lastEventSeq(workspace: String) -> UInt64 {
    registry.withLock { $0.handle(workspace) }?.lastEventSeq.load(ordering: .relaxed) ?? 0
  }

  /// Recovery: adds a person of a restored workspace as a snapshot kept it (channels and
  /// topics numbered as that workspace numbers them), indexing its identifiers. A person
  /// already present is `alreadyExists`.
  public func restore(_ person: Person, workspace: String) throws(CoreError) {
    try restore(person, into: handle(workspace))
  }

  /// `restore(_:workspace:)` with the workspace already resolved.
  func restore(_ person: Person, into h: WorkspaceHandle) throws(CoreError) {
    guard person.entries.count <= Int(UInt16.max) else {
      throw .resourceExhausted("a person holds at most \(UInt16.max) preference entries")
    }
    let hash = KeyHash.person(h.number, person.key)
    let s = shardIndex(hash)
    // Recovery restores persons from several threads (`SnapshotRestorer`) and serves no
    // call yet: the shard and the identity index are locked one after the other, so
    // persons of different shards are packed at the same time.
    let slot = try shards[s].withLock { (shard: inout Shard) throws(CoreError) -> UInt32 in
      guard shard.find(workspace: h.number, key: person.key, hash: hash) == nil else {
        throw .alreadyExists("person", "restored twice")
      }
      let record = PersonCodec.encode(person, workspace: h.number, strings: &shard.strings)
      return shard.insert(record, hash: hash)
    }
    h.identity.withLock { (identity: inout IdentityState) in
      // The keys of `PersonView.identifiers`, without building the array.
      let location = Location(shard: s, slot: slot).packed
      if !person.email.isEmpty {
        identity.index.insert(KeyHash.identifier(.email, person.email), location)
      }
      if !person.phone.isEmpty {
        identity.index.insert(KeyHash.identifier(.phone, person.phone), location)
      }
      for a in person.anonymousIDs {
        identity.index.insert(KeyHash.identifier(.anonymousID, a), location)
      }
    }
  }

  /// Recovery: makes room in every shard for about `persons` more persons.
  func reserve(persons: Int) {
    let perShard = persons / shardCount + persons / (shardCount * 16) + 64
    for box in shards { box.withLock { $0.reserve(perShard) } }
  }

  /// Recovery: adds suppressed identifiers' hashes to a restored workspace.
  public func restore(suppressions: [SuppressionHash], workspace: String) throws(CoreError) {
    let h = try handle(workspace)
    h.identity.withLock { $0.suppressed.formUnion(suppressions) }
  }

  /// Recovery: the restored state holds every record up to `seq` (the snapshot's, or the
  /// last replayed); the log's next record is `seq + 1`. Never lowers the mark.
  public func restored(through seq: UInt64) {
    applier.gate.withLock { last in
      guard seq > last else { return }
      last = seq
      applier.applied.store(seq, ordering: .releasing)
    }
  }
}

/// Restores a snapshot's records, payload by payload, into a store being recovered. Person
/// records (nearly all of a snapshot) are copied into batches that worker threads decode
/// and pack while the file is read on (a start uses every core); any other record
/// (workspace, suppressions, secret check) waits for the batches before it, then is
/// restored at once, so a workspace is always there before its persons. `finish` waits for
/// the last batch; a damaged or unfitting person record is reported by its place in the
/// file, as if it had been restored in order.
final class SnapshotRestorer {
  let store: SubscriptionStore
  /// The snapshot's name, for errors.
  let fileName: String
  /// The persons restored so far (complete after `finish`).
  var persons: Int { workers.restored }
  /// Whether the snapshot named the secret it was written under (snapshots written before
  /// that check existed do not).
  private(set) var sawSecretCheck = false
  private var batch = PersonBatch()
  /// The index and file offset of the next record.
  private var index = 0
  private var offset = SnapshotFile.headerSize
  private let workers = RestoreWorkers()

  /// Persons a batch holds before it goes to a worker.
  static let batchSize = 2048

  init(store: SubscriptionStore, fileName: String) {
    self.store = store
    self.fileName = fileName
  }

  deinit { workers.waitIdle() }

  /// Restores (or queues) one encoded `SnapshotRecord`. A record that does not read, or
  /// does not fit the state restored so far, is damage naming its place (`placed`).
  func restore(_ payload: UnsafeRawBufferPointer) throws(StorageError) {
    let (at, n) = (offset, index)
    offset += RecordFrame.headerSize + payload.count
    index += 1
    if try SnapshotRecordCodec.isPerson(payload) {
      batch.append(payload, index: n, offset: at)
      if batch.count >= Self.batchSize { dispatch() }
      return
    }
    try finish()
    do {
      switch try SnapshotRecordCodec.decodeWithProtobufC(payload) {
      case .workspace(let w):
        store.restore(workspace: try w.restore(), lastEventSeq: w.lastEventSeq)
      case .suppressions(let id, let hashes):
        try store.restore(suppressions: hashes, workspace: id)
      case .secretCheck(let check):
        guard check == store.hasher.secretCheck else { throw StorageError.wrongSecret }
        sawSecretCheck = true
      case .person(let id, let person):
        try store.restore(person, workspace: id)
        workers.count(1)
      }
    } catch {
      throw placed(error, index: n, offset: at)
    }
  }

  /// Restores what is queued and waits for it; throws the first failure in file order.
  func finish() throws(StorageError) {
    dispatch()
    workers.waitIdle()
    if let f = workers.firstFailure { throw placed(f.error, index: f.index, offset: f.offset) }
  }

  /// `error` of record `index` at `offset`, as damage naming the file, the offset and the
  /// record. A record that reads but does not fit the state restored so far (a person of a
  /// workspace the snapshot never configured, a person twice) is `cannot restore a record`.
  /// Other storage errors (a wrong secret, damage already placed) stay as they are.
  private func placed(_ error: any Error, index: Int, offset: Int) -> StorageError {
    let what: String
    if let e = error as? StorageError {
      guard e.kind == .damaged, e.file == nil else { return e }
      what = e.message
    } else {
      what = "cannot restore a record: \(error)"
    }
    return StorageError.damaged(fileName, at: Int64(offset), "record \(index): \(what)")
  }

  private func dispatch() {
    guard batch.count > 0 else { return }
    let full = batch
    batch = PersonBatch()
    workers.run { [store] () throws(BatchFailure) in
      try full.restore(into: store)
      return full.count
    }
  }
}

/// Person records copied out of the read buffer: their bytes end to end, and where each
/// one was in the file.
private struct PersonBatch: Sendable {
  var bytes: [UInt8] = []
  var ends: [Int] = []
  var firstIndex = 0
  var offsets: [Int] = []
  var count: Int { ends.count }

  mutating func append(_ payload: UnsafeRawBufferPointer, index: Int, offset: Int) {
    if ends.isEmpty {
      firstIndex = index
      bytes.reserveCapacity(SnapshotRestorer.batchSize * 160)
    }
    bytes.append(contentsOf: payload)
    ends.append(bytes.count)
    offsets.append(offset)
  }

  /// Decodes and packs each person; a failure says which record (index, offset) failed.
  func restore(into store: SubscriptionStore) throws(BatchFailure) {
    var workspace: WorkspaceHandle?
    let failure = bytes.withUnsafeBytes { (all) -> BatchFailure? in
      var start = 0
      for (i, end) in ends.enumerated() {
        do {
          let payload = UnsafeRawBufferPointer(rebasing: all[start..<end])
          start = end
          guard let record = try SnapshotRecordCodec.person(in: payload) else {
            throw StorageError(.damaged, "not a person record")  // `isPerson` said it is
          }
          let h: WorkspaceHandle
          if let cached = workspace, Self.equal(record.workspace, cached.id) {
            h = cached
          } else {
            h = try store.handle(ProtoWireReader.string(record.workspace, "person.workspace"))
            workspace = h
          }
          try store.restore(record.person, into: h)
        } catch {
          return BatchFailure(error: error, index: firstIndex + i, offset: offsets[i], restored: i)
        }
      }
      return nil
    }
    if let failure { throw failure }
  }

  /// Whether `bytes` are the UTF-8 of `s`.
  private static func equal(_ bytes: UnsafeRawBufferPointer, _ s: String) -> Bool {
    var s = s
    return s.withUTF8 { $0.count == bytes.count && $0.elementsEqual(bytes) }
  }
}

private struct BatchFailure: Error {
  var error: any Error
  var index: Int
  var offset: Int
  /// Persons of the batch restored before it.
  var restored: Int
}

/// The worker threads of a `SnapshotRestorer`: at most one batch per core at a time
/// (`DurableStore.cores`).
private final class RestoreWorkers: @unchecked Sendable {
  private let group = DispatchGroup()
  private let slots = DispatchSemaphore(value: DurableStore.cores)
  private let state = Mutex<(restored: Int, failure: BatchFailure?)>((0, nil))

  var restored: Int { state.withLock { $0.restored } }
  /// The failure of the earliest record, once the batches are done.
  var firstFailure: BatchFailure? { state.withLock { $0.failure } }

  func count(_ n: Int) { state.withLock { $0.restored += n } }

  /// Runs `body` (returning how many persons it restored) on a worker once one is free
  /// (waits for it here).
  func run(_ body: @escaping @Sendable () throws(BatchFailure) -> Int) {
    slots.wait()
    DispatchQueue.global().async(group: group) { [self] in
      defer { slots.signal() }
      do throws(BatchFailure) {
        let n = try body()
        count(n)
      } catch {
        state.withLock { s in
          s.restored += error.restored
          if s.failure.map({ error.index < $0.index }) ?? true { s.failure = error }
        }
      }
    }
  }

  func waitIdle() { group.wait() }
}
