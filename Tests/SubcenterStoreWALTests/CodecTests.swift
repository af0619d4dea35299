// Command ⇄ LogRecord and SnapshotRecord round trips: every command case, presence of
// optional values, free text byte for byte, and refusal of what is not a record.

import SubcenterCore
import Testing

@testable import SubcenterStore

/// One sample of every command case, with awkward values.
enum Samples {
  static let hashA = SuppressionHash(bytes: (0..<32).map { UInt8($0) })
  static let hashB = SuppressionHash(bytes: (0..<32).map { UInt8(255 - $0) })

  static let config = WorkspaceConfig(
    workspace: "acme", channels: ["email", "sms", "web.push"],
    topics: [
      Topic(id: "news", name: "Newsletter ✉️", description: "weekly", defaultState: .subscribed),
      Topic(id: "promo", defaultState: .unsubscribed),
    ],
    limits: [MessageLimit(channel: "sms", maxMessages: 3, windowSeconds: 86_400)],
    allowImportantOverride: true)

  static let commands: [Command] = [
    .configureWorkspace(.init(config: config, at: 1_700_000_000_000, actor: "admin-tool")),
    .configureWorkspace(.init(config: WorkspaceConfig(workspace: "empty"), at: 0, actor: "")),
    .identify(
      .init(
        workspace: "acme", person: .person("user-1"), creates: true, email: "jane@example.com",
        phone: "+33612345678", anonymousID: nil, at: 5, actor: "crm")),
    .identify(
      .init(
        workspace: "acme", person: .person("usér-2 ✓"), creates: false, email: "", phone: nil,
        anonymousID: "ajs-123", mergesProfile: true, at: -5, actor: "crm")),
    .identify(
      .init(
        workspace: "acme", person: .anonymous("anon-9"), creates: true, at: Int64.max,
        actor: "web")),
    .setPreference(
      .init(
        workspace: "acme", person: .person("user-1"), channel: "email", topic: "news",
        state: .unsubscribed, source: "one_click\u{0}with NUL", noticeVersion: "v3",
        at: 12, actor: "pc")),
    .setPreference(
      .init(
        workspace: "acme", person: .anonymous("anon-9"), channel: "", topic: "",
        state: .subscribed, source: "", noticeVersion: "", at: 13, actor: "")),
    .setGlobal(
      .init(
        workspace: "acme", person: .person("user-1"), unsubscribed: true, source: "support",
        at: 14, actor: "agent")),
    .setGlobal(
      .init(
        workspace: "acme", person: .person("user-1"), unsubscribed: false, source: "",
        at: 15, actor: "agent")),
    .recordSends(
      .init(
        workspace: "acme", channel: "sms",
        persons: [.person("a"), .anonymous("b"), .person("c")], at: 16)),
    .recordSends(.init(workspace: "acme", channel: "sms", persons: [], at: 17)),
    .override(
      .init(
        workspace: "acme", person: .person("user-1"), channel: "email", topic: "",
        allowed: true, reason: .overriddenImportant,
        detail: "message_id=m1; justification: \"password reset\"", at: 18, actor: "ops")),
    .override(
      .init(
        workspace: "acme", person: .person("user-1"), channel: "sms", topic: "promo",
        allowed: false, reason: .messageLimitReached, detail: "", at: 19, actor: "ops")),
    .forget(.init(workspace: "acme", person: .person("user-1"), at: 20, actor: "dpo")),
    .forget(
      .init(
        workspace: "acme", person: .anonymous("anon-9"), suppress: [hashA, hashB], at: 21,
        actor: "dpo")),
    .suppress(
      .init(
        workspace: "acme", hashes: [hashA], forget: [.person("x"), .anonymous("y")],
        reason: "complaint", at: 22, actor: "dpo")),
    .suppress(.init(workspace: "acme", hashes: [], forget: [], reason: "", at: 23, actor: "")),
    .unsuppress(.init(workspace: "acme", hashes: [hashB, hashA], at: 24, actor: "dpo")),
    .expireAnonymous(.init(workspace: "acme", profiles: ["anon-1", "anon-2"], at: 25)),
    .expireAnonymous(.init(workspace: "acme", profiles: [], at: 26)),
  ]

