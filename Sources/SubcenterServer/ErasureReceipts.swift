// Erasure receipts (SPEC §3 ForgetPerson): base64url(JSON).base64url(HMAC-SHA-256 of the
// first part's ASCII, keyed by the server secret), unpadded, with exactly the keys
// workspace, person_hash, erased_at, erasure_deadline and snapshot_seq.

import Foundation
import GRPCTransport
import SubcenterCore

/// Makes and verifies receipts with the server secret.
public struct ErasureReceipts: Sendable {
  private let mac: HMACSHA256

  public init(secret: [UInt8]) { mac = HMACSHA256(key: secret) }

  /// The keyed hash of a person id, as hex (the receipt's `person_hash`).
  public func personHash(workspace: String, personID: String) -> String {
    Crypto.hex(mac.authenticate("person:\(workspace):\(personID)".utf8))
  }

  public func make(
    workspace: String, personID: String, erasedAt: Int64, erasureDeadline: Int64,
    snapshotSeq: UInt64
  ) -> String {
    let json = Self.claims(
      workspace: workspace, personHash: personHash(workspace: workspace, personID: personID),
      erasedAt: erasedAt, erasureDeadline: erasureDeadline, snapshotSeq: snapshotSeq)
    let body = Base64.encode(Array(json.utf8), url: true)
    let sig = Base64.encode(mac.authenticate(body.utf8), url: true)
    return body + "." + sig
  }

  /// The JSON of a receipt: these keys, in this order, integers as numbers.
  private static func claims(
    workspace: String, personHash: String, erasedAt: Int64, erasureDeadline: Int64,
    snapshotSeq: UInt64
  ) -> String {
    "{\"workspace\":\(JSONText.quoted(workspace)),\"person_hash\":\"\(personHash)\","
      + "\"erased_at\":\(erasedAt),\"erasure_deadline\":\(erasureDeadline),"
      + "\"snapshot_seq\":\(snapshotSeq)}"
  }

  /// What a receipt says.
  public struct Claims: Sendable, Equatable {
    public var workspace: String
    public var personHash: String
    /// When the person left memory (milliseconds since the epoch).
    public var erasedAt: Int64
    /// The receipt's JSON, as signed.
    public var json: String
  }

  /// The receipt's claims if its signature is ours; nil when tampered with or malformed.
  /// Only the form `make` writes verifies (unpadded base64url, nothing after either part,
  /// exactly the five keys in their order, integers as numbers), so one receipt has one
  /// spelling.
  public func verify(_ receipt: String) -> Claims? {
    let parts = receipt.split(separator: ".", omittingEmptySubsequences: false)
    guard parts.count == 2, let json = Base64.decode(String(parts[0])),
      Base64.encode(json, url: true) == parts[0]
    else { return nil }
    let expected = Base64.encode(mac.authenticate(parts[0].utf8), url: true)
    guard Crypto.constantTimeEqual(Array(parts[1].utf8), Array(expected.utf8)) else { return nil }
    let text = String(decoding: json, as: UTF8.self)
    // Signed, so made with this secret; still only `make`'s form is a receipt.
    guard let object = try? JSONSerialization.jsonObject(with: Data(json)) as? [String: Any],
      let workspace = object["workspace"] as? String,
      let hash = object["person_hash"] as? String, hash.utf8.count == 64,
      hash.utf8.allSatisfy({ ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x61 && $0 <= 0x66) }),
      let erasedAt = (object["erased_at"] as? NSNumber)?.int64Value,
      let deadline = (object["erasure_deadline"] as? NSNumber)?.int64Value,
      let seq = (object["snapshot_seq"] as? NSNumber)?.uint64Value,
      text
        == Self.claims(
          workspace: workspace, personHash: hash, erasedAt: erasedAt, erasureDeadline: deadline,
          snapshotSeq: seq)
    else { return nil }
    return Claims(workspace: workspace, personHash: hash, erasedAt: erasedAt, json: text)
  }
}
