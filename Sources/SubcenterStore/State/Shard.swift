// One shard of persons: a dense array of packed records, a slot table from person key to
// record, and the shard's string table. A shard is only touched under its `Mutex`.

import SubcenterCore
import Synchronization

/// The number of person shards; a `Location` packs the shard in its low 6 bits.
let shardCount = 64
let shardBits: UInt32 = 6

/// Where a person's record lives: packed into 32 bits for the identifier index
/// (slot << 6 | shard), so a shard holds at most 2^26 records.
struct Location: Equatable {
  var shard: Int
  var slot: UInt32

  init(shard: Int, slot: UInt32) {
    self.shard = shard
    self.slot = slot
  }

  init(packed: UInt32) {
    shard = Int(packed & (UInt32(shardCount) - 1))
    slot = packed >> shardBits
  }

  var packed: UInt32 { slot << shardBits | UInt32(shard) }
}

@inline(__always)
func shardIndex(_ personHash: UInt64) -> Int { Int(personHash & UInt64(shardCount - 1)) }

/// `[s]` for each shard `s`, made once: a one-shard `LockScope` shares it instead of
/// allocating an array per write.
let oneShard: [[Int]] = (0..<shardCount).map { [$0] }

struct Shard {
  /// What a shard's mutex holds while `withShards` has moved the shard out.

  var records: [PersonRecord] = []
  var freeSlots: [UInt32] = []
  var keys = SlotTable()
  var strings = StringTable()
  /// Where `PersonCodec` builds a record's change before copying it in (kept: its capacity
  /// spares an allocation a write).
  var scratch: [UInt8] = []
  /// Single-person writes in flight, by slot (Reservations.swift); never read by readers.
  var pending = SlotMap<PendingSlot>()

  /// The slot of `key` in `workspace`, if it is here (`hash` = `KeyHash.person`).
  @inline(__always)
  func find(workspace: UInt16, key: PersonKey, hash: UInt64) -> UInt32? {
    var found: UInt32?
    _ = keys.first(hash) { slot in
      guard PersonCodec.matches(records[Int(slot)], workspace: workspace, key: key) else {
        return false
      }
      found = slot
      return true
    }
    return found
  }

  /// True if `slot` holds the live record of `key` in `workspace`: the slot `find` returns
  /// (a person's live record is in one slot), found without hashing the key.
  func holds(slot: UInt32, workspace: UInt16, key: PersonKey) -> Bool {
    Int(slot) < records.count
      && PersonCodec.matches(records[Int(slot)], workspace: workspace, key: key)
  }

  /// Makes room for `n` more persons (restoring a snapshot of known size).
  mutating func reserve(_ n: Int) {
    records.reserveCapacity(records.count + n)
    keys.reserve(keys.count + n)
  }

  mutating func insert(_ record: PersonRecord, hash: UInt64) -> UInt32 {
    let slot: UInt32
    if let free = freeSlots.popLast() {
      slot = free
      records[Int(slot)] = record
    } else {
      precondition(records.count < 1 << 26, "a shard holds at most 2^26 persons")
      slot = UInt32(records.count)
      records.append(record)
    }
    keys.insert(hash, slot)
    return slot
  }

  mutating func remove(slot: UInt32, hash: UInt64) {
    keys.remove(hash, slot)
    records[Int(slot)] = .free
    freeSlots.append(slot)
  }

  /// True if the record at `slot` is a live person of `workspace` holding the identifier.
  func holds(slot: UInt32, workspace: UInt16, kind: IdentifierKind, value: String) -> Bool {
    guard Int(slot) < records.count else { return false }
    let r = records[Int(slot)]
    return r.workspace == workspace && PersonCodec.holds(r, kind: kind, value: value)
  }
}

/// One shard behind its lock. The shard is kept in an optional so that a commit can move
/// it out while the lock is held (`withLockTaken`) without copying it or leaving a
/// placeholder: a placeholder costs a retain and a release of each of its buffers.
final class ShardBox: Sendable {
  private let guarded = Mutex<Shard?>(Shard())

  /// Runs `body` on the shard under its lock.
  func withLock<R, E: Error>(_ body: (inout Shard) throws(E) -> R) throws(E) -> R {
    try guarded.withLock { (shard: inout Shard?) throws(E) -> R in try body(&shard!) }
  }

  /// Under the lock, moves the shard out to `body`, which must give it back through
  /// `restore` before it returns (its own `defer`), the lock still held.
  func withLockTaken<R, E: Error>(
    _ body: (consuming Shard, _ restore: (consuming Shard) -> Void) throws(E) -> R
  ) throws(E) -> R {
    try guarded.withLock { (shard: inout Shard?) throws(E) -> R in
      try body(shard.take()!) { shard = $0 }
    }
  }
}

/// A workspace's cross-shard state: which person each email, phone and anonymous id
/// names, and the suppressed identifiers. Guarded by one lock per workspace, taken
/// before any shard lock; every change to identifiers is validated under it against the
/// committed index plus `pending` (the identifier claims and releases, suppressions and
/// removals of commands in flight), which is what makes "two Identify calls claiming one
/// email at once cannot both pass" true.
struct IdentityState {
  /// `KeyHash.identifier` → `Location.packed` (committed).
  var index = SlotTable()
  /// Committed suppressions.
  var suppressed = Set<SuppressionHash>()
  /// Identity changes in flight (Reservations.swift); never read by readers.
  var pending = PendingIdentity()
}

/// One workspace: its number in packed records, its configuration and identity state.
final class WorkspaceHandle: Sendable {
  let number: UInt16
  let id: String
  let model: Mutex<Workspace>
  let identity = Mutex(IdentityState())
  /// The seq of the newest log record with a change-feed event of this workspace (0:
  /// none), set as records are applied under `Applier.gate`, kept in snapshots.
  let lastEventSeq = Atomic<UInt64>(0)

  init(number: UInt16, model: Workspace) {
    self.number = number
    self.id = model.id
    self.model = Mutex(model)
  }

  /// The current configuration (immutable; a reconfiguration swaps it).
  var current: Workspace { model.withLock { $0 } }
}

struct Registry {
  private(set) var byID: [String: WorkspaceHandle] = [:]
  /// The same handles while there are at most `scanLimit`: comparing a few ids costs less
  /// than hashing one (every call looks its workspace up).
  private var few: [WorkspaceHandle] = []
  static let scanLimit = 16
  var nextNumber: UInt16 = 1
  /// The model each workspace will have once its in-flight configurations are applied.
  var pending: [String: Claim<Workspace>] = [:]

  /// The workspace `id` names, if it exists.
  func handle(_ id: String) -> WorkspaceHandle? {
    guard byID.count <= Self.scanLimit else { return byID[id] }
    for h in few where h.id == id { return h }
    return nil
  }

  /// Adds a new workspace's handle.
  mutating func add(_ h: WorkspaceHandle) {
    precondition(byID[h.id] == nil, "workspace \(h.id) exists")
    byID[h.id] = h
    few = byID.count <= Self.scanLimit ? few + [h] : []
  }

  /// Workspaces that in-flight configurations create.
  var pendingCreations: Int { pending.keys.count { byID[$0] == nil } }
}
