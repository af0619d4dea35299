// The per-session block cache nghttp2 allocates through (CNGHTTP2/shim.h): size classes
// at their edges, the cap on cached blocks per class, realloc and calloc.

import CNGHTTP2
import Glibc
import Testing

@Suite struct BlockPoolTests {
  /// Runs `body` with a fresh pool, destroyed afterwards.
  func withPool(_ body: (UnsafeMutablePointer<subcenter_pool>) throws -> Void) rethrows {
    let p = UnsafeMutablePointer<subcenter_pool>.allocate(capacity: 1)
    p.initialize(to: subcenter_pool())
    defer {
      subcenter_pool_destroy(p)
      p.deallocate()
    }
    try body(p)
  }

  func cached(_ p: UnsafeMutablePointer<subcenter_pool>, _ sizeClass: Int) -> Int {
    Int(
      withUnsafeBytes(of: p.pointee.count) {
        $0.load(fromByteOffset: 4 * sizeClass, as: Int32.self)
      })
  }

  @Test func sizeClassesAtTheirEdges() {
    #expect(subcenter_pool_class(0) == 0)
    #expect(subcenter_pool_class(32) == 0)
    #expect(subcenter_pool_class(33) == 1)
    #expect(subcenter_pool_class(512) == 4)
    #expect(subcenter_pool_class(513) == 5)
    #expect(subcenter_pool_class(1024) == 5)
    #expect(subcenter_pool_class(1025) == -1)
  }

  @Test func aClassKeepsAtMostItsCap() {
    withPool { p in
      let keep = Int(SUBCENTER_POOL_KEEP)
      let blocks = (0..<keep + 8).map { _ in subcenter_pool_malloc(64, p)! }
      for b in blocks { subcenter_pool_free(b, p) }
      #expect(cached(p, 1) == keep, "the blocks past the cap go back to malloc")
      // The cached blocks come back before any new one is made.
      let again = (0..<keep).map { _ in subcenter_pool_malloc(40, p)! }
      #expect(cached(p, 1) == 0)
      #expect(Set(again).isSubset(of: Set(blocks)))
      for b in again { subcenter_pool_free(b, p) }
      #expect(cached(p, 1) == keep)
    }
  }

  @Test func largeBlocksAreNotCached() {
    withPool { p in
      let b = subcenter_pool_malloc(1025, p)!
      memset(b, 0xAB, 1025)
      subcenter_pool_free(b, p)
      for c in 0..<Int(SUBCENTER_POOL_CLASSES) { #expect(cached(p, c) == 0) }
      subcenter_pool_free(nil, p)  // a no-op, as free(NULL)
    }
  }

  @Test func reallocKeepsTheBytesAndTheBlockWhileItFits() {
    withPool { p in
      let b = subcenter_pool_malloc(20, p)!
      for i in 0..<20 { b.storeBytes(of: UInt8(i), toByteOffset: i, as: UInt8.self) }
      // 20 bytes are in a 32-byte block: growing to 32 keeps it.
      #expect(subcenter_pool_realloc(b, 32, p) == b)
      let grown = subcenter_pool_realloc(b, 2000, p)!
      #expect(grown != b)
      for i in 0..<20 { #expect(grown.load(fromByteOffset: i, as: UInt8.self) == UInt8(i)) }
      #expect(cached(p, 0) == 1, "the old block went back to its class")
      subcenter_pool_free(grown, p)
      let fresh = subcenter_pool_realloc(nil, 100, p)
      #expect(fresh != nil)
      subcenter_pool_free(fresh, p)
    }
  }

  @Test func callocZeroesAndRefusesOverflow() {
    withPool { p in
      // A reused block is zeroed, not left with its old bytes.
      let b = subcenter_pool_malloc(128, p)!
      memset(b, 0xFF, 128)
      subcenter_pool_free(b, p)
      let z = subcenter_pool_calloc(16, 8, p)!
      #expect(z == b)
      for i in 0..<128 { #expect(z.load(fromByteOffset: i, as: UInt8.self) == 0) }
      subcenter_pool_free(z, p)
      #expect(subcenter_pool_calloc(Int.max, 2, p) == nil)
    }
  }
}
