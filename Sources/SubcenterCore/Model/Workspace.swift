// A workspace's configuration (what ConfigureWorkspace sends) and its resolved form,
// `Workspace`, which numbers channel and topic names so persons store small ids.

/// A small number standing for a channel or topic name within one workspace; 0 is the
/// empty name ("the whole channel", "every channel"). Numbers are never reused: a name
/// keeps its number after it leaves the configuration, so people's entries for a removed
/// topic come back when it is added again.
public typealias NameID = UInt16

/// A topic as configured (proto `Topic`).
public struct Topic: Sendable, Equatable {
  public var id: String
  public var name: String
  public var description: String
  public var defaultState: TopicDefault

  public init(id: String, name: String = "", description: String = "", defaultState: TopicDefault) {
    self.id = id
    self.name = name
    self.description = description
    self.defaultState = defaultState
  }
}

/// At most `maxMessages` recorded sends per person in a sliding window (proto
/// `MessageLimit`).
public struct MessageLimit: Sendable, Equatable {
  public var channel: String
  public var maxMessages: Int32
  public var windowSeconds: Int64

  public init(channel: String, maxMessages: Int32, windowSeconds: Int64) {
    self.channel = channel
    self.maxMessages = maxMessages
    self.windowSeconds = windowSeconds
  }
}

/// A workspace's configuration (proto `WorkspaceConfig`).
public struct WorkspaceConfig: Sendable, Equatable {
  public var workspace: String
  public var channels: [String]
  public var topics: [Topic]
  public var limits: [MessageLimit]
  public var allowImportantOverride: Bool

  public init(
    workspace: String, channels: [String] = WorkspaceConfig.defaultChannels,
    topics: [Topic] = [], limits: [MessageLimit] = [], allowImportantOverride: Bool = false
  ) {
    self.workspace = workspace
    self.channels = channels
    self.topics = topics
    self.limits = limits
    self.allowImportantOverride = allowImportantOverride
  }

  public static let defaultChannels = ["email", "sms", "push", "in_app"]
  /// The workspace a server with no configuration starts with.
  public static let defaultWorkspaceID = "default"

  /// Checks every field of SPEC §3 ConfigureWorkspace.
  public func validate() throws(CoreError) {
    try Validate.workspaceID(workspace)
    guard !channels.isEmpty else {
      throw .invalidArgument("channels", "at least one channel must be configured")
    }
    var seenChannels = Set<String>()
    for (i, c) in channels.enumerated() {
      try Validate.channelOrTopicID(c, field: "channels[\(i)]")
      guard seenChannels.insert(c).inserted else {
        throw .invalidArgument("channels[\(i)]", "duplicate channel")
      }
    }
    var seenTopics = Set<String>()
    for (i, t) in topics.enumerated() {
      try Validate.channelOrTopicID(t.id, field: "topics[\(i)].id")
      guard seenTopics.insert(t.id).inserted else {
        throw .invalidArgument("topics[\(i)].id", "duplicate topic")
      }
      try Validate.maxBytes(t.name, Limits.topicNameBytes, field: "topics[\(i)].name")
      try Validate.maxBytes(
        t.description, Limits.topicDescriptionBytes, field: "topics[\(i)].description")
      guard t.defaultState != .unspecified else {
        throw .invalidArgument("topics[\(i)].default_state", "must be SUBSCRIBED or UNSUBSCRIBED")
      }
    }
    var limited = Set<String>()
    for (i, l) in limits.enumerated() {
      guard seenChannels.contains(l.channel) else {
        throw .invalidArgument("limits[\(i)].channel", "names no configured channel")
      }
      guard limited.insert(l.channel).inserted else {
        throw .invalidArgument("limits[\(i)].channel", "a channel may have one limit")
      }
      guard l.maxMessages >= 1 else {
        throw .invalidArgument("limits[\(i)].max_messages", "must be at least 1")
      }
      guard (1...Limits.maxWindowSeconds).contains(l.windowSeconds) else {
        throw .invalidArgument(
          "limits[\(i)].window_seconds", "must be between 1 and \(Limits.maxWindowSeconds)")
      }
    }
  }
}

