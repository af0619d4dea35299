// Bearer-token credentials (SPEC §5): the tokens file keeps only each token's SHA-256;
// a presented token is hashed and compared in constant time against every entry.

import Foundation
import GRPCTransport
import SubcenterCore
import Synchronization

/// What a credential may do.
public enum Scope: String, Sendable, CaseIterable, Codable {
  case read, write, check, override, privacy, pii, admin

  fileprivate var bit: UInt8 {
    switch self {
    case .read: 1
    case .write: 2
    case .check: 4
    case .override: 8
    case .privacy: 16
    case .pii: 32
    case .admin: 64
    }
  }
}

/// An authenticated caller.
public struct Credential: Sendable {
  /// Recorded as `actor` in history.
  public let name: String
  /// A workspace id, or `*` for every workspace.
  public let workspace: String
  public let scopes: Set<Scope>
  fileprivate let digest: [UInt8]
  /// `scopes` as bits (`Scope.bit`): checked on every call, without hashing.
  private let scopeBits: UInt8

  fileprivate init(name: String, workspace: String, scopes: Set<Scope>, digest: [UInt8]) {
    self.name = name
    self.workspace = workspace
    self.scopes = scopes
    self.digest = digest
    scopeBits = scopes.reduce(0) { $0 | $1.bit }
  }

  /// Whether the credential holds `scope`, or `admin`.
  private func holds(_ scope: Scope) -> Bool { scopeBits & (scope.bit | Scope.admin.bit) != 0 }

  /// Whether PII may be shown unredacted.
  public var seesPII: Bool { holds(.pii) }

  /// PERMISSION_DENIED unless this credential holds `scope` (or `admin`).
  public func authorize(_ scope: Scope) throws(RPCStatus) {
    guard holds(scope) else {
      throw RPCStatus(.permissionDenied, "credential '\(name)' lacks scope '\(scope.rawValue)'")
    }
  }

  /// PERMISSION_DENIED unless this credential is valid for workspace `ws`.
  public func authorize(workspace ws: String) throws(RPCStatus) {
    guard workspace == "*" || workspace == ws else {
      throw RPCStatus(
        .permissionDenied, "credential '\(name)' is not valid for workspace '\(ws)'")
    }
  }
}

/// The tokens in force: the tokens file read at start, replaced whole when it is read again
/// (SIGHUP). A connection remembers a header it verified only for the tokens it was
/// verified against, so a token taken out of the file is refused at once, on connections
/// already open too.
public final class Tokens: Sendable {
  private let store: Mutex<TokenStore>
  private let generationCounter = Atomic<Int>(0)

  public init(_ store: TokenStore) { self.store = Mutex(store) }

  /// Changes each time the tokens are replaced.
  public var generation: Int { generationCounter.load(ordering: .acquiring) }

  /// Puts `tokens` in force for every call from now on.
  public func replace(with tokens: TokenStore) {
    store.withLock { $0 = tokens }
    generationCounter.add(1, ordering: .releasing)
  }

  /// `TokenStore.authenticate`, remembering the verified header on the connection: a
  /// connection presenting the same header again (compared in constant time) to the same
  /// tokens skips the hashing.
  public func authenticate(_ metadata: Metadata, connection: ConnectionContext) throws(RPCStatus)
    -> Credential
  {
    try verify(metadata, connection: connection).credential
  }

  /// `authenticate`, returning the verified header itself (what a call's admit check hands
  /// its handler: `credential(admitted:_:)`).
  func verify(_ metadata: Metadata, connection: ConnectionContext) throws(RPCStatus)
    -> VerifiedHeader
  {
    let header = try TokenStore.authorizationHeader(metadata)
    let generation = self.generation
    if let cached = connection.userData as? VerifiedHeader, cached.generation == generation,
      cached.matches(header)
    {
      return cached
    }
    let tokens = store.withLock { $0 }
    let verified = VerifiedHeader(
      header: Array(header.utf8), credential: try tokens.credential(header),
      generation: generation)
    connection.userData = verified
    return verified
  }

  /// The credential of `call`: the one its admit check verified (`admission`) while those
  /// are still the tokens in force, else authenticated again.
  func credential(admitted admission: AnyObject?, _ call: ServerCall) throws(RPCStatus)
    -> Credential
  {
    if let verified = admission as? VerifiedHeader, verified.generation == generation {
      return verified.credential
    }
    return try authenticate(call.metadata, connection: call.connection)
  }

  /// What the token of `credential` is now: its credential in the tokens in force, if any.
  public func current(_ credential: Credential) -> Credential? {
    store.withLock { $0 }.credential(sameTokenAs: credential)
  }
}

/// A tokens file's tokens.
public struct TokenStore: Sendable {
  private let credentials: [Credential]

  /// One entry of the file: these keys, each once and of its type, and no other.
  private struct Entry {
    static let keys = ["name", "sha256", "workspace", "scopes"]
    let name: String
    let sha256: String
    let workspace: String
    let scopes: [String]

