"""Graceful shutdown: on SIGTERM the calls already started finish OK and the process exits 0."""

import struct
import tempfile
import time

import grpc
import pytest

from interop_support import SLEEP_MS, empty_pb2, make_channel, messages_pb2, interop_stub

CALLS = 50
CHANNELS = 5
SLEEP = 1500  # ms


@pytest.mark.deadline(60)
def test_sigterm_drains_started_calls(start_server):
    server = start_server("interop-server")
    channels = [make_channel(server.port) for _ in range(CHANNELS)]
    try:
        for ch in channels:
            grpc.channel_ready_future(ch).result(timeout=10)
        stubs = [interop_stub(ch) for ch in channels]
        for s in stubs:  # connections warmed up: the server's SETTINGS are known
            s.EmptyCall(empty_pb2.Empty(), timeout=10)
        futures = []
        for i in range(CALLS):
            stub = stubs[i % CHANNELS]
            md = [(SLEEP_MS, str(SLEEP))]
            if i % 2:
                futures.append(stub.EmptyCall.future(empty_pb2.Empty(), timeout=20, metadata=md))
            else:
                futures.append(stub.UnaryCall.future(messages_pb2.SimpleRequest(response_size=i),
                                                     timeout=20, metadata=md))
        time.sleep(0.3)
        server.expected_exit = True
        signalled = time.monotonic()
        server.terminate()

        failures = []
        for i, fut in enumerate(futures):
            try:
                resp = fut.result(timeout=15)
                if i % 2 == 0 and len(resp.payload.body) != i:
                    failures.append(f"call {i}: payload {len(resp.payload.body)} bytes, wanted {i}")
            except grpc.RpcError as e:
                failures.append(f"call {i}: {e.code()} {e.details()!r} "
                                f"at +{time.monotonic() - signalled:.2f}s after SIGTERM")
            except grpc.FutureTimeoutError:
                failures.append(f"call {i}: no answer")
        rc = server.wait_exit(timeout=max(0.1, 12 - (time.monotonic() - signalled)))
        exited_after = time.monotonic() - signalled
        assert not failures, f"{len(failures)} of {CALLS} calls started before SIGTERM failed: " \
                             f"{failures[:8]}"
        assert rc is not None, "server did not exit within 12 s of SIGTERM"
        assert rc == 0, f"server exited with code {rc} after SIGTERM"
        assert exited_after < 12
    finally:
        for ch in channels:
            ch.close()


@pytest.mark.deadline(40)
def test_sigterm_idle_server_exits_promptly(start_server):
    server = start_server("interop-server")
    with make_channel(server.port) as ch:
        interop_stub(ch).EmptyCall(empty_pb2.Empty(), timeout=10)
        server.expected_exit = True
        start = time.monotonic()
        server.terminate()
        rc = server.wait_exit(timeout=12)
    assert rc == 0, f"exit code {rc} (None: still running 12 s after SIGTERM)"
    assert time.monotonic() - start < 12


@pytest.mark.deadline(40)
def test_sigterm_with_open_watch_stream_exits(start_server):
    """A long-lived Health.Watch stream does not keep the server alive past the grace time."""
    from interop_support import health_pb2, health_stub
    server = start_server("interop-server")
    with make_channel(server.port) as ch:
        call = health_stub(ch).Watch(health_pb2.HealthCheckRequest(service=""), timeout=30)
        assert next(call).status == health_pb2.HealthCheckResponse.SERVING
        server.expected_exit = True
        server.terminate()
        rc = server.wait_exit(timeout=12)
        call.cancel()
    assert rc == 0, f"exit code {rc} (None: still running 12 s after SIGTERM)"


@pytest.mark.deadline(60)
def test_sigterm_ends_watch_streams_before_the_goaway():
    """Shutdown ends Health.Watch and WatchChanges streams (UNAVAILABLE) before its first
    GOAWAY: some HTTP/2 clients (Python's h2, under grpclib and httpx) drop every frame
    that follows a GOAWAY, and would see a protocol error instead of the status."""

    from crash_support import DurableServer
    from interop_support import RawH2, health_pb2
    from sc_support import TOKENS, pb

    srv = DurableServer(tempfile.mkdtemp(prefix="shutdown-")).start()
    try:
        srv.client.ConfigureWorkspace(pb.WorkspaceConfig(workspace="quiet", channels=["email"]))
        frame = lambda m: struct.pack(">BI", 0, len(m)) + m  # noqa: E731
        with RawH2(srv.port) as raw:
            health = raw.request("/grpc.health.v1.Health/Watch",
                                 frame(health_pb2.HealthCheckRequest(service="").SerializeToString()))
            watch = raw.request("/subcenter.v1.SubscriptionCenter/WatchChanges",
                                frame(pb.WatchRequest(workspace="quiet").SerializeToString()),
                                extra=[("authorization", "Bearer " + TOKENS["sc-root"])])
            deadline = time.monotonic() + 5
            while not raw.streams[health].data:
                assert time.monotonic() < deadline and raw.pump(0.2), "the watch did not start"
            raw.pump(0.3)  # the feed has registered the other watch
            srv.server.expected_exit = True
            srv.server.terminate()
            deadline = time.monotonic() + 15
            while raw.pump(0.2) and time.monotonic() < deadline:
                pass
            for sid in (health, watch):
                st = raw.streams[sid]
                assert st.ended and ("grpc-status", "14") in [
                    (k.decode() if isinstance(k, bytes) else k, v.decode() if isinstance(v, bytes) else v)
                    for k, v in (st.trailers or [])], (sid, st.trailers, st.reset)
            assert raw.goaway is not None, "no GOAWAY"
        assert srv.server.wait_exit(timeout=12) == 0
    finally:
        srv.close()


