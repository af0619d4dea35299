// The write operations of SPEC §3 that touch one person or the configuration:
// ConfigureWorkspace, Identify, Subscribe/Unsubscribe, UnsubscribeAll/Resubscribe,
// CheckDelivery(+record_send), CheckDeliveryBatch and OverrideForImportantMessage. Each
// validates under its locks against the committed state plus the commands in flight,
// builds one command and commits it (Store+Commit.swift): the call is answered once the
// command is durable and applied. CheckDelivery and CheckDeliveryBatch without
// record_send (or on a channel with no limit) are reads, answered at once.

import SubcenterCore
import Synchronization

extension SubscriptionStore {
  // MARK: ConfigureWorkspace

  /// Replaces (or, with `mayCreate` — a `*` admin credential — creates) a workspace's
  /// configuration. Creating without `mayCreate` is `permissionDenied`.
  public func configureWorkspace(
    _ config: WorkspaceConfig, actor: String, mayCreate: Bool,
    completion: @escaping Completion<WorkspaceConfig>
  ) {
    perform(completion) { (deps: inout Deps) throws(CoreError) -> Step<WorkspaceConfig> in
      try config.validate()
      return try registry.withLock {
        (reg: inout Registry) throws(CoreError) -> Step<WorkspaceConfig> in
        let pending = reg.pending[config.workspace]
        if let pending { deps.add(pending.last) }
        let previous = pending?.value ?? reg.handle(config.workspace)?.current
        guard previous != nil || mayCreate else {
          throw .permissionDenied("only a credential for every workspace may create one")
        }
        guard previous != nil || Int(reg.nextNumber) + reg.pendingCreations < Int(UInt16.max)
        else {
          throw .resourceExhausted("too many workspaces")
        }
        let model = try Workspace(config, previous: previous)
        let cmd = Command.ConfigureWorkspace(config: config, at: now(), actor: actor)
        var r = Reservations()
        r.workspace = (config.workspace, model)
        let c = try commit(
          .configureWorkspace(cmd), scope: LockScope(registry: true), reservations: r,
          completion: completion
        ) { _, _ in .success(model.config) }
        r.register(registry: &reg, by: c)
        return .committed
      }
    }
  }

  // MARK: Identify

  /// Creates or updates a person or an anonymous profile (SPEC §3 Identify).
  public func identify(
    _ req: IdentifyRequest, actor: String, completion: @escaping Completion<Profile>
  ) {
    perform(completion) { (deps: inout Deps) throws(CoreError) -> Step<Profile> in
      try identify(req, actor: actor, &deps, completion)
    }
  }

