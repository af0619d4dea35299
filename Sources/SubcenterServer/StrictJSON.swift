// JSON as RFC 8259 means it, for the files and arguments operators write (the tokens file,
// `subcenterctl workspace set`): Foundation's parser is more lenient than that. And how an
// error names a value it found.

import Foundation

/// Checks for what Foundation's JSON parser accepts but JSON does not mean.
public enum StrictJSON {
  /// One leniency found: what it is, and, when the text is an array, in which of its
  /// elements (from 0).
  public struct Leniency: Sendable, CustomStringConvertible {
    public let message: String
    public let element: Int?

    public var description: String {
      element.map { "entry \($0): \(message)" } ?? message
    }
  }

  /// What Foundation's parser lets through but RFC 8259 does not mean: a key twice in one
  /// object (one of the two values would be dropped without a word; keys are compared as
  /// the strings they decode to, so `"w\u006frkspace"` is `"workspace"`) and a comma
  /// before `]` or `}`. Run on text the parser accepted, so strings and nesting are well
  /// formed. Returns the first one found, or nil.
  public static func leniency(in text: [UInt8]) -> Leniency? {
    var keys: [Set<String>?] = []  // per open bracket: the object's keys, nil for an array
    var element = 0  // of the outermost array
    var i = 0
    func nextNonSpace(_ from: Int) -> UInt8? {
      var j = from
      while j < text.count, [0x20, 0x09, 0x0A, 0x0D].contains(text[j]) { j += 1 }
      return j < text.count ? text[j] : nil
    }
    func found(_ message: String) -> Leniency {
      let inArray = keys.first.map { $0 == nil } ?? false
      return Leniency(message: message, element: inArray ? element : nil)
    }
    while i < text.count {
      switch text[i] {
      case UInt8(ascii: "{"): keys.append([])
      case UInt8(ascii: "["): keys.append(nil)
      case UInt8(ascii: "}"), UInt8(ascii: "]"): _ = keys.popLast()
      case UInt8(ascii: ","):
        if let c = nextNonSpace(i + 1), c == UInt8(ascii: "}") || c == UInt8(ascii: "]") {
          return found("a comma before '\(Character(Unicode.Scalar(c)))' (not JSON)")
        }
        if keys.count == 1 && keys[0] == nil { element += 1 }
      case UInt8(ascii: "\""):
        var j = i + 1
        while text[j] != UInt8(ascii: "\"") { j += text[j] == UInt8(ascii: "\\") ? 2 : 1 }
        if nextNonSpace(j + 1) == UInt8(ascii: ":"), let last = keys.indices.last, keys[last] != nil
        {
          let key = decodedString(text[i...j])
          if keys[last]!.insert(key).inserted == false {
            return found("the key \"\(key)\" twice in one object")
          }
        }
        i = j
      default: break
      }
      i += 1
    }
    return nil
  }

  /// A value JSONSerialization gave, as an error names it: `"text"`, `5`, `true`, `null`,
  /// `an array`, `an object`.
  public static func describe(_ v: Any) -> String {
    switch v {
    case is NSNull: return "null"
    case let s as String: return "\"\(s)\""
    case is [Any]: return "an array"
    case is [String: Any]: return "an object"
    case let n as NSNumber: return isBool(n) ? (n.boolValue ? "true" : "false") : "\(n)"
    default: return "\(v)"
    }
  }

  /// JSONSerialization gives `true` and `1` alike as NSNumber; a boolean's type code is "c".
  public static func isBool(_ v: Any) -> Bool {
    guard let n = v as? NSNumber else { return false }
    return String(cString: n.objCType) == "c"
  }

  /// A JSON string literal (quotes included) as the string it stands for.
  private static func decodedString(_ literal: ArraySlice<UInt8>) -> String {
    let raw = String(decoding: literal.dropFirst().dropLast(), as: UTF8.self)
    guard literal.contains(UInt8(ascii: "\\")) else { return raw }
    let value = try? JSONSerialization.jsonObject(with: Data(literal), options: .fragmentsAllowed)
    return value as? String ?? raw
  }
}
