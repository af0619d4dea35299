"""The request size limit (--max-message-bytes): exactly the limit passes, one byte more is
RESOURCE_EXHAUSTED, and the connection keeps serving."""

import grpc
import pytest

from interop_support import (DEFAULT_MAX_MESSAGE, RPC_TIMEOUT, empty_pb2, make_channel,
                             simple_request_of_size, interop_stub)
from interop_support import shared_server_fixture

SMALL_LIMIT = 65536


_small_slot, small_limit_server = shared_server_fixture(
    "small_limit_server", args=["--max-message-bytes", str(SMALL_LIMIT)])


@pytest.fixture
def big_channel(interop_server):
    ch = make_channel(interop_server.port, unlimited=True)
    yield ch
    ch.close()


@pytest.fixture
def small_channel(small_limit_server):
    ch = make_channel(small_limit_server.port, unlimited=True)
    yield ch
    ch.close()


def test_request_builder_exact_sizes():
    for n in (SMALL_LIMIT, SMALL_LIMIT + 1, DEFAULT_MAX_MESSAGE, DEFAULT_MAX_MESSAGE + 1):
        assert simple_request_of_size(n).ByteSize() == n


def test_small_limit_exact_size_accepted(small_channel):
    request = simple_request_of_size(SMALL_LIMIT, response_size=3)
    assert request.ByteSize() == SMALL_LIMIT
    response = interop_stub(small_channel).UnaryCall(request, timeout=RPC_TIMEOUT)
    assert len(response.payload.body) == request.response_size


def test_small_limit_one_byte_more_refused(small_channel):
    request = simple_request_of_size(SMALL_LIMIT + 1, response_size=3)
    assert request.ByteSize() == SMALL_LIMIT + 1
    stub = interop_stub(small_channel)
    with pytest.raises(grpc.RpcError) as err:
        stub.UnaryCall(request, timeout=RPC_TIMEOUT)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.value.details()
    # The same channel still works.
    assert stub.EmptyCall(empty_pb2.Empty(), timeout=RPC_TIMEOUT) == empty_pb2.Empty()


def test_small_limit_much_bigger_refused(small_channel):
    request = simple_request_of_size(10 * SMALL_LIMIT)
    with pytest.raises(grpc.RpcError) as err:
        interop_stub(small_channel).UnaryCall(request, timeout=RPC_TIMEOUT)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_default_limit_exact_size_accepted(big_channel):
    request = simple_request_of_size(DEFAULT_MAX_MESSAGE, response_size=5)
    assert request.ByteSize() == DEFAULT_MAX_MESSAGE
    response = interop_stub(big_channel).UnaryCall(request, timeout=30)
    assert len(response.payload.body) == 5


def test_default_limit_one_byte_more_refused(big_channel):
    request = simple_request_of_size(DEFAULT_MAX_MESSAGE + 1, response_size=5)
    assert request.ByteSize() == DEFAULT_MAX_MESSAGE + 1
    stub = interop_stub(big_channel)
    with pytest.raises(grpc.RpcError) as err:
        stub.UnaryCall(request, timeout=30)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.value.details()
    assert stub.EmptyCall(empty_pb2.Empty(), timeout=RPC_TIMEOUT) == empty_pb2.Empty()


def test_default_limit_large_response(big_channel):
    """A response close to the limit (4 MiB - 16) comes back whole."""
    from interop_support import messages_pb2
    size = DEFAULT_MAX_MESSAGE - 16
    response = interop_stub(big_channel).UnaryCall(
        messages_pb2.SimpleRequest(response_size=size), timeout=30)
    assert len(response.payload.body) == size
