// Applying commands to the state. `apply` (Store+Commit.swift) calls these under the
// command's locks, for the live path once the log has made the command durable and for
// `replay(_:)` when it is read back from the log. Nothing here reads the clock, the
// secret or a request: a command alone decides what changes.

import SubcenterCore
import Synchronization

extension SubscriptionStore {
  func applyConfigure(_ model: Workspace, registry reg: inout Registry) {
    if let existing = reg.handle(model.id) {
      existing.model.withLock { $0 = model }
    } else {
      reg.add(WorkspaceHandle(number: reg.nextNumber, model: model))
      reg.nextNumber += 1
    }
  }

  /// The shards an Identify touches: the person's, and the merged profile's.
  func shards(of cmd: Command.Identify, _ h: WorkspaceHandle) -> [Int] {
    var out = [shardIndex(KeyHash.person(h.number, cmd.person))]
    if cmd.mergesProfile, let a = cmd.anonymousID {
      out.append(shardIndex(KeyHash.person(h.number, .anonymous(a))))
    }
    return out
  }

  /// Creates or updates the person, merges the anonymous profile, and keeps the
  /// identifier index in step. Needs the identity lock and `shards(of:)` locked.
  func applyIdentify(
    _ cmd: Command.Identify, _ h: WorkspaceHandle, identity: inout IdentityState,
    shards locked: inout LockedShards
  ) -> Person {
    let key = cmd.person
    let hash = KeyHash.person(h.number, key)
    let ps = shardIndex(hash)
    var slot: UInt32?
    var person = Person(key: key, at: cmd.at)
    var tail: HistoryTail?
    locked.with(ps) { shard in
      if let s = shard.find(workspace: h.number, key: key, hash: hash) {
        slot = s
        let d = PersonCodec.decode(
          shard.records[Int(s)], history: cmd.mergesProfile, strings: shard.strings)
        person = d.person
        tail = d.tail
      }
    }
    let oldLocation = slot.map { Location(shard: ps, slot: $0).packed }
    var fields: [String] = []
    if let e = cmd.email {
      if !person.email.isEmpty, let oldLocation {
        identity.index.remove(KeyHash.identifier(.email, person.email), oldLocation)
      }
      person.email = e
      fields.append("email")
    }
    if let p = cmd.phone {
      if !person.phone.isEmpty, let oldLocation {
        identity.index.remove(KeyHash.identifier(.phone, person.phone), oldLocation)
      }
      person.phone = p
      fields.append("phone")
    }
    if let a = cmd.anonymousID, !cmd.mergesProfile {
      person.anonymousIDs.append(a)
      fields.append("anonymous_id")
    }
    let created = slot == nil
    if created || !fields.isEmpty {
      person.updatedAt = cmd.at
      person.appendHistory(
        action: .identify, actor: cmd.actor,
        detail: HistoryDetail.identify(created: created, fields: fields), at: cmd.at)
    }
    if cmd.mergesProfile, let a = cmd.anonymousID {
      let anonKey = PersonKey.anonymous(a)
      let anonHash = KeyHash.person(h.number, anonKey)
      let anonShard = shardIndex(anonHash)
      var anon: Person?
      locked.with(anonShard) { shard in
        if let s = shard.find(workspace: h.number, key: anonKey, hash: anonHash) {
          anon =
            PersonCodec.decode(shard.records[Int(s)], history: true, strings: shard.strings)
            .person
          shard.remove(slot: s, hash: anonHash)
          identity.index.remove(
            KeyHash.identifier(.anonymousID, a), Location(shard: anonShard, slot: s).packed)
        }
      }
      if let anon {
        person.merge(anonymous: anon, at: cmd.at, actor: cmd.actor)
      } else {
        person.anonymousIDs.append(a)
      }
    }
    var newSlot: UInt32 = 0
    let full = created || cmd.mergesProfile
    locked.with(ps) { shard in
      if let slot {
        if full {
          shard.records[Int(slot)] = PersonCodec.encode(
            person, workspace: h.number, strings: &shard.strings)
        } else {
          PersonCodec.update(
            &shard.records[Int(slot)], with: person, tail: tail!, strings: &shard.strings)
        }
        newSlot = slot
      } else {
        let record = PersonCodec.encode(person, workspace: h.number, strings: &shard.strings)
        newSlot = shard.insert(record, hash: hash)
      }
    }
    let location = Location(shard: ps, slot: newSlot).packed
    if let e = cmd.email { identity.index.insert(KeyHash.identifier(.email, e), location) }
    if let p = cmd.phone { identity.index.insert(KeyHash.identifier(.phone, p), location) }
    if let a = cmd.anonymousID {
      identity.index.insert(KeyHash.identifier(.anonymousID, a), location)
    }
    if created && key.isAnonymous {
      identity.index.insert(KeyHash.identifier(.anonymousID, key.value), location)
    }
    return person
  }

