// Look-ups for validation: the state as it will be once every command in flight is
// applied — the committed state overlaid with the reservations of
// State/Reservations.swift. Each look-up that reads a reservation notes the in-flight
// command behind it in `Deps` (Store+Commit.swift). Readers never come here.

import SubcenterCore
import Synchronization

extension PersonRef {
  /// The ref naming `value` of `kind` (not `unspecified`).
  static func of(_ kind: IdentifierKind, _ value: String) -> PersonRef {
    switch kind {
    case .personID, .unspecified: .personID(value)
    case .email: .email(value)
    case .phone: .phone(value)
    case .anonymousID: .anonymousID(value)
    }
  }
}

extension SubscriptionStore {
  /// A person's committed identifiers (nil: no such person). Takes the person's shard lock.
  func committedView(_ h: WorkspaceHandle, _ key: PersonKey) -> PersonView? {
    let hash = KeyHash.person(h.number, key)
    return shards[shardIndex(hash)].withLock { shard in
      shard.find(workspace: h.number, key: key, hash: hash).map {
        PersonView(
          PersonCodec.decode(shard.records[Int($0)], history: false, strings: shard.strings)
            .person)
      }
    }
  }

  /// A person's committed profile (nil: no such person). Takes the person's shard lock.
  func committedProfile(_ h: WorkspaceHandle, _ key: PersonKey) -> Profile? {
    let hash = KeyHash.person(h.number, key)
    return shards[shardIndex(hash)].withLock { shard in
      shard.find(workspace: h.number, key: key, hash: hash).map {
        PersonCodec.decode(shard.records[Int($0)], history: false, strings: shard.strings)
          .person.profile
      }
    }
  }

  /// A person's identifiers once the commands in flight are applied (nil: no such
  /// person, or one being removed). Needs the identity lock.
  func effectiveView(
    _ h: WorkspaceHandle, _ identity: borrowing IdentityState, _ key: PersonKey,
    _ deps: inout Deps
  ) -> PersonView? {
    if let c = identity.pending.persons[key] {
      deps.add(c.last)
      return c.value
    }
    return committedView(h, key)
  }

  /// Who an email, phone or anonymous id will name. Needs the identity lock.
  func effectiveHolder(
    _ h: WorkspaceHandle, _ identity: borrowing IdentityState, _ kind: IdentifierKind,
    _ value: String, _ deps: inout Deps
  ) -> PersonKey? {
    if let c = identity.pending.holders[IdentifierKey(kind, value)] {
      deps.add(c.last)
      return c.value
    }
    return locate(h, identity, .of(kind, value))?.1
  }

  /// The person a validated ref will name, and its identifiers. Needs the identity lock.
  func effectivePerson(
    _ h: WorkspaceHandle, _ identity: borrowing IdentityState, _ ref: PersonRef,
    _ deps: inout Deps
  ) -> (PersonKey, PersonView)? {
    let key: PersonKey
    if case .personID(let id) = ref {
      key = .person(id)
    } else {
      guard let k = effectiveHolder(h, identity, ref.kind, ref.value, &deps) else { return nil }
      key = k
    }
    guard let view = effectiveView(h, identity, key, &deps) else { return nil }
    return (key, view)
  }

  /// Whether an identifier will be suppressed. Needs the identity lock.
  func effectivelySuppressed(
    _ identity: borrowing IdentityState, _ kind: IdentifierKind, _ value: String,
    _ deps: inout Deps
  ) -> Bool {
    if identity.suppressed.isEmpty && identity.pending.suppressed.isEmpty { return false }
    return effectivelySuppressed(
      identity, hasher.hash(kind: kind, normalizedValue: value), &deps)
  }

  func effectivelySuppressed(
    _ identity: borrowing IdentityState, _ hash: SuppressionHash, _ deps: inout Deps
  ) -> Bool {
    if let c = identity.pending.suppressed[hash] {
      deps.add(c.last)
      return c.value
    }
    return identity.suppressed.contains(hash)
  }

  /// A person's committed entries plus its in-flight single-person writes (each may add
  /// one). Takes the person's shard lock.
  func entryCountBound(_ h: WorkspaceHandle, _ key: PersonKey, _ deps: inout Deps) -> Int {
    let hash = KeyHash.person(h.number, key)
    let (count, last) = shards[shardIndex(hash)].withLock {
      shard -> (Int, PendingCommit?) in
      guard let slot = shard.find(workspace: h.number, key: key, hash: hash) else {
        return (0, nil)
      }
      let p = shard.pending[slot]
      return (PersonCodec.entryCount(shard.records[Int(slot)]) + (p?.writes ?? 0), p?.last)
    }
    if let last { deps.add(last) }
    return count
  }

