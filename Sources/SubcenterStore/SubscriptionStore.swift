// The in-memory state of Subcenter: workspaces, persons sharded by (workspace, person)
// behind `Mutex`es, per-workspace identifier indexes and suppression sets. Every change
// is one `Command`, validated under the locks it touches against the committed state plus
// the commands in flight, and applied once the log has made it durable (CommitLog.swift
// and Store+Commit.swift). Readers see the committed state only.
//
// Locks, in the order they may be taken (never the other way round):
//   Applier.gate → the state locks below           (applying commands; snapshots)
//   registry → workspace model                      (configuration; the model lock is a leaf)
//   workspace identity → shards by ascending index  (identifier changes, forget, suppress)
//   shard → workspace model, commit log             (both leaves)
// and the leaves of Store+Commit.swift (the apply queue, a pending commit's state). The
// registry is never held while an identity or shard lock is taken. Reads and
// single-person writes take one shard lock (plus, for a person named by email, phone or
// anonymous id, the identity lock briefly before it, to find the shard), so they never
// wait on writes to other shards.

import SubcenterCore
import Synchronization

#if canImport(Glibc)
  import Glibc
#elseif canImport(Darwin)
  import Darwin
#endif

/// Answers a write once its change is durable: from the log writer's thread (or, with a
/// log that completes at once, before the call returns).
public typealias Completion<Value> = @Sendable (Result<Value, CoreError>) -> Void

/// The subscription center's state and every operation of SPEC §3 on it.
public final class SubscriptionStore: Sendable {
  let clock: any WallClock
  let hasher: IdentifierHasher
  let log: any CommitLog
  let shards: [ShardBox]
  let registry = Mutex(Registry())
  let applier = Applier()

  /// - Parameters:
  ///   - secret: the server secret keying suppression hashes and page tokens.
  ///   - log: where changes are made durable; its records must continue the sequence
  ///     the store was recovered to (`lastAppliedSeq`).
  ///   - createDefaultWorkspace: configure workspace `default` (default channels, no
  ///     topics) now; it exists once the log has made that durable. Recovery passes false
  ///     and calls `ensureDefaultWorkspace()` after replay.
  public init(
    clock: any WallClock, secret: [UInt8], log: any CommitLog = InMemoryCommitLog(),
    createDefaultWorkspace: Bool = true
  ) {
    self.clock = clock
    self.hasher = IdentifierHasher(secret: secret)
    self.log = log
    self.shards = (0..<shardCount).map { _ in ShardBox() }
    if createDefaultWorkspace { ensureDefaultWorkspace { _ in } }
  }

  /// Where records that a log which `appliesElsewhere` made durable are applied and
  /// answered: `executor` runs the given drain on some thread of its own (an event loop)
  /// and returns true, or returns false when it no longer can (the store's own queue then
  /// runs it). One drain applies records for at most `budgetNanos` (10 ms), then hands the
  /// rest to a drain it schedules, so the executor's thread gets back to its own work.
  public func applyDurableRecords(
    budgetNanos: UInt64 = 10_000_000,
    on executor: @escaping @Sendable (@escaping @Sendable () -> Void) -> Bool
  ) {
    applier.drainBudgetNanos.store(budgetNanos, ordering: .relaxed)
    applier.executor.withLock { $0 = TaskRunner(run: executor) }
  }

  /// Has the thread applying durable records call `flush` after every `every` of them in a
  /// longer run (never after the last), so the answers given so far can leave while the
  /// rest are applied (the server: it sends its event loop's pending output). `flush` runs
  /// on whichever thread applies (an event loop, the store's own queue, a writer), with
  /// the application's gate held, and must not call into the store.
  /// Has the thread applying durable records call `body` after each change that removed
  /// persons (a forget, a suppression that forgot someone, anonymous profiles expired),
  /// once it is applied (`lastAppliedSeq` covers it) and before its call is answered: the
  /// server schedules their erasure from disk there, whatever made the change. Runs with
  /// the application's gate held: it must be quick and must not call into the store.
  public func whenPersonsRemoved(_ body: @escaping @Sendable () -> Void) {
    applier.personsRemoved.withLock { $0 = RemovalHook(run: body) }
  }

