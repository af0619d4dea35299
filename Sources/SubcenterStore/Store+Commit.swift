// The one place where a validated change becomes visible: the deferred-commit rule.
//
// A write, under the locks its validation takes:
//   - validates against the committed state plus the reservations of the commands in
//     flight (State/Reservations.swift), noting in `Deps` every in-flight command whose
//     reservation it consulted;
//   - either builds a command and calls `commit`, which appends it to the log (inside
//     the locks) and returns the `PendingCommit` under which the caller registers the
//     command's reservations before it releases the locks; the commit owns the call's
//     completion from then on;
//   - or answers without a command (a refusal, a decision that counts nothing, an
//     Identify that changes nothing). Such an answer waits until every in-flight command
//     in its `Deps` is applied, and becomes `unavailable` if one of them fails: no answer
//     ever shows a change that is not durable. (A command needs no such wait: the
//     `CommitLog` contract fails it whenever a command appended before it while it was in
//     flight fails.)
//
// When the log completes a record, the record joins one queue, in log order. One thread
// at a time drains it, holding `Applier.gate`: for each record it takes the command's
// locks (`scope(of:)`), applies it with `apply` — the function replay uses — releases its
// reservations, builds the answer, then completes the call and wakes what waited on the
// command. A failed record releases its reservations, applies nothing and completes with
// `unavailable`. Commands are thus applied in log order, one at a time, and `gate`
// guards `lastAppliedSeq`, so a snapshot that holds `gate` sees exactly the records up to
// it (Store+Snapshot.swift).
//
// Whoever drains may be:
//   - for a log that `appliesElsewhere` (the write-ahead log with `--fsync always`, whose
//     writer thread goes straight on to its next write and fsync): the thread the server
//     named (`applyDurableRecords(on:)`: the first event loop, which then answers its own
//     calls without a hand-off), or else the applier's own queue (`Applier.thread`);
//   - for any other log: the thread that completed the record;
//   - the thread of a write whose record completed inline or raced its own `append` (it
//     drains once its validation locks are released: draining needs locks it may still
//     hold).
// A completion that writes again just queues; the drainer picks it up. With
// `flushAnswers`, a drain sends the answers given so far after every so many records of a
// run (the server: every 32), so a client gets them while the rest are applied instead of
// all at the end of the event-loop pass.
//
// Lock order: `Applier.gate` → the state locks (SubscriptionStore.swift) → the leaves
// (a `PendingCommit`'s state → `Applier.queue`; the log's own lock).

import Dispatch
import SubcenterCore
import Synchronization

/// An answer for a write whose change could not be made durable.
let notDurable = CoreError.unavailable("the change could not be made durable; retry")

// MARK: In-flight commands

/// A command between `append` and its completion.
final class PendingCommit: Sendable {
  let command: Command
  let scope: LockScope
  let reservations: Reservations
  /// The store that applies it: the log's completion reaches the store through the
  /// commit alone (a closure that captures one object needs no context of its own).
  let store: SubscriptionStore
  /// Builds the call's answer and completes the call (`CommitFinish`).
  let answer: any CommitFinish
  private let state = Mutex(State())

  /// Runs its argument (which builds the answer) under the command's locks, once
  /// applied or failed; given a failure, it needs no lock: the answer is that failure.
  typealias Outcome = (_ answer: (inout Locked, Result<Applied, CoreError>) -> Void) -> Void

  enum Arrival { case duringAppend, failedDuringAppend, afterAppend }

  private enum Phase {
    case appending
    case arrivedDuringAppend
    case failedDuringAppend(CoreError)
    case appended
    case settled(Bool)
  }

  private struct State {
    var phase = Phase.appending
    var waiters: [@Sendable (Bool) -> Void] = []
  }

  init(
    command: Command, scope: LockScope, reservations: Reservations, store: SubscriptionStore,
    answer: any CommitFinish
  ) {
    self.command = command
    self.scope = scope
    self.reservations = reservations
    self.store = store
    self.answer = answer
  }

  /// Appends the command to `log`, whose completion reaches the store through the commit.
  /// (A method: the caller's `c.command` would be a copy of the command.)
  func append(to log: any CommitLog) {
    log.append(command) { [self] result in store.delivered(self, result) }
  }