    /// `value` as an entry; `fail` makes the error of a reason (naming the key).
    init(_ value: Any, fail: (String) -> FlagError) throws(FlagError) {
      guard let o = value as? [String: Any] else {
        throw fail("expected an object, got \(StrictJSON.describe(value))")
      }
      let keyList = Self.keys.joined(separator: ", ")
      if let key = o.keys.sorted().first(where: { !Self.keys.contains($0) }) {
        throw fail("unknown key \"\(key)\" (keys: \(keyList))")
      }
      func field(_ key: String) throws(FlagError) -> Any {
        guard let v = o[key] else { throw fail("missing key \"\(key)\" (keys: \(keyList))") }
        return v
      }
      func string(_ key: String) throws(FlagError) -> String {
        let v = try field(key)
        guard let s = v as? String else {
          throw fail("\"\(key)\": expected a string, got \(StrictJSON.describe(v))")
        }
        return s
      }
      name = try string("name")
      sha256 = try string("sha256")
      workspace = try string("workspace")
      let list = try field("scopes")
      guard let items = list as? [Any] else {
        throw fail("\"scopes\": expected an array of strings, got \(StrictJSON.describe(list))")
      }
      scopes = try items.enumerated().map { (j, v) throws(FlagError) in
        guard let s = v as? String else {
          throw fail("\"scopes\"[\(j)]: expected a string, got \(StrictJSON.describe(v))")
        }
        return s
      }
    }
  }

  /// Loads a JSON array of `{"name", "sha256", "workspace", "scopes": [..]}`, refusing an
  /// unknown, missing or repeated key, a value of the wrong type and an entry without
  /// scopes; errors name `origin`, the flag (or variable) that gave the file, the file and
  /// the entry.
  public init(file: String, origin: String = "--tokens") throws(FlagError) {
    guard let data = FileManager.default.contents(atPath: file) else {
      var st = stat()
      let why =
        stat(file, &st) != 0
        ? String(cString: strerror(errno))
        : (st.st_mode & S_IFMT) == S_IFDIR ? "it is a directory" : "permission denied"
      throw FlagError("\(origin): cannot read \(file): \(why)")
    }
    let at = "\(origin): \(file)"
    let parsed: Any
    do { parsed = try JSONSerialization.jsonObject(with: data) } catch {
      let detail = (error as NSError).userInfo[NSDebugDescriptionErrorKey] ?? error
      throw FlagError("\(at): not JSON: \(detail)")
    }
    if let why = StrictJSON.leniency(in: [UInt8](data)) {
      throw FlagError("\(at): \(why)")
    }
    guard let list = parsed as? [Any] else {
      throw FlagError(
        "\(at): expected a JSON array of token entries, got \(StrictJSON.describe(parsed))")
    }
    var creds: [Credential] = []
    var entryOfDigest: [[UInt8]: Int] = [:]
    var entryOfName: [String: Int] = [:]
    for (i, value) in list.enumerated() {
      let e = try Entry(value) { FlagError("\(at): entry \(i): \($0)") }
      guard let digest = Crypto.unhex(e.sha256), digest.count == 32 else {
        throw FlagError("\(at): entry \(i) ('\(e.name)'): sha256 must be 64 hex digits")
      }
      var scopes = Set<Scope>()
      for s in e.scopes {
        guard let scope = Scope(rawValue: s) else {
          throw FlagError("\(at): entry \(i) ('\(e.name)'): unknown scope '\(s)'")
        }
        scopes.insert(scope)
      }
      guard !scopes.isEmpty else {
        throw FlagError("\(at): entry \(i) ('\(e.name)'): no scopes: every call would be refused")
      }
      guard !e.name.isEmpty, !e.workspace.isEmpty else {
        throw FlagError("\(at): entry \(i): name and workspace must not be empty")
      }
      // The name is the `actor` of history entries, shown to people and terminals.
      guard !e.name.unicodeScalars.contains(where: { $0.properties.generalCategory == .control })
      else {
        throw FlagError("\(at): entry \(i): the name must not contain control characters")
      }
      if let why = Self.workspaceProblem(e.workspace) {
        throw FlagError("\(at): entry \(i) ('\(e.name)'): \(why)")
      }
      // One token, one credential; one name, one credential (history names the caller).
      if let j = entryOfDigest.updateValue(i, forKey: digest) {
        throw FlagError("\(at): entries \(j) and \(i) have the same sha256 (one token)")
      }
      if let j = entryOfName.updateValue(i, forKey: e.name) {
        throw FlagError(
          "\(at): entries \(j) and \(i) have the same name '\(e.name)' (history records "
            + "a caller by its credential's name)")
      }
      creds.append(Credential(name: e.name, workspace: e.workspace, scopes: scopes, digest: digest))
    }
    credentials = creds
  }