  private func identify(
    _ req: IdentifyRequest, actor: String, _ deps: inout Deps,
    _ completion: @escaping Completion<Profile>
  ) throws(CoreError) -> Step<Profile> {
    let h = try handle(req.workspace)
    if !req.personID.isEmpty { try Validate.personID(req.personID) }
    let email = req.email.isEmpty ? nil : try Validate.email(req.email)
    if !req.phone.isEmpty { try Validate.phone(req.phone) }
    if !req.anonymousID.isEmpty { try Validate.anonymousID(req.anonymousID) }
    let phone = req.phone.isEmpty ? nil : req.phone
    let anonymousID = req.anonymousID.isEmpty ? nil : req.anonymousID

    guard !req.personID.isEmpty else {
      if email != nil || phone != nil {
        throw .invalidArgument("person_id", "an email or phone needs a person_id")
      }
      guard let anonymousID else {
        throw .invalidArgument("person_id", "no identifier given")
      }
      return try identifyAnonymous(h, anonymousID, actor: actor, &deps, completion)
    }
    let personID = req.personID
    let key = PersonKey.person(personID)
    return try h.identity.withLock {
      (identity: inout IdentityState) throws(CoreError) -> Step<Profile> in
      // Everything below is as the commands in flight will leave it.
      let view = effectiveView(h, identity, key, &deps)
      func holder(_ kind: IdentifierKind, _ value: String) -> PersonKey? {
        effectiveHolder(h, identity, kind, value, &deps)
      }
      func suppressed(_ kind: IdentifierKind, _ value: String) -> Bool {
        effectivelySuppressed(identity, kind, value, &deps)
      }

      // A conflict is reported after the suppression checks: a suppressed identifier
      // refuses the call whatever else it names.
      var conflict: CoreError?
      var newEmail: String?
      if let email {
        if let holder = holder(.email, email) {
          if holder != key { conflict = .alreadyExists("email", "belongs to another person") }
        } else {
          newEmail = email
        }
      }
      var newPhone: String?
      if let phone {
        if let holder = holder(.phone, phone) {
          if holder != key, conflict == nil {
            conflict = .alreadyExists("phone", "belongs to another person")
          }
        } else {
          newPhone = phone
        }
      }
      var attach: String?
      var merges = false
      if let anonymousID {
        if let holder = holder(.anonymousID, anonymousID) {
          if holder.isAnonymous {
            attach = anonymousID
            merges = true
          } else if holder != key, conflict == nil {
            conflict = .alreadyExists("anonymous_id", "belongs to another person")
          }
        } else {
          attach = anonymousID
        }
      }
      // Only identifiers nobody holds can be suppressed (see Suppression.swift).
      if view == nil, suppressed(.personID, personID) {
        throw .failedPrecondition("person_id", "this identifier is suppressed")
      }
      if let newEmail, suppressed(.email, newEmail) {
        throw .failedPrecondition("email", "this identifier is suppressed")
      }
      if let newPhone, suppressed(.phone, newPhone) {
        throw .failedPrecondition("phone", "this identifier is suppressed")
      }
      if let attach, !merges, suppressed(.anonymousID, attach) {
        throw .failedPrecondition("anonymous_id", "this identifier is suppressed")
      }
      if let conflict { throw conflict }
      if merges, view != nil, let anonymousID,
        entryCountBound(h, key, &deps) + entryCountBound(h, .anonymous(anonymousID), &deps)
          > Int(UInt16.max)
      {
        throw .resourceExhausted("a person holds at most \(UInt16.max) preference entries")
      }

      if view != nil, newEmail == nil, newPhone == nil, attach == nil {
        // Nothing new: the profile, once what it depends on is durable.
        if deps.isEmpty, let p = committedProfile(h, key) { return .value(p) }
        let workspace = h.id
        return .read { [self] in
          Result { () throws(CoreError) in
            try profile(workspace: workspace, person: .personID(personID))
          }
        }
      }
      let cmd = Command.Identify(
        workspace: h.id, person: key, creates: view == nil, email: newEmail,
        phone: newPhone, anonymousID: attach, mergesProfile: merges, at: now(), actor: actor)
      var r = Reservations()
      var after = view ?? PersonView()
      if let newEmail {
        if !after.email.isEmpty { r.holders.append((IdentifierKey(.email, after.email), nil)) }
        r.holders.append((IdentifierKey(.email, newEmail), key))
        after.email = newEmail
      }
      if let newPhone {
        if !after.phone.isEmpty { r.holders.append((IdentifierKey(.phone, after.phone), nil)) }
        r.holders.append((IdentifierKey(.phone, newPhone), key))
        after.phone = newPhone
      }
      if let attach {
        r.holders.append((IdentifierKey(.anonymousID, attach), key))
        if !after.anonymousIDs.contains(where: { sameBytes($0, attach) }) {
          after.anonymousIDs.append(attach)
        }
        if merges { r.persons.append((.anonymous(attach), nil)) }
      }
      r.persons.append((key, after))
      let scope = self.scope(of: .identify(cmd), h)
      return try withShards(scope.shards) {
        (shards: inout LockedShards) throws(CoreError) -> Step<Profile> in
        if merges, let attach, !holdRemovals(of: [.anonymous(attach)], h, &shards, into: &r) {
          return .again { [self] in identify(req, actor: actor, completion: $0) }
        }
        let c = try commit(
          .identify(cmd), scope: scope, reservations: r, completion: completion
        ) { _, applied in .success(applied.person!.profile) }
        r.register(identity: &identity, by: c)
        r.register(shards: &shards, by: c)
        return .committed
      }
    }
  }