  /// Completes the call with `error`: the record did not become durable.
  func fail(_ error: CoreError) {
    answer.finish(command) { answer in
      var nothing = Locked()
      answer(&nothing, .failure(error))
    }
  }

  /// The log's completion arrived: was `append` still running? If it was, and the
  /// record is durable, `queue` hands it to the applier before the appender can see the
  /// arrival: the drain the appender runs once `append` has returned then finds it. (Had
  /// the appender drained between the arrival and the hand-off, nothing would apply the
  /// record until some later drain, and its call would wait until then.)
  func arrive(_ result: Result<UInt64, CoreError>, queue: () -> Void) -> Arrival {
    state.withLock { s in
      guard case .appending = s.phase else { return .afterAppend }
      if case .failure(let e) = result {
        s.phase = .failedDuringAppend(e)
        return .failedDuringAppend
      }
      queue()
      s.phase = .arrivedDuringAppend
      return .duringAppend
    }
  }

  /// `append` returned; throws the failure that arrived meanwhile (the command is then
  /// not in the log, and nothing must be reserved for it).
  func appendReturned() throws(CoreError) {
    try state.withLock { (s: inout State) throws(CoreError) in
      if case .failedDuringAppend(let e) = s.phase { throw e }
      s.phase = .appended
    }
  }

  /// Applied (`true`) or failed (`false`): wakes the waiters.
  func settle(_ applied: Bool) {
    let waiters = state.withLock { s in
      s.phase = .settled(applied)
      defer { s.waiters = [] }
      return s.waiters
    }
    for w in waiters { w(applied) }
  }

  /// Runs `body` once the command is applied or has failed (at once if it has).
  func whenSettled(_ body: @escaping @Sendable (Bool) -> Void) {
    let now: Bool? = state.withLock { s in
      if case .settled(let applied) = s.phase { return applied }
      s.waiters.append(body)
      return nil
    }
    if let now { body(now) }
  }
}

/// Ends a commit: runs its outcome (`PendingCommit.Outcome`), then completes the call
/// with the answer built in it (a completion may write again: it runs with no lock held).
/// Apart from `CommitAnswer`, which alone implements it, because it has no associated
/// type: a commit holding `any CommitAnswer` instead opened the existential on every call
/// (measured: ~830 more instructions a durable write).
protocol CommitFinish: Sendable {
  func finish(_ command: Command, _ outcome: PendingCommit.Outcome)
}

/// A call's answer to its command: built under the command's locks once it is applied,
/// given to the call once they are released. The commit keeps it as a value: a small one
/// needs no allocation, where closures need one for each context.
protocol CommitAnswer: CommitFinish {
  associatedtype Value: Sendable
  /// The answer, under the locks of `command`, which was applied.
  func answer(_ command: Command, _ locked: inout Locked, _ applied: Applied)
    -> Result<Value, CoreError>
  /// Completes the call.
  func complete(_ result: Result<Value, CoreError>)
}

extension CommitAnswer {
  func finish(_ command: Command, _ outcome: PendingCommit.Outcome) {
    var r: Result<Value, CoreError> = .failure(notDurable)
    outcome { locked, applied in
      switch applied {
      case .success(let a): r = answer(command, &locked, a)
      case .failure(let e): r = .failure(e)
      }
    }
    complete(r)
  }
}

/// An answer built by a closure.
struct AnswerClosure<Value: Sendable>: CommitAnswer {
  let completion: Completion<Value>
  let body: @Sendable (inout Locked, Applied) -> Result<Value, CoreError>

  func answer(_: Command, _ locked: inout Locked, _ applied: Applied) -> Result<Value, CoreError> {
    body(&locked, applied)
  }

  func complete(_ result: Result<Value, CoreError>) { completion(result) }
}

/// What applying a command found.
struct Applied: Sendable {
  /// False when the person the command names was gone (the command changed nothing).
  var found = true
  /// The person after the change (Identify, which builds it anyway).
  var person: Person?
  /// Where the person's record is (shard, slot), when it was found.
  var location: (shard: Int, slot: UInt32)?
}

