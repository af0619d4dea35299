// JSON as RFC 8259 means it, for the files and arguments operators write (the tokens file,
// `subcenterctl workspace set`): Foundation's parser is more lenient than that.

/// Checks for what Foundation's JSON parser accepts but JSON does not mean.
public enum StrictJSON {
  /// What Foundation's parser lets through but RFC 8259 does not mean: a key twice in one
  /// object (one of the two values would be dropped without a word) and a comma before `]`
  /// or `}`. Run on text the parser accepted, so strings and nesting are well formed.
  /// Returns the first one found, described, or nil.
  public static func leniency(in text: [UInt8]) -> String? {
    var keys: [Set<[UInt8]>?] = []  // per open bracket: the object's keys, nil for an array
    var i = 0
    func nextNonSpace(_ from: Int) -> UInt8? {
      var j = from
      while j < text.count, [0x20, 0x09, 0x0A, 0x0D].contains(text[j]) { j += 1 }
      return j < text.count ? text[j] : nil
    }
    while i < text.count {
      switch text[i] {
      case UInt8(ascii: "{"): keys.append([])
      case UInt8(ascii: "["): keys.append(nil)
      case UInt8(ascii: "}"), UInt8(ascii: "]"): _ = keys.popLast()
      case UInt8(ascii: ","):
        if let c = nextNonSpace(i + 1), c == UInt8(ascii: "}") || c == UInt8(ascii: "]") {
          return "a comma before '\(Character(Unicode.Scalar(c)))' (not JSON)"
        }
      case UInt8(ascii: "\""):
        var j = i + 1
        while text[j] != UInt8(ascii: "\"") { j += text[j] == UInt8(ascii: "\\") ? 2 : 1 }
        let string = Array(text[(i + 1)..<j])
        if nextNonSpace(j + 1) == UInt8(ascii: ":"), let last = keys.indices.last,
          keys[last] != nil, keys[last]!.insert(string).inserted == false
        {
          return "the key \"\(String(decoding: string, as: UTF8.self))\" twice in one object"
        }
        i = j
      default: break
      }
      i += 1
    }
    return nil
  }
}
