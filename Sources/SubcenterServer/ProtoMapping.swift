// proto ⇄ Core, in one place: each request message unpacked with protobuf-c into its
// Core request, each Core response packed into its proto message. Strings that are not
// valid UTF-8 are refused here with INVALID_ARGUMENT naming the field.

import CProtobufC
import GRPCTransport
import SubcenterCore
import SubcenterProto
import SubcenterStore

enum ProtoMapping {
  // MARK: Fields

  /// A string field, refused unless valid UTF-8.
  static func text(_ p: UnsafeMutablePointer<CChar>?, _ field: String) throws(RPCStatus) -> String {
    guard let p else { return "" }
    guard let s = String(validatingCString: p) else {
      throw RPCStatus(.invalidArgument, "\(field): not valid UTF-8")
    }
    return s
  }

  static func person(_ p: UnsafeMutablePointer<Subcenter__V1__PersonRef>?, _ field: String)
    throws(RPCStatus) -> PersonRef?
  {
    guard let r = p?.pointee else { return nil }
    switch r.ref_case {
    case SUBCENTER__V1__PERSON_REF__REF_PERSON_ID:
      return .personID(try text(r.person_id, "\(field).person_id"))
    case SUBCENTER__V1__PERSON_REF__REF_EMAIL:
      return .email(try text(r.email, "\(field).email"))
    case SUBCENTER__V1__PERSON_REF__REF_PHONE:
      return .phone(try text(r.phone, "\(field).phone"))
    case SUBCENTER__V1__PERSON_REF__REF_ANONYMOUS_ID:
      return .anonymousID(try text(r.anonymous_id, "\(field).anonymous_id"))
    default:
      return nil
    }
  }

  static func unpack<T, R>(
    _ bytes: [UInt8], _ descriptor: ProtobufCMessageDescriptor,
    _ unpack: (UnsafeMutablePointer<ProtobufCAllocator>?, Int, UnsafePointer<UInt8>?) ->
      UnsafeMutablePointer<T>?,
    _ body: (T) throws(RPCStatus) -> R
  ) throws(RPCStatus) -> R {
    var d = descriptor
    try bytes.withUnsafeBufferPointer { (b) throws(RPCStatus) in
      try withUnsafePointer(to: &d) { (p) throws(RPCStatus) in try ProtoCodec.checkStrings(b, p) }
    }
    do {
      return try ProtoCodec.withUnpacked(bytes, unpack) { m in
        try body(m.pointee)
      }
    } catch let e as RPCStatus {
      throw e
    } catch {
      throw RPCStatus(.internal, "\(error)")
    }
  }

  // MARK: Requests

  static func identify(_ b: [UInt8]) throws(RPCStatus) -> IdentifyRequest {
    try unpack(
      b, subcenter__v1__identify_request__descriptor, subcenter__v1__identify_request__unpack
    ) { (m) throws(RPCStatus) in
      IdentifyRequest(
        workspace: try text(m.workspace, "workspace"), personID: try text(m.person_id, "person_id"),
        email: try text(m.email, "email"), phone: try text(m.phone, "phone"),
        anonymousID: try text(m.anonymous_id, "anonymous_id"))
    }
  }

  /// GetProfileRequest and GetPreferencesRequest share a shape.
  static func workspaceAndPerson(
    _ b: [UInt8], profile: Bool
  ) throws(RPCStatus) -> (workspace: String, person: PersonRef?) {
    if profile {
      return try unpack(
        b, subcenter__v1__get_profile_request__descriptor,
        subcenter__v1__get_profile_request__unpack
      ) { (m) throws(RPCStatus) in
        (try text(m.workspace, "workspace"), try person(m.person, "person"))
      }
    }
    return try unpack(
      b, subcenter__v1__get_preferences_request__descriptor,
      subcenter__v1__get_preferences_request__unpack
    ) {
      (m) throws(RPCStatus) in
      (try text(m.workspace, "workspace"), try person(m.person, "person"))
    }
  }

  static func global(_ b: [UInt8]) throws(RPCStatus) -> GlobalRequest {
    try unpack(b, subcenter__v1__global_request__descriptor, subcenter__v1__global_request__unpack)
    { (m) throws(RPCStatus) in
      GlobalRequest(
        workspace: try text(m.workspace, "workspace"), person: try person(m.person, "person"),
        source: try text(m.source, "source"))
    }
  }

  /// At most this many persons in one CheckDeliveryBatch.
  static let maxBatch = 10_000