/// A message limit in the units the decision uses.
public struct LimitRule: Sendable, Equatable {
  public var maxMessages: Int
  public var windowMillis: Int64

  public init(maxMessages: Int, windowMillis: Int64) {
    self.maxMessages = maxMessages
    self.windowMillis = windowMillis
  }

  /// The times of the sends that count at `now`: those of the window before it, and those
  /// recorded up to a window ahead of it while the clock was ahead (an NTP step back, a
  /// clock set wrong at boot), until they leave the window. So a step back locks no one out
  /// for longer than two windows, nor lets more than one extra window's sends through; a
  /// send recorded further ahead never counts again.
  public func counted(at now: Int64) -> SendWindow {
    SendWindow(after: now - windowMillis, before: now + windowMillis)
  }
}

/// The times (Unix ms) of the sends a limit counts, both bounds excluded
/// (`LimitRule.counted(at:)`).
public struct SendWindow: Sendable, Equatable {
  public var after: Int64
  public var before: Int64

  public init(after: Int64, before: Int64) {
    self.after = after
    self.before = before
  }

  /// Whether a send at `t` counts.
  @inline(__always)
  public func contains(_ t: Int64) -> Bool { t > after && t < before }
}

/// A validated configuration with its name numbering. Immutable: a new configuration
/// makes a new `Workspace` that keeps every number the previous one gave.
public final class Workspace: Sendable {
  public let config: WorkspaceConfig
  /// Name of each channel number; `[0]` is "".
  public let channelNames: [String]
  /// Name of each topic number; `[0]` is "".
  public let topicNames: [String]
  /// Configured channels, in configuration order.
  public let channels: [NameID]
  /// Configured topics, in configuration order.
  public let topics: [NameID]

  private let channelIDs: [String: NameID]
  private let topicIDs: [String: NameID]
  private let configuredChannel: [Bool]
  private let limitByChannel: [LimitRule?]
  private let topicDefaults: [TopicDefault]

  public var id: String { config.workspace }

  /// Resolves `config` (validating it first), keeping the numbers of `previous`.
  public convenience init(_ config: WorkspaceConfig, previous: Workspace? = nil) throws(CoreError) {
    try config.validate()
    try self.init(
      unvalidated: config, channelNames: previous?.channelNames ?? [""],
      topicNames: previous?.topicNames ?? [""], extraChannels: [], extraTopics: [])
  }

  private init(
    unvalidated config: WorkspaceConfig, channelNames oldChannels: [String],
    topicNames oldTopics: [String], extraChannels: [String], extraTopics: [String]
  ) throws(CoreError) {
    self.config = config
    var channelNames = oldChannels
    var channelIDs = [String: NameID](minimumCapacity: channelNames.count)
    for (i, n) in channelNames.enumerated() { channelIDs[n] = NameID(i) }
    var topicNames = oldTopics
    var topicIDs = [String: NameID](minimumCapacity: topicNames.count)
    for (i, n) in topicNames.enumerated() { topicIDs[n] = NameID(i) }

    func number(_ name: String, _ names: inout [String], _ ids: inout [String: NameID])
      throws(CoreError) -> NameID
    {
      if let id = ids[name] { return id }
      guard names.count <= Int(NameID.max) else {
        throw .resourceExhausted("too many distinct channel or topic names in one workspace")
      }
      let id = NameID(names.count)
      names.append(name)
      ids[name] = id
      return id
    }

    var channels: [NameID] = []
    for c in config.channels { channels.append(try number(c, &channelNames, &channelIDs)) }
    for c in extraChannels { _ = try number(c, &channelNames, &channelIDs) }
    var topics: [NameID] = []
    for t in config.topics { topics.append(try number(t.id, &topicNames, &topicIDs)) }
    for t in extraTopics { _ = try number(t, &topicNames, &topicIDs) }

    var configured = [Bool](repeating: false, count: channelNames.count)
    for c in channels { configured[Int(c)] = true }
    var limits = [LimitRule?](repeating: nil, count: channelNames.count)
    for l in config.limits {
      limits[Int(channelIDs[l.channel]!)] = LimitRule(
        maxMessages: Int(l.maxMessages), windowMillis: l.windowSeconds * 1000)
    }
    var defaults = [TopicDefault](repeating: .unspecified, count: topicNames.count)
    for (i, t) in config.topics.enumerated() { defaults[Int(topics[i])] = t.defaultState }

    self.channelNames = channelNames
    self.topicNames = topicNames
    self.channelIDs = channelIDs
    self.topicIDs = topicIDs
    self.channels = channels
    self.topics = topics
    self.configuredChannel = configured
    self.limitByChannel = limits
    self.topicDefaults = defaults
  }

