// Erasure against a model (SPEC §4): seeded random runs of identifies, anonymous profiles,
// merges and attachments, preferences, forgets, suppressions, compactions, snapshots,
// retention passes and restarts on a DurableStore in a temporary directory (every segment
// retained). The oracle knows nothing of ErasurePlan: it keeps which distinctive strings
// (emails, phones, anonymous ids, preference sources, suppression reasons) were written for
// whom, follows merges and attachments as SPEC §3 says, and after each compaction reads
// every file of the data directory as raw bytes: nothing of a person forgotten before it
// is left, and everything of every live person is still there.

import Glibc
import SubcenterCore
import SubcenterStore
import SubcenterTestSupport
import Testing

private let emSecret = Array("erasure-model-test-secret".utf8)
/// Two workspaces, so that the same person id names two persons.
private let emWorkspaces = ["acme", "beta"]
/// The preference keys a step sets: a channel, a topic, a topic on one channel.
private let emKeys = [("email", ""), ("sms", ""), ("", "news"), ("email", "news")]

/// A person or an anonymous profile the store holds, and the distinctive strings written
/// for it (each used once in the whole run, so finding one in a file names its owner).
private struct Subject {
  let number: Int
  let workspace: String
  /// nil: an anonymous profile (named by its one anonymous id).
  var personID: String?
  var email: String?
  var phone: String?
  var anonymousIDs: [String] = []
  var sources: [String] = []
  /// The explicit entries, by "channel/topic": state, source and when it was set.
  var entries: [String: (state: PreferenceState, source: String, at: Int64)] = [:]

  var name: String {
    personID.map { "\(workspace)/\($0)" } ?? "\(workspace)/anonymous \(anonymousIDs[0])"
  }

  /// How a request names it (the person id, or the anonymous profile's id).
  var ref: PersonRef { personID.map { .personID($0) } ?? .anonymousID(anonymousIDs[0]) }

  /// Every way a request can name it.
  var refs: [PersonRef] {
    var out = [ref]
    if personID != nil {
      out += [email.map { .email($0) }, phone.map { .phone($0) }].compactMap { $0 }
      out += anonymousIDs.map { .anonymousID($0) }
    }
    return out
  }

  /// Its distinctive strings with what each is; `identifiersOnly`: only the ones a snapshot
  /// of it holds (a source may have been replaced by a later choice).
  func strings(identifiersOnly: Bool = false) -> [(text: String, what: String)] {
    var out: [(String, String)] = []
    if let email { out.append((email, "email")) }
    if let phone { out.append((phone, "phone")) }
    out += anonymousIDs.map { ($0, "anonymous id") }
    if !identifiersOnly { out += sources.map { ($0, "source") } }
    return out
  }
}

/// A string of a forgotten subject: it must be in no file once a compaction (or the erasure
/// check after a restart) has run after its forget.
private struct ForgottenString {
  var text: String
  var what: String
  var subject: Int
  var forgottenAt: Int
  var erased = false
}

/// One seeded run.
private final class ErasureModelRun {
  let seed: UInt64
  var rng: SplitMix64
  let directory = TemporaryDirectory()
  let fs = PosixFileSystem()
  let clock = ManualClock(1_700_000_000_000)
  var durable: DurableStore
  var step = 0
  var serial = 0
  var live: [Int: Subject] = [:]
  var forgotten: [ForgottenString] = []
  /// Person ids free to name a new person again: forgotten and not suppressed.
  var reusableIDs: [String: [String]] = [:]
  /// Suppressed person ids, by workspace (an Identify naming one is refused).
  var suppressedIDs: [String: Set<String>] = [:]
  /// How requests named the forgotten subjects: their person ids (a later person may have
  /// the id again) and the anonymous profiles' ids.
  var forgottenNames: [(workspace: String, ref: PersonRef, subject: Int)] = []
  /// Each step's text, with the subjects it touched (a failure lists a subject's steps).
  var trace: [(step: Int, subjects: [Int], text: String)] = []
  var failed = false
  var compactions = 0
  var restarts = 0