  /// How many tokens the file lists (none: every call but health is UNAUTHENTICATED).
  public var count: Int { credentials.count }

  /// Tokens given directly (tests and tools).
  public init(tokens: [(token: String, name: String, workspace: String, scopes: Set<Scope>)]) {
    credentials = tokens.map {
      Credential(
        name: $0.name, workspace: $0.workspace, scopes: $0.scopes,
        digest: SHA256.hash($0.token.utf8))
    }
  }

  /// The credential of the call's `authorization: Bearer <token>`; UNAUTHENTICATED when
  /// the header is missing, malformed or names no known token.
  public func authenticate(_ metadata: Metadata) throws(RPCStatus) -> Credential {
    try credential(Self.authorizationHeader(metadata))
  }

  /// The credential of this file with the same token as `other`, if any.
  func credential(sameTokenAs other: Credential) -> Credential? {
    credentials.first { Crypto.constantTimeEqual($0.digest, other.digest) }
  }

  /// The call's one `authorization` header (missing or repeated: UNAUTHENTICATED).
  fileprivate static func authorizationHeader(_ metadata: Metadata) throws(RPCStatus) -> String {
    guard let header = metadata["authorization"] else {
      throw RPCStatus(.unauthenticated, "missing authorization: Bearer <token>")
    }
    guard metadata.count(of: "authorization") == 1 else { throw malformed }
    return header
  }

  /// The credential whose token `header` carries.
  fileprivate func credential(_ header: String) throws(RPCStatus) -> Credential {
    guard let token = Self.bearerToken(header) else { throw Self.malformed }
    let digest = SHA256.hash(token)
    var found: Credential?
    for c in credentials where Crypto.constantTimeEqual(c.digest, digest) { found = c }
    guard let found else { throw RPCStatus(.unauthenticated, "unknown token") }
    return found
  }

  static let malformed = RPCStatus(
    .unauthenticated, "authorization must be one header 'Bearer <token>'")

  /// The token bytes of a `Bearer` header (scheme matched case-insensitively, RFC 7235):
  /// "Bearer", one or more spaces, then a token without spaces or tabs.
  static func bearerToken(_ header: String) -> [UInt8]? {
    var h = header
    return h.withUTF8 { u -> [UInt8]? in
      guard u.count > 7 else { return nil }
      let scheme: [UInt8] = Array("bearer".utf8)
      for i in 0..<6 where u[i] | 0x20 != scheme[i] { return nil }
      var i = 6
      guard u[i] == 0x20 else { return nil }
      while i < u.count, u[i] == 0x20 { i += 1 }
      guard i < u.count else { return nil }
      for j in i..<u.count where u[j] == 0x20 || u[j] == 0x09 { return nil }
      return Array(u[i...])
    }
  }

  /// Why `workspace` cannot be a credential's workspace (`*` or a workspace id), nil if it
  /// can.
  public static func workspaceProblem(_ workspace: String) -> String? {
    guard workspace != "*" else { return nil }
    do { try Validate.workspaceID(workspace) } catch {
      return "workspace must be \"*\" or a workspace id ([a-z0-9_-]{1,64}): \(error.reason)"
    }
    return nil
  }

  /// A new random token and the tokens-file entry for it (`subcenterctl token create`).
  public static func createToken(name: String, workspace: String, scopes: [Scope]) -> (
    token: String, entry: String
  ) {
    let token = "sc_" + Base64.encode(Crypto.randomBytes(count: 32), url: true)
    let hash = Crypto.hex(SHA256.hash(token.utf8))
    let scopeList = scopes.map { "\"\($0.rawValue)\"" }.joined(separator: ", ")
    let (n, w) = (JSONText.quoted(name), JSONText.quoted(workspace))
    let entry =
      "{\"name\": \(n), \"sha256\": \"\(hash)\", \"workspace\": \(w), \"scopes\": [\(scopeList)]}"
    return (token, entry)
  }
}

/// A header verified on a connection, kept in its `ConnectionContext`.
final class VerifiedHeader {
  let header: [UInt8]
  let credential: Credential
  /// `Tokens.generation` when it was verified.
  let generation: Int
  init(header: [UInt8], credential: Credential, generation: Int) {
    self.header = header
    self.credential = credential
    self.generation = generation
  }

  /// Whether `other` is the same header, compared in constant time without copying it.
  func matches(_ other: String) -> Bool {
    func same(_ b: UnsafeBufferPointer<UInt8>) -> Bool {
      guard b.count == header.count else { return false }
      var diff: UInt8 = 0
      for i in 0..<b.count { diff |= b[i] ^ header[i] }
      return diff == 0
    }
    // In place where the string has its bytes together (a copy for `withUTF8` is a retain
    // and release a call).
    if let result = other.utf8.withContiguousStorageIfAvailable(same) { return result }
    var other = other
    return other.withUTF8(same)
  }
}