  /// Like `withPerson`, for a write. A ref by email, phone or anonymous id names the
  /// person the commands in flight leave holding it (so a write through an anonymous id
  /// being merged goes to the person it is merged into), else its committed holder. An
  /// identifier a command in flight releases (an email an Identify replaces), a person
  /// one removes (forgets, expires, merges into another) or has not created yet, names
  /// none yet: nil, with `deps.awaitingPersonChanges` counting it, and the caller answers
  /// `Step.again`, so the write is decided once that is applied (it would otherwise be
  /// logged after a removal and, answered NOT_FOUND, still reach the change feed, or a
  /// person created again under the same id). `body` gets the shard's index and the
  /// `Deps`.
  func withPersonForWrite<R: Sendable>(
    _ h: WorkspaceHandle, _ ref: PersonRef, _ deps: inout Deps,
    _ body: (inout Shard, Int, UInt32, inout Deps) throws(CoreError) -> R
  ) throws(CoreError) -> R? {
    if case .personID(let id) = ref { return try withKey(h, .person(id), &deps, body) }
    let kind = ref.kind
    let value = ref.value
    let ident = IdentifierKey(kind, value)
    let idHash = KeyHash.identifier(kind, value)
    let removals = deps.awaitingPersonChanges
    for _ in 0..<4 {
      let (pending, candidates) = h.identity.withLock {
        identity -> ((PersonKey?, PendingCommit)?, [UInt32]) in
        let p = identity.pending.holders.isEmpty ? nil : identity.pending.holders[ident]
        return (p.map { ($0.value, $0.last) }, identity.index.values(idHash))
      }
      if let (holder, last) = pending {
        deps.add(last)
        // Released by a command in flight (an Identify replacing it, a suppression, a
        // removal), though the committed index still points at its last holder; or its
        // holder is being removed, or has no record yet (a command in flight creates it,
        // or merges this anonymous profile into it): decided once that is applied (then,
        // say, the released identifier names nobody, or is suppressed: rule 1).
        if let holder, let r = try withKey(h, holder, &deps, body) { return r }
        if deps.awaitingPersonChanges == removals { deps.awaitingPersonChanges += 1 }
        return nil
      }
      if candidates.isEmpty { return nil }
      for c in candidates {
        let loc = Location(packed: c)
        var result: R?
        let hit = try shards[loc.shard].withLock {
          (shard: inout Shard) throws(CoreError) -> Bool in
          guard shard.holds(slot: loc.slot, workspace: h.number, kind: kind, value: value) else {
            return false
          }
          result = try run(body, &shard, loc.shard, loc.slot, &deps)
          return true
        }
        if hit { return result }
      }
    }
    return nil
  }

  /// Runs `body` under the lock of `key`'s shard with its slot; nil if it has no record
  /// (or is being removed: `run`).
  private func withKey<R: Sendable>(
    _ h: WorkspaceHandle, _ key: PersonKey, _ deps: inout Deps,
    _ body: (inout Shard, Int, UInt32, inout Deps) throws(CoreError) -> R
  ) throws(CoreError) -> R? {
    let hash = KeyHash.person(h.number, key)
    let s = shardIndex(hash)
    return try shards[s].withLock { (shard: inout Shard) throws(CoreError) -> R? in
      guard let slot = shard.find(workspace: h.number, key: key, hash: hash) else { return nil }
      return try run(body, &shard, s, slot, &deps)
    }
  }

  /// Adds to `r` a hold on the record of each of `keys` that marks it removed while `r`'s
  /// command is in flight (see `run`). Their shards are locked. False when one has no
  /// record yet (a command in flight creates it): a write applied after that creation
  /// would not see the hold, so the removal must wait for it (`Step.again`; the caller's
  /// `Deps` hold the creating command, found in the in-flight identity state).
  func holdRemovals(
    of keys: [PersonKey], _ h: WorkspaceHandle, _ shards: inout LockedShards,
    into r: inout Reservations
  ) -> Bool {
    var all = true
    for key in keys {
      let hash = KeyHash.person(h.number, key)
      let s = shardIndex(hash)
      shards.with(s) { shard in
        if let slot = shard.find(workspace: h.number, key: key, hash: hash) {
          r.slots.append(SlotReservation(shard: s, slot: slot, removes: true))
        } else {
          all = false
        }
      }
    }
    return all
  }

  /// `body` on the person at `slot`, unless a command in flight removes it.
  private func run<R: Sendable>(
    _ body: (inout Shard, Int, UInt32, inout Deps) throws(CoreError) -> R,
    _ shard: inout Shard, _ s: Int, _ slot: UInt32, _ deps: inout Deps
  ) throws(CoreError) -> R? {
    if shard.pending.read(slot, { $0.removed }) == true, let p = shard.pending[slot] {
      deps.add(p.last)
      deps.awaitingPersonChanges += 1
      return nil
    }
    return try body(&shard, s, slot, &deps)
  }
}