/// The in-flight commands a validation consulted.
struct Deps {
  private(set) var commits: [PendingCommit] = []
  private var seen = Set<ObjectIdentifier>()
  /// Look-ups that found their person being removed, or not yet created, by a command in
  /// `commits`: the call must run again once those are applied (`Step.again`).
  var awaitingPersonChanges = 0

  var isEmpty: Bool { commits.isEmpty }

  mutating func add(_ c: PendingCommit) {
    if seen.insert(ObjectIdentifier(c)).inserted { commits.append(c) }
  }
}

/// How a write's validation ended.
enum Step<T: Sendable> {
  /// A command was committed; it answers the call once applied.
  case committed
  /// The answer, given once the consulted in-flight commands are applied.
  case value(T)
  /// The answer, computed once the consulted in-flight commands are applied.
  case read(@Sendable () -> Result<T, CoreError>)
  /// The call, made again once the consulted in-flight commands are applied (a person it
  /// names was being removed, or merged into another).
  case again(@Sendable (@escaping Completion<T>) -> Void)
}

/// Counts arrivals, then reports whether all were applied.
final class Join: Sendable {
  private let state: Mutex<(left: Int, ok: Bool)>
  private let done: @Sendable (Bool) -> Void

  init(_ count: Int, _ done: @escaping @Sendable (Bool) -> Void) {
    state = Mutex((count, true))
    self.done = done
  }

  func arrive(_ ok: Bool) {
    let fire: Bool? = state.withLock { s in
      s.left -= 1
      if !ok { s.ok = false }
      return s.left == 0 ? s.ok : nil
    }
    if let fire { done(fire) }
  }
}

// The closures the applier keeps in a `Mutex` are each wrapped in a struct: Swift 6.3
// reabstracts a closure kept bare in a generic `Mutex` at every `withLock { $0 }` (an
// `inout` written back through two thunks), a chain that grows with each call (the
// removal hook, kept bare, made the Nth forget run 2N thunks: ForgetPerson fell from ~5k/s
// to ~200/s after 70k forgets).

/// Somewhere else to run work (an event loop the server names): `run` takes a task and
/// returns true if it will run it, false if the caller must.
struct TaskRunner: Sendable {
  let run: @Sendable (@escaping @Sendable () -> Void) -> Bool
}

/// What runs after a change that removed persons (`whenPersonsRemoved`).
struct RemovalHook: Sendable {
  let run: @Sendable () -> Void
}

/// Sends the answers given so far while a drain applies a run of records (the server:
/// its event loop's pending output), after every `every` of them.
struct AnswerFlush: Sendable {
  let every: Int
  let run: @Sendable () -> Void
}

/// The queue of completed records and the gate of application.
final class Applier: Sendable {
  struct Queue {
    var items: [(PendingCommit, Result<UInt64, CoreError>)] = []
    /// A thread is draining: it takes whatever is queued before it stops.
    var draining = false
    /// A drain is queued on `thread` and has not started yet.
    var drainScheduled = false
  }

  let queue = Mutex(Queue())
  /// Records the log completed are applied on this queue (unless `executor` takes them),
  /// not on the log's writer thread, so the writer goes on to the next write and fsync
  /// while the last batch is applied and answered (their I/O wait and this CPU work
  /// overlap).
  let thread = DispatchQueue(label: "subcenter.applier")
  /// Where drains run instead, while it accepts them (`applyDurableRecords(on:)`).
  let executor = Mutex<TaskRunner?>(nil)
  /// What sends the answers given so far in a long run of records (`flushAnswers`).
  let answerFlush = Mutex<AnswerFlush?>(nil)
  /// Called after a change that removed persons is applied (`whenPersonsRemoved`).
  let personsRemoved = Mutex<RemovalHook?>(nil)
  /// Held while commands are applied, and while a snapshot copies the state; holds the
  /// sequence number of the last applied record.
  let gate = Mutex<UInt64>(0)
  /// The same number, readable without waiting for the gate.
  let applied = Atomic<UInt64>(0)
  /// How long one drain applies records before it lets its thread do other work and
  /// schedules the rest: records that keep arriving (from other event loops) would
  /// otherwise keep the draining event loop from its own connections for as long as they
  /// come (a burst of writes costing milliseconds each starved its calls for a minute).
  let drainBudgetNanos = Atomic<UInt64>(10_000_000)
}