  public func flushAnswers(every: Int, with flush: @escaping @Sendable () -> Void) {
    precondition(every > 0, "flush after at least one record")
    applier.answerFlush.withLock { $0 = AnswerFlush(every: every, run: flush) }
  }

  /// Configures workspace `default` if no workspace exists or is being configured
  /// (SPEC §1); answers whether it did.
  public func ensureDefaultWorkspace(completion: @escaping Completion<Bool>) {
    perform(completion) { (deps: inout Deps) throws(CoreError) -> Step<Bool> in
      try registry.withLock { (reg: inout Registry) throws(CoreError) -> Step<Bool> in
        guard reg.byID.isEmpty && reg.pending.isEmpty else { return .value(false) }
        let config = WorkspaceConfig(workspace: WorkspaceConfig.defaultWorkspaceID)
        let model = try Workspace(config)
        let cmd = Command.ConfigureWorkspace(config: config, at: now(), actor: "subcenterd")
        var r = Reservations()
        r.workspace = (config.workspace, model)
        let c = try commit(
          .configureWorkspace(cmd), scope: LockScope(registry: true), reservations: r,
          completion: completion
        ) { _, _ in .success(true) }
        r.register(registry: &reg, by: c)
        return .committed
      }
    }
  }

  /// `ensureDefaultWorkspace(completion:)`, waiting until it is done (start-up only:
  /// it blocks the calling thread until the log completes the record).
  public func ensureDefaultWorkspace() throws(CoreError) {
    let box = Mutex<Result<Bool, CoreError>?>(nil)
    ensureDefaultWorkspace { r in box.withLock { $0 = r } }
    while true {
      if let r = box.withLock({ $0 }) {
        _ = try r.get()
        return
      }
      usleep(100)
    }
  }

  // MARK: Helpers

  func now() -> Int64 { clock.nowMillis() }

  func handle(_ workspace: String) throws(CoreError) -> WorkspaceHandle {
    if let h = registry.withLock({ $0.handle(workspace) }) { return h }
    try Validate.workspaceID(workspace)
    throw .notFound("workspace not found")
  }

  func isSuppressed(_ identity: borrowing IdentityState, _ kind: IdentifierKind, _ value: String)
    -> Bool
  {
    if identity.suppressed.isEmpty { return false }
    return identity.suppressed.contains(hasher.hash(kind: kind, normalizedValue: value))
  }

  /// Whether a reference that names nobody is suppressed (hashes only if the workspace
  /// has suppressions at all).
  func isSuppressed(_ h: WorkspaceHandle, _ ref: PersonRef) -> Bool {
    guard h.identity.withLock({ !$0.suppressed.isEmpty }) else { return false }
    let hash = hasher.hash(kind: ref.kind, normalizedValue: ref.value)
    return h.identity.withLock { $0.suppressed.contains(hash) }
  }

  /// Runs `body` under the lock of the shard holding the person `ref` names (validated
  /// and normalized), with the record's slot; nil if the ref names nobody. A person named
  /// by email, phone or anonymous id is found through the identity index and checked
  /// again under the shard lock (retrying if it moved meanwhile).
  func withPerson<R: Sendable>(
    _ h: WorkspaceHandle, _ ref: PersonRef,
    _ body: (inout Shard, UInt32) throws(CoreError) -> R
  ) throws(CoreError) -> R? {
    if case .personID(let id) = ref {
      let key = PersonKey.person(id)
      let hash = KeyHash.person(h.number, key)
      return try shards[shardIndex(hash)].withLock {
        (shard: inout Shard) throws(CoreError) -> R? in
        guard let slot = shard.find(workspace: h.number, key: key, hash: hash) else {
          return nil
        }
        return try body(&shard, slot)
      }
    }
    let kind = ref.kind
    let value = ref.value
    let idHash = KeyHash.identifier(kind, value)
    for _ in 0..<4 {
      let candidates = h.identity.withLock { $0.index.values(idHash) }
      if candidates.isEmpty { return nil }
      for c in candidates {
        let loc = Location(packed: c)
        var result: R?
        let hit = try shards[loc.shard].withLock {
          (shard: inout Shard) throws(CoreError) -> Bool in
          guard shard.holds(slot: loc.slot, workspace: h.number, kind: kind, value: value) else {
            return false
          }
          result = try body(&shard, loc.slot)
          return true
        }
        if hit { return result }
      }
    }
    return nil
  }

