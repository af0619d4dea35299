// `SnapshotRecord` ⇄ `SnapshotRecord` protobuf bytes (proto/subcenter/v1/storage.proto),
// with protobuf-c. Kept beside LogRecordCodec.swift so protobuf-c stays in one folder.

import CProtobufC
import SubcenterCore
import SubcenterProto

/// Encodes snapshot records and decodes them back.
public enum SnapshotRecordCodec {
  public static func encode(_ record: SnapshotRecord) -> [UInt8] {
    let a = ProtoArena()
    var r = Subcenter__Storage__V1__SnapshotRecord()
    subcenter__storage__v1__snapshot_record__init(&r)
    switch record {
    case .workspace(let w):
      let m = a.make(subcenter__storage__v1__workspace_snapshot__init)
      m.pointee.config = LogRecordCodec.workspaceConfig(w.config, a)
      m.pointee.n_channel_names = w.channelNames.count
      m.pointee.channel_names = a.cStrings(w.channelNames)
      m.pointee.n_topic_names = w.topicNames.count
      m.pointee.topic_names = a.cStrings(w.topicNames)
      m.pointee.last_event_seq = w.lastEventSeq
      r.record_case = SUBCENTER__STORAGE__V1__SNAPSHOT_RECORD__RECORD_WORKSPACE
      r.workspace = m
    case .person(let workspace, let p):
      r.record_case = SUBCENTER__STORAGE__V1__SNAPSHOT_RECORD__RECORD_PERSON
      r.person = person(p, workspace: workspace, a)
    case .suppressions(let workspace, let hashes):
      let m = a.make(subcenter__storage__v1__suppression_snapshot__init)
      m.pointee.workspace = a.cString(workspace)
      m.pointee.n_hashes = hashes.count
      m.pointee.hashes = a.hashes(hashes)
      r.record_case = SUBCENTER__STORAGE__V1__SNAPSHOT_RECORD__RECORD_SUPPRESSIONS
      r.suppressions = m
    case .secretCheck(let check):
      r.record_case = SUBCENTER__STORAGE__V1__SNAPSHOT_RECORD__RECORD_SECRET_CHECK
      r.secret_check = check.withUnsafeBytes { a.bytes($0) }
    }
    return withExtendedLifetime(a) { Proto.pack(&r) }
  }

  /// Decodes a record; anything but a valid `SnapshotRecord` is `damaged`. Persons are
  /// read directly (PersonSnapshotReader.swift), other records with protobuf-c.
  public static func decode(_ payload: ArraySlice<UInt8>) throws(StorageError) -> SnapshotRecord {
    let direct = payload.withUnsafeBytes { raw in
      Result { () throws(StorageError) -> SnapshotRecord? in
        guard let r = try person(in: raw) else { return nil }
        return .person(
          workspace: try ProtoWireReader.string(r.workspace, "person.workspace"), r.person)
      }
    }
    if let record = try direct.get() { return record }
    return try decodeWithProtobufC(payload)
  }

  /// Decodes a record with protobuf-c (a copy of `payload`).
  static func decodeWithProtobufC(_ payload: UnsafeRawBufferPointer) throws(StorageError)
    -> SnapshotRecord
  {
    try decodeWithProtobufC(Array(payload)[...])
  }

  /// Decodes a record with protobuf-c.
  static func decodeWithProtobufC(_ payload: ArraySlice<UInt8>) throws(StorageError)
    -> SnapshotRecord
  {
    try Proto.withUnpacked(
      payload, "snapshot record", subcenter__storage__v1__snapshot_record__unpack
    ) { (r) throws(StorageError) -> SnapshotRecord in
      switch r.record_case {
      case SUBCENTER__STORAGE__V1__SNAPSHOT_RECORD__RECORD_WORKSPACE:
        let m = try LogRecordCodec.present(r.workspace, "workspace")
        return .workspace(
          WorkspaceSnapshot(
            config: try LogRecordCodec.workspaceConfig(
              LogRecordCodec.present(m.config, "workspace.config")),
            channelNames: Proto.strings(m.channel_names, m.n_channel_names),
            topicNames: Proto.strings(m.topic_names, m.n_topic_names),
            lastEventSeq: m.last_event_seq))
      case SUBCENTER__STORAGE__V1__SNAPSHOT_RECORD__RECORD_PERSON:
        let m = try LogRecordCodec.present(r.person, "person")
        return .person(workspace: Proto.string(m.workspace), try person(m))
      case SUBCENTER__STORAGE__V1__SNAPSHOT_RECORD__RECORD_SUPPRESSIONS:
        let m = try LogRecordCodec.present(r.suppressions, "suppressions")
        return .suppressions(
          workspace: Proto.string(m.workspace),
          try Proto.hashes(m.hashes, m.n_hashes, "suppressions.hashes"))
      case SUBCENTER__STORAGE__V1__SNAPSHOT_RECORD__RECORD_SECRET_CHECK:
        let b = r.secret_check
        return .secretCheck(
          b.data.map { Array(UnsafeBufferPointer(start: $0, count: b.len)) } ?? [])
      default:
        throw StorageError(
          .damaged,
          "snapshot record of unknown kind (case \(r.record_case.rawValue)): damaged, or "
            + "written by a newer subcenterd (a newer version's data: run that version)")
      }
    }
  }

  // MARK: Persons

