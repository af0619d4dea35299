"""interop-server flags: --max-concurrent-streams and --loops seen from the wire; bad values."""

import socket
import ssl
import time

import grpc
import h2.settings
import pytest

from interop_support import (SLEEP_MS, RawH2, empty_pb2, free_port, grpc_frame, interop_stub,
                             make_channel, messages_pb2, run_to_exit, tls_args, tls_client_context,
                             tls_connect)


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


def test_streams_over_the_limit_are_refused_up_to_128_then_the_connection_closes(start_server):
    """The edge of the 128 refused streams the SETTINGS allow over --max-concurrent-streams:
    a client that opens limit + 128 streams in one burst (reading nothing between) gets the
    128 refused with RESOURCE_EXHAUSTED and keeps its connection and its 4 calls; one stream
    more breaks the advertised SETTINGS_MAX_CONCURRENT_STREAMS, a connection error
    (GOAWAY PROTOCOL_ERROR, nghttp2's choice), so no client can make the server hold more."""
    server = start_server("interop-server", ["--max-concurrent-streams", "4"])
    empty = "/grpc.testing.TestService/EmptyCall"
    for extra, closes in [(0, False), (1, True)]:
        with RawH2(server.port) as conn:
            assert conn.wait_settings(5) and conn.remote_settings.get(3) == 4 + 128
            # h2 itself refuses to open more than the server advertises: lift its check.
            conn.conn.remote_settings._settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] = \
                [10**6]
            sids = [conn.start(conn.grpc_headers(empty)) for _ in range(4 + 128 + extra)]
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and not conn.closed and \
                    sum(conn.streams[s].ended for s in sids) < 128:
                conn.pump(0.2)
            if closes:
                assert conn.goaway is not None and conn.goaway.error_code == 1, conn.goaway
                continue
            assert conn.goaway is None and not conn.closed
            refused = [conn.streams[s] for s in sids[4:]]
            assert all(dict(st.trailers or st.headers).get(b"grpc-status") == b"8"
                       for st in refused), [st.summary() for st in refused[:3]]
            for sid in sids[:4]:
                conn.send_data(sid, grpc_frame(b""), end_stream=True)
            assert [conn.wait(sid, 5).grpc_status for sid in sids[:4]] == [0] * 4
            assert conn.empty_call(5).grpc_status == 0


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


def _closed_within(sock, seconds: float) -> float:
    """Reads (and drops) what `sock` receives until the server closes it; the seconds that
    took, or fails after `seconds`."""
    start = time.monotonic()
    sock.settimeout(0.2)
    while time.monotonic() - start < seconds:
        try:
            if not sock.recv(65536):
                return time.monotonic() - start
        except (TimeoutError, socket.timeout):
            continue
        except (ssl.SSLError, OSError):
            return time.monotonic() - start
    pytest.fail(f"the server kept the connection open for {seconds} s")


def test_idle_timeout_closes_connections_that_hold_a_descriptor_for_nothing(start_server):
    """--idle-timeout 1 (the watchdog looks every second): a connection that finishes TLS and
    sends nothing, one whose request header block never ends (HEADERS without END_HEADERS),
    one with a call whose request body never ends, one whose client takes nothing of its
    answer (window 0), and one without a call for a second are closed (the idle one with
    GOAWAY NO_ERROR after its call); one with a call running is not."""
    server = start_server("interop-server", ["--idle-timeout", "1"])
    silent = tls_connect(server.port, tls_client_context())
    stuck = RawH2(server.port)
    assert stuck.wait_settings(5)
    # HEADERS (type 1), flags 0 (no END_HEADERS), stream 1: one literal header, then nothing.
    block = b"\x82"  # :method GET, indexed
    stuck.sock.sendall(len(block).to_bytes(3, "big") + b"\x01\x00" + (1).to_bytes(4, "big") + block)
    unended = RawH2(server.port)
    unended.start(RawH2.grpc_headers("/grpc.testing.TestService/UnaryCall"))
    unread = RawH2(server.port)
    unread.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
    unread._flush()
    assert unread.wait_settings(5)
    unread.request("/grpc.testing.TestService/UnaryCall", grpc_frame(
        messages_pb2.SimpleRequest(response_size=1000).SerializeToString()))
    idle = RawH2(server.port)
    assert idle.empty_call().grpc_status == 0
    busy = RawH2(server.port)
    sid = busy.request("/grpc.testing.TestService/EmptyCall", grpc_frame(b""),
                       extra=[(SLEEP_MS, "3500")])
    took = {}
    for name, sock in [("silent", silent), ("stuck", stuck.sock), ("unended", unended.sock),
                       ("unread", unread.sock)]:
        took[name] = _closed_within(sock, 6)
    deadline = time.monotonic() + 6
    while not idle.closed and time.monotonic() < deadline:
        idle.pump(0.2)
    assert idle.closed, "the idle connection is still open"
    assert idle.goaway is not None and idle.goaway.error_code == 0, idle.goaway
    st = busy.wait(sid, timeout=8)
    assert st.grpc_status == 0, f"the call running was cut: {st.summary()}"
    assert busy.empty_call().grpc_status == 0
    for c in (stuck, unended, unread, idle, busy):
        c.close()
    silent.close()
    assert all(t < 4 for t in took.values()), took