  init(seed: UInt64) throws {
    self.seed = seed
    var mixer = SplitMix64(seed: seed)
    rng = SplitMix64(seed: mixer.next())  // seeds 1, 2… are not one stream shifted
    durable = try DurableStore.open(
      directory: directory.path, clock: clock, secret: emSecret, fsync: .none,
      truncateDamaged: false, log: { _ in }
    ).0
    for w in emWorkspaces {
      let config = WorkspaceConfig(
        workspace: w, channels: ["email", "sms"],
        topics: [Topic(id: "news", name: "News", defaultState: .subscribed)])
      let r = awaitStoreCall { c in
        durable.store.configureWorkspace(config, actor: "admin", mayCreate: true) {
          c($0.map { _ in () })
        }
      }
      try r.get()
    }
  }

  var store: SubscriptionStore { durable.store }

  func fail(_ message: String, subjects: [Int] = []) {
    failed = true
    let steps = trace.filter { !Set($0.subjects).isDisjoint(with: subjects) }
      .map { "  step \($0.step): \($0.text)" }
    let history =
      steps.isEmpty ? "" : "\nsteps of those subjects:\n" + steps.joined(separator: "\n")
    Issue.record(Comment(rawValue: "seed \(seed) step \(step): \(message)\(history)"))
  }

  func note(_ text: String, _ subjects: [Int]) { trace.append((step, subjects, text)) }

  func next() -> Int {
    serial += 1
    return serial
  }

  func pick<T>(_ items: [T]) -> T { items[Int.random(in: 0..<items.count, using: &rng)] }
  func chance(_ percent: Int) -> Bool { Int.random(in: 0..<100, using: &rng) < percent }

  /// A store call's answer, or a recorded failure naming the step.
  func call<T: Sendable>(
    _ what: String, _ subjects: [Int], _ body: (@escaping Completion<T>) -> Void
  ) -> T? {
    switch awaitStoreCall(body) {
    case .success(let v): return v
    case .failure(let e):
      fail("\(what) failed: \(e)", subjects: subjects)
      return nil
    }
  }

  // MARK: Steps

  func identifyPerson() {
    let workspace = pick(emWorkspaces)
    let other = emWorkspaces.first { $0 != workspace }!
    // Sometimes a forgotten person's id again (someone else now), or the id of a person of
    // the other workspace: erasing one must not touch the other.
    let personID: String
    if let reuse = reusableIDs[workspace], !reuse.isEmpty, chance(30) {
      personID = pick(reuse)
      reusableIDs[workspace]!.removeAll { $0 == personID }
    } else if let twin = live.values.filter({ $0.workspace == other && $0.personID != nil })
      .map(\.personID!).filter({ id in
        !live.values.contains { $0.workspace == workspace && $0.personID == id }
          && !(suppressedIDs[workspace]?.contains(id) ?? false)
      }).first, chance(25)
    {
      personID = twin
      reusableIDs[workspace]?.removeAll { $0 == personID }
    } else {
      personID = "p\(next())"
    }
    // Each person gets one email and phone, never replaced: a replaced one may stay in the
    // records that set it until they leave with the retention (README, Erasure).
    var s = Subject(number: next(), workspace: workspace, personID: personID)
    s.email = "em\(next())x@erase.test"
    if chance(50) {
      let digits = String(next())
      s.phone = "+1999" + String(repeating: "0", count: 7 - digits.count) + digits
    }
    note("identify \(s.name) \(s.email!)" + (s.phone.map { " \($0)" } ?? ""), [s.number])
    let req = IdentifyRequest(
      workspace: workspace, personID: personID, email: s.email!, phone: s.phone ?? "")
    guard
      call(
        "identify \(s.name)", [s.number],
        { c in
          store.identify(req, actor: "writer") { c($0.map { _ in () }) }
        }) != nil
    else { return }
    live[s.number] = s
  }

