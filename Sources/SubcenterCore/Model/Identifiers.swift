// How persons are named: the enums shared with the proto (same numbers), a request's
// PersonRef and the store's PersonKey.

/// An explicit choice (proto `PreferenceState`, same numbers).
public enum PreferenceState: Int32, Sendable, Hashable {
  case unspecified = 0
  case subscribed = 1
  case unsubscribed = 2
}

/// The state a person starts in for a topic (proto `TopicDefault`, same numbers).
public enum TopicDefault: Int32, Sendable, Hashable {
  case unspecified = 0
  /// Received unless the person unsubscribes (an opt-out topic).
  case subscribed = 1
  /// Received only after the person subscribes (an opt-in topic).
  case unsubscribed = 2
}

/// The kind of an identifier (proto `IdentifierKind`, same numbers).
public enum IdentifierKind: Int32, Sendable, Hashable {
  case unspecified = 0
  case personID = 1
  case email = 2
  case phone = 3
  case anonymousID = 4

  /// The proto field name of a `PersonRef` of this kind.
  public var fieldName: String {
    switch self {
    case .unspecified: "kind"
    case .personID: "person_id"
    case .email: "email"
    case .phone: "phone"
    case .anonymousID: "anonymous_id"
    }
  }
}

/// A request's name for a person (proto `PersonRef`, a oneof). `nil` where a request
/// has one stands for "not set".
public enum PersonRef: Sendable, Hashable {
  case personID(String)
  case email(String)
  case phone(String)
  case anonymousID(String)

  public var kind: IdentifierKind {
    switch self {
    case .personID: .personID
    case .email: .email
    case .phone: .phone
    case .anonymousID: .anonymousID
    }
  }

  public var value: String {
    switch self {
    case .personID(let v), .email(let v), .phone(let v), .anonymousID(let v): v
    }
  }

  /// Validates the reference and normalizes it (an email is trimmed and lower-cased).
  /// `field` is the request field holding the ref (`person`, `persons[3]`).
  public static func validated(_ ref: PersonRef?, field: String) throws(CoreError) -> PersonRef {
    guard let ref else { throw .invalidArgument(field, "a person must be given") }
    do {
      switch ref {
      case .personID(let v):
        try Validate.personID(v, field: "")
        return ref
      case .email(let v):
        return .email(try Validate.email(v, field: ""))
      case .phone(let v):
        try Validate.phone(v, field: "")
        return ref
      case .anonymousID(let v):
        try Validate.anonymousID(v, field: "")
        return ref
      }
    } catch {
      // The field name is built only when it is needed.
      throw CoreError(error.kind, field: "\(field).\(ref.kind.fieldName)", error.reason)
    }
  }
}

/// Validates and normalizes an identifier's value of the given kind (emails are trimmed
/// and lower-cased), as suppression needs it.
public func normalizedIdentifier(
  kind: IdentifierKind, value: String, field: String
) throws(CoreError) -> String {
  switch kind {
  case .unspecified:
    throw .invalidArgument(field, "an identifier kind must be given")
  case .personID:
    try Validate.personID(value, field: field)
    return value
  case .email:
    return try Validate.email(value, field: field)
  case .phone:
    try Validate.phone(value, field: field)
    return value
  case .anonymousID:
    try Validate.anonymousID(value, field: field)
    return value
  }
}

/// The store's key of a person: the person id, or for an anonymous profile its
/// anonymous id. Equality and hashing are byte-exact (Swift's `String ==` would equate
/// canonically equivalent spellings, which are different identifiers here).
public struct PersonKey: Sendable, Hashable, CustomStringConvertible {
  public var value: String
  public var isAnonymous: Bool

  public init(_ value: String, anonymous: Bool = false) {
    self.value = value
    self.isAnonymous = anonymous
  }

  public static func person(_ id: String) -> PersonKey { PersonKey(id) }
  public static func anonymous(_ id: String) -> PersonKey { PersonKey(id, anonymous: true) }

  /// The person id a response shows: empty for an anonymous profile.
  public var personID: String { isAnonymous ? "" : value }

  public static func == (a: PersonKey, b: PersonKey) -> Bool {
    a.isAnonymous == b.isAnonymous && a.value.utf8.elementsEqual(b.value.utf8)
  }

  public func hash(into hasher: inout Hasher) {
    hasher.combine(isAnonymous)
    var v = value
    v.withUTF8 { hasher.combine(bytes: UnsafeRawBufferPointer($0)) }
  }

  public var description: String { isAnonymous ? "anonymous:\(value)" : "person:\(value)" }
}

/// Byte-exact string equality (see `PersonKey`).
@inlinable
public func sameBytes(_ a: String, _ b: String) -> Bool {
  guard a.utf8.count == b.utf8.count else { return false }
  var a = a
  var b = b
  return a.withUTF8 { x in
    b.withUTF8 { y in x.count == 0 || x.elementsEqual(y) }
  }
}
