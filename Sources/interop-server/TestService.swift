// gRPC's interop grpc.testing.TestService (doc/interop-test-descriptions.md), for tests
// only: EmptyCall, UnaryCall and StreamingOutputCall. Test-only extension: request
// metadata `x-subcenter-sleep-ms: N` makes EmptyCall and UnaryCall answer after N ms,
// from another thread (the deferred-answer path).

import CProtobufC
import Dispatch
import GRPCTransport
import Glibc
import SubcenterProto

struct TestService: GRPCService {
  let serviceName = "grpc.testing.TestService"

  var methods: [ServiceMethod] {
    [
      ServiceMethod(path: "/grpc.testing.TestService/EmptyCall") { call in
        answer(call) { [] }
      },
      ServiceMethod(path: "/grpc.testing.TestService/UnaryCall") { call in
        answer(call) { try unaryCall(call) }
      },
      ServiceMethod(path: "/grpc.testing.TestService/StreamingOutputCall") { call in
        streamingOutputCall(call)
      },
    ]
  }
}

/// Answers now, or after `x-subcenter-sleep-ms` from a background queue; echoes the
/// interop metadata.
private func answer(_ call: ServerCall, _ body: @escaping @Sendable () throws -> [UInt8]) {
  let run: @Sendable () -> Void = {
    guard !call.isCancelled else { return }
    if let initial = call.metadata["x-grpc-test-echo-initial"] {
      call.sendInitialMetadata(["x-grpc-test-echo-initial": initial])
    }
    var trailers = Metadata()
    if let t = call.metadata["x-grpc-test-echo-trailing-bin"] {
      trailers.add("x-grpc-test-echo-trailing-bin", t)
    }
    do {
      let response = try body()
      call.send(response)
      call.finish(.ok, trailers: trailers)
    } catch {
      let status = (error as? RPCStatus) ?? RPCStatus(.unknown, "\(error)")
      call.finish(status, trailers: trailers)
    }
  }
  if let ms = call.metadata["x-subcenter-sleep-ms"].flatMap({ Int($0) }), ms > 0 {
    DispatchQueue.global().asyncAfter(deadline: .now() + .milliseconds(ms), execute: run)
  } else {
    run()
  }
}

private func unaryCall(_ call: ServerCall) throws -> [UInt8] {
  let req = try unpack(call.request, grpc__testing__simple_request__unpack)
  defer { grpc__testing__simple_request__free_unpacked(req, nil) }
  if let st = req.pointee.response_status, st.pointee.code != 0 {
    let code = RPCStatus.Code(rawValue: Int(st.pointee.code)) ?? .unknown
    throw RPCStatus(code, st.pointee.message.map { String(cString: $0) } ?? "")
  }
  guard req.pointee.response_size >= 0 else {
    throw RPCStatus(.invalidArgument, "response_size must not be negative")
  }
  return simpleResponse(payloadSize: Int(req.pointee.response_size))
}

private func streamingOutputCall(_ call: ServerCall) {
  let parsed: (sizes: [(Int, Int)], status: RPCStatus)
  do {
    let req = try unpack(call.request, grpc__testing__streaming_output_call_request__unpack)
    defer { grpc__testing__streaming_output_call_request__free_unpacked(req, nil) }
    var sizes: [(Int, Int)] = []
    for i in 0..<req.pointee.n_response_parameters {
      let p = req.pointee.response_parameters[i]!.pointee
      sizes.append((Int(max(p.size, 0)), Int(max(p.interval_us, 0))))
    }
    var status = RPCStatus.ok
    if let st = req.pointee.response_status, st.pointee.code != 0 {
      status = RPCStatus(
        RPCStatus.Code(rawValue: Int(st.pointee.code)) ?? .unknown,
        st.pointee.message.map { String(cString: $0) } ?? "")
    }
    parsed = (sizes, status)
  } catch {
    call.fail(error)
    return
  }
  DispatchQueue.global().async {
    for (size, interval) in parsed.sizes {
      if interval > 0 { usleep(UInt32(min(interval, 10_000_000))) }
      if call.isCancelled { return }
      call.send(streamingResponse(payloadSize: size))
    }
    call.finish(parsed.status)
  }
}

// MARK: - protobuf-c glue

private func unpack<T>(
  _ bytes: [UInt8],
  _ fn: (UnsafeMutablePointer<ProtobufCAllocator>?, Int, UnsafePointer<UInt8>?) ->
    UnsafeMutablePointer<T>?
) throws -> UnsafeMutablePointer<T> {
  let r = bytes.withUnsafeBufferPointer { fn(nil, $0.count, $0.baseAddress) }
  guard let r else { throw RPCStatus(.internal, "could not parse the request message") }
  return r
}

private func pack(_ message: UnsafePointer<ProtobufCMessage>) -> [UInt8] {
  let size = protobuf_c_message_get_packed_size(message)
  return [UInt8](unsafeUninitializedCapacity: size) { buf, n in
    n = protobuf_c_message_pack(message, buf.baseAddress)
  }
}

private func withPayload<R>(size: Int, _ body: (UnsafeMutablePointer<Grpc__Testing__Payload>) -> R)
  -> R
{
  let zeros = [UInt8](repeating: 0, count: size)
  return zeros.withUnsafeBufferPointer { z in
    var payload = Grpc__Testing__Payload()
    grpc__testing__payload__init(&payload)
    payload.body.len = size
    payload.body.data = UnsafeMutablePointer(mutating: z.baseAddress)
    return body(&payload)
  }
}

private func simpleResponse(payloadSize: Int) -> [UInt8] {
  withPayload(size: payloadSize) { payload in
    var resp = Grpc__Testing__SimpleResponse()
    grpc__testing__simple_response__init(&resp)
    resp.payload = payload
    return withUnsafePointer(to: &resp.base) { pack($0) }
  }
}

private func streamingResponse(payloadSize: Int) -> [UInt8] {
  withPayload(size: payloadSize) { payload in
    var resp = Grpc__Testing__StreamingOutputCallResponse()
    grpc__testing__streaming_output_call_response__init(&resp)
    resp.payload = payload
    return withUnsafePointer(to: &resp.base) { pack($0) }
  }
}