  /// The same configuration with numbers for more names (replay of a change that names a
  /// channel or topic no longer configured). Returns `self` when nothing is new.
  public func numbering(channels: [String], topics: [String]) throws(CoreError) -> Workspace {
    let newChannels = channels.filter { channelIDs[$0] == nil }
    let newTopics = topics.filter { topicIDs[$0] == nil }
    if newChannels.isEmpty && newTopics.isEmpty { return self }
    return try Workspace(
      unvalidated: config, channelNames: channelNames, topicNames: topicNames,
      extraChannels: newChannels, extraTopics: newTopics)
  }

  /// The number of a channel name, configured or not (nil if never numbered).
  public func channelID(_ name: String) -> NameID? { Self.number(name, channelNames, channelIDs) }
  /// The number of a topic name, configured or not (nil if never numbered).
  public func topicID(_ name: String) -> NameID? { Self.number(name, topicNames, topicIDs) }

  public func channelName(_ id: NameID) -> String { channelNames[Int(id)] }
  public func topicName(_ id: NameID) -> String { topicNames[Int(id)] }

  public func isConfigured(channel id: NameID) -> Bool {
    Int(id) < configuredChannel.count && configuredChannel[Int(id)]
  }
  public func isConfigured(topic id: NameID) -> Bool {
    Int(id) < topicDefaults.count && topicDefaults[Int(id)] != .unspecified
  }

  /// A configured channel's number; "" or an unknown channel is `invalidArgument`.
  public func configuredChannel(_ name: String, field: String = "channel") throws(CoreError)
    -> NameID
  {
    guard !name.isEmpty else { throw .invalidArgument(field, "a channel must be given") }
    guard let id = Self.number(name, channelNames, channelIDs), configuredChannel[Int(id)] else {
      throw .invalidArgument(field, "unknown channel")
    }
    return id
  }

  /// A configured topic's number, 0 for ""; an unknown topic is `invalidArgument`.
  public func configuredTopic(_ name: String, field: String = "topic") throws(CoreError) -> NameID {
    if name.isEmpty { return 0 }
    guard let id = Self.number(name, topicNames, topicIDs), topicDefaults[Int(id)] != .unspecified
    else {
      throw .invalidArgument(field, "unknown topic")
    }
    return id
  }

  /// The number of `name`: a scan of a few names costs less than hashing the name (this
  /// runs on every call); many names go through the dictionary.
  @inline(__always)
  private static func number(_ name: String, _ names: [String], _ ids: [String: NameID])
    -> NameID?
  {
    guard names.count <= 16 else { return ids[name] }
    for i in names.indices where names[i] == name { return NameID(i) }
    return nil
  }

  /// The message limit of a channel, if it has one.
  public func limit(channel id: NameID) -> LimitRule? {
    Int(id) < limitByChannel.count ? limitByChannel[Int(id)] : nil
  }

  /// Everything the decision needs to know about (channel, topic) in this workspace.
  public func target(channel: NameID, topic: NameID) -> DeliveryTarget {
    DeliveryTarget(
      channel: channel, topic: topic,
      topicDefault: topic == 0 ? .unspecified : topicDefaults[Int(topic)],
      limit: limit(channel: channel), overridesAllowed: config.allowImportantOverride)
  }
}
