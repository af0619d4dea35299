// The write operations of SPEC §3 that touch one person or the configuration:
// ConfigureWorkspace, Identify, Subscribe/Unsubscribe, UnsubscribeAll/Resubscribe,
// CheckDelivery(+record_send), CheckDeliveryBatch and OverrideForImportantMessage. Each
// validates, builds one command, logs it and applies it under the same locks.

import SubcenterCore
import Synchronization

extension SubscriptionStore {
  // MARK: ConfigureWorkspace

  /// Replaces (or, with `mayCreate` — a `*` admin credential — creates) a workspace's
  /// configuration. Creating without `mayCreate` is `permissionDenied`.
  public func configureWorkspace(
    _ config: WorkspaceConfig, actor: String, mayCreate: Bool,
    completion: Completion<WorkspaceConfig>
  ) {
    run(completion) { () throws(CoreError) in
      try configure(config, actor: actor, mayCreate: mayCreate)
    }
  }

  func configure(_ config: WorkspaceConfig, actor: String, mayCreate: Bool) throws(CoreError)
    -> WorkspaceConfig
  {
    try config.validate()
    return try registry.withLock { (reg: inout Registry) throws(CoreError) -> WorkspaceConfig in
      let existing = reg.byID[config.workspace]
      guard existing != nil || mayCreate else {
        throw .permissionDenied("only a credential for every workspace may create one")
      }
      guard existing != nil || reg.nextNumber < UInt16.max else {
        throw .resourceExhausted("too many workspaces")
      }
      let model = try Workspace(config, previous: existing?.current)
      let cmd = Command.ConfigureWorkspace(config: config, at: now(), actor: actor)
      _ = try log.append(.configureWorkspace(cmd))
      applyConfigure(model, registry: &reg)
      return model.config
    }
  }

  // MARK: Identify

  /// Creates or updates a person or an anonymous profile (SPEC §3 Identify).
  public func identify(_ req: IdentifyRequest, actor: String, completion: Completion<Profile>) {
    run(completion) { () throws(CoreError) in try identify(req, actor: actor) }
  }