extension PendingCommit {
  /// Applies the command (or fails it) and answers the call: `SubscriptionStore.drain`'s
  /// step for one record, under `Applier.gate` (`last` is the gate's). A method of the
  /// commit: a caller's `c.scope`, `c.reservations` or `c.answer` would each be a copy
  /// (a retain and release of everything it holds).
  fileprivate func process(_ result: Result<UInt64, CoreError>, _ last: inout UInt64) {
    switch result {
    case .success(let seq):
      var ok = false
      answer.finish(command) { answer in
        store.withLocks(scope) { (locked: inout Locked) in
          let applied: Result<Applied, CoreError>
          do throws(CoreError) {
            applied = .success(
              try store.apply(
                command, scope.workspace, registry: &locked.registry,
                identity: &locked.identity, shards: &locked.shards,
                near: reservations.slots.firstLocation))
            ok = true
          } catch {
            applied = .failure(error)
          }
          reservations.release(in: &locked)
          answer(&locked, applied)
        }
        if seq > last {
          last = seq
          store.applier.applied.store(seq, ordering: .releasing)
        }
        store.noteEvents(command, seq: seq, scope.workspace)
        if ok, !ChangeEvents.removals(of: command).isEmpty {
          store.applier.personsRemoved.withLock { $0 }?.run()
        }
      }
      settle(ok)
    case .failure(let error):
      store.withLocks(scope) { (locked: inout Locked) in reservations.release(in: &locked) }
      fail(error)
      settle(false)
    }
  }
}

// MARK: Locks

/// The locks a command's application takes (the same as its validation's, less the
/// brief look-ups).
struct LockScope: Sendable {
  var registry = false
  var workspace: WorkspaceHandle?
  var identity = false
  var shards: [Int] = []
}

/// The state behind the locks of a `LockScope`, moved out of its mutexes while they are
/// held (and back before they are released). Parts not in the scope are nil or empty (a
/// nil registry and identity state cost nothing to make and drop, where empty ones cost
/// eight releases a command).
struct Locked {
  var registry: Registry?
  var identity: IdentityState?
  var shards = LockedShards()
}

extension SubscriptionStore {
  /// The locks `command` is applied under. `h` is the command's workspace (nil for a
  /// configuration).
  func scope(of command: Command, _ h: WorkspaceHandle?) -> LockScope {
    func shard(_ key: PersonKey) -> Int { shardIndex(KeyHash.person(h!.number, key)) }
    switch command {
    case .configureWorkspace:
      return LockScope(registry: true)
    case .identify(let c):
      return LockScope(workspace: h, identity: true, shards: shards(of: c, h!))
    case .setPreference(let c):
      return LockScope(workspace: h, shards: oneShard[shard(c.person)])
    case .setGlobal(let c):
      return LockScope(workspace: h, shards: oneShard[shard(c.person)])
    case .override(let c):
      return LockScope(workspace: h, shards: oneShard[shard(c.person)])
    case .recordSends(let c):
      return LockScope(workspace: h, shards: c.persons.map(shard))
    case .forget(let c):
      return LockScope(workspace: h, identity: true, shards: oneShard[shard(c.person)])
    case .suppress(let c):
      return LockScope(workspace: h, identity: true, shards: c.forget.map(shard))
    case .unsuppress:
      return LockScope(workspace: h, identity: true)
    case .expireAnonymous(let c):
      return LockScope(
        workspace: h, identity: true, shards: c.profiles.map { shard(.anonymous($0)) })
    }
  }

  /// Runs `body` holding the locks of `scope`, in lock order.
  func withLocks<R: Sendable, E: Error>(
    _ scope: LockScope, _ body: (inout Locked) throws(E) -> R
  ) throws(E) -> R {
    var locked = Locked()
    if scope.registry {
      return try registry.withLock { (reg: inout Registry) throws(E) -> R in
        locked.registry = Registry()
        swap(&reg, &locked.registry!)
        defer { swap(&reg, &locked.registry!) }
        return try lockShards(scope.shards, &locked, body)
      }
    }
    if scope.identity, let h = scope.workspace {
      return try h.identity.withLock { (identity: inout IdentityState) throws(E) -> R in
        locked.identity = IdentityState()
        swap(&identity, &locked.identity!)
        defer { swap(&identity, &locked.identity!) }
        return try lockShards(scope.shards, &locked, body)
      }
    }
    return try lockShards(scope.shards, &locked, body)
  }