  /// Under the workspace's identity lock: where the person `ref` names lives, and its key.
  /// Identifier locations cannot change while the identity lock is held.
  func locate(_ h: WorkspaceHandle, _ identity: borrowing IdentityState, _ ref: PersonRef)
    -> (Location, PersonKey)?
  {
    if case .personID(let id) = ref {
      let key = PersonKey.person(id)
      let hash = KeyHash.person(h.number, key)
      let s = shardIndex(hash)
      return shards[s].withLock { shard in
        shard.find(workspace: h.number, key: key, hash: hash).map {
          (Location(shard: s, slot: $0), key)
        }
      }
    }
    for c in identity.index.values(KeyHash.identifier(ref.kind, ref.value)) {
      let loc = Location(packed: c)
      let key: PersonKey? = shards[loc.shard].withLock { shard in
        guard shard.holds(slot: loc.slot, workspace: h.number, kind: ref.kind, value: ref.value)
        else { return nil }
        return PersonCodec.key(shard.records[Int(loc.slot)])
      }
      if let key { return (loc, key) }
    }
    return nil
  }

  // MARK: Reads

  /// A workspace's configuration (GetWorkspace).
  public func workspace(_ id: String) throws(CoreError) -> WorkspaceConfig {
    try handle(id).current.config
  }

  /// Every configured workspace, by id.
  public func workspaceConfigs() -> [WorkspaceConfig] {
    let handles = registry.withLock { Array($0.byID.values) }
    return handles.map(\.current.config).sorted { $0.workspace < $1.workspace }
  }

  /// A person's profile (GetProfile). Unknown person: `notFound`.
  public func profile(workspace: String, person: PersonRef?) throws(CoreError) -> Profile {
    let h = try handle(workspace)
    let ref = try PersonRef.validated(person, field: "person")
    let profile = try withPerson(h, ref) { shard, slot in
      PersonCodec.decode(shard.records[Int(slot)], history: false, strings: shard.strings)
        .person.profile
    }
    guard let profile else { throw .notFound("person not found") }
    return profile
  }

  /// A person's entries, global flag and effective decisions (GetPreferences).
  public func preferences(workspace: String, person: PersonRef?) throws(CoreError) -> Preferences {
    let h = try handle(workspace)
    let ref = try PersonRef.validated(person, field: "person")
    let at = now()
    let prefs = try withPerson(h, ref) { shard, slot in
      PersonCodec.preferences(
        shard.records[Int(slot)], model: h.current, strings: shard.strings, now: at)
    }
    guard let prefs else { throw .notFound("person not found") }
    return prefs
  }

  /// One page of a person's history, newest first (GetHistory).
  public func history(_ req: HistoryRequest) throws(CoreError) -> HistoryPage {
    let h = try handle(req.workspace)
    let size = try HistoryPaging.pageSize(req.pageSize)
    let ref = try PersonRef.validated(req.person, field: "person")
    let page = try withPerson(h, ref) { (shard, slot) throws(CoreError) -> HistoryPage in
      let record = shard.records[Int(slot)]
      let key = PersonCodec.key(record)
      var cursor: HistoryPaging.Cursor?
      do throws(CoreError) {
        cursor = try HistoryPaging.cursor(
          from: req.pageToken, workspace: h.id, key: key, hasher: hasher)
      } catch {
        // A token of an anonymous profile merged into this person since its page was read
        // (a support tool paging a visitor who signs in meanwhile): the merged history holds
        // its entries, so paging goes on.
        let merged = PersonCodec.decode(record, history: false, strings: shard.strings).person
        let anonymous = merged.anonymousIDs.lazy.compactMap { [hasher] in
          try? HistoryPaging.cursor(
            from: req.pageToken, workspace: h.id, key: .anonymous($0), hasher: hasher)
        }
        guard let found = anonymous.first else { throw error }
        cursor = found
      }
      let all = PersonCodec.decodeHistory(record, strings: shard.strings)
      let (records, next) = HistoryPaging.page(all, before: cursor, size: size)
      let model = h.current
      return HistoryPage(
        entries: records.map(model.historyEntry),
        nextPageToken: next.map {
          HistoryPaging.token(for: $0, workspace: h.id, key: key, hasher: hasher)
        } ?? "")
    }
    guard let page else { throw .notFound("person not found") }
    return page
  }
}

