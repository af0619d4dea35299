// What the commands still in flight (validated and queued to the log, not yet durable)
// will do to the state: the store validates against the committed state plus these, and
// readers never see them. See Store+Commit.swift for the whole rule.
//
// Each entry holds the value the in-flight commands leave behind (the last one's), how
// many in-flight commands hold it, and the last of them. A command's `Reservations` lists
// what it registered; it is registered right after `append`, under the locks that
// validated the command, and released under the same locks when the command is applied
// or fails. Entries are registered under these locks:
//
//   Registry.pending           workspace → the model in-flight configurations leave
//   IdentityState.pending      identifier → its holder (nil: released);
//                              suppression hash → suppressed or not;
//                              person key → its identifiers (nil: removed)
//   Shard.pending              slot → in-flight single-person writes and counted sends
//
// Values need no undoing on failure: a failed record fails every record appended after
// it while it was in flight (the `CommitLog` contract), so all holders of an entry
// fail together and the entry disappears when the last one is released.

import SubcenterCore

/// An entry of the in-flight state.
struct Claim<Value> {
  var value: Value
  var holds: Int
  var last: PendingCommit
}

/// An identifier as the identifier index names it, compared byte for byte.
struct IdentifierKey: Hashable, Sendable {
  var kind: IdentifierKind
  var value: String

  init(_ kind: IdentifierKind, _ value: String) {
    self.kind = kind
    self.value = value
  }

  static func == (a: IdentifierKey, b: IdentifierKey) -> Bool {
    a.kind == b.kind && sameBytes(a.value, b.value)
  }

  func hash(into hasher: inout Hasher) {
    hasher.combine(kind)
    for b in value.utf8 { hasher.combine(b) }
  }
}

/// The identifiers of a person, as the identity index sees them.
struct PersonView: Sendable, Equatable {
  var email = ""
  var phone = ""
  /// An anonymous profile holds its own id here.
  var anonymousIDs: [String] = []

  init(email: String = "", phone: String = "", anonymousIDs: [String] = []) {
    self.email = email
    self.phone = phone
    self.anonymousIDs = anonymousIDs
  }

  init(_ p: Person) {
    self.init(email: p.email, phone: p.phone, anonymousIDs: p.anonymousIDs)
  }

  /// The index keys naming the person.
  var identifiers: [IdentifierKey] {
    var out: [IdentifierKey] = []
    if !email.isEmpty { out.append(IdentifierKey(.email, email)) }
    if !phone.isEmpty { out.append(IdentifierKey(.phone, phone)) }
    for a in anonymousIDs { out.append(IdentifierKey(.anonymousID, a)) }
    return out
  }
}

/// A workspace's identity changes in flight.
struct PendingIdentity {
  var holders: [IdentifierKey: Claim<PersonKey?>] = [:]
  var suppressed: [SuppressionHash: Claim<Bool>] = [:]
  var persons: [PersonKey: Claim<PersonView?>] = [:]

  var isEmpty: Bool { holders.isEmpty && suppressed.isEmpty && persons.isEmpty }
}

/// A person's single-person writes in flight (by slot: a slot freed by an in-flight
/// removal and reused keeps the entry until those writes are applied, which only makes
/// the new holder's checks more cautious for that long).
struct PendingSlot {
  /// In-flight SetPreference, SetGlobal, Override and RecordSends commands.
  var writes = 0
  /// Counted sends in flight, per channel.
  var sends: [(channel: NameID, count: Int)] = []
  /// A command in flight removes this person (ForgetPerson, a suppression, the anonymous
  /// TTL, a merge into a person): a write naming it waits for that (`withPersonForWrite`).
  var removed = false
  var last: PendingCommit

  func sends(_ channel: NameID) -> Int {
    for s in sends where s.channel == channel { return s.count }
    return 0
  }
}

/// One single-person write's (or counted send's) hold on a slot.
struct SlotReservation: Sendable {
  var shard: Int
  var slot: UInt32
  var channel: NameID = 0
  /// Sends counted on `channel` (0: a write that counts none).
  var sends = 0
  /// The hold of a removal (see `PendingSlot.removed`).
  var removes = false
}

/// The slot holds of one command. Most commands hold one slot, kept inline: an array
/// would be one more allocation a write.
struct SlotReservations: Sendable {
  private var first: SlotReservation?
  private var more: [SlotReservation] = []

  init() {}

  init(_ holds: some Sequence<SlotReservation>) {
    for r in holds { append(r) }
  }

  mutating func append(_ r: SlotReservation) {
    if first == nil { first = r } else { more.append(r) }
  }

  /// Where the first hold is: for a single-person write, that person's record (see
  /// `SubscriptionStore.apply`'s `near`).
  var firstLocation: (shard: Int, slot: UInt32)? { first.map { ($0.shard, $0.slot) } }

