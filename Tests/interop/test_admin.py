"""The admin HTTP endpoints (`--admin-listen`, SPEC §6): /healthz, /readyz, and /metrics with the
gRPC call counts, the write-ahead log's figures (records, group commits, fsyncs and their
time, failures) and the snapshots', read by a plain HTTP client as a scraper would."""

import json
import os
import select
import socket
import time

import grpc
import pytest

from interop_support import admin_address, admin_metrics, admin_request
from sc_support import b64url_decode, pb, pb_grpc

WAL_COUNTERS = ["subcenter_wal_records_total", "subcenter_wal_batches_total",
                "subcenter_wal_bytes_total", "subcenter_wal_syncs_total",
                "subcenter_wal_sync_seconds_total", "subcenter_wal_failed_batches_total"]
WAL_GAUGES = ["subcenter_wal_failed", "subcenter_wal_durable_seq"]
SNAPSHOT_COUNTERS = ["subcenter_snapshots_written_total", "subcenter_snapshots_failed_total"]
SNAPSHOT_GAUGES = ["subcenter_snapshot_seq", "subcenter_snapshot_last_written_timestamp_seconds"]


def get(server, path: str) -> tuple[int, str, str]:
    status, headers, body = admin_request(server, path)
    return status, headers.get("Content-Type", ""), body


def test_health_ready_and_unknown_paths(sc):
    assert get(sc.server, "/healthz")[0::2] == (200, "ok\n")
    assert get(sc.server, "/readyz")[0::2] == (200, "ready\n")
    status, _, body = get(sc.server, "/nope")
    assert status == 404 and "/metrics" in body


def test_head_is_get_without_the_body_and_other_methods_are_refused(sc):
    for path, status in [("/healthz", 200), ("/readyz", 200), ("/metrics", 200), ("/nope", 404)]:
        got, headers, body = admin_request(sc.server, path, method="HEAD")
        assert (got, body) == (status, ""), path
        assert int(headers["Content-Length"]) > 0, path  # the length GET's body would have
    status, headers, _ = admin_request(sc.server, "/healthz", method="POST", data=b"x")
    assert status == 405 and headers["Allow"] == "GET, HEAD"


def test_idle_connections_do_not_delay_a_probe(sc):
    """Connections that send nothing (each may wait 2 s for its request) must not queue a
    health probe behind them: a probe with a 1 s timeout still answers."""
    host, port = admin_address(sc.server).rsplit(":", 1)
    idle = [socket.create_connection((host, int(port)), timeout=2) for _ in range(8)]
    try:
        time.sleep(0.2)
        start = time.monotonic()
        assert admin_request(sc.server, "/healthz", timeout=1)[0] == 200
        assert time.monotonic() - start < 1.0
    finally:
        for s in idle:
            s.close()


def test_a_silent_connection_is_closed_unanswered_and_an_unfinished_request_is_400(sc):
    host, port = admin_address(sc.server).rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as silent, \
            socket.create_connection((host, int(port)), timeout=5) as unfinished:
        unfinished.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # no blank line
        assert silent.recv(100) == b""
        assert b"incomplete request" in unfinished.recv(1000)
    with socket.create_connection((host, int(port)), timeout=5) as huge:
        # The 16 KiB a request may take, without its end (no more: unread bytes would make
        # the close a reset, which may drop the answer).
        huge.sendall(b"GET /" + b"a" * (16384 - 5))
        answer = huge.recv(1000)
        assert answer.startswith(b"HTTP/1.1 400 ") and b"request too large" in answer, answer