  static func deliveryBatch(_ b: [UInt8]) throws(RPCStatus) -> DeliveryBatchRequest {
    try unpack(
      b, subcenter__v1__delivery_batch_request__descriptor,
      subcenter__v1__delivery_batch_request__unpack
    ) { (m) throws(RPCStatus) in
      guard m.n_persons <= maxBatch else {
        throw RPCStatus(
          .invalidArgument, "persons: \(m.n_persons) persons, at most \(maxBatch) per batch")
      }
      var persons: [PersonRef?] = []
      persons.reserveCapacity(m.n_persons)
      for i in 0..<m.n_persons { persons.append(try person(m.persons[i], "persons[\(i)]")) }
      return DeliveryBatchRequest(
        workspace: try text(m.workspace, "workspace"), channel: try text(m.channel, "channel"),
        topic: try text(m.topic, "topic"), persons: persons, recordSend: m.record_send != 0)
    }
  }

  static func override(_ b: [UInt8]) throws(RPCStatus) -> OverrideRequest {
    try unpack(
      b, subcenter__v1__override_request__descriptor, subcenter__v1__override_request__unpack
    ) { (m) throws(RPCStatus) in
      OverrideRequest(
        workspace: try text(m.workspace, "workspace"), person: try person(m.person, "person"),
        channel: try text(m.channel, "channel"), topic: try text(m.topic, "topic"),
        messageID: try text(m.message_id, "message_id"),
        justification: try text(m.justification, "justification"))
    }
  }

  static func forget(_ b: [UInt8]) throws(RPCStatus) -> (ForgetRequest, waitForErasure: Bool) {
    try unpack(b, subcenter__v1__forget_request__descriptor, subcenter__v1__forget_request__unpack)
    { (m) throws(RPCStatus) in
      (
        ForgetRequest(
          workspace: try text(m.workspace, "workspace"), person: try person(m.person, "person"),
          alsoSuppress: m.also_suppress != 0), m.wait_for_erasure != 0
      )
    }
  }

  static func suppress(_ b: [UInt8]) throws(RPCStatus) -> SuppressRequest {
    try unpack(
      b, subcenter__v1__suppress_request__descriptor, subcenter__v1__suppress_request__unpack
    ) { (m) throws(RPCStatus) in
      var ids: [Identifier] = []
      for i in 0..<m.n_identifiers {
        guard let id = m.identifiers[i]?.pointee else { continue }
        let raw = Int32(bitPattern: id.kind.rawValue)
        guard let kind = IdentifierKind(rawValue: raw) else {
          throw RPCStatus(
            .invalidArgument,
            "identifiers[\(i)].kind: unknown identifier kind \(raw) (expected 1-4: "
              + "IDENTIFIER_KIND_PERSON_ID, _EMAIL, _PHONE or _ANONYMOUS_ID)")
        }
        ids.append(Identifier(kind: kind, value: try text(id.value, "identifiers[\(i)].value")))
      }
      return SuppressRequest(
        workspace: try text(m.workspace, "workspace"), identifiers: ids,
        reason: try text(m.reason, "reason"))
    }
  }

  static func history(_ b: [UInt8]) throws(RPCStatus) -> HistoryRequest {
    try unpack(
      b, subcenter__v1__history_request__descriptor, subcenter__v1__history_request__unpack
    ) { (m) throws(RPCStatus) in
      HistoryRequest(
        workspace: try text(m.workspace, "workspace"), person: try person(m.person, "person"),
        pageSize: m.page_size, pageToken: try text(m.page_token, "page_token"))
    }
  }

  static func workspaceConfig(_ b: [UInt8]) throws(RPCStatus) -> WorkspaceConfig {
    try unpack(
      b, subcenter__v1__workspace_config__descriptor, subcenter__v1__workspace_config__unpack
    ) { (m) throws(RPCStatus) in
      var channels: [String] = []
      for i in 0..<m.n_channels { channels.append(try text(m.channels[i], "channels[\(i)]")) }
      var topics: [Topic] = []
      for i in 0..<m.n_topics {
        guard let t = m.topics[i]?.pointee else { continue }
        topics.append(
          Topic(
            id: try text(t.id, "topics[\(i)].id"), name: try text(t.name, "topics[\(i)].name"),
            description: try text(t.description, "topics[\(i)].description"),
            defaultState: TopicDefault(rawValue: Int32(bitPattern: t.default_state.rawValue))
              ?? .unspecified))
      }
      var limits: [MessageLimit] = []
      for i in 0..<m.n_limits {
        guard let l = m.limits[i]?.pointee else { continue }
        limits.append(
          MessageLimit(
            channel: try text(l.channel, "limits[\(i)].channel"), maxMessages: l.max_messages,
            windowSeconds: l.window_seconds))
      }
      return WorkspaceConfig(
        workspace: try text(m.workspace, "workspace"), channels: channels, topics: topics,
        limits: limits, allowImportantOverride: m.allow_important_override != 0)
    }
  }

