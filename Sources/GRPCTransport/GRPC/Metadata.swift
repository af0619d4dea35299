// Request and response metadata: HTTP/2 headers that are not pseudo-headers or reserved
// by gRPC. Keys are lower-case; values of `-bin` keys are base64 on the wire.

/// An ordered list of metadata entries; a key may repeat.
public struct Metadata: Sendable, Sequence, ExpressibleByDictionaryLiteral {
  /// One name and value. (A struct, not a tuple: arrays of tuples are destroyed through
  /// the runtime's generic path, which showed up on the per-call profile.)
  struct Entry: Sendable {
    let name: String
    let value: String
  }

  private var storage: [Entry] = []

  /// The entries in order.
  public var entries: [(name: String, value: String)] { storage.map { ($0.name, $0.value) } }

  public init() {}

  public init(dictionaryLiteral elements: (String, String)...) {
    for (k, v) in elements { add(k, v) }
  }

  /// Appends an entry; the name is lower-cased.
  public mutating func add(_ name: String, _ value: String) {
    storage.append(Entry(name: name.lowercased(), value: value))
  }

  /// Appends an entry whose name is known to be lower case (HTTP/2 requires it).
  mutating func addLowercased(_ name: String, _ value: String) {
    if storage.isEmpty { storage.reserveCapacity(4) }
    storage.append(Entry(name: name, value: value))
  }

  /// Appends a binary entry (`name` must end in `-bin`), base64-encoding the value.
  public mutating func add(_ name: String, binary: [UInt8]) {
    storage.append(Entry(name: name.lowercased(), value: Base64.encode(binary)))
  }

  /// The first value for `name` (matched case-insensitively).
  public subscript(_ name: String) -> String? {
    if let e = storage.first(where: { $0.name == name }) { return e.value }
    let key = name.lowercased()  // names are stored lower-cased
    return key == name ? nil : storage.first { $0.name == key }?.value
  }

  /// How many entries `name` (lower case) has.
  public func count(of name: String) -> Int {
    storage.reduce(0) { $0 + ($1.name == name ? 1 : 0) }
  }

  /// The first value of a `-bin` key, decoded.
  public func binary(_ name: String) -> [UInt8]? {
    self[name].flatMap(Base64.decode)
  }

  public var isEmpty: Bool { storage.isEmpty }

  public struct Iterator: IteratorProtocol {
    fileprivate var base: IndexingIterator<[Entry]>
    public mutating func next() -> (name: String, value: String)? {
      base.next().map { ($0.name, $0.value) }
    }
  }

  public func makeIterator() -> Iterator { Iterator(base: storage.makeIterator()) }
}

/// Standard base64 (RFC 4648 §4); decoding accepts missing padding, as gRPC allows.
public enum Base64 {
  private static let alphabet: [UInt8] = Array(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)
  private static let reverse: [Int8] = {
    var t = [Int8](repeating: -1, count: 256)
    for (i, c) in alphabet.enumerated() { t[Int(c)] = Int8(i) }
    t[Int(UInt8(ascii: "-"))] = 62  // base64url too
    t[Int(UInt8(ascii: "_"))] = 63
    return t
  }()

  /// Encodes with padding; `url` uses the URL-safe alphabet without padding.
  public static func encode(_ bytes: [UInt8], url: Bool = false) -> String {
    var out: [UInt8] = []
    out.reserveCapacity((bytes.count + 2) / 3 * 4)
    var i = 0
    while i < bytes.count {
      let b0 = UInt32(bytes[i])
      let b1 = i + 1 < bytes.count ? UInt32(bytes[i + 1]) : 0
      let b2 = i + 2 < bytes.count ? UInt32(bytes[i + 2]) : 0
      let v = b0 << 16 | b1 << 8 | b2
      let chars = [v >> 18 & 63, v >> 12 & 63, v >> 6 & 63, v & 63].map { alphabet[Int($0)] }
      let keep = min(4, bytes.count - i + 1)
      out.append(contentsOf: chars.prefix(keep))
      if !url { out.append(contentsOf: [UInt8](repeating: UInt8(ascii: "="), count: 4 - keep)) }
      i += 3
    }
    var s = String(decoding: out, as: UTF8.self)
    if url {
      s = String(s.map { $0 == "+" ? "-" : $0 == "/" ? "_" : $0 })
    }
    return s
  }

  /// Decodes standard or URL-safe base64, padded or not; nil on any other character.
  public static func decode(_ text: String) -> [UInt8]? {
    var out: [UInt8] = []
    out.reserveCapacity(text.utf8.count * 3 / 4)
    var acc: UInt32 = 0
    var bits = 0
    for c in text.utf8 {
      if c == UInt8(ascii: "=") { break }
      let v = reverse[Int(c)]
      if v < 0 { return nil }
      acc = acc << 6 | UInt32(v)
      bits += 6
      if bits >= 8 {
        bits -= 8
        out.append(UInt8(truncatingIfNeeded: acc >> UInt32(bits)))
      }
    }
    return out
  }
}
