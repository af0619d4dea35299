// Small helpers around nghttp2 shared by the server and client sessions.

import CNGHTTP2
import Glibc

/// A header list to hand to nghttp2: names and values packed into one buffer, so one
/// allocation serves a whole HEADERS frame. nghttp2 copies what it is given.
struct HeaderList {
  var pairs: [(String, String)] = []

  init(_ pairs: [(String, String)] = []) { self.pairs = pairs }

  mutating func add(_ name: String, _ value: String) { pairs.append((name, value)) }

  /// Calls `body` with an `nghttp2_nv` array valid for the duration of the call.
  func withNVs<R>(_ body: (UnsafePointer<nghttp2_nv>, Int) -> R) -> R {
    var storage: [UInt8] = []
    storage.reserveCapacity(pairs.reduce(0) { $0 + $1.0.utf8.count + $1.1.utf8.count })
    var offsets: [(Int, Int, Int, Int)] = []
    offsets.reserveCapacity(pairs.count)
    for (n, v) in pairs {
      let no = storage.count
      storage.append(contentsOf: n.utf8)
      let vo = storage.count
      storage.append(contentsOf: v.utf8)
      offsets.append((no, n.utf8.count, vo, v.utf8.count))
    }
    if storage.isEmpty { storage.append(0) }
    return storage.withUnsafeMutableBufferPointer { buf in
      let base = buf.baseAddress!
      var nvs = offsets.map { o in
        nghttp2_nv(
          name: base + o.0, value: base + o.2, namelen: o.1, valuelen: o.3,
          flags: UInt8(NGHTTP2_NV_FLAG_NONE.rawValue))
      }
      return nvs.withUnsafeMutableBufferPointer { body($0.baseAddress!, $0.count) }
    }
  }
}

/// Header lists that never change, allocated once for the life of the process and handed
/// to nghttp2 without copying (NO_COPY flags): the common response headers and trailers.
final class StaticHeaders: Sendable {
  // The pointers are written once in init and only read afterwards.
  nonisolated(unsafe) let nv: UnsafeMutablePointer<nghttp2_nv>
  let count: Int

  init(_ pairs: [(String, String)]) {
    count = pairs.count
    nv = .allocate(capacity: pairs.count)
    for (i, (n, v)) in pairs.enumerated() {
      let name = UnsafeMutablePointer<UInt8>.allocate(capacity: n.utf8.count)
      name.initialize(from: Array(n.utf8), count: n.utf8.count)
      let value = UnsafeMutablePointer<UInt8>.allocate(capacity: max(v.utf8.count, 1))
      value.initialize(from: Array(v.utf8), count: v.utf8.count)
      nv[i] = nghttp2_nv(
        name: name, value: value, namelen: n.utf8.count, valuelen: v.utf8.count,
        flags: UInt8(NGHTTP2_NV_FLAG_NO_COPY_NAME.rawValue | NGHTTP2_NV_FLAG_NO_COPY_VALUE.rawValue)
      )
    }
  }

  /// `:status: 200`, `content-type: application/grpc`.
  static let ok = StaticHeaders([(":status", "200"), ("content-type", "application/grpc")])
  /// The trailers of a successful call.
  static let okStatus = StaticHeaders([("grpc-status", "0")])
}

/// An nghttp2 failure code rendered as text.
struct HTTP2Error: Error, CustomStringConvertible {
  let code: Int
  let what: String
  var description: String { "\(what): \(String(cString: nghttp2_strerror(Int32(code))))" }
}

@inline(__always)
func bytesEqual(_ p: UnsafePointer<UInt8>, _ n: Int, _ s: StaticString) -> Bool {
  n == s.utf8CodeUnitCount && memcmp(p, s.utf8Start, n) == 0
}

@inline(__always)
func makeString(_ p: UnsafePointer<UInt8>, _ n: Int) -> String {
  String(decoding: UnsafeBufferPointer(start: p, count: n), as: UTF8.self)
}

let frameHeaders = UInt8(NGHTTP2_HEADERS.rawValue)
let frameData = UInt8(NGHTTP2_DATA.rawValue)
let frameSettings = UInt8(NGHTTP2_SETTINGS.rawValue)
let frameRstStream = UInt8(NGHTTP2_RST_STREAM.rawValue)
let flagEndStream = UInt8(NGHTTP2_FLAG_END_STREAM.rawValue)
let flagEndHeaders = UInt8(NGHTTP2_FLAG_END_HEADERS.rawValue)
let errDeferred = Int(NGHTTP2_ERR_DEFERRED.rawValue)
let errCallbackFailure = Int32(NGHTTP2_ERR_CALLBACK_FAILURE.rawValue)
let errTemporalCallbackFailure = Int32(NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE.rawValue)
