// The privacy operations of SPEC §3: ForgetPerson, SuppressIdentifiers,
// UnsuppressIdentifiers, and the anonymous-profile TTL. All hold the workspace's identity
// lock, so they never interleave with an Identify of the same workspace.

import SubcenterCore
import Synchronization

extension SubscriptionStore {
  // MARK: ForgetPerson

  /// Removes a person's profile, preferences, history and counters; with `alsoSuppress`
  /// suppresses every identifier it had. Unknown (or already forgotten): `notFound`.
  public func forget(_ req: ForgetRequest, actor: String, completion: Completion<ForgetResult>) {
    run(completion) { () throws(CoreError) in try forget(req, actor: actor) }
  }

  func forget(_ req: ForgetRequest, actor: String) throws(CoreError) -> ForgetResult {
    let h = try handle(req.workspace)
    let ref = try PersonRef.validated(req.person, field: "person")
    return try h.identity.withLock {
      (identity: inout IdentityState) throws(CoreError) -> ForgetResult in
      guard let (loc, key) = locate(h, identity, ref) else {
        throw .notFound("person not found")
      }
      return try shards[loc.shard].state.withLock {
        (shard: inout Shard) throws(CoreError) -> ForgetResult in
        var hashes: [SuppressionHash] = []
        if req.alsoSuppress {
          hashes = identifierHashes(
            of: PersonCodec.decode(
              shard.records[Int(loc.slot)], history: false, strings: shard.strings
            ).person)
        }
        let cmd = Command.Forget(
          workspace: h.id, person: key, suppress: hashes, at: now(), actor: actor)
        _ = try log.append(.forget(cmd))
        applyForget(cmd, h, identity: &identity, shard: &shard, shardIndex: loc.shard)
        return ForgetResult(personID: key.personID, key: key, erasedAt: cmd.at)
      }
    }
  }

  /// The suppression hashes of every identifier a person holds.
  func identifierHashes(of p: Person) -> [SuppressionHash] {
    var out: [SuppressionHash] = []
    if !p.isAnonymous { out.append(hasher.hash(kind: .personID, normalizedValue: p.key.value)) }
    if !p.email.isEmpty { out.append(hasher.hash(kind: .email, normalizedValue: p.email)) }
    if !p.phone.isEmpty { out.append(hasher.hash(kind: .phone, normalizedValue: p.phone)) }
    for a in p.anonymousIDs { out.append(hasher.hash(kind: .anonymousID, normalizedValue: a)) }
    return out
  }

  // MARK: SuppressIdentifiers / UnsuppressIdentifiers

  /// Validates and normalizes a request's identifiers (`identifiers[i].kind`/`.value`)
  /// and its reason.
  private func suppressionTargets(_ req: SuppressRequest) throws(CoreError) -> [(
    PersonRef, SuppressionHash
  )] {
    try Validate.maxBytes(req.reason, Limits.suppressReasonBytes, field: "reason")
    var out: [(PersonRef, SuppressionHash)] = []
    var seen = Set<SuppressionHash>()
    for (i, ident) in req.identifiers.enumerated() {
      let field = ident.kind == .unspecified ? "identifiers[\(i)].kind" : "identifiers[\(i)].value"
      let value = try normalizedIdentifier(kind: ident.kind, value: ident.value, field: field)
      let hash = hasher.hash(kind: ident.kind, normalizedValue: value)
      guard seen.insert(hash).inserted else { continue }
      let ref: PersonRef =
        switch ident.kind {
        case .personID: .personID(value)
        case .email: .email(value)
        case .phone: .phone(value)
        default: .anonymousID(value)
        }
      out.append((ref, hash))
    }
    return out
  }

  /// Suppresses identifiers (normalized first). A person holding one is forgotten; its
  /// other identifiers are not suppressed. `suppressed` counts identifiers newly
  /// suppressed.
  public func suppress(
    _ req: SuppressRequest, actor: String, completion: Completion<SuppressResult>
  ) {
    run(completion) { () throws(CoreError) in try suppress(req, actor: actor) }
  }

