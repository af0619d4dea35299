"""grpc.health.v1.Health on interop-server."""

import grpc
import pytest

from interop_support import RPC_TIMEOUT, health_pb2

SERVING = health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize("service", ["", "grpc.testing.TestService"])
def test_check_serving(health, service):
    response = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=RPC_TIMEOUT)
    assert response.status == SERVING


def test_check_unknown_service_not_found(health):
    with pytest.raises(grpc.RpcError) as err:
        health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=RPC_TIMEOUT)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("service", ["", "grpc.testing.TestService"])
def test_watch_streams_serving_first(health, service):
    call = health.Watch(health_pb2.HealthCheckRequest(service=service), timeout=RPC_TIMEOUT)
    try:
        first = next(call)
        assert first.status == SERVING
    finally:
        call.cancel()


def test_watch_stays_open_until_cancelled(health):
    """Watch is a long-lived stream: after the first status it stays open (no end of stream)
    until the client cancels or the deadline passes."""
    call = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
    first = next(call)
    assert first.status == SERVING
    with pytest.raises(grpc.RpcError) as err:
        for extra in call:
            assert extra.status == SERVING
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_unknown_health_method_unimplemented(channel):
    call = channel.unary_unary("/grpc.health.v1.Health/NoSuchMethod",
                               request_serializer=lambda b: b, response_deserializer=lambda b: b)
    with pytest.raises(grpc.RpcError) as err:
        call(b"", timeout=RPC_TIMEOUT)
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_check_after_cancelled_watch(health):
    for _ in range(3):
        call = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=RPC_TIMEOUT)
        assert next(call).status == SERVING
        call.cancel()
    response = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=RPC_TIMEOUT)
    assert response.status == SERVING
