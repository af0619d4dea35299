// Every change to the state is one `Command` value. A command carries everything needed
// to re-apply it deterministically — its time, its actor, the persons it touches by key
// and the outcome of its validation — so the write-ahead log can store it as one record
// and recovery can replay it without the clock, the secret or the original request.
// Channels and topics travel by name (numbers are an in-memory detail); suppressed
// identifiers travel only as keyed hashes.

/// One change, as validated by the store and applied to its state.
public enum Command: Sendable, Equatable {
  case configureWorkspace(ConfigureWorkspace)
  case identify(Identify)
  case setPreference(SetPreference)
  case setGlobal(SetGlobal)
  case recordSends(RecordSends)
  case override(Override)
  case forget(Forget)
  case suppress(Suppress)
  case unsuppress(Unsuppress)
  case expireAnonymous(ExpireAnonymous)

  /// Replaces (or creates) a workspace's configuration.
  public struct ConfigureWorkspace: Sendable, Equatable {
    public var config: WorkspaceConfig
    public var at: Int64
    public var actor: String

    public init(config: WorkspaceConfig, at: Int64, actor: String) {
      self.config = config
      self.at = at
      self.actor = actor
    }
  }

  /// Creates or updates `person`. `email`/`phone`, when set, replace the previous value
  /// (which stops naming the person). `anonymousID`, when set, is attached to the person;
  /// with `mergesProfile` it named an anonymous profile that is merged in and removed.
  /// A new anonymous profile is `person = .anonymous(id)`, `creates = true`.
  public struct Identify: Sendable, Equatable {
    public var workspace: String
    public var person: PersonKey
    public var creates: Bool
    public var email: String?
    public var phone: String?
    public var anonymousID: String?
    public var mergesProfile: Bool
    public var at: Int64
    public var actor: String

    public init(
      workspace: String, person: PersonKey, creates: Bool, email: String? = nil,
      phone: String? = nil, anonymousID: String? = nil, mergesProfile: Bool = false, at: Int64,
      actor: String
    ) {
      self.workspace = workspace
      self.person = person
      self.creates = creates
      self.email = email
      self.phone = phone
      self.anonymousID = anonymousID
      self.mergesProfile = mergesProfile
      self.at = at
      self.actor = actor
    }
  }

  /// Sets one explicit entry (Subscribe / Unsubscribe).
  public struct SetPreference: Sendable, Equatable {
    public var workspace: String
    public var person: PersonKey
    public var channel: String
    public var topic: String
    public var state: PreferenceState
    public var source: String
    public var noticeVersion: String
    public var at: Int64
    public var actor: String

    public init(
      workspace: String, person: PersonKey, channel: String, topic: String,
      state: PreferenceState, source: String, noticeVersion: String, at: Int64, actor: String
    ) {
      self.workspace = workspace
      self.person = person
      self.channel = channel
      self.topic = topic
      self.state = state
      self.source = source
      self.noticeVersion = noticeVersion
      self.at = at
      self.actor = actor
    }
  }

  /// Sets (UnsubscribeAll) or clears (Resubscribe) the global flag.
  public struct SetGlobal: Sendable, Equatable {
    public var workspace: String
    public var person: PersonKey
    public var unsubscribed: Bool
    public var source: String
    public var at: Int64
    public var actor: String

    public init(
      workspace: String, person: PersonKey, unsubscribed: Bool, source: String, at: Int64,
      actor: String
    ) {
      self.workspace = workspace
      self.person = person
      self.unsubscribed = unsubscribed
      self.source = source
      self.at = at
      self.actor = actor
    }
  }

  /// Counts one send on `channel` for each person (allowed `record_send` decisions; a
  /// batch gives one command per shard).
  public struct RecordSends: Sendable, Equatable {
    public var workspace: String
    public var channel: String
    public var persons: [PersonKey]
    public var at: Int64