  func identify(_ req: IdentifyRequest, actor: String) throws(CoreError) -> Profile {
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
      return try identifyAnonymous(h, anonymousID, actor: actor)
    }
    let personID = req.personID
    return try h.identity.withLock { (identity: inout IdentityState) throws(CoreError) -> Profile in
      let key = PersonKey.person(personID)
      let existing = locate(h, identity, .personID(personID))?.0

      var newEmail: String?
      if let email {
        if let (holder, _) = locate(h, identity, .email(email)) {
          guard holder == existing else {
            throw .alreadyExists("email", "belongs to another person")
          }
        } else {
          newEmail = email
        }
      }
      var newPhone: String?
      if let phone {
        if let (holder, _) = locate(h, identity, .phone(phone)) {
          guard holder == existing else {
            throw .alreadyExists("phone", "belongs to another person")
          }
        } else {
          newPhone = phone
        }
      }
      var attach: String?
      var merges = false
      if let anonymousID {
        if let (holder, holderKey) = locate(h, identity, .anonymousID(anonymousID)) {
          if holderKey.isAnonymous {
            attach = anonymousID
            merges = true
          } else if holder != existing {
            throw .alreadyExists("anonymous_id", "belongs to another person")
          }
        } else {
          attach = anonymousID
        }
      }
      // Only identifiers nobody holds can be suppressed (see Suppression.swift).
      if existing == nil, isSuppressed(identity, .personID, personID) {
        throw .failedPrecondition("person_id", "this identifier is suppressed")
      }
      if let newEmail, isSuppressed(identity, .email, newEmail) {
        throw .failedPrecondition("email", "this identifier is suppressed")
      }
      if let newPhone, isSuppressed(identity, .phone, newPhone) {
        throw .failedPrecondition("phone", "this identifier is suppressed")
      }
      if let attach, !merges, isSuppressed(identity, .anonymousID, attach) {
        throw .failedPrecondition("anonymous_id", "this identifier is suppressed")
      }
      if merges, let existing, let anonymousID,
        entryCount(existing) + entryCount(h, .anonymous(anonymousID)) > Int(UInt16.max)
      {
        throw .resourceExhausted("a person holds at most \(UInt16.max) preference entries")
      }

      if let existing, newEmail == nil, newPhone == nil, attach == nil {
        return shards[existing.shard].state.withLock { shard in
          PersonCodec.decode(
            shard.records[Int(existing.slot)], history: false, strings: shard.strings
          ).person.profile
        }
      }
      let cmd = Command.Identify(
        workspace: h.id, person: key, creates: existing == nil, email: newEmail,
        phone: newPhone, anonymousID: attach, mergesProfile: merges, at: now(), actor: actor)
      return try withShards(shards(of: cmd, h)) {
        (locked: inout LockedShards) throws(CoreError) -> Profile in
        _ = try log.append(.identify(cmd))
        return applyIdentify(cmd, h, identity: &identity, shards: &locked).profile
      }
    }
  }

  private func entryCount(_ loc: Location) -> Int {
    shards[loc.shard].state.withLock { PersonCodec.entryCount($0.records[Int(loc.slot)]) }
  }

  private func entryCount(_ h: WorkspaceHandle, _ key: PersonKey) -> Int {
    let hash = KeyHash.person(h.number, key)
    return shards[shardIndex(hash)].state.withLock { shard in
      shard.find(workspace: h.number, key: key, hash: hash).map {
        PersonCodec.entryCount(shard.records[Int($0)])
      } ?? 0
    }
  }

  private func identifyAnonymous(_ h: WorkspaceHandle, _ anonymousID: String, actor: String)
    throws(CoreError) -> Profile
  {
    try h.identity.withLock { (identity: inout IdentityState) throws(CoreError) -> Profile in
      if let (loc, _) = locate(h, identity, .anonymousID(anonymousID)) {
        return shards[loc.shard].state.withLock { shard in
          PersonCodec.decode(shard.records[Int(loc.slot)], history: false, strings: shard.strings)
            .person.profile
        }
      }
      if isSuppressed(identity, .anonymousID, anonymousID) {
        throw .failedPrecondition("anonymous_id", "this identifier is suppressed")
      }
      let cmd = Command.Identify(
        workspace: h.id, person: .anonymous(anonymousID), creates: true, at: now(), actor: actor)
      return try withShards(shards(of: cmd, h)) {
        (locked: inout LockedShards) throws(CoreError) -> Profile in
        _ = try log.append(.identify(cmd))
        return applyIdentify(cmd, h, identity: &identity, shards: &locked).profile
      }
    }
  }

  // MARK: Subscribe / Unsubscribe

  /// Sets one explicit entry: `state` is `.subscribed` (Subscribe) or `.unsubscribed`
  /// (Unsubscribe). Never creates a person.
  public func setPreference(
    _ req: PreferenceRequest, state: PreferenceState, actor: String,
    completion: Completion<Preferences>
  ) {
    run(completion) { () throws(CoreError) in try setPreference(req, state: state, actor: actor) }
  }

  func setPreference(_ req: PreferenceRequest, state: PreferenceState, actor: String)
    throws(CoreError) -> Preferences
  {
    precondition(state != .unspecified, "a preference is SUBSCRIBED or UNSUBSCRIBED")
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
    let prefs = try withPerson(h, ref) { (shard, slot) throws(CoreError) -> Preferences in
      let record = shard.records[Int(slot)]
      if PersonCodec.entryCount(record) >= Int(UInt16.max),
        !PersonCodec.hasEntry(record, channel: channel, topic: topic)
      {
        throw .resourceExhausted("a person holds at most \(UInt16.max) preference entries")
      }
      let cmd = Command.SetPreference(
        workspace: h.id, person: PersonCodec.key(shard.records[Int(slot)]),
        channel: req.channel, topic: req.topic, state: state, source: req.source,
        noticeVersion: req.noticeVersion, at: at, actor: actor)
      _ = try log.append(.setPreference(cmd))
      let p = applySetPreference(cmd, channel: channel, topic: topic, shard: &shard, slot: slot)
      return h.current.preferences(
        personID: p.key.personID, global: p.global, entries: p.entries, subject: p, now: at)
    }
    guard let prefs else { throw .notFound("person not found") }
    return prefs
  }

  // MARK: UnsubscribeAll / Resubscribe

  /// Sets (`unsubscribed`: UnsubscribeAll) or clears (Resubscribe) the global flag;
  /// channel and topic entries stay.
  public func setGlobal(
    _ req: GlobalRequest, unsubscribed: Bool, actor: String, completion: Completion<Preferences>
  ) {
    run(completion) { () throws(CoreError) in
      try setGlobal(req, unsubscribed: unsubscribed, actor: actor)
    }
  }

  func setGlobal(_ req: GlobalRequest, unsubscribed: Bool, actor: String) throws(CoreError)
    -> Preferences
  {
    let h = try handle(req.workspace)
    let ref = try PersonRef.validated(req.person, field: "person")
    try Validate.maxBytes(req.source, Limits.sourceBytes, field: "source")
    let at = now()
    let prefs = try withPerson(h, ref) { (shard, slot) throws(CoreError) -> Preferences in
      let cmd = Command.SetGlobal(
        workspace: h.id, person: PersonCodec.key(shard.records[Int(slot)]),
        unsubscribed: unsubscribed, source: req.source, at: at, actor: actor)
      _ = try log.append(.setGlobal(cmd))
      let p = applySetGlobal(cmd, shard: &shard, slot: slot)
      return h.current.preferences(
        personID: p.key.personID, global: p.global, entries: p.entries, subject: p, now: at)
    }
    guard let prefs else { throw .notFound("person not found") }
    return prefs
  }

  // MARK: CheckDelivery

  /// The decision of SPEC §2 for one person; with `recordSend` an allowed decision counts
  /// one send toward the channel's limit (sends count only toward a configured limit).
  public func checkDelivery(_ req: DeliveryRequest, completion: Completion<Decision>) {
    run(completion) { () throws(CoreError) in try checkDelivery(req) }
  }

  func checkDelivery(_ req: DeliveryRequest) throws(CoreError) -> Decision {
    let h = try handle(req.workspace)
    let ref = try PersonRef.validated(req.person, field: "person")
    let model = h.current
    let channel = try model.configuredChannel(req.channel)
    let topic = try model.configuredTopic(req.topic)
    let target = model.target(channel: channel, topic: topic)
    return try check(
      h, ref, target: target, channelName: req.channel, recordSend: req.recordSend, at: now())
  }

  /// Decides for one validated ref; counts the send if asked and allowed.
  func check(
    _ h: WorkspaceHandle, _ ref: PersonRef, target: DeliveryTarget, channelName: String,
    recordSend: Bool, at: Int64
  ) throws(CoreError) -> Decision {
    let found = try withPerson(h, ref) { (shard, slot) throws(CoreError) -> Decision in
      let outcome = PersonCodec.withSubject(shard.records[Int(slot)]) {
        decideDelivery(target: target, person: $0, suppressed: false, isOverride: false, now: at)
      }
      let key = PersonCodec.key(shard.records[Int(slot)])
      if recordSend, outcome.countsSend, let limit = target.limit {
        let cmd = Command.RecordSends(
          workspace: h.id, channel: channelName, persons: [key], at: at)
        _ = try log.append(.recordSends(cmd))
        PersonCodec.recordSend(
          &shard.records[Int(slot)], channel: target.channel, at: at, limit: limit)
      }
      return Decision(allowed: outcome.allowed, reason: outcome.reason, personID: key.personID)
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
  /// one command.
  public func checkDeliveryBatch(_ req: DeliveryBatchRequest, completion: Completion<[Decision]>) {
    run(completion) { () throws(CoreError) in try checkDeliveryBatch(req) }
  }

  func checkDeliveryBatch(_ req: DeliveryBatchRequest) throws(CoreError) -> [Decision] {
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
    if !indexed.isEmpty {
      h.identity.withLock { identity in
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
    let counting = req.recordSend && target.limit != nil
    for s in 0..<shardCount where starts[s] < starts[s + 1] {
      try shards[s].state.withLock { (shard: inout Shard) throws(CoreError) in
        var sendSlots: [UInt32] = []
        var sendKeys: [PersonKey] = []
        var pending: [UInt32: Int] = [:]
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
          let extra = counting ? pending[slot] ?? 0 : 0
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
        if let limit = target.limit, !sendSlots.isEmpty {
          let cmd = Command.RecordSends(
            workspace: h.id, channel: req.channel, persons: sendKeys, at: at)
          _ = try log.append(.recordSends(cmd))
          for slot in sendSlots {
            PersonCodec.recordSend(
              &shard.records[Int(slot)], channel: target.channel, at: at, limit: limit)
          }
        }
      }
    }

    // Refs whose index entry was ambiguous or moved: the one-person path.
    for i in slow {
      decisions[i] = try check(
        h, refs[i], target: target, channelName: req.channel, recordSend: req.recordSend, at: at)
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
    return decisions
  }

  // MARK: OverrideForImportantMessage

  /// An important message that may pass the person's choices (SPEC §2 rule 3). Every call
  /// on a known person, allowed or not, is written to its history; an unknown or
  /// suppressed person gets the decision and no history.
  public func overrideForImportantMessage(
    _ req: OverrideRequest, actor: String, completion: Completion<Decision>
  ) {
    run(completion) { () throws(CoreError) in try overrideForImportantMessage(req, actor: actor) }
  }

  func overrideForImportantMessage(_ req: OverrideRequest, actor: String) throws(CoreError)
    -> Decision
  {
    let h = try handle(req.workspace)
    let ref = try PersonRef.validated(req.person, field: "person")
    let model = h.current
    let channel = try model.configuredChannel(req.channel)
    let topic = try model.configuredTopic(req.topic)
    try Validate.requiredBytes(req.messageID, Limits.messageIDBytes, field: "message_id")
    try Validate.requiredBytes(req.justification, Limits.justificationBytes, field: "justification")
    let target = model.target(channel: channel, topic: topic)
    let at = now()
    let found = try withPerson(h, ref) { (shard, slot) throws(CoreError) -> Decision in
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
      _ = try log.append(.override(cmd))
      applyOverride(cmd, channel: channel, topic: topic, shard: &shard, slot: slot)
      return Decision(allowed: outcome.allowed, reason: outcome.reason, personID: key.personID)
    }
    if let found { return found }
    return Decision(
      allowed: false, reason: isSuppressed(h, ref) ? .suppressed : .unknownPerson, personID: "")
  }
}