  func identifyAnonymous() {
    let workspace = pick(emWorkspaces)
    let anonymousID = "anon\(next())x"
    let s = Subject(number: next(), workspace: workspace, anonymousIDs: [anonymousID])
    note("identify anonymous \(s.name)", [s.number])
    guard
      call(
        "identify \(s.name)", [s.number],
        { c in
          store.identify(
            IdentifyRequest(workspace: workspace, anonymousID: anonymousID), actor: "writer"
          ) { c($0.map { _ in () }) }
        }) != nil
    else { return }
    live[s.number] = s
    for _ in 0..<Int.random(in: 1...2, using: &rng) { setPreference(s.number) }
  }

  /// Identify with a person id and an anonymous id: merges an anonymous profile of the
  /// same workspace when there is one (sometimes), else attaches a new anonymous id.
  func attachAnonymousID() {
    let persons = live.values.filter { $0.personID != nil }.map(\.number).sorted()
    guard !persons.isEmpty else { return identifyPerson() }
    var person = live[pick(persons)]!
    let profiles = live.values.filter { $0.personID == nil && $0.workspace == person.workspace }
      .map(\.number).sorted()
    let merged = profiles.isEmpty || chance(40) ? nil : live[pick(profiles)]
    let anonymousID = merged?.anonymousIDs[0] ?? "anon\(next())x"
    let subjects = [person.number] + (merged.map { [$0.number] } ?? [])
    note(
      (merged == nil ? "attach " : "merge ") + "\(anonymousID) to \(person.name)", subjects)
    guard
      call(
        "identify \(person.name) with \(anonymousID)", subjects,
        { c in
          store.identify(
            IdentifyRequest(
              workspace: person.workspace, personID: person.personID!, anonymousID: anonymousID),
            actor: "writer"
          ) { c($0.map { _ in () }) }
        }) != nil
    else { return }
    person.anonymousIDs.append(anonymousID)
    if let merged {
      // Per key the later choice wins; the profile's history (sources) joins the person's.
      person.sources += merged.sources
      for (key, entry) in merged.entries where entry.at > person.entries[key]?.at ?? .min {
        person.entries[key] = entry
      }
      live[merged.number] = nil
    }
    live[person.number] = person
  }

  func setPreference(_ number: Int? = nil) {
    guard let number = number ?? live.keys.sorted().randomElement(using: &rng) else {
      return identifyPerson()
    }
    var s = live[number]!
    let source = "src\(next())x"
    let ref = pick(s.refs)
    if chance(15) {
      let unsubscribed = chance(50)
      note("\(unsubscribed ? "unsubscribe_all" : "resubscribe") \(s.name) \(source)", [number])
      guard
        call(
          "set global of \(s.name)", [number],
          { c in
            store.setGlobal(
              GlobalRequest(workspace: s.workspace, person: ref, source: source),
              unsubscribed: unsubscribed, actor: "writer"
            ) { c($0.map { _ in () }) }
          }) != nil
      else { return }
    } else {
      let (channel, topic) = pick(emKeys)
      let state: PreferenceState = chance(50) ? .subscribed : .unsubscribed
      note("set \(s.name) \(channel)/\(topic) \(state) \(source)", [number])
      guard
        call(
          "set \(channel)/\(topic) of \(s.name)", [number],
          { c in
            store.setPreference(
              PreferenceRequest(
                workspace: s.workspace, person: ref, channel: channel, topic: topic,
                source: source),
              state: state, actor: "writer"
            ) { c($0.map { _ in () }) }
          }) != nil
      else { return }
      s.entries["\(channel)/\(topic)"] = (state, source, clock.nowMillis())
    }
    s.sources.append(source)
    live[number] = s
  }