def test_a_malformed_request_is_400_and_runs_nothing(sc):
    """RFC 9112: a request line that is not `METHOD TARGET HTTP/1.x`, a Content-Length that
    is not one number, or a Transfer-Encoding (no body is read) gets 400, and
    `POST /snapshot` does not run on it; HTTP/1.0, a repeated equal length and empty lines
    before the request line are fine."""
    host, port = admin_address(sc.server).rsplit(":", 1)

    def send(raw: bytes) -> bytes:
        with socket.create_connection((host, int(port)), timeout=5) as c:
            c.sendall(raw)
            out = b""
            while chunk := c.recv(4096):
                out += chunk
            return out

    written = admin_metrics(sc.server)[0]["subcenter_snapshots_written_total"]
    for bad in [b"POST /snapshot HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
                b"POST /snapshot HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
                b"POST /snapshot HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
                b"POST /snapshot HTTP/1.1\r\nContent-Length: 1, 2\r\n\r\n",
                b"POST /snapshot HTTP/1.1\r\nContent-Length: 0\r\nContent-Length: 1\r\n\r\n",
                b"POST /snapshot HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                b"POST /snapshot HTTP/1.1\r\nno colon here\r\n\r\n",
                b"GET /healthz HTTP/9.9\r\n\r\n", b"GET /healthz FOO/1.1\r\n\r\n",
                b"GET /healthz\r\n\r\n", b"GET  /healthz HTTP/1.1\r\n\r\n",
                b"GET /healthz HTTP/1.1\r\nHost : x\r\n\r\n",
                b"GET /healthz HTTP/1.1\r\nX-Foo: a\r\n  b\r\n\r\n"]:
        assert send(bad).startswith(b"HTTP/1.1 400 "), bad
    assert admin_metrics(sc.server)[0]["subcenter_snapshots_written_total"] == written
    for good in [b"GET /healthz HTTP/1.0\r\n\r\n", b"GET /healthz HTTP/1.1\nHost: x\n\n",
                 b"GET http://127.0.0.1:9090/healthz HTTP/1.1\r\nHost: x\r\n\r\n",
                 b"GET /healthz HTTP/1.1\r\nContent-Length: 0\r\ncontent-length:  0 \r\n\r\n",
                 b"\r\n\r\nGET /healthz HTTP/1.1\r\n\r\n"]:  # empty lines first are ignored
        assert send(good).startswith(b"HTTP/1.1 200 "), good


def test_silent_connections_at_the_limit_do_not_keep_a_probe_out(sc):
    """128 connections are served at once. With 128 silent ones held (each may wait 2 s
    for its request, and a client can open them again and again), a probe still answers at
    once: it takes the place of the oldest silent connection, which is closed. (The probe
    was closed unanswered: 128 idle connections kept /healthz failing.)"""
    host, port = admin_address(sc.server).rsplit(":", 1)
    held = []

    def closed() -> list[int]:
        readable, _, _ = select.select(held, [], [], 0.05)
        return sorted(held.index(c) for c in readable)

    try:
        for _ in range(128):
            held.append(socket.create_connection((host, int(port)), timeout=5))
            time.sleep(0.002)  # in order: the first is the oldest
        time.sleep(0.3)
        assert closed() == []
        for i in range(3):
            start = time.monotonic()
            assert admin_request(sc.server, "/healthz", timeout=1)[0] == 200
            assert time.monotonic() - start < 1.0
            assert closed() == list(range(i + 1)), "not the oldest silent one closed"
            held.append(socket.create_connection((host, int(port)), timeout=5))  # 128 again
            time.sleep(0.05)
    finally:
        for c in held:
            c.close()


def test_metrics_describe_every_sample(sc):
    samples, text = admin_metrics(sc.server)
    counters = WAL_COUNTERS + SNAPSHOT_COUNTERS + ["subcenter_connections_refused_total"]
    for name in counters + WAL_GAUGES + SNAPSHOT_GAUGES + ["subcenter_open_connections"]:
        assert name in samples, f"{name} missing from /metrics"
        kind = "counter" if name in counters else "gauge"
        assert f"# TYPE {name} {kind}" in text and f"# HELP {name} " in text
    assert 'subcenter_grpc_calls_total{code="OK"}' in samples