  func suppress(_ req: SuppressRequest, actor: String) throws(CoreError) -> SuppressResult {
    let h = try handle(req.workspace)
    let targets = try suppressionTargets(req)
    return try h.identity.withLock {
      (identity: inout IdentityState) throws(CoreError) -> SuppressResult in
      let fresh = targets.filter { !identity.suppressed.contains($0.1) }
      var holders: [PersonKey] = []
      for (ref, _) in targets {
        if let (_, key) = locate(h, identity, ref), !holders.contains(key) { holders.append(key) }
      }
      let result = SuppressResult(
        suppressed: Int32(fresh.count),
        forgottenPersonIDs: holders.filter { !$0.isAnonymous }.map(\.value))
      if fresh.isEmpty && holders.isEmpty { return result }
      let cmd = Command.Suppress(
        workspace: h.id, hashes: targets.map(\.1), forget: holders, reason: req.reason,
        at: now(), actor: actor)
      try withShards(shards(of: holders, h)) { (locked: inout LockedShards) throws(CoreError) in
        _ = try log.append(.suppress(cmd))
        applySuppress(cmd, h, identity: &identity, shards: &locked)
      }
      return result
    }
  }

  /// Removes identifiers from suppression; `suppressed` counts those removed.
  public func unsuppress(
    _ req: SuppressRequest, actor: String, completion: Completion<SuppressResult>
  ) {
    run(completion) { () throws(CoreError) in try unsuppress(req, actor: actor) }
  }

  func unsuppress(_ req: SuppressRequest, actor: String) throws(CoreError) -> SuppressResult {
    let h = try handle(req.workspace)
    let targets = try suppressionTargets(req)
    return try h.identity.withLock {
      (identity: inout IdentityState) throws(CoreError) -> SuppressResult in
      let present = targets.map(\.1).filter { identity.suppressed.contains($0) }
      let result = SuppressResult(suppressed: Int32(present.count), forgottenPersonIDs: [])
      if present.isEmpty { return result }
      let cmd = Command.Unsuppress(workspace: h.id, hashes: present, at: now(), actor: actor)
      _ = try log.append(.unsuppress(cmd))
      applyUnsuppress(cmd, identity: &identity)
      return result
    }
  }

  // MARK: Anonymous-profile TTL

  /// Removes every anonymous profile not merged or changed for `ttlMillis` (SPEC §1),
  /// across workspaces, one command per workspace and shard; answers how many went.
  public func expireAnonymousProfiles(ttlMillis: Int64, completion: Completion<Int>) {
    run(completion) { () throws(CoreError) in try expireAnonymousProfiles(ttlMillis: ttlMillis) }
  }

  func expireAnonymousProfiles(ttlMillis: Int64) throws(CoreError) -> Int {
    let at = now()
    let handles = registry.withLock { Array($0.byID.values) }
    var removed = 0
    for h in handles {
      for s in 0..<shardCount {
        removed += try h.identity.withLock {
          (identity: inout IdentityState) throws(CoreError) -> Int in
          try shards[s].state.withLock { (shard: inout Shard) throws(CoreError) -> Int in
            var ids: [String] = []
            for r in shard.records
            where r.workspace == h.number && r.isAnonymous
              && AnonymousTTL.isExpired(
                updatedAt: PersonCodec.updatedAt(r), now: at, ttlMillis: ttlMillis)
            {
              ids.append(PersonCodec.key(r).value)
            }
            if ids.isEmpty { return 0 }
            let cmd = Command.ExpireAnonymous(workspace: h.id, profiles: ids, at: at)
            _ = try log.append(.expireAnonymous(cmd))
            applyExpire(cmd, h, identity: &identity, shard: &shard, shardIndex: s)
            return ids.count
          }
        }
      }
    }
    return removed
  }
}
