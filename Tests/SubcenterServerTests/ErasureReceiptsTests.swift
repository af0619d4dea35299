// Erasure receipts: a receipt verifies with the secret that made it, in exactly the form it
// was made, and in no other.

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
    let json = try #require(receipts.verify(receipt))
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
}
