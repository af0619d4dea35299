// GetHistory paging: newest first, with an opaque cursor that holds the (at, seq) of the
// last entry returned. Entries added later sort after every cursor (or, when merged in
// from an anonymous profile, are simply new entries), so they never shift a later page.
// The cursor is signed with the server secret and bound to the workspace and person, so
// a token that is not ours (or is another person's) is refused.

public enum HistoryPaging {
  /// The position of an entry in history order.
  public struct Cursor: Sendable, Equatable {
    public var at: Int64
    public var seq: UInt32

    public init(at: Int64, seq: UInt32) {
      self.at = at
      self.seq = seq
    }

    init(_ r: HistoryRecord) { self.init(at: r.at, seq: r.seq) }

    func isAfter(_ r: HistoryRecord) -> Bool { r.at != at ? r.at < at : r.seq < seq }
  }

  /// A request's page size: 0 means 100; negative or above 1000 is refused.
  public static func pageSize(_ raw: Int32) throws(CoreError) -> Int {
    if raw == 0 { return Limits.defaultPageSize }
    guard raw > 0, raw <= Limits.maxPageSize else {
      throw .invalidArgument("page_size", "must be between 0 and \(Limits.maxPageSize)")
    }
    return Int(raw)
  }

  private static let prefix = "c1."

  /// The opaque token for `cursor`: `c1.` + hex(at, seq, 8 bytes of HMAC).
  public static func token(
    for cursor: Cursor, workspace: String, key: PersonKey, hasher: IdentifierHasher
  ) -> String {
    let body = bytes(cursor)
    let mac = hasher.tag(macInput(body, workspace: workspace, key: key)).prefix(8)
    return prefix + Hex.encode(body) + Hex.encode(mac)
  }

  /// The cursor in `token`; nil for "" (the first page). A token we did not issue for
  /// this person is `invalidArgument("page_token")`.
  public static func cursor(
    from token: String, workspace: String, key: PersonKey, hasher: IdentifierHasher
  ) throws(CoreError) -> Cursor? {
    if token.isEmpty { return nil }
    let bad = CoreError.invalidArgument("page_token", "not a page token of this history")
    guard token.hasPrefix(prefix), token.utf8.count == prefix.utf8.count + 2 * 20,
      let raw = Hex.decode(String(token.dropFirst(prefix.count)))
    else { throw bad }
    let body = Array(raw[0..<12])
    let mac = Array(hasher.tag(macInput(body, workspace: workspace, key: key)).prefix(8))
    guard HMACSHA256.equal(mac, Array(raw[12..<20])) else { throw bad }
    var at: UInt64 = 0
    for b in body[0..<8] { at = at << 8 | UInt64(b) }
    var seq: UInt32 = 0
    for b in body[8..<12] { seq = seq << 8 | UInt32(b) }
    return Cursor(at: Int64(bitPattern: at), seq: seq)
  }

  /// One page of `history` (sorted oldest first): up to `size` entries before `cursor`
  /// (or the newest), newest first, and the cursor of the next page if entries remain.
  public static func page(_ history: [HistoryRecord], before cursor: Cursor?, size: Int)
    -> (records: [HistoryRecord], next: Cursor?)
  {
    var end = history.count
    if let cursor {
      var lo = 0
      var hi = history.count
      while lo < hi {
        let mid = (lo + hi) / 2
        if cursor.isAfter(history[mid]) { lo = mid + 1 } else { hi = mid }
      }
      end = lo
    }
    let start = max(0, end - size)
    let records = Array(history[start..<end].reversed())
    let next = start > 0 ? records.last.map(Cursor.init) : nil
    return (records, next)
  }

  private static func bytes(_ c: Cursor) -> [UInt8] {
    var out: [UInt8] = []
    let at = UInt64(bitPattern: c.at)
    for i in 0..<8 { out.append(UInt8(truncatingIfNeeded: at >> (56 - 8 * i))) }
    for i in 0..<4 { out.append(UInt8(truncatingIfNeeded: c.seq >> (24 - 8 * i))) }
    return out
  }

  private static func macInput(_ body: [UInt8], workspace: String, key: PersonKey) -> [UInt8] {
    var m = Array("history-cursor".utf8)
    m.append(0)
    m += workspace.utf8
    m.append(0)
    m.append(key.isAnonymous ? 1 : 0)
    m += key.value.utf8
    m.append(0)
    m += body
    return m
  }
}