  /// Moves a subject to the forgotten ones, with `extra` strings of its removal. Not its
  /// person id, nor an anonymous profile's own id: the removal record names it so, and
  /// stays as the `forget` tombstone for the change retention (SPEC §4).
  func forgot(_ s: Subject, personIDSuppressed: Bool, extra: [(String, String)] = []) {
    live[s.number] = nil
    forgottenNames.append((s.workspace, s.ref, s.number))
    for (text, what) in s.strings() + extra {
      if s.personID == nil && text == s.anonymousIDs[0] { continue }
      forgotten.append(
        ForgottenString(text: text, what: what, subject: s.number, forgottenAt: step))
    }
    guard let id = s.personID else { return }
    if personIDSuppressed {
      suppressedIDs[s.workspace, default: []].insert(id)
    } else {
      reusableIDs[s.workspace, default: []].append(id)
    }
  }

  func forget() {
    guard let number = live.keys.sorted().randomElement(using: &rng) else {
      return identifyPerson()
    }
    let s = live[number]!
    let ref = pick(s.refs)
    let alsoSuppress = chance(30)
    note("forget \(s.name) by \(ref)\(alsoSuppress ? " also suppressing" : "")", [number])
    guard
      call(
        "forget \(s.name)", [number],
        { c in
          store.forget(
            ForgetRequest(workspace: s.workspace, person: ref, alsoSuppress: alsoSuppress),
            actor: "privacy"
          ) { c($0.map { _ in () }) }
        }) != nil
    else { return }
    forgot(s, personIDSuppressed: alsoSuppress)
  }

  /// Suppresses one identifier of one or two live subjects of a workspace, forgetting them,
  /// with a reason that must leave with them (README, Erasure).
  func suppress() {
    let workspace = pick(emWorkspaces)
    let candidates = live.values.filter { $0.workspace == workspace }.map(\.number).sorted()
    guard !candidates.isEmpty else { return identifyPerson() }
    var chosen = [pick(candidates)]
    if candidates.count > 1, chance(30) {
      chosen.append(pick(candidates.filter { $0 != chosen[0] }))
    }
    var identifiers: [Identifier] = []
    var byPersonID: Set<Int> = []
    for n in chosen {
      let ref = pick(live[n]!.refs)
      var value = ref.value
      if case .email = ref, chance(50) { value = value.uppercased() }  // normalized first
      if case .personID = ref { byPersonID.insert(n) }
      identifiers.append(Identifier(kind: ref.kind, value: value))
    }
    let reason = "why\(next())x"
    note(
      "suppress \(identifiers.map { "\($0.kind):\($0.value)" }) reason \(reason), forgetting "
        + chosen.map { live[$0]!.name }.joined(separator: ", "), chosen)
    guard
      call(
        "suppress", chosen,
        { c in
          store.suppress(
            SuppressRequest(workspace: workspace, identifiers: identifiers, reason: reason),
            actor: "privacy"
          ) { c($0.map { _ in () }) }
        }) != nil
    else { return }
    for n in chosen {
      forgot(
        live[n]!, personIDSuppressed: byPersonID.contains(n),
        extra: [(reason, "suppression reason")])
    }
  }

  func compact() {
    note("compact", [])
    do {
      _ = try durable.compact()
    } catch {
      return fail("compact failed: \(error)")
    }
    compactions += 1
    erasedEverythingForgotten(snapshotIsNew: true)
  }

  func snapshot() {
    note("snapshot", [])
    do { _ = try durable.snapshot(force: chance(50)) } catch {
      fail("snapshot failed: \(error)")
    }
  }

  /// The retention pass subcenterd runs periodically: it starts a new segment when the
  /// active one is old enough (segments then end elsewhere than at compactions); nothing is
  /// old enough to expire.
  func retentionPass() {
    note("retention pass", [])
    do {
      try durable.retentionPass(rotateAfterMillis: Int64.random(in: 0...4_000, using: &rng))
    } catch {
      fail("retention pass failed: \(error)")
    }
  }