  /// Changes the packed record in place (the usual case), or through the decoded person
  /// when the change sorts before its stored history.
  func applySetPreference(
    _ cmd: Command.SetPreference, channel: NameID, topic: NameID, shard: inout Shard,
    slot: UInt32
  ) {
    guard
      !PersonCodec.setPreference(
        &shard.records[Int(slot)], channel: channel, topic: topic, state: cmd.state,
        source: cmd.source, noticeVersion: cmd.noticeVersion, at: cmd.at, actor: cmd.actor,
        strings: &shard.strings, scratch: &shard.scratch)
    else { return }
    changeDecoded(&shard, slot) {
      $0.setPreference(
        channel: channel, topic: topic, state: cmd.state, source: cmd.source,
        noticeVersion: cmd.noticeVersion, at: cmd.at, actor: cmd.actor)
    }
  }

  /// As `applySetPreference`.
  func applySetGlobal(_ cmd: Command.SetGlobal, shard: inout Shard, slot: UInt32) {
    guard
      !PersonCodec.setGlobal(
        &shard.records[Int(slot)], unsubscribed: cmd.unsubscribed, source: cmd.source,
        at: cmd.at, actor: cmd.actor, strings: &shard.strings, scratch: &shard.scratch)
    else { return }
    changeDecoded(&shard, slot) {
      $0.setGlobal(unsubscribed: cmd.unsubscribed, source: cmd.source, at: cmd.at, actor: cmd.actor)
    }
  }

  func applyOverride(
    _ cmd: Command.Override, channel: NameID, topic: NameID, shard: inout Shard, slot: UInt32
  ) {
    changeDecoded(&shard, slot) {
      $0.appendHistory(
        action: .override, channel: channel, topic: topic, actor: cmd.actor, detail: cmd.detail,
        at: cmd.at)
    }
  }

  /// Decodes the record (its stored history left packed), applies `change` to the person
  /// and writes the record back.
  private func changeDecoded(_ shard: inout Shard, _ slot: UInt32, _ change: (inout Person) -> Void)
  {
    var d = PersonCodec.decode(shard.records[Int(slot)], history: false, strings: shard.strings)
    change(&d.person)
    PersonCodec.update(
      &shard.records[Int(slot)], with: d.person, tail: d.tail, strings: &shard.strings)
  }

  /// Removes a person and its identifier index entries.
  @discardableResult
  func removePerson(
    _ h: WorkspaceHandle, identity: inout IdentityState, shard: inout Shard, shardIndex s: Int,
    slot: UInt32
  ) -> Person {
    let p = PersonCodec.decode(shard.records[Int(slot)], history: false, strings: shard.strings)
      .person
    let location = Location(shard: s, slot: slot).packed
    if !p.email.isEmpty { identity.index.remove(KeyHash.identifier(.email, p.email), location) }
    if !p.phone.isEmpty { identity.index.remove(KeyHash.identifier(.phone, p.phone), location) }
    for a in p.anonymousIDs {
      identity.index.remove(KeyHash.identifier(.anonymousID, a), location)
    }
    shard.remove(slot: slot, hash: KeyHash.person(h.number, p.key))
    return p
  }

  /// Needs the identity lock and the person's shard locked.
  func applyForget(
    _ cmd: Command.Forget, _ h: WorkspaceHandle, identity: inout IdentityState,
    shard: inout Shard, shardIndex s: Int
  ) {
    let hash = KeyHash.person(h.number, cmd.person)
    if let slot = shard.find(workspace: h.number, key: cmd.person, hash: hash) {
      removePerson(h, identity: &identity, shard: &shard, shardIndex: s, slot: slot)
    }
    for x in cmd.suppress { identity.suppressed.insert(x) }
  }

  /// The shards of the persons a command forgets.
  func shards(of keys: [PersonKey], _ h: WorkspaceHandle) -> [Int] {
    keys.map { shardIndex(KeyHash.person(h.number, $0)) }
  }

