// `subcenterctl find-erased DIR RECEIPTS`: after a restore, which persons the erasure
// receipts say were forgotten are back in a data directory (a backup taken before their
// forget holds them). Receipts carry only a keyed hash of the person id, so only the
// data's own secret tells whose they are: this recovers a copy of DIR in memory, with the
// server's own recovery, and hashes every person it holds. Changes nothing in DIR.
//
// RECEIPTS is a file (- = stdin) of receipts, one per line; blank lines and lines starting
// with # are skipped. A person counts as back when the hash of its id matches a receipt of
// its workspace and it was created no later than the receipt's `erased_at` (a person made
// again under the same id after the forget is someone new). Exit status: 0 no one is back
// and every receipt verified, 1 someone is back or a line is not a receipt of this data's
// secret, 2 the directory, its secret or the receipts file cannot be read, a subcenterd is
// running on DIR, or its data does not recover.

import Foundation
import GRPCTransport
import Glibc
import SubcenterCore
import SubcenterServer
import SubcenterStore

enum FindErased {
  /// One person the receipts name who is in the data.
  struct Back {
    var line: Int
    var workspace: String
    var key: PersonKey
  }

  static func run(directory: String, receiptsPath: String, json: Bool) -> Int32 {
    func fail(_ message: String) -> Int32 {
      writeStderrLine("subcenterctl find-erased: \(message)")
      return 2
    }
    let text: String
    if receiptsPath == "-" {
      text = String(decoding: FileHandle.standardInput.readDataToEndOfFile(), as: UTF8.self)
    } else {
      guard let data = FileManager.default.contents(atPath: receiptsPath) else {
        return fail("cannot read \(receiptsPath)")
      }
      text = String(decoding: data, as: UTF8.self)
    }
    if DataDirectoryLock.isHeld(directory: directory) {
      return fail(
        "a subcenterd is running on \(directory): run this on the restored directory before "
          + "starting the server on it, or on a copy")
    }
    let secret: [UInt8]
    do { secret = try ServerSecret.load(dataDirectory: directory) } catch {
      return fail(error.description)
    }
    let receipts = ErasureReceipts(secret: secret)

    // What the receipts claim: (workspace, person hash) → the lines and the latest erasure.
    var wanted: [String: (lines: [Int], erasedAt: Int64)] = [:]
    var invalid: [Int] = []
    var count = 0
    for (i, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
      let line = raw.trimmingCharacters(in: .whitespacesAndNewlines)
      if line.isEmpty || line.hasPrefix("#") { continue }
      count += 1
      guard let claims = receipts.verify(line) else {
        invalid.append(i + 1)
        continue
      }
      let k = key(claims.workspace, claims.personHash)
      var w = wanted[k] ?? ([], Int64.min)
      w.lines.append(i + 1)
      w.erasedAt = max(w.erasedAt, claims.erasedAt)
      wanted[k] = w
    }

    let back: [Back]
    do { back = try personsBack(in: directory, secret: secret, receipts, wanted) } catch {
      return fail("\(error)")
    }
    report(back, receipts: count, invalid: invalid, directory: directory, json: json)
    return back.isEmpty && invalid.isEmpty ? 0 : 1
  }

  private static func key(_ workspace: String, _ hash: String) -> String {
    "\(workspace.utf8.count):\(workspace)\(hash)"
  }

  /// Recovers a copy of `directory` in a temporary directory (recovery may cut a torn
  /// tail or remove unfinished files: never in the operator's data) and checks each
  /// person against `wanted`.
  private static func personsBack(
    in directory: String, secret: [UInt8], _ receipts: ErasureReceipts,
    _ wanted: [String: (lines: [Int], erasedAt: Int64)]
  ) throws -> [Back] {
    let fm = FileManager.default
    let copy = fm.temporaryDirectory.appendingPathComponent(
      "subcenterctl-find-erased-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
    ).path
    try fm.createDirectory(
      atPath: copy, withIntermediateDirectories: false, attributes: [.posixPermissions: 0o700])
    defer { try? fm.removeItem(atPath: copy) }
    for name in try fm.contentsOfDirectory(atPath: directory)
    where name == "secret.key" || name.hasPrefix("snapshot-") || name.hasPrefix("wal-") {
      try fm.copyItem(atPath: directory + "/" + name, toPath: copy + "/" + name)
    }
    let (durable, _) = try DurableStore.open(
      directory: copy, clock: SystemClock(), secret: secret, fsync: .none,
      truncateDamaged: false, log: { _ in })
    defer { durable.close() }
    var back: [Back] = []
    durable.store.snapshotState().forEachPerson { workspace, person in
      let hash = receipts.personHash(workspace: workspace, personID: person.key.value)
      guard let w = wanted[key(workspace, hash)], person.createdAt <= w.erasedAt else { return }
      for line in w.lines { back.append(Back(line: line, workspace: workspace, key: person.key)) }
    }
    return back.sorted { $0.line < $1.line }
  }

  private static func report(
    _ back: [Back], receipts: Int, invalid: [Int], directory: String, json: Bool
  ) {
    if json {
      let items = back.map { b in
        "{\"line\": \(b.line), \"workspace\": \(JSONText.quoted(b.workspace)), "
          + (b.key.isAnonymous
            ? "\"anonymous_id\": \(JSONText.quoted(b.key.value))"
            : "\"person_id\": \(JSONText.quoted(b.key.value))") + "}"
      }
      writeStdoutLine(
        "{\"receipts\": \(receipts), \"back\": [\(items.joined(separator: ", "))], "
          + "\"invalid_lines\": [\(invalid.map(String.init).joined(separator: ", "))]}")
      return
    }
    for line in invalid {
      writeStdoutLine("line \(line): INVALID: not a receipt of this data's secret")
    }
    for b in back {
      // Escaped, as every command's text output: an id must not drive the terminal.
      let id = ProtoMessage.printable(b.key.value)
      let who = b.key.isAnonymous ? "anonymous profile \(id)" : "person \(id)"
      writeStdoutLine(
        "line \(b.line): BACK: \(who) of workspace \(ProtoMessage.printable(b.workspace))")
    }
    writeStdoutLine(
      back.isEmpty
        ? "\(receipts) receipt(s): no one they name is in \(directory)"
        : "\(receipts) receipt(s): \(back.count) name someone in \(directory): start subcenterd "
          + "on it and forget them again (subcenterctl forget WS PERSON, anon:ID for a "
          + "profile), before it serves anyone else")
  }
}