def test_metrics_count_durable_writes(sc):
    ws = sc.workspace()
    sc.person(ws, "p")
    before, _ = admin_metrics(sc.server)
    writes = 20
    for i in range(writes):
        method = sc.root.Subscribe if i % 2 else sc.root.Unsubscribe
        method(workspace=ws, person="p", channel="email", source=f"s{i}")
    after, _ = admin_metrics(sc.server)

    def grew(name):
        return after[name] - before[name]

    # Every acknowledged write is a record written and (the default --fsync always) synced
    # before its answer; other tests of this module may write meanwhile, hence >=.
    assert grew("subcenter_wal_records_total") >= writes
    assert 1 <= grew("subcenter_wal_batches_total") <= grew("subcenter_wal_records_total")
    assert grew("subcenter_wal_syncs_total") >= grew("subcenter_wal_batches_total")
    assert grew("subcenter_wal_sync_seconds_total") > 0
    assert grew("subcenter_wal_bytes_total") >= writes * 20
    assert grew("subcenter_wal_durable_seq") >= writes
    assert after["subcenter_wal_durable_seq"] >= after["subcenter_wal_records_total"]
    assert grew('subcenter_grpc_calls_total{code="OK"}') >= writes
    assert after["subcenter_wal_failed"] == 0
    assert after["subcenter_wal_failed_batches_total"] == 0


def test_writes_in_flight_together_share_one_fsync(sc):
    """SPEC §4: "writes are group-committed so many in-flight calls share one fsync": 200
    Subscribe calls sent in one burst on one connection are all acknowledged (each durable
    before its answer) with a handful of fdatasyncs, not 200."""
    from interop_support import RawH2, StreamResult, grpc_frame
    from sc_support import TOKENS
    ws = sc.workspace()
    sc.person(ws, "gc")
    auth = [("authorization", "Bearer " + TOKENS["sc-root"])]
    with RawH2(sc.port) as raw:
        assert raw.wait_settings()
        before, _ = admin_metrics(sc.server)
        sids = []
        for i in range(200):  # written to the socket together, below the 256-stream limit
            sid = raw.conn.get_next_available_stream_id()
            raw.streams[sid] = StreamResult(sid)
            raw.conn.send_headers(sid, RawH2.grpc_headers(
                "/subcenter.v1.SubscriptionCenter/Subscribe", extra=auth))
            raw.conn.send_data(sid, grpc_frame(pb.PreferenceRequest(
                workspace=ws, person=pb.PersonRef(person_id="gc"), channel="email",
                source=f"s{i}").SerializeToString()), end_stream=True)
            sids.append(sid)
        raw._flush()
        for sid in sids:
            st = raw.wait(sid, timeout=10)
            assert st.grpc_status == 0, st.summary()
        after, _ = admin_metrics(sc.server)

    def grew(name):
        return after[name] - before[name]

    assert grew("subcenter_wal_records_total") >= 200
    assert 1 <= grew("subcenter_wal_syncs_total") <= 20, \
        (grew("subcenter_wal_records_total"), grew("subcenter_wal_syncs_total"))
    history = sc.root.GetHistory(workspace=ws, person="gc", page_size=1000)
    assert len(history.entries) == 201


@pytest.mark.deadline(60)
def test_fsync_interval_syncs_at_most_every_interval(start_server):
    """SPEC §4 and §6: `--fsync interval:MS` fsyncs "at most every N ms, like Redis
    everysec": back-to-back writes for 1.2 s under interval:500 are answered without waiting
    for the disk and synced a few times, not once a write; what they wrote is synced within
    the interval after they stop."""
    from sc_support import Env, server_args
    server = start_server("subcenterd", server_args() + ["--fsync", "interval:500"])
    env = Env(server)
    try:
        env.root.Identify(workspace="default", person_id="iv")
        before, _ = admin_metrics(server)
        started, writes = time.monotonic(), 0
        while time.monotonic() - started < 1.2:
            env.root.Subscribe(workspace="default", person="iv", channel="email",
                               source=str(writes))
            writes += 1
        time.sleep(0.8)
        after, _ = admin_metrics(server)
        syncs = after["subcenter_wal_syncs_total"] - before["subcenter_wal_syncs_total"]
        assert after["subcenter_wal_records_total"] - before["subcenter_wal_records_total"] \
            >= writes
        assert 1 <= syncs <= 6, f"{syncs} fsyncs for {writes} writes in 1.2 s"
        assert after["subcenter_wal_durable_seq"] >= after["subcenter_wal_records_total"]
    finally:
        env.close()