  /// The case of a command (exhaustive: a new case must get a sample).
  static func caseName(_ c: Command) -> String {
    switch c {
    case .configureWorkspace: "configureWorkspace"
    case .identify: "identify"
    case .setPreference: "setPreference"
    case .setGlobal: "setGlobal"
    case .recordSends: "recordSends"
    case .override: "override"
    case .forget: "forget"
    case .suppress: "suppress"
    case .unsuppress: "unsuppress"
    case .expireAnonymous: "expireAnonymous"
    }
  }

  /// A small command numbered `i`, for log tests.
  static func command(_ i: Int) -> Command {
    .setPreference(
      .init(
        workspace: "w", person: .person("person-\(i)"), channel: "email", topic: "t\(i % 7)",
        state: i % 2 == 0 ? .subscribed : .unsubscribed, source: "test",
        noticeVersion: "", at: Int64(i), actor: "tester"))
  }
}

@Suite struct LogRecordCodecTests {
  @Test func everyCommandCaseRoundTrips() throws {
    #expect(Set(Samples.commands.map(Samples.caseName)).count == 10)
    for (i, c) in Samples.commands.enumerated() {
      let bytes = LogRecordCodec.encode(c)
      let (seq, back) = try LogRecordCodec.decode(bytes[...])
      #expect(seq == 0)
      #expect(back == c, "sample \(i)")
      let full = LogRecordCodec.encode(c, seq: UInt64(1000 + i))
      let decoded = try LogRecordCodec.decode(full[...])
      #expect(decoded.seq == UInt64(1000 + i))
      #expect(decoded.command == c)
      var handed: [Command] = []
      try LogRecordCodec.withCommand(in: full[...]) { handed.append($0) }
      #expect(handed == [c], "sample \(i)")
    }
    // An erased record holds no command to hand over.
    try LogRecordCodec.withCommand(in: LogRecordCodec.erased(seq: 77)[...]) { c in
      Issue.record("an erased record handed \(c)")
    }
  }

  /// A record holding suppression hashes carries the secret check it is given (and still
  /// decodes to its command); other records never do.
  @Test func recordsWithSuppressionHashesNameTheSecret() throws {
    let check = [UInt8](repeating: 7, count: 16)
    for c in Samples.commands {
      let bytes = LogRecordCodec.encode(c, seq: 9, secretCheck: check)
      #expect(try LogRecordCodec.decode(bytes[...]).command == c)
      let carried = try LogRecordCodec.secretCheck(in: bytes[...])
      #expect(carried == (LogRecordCodec.holdsSuppressionHashes(c) ? check : nil), "\(c)")
      #expect(try LogRecordCodec.secretCheck(in: LogRecordCodec.encode(c)[...]) == nil)
    }
    #expect(Samples.commands.contains(where: LogRecordCodec.holdsSuppressionHashes))
  }

  /// The records written field by field are exactly what protobuf-c packs.
  @Test func directEncodingEqualsProtobufC() {
    let long = String(repeating: "é", count: 100)
    var commands = Samples.commands
    for (i, key) in [PersonKey.person(""), .anonymous(long), .person("p")].enumerated() {
      commands.append(
        .setPreference(
          .init(
            workspace: long, person: key, channel: i == 0 ? long : "", topic: "t",
            state: i == 1 ? .unspecified : .subscribed, source: long, noticeVersion: "n",
            at: i == 2 ? Int64.min : -1, actor: long)))
      commands.append(
        .setGlobal(
          .init(
            workspace: "", person: key, unsubscribed: i == 1, source: long, at: 0, actor: "")))
    }
    var direct = 0
    for c in commands {
      for seq: UInt64 in [0, 1, 300, .max] {
        guard let bytes = LogRecordCodec.encodeDirectly(c, seq: seq) else { continue }
        direct += 1
        #expect(bytes == LogRecordCodec.encodeWithProtobufC(c, seq: seq), "\(c)")
      }
    }
    #expect(direct == 40)
  }