  /// Needs the identity lock and `shards(of: cmd.forget)` locked.
  func applySuppress(
    _ cmd: Command.Suppress, _ h: WorkspaceHandle, identity: inout IdentityState,
    shards locked: inout LockedShards
  ) {
    for key in cmd.forget {
      let hash = KeyHash.person(h.number, key)
      let s = shardIndex(hash)
      locked.with(s) { shard in
        if let slot = shard.find(workspace: h.number, key: key, hash: hash) {
          removePerson(h, identity: &identity, shard: &shard, shardIndex: s, slot: slot)
        }
      }
    }
    for x in cmd.hashes { identity.suppressed.insert(x) }
  }

  func applyUnsuppress(_ cmd: Command.Unsuppress, identity: inout IdentityState) {
    for x in cmd.hashes { identity.suppressed.remove(x) }
  }

  /// Needs the identity lock and the shard of every profile locked (the live path makes
  /// one command per shard).
  func applyExpire(
    _ cmd: Command.ExpireAnonymous, _ h: WorkspaceHandle, identity: inout IdentityState,
    shard: inout Shard, shardIndex s: Int
  ) {
    for id in cmd.profiles {
      let key = PersonKey.anonymous(id)
      let hash = KeyHash.person(h.number, key)
      if shardIndex(hash) == s, let slot = shard.find(workspace: h.number, key: key, hash: hash) {
        removePerson(h, identity: &identity, shard: &shard, shardIndex: s, slot: slot)
      }
    }
  }

  // MARK: Replay

  /// Applies a command read back from the log (recovery): no validation, no logging, no
  /// clock. Commands must be replayed in log order onto the state they were logged
  /// against; a command naming a person that is gone changes nothing.
  public func replay(_ command: Command) throws(CoreError) { try replay(command, seq: nil) }

  /// `replay(_:)` of the record `seq`, which becomes `lastAppliedSeq`.
  public func replay(_ command: Command, seq: UInt64?) throws(CoreError) {
    let h: WorkspaceHandle?
    if case .configureWorkspace = command { h = nil } else { h = try handle(command.workspace) }
    let scope = self.scope(of: command, h)
    try applier.gate.withLock { (last: inout UInt64) throws(CoreError) in
      _ = try withLocks(scope) { (locked: inout Locked) throws(CoreError) -> Applied in
        try apply(
          command, h, registry: &locked.registry, identity: &locked.identity,
          shards: &locked.shards)
      }
      if let seq, seq > last {
        last = seq
        applier.applied.store(seq, ordering: .releasing)
      }
      if let seq { noteEvents(command, seq: seq, h) }
    }
  }

  // MARK: Whole-state reads (snapshots, tests)

  /// The resolved configuration of a workspace (names of channel and topic numbers).
  public func workspaceModel(_ id: String) -> Workspace? {
    registry.withLock { $0.handle(id) }?.current
  }

  /// Every person of a workspace, decoded in full, ordered by key.
  public func persons(in workspace: String) -> [Person] {
    guard let h = registry.withLock({ $0.handle(workspace) }) else { return [] }
    var out: [Person] = []
    for box in shards {
      let part = box.withLock { shard in
        shard.records.filter { $0.workspace == h.number }.map {
          PersonCodec.decode($0, history: true, strings: shard.strings).person
        }
      }
      out += part
    }
    return out.sorted {
      $0.key.isAnonymous != $1.key.isAnonymous
        ? !$0.key.isAnonymous
        : $0.key.value.utf8.lexicographicallyPrecedes($1.key.value.utf8)
    }
  }

  /// The suppressed identifiers' hashes of a workspace, sorted.
  public func suppressionHashes(in workspace: String) -> [SuppressionHash] {
    guard let h = registry.withLock({ $0.handle(workspace) }) else { return [] }
    return h.identity.withLock { $0.suppressed.sorted() }
  }
}

extension PersonCodec {
  /// Counts one send in place (the packed twin of `Person.recordSend`).
  static func recordSend(_ r: inout PersonRecord, channel: NameID, at: Int64, limit: LimitRule) {
    let mask: UInt64 = 0xFFFF_FFFF_FFFF
    let window = limit.counted(at: at)  // the sends no longer counted go
    let ch = UInt64(channel)
    if !r.sends.isEmpty {
      r.sends.removeAll { $0 >> 48 == ch && !window.contains(Int64($0 & mask)) }
    }
    let t = UInt64(clampTime(at))
    let value = ch << 48 | t
    if let last = r.sends.last, last & mask > t {
      let i = r.sends.firstIndex { $0 & mask > t }!
      r.sends.insert(value, at: i)
    } else {
      r.sends.append(value)
    }
  }
}
