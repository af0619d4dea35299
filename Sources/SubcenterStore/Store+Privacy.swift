// The privacy operations of SPEC §3: ForgetPerson, SuppressIdentifiers,
// UnsuppressIdentifiers, and the anonymous-profile TTL. All hold the workspace's identity
// lock, so they never interleave with an Identify of the same workspace, and validate
// against the committed state plus the commands in flight: a person being forgotten is
// gone, an identifier being claimed has its claimant, a suppression in flight counts.
// Each answers once its command is durable (or, when it needs none, once what it read
// is).

import SubcenterCore
import Synchronization

extension SubscriptionStore {
  // MARK: ForgetPerson

  /// Removes a person's profile, preferences, history and counters; with `alsoSuppress`
  /// suppresses every identifier it had. Unknown (or already forgotten): `notFound`.
  public func forget(
    _ req: ForgetRequest, actor: String, completion: @escaping Completion<ForgetResult>
  ) {
    perform(completion) { (deps: inout Deps) throws(CoreError) -> Step<ForgetResult> in
      let h = try handle(req.workspace)
      let ref = try PersonRef.validated(req.person, field: "person")
      return try h.identity.withLock {
        (identity: inout IdentityState) throws(CoreError) -> Step<ForgetResult> in
        guard let (key, view) = effectivePerson(h, identity, ref, &deps) else {
          throw .notFound("person not found")
        }
        let hashes = req.alsoSuppress ? identifierHashes(key, view) : []
        let cmd = Command.Forget(
          workspace: h.id, person: key, suppress: hashes, at: now(), actor: actor)
        var r = Reservations()
        r.remove(key, view: view)
        for x in hashes { r.suppressed.append((x, true)) }
        let scope = self.scope(of: .forget(cmd), h)
        return try withShards(scope.shards) {
          (shards: inout LockedShards) throws(CoreError) -> Step<ForgetResult> in
          guard holdRemovals(of: [key], h, &shards, into: &r) else {
            return .again { [self] in forget(req, actor: actor, completion: $0) }
          }
          let c = try commit(
            .forget(cmd), scope: scope, reservations: r, completion: completion
          ) { _, applied in
            applied.found
              ? .success(ForgetResult(personID: key.personID, key: key, erasedAt: cmd.at))
              : .failure(.notFound("person not found"))
          }
          r.register(identity: &identity, by: c)
          r.register(shards: &shards, by: c)
          return .committed
        }
      }
    }
  }

  /// The suppression hashes of every identifier a person holds.
  func identifierHashes(_ key: PersonKey, _ view: PersonView) -> [SuppressionHash] {
    var out: [SuppressionHash] = []
    if !key.isAnonymous { out.append(hasher.hash(kind: .personID, normalizedValue: key.value)) }
    if !view.email.isEmpty { out.append(hasher.hash(kind: .email, normalizedValue: view.email)) }
    if !view.phone.isEmpty { out.append(hasher.hash(kind: .phone, normalizedValue: view.phone)) }
    for a in view.anonymousIDs {
      out.append(hasher.hash(kind: .anonymousID, normalizedValue: a))
    }
    return out
  }

  // MARK: SuppressIdentifiers / UnsuppressIdentifiers

  /// Validates and normalizes a request's identifiers (`identifiers[i].kind`/`.value`)
  /// and its reason.
  private func suppressionTargets(_ req: SuppressRequest) throws(CoreError) -> [(
    PersonRef, SuppressionHash
  )] {
    try Validate.maxBytes(req.reason, Limits.suppressReasonBytes, field: "reason")
    guard req.identifiers.count <= Limits.suppressIdentifiers else {
      throw .invalidArgument(
        "identifiers", "at most \(Limits.suppressIdentifiers) identifiers a call")
    }
    var out: [(PersonRef, SuppressionHash)] = []
    var seen = Set<SuppressionHash>()
    for (i, ident) in req.identifiers.enumerated() {
      let field = ident.kind == .unspecified ? "identifiers[\(i)].kind" : "identifiers[\(i)].value"
      let value = try normalizedIdentifier(kind: ident.kind, value: ident.value, field: field)
      let hash = hasher.hash(kind: ident.kind, normalizedValue: value)
      guard seen.insert(hash).inserted else { continue }
      out.append((.of(ident.kind, value), hash))
    }
    return out
  }