  private static func person(_ p: Person, workspace: String, _ a: ProtoArena)
    -> UnsafeMutablePointer<Subcenter__Storage__V1__PersonSnapshot>
  {
    let m = a.make(subcenter__storage__v1__person_snapshot__init)
    m.pointee.workspace = a.cString(workspace)
    m.pointee.key = LogRecordCodec.personKey(p.key, a)
    m.pointee.email = a.cString(p.email)
    m.pointee.phone = a.cString(p.phone)
    m.pointee.n_anonymous_ids = p.anonymousIDs.count
    m.pointee.anonymous_ids = a.cStrings(p.anonymousIDs)
    m.pointee.created_at = p.createdAt
    m.pointee.updated_at = p.updatedAt
    if let g = p.global {
      let gm = a.make(subcenter__storage__v1__global_flag__init)
      gm.pointee.unsubscribed = g.unsubscribed ? 1 : 0
      gm.pointee.updated_at = g.updatedAt
      gm.pointee.source = a.text(g.source)
      m.pointee.global = gm
    }
    m.pointee.n_entries = p.entries.count
    m.pointee.entries = a.messages(p.entries) { e in
      let em = a.make(subcenter__storage__v1__preference_entry__init)
      em.pointee.channel = UInt32(e.channel)
      em.pointee.topic = UInt32(e.topic)
      em.pointee.state = Subcenter__Storage__V1__PreferenceState(
        rawValue: UInt32(bitPattern: e.state.rawValue))
      em.pointee.updated_at = e.updatedAt
      em.pointee.source = a.text(e.source)
      em.pointee.notice_version = a.text(e.noticeVersion)
      return em
    }
    m.pointee.n_history = p.history.count
    m.pointee.history = a.messages(p.history) { h in
      let hm = a.make(subcenter__storage__v1__history_entry__init)
      hm.pointee.seq = h.seq
      hm.pointee.at = h.at
      hm.pointee.action = Subcenter__Storage__V1__HistoryAction(rawValue: UInt32(h.action.rawValue))
      hm.pointee.channel = UInt32(h.channel)
      hm.pointee.topic = UInt32(h.topic)
      hm.pointee.source = a.text(h.source)
      hm.pointee.actor = a.text(h.actor)
      hm.pointee.detail = a.text(h.detail)
      return hm
    }
    m.pointee.next_history_seq = p.nextHistorySeq
    m.pointee.n_send_channels = p.sends.count
    m.pointee.send_channels = a.scalars(p.sends.map { UInt32($0.channel) })
    m.pointee.n_send_times = p.sends.count
    m.pointee.send_times = a.scalars(p.sends.map(\.at))
    return m
  }

  private static func person(_ m: borrowing Subcenter__Storage__V1__PersonSnapshot)
    throws(StorageError) -> Person
  {
    let key = try LogRecordCodec.personKey(m.key, "person.key")
    let global: GlobalFlag? = m.global.map {
      GlobalFlag(
        unsubscribed: $0.pointee.unsubscribed != 0, updatedAt: $0.pointee.updated_at,
        source: Proto.text($0.pointee.source))
    }
    let entries = try Proto.messages(m.entries, m.n_entries) {
      (e) throws(StorageError) -> PreferenceRecord in
      PreferenceRecord(
        channel: try nameID(e.channel, "person.entries.channel"),
        topic: try nameID(e.topic, "person.entries.topic"),
        state: try LogRecordCodec.preferenceState(e.state, "person.entries.state"),
        updatedAt: e.updated_at, source: Proto.text(e.source),
        noticeVersion: Proto.text(e.notice_version))
    }
    let history = try Proto.messages(m.history, m.n_history) {
      (h) throws(StorageError) -> HistoryRecord in
      guard h.action.rawValue <= UInt8.max,
        let action = HistoryAction(rawValue: UInt8(h.action.rawValue))
      else {
        throw StorageError(.damaged, "person.history.action: unknown value \(h.action.rawValue)")
      }
      return HistoryRecord(
        seq: h.seq, at: h.at, action: action,
        channel: try nameID(h.channel, "person.history.channel"),
        topic: try nameID(h.topic, "person.history.topic"), source: Proto.text(h.source),
        actor: Proto.text(h.actor), detail: Proto.text(h.detail))
    }
    guard m.n_send_channels == m.n_send_times else {
      throw StorageError(
        .damaged,
        "person: \(m.n_send_channels) send channels but \(m.n_send_times) send times")
    }
    var sends: [SendRecord] = []
    sends.reserveCapacity(m.n_send_times)
    for i in 0..<m.n_send_times {
      sends.append(
        SendRecord(
          channel: try nameID(m.send_channels[i], "person.send_channels"), at: m.send_times[i]))
    }
    return Person(
      key: key, email: Proto.string(m.email), phone: Proto.string(m.phone),
      anonymousIDs: Proto.strings(m.anonymous_ids, m.n_anonymous_ids), createdAt: m.created_at,
      updatedAt: m.updated_at, global: global, entries: entries, history: history,
      nextHistorySeq: m.next_history_seq, sends: sends)
  }

  static func nameID(_ v: UInt32, _ field: String) throws(StorageError) -> NameID {
    guard v <= UInt32(NameID.max) else {
      throw StorageError(.damaged, "\(field): \(v) is not a channel or topic number")
    }
    return NameID(v)
  }
}