  private func identifyAnonymous(
    _ h: WorkspaceHandle, _ anonymousID: String, actor: String, _ deps: inout Deps,
    _ completion: @escaping Completion<Profile>
  ) throws(CoreError) -> Step<Profile> {
    try h.identity.withLock { (identity: inout IdentityState) throws(CoreError) -> Step<Profile> in
      if let holder = effectiveHolder(h, identity, .anonymousID, anonymousID, &deps) {
        // The profile, or the person holding the id, once that is durable.
        if deps.isEmpty, let p = committedProfile(h, holder) { return .value(p) }
        let workspace = h.id
        return .read { [self] in
          Result { () throws(CoreError) in
            try profile(workspace: workspace, person: .anonymousID(anonymousID))
          }
        }
      }
      if effectivelySuppressed(identity, .anonymousID, anonymousID, &deps) {
        throw .failedPrecondition("anonymous_id", "this identifier is suppressed")
      }
      let key = PersonKey.anonymous(anonymousID)
      let cmd = Command.Identify(
        workspace: h.id, person: key, creates: true, at: now(), actor: actor)
      var r = Reservations()
      r.holders.append((IdentifierKey(.anonymousID, anonymousID), key))
      r.persons.append((key, PersonView(anonymousIDs: [anonymousID])))
      let scope = self.scope(of: .identify(cmd), h)
      return try withShards(scope.shards) {
        (_: inout LockedShards) throws(CoreError) -> Step<Profile> in
        let c = try commit(
          .identify(cmd), scope: scope, reservations: r, completion: completion
        ) { _, applied in .success(applied.person!.profile) }
        r.register(identity: &identity, by: c)
        return .committed
      }
    }
  }

  // MARK: Subscribe / Unsubscribe

  /// Sets one explicit entry: `state` is `.subscribed` (Subscribe) or `.unsubscribed`
  /// (Unsubscribe). Never creates a person.
  public func setPreference(
    _ req: PreferenceRequest, state: PreferenceState, actor: String,
    completion: @escaping Completion<Preferences>
  ) {
    precondition(state != .unspecified, "a preference is SUBSCRIBED or UNSUBSCRIBED")
    perform(completion) { (deps: inout Deps) throws(CoreError) -> Step<Preferences> in
      let h = try handle(req.workspace)
      let ref = try PersonRef.validated(req.person, field: "person")
      let model = h.current
      guard !req.channel.isEmpty || !req.topic.isEmpty else {
        throw .invalidArgument("channel", "a channel or a topic must be given")
      }
      let channel = req.channel.isEmpty ? 0 : try model.configuredChannel(req.channel)
      let topic = try model.configuredTopic(req.topic)
      try Validate.maxBytes(req.source, Limits.sourceBytes, field: "source")
      try Validate.maxBytes(req.noticeVersion, Limits.noticeVersionBytes, field: "notice_version")
      let at = now()
      // The fields the closure needs, not the whole request (which it would copy).
      let (channelName, topicName) = (req.channel, req.topic)
      let (source, noticeVersion) = (req.source, req.noticeVersion)
      let step = try withPersonForWrite(h, ref, &deps) {
        (shard, s, slot, deps) throws(CoreError) -> Step<Preferences> in
        // Read in place: the record or pending entry bound to a `let` is a copy (retains).
        let entries = PersonCodec.entryCount(shard.records[Int(slot)])
        if entries + (shard.pending.read(slot) { $0.writes } ?? 0) >= Int(UInt16.max),
          !PersonCodec.hasEntry(shard.records[Int(slot)], channel: channel, topic: topic)
        {
          if let pending = shard.pending[slot] { deps.add(pending.last) }
          throw .resourceExhausted("a person holds at most \(UInt16.max) preference entries")
        }
        let cmd = Command.SetPreference(
          workspace: h.id, person: PersonCodec.key(shard.records[Int(slot)], foundBy: ref),
          channel: channelName,
          topic: topicName, state: state, source: source,
          noticeVersion: noticeVersion, at: at, actor: actor)
        let hold = SlotReservation(shard: s, slot: slot)
        let c = try commit(
          .setPreference(cmd), scope: LockScope(workspace: h, shards: oneShard[s]),
          reservations: Reservations(hold),
          answer: PreferencesAnswer(model: model, completion: completion))
        Reservations.register(hold, shard: &shard, by: c)
        return .committed
      }
      if let step { return step }
      guard deps.awaitingPersonChanges == 0 else {
        return .again { [self] in
          setPreference(req, state: state, actor: actor, completion: $0)
        }
      }
      throw .notFound("person not found")
    }
  }