  /// Fields written past the writer's room (16 bytes, or more than its block of zeros
  /// copied in at once, and it grows) equal the same fields encoded byte by byte, after the
  /// reserved zeros; `finish()` hands over exactly what `bytes` shows.
  @Test(arguments: [0, 3_000]) func writerGrowsPastItsRoom(capacity: Int) {
    var expected: [UInt8] = [0, 0, 0, 0, 0]
    func varint(_ value: UInt64) {
      var v = value
      while v >= 0x80 {
        expected.append(UInt8(truncatingIfNeeded: v) | 0x80)
        v >>= 7
      }
      expected.append(UInt8(v))
    }
    var w = WireWriter(capacity: capacity, reserving: 5)
    for i in 0..<300 {
      let text = String(repeating: "é", count: i % 70)  // 0 to 138 bytes
      w.string(1, text)
      if !text.isEmpty {
        varint(1 << 3 | 2)
        varint(UInt64(text.utf8.count))
        expected += Array(text.utf8)
      }
      let n = Int64(i) * 1_000_003 - 150_000_000  // negative ones take ten bytes
      w.int(2, n)
      if n != 0 {
        varint(2 << 3)
        varint(UInt64(bitPattern: n))
      }
      w.bool(3, i % 3 == 0)
      if i % 3 == 0 { expected += [3 << 3, 1] }
      w.varint(UInt64(i) << 20)
      varint(UInt64(i) << 20)
    }
    #expect(w.count == expected.count)
    #expect(w.bytes == expected)
    #expect(w.finish() == expected)
  }

  /// A nested message written in place equals one written apart and copied in, at the
  /// lengths where its length prefix grows a byte.
  @Test func nestedMessageInPlaceEqualsCopied() {
    for n in [0, 1, 124, 125, 126, 127, 128, 200, 16_379, 16_380, 16_381, 16_384, 70_000] {
      let text = String(repeating: "x", count: n)
      var apart = WireWriter()
      apart.string(1, text)
      var copied = WireWriter(reserving: 5)
      copied.int(1, 7)
      copied.message(5, apart)
      copied.bool(2, true)
      var inPlace = WireWriter(reserving: 5)
      inPlace.int(1, 7)
      inPlace.message(5) { $0.string(1, text) }
      inPlace.bool(2, true)
      #expect(inPlace.bytes == copied.bytes, "string of \(n) bytes")
    }
  }

  /// Fields written through a cursor (`withCursor`) equal those written one by one, at the
  /// lengths where a nested message's length prefix grows a byte.
  @Test func cursorEqualsWriter() {
    for n in [0, 1, 124, 125, 126, 127, 128, 200, 16_379, 16_380, 16_381, 16_384, 70_000] {
      let text = String(repeating: "x", count: n)
      var one = WireWriter(reserving: 5)
      one.int(1, -7)
      one.message(5) {
        $0.string(1, text)
        $0.bool(2, true)
      }
      one.string(3, "é")
      one.bool(4, false)
      one.int(6, 0)
      let bound = 7 * WireCursor.fieldRoom + n + 2
      var cursor = WireWriter(capacity: bound, reserving: 5)
      cursor.withCursor(bound: bound) { w in
        w.int(1, -7)
        w.message(5) {
          $0.string(1, text)
          $0.bool(2, true)
        }
        w.string(3, "é")
        w.bool(4, false)
        w.int(6, 0)
      }
      #expect(cursor.count == one.count)
      #expect(cursor.finish() == one.finish(), "string of \(n) bytes")
    }
  }

