// `Command` ⇄ `LogRecord` bytes (proto/subcenter/v1/storage.proto), with protobuf-c.
//
// A command's `at` and `actor` travel in the record's own fields (commands without an
// actor store ""), the command's other fields in the matching oneof case. What the store
// hands the log writer is the record without its `seq`; the writer puts the seq in front
// (WALSegment.swift).

import CProtobufC
import SubcenterCore
import SubcenterProto

/// Encodes commands as log records and decodes them back.
public enum LogRecordCodec {
  /// The record of `command` without a seq: what `WriteAheadLog.append` takes.
  /// `secretCheck` (`IdentifierHasher.secretCheck`) goes into a record that holds
  /// suppression hashes, so recovery can tell they were keyed with its secret.
  public static func encode(_ command: Command, secretCheck: [UInt8]? = nil) -> [UInt8] {
    encode(command, seq: 0, secretCheck: secretCheck)
  }

  /// The complete record (seq first when it is not 0), as a log segment holds it.
  public static func encode(_ command: Command, seq: UInt64, secretCheck: [UInt8]? = nil)
    -> [UInt8]
  {
    encodeDirectly(command, seq: seq)
      ?? encodeWithProtobufC(
        command, seq: seq, secretCheck: holdsSuppressionHashes(command) ? secretCheck : nil)
  }

  /// Whether `command`'s record holds suppression hashes (and so a secret check).
  public static func holdsSuppressionHashes(_ command: Command) -> Bool {
    switch command {
    case .forget(let c): !c.suppress.isEmpty
    case .suppress(let c): !c.hashes.isEmpty
    case .unsuppress(let c): !c.hashes.isEmpty
    default: false
    }
  }

  /// The record's secret check, if it has one (field 5 of `LogRecord`).
  public static func secretCheck(in payload: ArraySlice<UInt8>) throws(StorageError) -> [UInt8]? {
    try field(5, "log record.secret_check", in: payload)
  }

  /// The bytes of the record's length-delimited field `number` (the last one, as protobuf
  /// reads a field given twice), nil if it has none.
  private static func field(
    _ number: UInt64, _ name: StaticString, in payload: ArraySlice<UInt8>
  ) throws(StorageError) -> [UInt8]? {
    let found = payload.withUnsafeBytes { raw in
      Result { () throws(StorageError) -> [UInt8]? in
        var r = ProtoWireReader(raw)
        var bytes: [UInt8]?
        while !r.atEnd {
          let (field, wire) = try r.key()
          if field == number {
            bytes = Array(try r.bytes(wire, name))
          } else {
            try r.skip(wire)
          }
        }
        return bytes
      }
    }
    return try found.get()
  }

  /// The records of the commonest writes (Subscribe, Unsubscribe, UnsubscribeAll,
  /// Resubscribe), written field by field: the same bytes protobuf-c packs, without its
  /// message tree. nil for every other command.
  static func encodeDirectly(_ command: Command, seq: UInt64) -> [UInt8]? {
    // One buffer: the record's own fields, then the command's message in place (its
    // length fixed up after it), as protobuf-c orders them. Both messages start with
    // workspace (1) and person (2).
    var w = WireWriter(capacity: 128)
    func record(
      _ field: UInt64, at: Int64, actor: String, workspace: String, person: PersonKey,
      _ rest: (inout WireWriter) -> Void
    ) {
      w.int(1, Int64(bitPattern: seq))
      w.int(2, at)
      w.string(3, actor)
      w.message(field) { m in
        m.string(1, workspace)
        personKey(person, field: 2, into: &m)
        rest(&m)
      }
    }
    switch command {
    case .setPreference(let c):
      record(12, at: c.at, actor: c.actor, workspace: c.workspace, person: c.person) { m in
        m.string(3, c.channel)
        m.string(4, c.topic)
        m.int(5, Int64(c.state.rawValue))
        m.string(6, c.source)
        m.string(7, c.noticeVersion)
      }
    case .setGlobal(let c):
      record(13, at: c.at, actor: c.actor, workspace: c.workspace, person: c.person) { m in
        m.bool(3, c.unsubscribed)
        m.string(4, c.source)
      }
    default:
      return nil
    }
    return w.finish()
  }