  /// Suppresses identifiers (normalized first). A person holding one is forgotten; its
  /// other identifiers are not suppressed. `suppressed` counts identifiers newly
  /// suppressed.
  public func suppress(
    _ req: SuppressRequest, actor: String, completion: @escaping Completion<SuppressResult>
  ) {
    perform(completion) { (deps: inout Deps) throws(CoreError) -> Step<SuppressResult> in
      let h = try handle(req.workspace)
      let targets = try suppressionTargets(req)
      return try h.identity.withLock {
        (identity: inout IdentityState) throws(CoreError) -> Step<SuppressResult> in
        var fresh = 0
        for (_, hash) in targets where !effectivelySuppressed(identity, hash, &deps) {
          fresh += 1
        }
        var holders: [(PersonKey, PersonView)] = []
        var seen = Set<PersonKey>()
        for (ref, _) in targets {
          if let (key, view) = effectivePerson(h, identity, ref, &deps), seen.insert(key).inserted {
            holders.append((key, view))
          }
        }
        let result = SuppressResult(
          suppressed: Int32(fresh),
          forgottenPersonIDs: holders.filter { !$0.0.isAnonymous }.map(\.0.value))
        if fresh == 0 && holders.isEmpty { return .value(result) }
        let cmd = Command.Suppress(
          workspace: h.id, hashes: targets.map(\.1), forget: holders.map(\.0),
          reason: req.reason, at: now(), actor: actor)
        var r = Reservations()
        for (_, hash) in targets { r.suppressed.append((hash, true)) }
        for (key, view) in holders { r.remove(key, view: view) }
        let scope = self.scope(of: .suppress(cmd), h)
        return try withShards(scope.shards) {
          (shards: inout LockedShards) throws(CoreError) -> Step<SuppressResult> in
          guard holdRemovals(of: holders.map(\.0), h, &shards, into: &r) else {
            return .again { [self] in suppress(req, actor: actor, completion: $0) }
          }
          let c = try commit(
            .suppress(cmd), scope: scope, reservations: r, completion: completion
          ) { _, _ in .success(result) }
          r.register(identity: &identity, by: c)
          r.register(shards: &shards, by: c)
          return .committed
        }
      }
    }
  }

  /// Removes identifiers from suppression; `suppressed` counts those removed.
  public func unsuppress(
    _ req: SuppressRequest, actor: String, completion: @escaping Completion<SuppressResult>
  ) {
    perform(completion) { (deps: inout Deps) throws(CoreError) -> Step<SuppressResult> in
      let h = try handle(req.workspace)
      let targets = try suppressionTargets(req)
      return try h.identity.withLock {
        (identity: inout IdentityState) throws(CoreError) -> Step<SuppressResult> in
        var present: [SuppressionHash] = []
        for (_, hash) in targets where effectivelySuppressed(identity, hash, &deps) {
          present.append(hash)
        }
        let result = SuppressResult(suppressed: Int32(present.count), forgottenPersonIDs: [])
        if present.isEmpty { return .value(result) }
        let cmd = Command.Unsuppress(workspace: h.id, hashes: present, at: now(), actor: actor)
        var r = Reservations()
        r.suppressed = present.map { ($0, false) }
        let c = try commit(
          .unsuppress(cmd), scope: scope(of: .unsuppress(cmd), h), reservations: r,
          completion: completion
        ) { _, _ in .success(result) }
        r.register(identity: &identity, by: c)
        return .committed
      }
    }
  }

  // MARK: Anonymous-profile TTL

  /// Removes every anonymous profile not merged or changed for `ttlMillis` (SPEC §1),
  /// across workspaces, one command per workspace and shard; answers how many went, once
  /// that is durable. A profile with a change in flight is left for the next round.
  public func expireAnonymousProfiles(ttlMillis: Int64, completion: @escaping Completion<Int>) {
    perform(completion) { (deps: inout Deps) throws(CoreError) -> Step<Int> in
      let at = now()
      let handles = registry.withLock { Array($0.byID.values) }
      var removed = 0
      for h in handles {
        for s in 0..<shardCount {
          removed += try h.identity.withLock {
            (identity: inout IdentityState) throws(CoreError) -> Int in
            try shards[s].withLock { (shard: inout Shard) throws(CoreError) -> Int in
              var ids: [String] = []
              var r = Reservations()
              for (slot, record) in shard.records.enumerated()
              where record.workspace == h.number && record.isAnonymous
                && AnonymousTTL.isExpired(
                  updatedAt: PersonCodec.updatedAt(record), now: at, ttlMillis: ttlMillis)
              {
                if shard.pending[UInt32(slot)] != nil { continue }
                let key = PersonCodec.key(record)
                if identity.pending.persons[key] != nil
                  || identity.pending.holders[IdentifierKey(.anonymousID, key.value)] != nil
                {
                  continue
                }
                ids.append(key.value)
                let p = PersonCodec.decode(record, history: false, strings: shard.strings).person
                r.remove(key, view: PersonView(p))
                r.slots.append(SlotReservation(shard: s, slot: UInt32(slot), removes: true))
              }
              if ids.isEmpty { return 0 }
              let cmd = Command.ExpireAnonymous(workspace: h.id, profiles: ids, at: at)
              let c = try commitQuietly(
                .expireAnonymous(cmd), scope: scope(of: .expireAnonymous(cmd), h),
                reservations: r)
              r.register(identity: &identity, by: c)
              r.register(shard: &shard, index: s, by: c)
              deps.add(c)
              return ids.count
            }
          }
        }
      }
      return .value(removed)
    }
  }
}
