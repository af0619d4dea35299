// The tokens file is read strictly: an unknown, missing or mistyped key and an entry without
// scopes are refused in one line naming the flag, the file, the entry and the key.

import Foundation
import GRPCTransport
import SubcenterServer
import Testing

@Suite struct TokenStoreTests {
  /// An entry's keys but `scopes` (JSON text, without the braces).
  private let base =
    "\"name\": \"a\", \"sha256\": \"\(String(repeating: "a", count: 64))\", "
    + "\"workspace\": \"*\""

  /// `json` loaded as a tokens file; a refusal's message shows the file's path as FILE.
  private func load(_ json: String) -> Result<TokenStore, FlagError> {
    let path = "/tmp/subcenter-tokens-test-\(UInt64.random(in: 0 ... .max)).json"
    precondition(FileManager.default.createFile(atPath: path, contents: Data(json.utf8)))
    defer { unlink(path) }
    return Result { () throws(FlagError) in try TokenStore(file: path) }
      .mapError { FlagError($0.description.replacingOccurrences(of: path, with: "FILE")) }
  }

  /// Why a file of one entry with `fields` (JSON text, without the braces) is refused.
  private func refusal(_ fields: String) -> String? { refusal(file: "[{\(fields)}]") }

  private func refusal(file json: String) -> String? {
    guard case .failure(let error) = load(json) else { return nil }
    return error.description
  }

  @Test func anUnknownKeyIsRefusedNotIgnored() {
    let good = base + ", \"scopes\": [\"read\"]"
    #expect(refusal(good) == nil)
    #expect(
      refusal(good + ", \"scope\": [\"admin\"]")
        == "--tokens: FILE: entry 0: unknown key \"scope\" (keys: name, sha256, workspace, scopes)")
    #expect(
      refusal(good + ", \"note\": \"x\"")?.hasPrefix(
        "--tokens: FILE: entry 0: unknown key \"note\"")
        == true)
  }

  @Test func aMissingOrMistypedKeyIsNamed() {
    #expect(
      refusal(base)
        == "--tokens: FILE: entry 0: missing key \"scopes\" (keys: name, sha256, workspace, scopes)"
    )
    #expect(
      refusal(base + ", \"scopes\": \"admin\"")
        == "--tokens: FILE: entry 0: \"scopes\": expected an array of strings, got \"admin\"")
    #expect(
      refusal(base + ", \"scopes\": [\"read\", true]")
        == "--tokens: FILE: entry 0: \"scopes\"[1]: expected a string, got true")
    #expect(
      refusal(base.replacingOccurrences(of: "\"a\"", with: "5") + ", \"scopes\": [\"read\"]")
        == "--tokens: FILE: entry 0: \"name\": expected a string, got 5")
    #expect(refusal(file: "[5]") == "--tokens: FILE: entry 0: expected an object, got 5")
    #expect(
      refusal(file: "{}")
        == "--tokens: FILE: expected a JSON array of token entries, got an object")
    #expect(refusal(file: "")?.hasPrefix("--tokens: FILE: not JSON: ") == true)
  }

  @Test func anEntryWithoutScopesIsRefusedAnEmptyFileIsNot() throws {
    #expect(
      refusal(base + ", \"scopes\": []")
        == "--tokens: FILE: entry 0 ('a'): no scopes: every call would be refused")
    // An empty list loads (subcenterd warns at start that every call will fail).
    #expect(try load("[]").get().count == 0)
    #expect(try load("[{\(base), \"scopes\": [\"read\"]}]").get().count == 1)
  }
}

extension TokenStoreTests {
  /// A name is the `actor` of history: an escape sequence or a line break in it would reach
  /// every terminal and log that shows history.
  @Test func aNameWithAControlCharacterIsRefused() {
    for name in ["ops\\u001b[2J", "ops\\nroot", "ops\\u0085"] {
      let fields = base.replacingOccurrences(of: "\"a\"", with: "\"\(name)\"")
      #expect(
        refusal(fields + ", \"scopes\": [\"read\"]")
          == "--tokens: FILE: entry 0: the name must not contain control characters", "\(name)")
    }
  }
}
