"""gRPC's interop test cases (doc/interop-test-descriptions.md), adapted to interop-server."""

import time

import grpc
import pytest

from interop_support import (ECHO_INITIAL, ECHO_TRAILING_BIN, RPC_TIMEOUT, SLEEP_MS, empty_pb2,
                             make_channel, messages_pb2, test_pb2_grpc, interop_stub,
                             zero_payload)


def test_empty_unary(stub):
    response = stub.EmptyCall(empty_pb2.Empty(), timeout=RPC_TIMEOUT)
    assert isinstance(response, empty_pb2.Empty)
    assert response == empty_pb2.Empty()


def test_large_unary(stub):
    request = messages_pb2.SimpleRequest(response_type=messages_pb2.COMPRESSABLE,
                                         response_size=314159, payload=zero_payload(271828))
    response = stub.UnaryCall(request, timeout=RPC_TIMEOUT)
    assert response.payload.type == messages_pb2.COMPRESSABLE
    assert len(response.payload.body) == 314159
    assert response.payload.body == b"\0" * 314159


def test_unary_response_size_zero(stub):
    request = messages_pb2.SimpleRequest(response_size=0)
    response = stub.UnaryCall(request, timeout=RPC_TIMEOUT)
    assert response.payload.body == b""


def test_server_streaming(stub):
    sizes = [31415, 9, 2653, 58979]
    request = messages_pb2.StreamingOutputCallRequest(
        response_type=messages_pb2.COMPRESSABLE,
        response_parameters=[messages_pb2.ResponseParameters(size=s) for s in sizes])
    call = stub.StreamingOutputCall(request, timeout=RPC_TIMEOUT)
    got = [len(r.payload.body) for r in call]
    assert got == sizes
    assert call.code() == grpc.StatusCode.OK


def test_server_streaming_payloads_are_zero_bytes(stub):
    request = messages_pb2.StreamingOutputCallRequest(
        response_parameters=[messages_pb2.ResponseParameters(size=s) for s in (1, 100)])
    bodies = [r.payload.body for r in stub.StreamingOutputCall(request, timeout=RPC_TIMEOUT)]
    assert bodies == [b"\0", b"\0" * 100]


def test_server_streaming_no_parameters_ends_ok(stub):
    call = stub.StreamingOutputCall(messages_pb2.StreamingOutputCallRequest(), timeout=RPC_TIMEOUT)
    assert list(call) == []
    assert call.code() == grpc.StatusCode.OK


def test_server_streaming_interval(stub):
    """Each response comes after its interval_us: 3 x 150 ms take at least ~450 ms."""
    request = messages_pb2.StreamingOutputCallRequest(
        response_parameters=[messages_pb2.ResponseParameters(size=10, interval_us=150_000)
                             for _ in range(3)])
    start = time.monotonic()
    arrivals = []
    for r in stub.StreamingOutputCall(request, timeout=RPC_TIMEOUT):
        arrivals.append(time.monotonic() - start)
        assert len(r.payload.body) == 10
    assert len(arrivals) == 3
    assert arrivals[-1] >= 0.40, f"responses arrived at {arrivals}, expected >= 0.45 s for the last"
    assert arrivals[0] >= 0.10, f"first response at {arrivals[0]:.3f}s, expected after ~150 ms"
    assert arrivals[-1] < 5.0


def test_status_code_and_message(stub):
    request = messages_pb2.SimpleRequest(
        response_status=messages_pb2.EchoStatus(code=2, message="test status message"))
    with pytest.raises(grpc.RpcError) as err:
        stub.UnaryCall(request, timeout=RPC_TIMEOUT)
    assert err.value.code() == grpc.StatusCode.UNKNOWN
    assert err.value.details() == "test status message"


@pytest.mark.parametrize("code", [grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
                                  grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAVAILABLE])
def test_status_codes_echoed(stub, code):
    request = messages_pb2.SimpleRequest(
        response_status=messages_pb2.EchoStatus(code=code.value[0], message=f"code {code.name}"))
    with pytest.raises(grpc.RpcError) as err:
        stub.UnaryCall(request, timeout=RPC_TIMEOUT)
    assert err.value.code() == code
    assert err.value.details() == f"code {code.name}"


def test_special_status_message(stub):
    message = "\t\ntest with whitespace\r\nand Unicode BMP \u263a and non-BMP \U0001f608\t\n"
    request = messages_pb2.SimpleRequest(
        response_status=messages_pb2.EchoStatus(code=2, message=message))
    with pytest.raises(grpc.RpcError) as err:
        stub.UnaryCall(request, timeout=RPC_TIMEOUT)
    assert err.value.code() == grpc.StatusCode.UNKNOWN
    assert err.value.details().encode("utf-8") == message.encode("utf-8")