  // MARK: UnsubscribeAll / Resubscribe

  /// Sets (`unsubscribed`: UnsubscribeAll) or clears (Resubscribe) the global flag;
  /// channel and topic entries stay.
  public func setGlobal(
    _ req: GlobalRequest, unsubscribed: Bool, actor: String,
    completion: @escaping Completion<Preferences>
  ) {
    perform(completion) { (deps: inout Deps) throws(CoreError) -> Step<Preferences> in
      let h = try handle(req.workspace)
      let ref = try PersonRef.validated(req.person, field: "person")
      try Validate.maxBytes(req.source, Limits.sourceBytes, field: "source")
      let model = h.current
      let at = now()
      let step = try withPersonForWrite(h, ref, &deps) {
        (shard, s, slot, _) throws(CoreError) -> Step<Preferences> in
        let cmd = Command.SetGlobal(
          workspace: h.id, person: PersonCodec.key(shard.records[Int(slot)], foundBy: ref),
          unsubscribed: unsubscribed, source: req.source, at: at, actor: actor)
        let hold = SlotReservation(shard: s, slot: slot)
        let c = try commit(
          .setGlobal(cmd), scope: LockScope(workspace: h, shards: oneShard[s]),
          reservations: Reservations(hold),
          answer: PreferencesAnswer(model: model, completion: completion))
        Reservations.register(hold, shard: &shard, by: c)
        return .committed
      }
      if let step { return step }
      guard deps.awaitingPersonChanges == 0 else {
        return .again { [self] in
          setGlobal(req, unsubscribed: unsubscribed, actor: actor, completion: $0)
        }
      }
      throw .notFound("person not found")
    }
  }

  // MARK: CheckDelivery

  /// The decision of SPEC §2 for one person; with `recordSend` an allowed decision counts
  /// one send toward the channel's limit (sends count only toward a configured limit),
  /// and the call is answered once that count is durable.
  public func checkDelivery(_ req: DeliveryRequest, completion: @escaping Completion<Decision>) {
    perform(completion) { (deps: inout Deps) throws(CoreError) -> Step<Decision> in
      let h = try handle(req.workspace)
      let ref = try PersonRef.validated(req.person, field: "person")
      let model = h.current
      let channel = try model.configuredChannel(req.channel)
      let topic = try model.configuredTopic(req.topic)
      let target = model.target(channel: channel, topic: topic)
      let decision = try check(
        h, ref, target: target, channelName: req.channel, recordSend: req.recordSend,
        at: now(), &deps)
      guard deps.awaitingPersonChanges == 0 else {
        return .again { [self] in checkDelivery(req, completion: $0) }
      }
      return .value(decision)
    }
  }

