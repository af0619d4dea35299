// Erasure receipts: a receipt verifies with the secret that made it, in exactly the form it
// was made, and in no other.

import GRPCTransport
import SubcenterCore
import SubcenterServer
import Testing

@Suite struct ErasureReceiptsTests {
  let receipts = ErasureReceipts(secret: [UInt8](repeating: 9, count: 32))

  var receipt: String {
    receipts.make(
      workspace: "acme", personID: "p1", erasedAt: 1_700_000_000_000,
      erasureDeadline: 1_700_000_060_000, snapshotSeq: 42)
  }

  @Test func aReceiptVerifiesWithItsSecretOnly() throws {
    let claims = try #require(receipts.verify(receipt))
    #expect(claims.workspace == "acme")
    #expect(claims.personHash == receipts.personHash(workspace: "acme", personID: "p1"))
    #expect(claims.erasedAt == 1_700_000_000_000)
    let json = claims.json
    #expect(json.hasPrefix("{\"workspace\":\"acme\",\"person_hash\":\""))
    #expect(
      json.hasSuffix(
        "\"erased_at\":1700000000000,\"erasure_deadline\":1700000060000,\"snapshot_seq\":42}"))
    #expect(ErasureReceipts(secret: [UInt8](repeating: 8, count: 32)).verify(receipt) == nil)
  }

  @Test func anotherSpellingOfTheSameReceiptIsRefused() throws {
    let parts = receipt.split(separator: ".").map(String.init)
    let (body, sig) = (parts[0], parts[1])
    let forms = [
      body + "." + sig + "=",  // padding on the signature (32 bytes: one `=`)
      body + "." + sig + "=junk",  // anything after a padding character
      body + "=." + sig,
      body + "." + sig + ".",
      body + "." + sig + "\n",
      " " + receipt,
      body + "." + String(sig.dropLast()),
      // The last character of a 32-byte signature carries 2 unused bits: other values of
      // them decode to the same bytes but are not the receipt.
      body + "." + String(sig.dropLast()) + (sig.last == "A" ? "B" : "A"),
    ]
    for form in forms {
      #expect(receipts.verify(form) == nil, "\(form)")
    }
  }

  /// SPEC: exactly these keys, integers as JSON numbers. Only the secret signs, but a
  /// signed text of another shape is no receipt of ours (it verified).
  @Test func aSignedTextOfAnotherShapeIsNoReceipt() throws {
    let mac = HMACSHA256(key: [UInt8](repeating: 9, count: 32))
    func signed(_ json: String) -> String {
      let body = Base64.encode(Array(json.utf8), url: true)
      return body + "." + Base64.encode(mac.authenticate(body.utf8), url: true)
    }
    let hash = receipts.personHash(workspace: "acme", personID: "p1")
    let head = "{\"workspace\":\"acme\",\"person_hash\":\"\(hash)\","
    let good = head + "\"erased_at\":1,\"erasure_deadline\":2,\"snapshot_seq\":3}"
    #expect(receipts.verify(signed(good))?.json == good)
    let shapes = [
      head + "\"erased_at\":1,\"erasure_deadline\":2}",  // a key missing
      head + "\"erased_at\":1,\"erasure_deadline\":2,\"snapshot_seq\":3,\"x\":1}",  // one more
      head + "\"erased_at\":\"1\",\"erasure_deadline\":2,\"snapshot_seq\":3}",  // a string
      head + "\"erased_at\":1.5,\"erasure_deadline\":2,\"snapshot_seq\":3}",
      head + "\"erased_at\":true,\"erasure_deadline\":2,\"snapshot_seq\":3}",
      head + "\"erasure_deadline\":2,\"erased_at\":1,\"snapshot_seq\":3}",  // order
      head + "\"erased_at\": 1,\"erasure_deadline\":2,\"snapshot_seq\":3}",  // spacing
      "[1]", "not json",
      good.replacingOccurrences(of: hash, with: hash.uppercased()),  // hex in another case
    ]
    for json in shapes {
      #expect(receipts.verify(signed(json)) == nil, "\(json)")
    }
  }
}