  /// Calls `body` with each hold, in order.
  func forEach(_ body: (SlotReservation) -> Void) {
    guard let first else { return }
    body(first)
    for r in more { body(r) }
  }
}

/// Everything one in-flight command registered.
struct Reservations: Sendable {
  var workspace: (id: String, model: Workspace)?
  var holders: [(IdentifierKey, PersonKey?)] = []
  var suppressed: [(SuppressionHash, Bool)] = []
  var persons: [(PersonKey, PersonView?)] = []
  var slots = SlotReservations()

  init() {}

  /// The reservations of a command that holds one slot and nothing else.
  init(_ slot: SlotReservation) { slots.append(slot) }

  var touchesIdentity: Bool { !holders.isEmpty || !suppressed.isEmpty || !persons.isEmpty }

  /// A person's removal: the person and every identifier it holds.
  mutating func remove(_ key: PersonKey, view: PersonView) {
    persons.append((key, nil))
    for i in view.identifiers { holders.append((i, nil)) }
  }

  // MARK: Registering (under the validation locks, right after `append`)

  func register(registry reg: inout Registry, by c: PendingCommit) {
    guard let (id, model) = workspace else { return }
    hold(&reg.pending, id, model, c)
  }

  func register(identity: inout IdentityState, by c: PendingCommit) {
    for (k, v) in holders { hold(&identity.pending.holders, k, v, c) }
    for (k, v) in suppressed { hold(&identity.pending.suppressed, k, v, c) }
    for (k, v) in persons { hold(&identity.pending.persons, k, v, c) }
  }

  /// Registers the slots of every shard they are in (all locked).
  func register(shards: inout LockedShards, by c: PendingCommit) {
    var indices = Set<Int>()
    slots.forEach { indices.insert($0.shard) }
    for s in indices { shards.with(s) { register(shard: &$0, index: s, by: c) } }
  }

  /// Registers the slots of shard `index`.
  func register(shard: inout Shard, index: Int, by c: PendingCommit) {
    slots.forEach { r in
      guard r.shard == index else { return }
      Self.register(r, shard: &shard, by: c)
    }
  }

  /// Registers one slot hold of `c` on its (locked) shard: for a command whose only
  /// reservation it is, this spares copying the whole `Reservations` kept in `c`.
  static func register(_ r: SlotReservation, shard: inout Shard, by c: PendingCommit) {
    // In place: one look-up of the slot, not a read and a write.
    shard.pending.update(r.slot, default: { PendingSlot(last: c) }) { addHold(r, by: c, on: &$0) }
  }

  private static func addHold(_ r: SlotReservation, by c: PendingCommit, on p: inout PendingSlot) {
    p.writes += 1
    p.last = c
    if r.removes { p.removed = true }
    if r.sends > 0 {
      if let i = p.sends.firstIndex(where: { $0.channel == r.channel }) {
        p.sends[i].count += r.sends
      } else {
        p.sends.append((r.channel, r.sends))
      }
    }
  }

  /// Takes `r`'s hold off `p`; true when nothing holds the slot any more.
  private static func removeHold(_ r: SlotReservation, from p: inout PendingSlot) -> Bool {
    p.writes -= 1
    if r.sends > 0, let i = p.sends.firstIndex(where: { $0.channel == r.channel }) {
      p.sends[i].count -= r.sends
      if p.sends[i].count <= 0 { p.sends.remove(at: i) }
    }
    return p.writes <= 0
  }

  // MARK: Releasing (under the command's locks, when it is applied or has failed)

  func release(in locked: inout Locked) {
    if let (id, _) = workspace { drop(&locked.registry!.pending, id) }
    for (k, _) in holders { drop(&locked.identity!.pending.holders, k) }
    for (k, _) in suppressed { drop(&locked.identity!.pending.suppressed, k) }
    for (k, _) in persons { drop(&locked.identity!.pending.persons, k) }
    slots.forEach { r in
      locked.shards.with(r.shard) { shard in
        shard.pending.update(r.slot, removingIf: { Self.removeHold(r, from: &$0) })
      }
    }
  }
}

private func hold<K: Hashable, V>(
  _ map: inout [K: Claim<V>], _ key: K, _ value: V, _ c: PendingCommit
) {
  if var e = map[key] {
    e.value = value
    e.holds += 1
    e.last = c
    map[key] = e
  } else {
    map[key] = Claim(value: value, holds: 1, last: c)
  }
}

private func drop<K: Hashable, V>(_ map: inout [K: Claim<V>], _ key: K) {
  guard var e = map[key] else { return }
  e.holds -= 1
  map[key] = e.holds > 0 ? e : nil
}
