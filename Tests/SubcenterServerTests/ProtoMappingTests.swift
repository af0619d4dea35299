// The answers written field by field are the bytes protobuf-c packs for them.

import SubcenterCore
import SubcenterProto
import Testing

@testable import SubcenterServer

@Suite struct ProtoMappingTests {
  /// A preference answer, whose effective rows are written by number from the workspace's
  /// names, is what protobuf-c packs for the same preferences named (long strings, whose
  /// messages need a longer length, and empty ones, which are not written, included).
  @Test(arguments: [0, 1, 3])
  func preferencesEqualProtobufC(entryCount: Int) throws {
    let long = String(repeating: "long-channel-", count: 4)
    let model = try Workspace(
      WorkspaceConfig(
        workspace: "acme", channels: ["email", "sms", long],
        topics: [
          Topic(id: "news", name: "News", defaultState: .subscribed),
          Topic(id: "promo", name: "Promotions", defaultState: .unsubscribed),
        ],
        limits: [], allowImportantOverride: true))
    let reasons: [DecisionReason] = [
      .subscribed, .topicNotOptedIn, .globalUnsubscribed, .channelUnsubscribed, .subscribed,
    ]
    var rows: [EffectiveRow] = []
    for channel in ["email", "sms", long] {
      for topic in ["", "news", "promo"] {
        rows.append(
          EffectiveRow(
            channel: model.channelID(channel)!, topic: topic.isEmpty ? 0 : model.topicID(topic)!,
            reason: reasons[rows.count % reasons.count]))
      }
    }
    let entries = [
      PreferenceEntry(
        channel: "email", topic: "", state: .unsubscribed, updatedAt: 1_700_000_000_000,
        source: "bench", noticeVersion: ""),
      PreferenceEntry(
        channel: long, topic: "promo", state: .subscribed, updatedAt: 5,
        source: String(repeating: "s", count: 130), noticeVersion: "v2"),
      PreferenceEntry(
        channel: "sms", topic: "news", state: .unsubscribed, updatedAt: 0, source: "",
        noticeVersion: ""),
    ]
    let p = Preferences(
      personID: entryCount == 1 ? "" : "person-1", globalUnsubscribed: entryCount == 3,
      globalUpdatedAt: entryCount == 3 ? 42 : 0, globalSource: entryCount == 3 ? "one_click" : "",
      entries: Array(entries.prefix(entryCount)), effectiveRows: rows, names: model)

    let a = ProtoArena()
    let m = a.make(subcenter__v1__preferences__init)
    m.pointee.person_id = a.cString(p.personID)
    m.pointee.global_unsubscribed = p.globalUnsubscribed ? 1 : 0
    m.pointee.global_updated_at = p.globalUpdatedAt
    m.pointee.global_source = a.cString(p.globalSource)
    m.pointee.n_entries = p.entries.count
    m.pointee.entries = a.messages(p.entries) { e in
      let x = a.make(subcenter__v1__preference_entry__init)
      x.pointee.channel = a.cString(e.channel)
      x.pointee.topic = a.cString(e.topic)
      x.pointee.state = Subcenter__V1__PreferenceState(UInt32(e.state.rawValue))
      x.pointee.updated_at = e.updatedAt
      x.pointee.source = a.cString(e.source)
      x.pointee.notice_version = a.cString(e.noticeVersion)
      return x
    }
    m.pointee.n_effective = p.effective.count
    m.pointee.effective = a.messages(p.effective) { e in
      let x = a.make(subcenter__v1__effective_state__init)
      x.pointee.channel = a.cString(e.channel)
      x.pointee.topic = a.cString(e.topic)
      x.pointee.allowed = e.allowed ? 1 : 0
      x.pointee.reason = Subcenter__V1__DecisionReason(UInt32(e.reason.rawValue))
      return x
    }
    let framed = ProtoMapping.preferences(p)
    #expect(Array(framed.dropFirst(ProtoMapping.framePrefix)) == ProtoCodec.pack(m))
    #expect(p.effective.count == 9 && p.effective[2].channel == "email")
    #expect(p.effective[2].topic == "promo" && p.effective[2].allowed == false)
  }
}
