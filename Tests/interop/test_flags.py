"""interop-server flags: --max-concurrent-streams and --loops seen from the wire; bad values."""

import time

import grpc
import pytest

from interop_support import (SLEEP_MS, RawH2, empty_pb2, free_port, interop_stub, make_channel,
                             messages_pb2, run_to_exit, tls_args)


def test_max_concurrent_streams_enforced_with_resource_exhausted(start_server):
    """SPEC §3: too many streams is RESOURCE_EXHAUSTED. SETTINGS advertise the limit plus 128
    (so clients send the calls over it instead of queueing them), and a connection at the
    limit keeps working."""
    server = start_server("interop-server", ["--max-concurrent-streams", "4"])
    with RawH2(server.port) as conn:
        assert conn.wait_settings(5)
        assert conn.remote_settings.get(3) == 4 + 128, conn.remote_settings
    with make_channel(server.port) as ch:
        stub = interop_stub(ch)
        grpc.channel_ready_future(ch).result(timeout=10)

        def wave(n):
            futs = [stub.EmptyCall.future(empty_pb2.Empty(), timeout=20,
                                          metadata=[(SLEEP_MS, "500")]) for _ in range(n)]
            codes, details = [], []
            for f in futs:
                try:
                    f.result(timeout=20)
                    codes.append(grpc.StatusCode.OK)
                except grpc.RpcError as e:
                    codes.append(e.code())
                    details.append(e.details())
            return codes, details

        # At the limit: all four run.
        codes, _ = wave(4)
        assert codes == [grpc.StatusCode.OK] * 4, codes
        # Over it: four run, the other eight are refused at once, naming the limit.
        start = time.monotonic()
        codes, details = wave(12)
        assert codes.count(grpc.StatusCode.OK) == 4, codes
        assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == 8, codes
        assert all("the limit is 4" in d for d in details), details
        assert time.monotonic() - start < 5
        # And the connection still serves.
        assert stub.EmptyCall(empty_pb2.Empty(), timeout=10) == empty_pb2.Empty()


@pytest.mark.parametrize("loops", ["1", "2", "4"])
def test_loops_flag_serves(start_server, loops):
    server = start_server("interop-server", ["--loops", loops])
    channels = [make_channel(server.port) for _ in range(4)]
    try:
        futs = [interop_stub(channels[i % 4]).UnaryCall.future(
            messages_pb2.SimpleRequest(response_size=i), timeout=10) for i in range(40)]
        for i, f in enumerate(futs):
            assert len(f.result(timeout=10).payload.body) == i
    finally:
        for ch in channels:
            ch.close()


@pytest.mark.parametrize("flag,value", [("--max-message-bytes", "abc"), ("--loops", "0")])
def test_interop_server_bad_flag_value_refused(flag, value):
    args = ["--listen", f"127.0.0.1:{free_port()}"] + tls_args() + [flag, value]
    rc, out, err = run_to_exit("interop-server", args, timeout=10)
    assert rc is not None, f"interop-server {flag} {value!r} kept running (stderr: {err[-2000:]})"
    assert rc != 0
    assert flag.lstrip("-") in err, f"stderr does not name {flag}: {err[-2000:]!r}"