  /// A `PersonKey` message field (its oneof member written even when empty).
  private static func personKey(_ k: PersonKey, field: UInt64, into w: inout WireWriter) {
    let n = k.value.utf8.count
    w.varint(field << 3 | 2)
    w.varint(UInt64(1 + WireWriter.varintSize(UInt64(n)) + n))
    w.string(k.isAnonymous ? 2 : 1, k.value, always: true)
  }

  /// Any command's record, packed by protobuf-c.
  static func encodeWithProtobufC(_ command: Command, seq: UInt64, secretCheck: [UInt8]? = nil)
    -> [UInt8]
  {
    let arena = ProtoArena()
    var r = Subcenter__Storage__V1__LogRecord()
    subcenter__storage__v1__log_record__init(&r)
    r.seq = seq
    if let secretCheck { r.secret_check = secretCheck.withUnsafeBytes { arena.bytes($0) } }
    r.at = command.at
    r.actor = arena.text(actor(of: command))
    let a = arena
    switch command {
    case .configureWorkspace(let c):
      let m = a.make(subcenter__storage__v1__configure_workspace__init)
      m.pointee.config = workspaceConfig(c.config, a)
      r.command_case = SUBCENTER__STORAGE__V1__LOG_RECORD__COMMAND_CONFIGURE_WORKSPACE
      r.configure_workspace = m
    case .identify(let c):
      let m = a.make(subcenter__storage__v1__identify__init)
      m.pointee.workspace = a.cString(c.workspace)
      m.pointee.person = personKey(c.person, a)
      m.pointee.creates = c.creates ? 1 : 0
      if let email = c.email {
        m.pointee.email_value_case = SUBCENTER__STORAGE__V1__IDENTIFY__EMAIL_VALUE_EMAIL
        m.pointee.email = a.cString(email)
      }
      if let phone = c.phone {
        m.pointee.phone_value_case = SUBCENTER__STORAGE__V1__IDENTIFY__PHONE_VALUE_PHONE
        m.pointee.phone = a.cString(phone)
      }
      if let anonymousID = c.anonymousID {
        m.pointee.anonymous_id_value_case =
          SUBCENTER__STORAGE__V1__IDENTIFY__ANONYMOUS_ID_VALUE_ANONYMOUS_ID
        m.pointee.anonymous_id = a.cString(anonymousID)
      }
      m.pointee.merges_profile = c.mergesProfile ? 1 : 0
      r.command_case = SUBCENTER__STORAGE__V1__LOG_RECORD__COMMAND_IDENTIFY
      r.identify = m
    case .setPreference(let c):
      let m = a.make(subcenter__storage__v1__set_preference__init)
      m.pointee.workspace = a.cString(c.workspace)
      m.pointee.person = personKey(c.person, a)
      m.pointee.channel = a.cString(c.channel)
      m.pointee.topic = a.cString(c.topic)
      m.pointee.state = Subcenter__Storage__V1__PreferenceState(
        rawValue: UInt32(bitPattern: c.state.rawValue))
      m.pointee.source = a.text(c.source)
      m.pointee.notice_version = a.text(c.noticeVersion)
      r.command_case = SUBCENTER__STORAGE__V1__LOG_RECORD__COMMAND_SET_PREFERENCE
      r.set_preference = m
    case .setGlobal(let c):
      let m = a.make(subcenter__storage__v1__set_global__init)
      m.pointee.workspace = a.cString(c.workspace)
      m.pointee.person = personKey(c.person, a)
      m.pointee.unsubscribed = c.unsubscribed ? 1 : 0
      m.pointee.source = a.text(c.source)
      r.command_case = SUBCENTER__STORAGE__V1__LOG_RECORD__COMMAND_SET_GLOBAL
      r.set_global = m
    case .recordSends(let c):
      let m = a.make(subcenter__storage__v1__record_sends__init)
      m.pointee.workspace = a.cString(c.workspace)
      m.pointee.channel = a.cString(c.channel)
      m.pointee.n_persons = c.persons.count
      m.pointee.persons = a.messages(c.persons) { personKey($0, a) }
      r.command_case = SUBCENTER__STORAGE__V1__LOG_RECORD__COMMAND_RECORD_SENDS
      r.record_sends = m
    case .override(let c):
      let m = a.make(subcenter__storage__v1__override__init)
      m.pointee.workspace = a.cString(c.workspace)
      m.pointee.person = personKey(c.person, a)
      m.pointee.channel = a.cString(c.channel)
      m.pointee.topic = a.cString(c.topic)
      m.pointee.allowed = c.allowed ? 1 : 0
      m.pointee.reason = Subcenter__Storage__V1__DecisionReason(
        rawValue: UInt32(bitPattern: c.reason.rawValue))
      m.pointee.detail = a.text(c.detail)
      r.command_case = SUBCENTER__STORAGE__V1__LOG_RECORD__COMMAND_OVERRIDE
      r.override = m
    case .forget(let c):
      let m = a.make(subcenter__storage__v1__forget__init)
      m.pointee.workspace = a.cString(c.workspace)
      m.pointee.person = personKey(c.person, a)
      m.pointee.n_suppress = c.suppress.count
      m.pointee.suppress = a.hashes(c.suppress)
      r.command_case = SUBCENTER__STORAGE__V1__LOG_RECORD__COMMAND_FORGET
      r.forget = m
    case .suppress(let c):
      let m = a.make(subcenter__storage__v1__suppress__init)
      m.pointee.workspace = a.cString(c.workspace)
      m.pointee.n_hashes = c.hashes.count
      m.pointee.hashes = a.hashes(c.hashes)
      m.pointee.n_forget = c.forget.count
      m.pointee.forget = a.messages(c.forget) { personKey($0, a) }
      m.pointee.reason = a.text(c.reason)
      r.command_case = SUBCENTER__STORAGE__V1__LOG_RECORD__COMMAND_SUPPRESS
      r.suppress = m
    case .unsuppress(let c):
      let m = a.make(subcenter__storage__v1__unsuppress__init)
      m.pointee.workspace = a.cString(c.workspace)
      m.pointee.n_hashes = c.hashes.count
      m.pointee.hashes = a.hashes(c.hashes)
      r.command_case = SUBCENTER__STORAGE__V1__LOG_RECORD__COMMAND_UNSUPPRESS
      r.unsuppress = m
    case .expireAnonymous(let c):
      let m = a.make(subcenter__storage__v1__expire_anonymous__init)
      m.pointee.workspace = a.cString(c.workspace)
      m.pointee.n_profiles = c.profiles.count
      m.pointee.profiles = a.cStrings(c.profiles)
      r.command_case = SUBCENTER__STORAGE__V1__LOG_RECORD__COMMAND_EXPIRE_ANONYMOUS
      r.expire_anonymous = m
    }
    return withExtendedLifetime(arena) { Proto.pack(&r) }
  }