  /// A frame with a seq (and a seq count over one) holds field 1 (and field 4) as varints
  /// ahead of the body, at every varint length.
  @Test func framesWithSequence() {
    func varint(_ value: UInt64) -> [UInt8] {
      var v = value
      var out: [UInt8] = []
      while v >= 0x80 {
        out.append(UInt8(truncatingIfNeeded: v) | 0x80)
        v >>= 7
      }
      return out + [UInt8(v)]
    }
    let body: [UInt8] = [0x12, 0x01, 0x61]
    for seq: UInt64 in [0, 1, 127, 128, 300, 1 << 53, .max] {
      for count: UInt64 in [1, 2, 200, .max] {
        var buf: [UInt8] = [9, 9]
        body.withUnsafeBytes {
          RecordFrame.append(sequence: seq, count: count, body: $0, to: &buf)
        }
        let payload = [0x08] + varint(seq) + (count > 1 ? [0x20] + varint(count) : []) + body
        #expect(Array(buf[10...]) == payload, "seq \(seq), count \(count)")
        buf.withUnsafeBytes { b in
          #expect(
            RecordFrame.parse(b, at: 2) == .record(payload: 10..<buf.count, next: buf.count))
        }
      }
    }
  }

  /// A writer in a reused buffer (`init(reusing:)`, a sent answer's) writes the bytes a new
  /// one writes, its reserved prefix zeroed, whatever the buffer held, and grows past it.
  @Test func writerInReusedBufferEqualsNewOne() {
    func write(_ w: inout WireWriter) {
      w.string(1, "yy")
      w.int(2, -3)
      w.string(3, String(repeating: "z", count: 1500))
    }
    for old in [[], [UInt8](repeating: 0xAB, count: 3), [UInt8](repeating: 0xCD, count: 900)] {
      var kept = old
      kept.reserveCapacity(1000)
      var reused = WireWriter(reusing: kept, capacity: 10, reserving: 5)
      var fresh = WireWriter(capacity: 10, reserving: 5)
      write(&reused)
      write(&fresh)
      #expect(reused.finish() == fresh.finish(), "a buffer of \(old.count) bytes")
    }
  }

  /// Records read field by field read as protobuf-c reads them: every sample, every
  /// prefix of the fast ones (both refuse, or both read the same), reordered fields.
  @Test func directDecodingEqualsProtobufC() throws {
    /// The command `withCommand` hands over (nil: none; nil nil: it threw).
    func handed(_ bytes: [UInt8]) -> Command?? {
      var got: Command?
      do {
        try LogRecordCodec.withCommand(in: bytes[...]) { got = $0 }
      } catch {
        return nil
      }
      return .some(got)
    }
    func same(_ bytes: [UInt8]) -> Bool {
      let a = try? LogRecordCodec.decode(bytes[...])
      let b = try? LogRecordCodec.decodeWithProtobufC(bytes[...])
      return a?.seq == b?.seq && a?.command == b?.command && (a == nil) == (b == nil)
        && handed(bytes) == a.map(\.command)
    }
    var direct = 0
    for c in Samples.commands {
      let bytes = LogRecordCodec.encode(c, seq: 77)
      var fast: (seq: UInt64, command: Command)?
      let read = try bytes.withUnsafeBytes { raw in
        try LogRecordCodec.decodeDirectly(raw) { fast = ($0, $1) }
      }
      #expect(read == (fast != nil))
      if let fast {
        direct += 1
        #expect(fast.seq == 77 && fast.command == c)
        for n in 0..<bytes.count { #expect(same(Array(bytes[..<n])), "\(c) cut at \(n)") }
      }
      #expect(same(bytes))
    }
    #expect(direct == 4)
    // Fields in another order, an unknown field, and a person key given twice.
    var w = WireWriter()
    w.string(3, "actor")
    w.int(99, 5)
    var m = WireWriter()
    m.int(5, Int64(PreferenceState.unsubscribed.rawValue))
    m.string(4, "news")
    m.message(2) { $0.string(1, "first") }
    m.message(2) { $0.string(2, "anon") }
    m.string(1, "acme")
    w.message(12, m)
    w.int(1, 9)
    let record = try LogRecordCodec.decode(w.bytes[...])
    #expect(record.seq == 9)
    #expect(
      record.command
        == .setPreference(
          .init(
            workspace: "acme", person: .anonymous("anon"), channel: "", topic: "news",
            state: .unsubscribed, source: "", noticeVersion: "", at: 0, actor: "actor")))
    #expect(same(w.bytes))
  }

  @Test func optionalIdentifiersKeepPresence() throws {
    for email in [nil, "", "a@b.c"] as [String?] {
      for phone in [nil, "", "+15555550100"] as [String?] {
        let c = Command.identify(
          .init(
            workspace: "w", person: .person("p"), creates: false, email: email, phone: phone,
            anonymousID: email, at: 1, actor: "x"))
        #expect(try LogRecordCodec.decode(LogRecordCodec.encode(c)[...]).command == c)
      }
    }
  }

  @Test func theWritersSeqPrefixDecodes() throws {
    // What the log writer stores: field 1 (seq) in front of the record without a seq.
    let c = Samples.commands[5]
    var framed: [UInt8] = []
    let body = LogRecordCodec.encode(c)
    for seq: UInt64 in [1, 127, 128, 300, UInt64(UInt32.max) + 7, UInt64.max] {
      framed.removeAll()
      RecordFrame.append(LogRecordCodec.encode(c, seq: seq), to: &framed)
      let payload = framed[RecordFrame.headerSize...]
      #expect(WALSegment.sequence(of: payload) == seq)
      // The seq alone then the rest, as the writer builds it, reads the same.
      var manual: [UInt8] = [0x08]
      var v = seq
      while v >= 0x80 {
        manual.append(UInt8(truncatingIfNeeded: v) | 0x80)
        v >>= 7
      }
      manual.append(UInt8(v))
      manual += body
      #expect(try LogRecordCodec.decode(manual[...]).seq == seq)
      #expect(try LogRecordCodec.decode(manual[...]).command == c)
    }
  }

  @Test func refusesWhatIsNotARecord() {
    for garbage: [UInt8] in [[], [0x08, 0x01], [0xFF, 0xFF, 0xFF], [0x52, 0x05, 1, 2]] {
      #expect(throws: StorageError.self) { try LogRecordCodec.decode(garbage[...]) }
    }
    // A hash that is not 32 bytes: LogRecord { unsuppress (18) { workspace (1) "w",
    // hashes (2) 31 bytes } }.
    let inner: [UInt8] = [0x0A, 0x01, 0x77, 0x12, 31] + [UInt8](repeating: 7, count: 31)
    let bad: [UInt8] = [0x92, 0x01, UInt8(inner.count)] + inner
    do {
      _ = try LogRecordCodec.decode(bad[...])
      Issue.record("a 31-byte hash decoded")
    } catch {
      #expect(error.kind == .damaged)
      #expect(error.message.contains("not 32"))
    }
    // The same with 32 bytes decodes.
    let good: [UInt8] =
      [0x92, 0x01, UInt8(inner.count + 1), 0x0A, 0x01, 0x77, 0x12, 32]
      + [UInt8](repeating: 7, count: 32)
    #expect(throws: Never.self) { try LogRecordCodec.decode(good[...]) }
  }

  /// A record kind this version does not know (a newer version's) is refused as damage,
  /// the message saying it may be a newer version's: LogRecord { seq 1, command 22 {} },
  /// SnapshotRecord { 9 {} }.
  @Test func anUnknownRecordKindMayBeANewerVersions() {
    let log: [UInt8] = [0x08, 0x01, 0xB2, 0x01, 0x00]
    do {
      _ = try LogRecordCodec.decode(log[...])
      Issue.record("an unknown log record decoded")
    } catch {
      #expect(error.kind == .damaged && error.message.contains("newer subcenterd"))
    }
    let snapshot: [UInt8] = [0x4A, 0x00]
    do {
      _ = try SnapshotRecordCodec.decode(snapshot[...])
      Issue.record("an unknown snapshot record decoded")
    } catch {
      #expect(error.kind == .damaged && error.message.contains("newer subcenterd"))
    }
  }
}

