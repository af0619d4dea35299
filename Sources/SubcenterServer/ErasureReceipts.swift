// Erasure receipts (SPEC §3 ForgetPerson): base64url(JSON).base64url(HMAC-SHA-256 of the
// first part's ASCII, keyed by the server secret), unpadded, with exactly the keys
// workspace, person_hash, erased_at, erasure_deadline and snapshot_seq.

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
    let json =
      "{\"workspace\":\(JSONText.quoted(workspace)),\"person_hash\":\"\(personHash(workspace: workspace, personID: personID))\","
      + "\"erased_at\":\(erasedAt),\"erasure_deadline\":\(erasureDeadline),\"snapshot_seq\":\(snapshotSeq)}"
    let body = Base64.encode(Array(json.utf8), url: true)
    let sig = Base64.encode(mac.authenticate(body.utf8), url: true)
    return body + "." + sig
  }

  /// The receipt's JSON if its signature is ours; nil when tampered with or malformed.
  /// Only the form `make` writes verifies (unpadded base64url, nothing after either part),
  /// so one receipt has one spelling.
  public func verify(_ receipt: String) -> String? {
    let parts = receipt.split(separator: ".", omittingEmptySubsequences: false)
    guard parts.count == 2, let json = Base64.decode(String(parts[0])),
      Base64.encode(json, url: true) == parts[0]
    else { return nil }
    let expected = Base64.encode(mac.authenticate(parts[0].utf8), url: true)
    guard Crypto.constantTimeEqual(Array(parts[1].utf8), Array(expected.utf8)) else { return nil }
    return String(decoding: json, as: UTF8.self)
  }
}