  /// Decides for one validated ref. With `recordSend` on a limited channel it decides
  /// against the committed sends plus those in flight, and an allowed decision commits
  /// its send: the commit (and the in-flight sends the decision counted) join `deps`.
  func check(
    _ h: WorkspaceHandle, _ ref: PersonRef, target: DeliveryTarget, channelName: String,
    recordSend: Bool, at: Int64, _ deps: inout Deps
  ) throws(CoreError) -> Decision {
    let found: Decision?
    if recordSend, target.limit != nil {
      found = try withPersonForWrite(h, ref, &deps) {
        (shard, s, slot, deps) throws(CoreError) -> Decision in
        let pending = shard.pending[slot]
        let inFlight = pending?.sends(target.channel) ?? 0
        if inFlight > 0 { deps.add(pending!.last) }
        let outcome = PersonCodec.withSubject(shard.records[Int(slot)], pendingSends: inFlight) {
          decideDelivery(target: target, person: $0, suppressed: false, isOverride: false, now: at)
        }
        let key = PersonCodec.key(shard.records[Int(slot)])
        if outcome.countsSend {
          let cmd = Command.RecordSends(
            workspace: h.id, channel: channelName, persons: [key], at: at)
          var r = Reservations()
          r.slots.append(SlotReservation(shard: s, slot: slot, channel: target.channel, sends: 1))
          let c = try commitQuietly(
            .recordSends(cmd), scope: LockScope(workspace: h, shards: oneShard[s]), reservations: r)
          r.register(shard: &shard, index: s, by: c)
          deps.add(c)
        }
        return Decision(allowed: outcome.allowed, reason: outcome.reason, personID: key.personID)
      }
    } else {
      found = try withPerson(h, ref) { shard, slot in
        let outcome = PersonCodec.withSubject(shard.records[Int(slot)]) {
          decideDelivery(target: target, person: $0, suppressed: false, isOverride: false, now: at)
        }
        let key = PersonCodec.key(shard.records[Int(slot)])
        return Decision(allowed: outcome.allowed, reason: outcome.reason, personID: key.personID)
      }
    }
    if let found { return found }
    return Decision(
      allowed: false, reason: isSuppressed(h, ref) ? .suppressed : .unknownPerson, personID: "")
  }

  // MARK: CheckDeliveryBatch

  /// CheckDelivery for up to `Limits.batchPersons` persons (more is `invalidArgument`
  /// naming `persons`), answered in request order. Persons named by email, phone or
  /// anonymous id are resolved first under one identity lock; then each shard's lock is
  /// taken once for all persons in it. With `recordSend`, each shard's counted sends are
  /// one command, and the call is answered once all of them are durable.
  public func checkDeliveryBatch(
    _ req: DeliveryBatchRequest, completion: @escaping Completion<[Decision]>
  ) {
    perform(completion) { (deps: inout Deps) throws(CoreError) -> Step<[Decision]> in
      let (decisions, again) = try checkDeliveryBatch(req, &deps)
      guard !again.isEmpty else { return .value(decisions) }
      // Counted sends for persons being removed (or merged into another): those again,
      // once the removals are applied.
      var rest = req
      rest.persons = again.map { req.persons[$0] }
      return .again { [self, rest] completion in
        checkDeliveryBatch(rest) { result in
          completion(
            result.map { redone in
              var all = decisions
              for (k, i) in again.enumerated() { all[i] = redone[k] }
              return all
            })
        }
      }
    }
  }