  /// The record erasure leaves in place of one it removes: its seqs and nothing else.
  public static func erased(seq: UInt64, count: UInt64 = 1) -> [UInt8] {
    let arena = ProtoArena()
    var r = Subcenter__Storage__V1__LogRecord()
    subcenter__storage__v1__log_record__init(&r)
    r.seq = seq
    if count > 1 { r.seq_count = count }
    r.command_case = SUBCENTER__STORAGE__V1__LOG_RECORD__COMMAND_ERASED
    r.erased = arena.make(subcenter__storage__v1__erased__init)
    return withExtendedLifetime(arena) { Proto.pack(&r) }
  }

  /// The record a start writes first to skip seqs (`SkippedSeqs`), without its seq: the
  /// log writer gives it the seqs (`DurableStore.open`). `at`: when the start happened.
  public static func skippedSeqs(at: Int64) -> [UInt8] {
    let arena = ProtoArena()
    var r = Subcenter__Storage__V1__LogRecord()
    subcenter__storage__v1__log_record__init(&r)
    r.at = at
    r.command_case = SUBCENTER__STORAGE__V1__LOG_RECORD__COMMAND_SKIPPED_SEQS
    r.skipped_seqs = arena.make(subcenter__storage__v1__skipped_seqs__init)
    return withExtendedLifetime(arena) { Proto.pack(&r) }
  }

