// The packed person: random persons survive encode → decode; appending history without
// decoding it equals a full re-encode; the decision read in place equals the decision on
// the decoded person; the slot table keeps every entry through growth and removals.

import SubcenterCore
import Testing

@testable import SubcenterStore

private func randomString(_ rng: inout SplitMix, max: Int) -> String {
  let alphabet: [String] = ["a", "b", "z", "0", "_", "é", "☺", "𝄞", " "]
  let n = Int(rng.next() % UInt64(max + 1))
  return (0..<n).map { _ in alphabet[Int(rng.next() % UInt64(alphabet.count))] }.joined()
}

private func randomPerson(_ rng: inout SplitMix) -> Person {
  let anonymous = rng.next() % 4 == 0
  let created = Int64(rng.next() % 2_000_000_000_000)
  var p = Person(
    key: PersonKey("k" + randomString(&rng, max: 40), anonymous: anonymous), at: created)
  if !anonymous {
    if rng.next() % 2 == 0 { p.email = randomString(&rng, max: 30) + "@x.com" }
    if rng.next() % 2 == 0 { p.phone = "+1415555" + String(rng.next() % 10_000) }
    for _ in 0..<Int(rng.next() % 3) { p.anonymousIDs.append(randomString(&rng, max: 20)) }
  }
  let sources = ["", "preference_center", "one_click", String(repeating: "long", count: 40)]
  var keys = Set<UInt32>()
  for _ in 0..<Int(rng.next() % 6) {
    let c = NameID(rng.next() % 4)
    let t = NameID(rng.next() % 4)
    if (c == 0 && t == 0) || !keys.insert(UInt32(c) << 16 | UInt32(t)).inserted { continue }
    p.upsert(
      PreferenceRecord(
        channel: c, topic: t, state: rng.next() % 2 == 0 ? .subscribed : .unsubscribed,
        updatedAt: created + Int64(rng.next() % 100_000) - 50_000,
        source: sources[Int(rng.next() % 4)], noticeVersion: rng.next() % 3 == 0 ? "v2" : ""))
  }
  if rng.next() % 2 == 0 {
    p.global = GlobalFlag(
      unsubscribed: rng.next() % 2 == 0, updatedAt: created + 5,
      source: sources[Int(rng.next() % 4)])
  }
  for _ in 0..<Int(rng.next() % 8) {
    p.appendHistory(
      action: HistoryAction.allCases[Int(rng.next() % 7)], channel: NameID(rng.next() % 3),
      topic: NameID(rng.next() % 3), source: sources[Int(rng.next() % 4)], actor: "actor",
      detail: randomString(&rng, max: 30), at: created + Int64(rng.next() % 10_000))
  }
  var at = created
  for _ in 0..<Int(rng.next() % 4) {
    at += Int64(rng.next() % 1000)
    p.sends.append(SendRecord(channel: NameID(rng.next() % 3), at: at))
  }
  p.updatedAt = created + Int64(rng.next() % 1000)
  return p
}