  /// The decisions, and the indices of the persons to decide again once `deps` are
  /// applied (`Deps.awaitingPersonChanges`).
  private func checkDeliveryBatch(_ req: DeliveryBatchRequest, _ deps: inout Deps)
    throws(CoreError) -> ([Decision], again: [Int])
  {
    let h = try handle(req.workspace)
    guard req.persons.count <= Limits.batchPersons else {
      throw .invalidArgument("persons", "at most \(Limits.batchPersons) persons")
    }
    let model = h.current
    let channel = try model.configuredChannel(req.channel)
    let topic = try model.configuredTopic(req.topic)
    let target = model.target(channel: channel, topic: topic)
    let n = req.persons.count
    var refs: [PersonRef] = []
    refs.reserveCapacity(n)
    for (i, r) in req.persons.enumerated() {
      do {
        refs.append(try PersonRef.validated(r, field: "persons"))
      } catch {
        let sub = error.field.map { String($0.dropFirst("persons".count)) } ?? ""
        throw CoreError(error.kind, field: "persons[\(i)]\(sub)", error.reason)
      }
    }
    let at = now()
    let counting = req.recordSend && target.limit != nil

    // Resolve: a person id hashes to its shard; other refs go through the index.
    var hashes = [UInt64](repeating: 0, count: n)
    var shardOf = [Int](repeating: -1, count: n)
    var candidate = [UInt32](repeating: 0, count: n)
    var indexed: [Int] = []
    for i in 0..<n {
      if case .personID(let id) = refs[i] {
        let hash = KeyHash.person(h.number, .person(id))
        hashes[i] = hash
        shardOf[i] = shardIndex(hash)
      } else {
        hashes[i] = KeyHash.identifier(refs[i].kind, refs[i].value)
        indexed.append(i)
      }
    }
    var slow: [Int] = []
    var waitsFor: [PendingCommit] = []
    if !indexed.isEmpty || counting {
      h.identity.withLock { identity in
        // Counted sends for persons whose identity changes in flight (created, merged,
        // forgotten, an identifier moving): the whole batch waits for those changes, so
        // that it is decided entirely after them, not partly before.
        if counting && !identity.pending.isEmpty {
          for r in refs {
            let claim =
              if case .personID(let id) = r {
                identity.pending.persons[.person(id)]?.last
              } else {
                identity.pending.holders[IdentifierKey(r.kind, r.value)]?.last
              }
            if let claim { waitsFor.append(claim) }
          }
          if !waitsFor.isEmpty { return }
        }
        for i in indexed {
          let values = identity.index.values(hashes[i])
          if values.count == 1 {
            let loc = Location(packed: values[0])
            shardOf[i] = loc.shard
            candidate[i] = loc.slot
          } else if values.count > 1 {
            slow.append(i)
          }
        }
      }
    }
    if !waitsFor.isEmpty {
      for c in waitsFor { deps.add(c) }
      let undecided = Decision(allowed: false, reason: .unknownPerson, personID: "")
      return ([Decision](repeating: undecided, count: n), again: Array(0..<n))
    }

    // Group by shard (counting sort), then decide each shard's persons under one lock.
    var starts = [Int](repeating: 0, count: shardCount + 1)
    for s in shardOf where s >= 0 { starts[s + 1] += 1 }
    for s in 0..<shardCount { starts[s + 1] += starts[s] }
    var fill = starts
    var order = [Int](repeating: 0, count: starts[shardCount])
    for i in 0..<n where shardOf[i] >= 0 {
      order[fill[shardOf[i]]] = i
      fill[shardOf[i]] += 1
    }

    var decisions = [Decision](
      repeating: Decision(allowed: false, reason: .unknownPerson, personID: ""), count: n)
    var missing: [Int] = []
    var again: [Int] = []
    for s in 0..<shardCount where starts[s] < starts[s + 1] {
      try shards[s].withLock { (shard: inout Shard) throws(CoreError) in
        var sendSlots: [UInt32] = []
        var sendKeys: [PersonKey] = []
        var pending: [UInt32: Int] = [:]
        let inFlight = counting && !shard.pending.isEmpty
        // Two passes over the shard's persons before deciding, so that the cache misses of
        // different persons overlap: first the slot table, then the records and blobs.
        var touched = 0
        for k in starts[s]..<starts[s + 1] {
          let i = order[k]
          if case .personID = refs[i] { candidate[i] = shard.keys.firstValue(hashes[i]) ?? .max }
        }
        for k in starts[s]..<starts[s + 1] {
          let c = candidate[order[k]]
          if Int(c) < shard.records.count && !shard.records[Int(c)].isFree {
            touched &+= Int(shard.records[Int(c)].blob[6])
          }
        }
        if touched == -1 { preconditionFailure("unreachable: keeps the prefetch pass") }
        for k in starts[s]..<starts[s + 1] {
          let i = order[k]
          let slot: UInt32
          var personID: String
          var key: PersonKey?
          if case .personID(let id) = refs[i] {
            let c = candidate[i]
            if Int(c) < shard.records.count,
              PersonCodec.matches(shard.records[Int(c)], workspace: h.number, key: .person(id))
            {
              slot = c
            } else if let found = shard.find(
              workspace: h.number, key: .person(id), hash: hashes[i])
            {
              slot = found
            } else {
              missing.append(i)
              continue
            }
            personID = id
            key = .person(id)
          } else {
            guard
              shard.holds(
                slot: candidate[i], workspace: h.number, kind: refs[i].kind, value: refs[i].value)
            else {
              slow.append(i)
              continue
            }
            slot = candidate[i]
            personID = ""
          }
          var extra = counting ? pending[slot] ?? 0 : 0
          if inFlight, let p = shard.pending[slot] {
            if p.removed {
              // Being removed (forgotten, merged into a person) by a command registered
              // after the look-up above: this person is decided again after it.
              deps.add(p.last)
              again.append(i)
              continue
            }
            let sends = p.sends(target.channel)
            if sends > 0 {
              extra += sends
              deps.add(p.last)
            }
          }
          let outcome = PersonCodec.withSubject(shard.records[Int(slot)], pendingSends: extra) {
            decideDelivery(
              target: target, person: $0, suppressed: false, isOverride: false, now: at)
          }
          if personID.isEmpty && !shard.records[Int(slot)].isAnonymous {
            personID = PersonCodec.key(shard.records[Int(slot)]).value
          }
          decisions[i] = Decision(
            allowed: outcome.allowed, reason: outcome.reason, personID: personID)
          if counting && outcome.countsSend {
            pending[slot, default: 0] += 1
            sendSlots.append(slot)
            sendKeys.append(key ?? PersonCodec.key(shard.records[Int(slot)]))
          }
        }
        if !sendSlots.isEmpty {
          let cmd = Command.RecordSends(
            workspace: h.id, channel: req.channel, persons: sendKeys, at: at)
          var r = Reservations()
          r.slots = SlotReservations(
            sendSlots.lazy.map {
              SlotReservation(shard: s, slot: $0, channel: target.channel, sends: 1)
            })
          let c = try commitQuietly(
            .recordSends(cmd), scope: LockScope(workspace: h, shards: oneShard[s]), reservations: r)
          r.register(shard: &shard, index: s, by: c)
          deps.add(c)
        }
      }
    }

    // Refs whose index entry was ambiguous, moved or is changing: the one-person path.
    for i in slow {
      let merges = deps.awaitingPersonChanges
      decisions[i] = try check(
        h, refs[i], target: target, channelName: req.channel, recordSend: req.recordSend,
        at: at, &deps)
      if deps.awaitingPersonChanges > merges { again.append(i) }
    }
    // Refs that name nobody: suppressed or unknown (hashing only if anything is suppressed).
    let ambiguous = Set(slow)
    for i in indexed where shardOf[i] < 0 && !ambiguous.contains(i) { missing.append(i) }
    if !missing.isEmpty && h.identity.withLock({ !$0.suppressed.isEmpty }) {
      let suppressedHashes = missing.map {
        hasher.hash(kind: refs[$0].kind, normalizedValue: refs[$0].value)
      }
      h.identity.withLock { identity in
        for (k, i) in missing.enumerated() where identity.suppressed.contains(suppressedHashes[k]) {
          decisions[i] = Decision(allowed: false, reason: .suppressed, personID: "")
        }
      }
    }
    return (decisions, again)
  }