  /// Whether the record is a start's `SkippedSeqs` (field 21 of `LogRecord`); `decode`
  /// gives no command for it, as for an erased record.
  public static func isSkippedSeqs(_ payload: ArraySlice<UInt8>) throws(StorageError) -> Bool {
    try field(21, "log record.skipped_seqs", in: payload) != nil
  }

  /// Decodes a record: its seq (0 if it has none) and its command, nil for a record
  /// erasure emptied (`erased(seq:)`) or a start's skipped seqs (`skippedSeqs(at:)`):
  /// nothing to apply. A record that is not a valid
  /// `LogRecord` of a known command is `damaged`.
  public static func decode(_ payload: ArraySlice<UInt8>) throws(StorageError)
    -> (seq: UInt64, command: Command?)
  {
    // withUnsafeBufferPointer passes the typed error on (withUnsafeBytes needed a Result
    // around the record: more copies of it); `take()` moves the command out (returning
    // `command` copied it, retaining each of its strings, then destroyed the variable's).
    var seq: UInt64 = 0
    var command: Command?
    let readDirectly = try payload.withUnsafeBufferPointer { (b) throws(StorageError) in
      try decodeDirectly(UnsafeRawBufferPointer(b)) {
        seq = $0
        command = $1
      }
    }
    if readDirectly { return (seq, command.take()) }
    return try decodeWithProtobufC(payload)
  }

  /// Calls `body` with the command `decode` reads from a record (not for an erased record),
  /// in place: for loops over every record of a segment, where returning the command
  /// through `decode`'s tuple and optionals copied it several times a record (a `Command`
  /// is large, and each copy took longer than reading a field).
  static func withCommand(in payload: ArraySlice<UInt8>, _ body: (Command) -> Void)
    throws(StorageError)
  {
    let readDirectly = try payload.withUnsafeBufferPointer { (b) throws(StorageError) in
      try decodeDirectly(UnsafeRawBufferPointer(b)) { _, command in body(command) }
    }
    if !readDirectly, let command = try decodeWithProtobufC(payload).command { body(command) }
  }

  /// The records `encodeDirectly` writes (SetPreference, SetGlobal), read field by field
  /// as protobuf-c reads them (any order, unknown fields skipped) and handed to `body` with
  /// their seq: true. False (and `body` not called) for any other record, or one
  /// protobuf-c must interpret (a message field given twice is merged).
  static func decodeDirectly(
    _ payload: UnsafeRawBufferPointer, _ body: (UInt64, Command) -> Void
  ) throws(StorageError) -> Bool {
    var r = ProtoWireReader(payload)
    var seq: UInt64 = 0
    var at: Int64 = 0
    var actor = ""
    var message: (field: UInt64, bytes: UnsafeRawBufferPointer)?
    while !r.atEnd {
      let (field, wire) = try r.key()
      switch field {
      case 1: seq = try r.varint(wire, "log record.seq")
      case 2: at = Int64(bitPattern: try r.varint(wire, "log record.at"))
      case 3: actor = try r.text(wire, "log record.actor")
      case 12, 13:
        if message != nil { return false }
        message = (field, try r.bytes(wire, "log record.command"))
      case 10...21: return false
      default: try r.skip(wire)
      }
    }
    guard let message else { return false }
    var m = ProtoWireReader(message.bytes)
    var workspace = ""
    var person: PersonKey?
    var source = ""
    if message.field == 12 {
      var channel = ""
      var topic = ""
      var state = PreferenceState.unspecified
      var notice = ""
      while !m.atEnd {
        let (field, wire) = try m.key()
        switch field {
        case 1: workspace = try m.string(wire, "set_preference.workspace")
        case 2:
          person = try ProtoWireReader.personKey(
            try m.bytes(wire, "set_preference.person"), merging: person)
        case 3: channel = try m.string(wire, "set_preference.channel")
        case 4: topic = try m.string(wire, "set_preference.topic")
        case 5:
          let v = try m.varint(wire, "set_preference.state")
          guard let s = PreferenceState(rawValue: Int32(truncatingIfNeeded: v)) else {
            throw StorageError(.damaged, "set_preference.state: unknown value \(v)")
          }
          state = s
        case 6: source = try m.text(wire, "set_preference.source")
        case 7: notice = try m.text(wire, "set_preference.notice_version")
        default: try m.skip(wire)
        }
      }
      guard let person else { throw StorageError(.damaged, "set_preference.person: no person key") }
      body(
        seq,
        .setPreference(
          .init(
            workspace: workspace, person: person, channel: channel, topic: topic, state: state,
            source: source, noticeVersion: notice, at: at, actor: actor)))
      return true
    }
    var unsubscribed = false
    while !m.atEnd {
      let (field, wire) = try m.key()
      switch field {
      case 1: workspace = try m.string(wire, "set_global.workspace")
      case 2:
        person = try ProtoWireReader.personKey(
          try m.bytes(wire, "set_global.person"), merging: person)
      case 3: unsubscribed = try m.varint(wire, "set_global.unsubscribed") != 0
      case 4: source = try m.text(wire, "set_global.source")
      default: try m.skip(wire)
      }
    }
    guard let person else { throw StorageError(.damaged, "set_global.person: no person key") }
    body(
      seq,
      .setGlobal(
        .init(
          workspace: workspace, person: person, unsubscribed: unsubscribed, source: source,
          at: at, actor: actor)))
    return true
  }