  /// Runs `body` holding the locks of the given shards (taken in ascending order); `body`
  /// reaches each locked shard through `LockedShards.with(_:_:)`.
  func withShards<R: Sendable>(
    _ indices: [Int], _ body: (inout LockedShards) throws(CoreError) -> R
  ) throws(CoreError) -> R {
    var locked = Locked()
    return try lockShards(indices, &locked) { (l: inout Locked) throws(CoreError) -> R in
      try body(&l.shards)
    }
  }

  private func lockShards<R: Sendable, E: Error>(
    _ indices: [Int], _ locked: inout Locked, _ body: (inout Locked) throws(E) -> R
  ) throws(E) -> R {
    let order = indices.count <= 1 ? indices[...] : Array(Set(indices)).sorted()[...]
    return try lockLevel(order, &locked, body)
  }

  private func lockLevel<R: Sendable, E: Error>(
    _ rest: ArraySlice<Int>, _ locked: inout Locked, _ body: (inout Locked) throws(E) -> R
  ) throws(E) -> R {
    guard let first = rest.first else { return try body(&locked) }
    // The shard moves out while its lock is held (its storage stays uniquely referenced)
    // and back before the lock is released.
    return try shards[first].withLockTaken { (taken, restore) throws(E) -> R in
      locked.shards.hold(first, taken)
      defer { restore(locked.shards.release(first)) }
      return try lockLevel(rest.dropFirst(), &locked, body)
    }
  }

  // MARK: Committing

  /// Appends `command` to the log. Called with the locks of the command's validation
  /// held (a superset of `scope`, apart from brief look-ups); the caller then registers
  /// `reservations` under the returned commit before releasing them. Once the record
  /// is durable, `answer` builds the call's answer under the command's locks, right
  /// after it was applied; `completion` gets it. Throws (reserving nothing, answering
  /// nothing) when the log refuses the command at once.
  func commit<T: Sendable>(
    _ command: Command, scope: LockScope, reservations: Reservations = Reservations(),
    completion: @escaping Completion<T>,
    answer: @escaping @Sendable (inout Locked, Applied) -> Result<T, CoreError>
  ) throws(CoreError) -> PendingCommit {
    try commit(
      command, scope: scope, reservations: reservations,
      answer: AnswerClosure(completion: completion, body: answer))
  }

  /// `commit` with the call's answer and completion in one value (`CommitAnswer`).
  func commit(
    _ command: consuming Command, scope: LockScope,
    reservations: consuming Reservations = Reservations(), answer: some CommitAnswer
  ) throws(CoreError) -> PendingCommit {
    precondition(scope.identity || !reservations.touchesIdentity, "identity not in scope")
    precondition(scope.registry || reservations.workspace == nil, "registry not in scope")
    let c = PendingCommit(
      command: command, scope: scope, reservations: reservations, store: self, answer: answer)
    c.append(to: log)
    try c.appendReturned()
    return c
  }

  /// `commit` for a command whose caller waits on the commit itself (through `Deps`).
  func commitQuietly(
    _ command: Command, scope: LockScope, reservations: Reservations = Reservations()
  ) throws(CoreError) -> PendingCommit {
    try commit(
      command, scope: scope, reservations: reservations,
      completion: { (_: Result<Bool, CoreError>) in }, answer: { _, _ in .success(true) })
  }

  /// Runs a write's validation `body` and answers the call: through the commit it made,
  /// or with its answer (or error) once the in-flight commands it consulted are applied.
  /// `completion` is an autoclosure, evaluated only when this answers: a committed write
  /// never needs it here, and passing it in its generic form allocates a thunk.
  func perform<T: Sendable>(
    _ completion: @autoclosure () -> Completion<T>,
    _ body: (inout Deps) throws(CoreError) -> Step<T>
  ) {
    var deps = Deps()
    let step: Step<T>
    do { step = try body(&deps) } catch { step = .read { .failure(error) } }
    switch step {
    case .committed: break
    case .value(let v) where deps.isEmpty: completion()(.success(v))  // no closure to allocate
    case .value(let v): respond(after: deps, completion()) { .success(v) }
    case .read(let f): respond(after: deps, completion(), f)
    case .again(let call) where deps.isEmpty: call(completion())
    case .again(let call):
      let completion = completion()
      let join = Join(deps.commits.count) { ok in
        if ok { call(completion) } else { completion(.failure(notDurable)) }
      }
      for c in deps.commits { c.whenSettled(join.arrive) }
    }
    drain()
  }