    public init(workspace: String, channel: String, persons: [PersonKey], at: Int64) {
      self.workspace = workspace
      self.channel = channel
      self.persons = persons
      self.at = at
    }
  }

  /// An OverrideForImportantMessage call on a known person: a history entry only.
  public struct Override: Sendable, Equatable {
    public var workspace: String
    public var person: PersonKey
    public var channel: String
    public var topic: String
    public var allowed: Bool
    public var reason: DecisionReason
    /// Names the message id, the justification and what was overridden or refused.
    public var detail: String
    public var at: Int64
    public var actor: String

    public init(
      workspace: String, person: PersonKey, channel: String, topic: String, allowed: Bool,
      reason: DecisionReason, detail: String, at: Int64, actor: String
    ) {
      self.workspace = workspace
      self.person = person
      self.channel = channel
      self.topic = topic
      self.allowed = allowed
      self.reason = reason
      self.detail = detail
      self.at = at
      self.actor = actor
    }
  }

  /// Removes a person (ForgetPerson), and suppresses `suppress` (its identifiers' hashes,
  /// with `also_suppress`).
  public struct Forget: Sendable, Equatable {
    public var workspace: String
    public var person: PersonKey
    public var suppress: [SuppressionHash]
    public var at: Int64
    public var actor: String

    public init(
      workspace: String, person: PersonKey, suppress: [SuppressionHash] = [], at: Int64,
      actor: String
    ) {
      self.workspace = workspace
      self.person = person
      self.suppress = suppress
      self.at = at
      self.actor = actor
    }
  }

  /// Suppresses identifiers (by hash) and forgets the persons that held them.
  public struct Suppress: Sendable, Equatable {
    public var workspace: String
    public var hashes: [SuppressionHash]
    public var forget: [PersonKey]
    public var reason: String
    public var at: Int64
    public var actor: String

    public init(
      workspace: String, hashes: [SuppressionHash], forget: [PersonKey], reason: String,
      at: Int64, actor: String
    ) {
      self.workspace = workspace
      self.hashes = hashes
      self.forget = forget
      self.reason = reason
      self.at = at
      self.actor = actor
    }
  }

  /// Removes identifiers (by hash) from suppression.
  public struct Unsuppress: Sendable, Equatable {
    public var workspace: String
    public var hashes: [SuppressionHash]
    public var at: Int64
    public var actor: String

    public init(workspace: String, hashes: [SuppressionHash], at: Int64, actor: String) {
      self.workspace = workspace
      self.hashes = hashes
      self.at = at
      self.actor = actor
    }
  }

  /// Removes anonymous profiles whose TTL ran out (by anonymous id).
  public struct ExpireAnonymous: Sendable, Equatable {
    public var workspace: String
    public var profiles: [String]
    public var at: Int64

    public init(workspace: String, profiles: [String], at: Int64) {
      self.workspace = workspace
      self.profiles = profiles
      self.at = at
    }
  }

  /// The workspace the command changes.
  public var workspace: String {
    switch self {
    case .configureWorkspace(let c): c.config.workspace
    case .identify(let c): c.workspace
    case .setPreference(let c): c.workspace
    case .setGlobal(let c): c.workspace
    case .recordSends(let c): c.workspace
    case .override(let c): c.workspace
    case .forget(let c): c.workspace
    case .suppress(let c): c.workspace
    case .unsuppress(let c): c.workspace
    case .expireAnonymous(let c): c.workspace
    }
  }

  /// When the command happened (Unix ms).
  public var at: Int64 {
    switch self {
    case .configureWorkspace(let c): c.at
    case .identify(let c): c.at
    case .setPreference(let c): c.at
    case .setGlobal(let c): c.at
    case .recordSends(let c): c.at
    case .override(let c): c.at
    case .forget(let c): c.at
    case .suppress(let c): c.at
    case .unsuppress(let c): c.at
    case .expireAnonymous(let c): c.at
    }
  }
}
