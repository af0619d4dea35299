// Normalization and validation at every limit: each at its edge and one past it, with the
// field named as the proto names it.

import SubcenterCore
import Testing

private func field(_ body: () throws(CoreError) -> Void) -> String? {
  do {
    try body()
    return nil
  } catch {
    #expect(error.kind == .invalidArgument)
    return error.field
  }
}

private func str(_ n: Int, _ c: Character = "a") -> String { String(repeating: c, count: n) }

@Suite struct ValidationTests {
  @Test func ids() {
    #expect(field { () throws(CoreError) in try Validate.workspaceID(str(64)) } == nil)
    #expect(field { () throws(CoreError) in try Validate.workspaceID(str(65)) } == "workspace")
    #expect(field { () throws(CoreError) in try Validate.workspaceID("") } == "workspace")
    #expect(field { () throws(CoreError) in try Validate.workspaceID("a_b-9") } == nil)
    #expect(field { () throws(CoreError) in try Validate.workspaceID("a.b") } == "workspace")
    #expect(field { () throws(CoreError) in try Validate.workspaceID("Ab") } == "workspace")
    #expect(
      field { () throws(CoreError) in try Validate.channelOrTopicID("in_app.v2-x", field: "channel")
      } == nil)
    #expect(
      field { () throws(CoreError) in try Validate.channelOrTopicID(str(65), field: "topic") }
        == "topic")
    #expect(
      field { () throws(CoreError) in try Validate.channelOrTopicID("a b", field: "topic") }
        == "topic")
  }

  @Test func personAndAnonymousIDs() {
    #expect(field { () throws(CoreError) in try Validate.personID(str(256)) } == nil)
    #expect(field { () throws(CoreError) in try Validate.personID(str(257)) } == "person_id")
    #expect(field { () throws(CoreError) in try Validate.personID("") } == "person_id")
    // 2-byte characters: 128 of them is 256 bytes, 129 is 258.
    #expect(field { () throws(CoreError) in try Validate.personID(str(128, "é")) } == nil)
    #expect(field { () throws(CoreError) in try Validate.personID(str(129, "é")) } == "person_id")
    #expect(field { () throws(CoreError) in try Validate.personID("ok ☺ id") } == nil)
    for bad in ["a\u{0}b", "a\u{1F}", "\u{7F}", "x\u{80}", "x\u{9F}y", "tab\there"] {
      #expect(
        field { () throws(CoreError) in try Validate.personID(bad) } == "person_id",
        "\(bad.unicodeScalars.map(\.value))")
    }
    // NBSP is not a control character.
    #expect(field { () throws(CoreError) in try Validate.personID("x\u{A0}y") } == nil)
    #expect(field { () throws(CoreError) in try Validate.anonymousID(str(256)) } == nil)
    #expect(field { () throws(CoreError) in try Validate.anonymousID(str(257)) } == "anonymous_id")
    #expect(field { () throws(CoreError) in try Validate.anonymousID("a\u{85}") } == "anonymous_id")
  }

  @Test func emails() throws {
    #expect(try Validate.email("  Jane.Doe@Example.COM \n") == "jane.doe@example.com")
    #expect(try Validate.email("\u{0B}\tA@B\r") == "a@b")
    #expect(try Validate.email("already@normal.com") == "already@normal.com")
    // Unicode: trimmed of Unicode whitespace and lower-cased as Unicode.
    #expect(try Validate.email("\u{3000}ÜNÏ@Exämple.COM\u{A0}") == "ünï@exämple.com")
    #expect(field { () throws(CoreError) in _ = try Validate.email("ü\u{A0}x@y.z") } == "email")
    #expect(field { () throws(CoreError) in _ = try Validate.email("ü@y\u{85}z") } == "email")
    // Joiners are part of words and emoji sequences: kept (and so found again).
    #expect(try Validate.email("می\u{200C}خواهم@example.ir") == "می\u{200C}خواهم@example.ir")
    #expect(try Validate.email("👩\u{200D}💻@example.com") == "👩\u{200D}💻@example.com")
    let local = str(64)
    let edge = local + "@" + str(254 - 65)
    #expect(edge.utf8.count == 254)
    #expect(try Validate.email(edge) == edge)
    #expect(field { () throws(CoreError) in _ = try Validate.email(edge + "b") } == "email")
    // Trimming happens before the length check.
    #expect(try Validate.email("   " + edge + "   ") == edge)
    for bad in [
      "", "   ", "jane", "@example.com", "jane@", "a@b@c", "ja ne@x.com", "jane@x\t.com",
      "a\u{0}@b",
    ] {
      #expect(
        field { () throws(CoreError) in _ = try Validate.email(bad, field: "person.email") }
          == "person.email", "\(bad)")
    }
  }

  @Test func phones() {
    #expect(field { () throws(CoreError) in try Validate.phone("+12345678") } == nil)
    #expect(field { () throws(CoreError) in try Validate.phone("+1234567") } == "phone")
    #expect(field { () throws(CoreError) in try Validate.phone("+123456789012345") } == nil)
    #expect(field { () throws(CoreError) in try Validate.phone("+1234567890123456") } == "phone")
    for bad in ["12345678", "+1 2345678", "+1-234-5678", "+", "", "+12345678a", "++12345678"] {
      #expect(field { () throws(CoreError) in try Validate.phone(bad) } == "phone", "\(bad)")
    }
  }

  @Test func freeText() {
    #expect(
      field { () throws(CoreError) in
        try Validate.maxBytes(str(128), Limits.sourceBytes, field: "source")
      } == nil)
    #expect(
      field { () throws(CoreError) in
        try Validate.maxBytes(str(129), Limits.sourceBytes, field: "source")
      } == "source")
    #expect(
      field { () throws(CoreError) in try Validate.maxBytes("", Limits.sourceBytes, field: "source")
      } == nil)
    #expect(
      field { () throws(CoreError) in
        try Validate.requiredBytes(str(1024), Limits.justificationBytes, field: "justification")
      } == nil)
    #expect(
      field { () throws(CoreError) in
        try Validate.requiredBytes(str(1025), Limits.justificationBytes, field: "justification")
      } == "justification")
    #expect(
      field { () throws(CoreError) in
        try Validate.requiredBytes("", Limits.justificationBytes, field: "justification")
      } == "justification")
    #expect(field { () throws(CoreError) in try Validate.messageID(str(256)) } == nil)
    #expect(field { () throws(CoreError) in try Validate.messageID(str(257)) } == "message_id")
    #expect(field { () throws(CoreError) in try Validate.messageID("") } == "message_id")
    for control in ["\n", "\u{1B}[2J", "\u{7F}", "\u{85}"] {
      #expect(
        field { () throws(CoreError) in try Validate.messageID("m" + control) } == "message_id")
    }
  }

  @Test func personRefs() throws {
    #expect(try PersonRef.validated(.email(" A@B.C "), field: "person") == .email("a@b.c"))
    #expect(
      field { () throws(CoreError) in _ = try PersonRef.validated(nil, field: "person") }
        == "person")
    #expect(
      field { () throws(CoreError) in _ = try PersonRef.validated(.phone("123"), field: "person") }
        == "person.phone")
    #expect(
      field { () throws(CoreError) in
        _ = try PersonRef.validated(.personID(""), field: "persons[3]")
      } == "persons[3].person_id")
    #expect(
      field { () throws(CoreError) in
        _ = try normalizedIdentifier(kind: .unspecified, value: "x", field: "identifiers[0].kind")
      } == "identifiers[0].kind")
    #expect(try normalizedIdentifier(kind: .email, value: "X@Y.COM", field: "v") == "x@y.com")
  }

  @Test func pageSizes() throws {
    #expect(try HistoryPaging.pageSize(0) == 100)
    #expect(try HistoryPaging.pageSize(1) == 1)
    #expect(try HistoryPaging.pageSize(1000) == 1000)
    #expect(field { () throws(CoreError) in _ = try HistoryPaging.pageSize(1001) } == "page_size")
    #expect(field { () throws(CoreError) in _ = try HistoryPaging.pageSize(-1) } == "page_size")
  }
}