  static func workspaceID(_ b: [UInt8]) throws(RPCStatus) -> String {
    try unpack(
      b, subcenter__v1__get_workspace_request__descriptor,
      subcenter__v1__get_workspace_request__unpack
    ) { (m) throws(RPCStatus) in
      try text(m.workspace, "workspace")
    }
  }

  /// A WatchRequest: `after_seq` and `from_oldest` together are INVALID_ARGUMENT.
  static func watchRequest(_ b: [UInt8]) throws(RPCStatus) -> (workspace: String, start: WatchStart)
  {
    try unpack(
      b, subcenter__v1__watch_request__descriptor, subcenter__v1__watch_request__unpack
    ) { (m) throws(RPCStatus) in
      let ws = try text(m.workspace, "workspace")
      if m.from_oldest != 0 && m.after_seq != 0 {
        throw RPCStatus(.invalidArgument, "after_seq and from_oldest: set at most one")
      }
      let start: WatchStart =
        m.from_oldest != 0 ? .oldest : m.after_seq == 0 ? .now : .after(m.after_seq)
      return (ws, start)
    }
  }

  // MARK: Responses

  static func profile(_ p: Profile, redact: Bool) -> [UInt8] {
    let a = ProtoArena()
    let m = a.make(subcenter__v1__profile__init)
    m.pointee.person_id = a.cString(p.personID)
    m.pointee.email = a.cString(redact ? Redaction.email(p.email) : p.email)
    m.pointee.phone = a.cString(redact ? Redaction.phone(p.phone) : p.phone)
    let anon = redact ? p.anonymousIDs.map(Redaction.anonymousID) : p.anonymousIDs
    m.pointee.n_anonymous_ids = anon.count
    m.pointee.anonymous_ids = a.strings(anon)
    m.pointee.created_at = p.createdAt
    m.pointee.updated_at = p.updatedAt
    m.pointee.redacted = redact ? 1 : 0
    return ProtoCodec.pack(m)
  }

  /// The hot answers below are written directly, after `GRPCMessageFramer.prefixSize`
  /// spare bytes, for `ServerCall.respond(framed:)`.
  static let framePrefix = GRPCMessageFramer.prefixSize

  /// Preferences (every write RPC answers with it), framed. Written in one go into room
  /// sized first (`WireWriter.withCursor`): a field of every kind, and each nested message,
  /// takes `WireCursor.fieldRoom` bytes at most, plus its string's bytes.
  /// Built in `buffer`'s memory (`ServerCall.answerBuffer`).
  static func preferences(_ p: Preferences, reusing buffer: consuming [UInt8] = []) -> [UInt8] {
    // Fields read through the subscript, not from elements bound by `for e in`: that
    // copies each element (a retain and release of every String in it).
    let entries = p.entries
    let effective = p.effectiveRows
    let channels = p.names.channelNames
    let topics = p.names.topicNames
    let room = WireCursor.fieldRoom
    var bound = 4 * room + p.personID.utf8.count + p.globalSource.utf8.count
    for i in entries.indices {
      bound +=
        7 * room + entries[i].channel.utf8.count + entries[i].topic.utf8.count
        + entries[i].source.utf8.count + entries[i].noticeVersion.utf8.count
    }
    for i in effective.indices {
      bound +=
        5 * room + channels[Int(effective[i].channel)].utf8.count
        + topics[Int(effective[i].topic)].utf8.count
    }
    var writer = WireWriter(reusing: buffer, capacity: bound, reserving: framePrefix)
    writer.withCursor(bound: bound) { w in
      w.string(1, p.personID)
      w.bool(2, p.globalUnsubscribed)
      w.int(3, p.globalUpdatedAt)
      w.string(4, p.globalSource)
      for i in entries.indices {
        w.message(5) { m in
          m.string(1, entries[i].channel)
          m.string(2, entries[i].topic)
          m.int(3, Int64(entries[i].state.rawValue))
          m.int(4, entries[i].updatedAt)
          m.string(5, entries[i].source)
          m.string(6, entries[i].noticeVersion)
        }
      }
      for i in effective.indices {
        w.message(6) { m in
          m.string(1, channels[Int(effective[i].channel)])
          m.string(2, topics[Int(effective[i].topic)])
          m.bool(3, effective[i].allowed)
          m.int(4, Int64(effective[i].reason.rawValue))
        }
      }
    }
    return writer.finish()
  }

