// `subcenterctl workspace set WS FILE`: a workspace configuration written as JSON, turned
// into a ConfigureWorkspace request. The shape is WorkspaceConfig's, with the field names
// of the .proto, so the output of `workspace get --json` can be edited and set again:
//
//   {"channels": ["email", "sms"],
//    "topics": [{"id": "news", "name": "News", "description": "…",
//                "default_state": "SUBSCRIBED"}],          // or UNSUBSCRIBED, or the
//                                                          // enum's full TOPIC_DEFAULT_… names
//    "limits": [{"channel": "email", "max_messages": 3, "window_seconds": 86400}],
//    "allow_important_override": true}
//
// A "workspace" key, if present, must name WS. Every unknown key and every value of the
// wrong type is refused with its path (`topics[1].default_state`); the server checks the
// rest (ranges, known channels) and names the field in its INVALID_ARGUMENT.

import Foundation
import SubcenterServer

enum WorkspaceJSON {
  /// The encoded WorkspaceConfig read from `file` (`-` for standard input).
  static func request(workspace: String, file: String) throws(UsageError) -> ProtoWriter {
    let data: Data
    if file == "-" {
      data = FileHandle.standardInput.readDataToEndOfFile()
    } else {
      guard let d = FileManager.default.contents(atPath: file) else {
        throw UsageError("workspace set: cannot read \(file)")
      }
      data = d
    }
    do {
      return try encode(workspace: workspace, json: data)
    } catch let error as UsageError {
      throw UsageError("workspace set: \(file == "-" ? "stdin" : file): \(error)")
    } catch {
      let detail = (error as NSError).userInfo[NSDebugDescriptionErrorKey] ?? error
      throw UsageError("workspace set: \(file == "-" ? "stdin" : file): not JSON: \(detail)")
    }
  }

  static let topicDefaults = [
    "SUBSCRIBED": 1, "UNSUBSCRIBED": 2, "TOPIC_DEFAULT_SUBSCRIBED": 1,
    "TOPIC_DEFAULT_UNSUBSCRIBED": 2,
  ]

  static func encode(workspace: String, json: Data) throws -> ProtoWriter {
    let parsed = try JSONSerialization.jsonObject(with: json)
    if let why = StrictJSON.leniency(in: Array(json)) { throw UsageError(why.description) }
    let root = try object(parsed, "the document")
    var w = ProtoWriter()
    w.string(1, workspace)
    try only(root, ["workspace", "channels", "topics", "limits", "allow_important_override"], "")
    if let named = root["workspace"] {
      let ws = try string(named, "workspace")
      guard ws == workspace else {
        throw UsageError("workspace: \"\(ws)\" differs from the operand WS \"\(workspace)\"")
      }
    }
    for (i, c) in try array(root["channels"], "channels").enumerated() {
      w.string(2, try string(c, "channels[\(i)]"))
    }
    for (i, t) in try array(root["topics"], "topics").enumerated() {
      let path = "topics[\(i)]"
      let topic = try object(t, path)
      try only(topic, ["id", "name", "description", "default_state"], path + ".")
      var tw = ProtoWriter()
      tw.string(1, try string(topic["id"] ?? "", path + ".id"))
      tw.string(2, try string(topic["name"] ?? "", path + ".name"))
      tw.string(3, try string(topic["description"] ?? "", path + ".description"))
      if let d = topic["default_state"] {
        let name = try string(d, path + ".default_state")
        guard let value = topicDefaults[name] else {
          throw UsageError(
            "\(path).default_state: expected \"SUBSCRIBED\" or \"UNSUBSCRIBED\" (or "
              + "TOPIC_DEFAULT_SUBSCRIBED, TOPIC_DEFAULT_UNSUBSCRIBED), got \"\(name)\"")
        }
        tw.int(4, Int64(value))
      }
      w.message(3, tw)
    }
    for (i, l) in try array(root["limits"], "limits").enumerated() {
      let path = "limits[\(i)]"
      let limit = try object(l, path)
      try only(limit, ["channel", "max_messages", "window_seconds"], path + ".")
      var lw = ProtoWriter()
      lw.string(1, try string(limit["channel"] ?? "", path + ".channel"))
      lw.int(
        2,
        try integer(
          limit["max_messages"], path + ".max_messages", in: Int64(Int32.min)...Int64(Int32.max)))
      lw.int(3, try integer(limit["window_seconds"], path + ".window_seconds", in: .min ... .max))
      w.message(4, lw)
    }
    if let flag = root["allow_important_override"] {
      guard StrictJSON.isBool(flag), let b = flag as? Bool else {
        throw UsageError(
          "allow_important_override: expected true or false, got \(StrictJSON.describe(flag))")
      }
      w.bool(5, b)
    }
    return w
  }

  private static func only(_ o: [String: Any], _ keys: Set<String>, _ path: String) throws {
    if let bad = o.keys.sorted().first(where: { !keys.contains($0) }) {
      throw UsageError(
        "unknown key \"\(path)\(bad)\" (expected \(keys.sorted().joined(separator: ", ")))")
    }
  }

  private static func object(_ v: Any, _ path: String) throws -> [String: Any] {
    guard let o = v as? [String: Any] else {
      throw UsageError("\(path): expected an object, got \(StrictJSON.describe(v))")
    }
    return o
  }

  private static func array(_ v: Any?, _ path: String) throws -> [Any] {
    guard let v else { return [] }
    guard let a = v as? [Any] else {
      throw UsageError("\(path): expected an array, got \(StrictJSON.describe(v))")
    }
    return a
  }

  private static func string(_ v: Any, _ path: String) throws -> String {
    guard let s = v as? String else {
      throw UsageError("\(path): expected a string, got \(StrictJSON.describe(v))")
    }
    return s
  }

  private static func integer(_ v: Any?, _ path: String, in range: ClosedRange<Int64>) throws
    -> Int64
  {
    guard let v else { return 0 }
    guard !StrictJSON.isBool(v), let i = v as? Int64, range.contains(i)
    else {
      throw UsageError("\(path): expected an integer, got \(StrictJSON.describe(v))")
    }
    return i
  }
}