  /// Close and reopen, then the erasure check subcenterd runs after recovery; the store
  /// finds exactly the live subjects.
  func restart() {
    note("restart", [])
    durable.close()
    do {
      durable = try DurableStore.open(
        directory: directory.path, clock: clock, secret: emSecret, fsync: .none,
        truncateDamaged: false, log: { _ in }
      ).0
    } catch {
      return fail("reopen failed: \(error)")
    }
    restarts += 1
    checkStore()
    let compacted: Bool
    do { compacted = try durable.finishInterruptedErasure() != nil } catch {
      return fail("finishInterruptedErasure failed: \(error)")
    }
    erasedEverythingForgotten(snapshotIsNew: compacted)
  }

  // MARK: Checks

  /// Every forget so far has been compacted: check the files.
  func erasedEverythingForgotten(snapshotIsNew: Bool) {
    for i in forgotten.indices { forgotten[i].erased = true }
    checkFiles(snapshotIsNew: snapshotIsNew)
  }

  /// Reads every file of the data directory: no erased string in any; every string of
  /// every live subject in a log segment (each was written in a record no erasure may
  /// take), and, when a compaction has just written the snapshot, its identifiers in that
  /// one snapshot.
  func checkFiles(snapshotIsNew: Bool) {
    let names: [String]
    var files: [(name: String, bytes: [UInt8])] = []
    do {
      names = try fs.list(directory.path).sorted()
      for n in names { files.append((n, try fs.readFile(directory.path + "/" + n))) }
    } catch {
      return fail("cannot read the data directory: \(error)")
    }
    var found: [String] = []
    var subjects: [Int] = []
    for f in forgotten where f.erased {
      for file in files where contains(file.bytes, f.text) {
        found.append(
          "'\(f.text)' (\(f.what) of subject \(f.subject), forgotten at step \(f.forgottenAt)) "
            + "found in \(file.name)")
        subjects.append(f.subject)
      }
    }
    let segments = files.filter { $0.name.hasPrefix("wal-") }
    let snapshots = snapshotIsNew ? files.filter { $0.name.hasPrefix("snapshot-") } : []
    if snapshotIsNew && snapshots.count != 1 {
      found.append("\(snapshots.count) snapshots after a compaction: \(snapshots.map(\.name))")
    }
    for s in live.values.sorted(by: { $0.number < $1.number }) {
      for (text, what) in s.strings() where !segments.contains(where: { contains($0.bytes, text) })
      {
        found.append("'\(text)' (\(what) of live \(s.name), subject \(s.number)) in no log segment")
        subjects.append(s.number)
      }
      for (text, what) in s.strings(identifiersOnly: true)
      where snapshotIsNew && !snapshots.contains(where: { contains($0.bytes, text) }) {
        found.append(
          "'\(text)' (\(what) of live \(s.name), subject \(s.number)) not in the snapshot")
        subjects.append(s.number)
      }
    }
    if !found.isEmpty {
      fail(
        "after \(trace.last?.text ?? "?"), files \(names):\n"
          + found.prefix(12).joined(separator: "\n"), subjects: subjects)
    }
  }