  /// A DeliveryDecision (three small fields), framed.
  static func decision(_ d: Decision) -> [UInt8] {
    var w = WireWriter(capacity: 8 + d.personID.utf8.count, reserving: framePrefix)
    write(d, to: &w)
    return w.finish()
  }

  private static func write(_ d: Decision, to w: inout WireWriter) {
    w.bool(1, d.allowed)
    w.int(2, Int64(d.reason.rawValue))
    w.string(3, d.personID)
  }

  /// DeliveryBatchResponse: field 1 repeated DeliveryDecision, framed.
  static func decisions(_ ds: [Decision]) -> [UInt8] {
    var w = WireWriter(capacity: ds.count * 24, reserving: framePrefix)
    for d in ds { w.message(1) { write(d, to: &$0) } }
    return w.finish()
  }

  static func forgetResponse(
    personID: String, erasedAt: Int64, erasureDeadline: Int64, receipt: String
  ) -> [UInt8] {
    let a = ProtoArena()
    let m = a.make(subcenter__v1__forget_response__init)
    m.pointee.person_id = a.cString(personID)
    m.pointee.erased_at = erasedAt
    m.pointee.erasure_deadline = erasureDeadline
    m.pointee.receipt = a.cString(receipt)
    return ProtoCodec.pack(m)
  }

  static func suppressResponse(_ r: SuppressResult) -> [UInt8] {
    let a = ProtoArena()
    let m = a.make(subcenter__v1__suppress_response__init)
    m.pointee.suppressed = r.suppressed
    m.pointee.n_forgotten_person_ids = r.forgottenPersonIDs.count
    m.pointee.forgotten_person_ids = a.strings(r.forgottenPersonIDs)
    return ProtoCodec.pack(m)
  }

  static func history(_ page: HistoryPage, redacted: Bool) -> [UInt8] {
    let a = ProtoArena()
    let m = a.make(subcenter__v1__history_response__init)
    m.pointee.n_entries = page.entries.count
    m.pointee.entries = a.messages(page.entries) { e in
      let x = a.make(subcenter__v1__history_entry__init)
      x.pointee.at = e.at
      x.pointee.action = a.cString(e.action.name)
      x.pointee.channel = a.cString(e.channel)
      x.pointee.topic = a.cString(e.topic)
      x.pointee.source = a.cString(e.source)
      x.pointee.actor = a.cString(e.actor)
      x.pointee.detail = a.cString(e.detail)
      return x
    }
    m.pointee.next_page_token = a.cString(page.nextPageToken)
    m.pointee.redacted = redacted ? 1 : 0
    return ProtoCodec.pack(m)
  }

  static func workspaceConfig(_ c: WorkspaceConfig) -> [UInt8] {
    let a = ProtoArena()
    let m = a.make(subcenter__v1__workspace_config__init)
    m.pointee.workspace = a.cString(c.workspace)
    m.pointee.n_channels = c.channels.count
    m.pointee.channels = a.strings(c.channels)
    m.pointee.n_topics = c.topics.count
    m.pointee.topics = a.messages(c.topics) { t in
      let x = a.make(subcenter__v1__topic__init)
      x.pointee.id = a.cString(t.id)
      x.pointee.name = a.cString(t.name)
      x.pointee.description = a.cString(t.description)
      x.pointee.default_state = Subcenter__V1__TopicDefault(UInt32(t.defaultState.rawValue))
      return x
    }
    m.pointee.n_limits = c.limits.count
    m.pointee.limits = a.messages(c.limits) { l in
      let x = a.make(subcenter__v1__message_limit__init)
      x.pointee.channel = a.cString(l.channel)
      x.pointee.max_messages = l.maxMessages
      x.pointee.window_seconds = l.windowSeconds
      return x
    }
    m.pointee.allow_important_override = c.allowImportantOverride ? 1 : 0
    return ProtoCodec.pack(m)
  }
}

extension ProtoMapping {
  /// A ChangeEvent; the anonymous id redacted without scope `pii`.
  static func changeEvent(_ e: ChangeEvent, redact: Bool) -> [UInt8] {
    let a = ProtoArena()
    let m = a.make(subcenter__v1__change_event__init)
    m.pointee.seq = e.seq
    m.pointee.at = e.at
    m.pointee.person_id = a.cString(e.personID)
    m.pointee.anonymous_id = a.cString(
      redact ? Redaction.anonymousID(e.anonymousID) : e.anonymousID)
    m.pointee.action = a.cString(e.action)
    m.pointee.channel = a.cString(e.channel)
    m.pointee.topic = a.cString(e.topic)
    m.pointee.state = Subcenter__V1__PreferenceState(UInt32(e.state.rawValue))
    m.pointee.source = a.cString(e.source)
    return ProtoCodec.pack(m)
  }
}
