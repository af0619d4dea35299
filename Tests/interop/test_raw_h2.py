"""Wire-level checks with a raw HTTP/2 client (h2 over Python ssl, ALPN h2)."""

import time

import h2.errors
import h2.settings
import pytest

from interop_support import (DEFAULT_MAX_MESSAGE, SLEEP_MS, RawH2, grpc_frame, messages_pb2,
                             parse_grpc_frames, percent_decode, rss_kib)

UNARY = "/grpc.testing.TestService/UnaryCall"
EMPTY = "/grpc.testing.TestService/EmptyCall"


@pytest.fixture
def raw(interop_server):
    conn = RawH2(interop_server.port)
    yield conn
    conn.close()


def assert_usable(conn: RawH2):
    """The connection still serves a normal EmptyCall."""
    st = conn.empty_call(timeout=5)
    assert st.grpc_status == 0, f"follow-up EmptyCall on the same connection: {st.summary()} " \
                                f"(connection closed={conn.closed}, goaway={conn.goaway})"


def test_empty_call_wire_format(raw):
    st = raw.wait(raw.request(EMPTY, grpc_frame(b"")), timeout=5)
    assert st.status == 200, st.summary()
    assert (st.header(b"content-type") or b"").startswith(b"application/grpc"), st.summary()
    assert st.ended, st.summary()
    assert st.trailers, f"expected trailers after the message: {st.summary()}"
    assert dict(st.trailers).get(b"grpc-status") == b"0", st.summary()
    assert parse_grpc_frames(st.data) == [b""], st.summary()
    assert st.data == b"\x00\x00\x00\x00\x00"


def test_advertises_settings(raw):
    assert raw.wait_settings(5), "no SETTINGS frame from the server"
    # SETTINGS_MAX_CONCURRENT_STREAMS (0x3): the default limit 256, plus the 128 calls over
    # it a client may have in flight while they are refused.
    assert raw.remote_settings.get(3) == 256 + 128, raw.remote_settings


@pytest.mark.parametrize("claimed", [0xFFFFFFFF, DEFAULT_MAX_MESSAGE + 1],
                         ids=["4GiB", "limit+1"])
def test_huge_length_prefix_refused_without_waiting_for_body(raw, claimed):
    start = time.monotonic()
    sid = raw.request(UNARY, grpc_frame(b"\x10\x01\x1a", claimed_length=claimed), end_stream=False)
    st = raw.wait(sid, timeout=2.0)
    elapsed = time.monotonic() - start
    assert st.grpc_status == 8, f"wanted grpc-status 8 within 2 s, got after {elapsed:.2f}s: " \
                                f"{st.summary()}"
    assert elapsed < 2.0
    assert_usable(raw)


def test_wrong_content_type_is_415(raw):
    st = raw.wait(raw.request(EMPTY, grpc_frame(b""), content_type="text/plain"), timeout=5)
    assert st.status == 415, st.summary()
    assert_usable(raw)


def test_grpc_proto_content_type_accepted(raw):
    st = raw.wait(raw.request(EMPTY, grpc_frame(b""), content_type="application/grpc+proto"),
                  timeout=5)
    assert st.status == 200 and st.grpc_status == 0, st.summary()


def test_other_codec_content_type_unimplemented(raw):
    # application/grpc+json is gRPC with JSON messages, which this server does not speak:
    # UNIMPLEMENTED naming the content-type, not a protobuf decoding error.
    st = raw.wait(raw.request(EMPTY, grpc_frame(b"{}"), content_type="application/grpc+json"),
                  timeout=5)
    assert st.status == 200 and st.grpc_status == 12, st.summary()
    assert b"application/grpc+json" in (st.trailer_or_header(b"grpc-message") or b""), st.summary()
    st = raw.wait(raw.request(EMPTY, grpc_frame(b""),
                              content_type="application/grpc+proto;charset=utf-8"), timeout=5)
    assert st.status == 200 and st.grpc_status == 0, st.summary()
    assert_usable(raw)


def test_unknown_compression_unimplemented(raw):
    st = raw.wait(raw.request(EMPTY, grpc_frame(b"\x01\x02\x03\x04", compressed=True),
                              extra=[("grpc-encoding", "snappy")]), timeout=5)
    assert st.grpc_status == 12, st.summary()
    assert st.trailer_or_header(b"grpc-accept-encoding") is not None, \
        f"no grpc-accept-encoding header: {st.summary()}"
    assert_usable(raw)


def test_compressed_flag_without_encoding_refused(raw):
    """Compressed-Flag 1 with no grpc-encoding is a protocol error (grpc-go/java: INTERNAL)."""
    st = raw.wait(raw.request(EMPTY, grpc_frame(b"\x01\x02", compressed=True)), timeout=5)
    assert st.grpc_status not in (None, 0), st.summary()


def test_unparsable_request_internal(raw):
    st = raw.wait(raw.request(UNARY, grpc_frame(b"\xff\xff\xff")), timeout=5)
    assert st.grpc_status == 13, st.summary()
    assert_usable(raw)