def test_metrics_count_calls_by_status_and_cancelled_ones(sc):
    """Every code has its series, so an alert can watch UNAUTHENTICATED floods or
    UNAVAILABLE writes (a full disk) apart; a call the client resets before its answer is
    CANCELLED (it was counted nowhere)."""
    ws = sc.workspace()
    sc.person(ws, "p")
    before, text = admin_metrics(sc.server)
    for code in ("OK", "CANCELLED", "INVALID_ARGUMENT", "UNAUTHENTICATED", "UNAVAILABLE"):
        assert f'subcenter_grpc_calls_total{{code="{code}"}}' in before, text
    assert 'code="other"' not in text
    stub = pb_grpc.SubscriptionCenterStub(sc.channel)
    for _ in range(3):
        with pytest.raises(grpc.RpcError):
            stub.GetWorkspace(pb.GetWorkspaceRequest(workspace=ws), timeout=5,
                              metadata=[("authorization", "Bearer sct_nobody")])
    # A WatchChanges stream never ends by itself: the client resets it.
    watch = stub.WatchChanges(pb.WatchRequest(workspace=ws, from_oldest=True),
                              metadata=sc.root.metadata, timeout=30)
    assert next(iter(watch)).action == "identify"
    watch.cancel()
    deadline = time.monotonic() + 5
    while True:
        after, _ = admin_metrics(sc.server)
        grew = {c: after[f'subcenter_grpc_calls_total{{code="{c}"}}']
                - before[f'subcenter_grpc_calls_total{{code="{c}"}}']
                for c in ("UNAUTHENTICATED", "CANCELLED")}
        if grew["CANCELLED"] >= 1 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert grew["UNAUTHENTICATED"] >= 3 and grew["CANCELLED"] >= 1, grew


def test_metrics_follow_snapshots(sc):
    """ForgetPerson with wait_for_erasure answers after a compaction, which writes a
    snapshot: /metrics then shows it (seq, time, count)."""
    ws = sc.workspace()
    sc.person(ws, "gone")
    before, _ = admin_metrics(sc.server)
    started = time.time()
    r = sc.root.ForgetPerson(workspace=ws, person="gone", wait_for_erasure=True, timeout=30)
    receipt_seq = json.loads(b64url_decode(r.receipt.split(".")[0]))["snapshot_seq"]
    after, _ = admin_metrics(sc.server)
    assert after["subcenter_snapshots_written_total"] > before["subcenter_snapshots_written_total"]
    assert after["subcenter_snapshot_seq"] >= receipt_seq > before["subcenter_snapshot_seq"]
    written = after["subcenter_snapshot_last_written_timestamp_seconds"]
    assert started - 1 <= written <= time.time() + 1
    assert after["subcenter_snapshots_failed_total"] == 0


def test_post_snapshot_writes_one_now(sc):
    """POST /snapshot (SPEC §4 "snapshots ... on demand"): answered once the snapshot is
    durable, with its seq; the file is in the data directory and /metrics names it."""
    data = sc.server.argv[sc.server.argv.index("--data") + 1]
    ws = sc.workspace()
    sc.person(ws)  # a change since any snapshot

    def request(method, path="/snapshot"):
        status, headers, body = admin_request(sc.server, path, method=method)
        return status, headers.get("Allow"), body

    status, _, body = request("POST")
    assert status == 200 and body.startswith("snapshot at seq "), (status, body)
    seq = int(body.split()[-1])
    before, _ = admin_metrics(sc.server)
    assert before["subcenter_snapshot_seq"] == seq
    assert any(name.startswith("snapshot-") and f"{seq:020d}" in name for name in os.listdir(data)), \
        os.listdir(data)
    # Nothing changed since: the same snapshot, not another file.
    assert request("POST")[0::2] == (200, f"snapshot at seq {seq}\n")
    assert admin_metrics(sc.server)[0]["subcenter_snapshots_written_total"] == \
        before["subcenter_snapshots_written_total"]
    # Only POST writes one; other paths are not POSTed to.
    assert request("GET")[:2] == (405, "POST")
    assert request("POST", "/metrics")[:2] == (405, "GET, HEAD")