@Suite struct SnapshotRecordCodecTests {
  static func person() -> Person {
    Person(
      key: .person("user-1"), email: "jane@example.com", phone: "+33612345678",
      anonymousIDs: ["a1", "a2"], createdAt: 100, updatedAt: 200,
      global: GlobalFlag(unsubscribed: true, updatedAt: 150, source: "support"),
      entries: [
        PreferenceRecord(
          channel: 1, topic: 0, state: .unsubscribed, updatedAt: 120, source: "pc",
          noticeVersion: "v1"),
        PreferenceRecord(channel: 2, topic: 3, state: .subscribed, updatedAt: 130),
      ],
      history: [
        HistoryRecord(seq: 1, at: 100, action: .identify, actor: "crm"),
        HistoryRecord(
          seq: 2, at: 120, action: .unsubscribe, channel: 1, source: "pc", actor: "web",
          detail: "notice_version: v1"),
        HistoryRecord(seq: 3, at: 150, action: .unsubscribeAll, source: "support", actor: "a"),
      ],
      nextHistorySeq: 4,
      sends: [SendRecord(channel: 2, at: 140), SendRecord(channel: 2, at: 160)])
  }

  @Test func recordsRoundTrip() throws {
    let workspace = try Workspace(Samples.config)
    var anonymous = Person(key: .anonymous("anon-1"), at: 7)
    anonymous.setGlobal(unsubscribed: false, source: "", at: 8, actor: "")
    let records: [SnapshotRecord] = [
      .workspace(WorkspaceSnapshot(workspace)),
      .workspace(WorkspaceSnapshot(workspace, lastEventSeq: 1 << 40 | 7)),
      .person(workspace: "acme", Self.person()),
      .person(workspace: "acme", anonymous),
      .person(workspace: "acme", Person(key: .person("bare"), at: 0)),
      .suppressions(workspace: "acme", [Samples.hashA, Samples.hashB]),
      .suppressions(workspace: "acme", []),
      .secretCheck(Array(0..<16)),
    ]
    for r in records {
      #expect(try SnapshotRecordCodec.decode(SnapshotRecordCodec.encode(r)[...]) == r)
    }
  }