  /// Any record, unpacked by protobuf-c.
  static func decodeWithProtobufC(_ payload: ArraySlice<UInt8>) throws(StorageError)
    -> (seq: UInt64, command: Command?)
  {
    try Proto.withUnpacked(payload, "log record", subcenter__storage__v1__log_record__unpack) {
      (r) throws(StorageError) in
      let at = r.at
      let actor = Proto.text(r.actor)
      let command: Command?
      switch r.command_case {
      case SUBCENTER__STORAGE__V1__LOG_RECORD__COMMAND_ERASED,
        SUBCENTER__STORAGE__V1__LOG_RECORD__COMMAND_SKIPPED_SEQS:
        command = nil
      case SUBCENTER__STORAGE__V1__LOG_RECORD__COMMAND_CONFIGURE_WORKSPACE:
        let m = try present(r.configure_workspace, "configure_workspace")
        command = .configureWorkspace(
          .init(
            config: try workspaceConfig(present(m.config, "configure_workspace.config")), at: at,
            actor: actor))
      case SUBCENTER__STORAGE__V1__LOG_RECORD__COMMAND_IDENTIFY:
        let m = try present(r.identify, "identify")
        command = .identify(
          .init(
            workspace: Proto.string(m.workspace),
            person: try personKey(m.person, "identify.person"),
            creates: m.creates != 0,
            email: m.email_value_case == SUBCENTER__STORAGE__V1__IDENTIFY__EMAIL_VALUE_EMAIL
              ? Proto.string(m.email) : nil,
            phone: m.phone_value_case == SUBCENTER__STORAGE__V1__IDENTIFY__PHONE_VALUE_PHONE
              ? Proto.string(m.phone) : nil,
            anonymousID: m.anonymous_id_value_case
              == SUBCENTER__STORAGE__V1__IDENTIFY__ANONYMOUS_ID_VALUE_ANONYMOUS_ID
              ? Proto.string(m.anonymous_id) : nil,
            mergesProfile: m.merges_profile != 0, at: at, actor: actor))
      case SUBCENTER__STORAGE__V1__LOG_RECORD__COMMAND_SET_PREFERENCE:
        let m = try present(r.set_preference, "set_preference")
        command = .setPreference(
          .init(
            workspace: Proto.string(m.workspace),
            person: try personKey(m.person, "set_preference.person"),
            channel: Proto.string(m.channel), topic: Proto.string(m.topic),
            state: try preferenceState(m.state, "set_preference.state"),
            source: Proto.text(m.source), noticeVersion: Proto.text(m.notice_version), at: at,
            actor: actor))
      case SUBCENTER__STORAGE__V1__LOG_RECORD__COMMAND_SET_GLOBAL:
        let m = try present(r.set_global, "set_global")
        command = .setGlobal(
          .init(
            workspace: Proto.string(m.workspace),
            person: try personKey(m.person, "set_global.person"), unsubscribed: m.unsubscribed != 0,
            source: Proto.text(m.source), at: at, actor: actor))
      case SUBCENTER__STORAGE__V1__LOG_RECORD__COMMAND_RECORD_SENDS:
        let m = try present(r.record_sends, "record_sends")
        command = .recordSends(
          .init(
            workspace: Proto.string(m.workspace), channel: Proto.string(m.channel),
            persons: try Proto.messages(m.persons, m.n_persons) { (k) throws(StorageError) in
              try personKey(k, "record_sends.persons")
            }, at: at))
      case SUBCENTER__STORAGE__V1__LOG_RECORD__COMMAND_OVERRIDE:
        let m = try present(r.override, "override")
        guard let reason = DecisionReason(rawValue: Int32(bitPattern: m.reason.rawValue)) else {
          throw StorageError(.damaged, "override.reason: unknown value \(m.reason.rawValue)")
        }
        command = .override(
          .init(
            workspace: Proto.string(m.workspace),
            person: try personKey(m.person, "override.person"),
            channel: Proto.string(m.channel), topic: Proto.string(m.topic),
            allowed: m.allowed != 0, reason: reason, detail: Proto.text(m.detail), at: at,
            actor: actor))
      case SUBCENTER__STORAGE__V1__LOG_RECORD__COMMAND_FORGET:
        let m = try present(r.forget, "forget")
        command = .forget(
          .init(
            workspace: Proto.string(m.workspace), person: try personKey(m.person, "forget.person"),
            suppress: try Proto.hashes(m.suppress, m.n_suppress, "forget.suppress"), at: at,
            actor: actor))
      case SUBCENTER__STORAGE__V1__LOG_RECORD__COMMAND_SUPPRESS:
        let m = try present(r.suppress, "suppress")
        command = .suppress(
          .init(
            workspace: Proto.string(m.workspace),
            hashes: try Proto.hashes(m.hashes, m.n_hashes, "suppress.hashes"),
            forget: try Proto.messages(m.forget, m.n_forget) { (k) throws(StorageError) in
              try personKey(k, "suppress.forget")
            }, reason: Proto.text(m.reason), at: at, actor: actor))
      case SUBCENTER__STORAGE__V1__LOG_RECORD__COMMAND_UNSUPPRESS:
        let m = try present(r.unsuppress, "unsuppress")
        command = .unsuppress(
          .init(
            workspace: Proto.string(m.workspace),
            hashes: try Proto.hashes(m.hashes, m.n_hashes, "unsuppress.hashes"), at: at,
            actor: actor))
      case SUBCENTER__STORAGE__V1__LOG_RECORD__COMMAND_EXPIRE_ANONYMOUS:
        let m = try present(r.expire_anonymous, "expire_anonymous")
        command = .expireAnonymous(
          .init(
            workspace: Proto.string(m.workspace),
            profiles: Proto.strings(m.profiles, m.n_profiles), at: at))
      default:
        throw StorageError(
          .damaged,
          "log record holds no known command (case \(r.command_case.rawValue)): damaged, or "
            + "written by a newer subcenterd (a newer version's data: run that version)")
      }
      return (r.seq, command)
    }
  }

