// Threads against one store: one winner per contested identifier, and many threads
// changing and checking the same persons ending in the last logged change per key (and a
// replay of the log reproducing the state exactly).

import Dispatch
import SubcenterCore
import SubcenterStore
import Synchronization
import Testing

/// A small deterministic generator (SplitMix64).
struct SplitMix: RandomNumberGenerator {
  var state: UInt64
  init(seed: UInt64) { state = seed &* 0x9E37_79B9_7F4A_7C15 &+ 1 }
  mutating func next() -> UInt64 {
    state &+= 0x9E37_79B9_7F4A_7C15
    var z = state
    z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
    z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
    return z ^ (z >> 31)
  }
}

@Suite struct ConcurrencyTests {
  @Test func oneWinnerPerIdentifier() throws {
    let f = Fixture()
    for round in 0..<40 {
      let wins = Mutex<[String]>([])
      let conflicts = Atomic<Int>(0)
      DispatchQueue.concurrentPerform(iterations: 12) { i in
        let personID = "p\(round)-\(i)"
        // Rounds alternate: same email; same phone; same anonymous id.
        let req: IdentifyRequest =
          switch round % 3 {
          case 0:
            IdentifyRequest(workspace: "acme", personID: personID, email: "race\(round)@x.com")
          case 1:
            IdentifyRequest(
              workspace: "acme", personID: personID, phone: "+1415555\(String(1000 + round))")
          default:
            IdentifyRequest(workspace: "acme", personID: personID, anonymousID: "cookie-\(round)")
          }
        do {
          _ = try sync { f.store.identify(req, actor: "t", completion: $0) }
          wins.withLock { $0.append(personID) }
        } catch {
          #expect((error as? CoreError)?.kind == .alreadyExists)
          conflicts.add(1, ordering: .relaxed)
        }
      }
      let winners = wins.withLock { $0 }
      #expect(winners.count == 1, "round \(round)")
      #expect(conflicts.load(ordering: .relaxed) == 11)
      let ref: PersonRef =
        switch round % 3 {
        case 0: .email("race\(round)@x.com")
        case 1: .phone("+1415555\(String(1000 + round))")
        default: .anonymousID("cookie-\(round)")
        }
      #expect(try f.profile(ref).personID == winners.first)
    }
    #expect(f.store.persons(in: "acme").count == 40)
  }

  @Test func lastChangePerKeyWins() throws {
    let f = Fixture()
    let people = 12
    for i in 0..<people { try f.identify("p\(i)", email: "p\(i)@x.com") }
    let channels = ["", "email", "sms"]
    let topics = ["", "news", "promo"]
    let unexpected = Atomic<Int>(0)
    DispatchQueue.concurrentPerform(iterations: 8) { t in
      var rng = SplitMix(seed: UInt64(t))
      func ref() -> PersonRef {
        let p = Int(rng.next() % UInt64(people))
        return rng.next() % 2 == 0 ? .personID("p\(p)") : .email("p\(p)@x.com")
      }
      for k in 0..<1500 {
        if k % 100 == 0 { f.clock.advance(by: 700) }
        do {
          switch rng.next() % 7 {
          case 0, 1, 2:
            var c = channels[Int(rng.next() % 3)]
            let topic = topics[Int(rng.next() % 3)]
            if c.isEmpty && topic.isEmpty { c = "push" }
            try f.set(
              ref(), rng.next() % 2 == 0 ? .subscribed : .unsubscribed, channel: c, topic: topic,
              source: "t\(t)")
          case 3:
            try f.global(ref(), unsubscribed: rng.next() % 3 == 0)
          case 4:
            _ = try f.check(ref(), topic: topics[Int(rng.next() % 3)], record: rng.next() % 2 == 0)
          case 5:
            _ = try f.batch((0..<16).map { _ in ref() }, record: rng.next() % 2 == 0)
          default:
            _ = try f.preferences(ref())
          }
        } catch {
          unexpected.add(1, ordering: .relaxed)
        }
      }
    }
    #expect(unexpected.load(ordering: .relaxed) == 0)

    // The state per key is the last logged change for that key.
    var expected: [PersonKey: [String: PreferenceState]] = [:]
    var expectedGlobal: [PersonKey: Bool] = [:]
    for c in f.log.commands {
      switch c {
      case .setPreference(let s):
        expected[s.person, default: [:]]["\(s.channel)/\(s.topic)"] = s.state
      case .setGlobal(let g): expectedGlobal[g.person] = g.unsubscribed
      default: break
      }
    }
    for i in 0..<people {
      let key = PersonKey.person("p\(i)")
      let prefs = try f.preferences(.personID("p\(i)"))
      var actual: [String: PreferenceState] = [:]
      for e in prefs.entries { actual["\(e.channel)/\(e.topic)"] = e.state }
      #expect(actual == (expected[key] ?? [:]), "p\(i)")
      #expect(prefs.globalUnsubscribed == (expectedGlobal[key] ?? false), "p\(i)")
    }
    // Replaying the log gives exactly the same persons (history and counters included).
    let copy = try f.replayed()
    #expect(copy.persons(in: "acme") == f.store.persons(in: "acme"))
  }
}