  // MARK: OverrideForImportantMessage

  /// An important message that may pass the person's choices (SPEC §2 rule 3). Every call
  /// on a known person, allowed or not, is written to its history (and answered once that
  /// is durable); an unknown or suppressed person gets the decision and no history.
  public func overrideForImportantMessage(
    _ req: OverrideRequest, actor: String, completion: @escaping Completion<Decision>
  ) {
    perform(completion) { (deps: inout Deps) throws(CoreError) -> Step<Decision> in
      let h = try handle(req.workspace)
      let ref = try PersonRef.validated(req.person, field: "person")
      let model = h.current
      let channel = try model.configuredChannel(req.channel)
      let topic = try model.configuredTopic(req.topic)
      try Validate.messageID(req.messageID)
      try Validate.requiredBytes(
        req.justification, Limits.justificationBytes, field: "justification")
      let target = model.target(channel: channel, topic: topic)
      let at = now()
      let step = try withPersonForWrite(h, ref, &deps) {
        (shard, s, slot, _) throws(CoreError) -> Step<Decision> in
        let outcome = PersonCodec.withSubject(shard.records[Int(slot)]) {
          decideDelivery(target: target, person: $0, suppressed: false, isOverride: true, now: at)
        }
        let key = PersonCodec.key(shard.records[Int(slot)])
        let cmd = Command.Override(
          workspace: h.id, person: key, channel: req.channel, topic: req.topic,
          allowed: outcome.allowed, reason: outcome.reason,
          detail: HistoryDetail.override(
            messageID: req.messageID, justification: req.justification, outcome: outcome,
            overridesAllowed: target.overridesAllowed),
          at: at, actor: actor)
        let decision = Decision(
          allowed: outcome.allowed, reason: outcome.reason, personID: key.personID)
        var r = Reservations()
        r.slots.append(SlotReservation(shard: s, slot: slot))
        let c = try commit(
          .override(cmd), scope: LockScope(workspace: h, shards: oneShard[s]), reservations: r,
          completion: completion
        ) { _, _ in .success(decision) }
        r.register(shard: &shard, index: s, by: c)
        return .committed
      }
      if let step { return step }
      guard deps.awaitingPersonChanges == 0 else {
        return .again { [self] in overrideForImportantMessage(req, actor: actor, completion: $0) }
      }
      return .value(
        Decision(
          allowed: false, reason: isSuppressed(h, ref) ? .suppressed : .unknownPerson,
          personID: ""))
    }
  }
}