  // MARK: Shared with SnapshotRecordCodec

  /// The actor a command carries ("" for those without one).
  static func actor(of command: Command) -> String {
    switch command {
    case .configureWorkspace(let c): c.actor
    case .identify(let c): c.actor
    case .setPreference(let c): c.actor
    case .setGlobal(let c): c.actor
    case .recordSends: ""
    case .override(let c): c.actor
    case .forget(let c): c.actor
    case .suppress(let c): c.actor
    case .unsuppress(let c): c.actor
    case .expireAnonymous: ""
    }
  }

  static func personKey(_ k: PersonKey, _ a: ProtoArena)
    -> UnsafeMutablePointer<Subcenter__Storage__V1__PersonKey>
  {
    let m = a.make(subcenter__storage__v1__person_key__init)
    if k.isAnonymous {
      m.pointee.key_case = SUBCENTER__STORAGE__V1__PERSON_KEY__KEY_ANONYMOUS_ID
      m.pointee.anonymous_id = a.cString(k.value)
    } else {
      m.pointee.key_case = SUBCENTER__STORAGE__V1__PERSON_KEY__KEY_PERSON_ID
      m.pointee.person_id = a.cString(k.value)
    }
    return m
  }

  static func personKey(
    _ p: UnsafeMutablePointer<Subcenter__Storage__V1__PersonKey>?, _ field: String
  ) throws(StorageError) -> PersonKey {
    try personKey(present(p, field), field)
  }

