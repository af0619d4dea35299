"""interop-server flags: --max-concurrent-streams and --loops seen from the wire; bad values."""

import time

import grpc
import pytest

from interop_support import (SLEEP_MS, RawH2, empty_pb2, free_port, interop_stub, make_channel,
                             messages_pb2, run_to_exit, tls_args)


def test_max_concurrent_streams_advertised_and_queued(start_server):
    server = start_server("interop-server", ["--max-concurrent-streams", "4"])
    with RawH2(server.port) as conn:
        assert conn.wait_settings(5)
        assert conn.remote_settings.get(3) == 4, conn.remote_settings
    # 12 calls of 300 ms over one connection limited to 4 streams: all succeed, in >= 3 waves.
    with make_channel(server.port) as ch:
        stub = interop_stub(ch)
        grpc.channel_ready_future(ch).result(timeout=10)
        # One call first, so the server's SETTINGS (the stream limit) are known to the client.
        stub.EmptyCall(empty_pb2.Empty(), timeout=10)
        start = time.monotonic()
        futs = [stub.EmptyCall.future(empty_pb2.Empty(), timeout=20, metadata=[(SLEEP_MS, "300")])
                for _ in range(12)]
        for f in futs:
            assert f.result(timeout=20) == empty_pb2.Empty()
        elapsed = time.monotonic() - start
    assert elapsed >= 0.8, f"12 x 300 ms calls with 4 streams took {elapsed:.2f}s (< 0.9 s)"


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