  /// Completes with `answer()` once every commit of `deps` is applied (now if none is in
  /// flight), or with `unavailable` if one failed. Called with no lock held.
  func respond<T: Sendable>(
    after deps: Deps, _ completion: @escaping Completion<T>,
    _ answer: @escaping @Sendable () -> Result<T, CoreError>
  ) {
    if deps.isEmpty {
      completion(answer())
      return
    }
    let join = Join(deps.commits.count) { ok in completion(ok ? answer() : .failure(notDurable)) }
    for c in deps.commits { c.whenSettled(join.arrive) }
  }

  // MARK: Applying, in log order

  /// The log's completion for `c`.
  fileprivate func delivered(_ c: PendingCommit, _ result: Result<UInt64, CoreError>) {
    let arrival = c.arrive(result) { applier.queue.withLock { $0.items.append((c, result)) } }
    switch arrival {
    case .failedDuringAppend:
      return  // `commit` throws; nothing was reserved.
    case .duringAppend:
      // Queued: the appender still holds locks the application needs, and drains once it
      // has released them.
      return
    case .afterAppend where log.appliesElsewhere:
      // A drain on the applier's queue, unless one is running (it takes this record
      // before it stops) or already queued.
      let schedule = applier.queue.withLock { q -> Bool in
        q.items.append((c, result))
        if q.draining || q.drainScheduled { return false }
        q.drainScheduled = true
        return true
      }
      if schedule { scheduleDrain() }
    case .afterAppend:
      applier.queue.withLock { $0.items.append((c, result)) }
      drain()
    }
  }

  /// Runs `drain` on the applier's executor (the server: its first event loop), or on the
  /// applier's own queue.
  private func scheduleDrain() {
    let task: @Sendable () -> Void = { [self] in drain() }
    if applier.executor.withLock({ $0 })?.run(task) != true {
      applier.thread.async(execute: task)
    }
  }

  /// Applies the queued records, in order, unless another thread is at it (that thread
  /// then takes what was queued meanwhile), for at most the applier's `drainBudgetNanos`
  /// (then the rest waits for a drain scheduled after it). Called with no lock held.
  func drain() {
    typealias Item = (PendingCommit, Result<UInt64, CoreError>)
    let first: [Item]? = applier.queue.withLock { q in
      q.drainScheduled = false
      if q.draining || q.items.isEmpty { return nil }
      q.draining = true
      defer { q.items = [] }
      return q.items
    }
    guard var batch = first else { return }
    let flush = applier.answerFlush.withLock { $0 }
    let deadline = monotonicNanos() + applier.drainBudgetNanos.load(ordering: .relaxed)
    var rest: ArraySlice<Item> = []
    var yielded = false
    applier.gate.withLock { last in
      while true {
        for (i, (c, result)) in batch.enumerated() {
          c.process(result, &last)
          if i + 1 < batch.count, monotonicNanos() > deadline {
            rest = batch[(i + 1)...]
            break
          }
          // Between records, not after the last: the event loop sends what is left.
          if let flush, (i + 1) % flush.every == 0, i + 1 < batch.count { flush.run() }
        }
        batch = applier.queue.withLock { q in
          if !rest.isEmpty || (!q.items.isEmpty && monotonicNanos() > deadline) {
            // Out of time: the rest first, then what came meanwhile, in a later drain.
            q.items = Array(rest) + q.items
            q.draining = false
            q.drainScheduled = true
            yielded = true
            return []
          }
          if q.items.isEmpty {
            q.draining = false
            return []
          }
          defer { q.items = [] }
          return q.items
        }
        if batch.isEmpty { break }
      }
    }
    if yielded { scheduleDrain() }
  }