  @Test func workspaceNumberingIsRestored() throws {
    // Numbers given by an older configuration survive a reconfiguration that drops names.
    let first = try Workspace(
      WorkspaceConfig(
        workspace: "w", channels: ["email", "fax", "sms"],
        topics: [
          Topic(id: "old", defaultState: .subscribed),
          Topic(id: "news", defaultState: .unsubscribed),
        ]))
    let second = try Workspace(
      WorkspaceConfig(
        workspace: "w", channels: ["sms", "push"],
        topics: [Topic(id: "news", defaultState: .subscribed)]),
      previous: first)
    let snapshot = WorkspaceSnapshot(second)
    let decoded = try SnapshotRecordCodec.decode(
      SnapshotRecordCodec.encode(.workspace(snapshot))[...])
    guard case .workspace(let back) = decoded else {
      Issue.record("not a workspace")
      return
    }
    let restored = try back.restore()
    #expect(restored.config == second.config)
    #expect(restored.channelNames == second.channelNames)
    #expect(restored.topicNames == second.topicNames)
    #expect(restored.channels == second.channels)
    #expect(restored.topics == second.topics)
    #expect(restored.channelID("fax") == second.channelID("fax"))
    #expect(restored.isConfigured(channel: second.channelID("fax")!) == false)

    var broken = snapshot
    broken.channelNames[0] = "x"
    #expect(throws: StorageError.self) { try broken.restore() }
    broken = snapshot
    broken.channelNames.append("NOT VALID")
    #expect(throws: StorageError.self) { try broken.restore() }
  }

  @Test func largeSuppressionSetsAreSplit() {
    var set = Set<SuppressionHash>()
    for i in 0..<(SnapshotRecord.suppressionsPerRecord * 2 + 5) {
      var b = [UInt8](repeating: 0, count: 32)
      b[0] = UInt8(i & 0xFF)
      b[1] = UInt8(i >> 8)
      set.insert(SuppressionHash(bytes: b))
    }
    let records = SnapshotRecord.suppressions(workspace: "w", set: set)
    #expect(records.count == 3)
    var back = Set<SuppressionHash>()
    for case .suppressions(_, let hashes) in records { back.formUnion(hashes) }
    #expect(back == set)
    #expect(SnapshotRecord.suppressions(workspace: "w", set: []).isEmpty)
  }

  @Test func refusesWhatIsNotARecord() {
    #expect(throws: StorageError.self) { try SnapshotRecordCodec.decode([][...]) }
    #expect(throws: StorageError.self) { try SnapshotRecordCodec.decode([0xFF, 0x01][...]) }
  }
}