  /// The store answers for every live subject, under every name it has, with the profile
  /// and entries of the model; a forgotten identifier names no one.
  func checkStore() {
    for s in live.values.sorted(by: { $0.number < $1.number }) {
      for ref in s.refs {
        do {
          let p = try store.profile(workspace: s.workspace, person: ref)
          let want = (s.personID ?? "", s.email ?? "", s.phone ?? "", s.anonymousIDs.sorted())
          let got = (p.personID, p.email, p.phone, p.anonymousIDs.sorted())
          if got != want {
            fail(
              "after a restart \(s.name) by \(ref) is \(got), the model \(want)",
              subjects: [s.number])
          }
        } catch {
          fail("after a restart \(s.name) is not found by \(ref): \(error)", subjects: [s.number])
        }
      }
      do {
        let prefs = try store.preferences(workspace: s.workspace, person: s.ref)
        let got = Dictionary(
          uniqueKeysWithValues: prefs.entries.map {
            ("\($0.channel)/\($0.topic)", "\($0.state) \($0.source)")
          })
        let want = s.entries.mapValues { "\($0.state) \($0.source)" }
        if got != want {
          fail(
            "after a restart \(s.name) has entries \(got), the model \(want)", subjects: [s.number])
        }
      } catch {
        fail("after a restart the preferences of \(s.name): \(error)", subjects: [s.number])
      }
    }
    for f in forgotten where f.what != "source" && f.what != "suppression reason" {
      let ref: PersonRef =
        switch f.what {
        case "email": .email(f.text)
        case "phone": .phone(f.text)
        default: .anonymousID(f.text)
        }
      for w in emWorkspaces {
        if let p = try? store.profile(workspace: w, person: ref) {
          fail(
            "after a restart \(w) finds \(ref) of forgotten subject \(f.subject): \(p)",
            subjects: [f.subject])
        }
      }
    }
    for f in forgottenNames
    where !live.values.contains(where: { $0.workspace == f.workspace && $0.ref == f.ref }) {
      if let p = try? store.profile(workspace: f.workspace, person: f.ref) {
        fail(
          "after a restart \(f.workspace) finds \(f.ref) of forgotten subject \(f.subject): \(p)",
          subjects: [f.subject])
      }
    }
  }

  // MARK: The run

  func run(steps: Int) {
    defer {
      durable.close()
      directory.remove()
    }
    while step < steps && !failed {
      step += 1
      clock.advance(by: Int64.random(in: 1...2_000, using: &rng))
      switch Int.random(in: 0..<100, using: &rng) {
      case 0..<17: identifyPerson()
      case 17..<24: identifyAnonymous()
      case 24..<32: attachAnonymousID()
      case 32..<66: setPreference()
      case 66..<76: forget()
      case 76..<80: suppress()
      case 80..<90: compact()
      case 90..<93: snapshot()
      case 93..<96: retentionPass()
      default: restart()
      }
    }
    if failed { return }
    step += 1
    compact()
    if failed { return }
    step += 1
    restart()
  }
}

/// Whether `text`'s bytes occur anywhere in `bytes` (memchr for the first byte, memcmp for
/// the rest: quick enough in a debug build; Glibc does not export memmem).
private func contains(_ bytes: [UInt8], _ text: String) -> Bool {
  let needle = Array(text.utf8)
  guard let first = needle.first, bytes.count >= needle.count else { return false }
  return bytes.withUnsafeBytes { h in
    needle.withUnsafeBytes { n in
      let base = h.baseAddress!
      let last = h.count - n.count  // the last offset the needle can start at
      var at = 0
      while at <= last {
        guard let hit = memchr(base + at, Int32(first), last - at + 1) else { return false }
        at = base.distance(to: UnsafeRawPointer(hit))
        if memcmp(base + at, n.baseAddress!, n.count) == 0 { return true }
        at += 1
      }
      return false
    }
  }
}

@Suite struct ErasureModelTests {
  /// Whatever order identifies, merges, attachments, preferences, forgets, suppressions,
  /// compactions, snapshots, retention passes and restarts come in, a compaction (or the
  /// erasure check after a restart) leaves none of a forgotten person's emails, phones,
  /// anonymous ids, sources or suppression reasons in any file of the data directory, and
  /// keeps every one of a live person's; after a restart the store finds the live persons,
  /// by every identifier, with their entries, and no forgotten one.
  @Test(arguments: [1, 2, 3, 4, 5] as [UInt64])
  func erasureLeavesNothingOfTheForgottenAndKeepsTheLiving(seed: UInt64) throws {
    let run = try ErasureModelRun(seed: seed)
    run.run(steps: 400)
    guard !run.failed else { return }
    #expect(run.compactions >= 20 && run.restarts >= 5, "seed \(seed): too few to prove much")
    #expect(run.forgotten.count >= 100, "seed \(seed): \(run.forgotten.count) strings forgotten")
  }
}