@pytest.mark.deadline(120)
def test_admin_port_answers_until_the_final_snapshot_is_written():
    """While subcenterd stops, the admin port stays: `/healthz` 200 and `/readyz` 503 until
    the final snapshot is on disk, also with no call in flight (it used to close before the
    snapshot, which for a large state takes seconds)."""
    import os
    import threading

    from crash_support import DurableServer
    from interop_support import admin_request
    from sc_support import TOKENS, pb, pb_grpc

    srv = DurableServer(tempfile.mkdtemp(prefix="shutdown-")).start()
    try:
        stub = pb_grpc.SubscriptionCenterStub(srv.channel)
        md = [("authorization", "Bearer " + TOKENS["sc-root"])]
        # A state whose snapshot takes a moment, 200 calls in flight at a time (the server
        # allows 256 streams a connection).
        for start in range(0, 20_000, 200):
            calls = [stub.Identify.future(
                pb.IdentifyRequest(workspace="default", person_id=f"p{i}",
                                   email=f"p{i}@example.com"), metadata=md, timeout=30)
                for i in range(start, start + 200)]
            for c in calls:
                c.result()
        assert admin_request(srv.server, "/readyz", timeout=5)[0] == 200
        snapshots = lambda: {n for n in os.listdir(srv.data) if n.endswith(".snap")}  # noqa: E731
        before = snapshots()
        seen: list = []  # (path, status or "refused", the final snapshot was on disk)

        def poll():
            while srv.server.alive() and len(seen) < 100_000:
                for path in ("/readyz", "/healthz"):
                    try:
                        status = admin_request(srv.server, path, timeout=5)[0]
                    except OSError:
                        status = "refused"
                    seen.append((path, status, bool(snapshots() - before)))

        srv.server.expected_exit = True
        srv.server.terminate()
        poller = threading.Thread(target=poll)
        poller.start()
        assert srv.server.wait_exit(timeout=30) == 0
        poller.join(timeout=10)
        assert snapshots() - before, "no final snapshot"
        early = [s for s in seen if s[1] == "refused" and not s[2]]
        assert not early, f"the admin port closed before the final snapshot: {seen[:10]}"
        answered = [s[:2] for s in seen if s[1] != "refused"]
        assert {("/readyz", 503), ("/healthz", 200)} <= set(answered), seen[:10]
        # 200 until the signal is handled, then 503 until the end.
        first = answered.index(("/readyz", 503))
        assert ("/readyz", 200) not in answered[first:], seen
    finally:
        srv.close()


@pytest.mark.deadline(60)
def test_sigint_stops_subcenterd_as_sigterm_does():
    """SPEC §6: "On SIGTERM or SIGINT it stops accepting, sends GOAWAY, finishes calls in
    flight (up to 10 s), writes a snapshot and exits 0": SIGINT (Ctrl-C in a terminal) too.
    A ForgetPerson waiting for its erasure when the signal comes still gets its answer, and
    the next start holds what was acknowledged."""
    import os
    import signal

    from crash_support import DurableServer
    from interop_support import admin_metrics
    from sc_support import NOT_FOUND, TOKENS, expect_code, pb, pb_grpc

    srv = DurableServer(tempfile.mkdtemp(prefix="shutdown-")).start()
    try:
        c = srv.client
        c.Identify(workspace="default", person_id="kept", email="kept@example.com")
        c.Identify(workspace="default", person_id="gone")
        records = admin_metrics(srv.server)[0]["subcenter_wal_records_total"]
        forget = pb_grpc.SubscriptionCenterStub(srv.channel).ForgetPerson.future(
            pb.ForgetRequest(workspace="default", person=pb.PersonRef(person_id="gone"),
                             wait_for_erasure=True),
            metadata=[("authorization", "Bearer " + TOKENS["sc-root"])], timeout=30)
        snapshots = lambda: {n for n in os.listdir(srv.data) if n.endswith(".snap")}  # noqa: E731
        # The forget is in the log (its erasure follows ~100 ms later): the call is in flight.
        deadline = time.monotonic() + 5
        while admin_metrics(srv.server)[0]["subcenter_wal_records_total"] < records + 1:
            assert time.monotonic() < deadline, "the ForgetPerson never reached the log"
            time.sleep(0.005)
        srv.server.expected_exit = True
        srv.server.proc.send_signal(signal.SIGINT)
        assert forget.result(timeout=20).person_id == "gone"
        assert srv.server.wait_exit(timeout=15) == 0
        assert "final snapshot" in srv.server.stderr_text(), srv.server.output()
        assert snapshots(), "no snapshot after SIGINT"
        srv.terminate()
        srv.start()
        assert srv.client.GetProfile(workspace="default", person="kept").email == \
            "kept@example.com"
        expect_code(NOT_FOUND, lambda: srv.client.GetProfile(workspace="default",
                                                             person="gone"))
    finally:
        srv.close()
