"""Many concurrent calls over a few connections, each answer checked."""

import time

import grpc
import pytest

from interop_support import launch, shutdown
from interop_support import ECHO_INITIAL, make_channel, messages_pb2, interop_stub

CALLS = 2000
CHANNELS = 8
BUDGET = 60.0  # seconds for the whole batch


@pytest.fixture(scope="module", params=[None, 2], ids=["default-loops", "loops-2"])
def server(request):
    args = [] if request.param is None else ["--loops", str(request.param)]
    s = launch("interop-server", args)
    yield s
    shutdown(s, require_clean=True)


@pytest.mark.deadline(120)
def test_2000_concurrent_unary_calls(server):
    channels = [make_channel(server.port) for _ in range(CHANNELS)]
    try:
        for ch in channels:
            grpc.channel_ready_future(ch).result(timeout=10)
        stubs = [interop_stub(ch) for ch in channels]
        for s in stubs:  # connections warmed up: the server's SETTINGS are known
            s.UnaryCall(messages_pb2.SimpleRequest(response_size=1), timeout=10)
        start = time.monotonic()
        futures = []
        for i in range(CALLS):
            req = messages_pb2.SimpleRequest(response_size=1 + i % 500)
            futures.append(stubs[i % CHANNELS].UnaryCall.future(
                req, timeout=BUDGET, metadata=[(ECHO_INITIAL, f"call-{i}")]))
        failures = []
        for i, fut in enumerate(futures):
            left = max(0.1, BUDGET - (time.monotonic() - start))
            try:
                resp = fut.result(timeout=left)
            except grpc.RpcError as e:
                failures.append(f"call {i}: {e.code()} {e.details()}")
                continue
            except grpc.FutureTimeoutError:
                failures.append(f"call {i}: no answer within {BUDGET}s")
                continue
            if len(resp.payload.body) != 1 + i % 500 or resp.payload.body.strip(b"\0"):
                failures.append(f"call {i}: payload of {len(resp.payload.body)} bytes, "
                                f"wanted {1 + i % 500} zero bytes")
            echoed = dict(fut.initial_metadata() or ()).get(ECHO_INITIAL)
            if echoed != f"call-{i}":
                failures.append(f"call {i}: echoed {echoed!r}, wanted 'call-{i}'")
        elapsed = time.monotonic() - start
        for fut in futures:
            fut.cancel()
        assert not failures, f"{len(failures)} of {CALLS} calls failed, first: {failures[:10]}"
        assert elapsed < BUDGET
        print(f"{CALLS} calls over {CHANNELS} channels in {elapsed:.2f}s")
    finally:
        for ch in channels:
            ch.close()