def test_non_ascii_grpc_message_percent_encoded(raw):
    message = "caf\u00e9 \u263a 100% \U0001f608\n"
    body = messages_pb2.SimpleRequest(
        response_status=messages_pb2.EchoStatus(code=2, message=message)).SerializeToString()
    st = raw.wait(raw.request(UNARY, grpc_frame(body)), timeout=5)
    assert st.grpc_status == 2, st.summary()
    wire = st.trailer_or_header(b"grpc-message")
    assert wire is not None, st.summary()
    assert all(0x20 <= b <= 0x7E for b in wire), f"raw grpc-message not printable ASCII: {wire!r}"
    assert b"%" in wire, f"grpc-message not percent-encoded: {wire!r}"
    assert percent_decode(wire) == message.encode("utf-8"), f"raw grpc-message {wire!r}"


def test_header_list_above_16k_refused(raw):
    sid = raw.request(EMPTY, grpc_frame(b""), extra=[("x-big", "a" * 20000)])
    st = raw.wait(sid, timeout=5)
    refused = (st.reset is not None or (st.status is not None and st.status != 200)
               or st.grpc_status not in (None, 0))
    assert refused, f"a 20000-byte header was accepted: {st.summary()}"
    assert_usable(raw)


def test_message_split_across_data_frames(raw):
    body = messages_pb2.SimpleRequest(response_size=33,
                                      payload=messages_pb2.Payload(body=b"\0" * 1000)).SerializeToString()
    framed = grpc_frame(body)
    sid = raw.request(UNARY, b"", end_stream=False)
    for piece in (framed[:2], framed[2:5], framed[5:6], framed[6:500], framed[500:]):
        raw.send_data(sid, piece)
        time.sleep(0.01)
    raw.end(sid)
    st = raw.wait(sid, timeout=5)
    assert st.grpc_status == 0, st.summary()
    frames = parse_grpc_frames(st.data)
    assert len(frames) == 1, st.summary()
    response = messages_pb2.SimpleResponse.FromString(frames[0])
    assert response.payload.body == b"\0" * 33


def test_request_without_message_answered(raw):
    """A unary call half-closed with no message gets a non-OK status, not a hang."""
    sid = raw.start(RawH2.grpc_headers(UNARY), end_stream=True)
    st = raw.wait(sid, timeout=3)
    assert st.grpc_status not in (None, 0), st.summary()
    assert_usable(raw)


def test_server_enforces_grpc_timeout(raw):
    """With grpc-timeout 100m and a 2 s sleep, the server itself ends the call (grpc-status 4
    or RST_STREAM) well before 2 s."""
    start = time.monotonic()
    sid = raw.request(EMPTY, grpc_frame(b""), extra=[("grpc-timeout", "100m"), (SLEEP_MS, "2000")])
    st = raw.wait(sid, timeout=1.5)
    elapsed = time.monotonic() - start
    assert st.grpc_status == 4 or st.reset is not None, \
        f"nothing from the server {elapsed:.2f}s after a 100 ms grpc-timeout: {st.summary()}"
    assert elapsed < 1.5


def test_many_streams_one_connection(raw):
    sids = [raw.request(UNARY, grpc_frame(messages_pb2.SimpleRequest(response_size=i).SerializeToString()))
            for i in range(1, 51)]
    for i, sid in enumerate(sids, start=1):
        st = raw.wait(sid, timeout=5)
        assert st.grpc_status == 0, st.summary()
        frames = parse_grpc_frames(st.data)
        assert len(messages_pb2.SimpleResponse.FromString(frames[0]).payload.body) == i


def test_large_responses_keep_flowing_to_a_client_that_only_reads(interop_server):
    """A client granting large windows up front sends nothing while it reads: once the socket
    drains, the server must go on producing HTTP/2 output by itself (it used to stop after
    the first socket-full and wait for the client's next frame)."""
    conn = RawH2(interop_server.port)
    try:
        conn.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 2**31 - 1})
        conn.conn.increment_flow_control_window(2**31 - 1 - 65535)
        conn._flush()
        size = 4_000_000
        body = grpc_frame(messages_pb2.SimpleRequest(response_size=size).SerializeToString())
        sids = [conn.request(UNARY, body) for _ in range(3)]
        # A busy machine may leave the server off the CPU for a while: only no progress
        # for 10 s (or 30 s in all) is a stall.
        deadline = time.monotonic() + 30
        quiet_since = time.monotonic()
        while time.monotonic() < deadline and not all(conn.streams[s].ended for s in sids):
            if conn.pump(0.5):
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since > 10:
                break
        got = [len(conn.streams[s].data) for s in sids]
        assert all(conn.streams[s].ended for s in sids), f"stalled at {got} bytes"
        assert all(n > size for n in got), got
    finally:
        conn.close()