/// The shards `withShards` / `withLocks` hold locked, by index.
/// Most commands lock one shard: it is kept inline, others in a small array (no hashing,
/// no allocation for the common case).
struct LockedShards {
  struct Held {
    let index: Int
    var shard: Shard
  }
  private var first: Held?
  private var others: [Held] = []

  /// The locked shards' indices, ascending.
  var indices: [Int] { ((first.map { [$0.index] } ?? []) + others.map(\.index)).sorted() }

  /// Takes over shard `i` while its lock is held (moved, not copied: the shard's
  /// storage stays uniquely referenced).
  mutating func hold(_ i: Int, _ shard: consuming Shard) {
    if first == nil {
      first = Held(index: i, shard: shard)
    } else {
      others.append(Held(index: i, shard: shard))
    }
  }

  /// Gives shard `i` back before its lock is released.
  mutating func release(_ i: Int) -> Shard {
    if first?.index == i { return first.take()!.shard }
    let k = others.firstIndex { $0.index == i }!
    return others.remove(at: k).shard
  }

  /// Runs `body` on locked shard `i` (a programming error if `i` is not locked).
  mutating func with(_ i: Int, _ body: (inout Shard) -> Void) {
    if first?.index == i { return body(&first!.shard) }
    guard let k = others.firstIndex(where: { $0.index == i }) else {
      preconditionFailure("shard \(i) is not locked")
    }
    body(&others[k].shard)
  }

  /// Runs `body` on the record of `key` if it exists.
  mutating func onPerson(
    _ h: WorkspaceHandle, _ key: PersonKey, _ body: (inout Shard, UInt32) -> Void
  ) -> Applied {
    onPerson(h, key, passing: ()) { _, shard, slot in body(&shard, slot) }
  }

  /// `onPerson`, passing `context` to `body`: a command handed over this way is borrowed,
  /// where a closure that captures it copies it (retaining each of its strings).
  /// `hint`, where the person's record likely is (a live write's slot hold), spares
  /// hashing the key when that slot holds it.
  mutating func onPerson<Context>(
    _ h: WorkspaceHandle, _ key: PersonKey, near hint: (shard: Int, slot: UInt32)? = nil,
    passing context: borrowing Context,
    _ body: (borrowing Context, inout Shard, UInt32) -> Void
  ) -> Applied {
    if let hint, first?.index == hint.shard,
      first!.shard.holds(slot: hint.slot, workspace: h.number, key: key)
    {
      body(context, &first!.shard, hint.slot)
      return Applied(found: true, location: hint)
    }
    let hash = KeyHash.person(h.number, key)
    let s = shardIndex(hash)
    // As `with(s)`, without a closure (which would capture `context`).
    if first?.index == s {
      guard let slot = first!.shard.find(workspace: h.number, key: key, hash: hash) else {
        return Applied(found: false)
      }
      body(context, &first!.shard, slot)
      return Applied(found: true, location: (s, slot))
    }
    guard let k = others.firstIndex(where: { $0.index == s }) else {
      preconditionFailure("shard \(s) is not locked")
    }
    guard let slot = others[k].shard.find(workspace: h.number, key: key, hash: hash) else {
      return Applied(found: false)
    }
    body(context, &others[k].shard, slot)
    return Applied(found: true, location: (s, slot))
  }
}
