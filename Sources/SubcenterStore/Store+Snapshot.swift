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
        box.state.withLock { shard -> Shard in
          var copy = shard
          copy.pending = [:]
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
    try h.identity.withLock { (identity: inout IdentityState) throws(CoreError) in
      let slot = try shards[s].state.withLock { (shard: inout Shard) throws(CoreError) -> UInt32 in
        guard shard.find(workspace: h.number, key: person.key, hash: hash) == nil else {
          throw .alreadyExists("person", "restored twice")
        }
        let record = PersonCodec.encode(person, workspace: h.number, strings: &shard.strings)
        return shard.insert(record, hash: hash)
      }
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
    for box in shards { box.state.withLock { $0.reserve(perShard) } }
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

/// Restores a snapshot's records, payload by payload, into a store being recovered:
/// persons are read directly from their bytes and their workspace is resolved once for
/// the run of persons that share it.
struct SnapshotRestorer {
  let store: SubscriptionStore
  /// The persons restored so far.
  private(set) var persons = 0
  private var workspace: WorkspaceHandle?

  init(store: SubscriptionStore) { self.store = store }

  /// Restores one encoded `SnapshotRecord`. Damage is `StorageError`; a record that does
  /// not fit the state restored so far is the `CoreError` saying why.
  mutating func restore(_ payload: UnsafeRawBufferPointer) throws {
    guard let record = try SnapshotRecordCodec.person(in: payload) else {
      switch try SnapshotRecordCodec.decodeWithProtobufC(payload) {
      case .workspace(let w):
        store.restore(workspace: try w.restore(), lastEventSeq: w.lastEventSeq)
        workspace = nil
      case .suppressions(let id, let hashes): try store.restore(suppressions: hashes, workspace: id)
      case .secretCheck(let check):
        guard check == store.hasher.secretCheck else { throw StorageError.wrongSecret }
      case .person(let id, let person):
        try store.restore(person, workspace: id)
        persons += 1
      }
      return
    }
    let h: WorkspaceHandle
    if let cached = workspace, Self.equal(record.workspace, cached.id) {
      h = cached
    } else {
      h = try store.handle(ProtoWireReader.string(record.workspace, "person.workspace"))
      workspace = h
    }
    try store.restore(record.person, into: h)
    persons += 1
  }

  /// Whether `bytes` are the UTF-8 of `s`.
  private static func equal(_ bytes: UnsafeRawBufferPointer, _ s: String) -> Bool {
    var s = s
    return s.withUTF8 { $0.count == bytes.count && $0.elementsEqual(bytes) }
  }
}