  /// Records `seq` as the workspace's newest change-feed event if its record has one (the
  /// feed reads the log, so whether the command changed anything does not matter).
  func noteEvents(_ command: Command, seq: UInt64, _ h: WorkspaceHandle?) {
    guard let h, ChangeEvents.hasEvents(command) else { return }
    h.lastEventSeq.store(seq, ordering: .relaxed)
  }

  /// Applies a command to the state under its locks (`scope(of:)`): the live path and
  /// replay both come here. No validation, no clock, no request: the command alone says
  /// what changes; a command naming a person that is gone changes nothing. `registry` and
  /// `identity` are set when the scope holds them. `hint`, the first slot the command's
  /// commit holds, is where a single-person write's record likely is (checked, not trusted).
  func apply(
    _ command: Command, _ h: WorkspaceHandle?, registry: inout Registry?,
    identity: inout IdentityState?, shards: inout LockedShards,
    near hint: (shard: Int, slot: UInt32)? = nil
  ) throws(CoreError) -> Applied {
    switch command {
    case .configureWorkspace(let c):
      let model = try Workspace(
        c.config, previous: registry!.handle(c.config.workspace)?.current)
      applyConfigure(model, registry: &registry!)
      return Applied()
    case .identify(let c):
      return Applied(person: applyIdentify(c, h!, identity: &identity!, shards: &shards))
    case .setPreference(let c):
      let (channel, topic) = try numbers(h!, channel: c.channel, topic: c.topic)
      return shards.onPerson(h!, c.person, near: hint, passing: c) { c, shard, slot in
        applySetPreference(c, channel: channel, topic: topic, shard: &shard, slot: slot)
      }
    case .setGlobal(let c):
      return shards.onPerson(h!, c.person, near: hint, passing: c) { c, shard, slot in
        applySetGlobal(c, shard: &shard, slot: slot)
      }
    case .recordSends(let c):
      let (channel, _) = try numbers(h!, channel: c.channel, topic: "")
      guard let limit = h!.current.limit(channel: channel) else { return Applied(found: false) }
      var found = false
      for key in c.persons {
        let a = shards.onPerson(h!, key) { shard, slot in
          PersonCodec.recordSend(
            &shard.records[Int(slot)], channel: channel, at: c.at, limit: limit)
        }
        found = found || a.found
      }
      return Applied(found: found)
    case .override(let c):
      let (channel, topic) = try numbers(h!, channel: c.channel, topic: c.topic)
      return shards.onPerson(h!, c.person, near: hint, passing: c) { c, shard, slot in
        applyOverride(c, channel: channel, topic: topic, shard: &shard, slot: slot)
      }
    case .forget(let c):
      let hash = KeyHash.person(h!.number, c.person)
      let s = shardIndex(hash)
      var found = false
      shards.with(s) { shard in
        found = shard.find(workspace: h!.number, key: c.person, hash: hash) != nil
        applyForget(c, h!, identity: &identity!, shard: &shard, shardIndex: s)
      }
      return Applied(found: found)
    case .suppress(let c):
      applySuppress(c, h!, identity: &identity!, shards: &shards)
      return Applied()
    case .unsuppress(let c):
      applyUnsuppress(c, identity: &identity!)
      return Applied()
    case .expireAnonymous(let c):
      for s in shards.indices {
        shards.with(s) { shard in
          applyExpire(c, h!, identity: &identity!, shard: &shard, shardIndex: s)
        }
      }
      return Applied()
    }
  }

  /// Channel and topic numbers for names a command carries, numbering names the
  /// configuration no longer has (replay of a change made before a reconfiguration).
  func numbers(_ h: WorkspaceHandle, channel: String, topic: String) throws(CoreError)
    -> (NameID, NameID)
  {
    var m = h.current
    if (!channel.isEmpty && m.channelID(channel) == nil)
      || (!topic.isEmpty && m.topicID(topic) == nil)
    {
      m = try h.model.withLock { (model: inout Workspace) throws(CoreError) -> Workspace in
        model = try model.numbering(
          channels: channel.isEmpty ? [] : [channel], topics: topic.isEmpty ? [] : [topic])
        return model
      }
    }
    return (channel.isEmpty ? 0 : m.channelID(channel)!, topic.isEmpty ? 0 : m.topicID(topic)!)
  }
}