@Suite struct WorkspaceConfigTests {
  func config(_ edit: (inout WorkspaceConfig) -> Void) -> WorkspaceConfig {
    var c = WorkspaceConfig(
      workspace: "acme", channels: ["email", "sms"],
      topics: [Topic(id: "news", name: "News", defaultState: .subscribed)],
      limits: [MessageLimit(channel: "email", maxMessages: 1, windowSeconds: 1)])
    edit(&c)
    return c
  }

  func refused(_ c: WorkspaceConfig) -> String? {
    field { () throws(CoreError) in try c.validate() }
  }

  @Test func edges() {
    #expect(refused(config { _ in }) == nil)
    #expect(refused(config { $0.channels = [] }) == "channels")
    #expect(refused(config { $0.channels = ["email", "email"] }) == "channels[1]")
    #expect(refused(config { $0.channels[1] = "SMS" }) == "channels[1]")
    #expect(refused(config { $0.topics[0].name = str(256) }) == nil)
    #expect(refused(config { $0.topics[0].name = str(257) }) == "topics[0].name")
    #expect(refused(config { $0.topics[0].description = str(4096) }) == nil)
    #expect(refused(config { $0.topics[0].description = str(4097) }) == "topics[0].description")
    #expect(
      refused(config { $0.topics[0].defaultState = .unspecified }) == "topics[0].default_state")
    #expect(refused(config { $0.topics.append($0.topics[0]) }) == "topics[1].id")
    #expect(refused(config { $0.topics[0].id = "" }) == "topics[0].id")
    #expect(refused(config { $0.limits[0].channel = "push" }) == "limits[0].channel")
    #expect(refused(config { $0.limits.append($0.limits[0]) }) == "limits[1].channel")
    #expect(refused(config { $0.limits[0].maxMessages = 0 }) == "limits[0].max_messages")
    #expect(refused(config { $0.limits[0].windowSeconds = 0 }) == "limits[0].window_seconds")
    #expect(refused(config { $0.limits[0].windowSeconds = 31_536_000 }) == nil)
    #expect(
      refused(config { $0.limits[0].windowSeconds = 31_536_001 }) == "limits[0].window_seconds")
    #expect(refused(config { $0.workspace = "" }) == "workspace")
  }

  @Test func numbersSurviveReconfiguration() throws {
    let a = try Workspace(config { _ in })
    let news = a.topicID("news")!
    let b = try Workspace(config { $0.topics = [] }, previous: a)
    #expect(!b.isConfigured(topic: news))
    #expect(throws: CoreError.invalidArgument("topic", "unknown topic")) {
      try b.configuredTopic("news")
    }
    let c = try Workspace(
      config { $0.topics = [Topic(id: "promo", defaultState: .unsubscribed)] + $0.topics },
      previous: b)
    #expect(c.topicID("news") == news)
    #expect(c.isConfigured(topic: news))
    #expect(try c.configuredTopic("") == 0)
    #expect(throws: CoreError.invalidArgument("channel", "a channel must be given")) {
      try c.configuredChannel("")
    }
  }

  /// Names are looked up by a scan while a workspace has few of them and through a
  /// dictionary past 16: both give every name its number and nil to an unknown name.
  @Test(arguments: [3, 16, 17, 40])
  func namesResolveToTheirNumbers(count: Int) throws {
    let ws = try Workspace(
      config {
        $0.channels = (0..<count).map { "channel-\($0)" }
        $0.topics = (0..<count).map { Topic(id: "topic-\($0)", defaultState: .subscribed) }
        $0.limits = []
      })
    for (i, name) in ws.channelNames.enumerated() { #expect(ws.channelID(name) == NameID(i)) }
    for (i, name) in ws.topicNames.enumerated() { #expect(ws.topicID(name) == NameID(i)) }
    #expect(ws.channelNames.count == count + 1)
    #expect(ws.channelID("channel-\(count)") == nil)
    #expect(ws.topicID("topic") == nil)
  }
}