@Suite struct PersonCodecTests {
  @Test func roundTrip() {
    var rng = SplitMix(seed: 7)
    var strings = StringTable()
    for _ in 0..<500 {
      let p = randomPerson(&rng)
      let r = PersonCodec.encode(p, workspace: 3, strings: &strings)
      #expect(PersonCodec.decode(r, history: true, strings: strings).person == p)
      #expect(PersonCodec.key(r) == p.key)
      #expect(PersonCodec.matches(r, workspace: 3, key: p.key))
      #expect(!PersonCodec.matches(r, workspace: 4, key: p.key))
      #expect(PersonCodec.updatedAt(r) == p.updatedAt)
      if !p.email.isEmpty { #expect(PersonCodec.holds(r, kind: .email, value: p.email)) }
      if !p.phone.isEmpty { #expect(PersonCodec.holds(r, kind: .phone, value: p.phone)) }
      for a in p.anonymousIDs { #expect(PersonCodec.holds(r, kind: .anonymousID, value: a)) }
      #expect(!PersonCodec.holds(r, kind: .email, value: "nobody@x.com"))
      var partial = PersonCodec.decode(r, history: false, strings: strings).person
      partial.history = p.history
      #expect(partial == p)
    }
  }

  @Test func appendEqualsFullEncode() {
    var rng = SplitMix(seed: 11)
    var strings = StringTable()
    for i in 0..<300 {
      var full = randomPerson(&rng)
      var record = PersonCodec.encode(full, workspace: 1, strings: &strings)
      let d = PersonCodec.decode(record, history: false, strings: strings)
      var partial = d.person
      // Half the time a new entry sorts before the last stored one (the slow path).
      let base = (full.history.last?.at ?? full.createdAt) + (i % 2 == 0 ? 1 : -3)
      for k in 0..<2 {
        partial.setPreference(
          channel: 1, topic: NameID(k), state: .subscribed, source: "s", noticeVersion: "",
          at: base + Int64(k), actor: "a")
        full.setPreference(
          channel: 1, topic: NameID(k), state: .subscribed, source: "s", noticeVersion: "",
          at: base + Int64(k), actor: "a")
      }
      PersonCodec.update(&record, with: partial, tail: d.tail, strings: &strings)
      #expect(PersonCodec.decode(record, history: true, strings: strings).person == full)
    }
  }

  /// A long run of updates of one record (history appended in place, hot and cold
  /// sections growing and shrinking) equals encoding the person in full each time.
  @Test func repeatedUpdatesEqualFullEncode() {
    var rng = SplitMix(seed: 13)
    var strings = StringTable()
    for _ in 0..<20 {
      var full = randomPerson(&rng)
      var record = PersonCodec.encode(full, workspace: 1, strings: &strings)
      var at = (full.history.last?.at ?? full.createdAt) + 1
      for step in 0..<200 {
        let d = PersonCodec.decode(record, history: false, strings: strings)
        var partial = d.person
        let channel = NameID(1 + rng.next() % 3)
        let topic = NameID(rng.next() % 9)  // new keys now and then: the hot section grows
        let state: PreferenceState = rng.next() % 2 == 0 ? .subscribed : .unsubscribed
        let source = step % 3 == 0 ? String(repeating: "x", count: step) : "s"
        partial.setPreference(
          channel: channel, topic: topic, state: state, source: source, noticeVersion: "",
          at: at, actor: "a")
        full.setPreference(
          channel: channel, topic: topic, state: state, source: source, noticeVersion: "",
          at: at, actor: "a")
        if step % 7 == 0 {
          let email = step % 14 == 0 ? "" : String(repeating: "e", count: step % 50) + "@x.com"
          partial.email = email
          full.email = email
        }
        at += Int64(rng.next() % 3)
        PersonCodec.update(&record, with: partial, tail: d.tail, strings: &strings)
        #expect(PersonCodec.decode(record, history: true, strings: strings).person == full)
        #expect(PersonCodec.updatedAt(record) == full.updatedAt)
      }
    }
  }

  /// The in-place SetPreference and SetGlobal equal decode → `Person.setPreference` /
  /// `setGlobal` → `update`, byte for byte and string table for string table, over random
  /// persons and changes: new and existing entries, the global flag set, cleared and set
  /// again, interned, inline and over-long sources, notice versions, times equal to the
  /// last history entry's, and times before it (refused, nothing changed).
  @Test func packedChangesEqualDecodedChanges() {
    var rng = SplitMix(seed: 17)
    var globals = 0
    for round in 0..<2 {
      var strings = StringTable()
      var scratch: [UInt8] = []
      if round == 1 {
        // A full table: every new string stays inline.
        for i in 0..<StringTable.maxEntries { _ = strings.id(for: "filler \(i)") }
      }
      for _ in 0..<400 {
        var record = PersonCodec.encode(randomPerson(&rng), workspace: 1, strings: &strings)
        var slowRecord = record
        var slowStrings = strings
        var lastAt =
          PersonCodec.decode(record, history: true, strings: strings).person.history
          .last?.at ?? Int64.min
        for step in 0..<Int(1 + rng.next() % 12) {
          let channel = NameID(rng.next() % 4)
          let topic = NameID(rng.next() % 4)
          let state: PreferenceState = rng.next() % 2 == 0 ? .subscribed : .unsubscribed
          let sources = ["", "preference_center", "s\(step)", String(repeating: "x", count: 200)]
          let source = sources[Int(rng.next() % 4)]
          let notice = rng.next() % 3 == 0 ? "v\(rng.next() % 3)" : ""
          let global = rng.next() % 3 == 0
          let created = PersonCodec.decode(record, history: false, strings: strings).person
            .createdAt
          var at = max(lastAt, created) + Int64(rng.next() % 3)
          if rng.next() % 10 == 0 && lastAt > Int64.min { at = lastAt - 1 }
          let before = record.blob
          let done =
            global
            ? PersonCodec.setGlobal(
              &record, unsubscribed: state == .unsubscribed, source: source, at: at,
              actor: "actor", strings: &strings, scratch: &scratch)
            : PersonCodec.setPreference(
              &record, channel: channel, topic: topic, state: state, source: source,
              noticeVersion: notice, at: at, actor: "actor", strings: &strings, scratch: &scratch)
          if at < lastAt {
            #expect(!done, "a change sorting before the stored history is refused")
            #expect(record.blob == before)
            continue
          }
          #expect(done)
          var d = PersonCodec.decode(slowRecord, history: false, strings: slowStrings)
          if global {
            globals += 1
            d.person.setGlobal(
              unsubscribed: state == .unsubscribed, source: source, at: at, actor: "actor")
          } else {
            d.person.setPreference(
              channel: channel, topic: topic, state: state, source: source,
              noticeVersion: notice, at: at, actor: "actor")
          }
          PersonCodec.update(&slowRecord, with: d.person, tail: d.tail, strings: &slowStrings)
          #expect(record.blob == slowRecord.blob)
          #expect(record.flags == slowRecord.flags && record.sends == slowRecord.sends)
          #expect(
            PersonCodec.decode(record, history: true, strings: strings).person
              == PersonCodec.decode(slowRecord, history: true, strings: slowStrings).person)
          lastAt = at
        }
        strings = slowStrings
      }
    }
    #expect(globals > 500)
  }

  /// The answer read from the record equals the answer built from the decoded person.
  @Test func packedPreferencesEqualDecoded() throws {
    let model = try Workspace(acme, previous: nil)
    var rng = SplitMix(seed: 23)
    var strings = StringTable()
    for _ in 0..<1000 {
      let p = randomPerson(&rng)
      let r = PersonCodec.encode(p, workspace: 1, strings: &strings)
      let now = p.createdAt + Int64(rng.next() % 4000)
      #expect(
        PersonCodec.preferences(r, model: model, strings: strings, now: now)
          == model.preferences(
            personID: p.key.personID, global: p.global, entries: p.entries, subject: p, now: now))
    }
  }

  @Test func packedDecisionEqualsDecoded() {
    var rng = SplitMix(seed: 3)
    var strings = StringTable()
    for _ in 0..<2000 {
      let p = randomPerson(&rng)
      let r = PersonCodec.encode(p, workspace: 1, strings: &strings)
      let target = DeliveryTarget(
        channel: NameID(1 + rng.next() % 3), topic: NameID(rng.next() % 4),
        topicDefault: rng.next() % 2 == 0 ? .subscribed : .unsubscribed,
        limit: rng.next() % 2 == 0
          ? LimitRule(maxMessages: 1 + Int(rng.next() % 3), windowMillis: 2000) : nil,
        overridesAllowed: rng.next() % 2 == 0)
      let isOverride = rng.next() % 3 == 0
      let now = p.createdAt + Int64(rng.next() % 4000)
      let a = decideDelivery(
        target: target, person: p, suppressed: false, isOverride: isOverride, now: now)
      let b = PersonCodec.withSubject(r) {
        decideDelivery(
          target: target, person: $0, suppressed: false, isOverride: isOverride, now: now)
      }
      #expect(a == b)
    }
  }

  @Test func packedSendsMatchPersonSends() {
    let limit = LimitRule(maxMessages: 3, windowMillis: 1000)
    var p = Person(key: .person("p"), at: 0)
    var strings = StringTable()
    var r = PersonCodec.encode(p, workspace: 1, strings: &strings)
    for (i, at) in [10, 500, 900, 1500, 1501, 1400, 3000].enumerated() {
      let channel = NameID(1 + i % 2)
      p.recordSend(channel: channel, at: Int64(at), limit: limit)
      PersonCodec.recordSend(&r, channel: channel, at: Int64(at), limit: limit)
      #expect(PersonCodec.decode(r, history: false, strings: strings).person.sends == p.sends)
    }
  }

  /// Interning: one number per distinct string, found again after every growth of the
  /// table; long strings and strings past the cap stay inline (nil).
  @Test func stringTable() {
    var table = StringTable()
    #expect(table.id(for: "") == 0)
    var ids: [String: UInt32] = [:]
    for i in 0..<(StringTable.maxEntries + 10) {
      let s = i % 3 == 0 ? "é\(i)" : "source-\(i)"
      let id = table.id(for: s)
      if i < StringTable.maxEntries - 1 {
        #expect(id != nil && !ids.values.contains(id!))
        ids[s] = id
      } else {
        #expect(id == nil)
      }
    }
    for (s, id) in ids {
      #expect(table.id(for: s) == id)
      #expect(table.string(id) == s)
    }
    var fresh = StringTable()
    #expect(fresh.id(for: String(repeating: "x", count: StringTable.maxBytes)) == 1)
    #expect(fresh.id(for: String(repeating: "x", count: StringTable.maxBytes + 1)) == nil)
    #expect(fresh.id(for: "e\u{301}") != fresh.id(for: "é"))  // bytes, not Unicode equality
  }

  @Test func slotTable() {
    var table = SlotTable()
    var model: [UInt64: [UInt32]] = [:]
    var rng = SplitMix(seed: 5)
    for step in 0..<20_000 {
      // Few distinct fragments, so runs and equal fragments are common.
      let hash = (rng.next() % 512) << 32 | rng.next() % 4
      if step % 3 == 2, let existing = model[hash]?.first {
        table.remove(hash, existing)
        model[hash]!.removeFirst()
      } else {
        let v = UInt32(step)
        table.insert(hash, v)
        model[hash, default: []].append(v)
      }
    }
    for (hash, values) in model {
      // Values of equal fragments are candidates of each other: filter like a caller does.
      let same = model.filter { $0.key >> 32 == hash >> 32 }.flatMap(\.value)
      #expect(Set(table.values(hash)) == Set(same))
      #expect(Set(values).isSubset(of: Set(table.values(hash))))
    }
    #expect(table.count == model.values.reduce(0) { $0 + $1.count })
  }

  /// `Shard.pending`'s map holds what a `Dictionary` holds through insertions, updates
  /// and removals (runs of colliding slots, removals inside them, growth).
  @Test func slotMapMatchesADictionary() {
    var map = SlotMap<Int>()
    var model: [UInt32: Int] = [:]
    var rng = SplitMix(seed: 7)
    for step in 0..<30_000 {
      // Few distinct slots, some far apart, so runs and removals inside them are common.
      let slot = UInt32(rng.next() % 96) * (step % 5 == 0 ? 65_537 : 1)
      switch rng.next() % 3 {
      case 0:
        let v = map.update(slot, default: { 0 }) { value -> Int in
          value += step
          return value
        }
        model[slot, default: 0] += step
        #expect(v == model[slot])
      default:
        let remove = rng.next() % 4 != 0
        map.update(
          slot,
          removingIf: { value in
            value += 1
            return remove
          })
        if model[slot] != nil { model[slot]! += 1 }
        if remove { model[slot] = nil }
      }
      #expect(map.count == model.count)
    }
    for slot in UInt32(0)..<96 {
      for s in [slot, slot * 65_537] {
        #expect(map[s] == model[s], "slot \(s)")
        #expect(map.read(s) { $0 + 1 } == model[s].map { $0 + 1 }, "slot \(s)")
      }
    }
  }

  /// A commit's slot hold spares hashing the key when applying it (`Shard.holds`): a slot
  /// holds a key exactly when `find` returns that slot, removed persons and other
  /// workspaces included.
  @Test func slotHoldsWhatFindFinds() {
    var shard = Shard()
    var strings = StringTable()
    var rng = SplitMix(seed: 11)
    var people: [(key: PersonKey, workspace: UInt16)] = []
    for n in 0..<40 {
      let key = PersonKey("p\(n % 20)", anonymous: n % 7 == 0)
      let workspace = UInt16(1 + n / 20)
      let p = Person(key: key, at: 1_000)
      _ = shard.insert(
        PersonCodec.encode(p, workspace: workspace, strings: &strings),
        hash: KeyHash.person(workspace, key))
      people.append((key, workspace))
    }
    for _ in 0..<10 {
      let (key, workspace) = people[Int(rng.next() % UInt64(people.count))]
      let hash = KeyHash.person(workspace, key)
      if let slot = shard.find(workspace: workspace, key: key, hash: hash) {
        shard.remove(slot: slot, hash: hash)
      }
    }
    for (key, workspace) in people + [(PersonKey("absent", anonymous: false), 1)] {
      let found = shard.find(workspace: workspace, key: key, hash: KeyHash.person(workspace, key))
      for slot in 0..<UInt32(shard.records.count + 2) {
        #expect(shard.holds(slot: slot, workspace: workspace, key: key) == (found == slot))
      }
    }
  }
}

@Suite struct RegistryTests {
  /// Every call looks its workspace up: by a scan of the ids while there are at most
  /// `scanLimit`, by the dictionary beyond. Both find each workspace, and nothing else,
  /// on either side of the limit (ids long enough not to be small Strings too).
  @Test func findsWorkspacesOnBothSidesOfTheScanLimit() throws {
    var reg = Registry()
    let limit = Registry.scanLimit
    for n in 1...(limit + 8) {
      var config = acme
      config.workspace = n % 2 == 0 ? "w\(n)" : "a-longer-workspace-id-\(n)"
      reg.add(WorkspaceHandle(number: UInt16(n), model: try Workspace(config)))
      for k in 1...n {
        let id = k % 2 == 0 ? "w\(k)" : "a-longer-workspace-id-\(k)"
        #expect(reg.handle(id)?.number == UInt16(k), "\(id) among \(n)")
      }
      #expect(reg.handle("w\(n + 2)") == nil)
      #expect(reg.handle("a-longer-workspace-id-\(n + 2)") == nil)
      #expect(reg.handle("") == nil)
    }
    #expect(reg.byID.count == limit + 8)
  }
}