  static func personKey(_ k: borrowing Subcenter__Storage__V1__PersonKey, _ field: String)
    throws(StorageError) -> PersonKey
  {
    switch k.key_case {
    case SUBCENTER__STORAGE__V1__PERSON_KEY__KEY_PERSON_ID: .person(Proto.string(k.person_id))
    case SUBCENTER__STORAGE__V1__PERSON_KEY__KEY_ANONYMOUS_ID:
      .anonymous(Proto.string(k.anonymous_id))
    default: throw StorageError(.damaged, "\(field): no person key")
    }
  }

  static func workspaceConfig(_ c: WorkspaceConfig, _ a: ProtoArena)
    -> UnsafeMutablePointer<Subcenter__Storage__V1__WorkspaceConfig>
  {
    let m = a.make(subcenter__storage__v1__workspace_config__init)
    m.pointee.workspace = a.cString(c.workspace)
    m.pointee.n_channels = c.channels.count
    m.pointee.channels = a.cStrings(c.channels)
    m.pointee.n_topics = c.topics.count
    m.pointee.topics = a.messages(c.topics) { t in
      let tm = a.make(subcenter__storage__v1__topic__init)
      tm.pointee.id = a.cString(t.id)
      tm.pointee.name = a.text(t.name)
      tm.pointee.description = a.text(t.description)
      tm.pointee.default_state = Subcenter__Storage__V1__TopicDefault(
        rawValue: UInt32(bitPattern: t.defaultState.rawValue))
      return tm
    }
    m.pointee.n_limits = c.limits.count
    m.pointee.limits = a.messages(c.limits) { l in
      let lm = a.make(subcenter__storage__v1__message_limit__init)
      lm.pointee.channel = a.cString(l.channel)
      lm.pointee.max_messages = l.maxMessages
      lm.pointee.window_seconds = l.windowSeconds
      return lm
    }
    m.pointee.allow_important_override = c.allowImportantOverride ? 1 : 0
    return m
  }

  static func workspaceConfig(_ m: borrowing Subcenter__Storage__V1__WorkspaceConfig)
    throws(StorageError) -> WorkspaceConfig
  {
    let topics = try Proto.messages(m.topics, m.n_topics) {
      (t) throws(StorageError) -> Topic in
      guard let d = TopicDefault(rawValue: Int32(bitPattern: t.default_state.rawValue)) else {
        throw StorageError(
          .damaged, "topic default_state: unknown value \(t.default_state.rawValue)")
      }
      return Topic(
        id: Proto.string(t.id), name: Proto.text(t.name), description: Proto.text(t.description),
        defaultState: d)
    }
    let limits = try Proto.messages(m.limits, m.n_limits) { (l) throws(StorageError) in
      MessageLimit(
        channel: Proto.string(l.channel), maxMessages: l.max_messages,
        windowSeconds: l.window_seconds)
    }
    return WorkspaceConfig(
      workspace: Proto.string(m.workspace), channels: Proto.strings(m.channels, m.n_channels),
      topics: topics, limits: limits, allowImportantOverride: m.allow_important_override != 0)
  }

  static func preferenceState(_ s: Subcenter__Storage__V1__PreferenceState, _ field: String)
    throws(StorageError) -> PreferenceState
  {
    guard let v = PreferenceState(rawValue: Int32(bitPattern: s.rawValue)) else {
      throw StorageError(.damaged, "\(field): unknown value \(s.rawValue)")
    }
    return v
  }

  /// The message a pointer field points to; `damaged` when it is missing.
  static func present<T>(_ p: UnsafeMutablePointer<T>?, _ field: String) throws(StorageError)
    -> T
  {
    guard let p else { throw StorageError(.damaged, "\(field) is missing") }
    return p.pointee
  }
}
