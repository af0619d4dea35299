// Merging an anonymous profile into a person (SPEC §3 Identify), the anonymous-profile
// TTL (SPEC §1), and the history details commands write.

extension Person {
  /// Merges an anonymous profile into this person: per key the later entry wins by set
  /// time (a tie goes to this person); the later global flag wins (a tie goes to this
  /// person); histories are joined in time order (the profile's entries get new `seq`s
  /// after this person's, and in the merge's millisecond come before this person's);
  /// counted sends are joined; the anonymous ids stay attached.
  /// Ends with a `merge` history entry at `at`.
  public mutating func merge(anonymous other: Person, at: Int64, actor: String) {
    for e in other.entries {
      if let mine = entry(channel: e.channel, topic: e.topic), mine.updatedAt >= e.updatedAt {
        continue
      }
      upsert(e)
    }
    if let g = other.global, global == nil || g.updatedAt > global!.updatedAt {
      global = g
    }
    // In the merge's millisecond, this person's entries (those of the Identify merging,
    // which creates or updates it) follow the profile's: they were made after them.
    var joined = history.filter { $0.at < at }
    joined.reserveCapacity(history.count + other.history.count + 1)
    for var r in other.history + history.filter({ $0.at >= at }) {
      r.seq = nextHistorySeq
      nextHistorySeq &+= 1
      joined.append(r)
    }
    joined.sort { $0.precedes($1) }
    history = joined
    if !other.sends.isEmpty {
      var s = sends + other.sends
      s.sort { $0.at < $1.at }
      sends = s
    }
    for a in other.anonymousIDs where !anonymousIDs.contains(where: { sameBytes($0, a) }) {
      anonymousIDs.append(a)
    }
    updatedAt = at
    appendHistory(action: .merge, actor: actor, detail: "merged an anonymous profile", at: at)
  }
}

/// Anonymous profiles not merged or changed for the TTL are removed (SPEC §1).
public enum AnonymousTTL {
  /// True when an anonymous profile last changed at `updatedAt` has expired at `now`:
  /// `now - updatedAt >= ttl` (a profile exactly one TTL old is removed), or `updatedAt` is
  /// a TTL or more ahead of `now`: changed while the clock was that far ahead (set back
  /// since), it would otherwise stay for as long as the clock had been wrong (a year, for
  /// a clock a year ahead). A profile less than a TTL ahead goes a TTL after its date, so
  /// none stays longer than two TTLs.
  public static func isExpired(updatedAt: Int64, now: Int64, ttlMillis: Int64) -> Bool {
    now - updatedAt >= ttlMillis || updatedAt - now >= ttlMillis
  }

  /// The keys of the expired anonymous profiles among `persons` (identified persons never
  /// expire).
  public static func expired<S: Sequence<Person>>(_ persons: S, now: Int64, ttlMillis: Int64)
    -> [PersonKey]
  {
    persons.filter {
      $0.isAnonymous && isExpired(updatedAt: $0.updatedAt, now: now, ttlMillis: ttlMillis)
    }.map(\.key)
  }
}

/// History details. None holds an identifier's value (history is PII-free apart from
/// what callers put in free-text fields).
public enum HistoryDetail {
  /// An Identify entry: what was created or set.
  public static func identify(created: Bool, fields: [String]) -> String {
    if created {
      return fields.isEmpty ? "created" : "created with \(fields.joined(separator: ", "))"
    }
    return "set \(fields.joined(separator: ", "))"
  }

  /// An override entry: what the override overrode (an unprefixed reason such as
  /// `GLOBAL_UNSUBSCRIBED`, marked when it blocked nothing, so an audit can count the
  /// overrides that let a message through) or why it was refused, then the message and the
  /// justification. The outcome comes first and the caller's free text last, so a
  /// justification such as `x; refused: SUPPRESSED` cannot be read as the outcome.
  public static func override(
    messageID: String, justification: String, outcome: DecisionOutcome, overridesAllowed: Bool
  ) -> String {
    let tail = "; message_id: \(messageID); justification: \(justification)"
    if outcome.reason == .overriddenImportant {
      let nothing = outcome.underlying == .subscribed ? " (nothing to override: allowed)" : ""
      return "overrode: \(outcome.underlying.name)" + nothing + tail
    }
    let disabled = overridesAllowed ? "" : " (overrides are disabled in this workspace)"
    if outcome.allowed {
      return "allowed without override: \(outcome.reason.name)" + disabled + tail
    }
    return "refused: \(outcome.reason.name)" + disabled + tail
  }
}