def test_answers_a_client_does_not_read_are_bounded_and_the_rest_wait(start_server):
    """A client that asks for many large answers without reading them (window 0): the
    connection holds at most ~16 MiB of unsent answers; later calls wait to run, and run
    once the client reads, each answered in full."""
    server = start_server("interop-server")
    conn = RawH2(server.port)
    try:
        conn.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
        conn._flush()
        assert conn.wait_settings(5)
        before = rss_kib(server.proc.pid)
        size, calls = 1_000_000, 120
        body = grpc_frame(messages_pb2.SimpleRequest(response_size=size).SerializeToString())
        sids = [conn.request(UNARY, body) for _ in range(calls)]
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            conn.pump(0.1)
        grown_mib = (rss_kib(server.proc.pid) - before) / 1024
        assert grown_mib < 60, f"{grown_mib:.0f} MiB held for {calls} unread 1 MB answers"
        # Reset streams give their unsent answers' room back (the first ones ran, a later
        # one is held): the rest still all run once the client reads.
        for sid in sids[:5] + sids[-1:]:
            conn.conn.reset_stream(sid, error_code=h2.errors.ErrorCodes.CANCEL)
        conn._flush()
        kept = sids[5:-1]
        conn.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 2**31 - 1})
        conn.conn.increment_flow_control_window(2**31 - 1 - 65535)
        conn._flush()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not all(conn.streams[s].ended for s in kept):
            if not conn.pump(0.5):
                break
        done = [s for s in kept if conn.streams[s].ended and conn.streams[s].grpc_status == 0]
        # On failure: whether each unanswered call ran (headers came), how far its answer got
        # and how long nothing came, to tell a held call never run from an answer whose
        # sending stopped (as it did when the socket drained during the server's last write
        # of a flush: about one run in 30 with two CPU hogs, fixed in ServerConnection.flush).
        left = {s: (bool(conn.streams[s].headers), len(conn.streams[s].data),
                    conn.streams[s].ended, conn.streams[s].grpc_status, conn.streams[s].reset)
                for s in kept if s not in done}
        quiet = time.monotonic() - (conn.last_read_at or 0)
        assert len(done) == len(kept), (
            f"{len(done)} of {len(kept)} answered; the rest (headers, data bytes, ended, "
            f"grpc-status, reset code): {left}; connection closed: {conn.closed}, GOAWAY: "
            f"{conn.goaway}; nothing read for {quiet:.1f} s; "
            f"{deadline - time.monotonic():.1f} s left")
        assert all(len(conn.streams[s].data) > size for s in kept)
        # Nothing is left counted: a new large call on the connection runs at once.
        st = conn.wait(conn.request(UNARY, body), timeout=10)
        assert st.grpc_status == 0 and len(st.data) > size, st.summary()
    finally:
        conn.close()


def test_request_bodies_a_connection_holds_are_bounded(start_server):
    """Calls whose request message never ends (a claimed 4 MB, 3.9 MB sent) on one connection:
    with --max-request-bytes-per-connection 64 MiB (the default is 256 MiB) the connection
    holds at most that much of such bytes; the call whose data goes over is refused
    RESOURCE_EXHAUSTED naming the bound and its bytes dropped; the connection still serves."""
    server = start_server("interop-server", ["--max-request-bytes-per-connection", "67108864"])
    with RawH2(server.port) as conn:
        assert conn.wait_settings(5)
        before = rss_kib(server.proc.pid)
        sids = []
        for _ in range(24):
            sid = conn.start(RawH2.grpc_headers(UNARY))
            conn.send_flowed(sid, grpc_frame(b"\0" * 3_900_000, claimed_length=4_000_000))
            sids.append(sid)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and conn.pump(0.1):
            if sum(conn.streams[s].grpc_status is not None for s in sids) >= 7:
                break
        answered = [s for s in sids if conn.streams[s].grpc_status is not None]
        # 17 bodies of 3.9 MB fit in 64 MiB, the 18th goes over.
        assert answered == sids[17:], [conn.streams[s].summary() for s in answered[:2]]
        st = conn.streams[sids[17]]
        assert st.grpc_status == 8, st.summary()
        message = percent_decode(st.trailer_or_header(b"grpc-message") or b"").decode()
        assert "exceed 67108864 bytes" in message, message
        grown_mib = (rss_kib(server.proc.pid) - before) / 1024
        assert grown_mib < 100, f"{grown_mib:.0f} MiB held for 24 unfinished 3.9 MB bodies"
        for sid in sids[:17]:
            conn.conn.reset_stream(sid, error_code=h2.errors.ErrorCodes.CANCEL)
        conn._flush()
        # Their bytes are given back: a call with a 3 MB request runs.
        body = grpc_frame(messages_pb2.SimpleRequest(
            response_size=1, payload=messages_pb2.Payload(body=b"x" * 3_000_000)).SerializeToString())
        sid = conn.start(RawH2.grpc_headers(UNARY))
        conn.send_flowed(sid, body)
        conn.end(sid)
        st = conn.wait(sid, timeout=10)
        assert st.grpc_status == 0, st.summary()
