// What a snapshot holds, as Swift values: every workspace (configuration and name
// numbering), every person in full, and every workspace's suppression set.
// SnapshotRecordCodec.swift turns them into `SnapshotRecord` protobuf bytes.

import SubcenterCore

/// One record of a snapshot file.
public enum SnapshotRecord: Sendable, Equatable {
  /// A workspace; it comes before every record of that workspace.
  case workspace(WorkspaceSnapshot)
  /// A person or anonymous profile, channels and topics numbered as its workspace's
  /// `WorkspaceSnapshot` numbers them.
  case person(workspace: String, Person)
  /// Some of a workspace's suppressed identifiers (a large set spans several records).
  case suppressions(workspace: String, [SuppressionHash])
  /// The server secret the snapshot was written under (`IdentifierHasher.secretCheck`);
  /// the first record.
  case secretCheck([UInt8])

  /// How many suppression hashes one record holds at most when a set is split.
  public static let suppressionsPerRecord = 4096

  /// The records of one workspace's suppression set (none when it is empty), sorted.
  public static func suppressions(workspace: String, set: Set<SuppressionHash>)
    -> [SnapshotRecord]
  {
    let sorted = set.sorted()
    return stride(from: 0, to: sorted.count, by: suppressionsPerRecord).map {
      .suppressions(
        workspace: workspace,
        Array(sorted[$0..<min($0 + suppressionsPerRecord, sorted.count)]))
    }
  }
}

/// A workspace as a snapshot keeps it: its configuration and the numbers it gave channel
/// and topic names, kept so persons' numbered entries mean the same after a restart.
public struct WorkspaceSnapshot: Sendable, Equatable {
  public var config: WorkspaceConfig
  /// `channelNames[n]` is channel number n's name; `[0]` is "".
  public var channelNames: [String]
  /// `topicNames[n]` is topic number n's name; `[0]` is "".
  public var topicNames: [String]
  /// The seq of the workspace's newest change-feed event (0: none): see
  /// `SubscriptionStore.lastEventSeq(workspace:)`.
  public var lastEventSeq: UInt64

  public init(
    config: WorkspaceConfig, channelNames: [String], topicNames: [String],
    lastEventSeq: UInt64 = 0
  ) {
    self.config = config
    self.channelNames = channelNames
    self.topicNames = topicNames
    self.lastEventSeq = lastEventSeq
  }

  /// The snapshot of a live workspace.
  public init(_ workspace: Workspace, lastEventSeq: UInt64 = 0) {
    self.init(
      config: workspace.config, channelNames: workspace.channelNames,
      topicNames: workspace.topicNames, lastEventSeq: lastEventSeq)
  }

  /// The workspace again, with the same numbers for every name. A numbering that cannot
  /// be rebuilt (names that are not valid ids, a missing "" at 0) is `damaged`.
  public func restore() throws(StorageError) -> Workspace {
    let what = "workspace \(config.workspace) in a snapshot"
    guard channelNames.first == "", topicNames.first == "" else {
      throw StorageError(.damaged, "\(what): name numbering does not start with \"\"")
    }
    do {
      // A configuration naming every numbered name in number order numbers them as
      // before; the real configuration then keeps those numbers.
      let numbering = try Workspace(
        WorkspaceConfig(
          workspace: config.workspace, channels: Array(channelNames.dropFirst()),
          topics: topicNames.dropFirst().map { Topic(id: $0, defaultState: .subscribed) }))
      let workspace = try Workspace(config, previous: numbering)
      guard workspace.channelNames == channelNames, workspace.topicNames == topicNames else {
        throw StorageError(.damaged, "\(what): its name numbering cannot be rebuilt")
      }
      return workspace
    } catch let e as CoreError {
      throw StorageError(.damaged, "\(what): \(e.message)")
    } catch let e as StorageError {
      throw e
    } catch {
      throw StorageError(.damaged, "\(what): \(error)")
    }
  }
}