/// The answer of a write to one person's preferences (`preferencesAnswer`), with the
/// call's completion. Three words: the commit keeps it inline, with no allocation.
private struct PreferencesAnswer: CommitAnswer {
  let model: Workspace
  let completion: Completion<Preferences>

  func answer(_ command: Command, _ locked: inout Locked, _ applied: Applied)
    -> Result<Preferences, CoreError>
  {
    // The person's key as the command has it (the record's own bytes), and its time.
    switch command {
    case .setPreference(let c): preferencesAnswer(model, &locked, applied, c.person, at: c.at)
    case .setGlobal(let c): preferencesAnswer(model, &locked, applied, c.person, at: c.at)
    default: preconditionFailure("a preference answer to another command")
    }
  }

  func complete(_ result: Result<Preferences, CoreError>) { completion(result) }
}

/// The answer of a preference write: the person as the write left it.
/// `model` is the configuration the write was validated against (a ConfigureWorkspace
/// applied meanwhile is ordered after the write, so the answer does not show it).
private func preferencesAnswer(
  _ model: Workspace, _ locked: inout Locked, _ applied: Applied, _ key: PersonKey, at: Int64
) -> Result<Preferences, CoreError> {
  guard applied.found, let (s, slot) = applied.location else {
    return .failure(.notFound("person not found"))
  }
  var answer: Preferences?
  locked.shards.with(s) { shard in
    answer = PersonCodec.preferences(
      shard.records[Int(slot)], model: model, strings: shard.strings, now: at, key: key)
  }
  return .success(answer!)
}