def test_custom_metadata(stub):
    initial_value = "test_initial_metadata_value"
    trailing_value = b"\x0a\x0b\x0a\x0b\x0a\x0b"
    request = messages_pb2.SimpleRequest(response_size=314159, payload=zero_payload(271828))
    response, call = stub.UnaryCall.with_call(
        request, timeout=RPC_TIMEOUT,
        metadata=[(ECHO_INITIAL, initial_value), (ECHO_TRAILING_BIN, trailing_value)])
    assert len(response.payload.body) == 314159
    initial = dict(call.initial_metadata())
    trailing = dict(call.trailing_metadata())
    assert initial.get(ECHO_INITIAL) == initial_value, f"initial metadata: {call.initial_metadata()}"
    assert trailing.get(ECHO_TRAILING_BIN) == trailing_value, \
        f"trailing metadata: {call.trailing_metadata()}"


def test_custom_metadata_with_error_status(stub):
    """The echoed metadata is sent also when the call ends with a non-OK status."""
    request = messages_pb2.SimpleRequest(
        response_status=messages_pb2.EchoStatus(code=2, message="with metadata"))
    with pytest.raises(grpc.RpcError) as err:
        stub.UnaryCall(request, timeout=RPC_TIMEOUT,
                       metadata=[(ECHO_INITIAL, "v1"), (ECHO_TRAILING_BIN, b"\x00\xff")])
    assert err.value.code() == grpc.StatusCode.UNKNOWN
    md = dict(err.value.initial_metadata()) | dict(err.value.trailing_metadata())
    assert md.get(ECHO_TRAILING_BIN) == b"\x00\xff", f"trailing: {err.value.trailing_metadata()}"


def test_unimplemented_method(stub):
    with pytest.raises(grpc.RpcError) as err:
        stub.UnimplementedCall(empty_pb2.Empty(), timeout=RPC_TIMEOUT)
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_unimplemented_service(channel):
    other = test_pb2_grpc.UnimplementedServiceStub(channel)
    with pytest.raises(grpc.RpcError) as err:
        other.UnimplementedCall(empty_pb2.Empty(), timeout=RPC_TIMEOUT)
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_unknown_method_name(channel):
    call = channel.unary_unary("/grpc.testing.TestService/NoSuchMethod",
                               request_serializer=lambda b: b, response_deserializer=lambda b: b)
    with pytest.raises(grpc.RpcError) as err:
        call(b"", timeout=RPC_TIMEOUT)
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_sleep_metadata_delays_answer(stub):
    start = time.monotonic()
    response = stub.EmptyCall(empty_pb2.Empty(), timeout=RPC_TIMEOUT, metadata=[(SLEEP_MS, "300")])
    elapsed = time.monotonic() - start
    assert response == empty_pb2.Empty()
    assert 0.25 <= elapsed < 5.0, f"answered after {elapsed:.3f}s, expected ~0.3s"


def test_timeout_on_sleeping_server(stub):
    start = time.monotonic()
    with pytest.raises(grpc.RpcError) as err:
        stub.UnaryCall(messages_pb2.SimpleRequest(response_size=10), timeout=0.1,
                       metadata=[(SLEEP_MS, "2000")])
    elapsed = time.monotonic() - start
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert elapsed < 1.0, f"DEADLINE_EXCEEDED after {elapsed:.3f}s, expected ~0.1s"


def test_timeout_on_sleeping_server_empty_call(stub):
    start = time.monotonic()
    with pytest.raises(grpc.RpcError) as err:
        stub.EmptyCall(empty_pb2.Empty(), timeout=0.1, metadata=[(SLEEP_MS, "2000")])
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - start < 1.0


def test_one_ms_deadline_on_slow_call(stub):
    start = time.monotonic()
    with pytest.raises(grpc.RpcError) as err:
        stub.UnaryCall(messages_pb2.SimpleRequest(response_size=1), timeout=0.001,
                       metadata=[(SLEEP_MS, "1000")])
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - start < 1.0


def test_late_answers_to_expired_calls_are_harmless(interop_server, stub):
    """Calls whose deadline passed are answered later by the server's other thread; the
    server keeps serving (on the same and on a new connection)."""
    for _ in range(5):
        with pytest.raises(grpc.RpcError) as err:
            stub.UnaryCall(messages_pb2.SimpleRequest(response_size=100), timeout=0.05,
                           metadata=[(SLEEP_MS, "250")])
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    time.sleep(0.5)  # the late answers happen now
    assert interop_server.alive()
    assert stub.EmptyCall(empty_pb2.Empty(), timeout=RPC_TIMEOUT) == empty_pb2.Empty()
    with make_channel(interop_server.port) as ch:
        r = interop_stub(ch).UnaryCall(messages_pb2.SimpleRequest(response_size=7),
                                           timeout=RPC_TIMEOUT)
        assert len(r.payload.body) == 7

