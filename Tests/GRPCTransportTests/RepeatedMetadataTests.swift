// RepeatedMetadata: header blocks that repeat the last one share its Metadata; any other
// block gets exactly its own headers, and is the one shared next.

import Testing

@testable import GRPCTransport

@Suite struct RepeatedMetadataTests {
  /// Feeds one header block; returns its metadata and how many entries were made for it.
  private func block(_ headers: [(String, String)], into r: inout RepeatedMetadata) -> (
    Metadata, made: Int
  ) {
    var made = 0
    r.begin()
    for (n, v) in headers {
      let name = Array(n.utf8)
      let value = Array(v.utf8)
      name.withUnsafeBufferPointer { nb in
        value.withUnsafeBufferPointer { vb in
          r.add(nb, vb) {
            made += 1
            return (n, v)
          }
        }
      }
    }
    return (r.end(), made)
  }

  private func pairs(_ md: Metadata) -> [String] { md.map { "\($0.name)=\($0.value)" } }

  @Test func repeatedBlockIsShared() {
    var r = RepeatedMetadata()
    let headers = [("authorization", "Bearer t"), ("user-agent", "x/1")]
    let (first, made1) = block(headers, into: &r)
    let (second, made2) = block(headers, into: &r)
    #expect(made1 == 2 && made2 == 0)
    #expect(pairs(first) == ["authorization=Bearer t", "user-agent=x/1"])
    #expect(pairs(second) == pairs(first))
  }

  @Test func otherBlocksGetTheirOwnHeaders() {
    var r = RepeatedMetadata()
    _ = block([("a", "1"), ("b", "2")], into: &r)
    // A value differs: the entries before it are taken over, the rest made.
    let (changed, made) = block([("a", "1"), ("b", "3"), ("c", "")], into: &r)
    #expect(pairs(changed) == ["a=1", "b=3", "c="])
    #expect(made == 2)
    // A prefix of the last block, a longer one, none at all.
    #expect(pairs(block([("a", "1")], into: &r).0) == ["a=1"])
    #expect(pairs(block([("a", "1"), ("a", "1")], into: &r).0) == ["a=1", "a=1"])
    #expect(block([], into: &r).0.isEmpty)
    // Lengths count: the same bytes split differently between name and value.
    _ = block([("ab", "c")], into: &r)
    #expect(pairs(block([("a", "bc")], into: &r).0) == ["a=bc"])
    // The last block is the one shared next.
    let (again, madeAgain) = block([("a", "bc")], into: &r)
    #expect(pairs(again) == ["a=bc"] && madeAgain == 0)
  }
}
