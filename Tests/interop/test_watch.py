"""WatchChanges (SPEC §3): every durable change of the workspace, in order, resumable by seq
(nothing missed, nothing twice, also across a SIGTERM restart), OUT_OF_RANGE for a cursor
older than the change retention or beyond the newest seq, INVALID_ARGUMENT for after_seq with
from_oldest, scope `read`, anonymous ids redacted without `pii`, and a forgotten person's
earlier events replaced by the `forget` tombstone once erasure completes; a watcher that reads
nothing is cut off with RESOURCE_EXHAUSTED at once, its unsent events dropped."""

import os
import queue
import random
import re
import shutil
import subprocess
import tempfile
import threading
import time
from typing import Optional

import grpc
import h2.errors
import h2.settings
import pytest

import interop_support as support
from crash_support import DurableServer
from interop_support import (RawH2, admin_metrics, admin_request, grpc_frame, make_channel,
                             percent_decode, rss_kib)
from sc_support import (INVALID, PERMISSION_DENIED, TOKENS, Client, expect_code, ident, limit,
                        pb, pb_grpc, ref_anon, server_args, unique)

OUT_OF_RANGE = grpc.StatusCode.OUT_OF_RANGE


def md(token: str = "sc-root") -> list:
    return [("authorization", "Bearer " + TOKENS[token])]


class Watch:
    """A WatchChanges stream read on a thread into a queue."""

    def __init__(self, channel, token="sc-root", **fields):
        stub = pb_grpc.SubscriptionCenterStub(channel)
        self.call = stub.WatchChanges(pb.WatchRequest(**fields), metadata=md(token))
        self.events: "queue.Queue" = queue.Queue()
        self.error = None
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        try:
            for e in self.call:
                self.events.put(e)
        except grpc.RpcError as e:
            self.error = e

    def take(self, n: int, timeout: float = 10.0) -> list:
        out = []
        deadline = time.monotonic() + timeout
        while len(out) < n:
            left = deadline - time.monotonic()
            try:
                out.append(self.events.get(timeout=max(0.01, left)))
            except queue.Empty:
                raise AssertionError(f"got {len(out)} of {n} events within {timeout} s: "
                                     f"{[(e.seq, e.action) for e in out]}; error {self.error}")
        return out

    def started(self) -> "Watch":
        """Waits for the response headers: the stream is open, later changes are its events."""
        self.call.initial_metadata()
        return self

    def quiet(self, seconds: float = 0.5) -> list:
        """What else arrives within `seconds` (should be nothing)."""
        time.sleep(seconds)
        out = []
        while not self.events.empty():
            out.append(self.events.get())
        return out

    def cancel(self):
        self.call.cancel()
        self.thread.join(timeout=5)


def first_error(channel, token="sc-root", timeout=5.0, **fields) -> grpc.RpcError:
    stub = pb_grpc.SubscriptionCenterStub(channel)
    call = stub.WatchChanges(pb.WatchRequest(**fields), metadata=md(token), timeout=timeout)
    return next(iter(call))


def writes(sc, ws: str, tag: str) -> list:
    """Changes of every kind; returns the (action, person_id, channel) of each event."""
    p = f"p-{tag}"
    sc.Identify(workspace=ws, person_id=p, email=f"{p}@example.com")
    sc.Subscribe(workspace=ws, person=p, channel="email", source=f"src-{tag}")
    sc.Unsubscribe(workspace=ws, person=p, channel="sms")
    sc.CheckDelivery(workspace=ws, person=p, channel="email", record_send=True)  # not an event
    sc.UnsubscribeAll(workspace=ws, person=p)
    sc.Resubscribe(workspace=ws, person=p)
    return [("identify", p, ""), ("subscribe", p, "email"), ("unsubscribe", p, "sms"),
            ("unsubscribe_all", p, ""), ("resubscribe", p, "")]


def check(events: list, want: list, after: int) -> int:
    got = [(e.action, e.person_id, e.channel) for e in events]
    assert got == want, got
    seqs = [e.seq for e in events]
    assert seqs == sorted(set(seqs)) and seqs[0] > after, seqs
    return seqs[-1]


@pytest.mark.deadline(120)
def test_watch_in_order_resume_and_restart():
    srv = DurableServer(tempfile.mkdtemp(prefix="watch-")).start()
    try:
        sc = srv.client
        ws = unique("wa")
        sc.ConfigureWorkspace(pb.WorkspaceConfig(workspace=ws, channels=["email", "sms"]))
        w = Watch(srv.channel, workspace=ws, from_oldest=True)
        want = writes(sc, ws, "a")
        e = w.take(len(want))
        assert e[1].source == "src-a" and e[1].state == pb.PREFERENCE_STATE_SUBSCRIBED
        assert e[2].state == pb.PREFERENCE_STATE_UNSUBSCRIBED
        assert all(x.at > 0 for x in e)
        last = check(e, want, 0)
        # Another workspace's changes are not this one's events.
        other = unique("wb")
        sc.ConfigureWorkspace(pb.WorkspaceConfig(workspace=other, channels=["email"]))
        sc.Identify(workspace=other, person_id="someone")
        assert w.quiet() == []
        w.cancel()

        # Away while changes happen: resume after the last seq seen.
        want = writes(sc, ws, "b")
        w = Watch(srv.channel, workspace=ws, after_seq=last)
        last = check(w.take(len(want)), want, last)
        assert w.quiet() == []
        w.cancel()

        # The same across a restart.
        assert srv.terminate() == 0
        srv.start()
        sc = srv.client
        want = writes(sc, ws, "c")
        w = Watch(srv.channel, workspace=ws, after_seq=last)
        last = check(w.take(len(want)), want, last)
        # Live: changes made while watching arrive too.
        want = writes(sc, ws, "d")
        last = check(w.take(len(want)), want, last)
        assert w.quiet() == []
        w.cancel()

        # Everything is still retained.
        w = Watch(srv.channel, workspace=ws, from_oldest=True)
        assert len(w.take(20)) == 20 and w.quiet() == []
        w.cancel()
    finally:
        srv.close()


@pytest.mark.deadline(120)
def test_watch_seqs_are_not_reused_after_a_backup_is_restored():
    """SPEC §3: a seq is never reused. A backup restored over newer data would give its next
    changes the seqs of the changes it lost; every start skips seqs (to its time in
    microseconds) instead, so a consumer's cursor from the lost changes is OUT_OF_RANGE and
    says to start over, and one from before the backup resumes with the new changes."""
    srv = DurableServer(tempfile.mkdtemp(prefix="watch-restore-")).start()
    try:
        sc = srv.client
        ws = unique("wr")
        sc.ConfigureWorkspace(pb.WorkspaceConfig(workspace=ws, channels=["email", "sms"]))
        w = Watch(srv.channel, workspace=ws, from_oldest=True)
        want = writes(sc, ws, "a")
        before_backup = check(w.take(len(want)), want, 0)
        w.cancel()
        assert srv.terminate() == 0
        backup = os.path.join(srv.base, "backup")
        shutil.copytree(srv.data, backup)

        srv.start()
        w = Watch(srv.channel, workspace=ws, after_seq=before_backup)
        want = writes(srv.client, ws, "lost")
        lost = [e.seq for e in w.take(len(want))]
        w.cancel()
        assert srv.terminate() == 0
        assert "skipped, so none given out before is reused" in srv.previous_output

        shutil.rmtree(srv.data)
        shutil.copytree(backup, srv.data)
        srv.start()
        want = writes(srv.client, ws, "after")
        w = Watch(srv.channel, workspace=ws, after_seq=before_backup)
        got = w.take(len(want))
        check(got, want, before_backup)
        assert got[0].seq > max(lost), ([e.seq for e in got], lost)
        w.cancel()
        w = Watch(srv.channel, workspace=ws, from_oldest=True)
        seqs = [e.seq for e in w.take(10)]
        assert not set(seqs) & set(lost) and w.quiet() == []
        w.cancel()
        for cursor in (lost[0], lost[-1]):
            e = expect_code(OUT_OF_RANGE, lambda: first_error(srv.channel, workspace=ws,
                                                              after_seq=cursor),
                            "never a seq of this data")
            assert "start over" in e.details(), e.details()
        # The offline checker decodes the records of skipped seqs (every record it reads).
        assert srv.terminate() == 0
        r = subprocess.run([str(support.binary("subcenterctl")), "check-data", srv.data],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and r.stdout.rstrip().endswith("OK"), r.stdout + r.stderr
    finally:
        srv.close()


@pytest.mark.deadline(60)
def test_watch_follows_live_changes_under_fsync_none():
    """`--fsync none` syncs the log only when a segment is left: live events still arrive as
    the changes are made (they used to wait for the segment to close), and the last seq seen
    is a cursor to resume from."""
    srv = DurableServer(tempfile.mkdtemp(prefix="watch-"), fsync="none").start()
    try:
        sc = srv.client
        ws = unique("wn")
        sc.ConfigureWorkspace(pb.WorkspaceConfig(workspace=ws, channels=["email", "sms"]))
        w = Watch(srv.channel, workspace=ws)
        want = writes(sc, ws, "n")
        last = check(w.take(len(want), timeout=5), want, 0)
        w.cancel()
        w = Watch(srv.channel, workspace=ws, after_seq=last)
        want = writes(sc, ws, "m")
        check(w.take(len(want), timeout=5), want, last)
        assert w.quiet() == [] and w.error is None
        w.cancel()
    finally:
        srv.close()


@pytest.mark.deadline(60)
def test_watch_of_a_quiet_workspace_sends_its_headers_at_once():
    """A workspace may have no event for hours: the response headers come at once, so clients
    and proxies waiting for them do not take the stream for stalled."""
    srv = DurableServer(tempfile.mkdtemp(prefix="watch-")).start()
    try:
        ws = unique("wq")
        srv.client.ConfigureWorkspace(pb.WorkspaceConfig(workspace=ws, channels=["email"]))
        w = Watch(srv.channel, workspace=ws)
        got = threading.Event()
        threading.Thread(target=lambda: (w.call.initial_metadata(), got.set()),
                         daemon=True).start()
        assert got.wait(5), "no response headers on a watch with nothing to send"
        assert w.quiet(0.2) == []
        w.cancel()
    finally:
        srv.close()


@pytest.mark.deadline(120)
def test_watch_forget_tombstone_and_redaction():
    srv = DurableServer(tempfile.mkdtemp(prefix="watch-")).start()
    try:
        sc = srv.client
        ws = unique("wf")
        sc.ConfigureWorkspace(pb.WorkspaceConfig(workspace=ws, channels=["email"]))
        anon = f"anon-{unique('x')}-wxyz"
        sc.Identify(workspace=ws, anonymous_id=anon)
        sc.Subscribe(workspace=ws, person=pb.PersonRef(anonymous_id=anon), channel="email")
        sc.Identify(workspace=ws, person_id="gone", anonymous_id=anon)
        sc.Identify(workspace=ws, person_id="stays")

        w = Watch(srv.channel, "sc-read-pii", workspace=ws, from_oldest=True)
        e = w.take(4)
        assert [(x.action, x.person_id, x.anonymous_id) for x in e] == [
            ("identify", "", anon), ("subscribe", "", anon), ("merge", "gone", anon),
            ("identify", "stays", "")]
        w.cancel()
        w = Watch(srv.channel, "sc-read", workspace=ws, from_oldest=True)
        assert [x.anonymous_id for x in w.take(4)] == ["***wxyz", "***wxyz", "***wxyz", ""]
        w.cancel()

        sc.ForgetPerson(workspace=ws, person="gone", wait_for_erasure=True, timeout=30)
        w = Watch(srv.channel, workspace=ws, from_oldest=True)
        e = w.take(2)
        assert [(x.action, x.person_id, x.anonymous_id) for x in e] == [
            ("identify", "stays", ""), ("forget", "gone", "")]
        assert w.quiet() == []
        w.cancel()
        # A cursor inside the erased records is not OUT_OF_RANGE: they are skipped.
        w = Watch(srv.channel, workspace=ws, after_seq=e[0].seq - 2)
        assert [x.action for x in w.take(2)] == ["identify", "forget"]
        w.cancel()
    finally:
        srv.close()


@pytest.mark.deadline(120)
def test_watch_each_forget_of_one_suppression_has_its_own_seq():
    """One SuppressIdentifiers that forgets three persons: three `forget` events with seqs of
    their own (SPEC §3: strictly increasing, never reused), so a consumer cut off after the
    first resumes with its seq and still learns to erase the other two, also after a
    restart."""
    srv = DurableServer(tempfile.mkdtemp(prefix="watch-")).start()
    try:
        sc = srv.client
        ws = unique("ws3")
        sc.ConfigureWorkspace(pb.WorkspaceConfig(workspace=ws, channels=["email"]))
        for p in ("u1", "u2", "u3"):
            sc.Identify(workspace=ws, person_id=p)
        r = sc.SuppressIdentifiers(workspace=ws, identifiers=[
            pb.Identifier(kind=pb.IDENTIFIER_KIND_PERSON_ID, value=p) for p in ("u1", "u2", "u3")])
        assert sorted(r.forgotten_person_ids) == ["u1", "u2", "u3"]
        sc.Identify(workspace=ws, person_id="after")

        w = Watch(srv.channel, workspace=ws, from_oldest=True)
        e = w.take(7)
        w.cancel()
        forgets = [x for x in e if x.action == "forget"]
        assert sorted(x.person_id for x in forgets) == ["u1", "u2", "u3"]
        seqs = [x.seq for x in e]
        assert seqs == sorted(seqs) and len(set(seqs)) == 7, seqs
        # Cut off after each forget in turn: the rest still comes, once.
        for i, f in enumerate(forgets):
            w = Watch(srv.channel, workspace=ws, after_seq=f.seq)
            got = w.take(3 - i)
            assert [x.seq for x in got] == [s for s in seqs if s > f.seq], (f.seq, got)
            assert w.quiet(0.3) == []
            w.cancel()
        assert srv.terminate() == 0
        srv.start()
        w = Watch(srv.channel, workspace=ws, after_seq=forgets[0].seq)
        got = w.take(3)
        assert [(x.seq, x.person_id) for x in got] == [(x.seq, x.person_id) for x in e[-3:]]
        w.cancel()
    finally:
        srv.close()


@pytest.mark.deadline(120)
def test_watch_errors_and_scope():
    srv = DurableServer(tempfile.mkdtemp(prefix="watch-")).start()
    try:
        sc = srv.client
        ws = unique("we")
        sc.ConfigureWorkspace(pb.WorkspaceConfig(workspace=ws, channels=["email"]))
        sc.Identify(workspace=ws, person_id="p")
        expect_code(INVALID, lambda: first_error(srv.channel, workspace=ws, after_seq=1,
                                                 from_oldest=True), ("after_seq", "from_oldest"))
        e = expect_code(OUT_OF_RANGE, lambda: first_error(srv.channel, workspace=ws,
                                                          after_seq=10_000_000))
        assert "oldest retained seq is 1" in e.details(), e.details()
        expect_code(PERMISSION_DENIED, lambda: first_error(srv.channel, "sc-write",
                                                           workspace=ws, from_oldest=True))
        expect_code(grpc.StatusCode.UNAUTHENTICATED, lambda: next(iter(
            pb_grpc.SubscriptionCenterStub(srv.channel).WatchChanges(
                pb.WatchRequest(workspace=ws), timeout=5))))
        expect_code(grpc.StatusCode.NOT_FOUND, lambda: first_error(srv.channel,
                                                                   workspace=unique("no")))
    finally:
        srv.close()


@pytest.mark.deadline(120)
def test_watch_cursor_older_than_retention_is_out_of_range():
    srv = DurableServer(tempfile.mkdtemp(prefix="watch-"),
                        extra=("--change-retention", "2")).start()
    try:
        sc = srv.client
        ws = unique("wr")
        sc.ConfigureWorkspace(pb.WorkspaceConfig(workspace=ws, channels=["email"]))
        sc.Identify(workspace=ws, person_id="early")
        time.sleep(2.5)
        # A snapshot covering the old records (the shutdown one), then a new record.
        assert srv.terminate() == 0
        srv.start()
        sc = srv.client
        sc.Identify(workspace=ws, person_id="late")
        oldest = None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                first_error(srv.channel, workspace=ws, after_seq=1, timeout=0.5)
            except grpc.RpcError as e:
                if e.code() == OUT_OF_RANGE:
                    oldest = int(re.search(r"oldest retained seq is (\d+)", e.details()).group(1))
                    break
                assert e.code() == grpc.StatusCode.DEADLINE_EXCEEDED, e
            time.sleep(0.2)
        assert oldest is not None and oldest > 2, "the expired records were never dropped"
        w = Watch(srv.channel, workspace=ws, from_oldest=True)
        e = w.take(1)
        assert e[0].person_id == "late" and e[0].seq >= oldest
        w.cancel()
        # Resuming right before the oldest retained seq is fine.
        w = Watch(srv.channel, workspace=ws, after_seq=oldest - 1)
        assert w.take(1)[0].person_id == "late"
        w.cancel()
    finally:
        srv.close()


@pytest.mark.deadline(120)
def test_watch_of_a_quiet_workspace_resumes_after_other_workspaces_records_expired():
    """OUT_OF_RANGE means an event after the cursor expired: a consumer of a workspace with
    no change since its cursor missed nothing, however much of other workspaces' log
    expired meanwhile, also after a SIGTERM (the snapshot keeps the workspace's newest
    event seq) and a kill -9 restart; a cursor before that workspace's expired event is
    still OUT_OF_RANGE."""
    srv = DurableServer(tempfile.mkdtemp(prefix="watch-quiet-"),
                        extra=("--change-retention", "2", "--erasure-deadline", "2")).start()
    try:
        sc = srv.client
        quiet, busy = unique("wq"), unique("wb")
        for ws in (quiet, busy):
            sc.ConfigureWorkspace(pb.WorkspaceConfig(workspace=ws, channels=["email"]))
        sc.Identify(workspace=quiet, person_id="q")
        w = Watch(srv.channel, workspace=quiet, from_oldest=True)
        (event,) = w.take(1)
        w.cancel()
        for restart in ("none", "sigterm", "kill9"):
            # The busy workspace writes until the quiet one's newest event has left the log.
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                srv.client.Identify(workspace=busy, person_id=unique("b"))
                try:
                    first_error(srv.channel, workspace=busy, after_seq=event.seq - 1,
                                timeout=0.3)
                except grpc.RpcError as e:
                    if e.code() == OUT_OF_RANGE:
                        break
                time.sleep(0.1)
            else:
                raise AssertionError("the records never expired")
            if restart == "sigterm":
                assert srv.terminate() == 0
                srv.start()
            elif restart == "kill9":
                srv.kill9()
                srv.start()
            expect_code(OUT_OF_RANGE, lambda: first_error(
                srv.channel, workspace=quiet, after_seq=event.seq - 1, timeout=3))
            w = Watch(srv.channel, workspace=quiet, after_seq=event.seq)
            srv.client.Subscribe(workspace=quiet, person="q", channel="email", source=restart)
            (e,) = w.take(1)
            assert w.error is None and (e.action, e.source) == ("subscribe", restart), (e, restart)
            w.cancel()
            event = e
    finally:
        srv.close()


@pytest.mark.deadline(180)
def test_watch_resumes_across_kill9_missing_nothing_and_nothing_twice():
    """A consumer that reconnects with the last seq it saw, across kill -9 restarts while
    writes are in flight, gets every acknowledged change exactly once, in seq order; a
    change the crash cut off unacknowledged may appear or not, but never twice."""
    rng = random.Random()
    srv = DurableServer(tempfile.mkdtemp(prefix="watch-kill-")).start()
    try:
        ws = unique("wk")
        srv.client.ConfigureWorkspace(pb.WorkspaceConfig(workspace=ws, channels=["email"]))
        srv.client.Identify(workspace=ws, person_id="p")
        acked, seen, last = [], [], 0
        for cycle in range(4):
            stop = threading.Event()
            w = Watch(srv.channel, workspace=ws, after_seq=last)

            def writer(sc=srv.client, cycle=cycle):
                for i in range(100_000):
                    if stop.is_set():
                        return
                    source = f"c{cycle}-{i}"
                    try:
                        sc.Subscribe(workspace=ws, person="p", channel="email", source=source)
                    except (grpc.RpcError, ValueError):
                        return  # the server (or, once killed, the channel) is gone: unanswered
                    acked.append(source)

            t = threading.Thread(target=writer)
            t.start()
            time.sleep(rng.uniform(0.2, 0.8))
            srv.kill9()
            stop.set()
            t.join(timeout=30)
            w.thread.join(timeout=10)
            while not w.events.empty():
                e = w.events.get()
                assert e.seq > last, f"seq {e.seq} after {last}: out of order or twice"
                seen.append(e.source)
                last = e.seq
            srv.start()
        # Whatever the last cycle's consumer missed, a last resume brings.
        w = Watch(srv.channel, workspace=ws, after_seq=last)
        time.sleep(1.0)
        for e in w.quiet(0.5):
            assert e.seq > last, f"seq {e.seq} after {last}: out of order or twice"
            seen.append(e.source)
            last = e.seq
        w.cancel()
        assert len(seen) == len(set(seen)), "an event came twice"
        missing = [s for s in acked if s not in set(seen)]
        assert not missing, f"{len(missing)} acknowledged changes never seen: {missing[:5]}"
        assert len(acked) > 20
    finally:
        srv.close()


def events_of(events: list) -> list:
    return [(e.action, e.person_id, e.anonymous_id) for e in events]


def test_watch_after_seq_0_is_from_now_on_and_past_the_newest_seq_is_out_of_range(sc):
    """SPEC §3: events "after after_seq (0 = from now on)": earlier changes are not replayed;
    an after_seq equal to the newest seq is a cursor like any other, one past it ("beyond the
    newest seq") is OUT_OF_RANGE, the message naming the oldest retained seq."""
    ws = sc.workspace()
    c = sc.root
    sc.person(ws, "old")
    c.Subscribe(workspace=ws, person="old", channel="email")
    w = Watch(sc.channel, workspace=ws, after_seq=0).started()
    sc.person(ws, "new")
    (e,) = w.take(1)
    assert events_of([e]) == [("identify", "new", "")] and w.quiet(0.3) == []
    w.cancel()
    newest = e.seq  # nothing was written after it
    err = expect_code(OUT_OF_RANGE, lambda: first_error(sc.channel, workspace=ws,
                                                        after_seq=newest + 1))
    assert re.search(r"oldest retained seq is \d+", err.details()), err.details()
    w = Watch(sc.channel, workspace=ws, after_seq=newest)
    c.Subscribe(workspace=ws, person="new", channel="sms")
    (e,) = w.take(1)
    assert (e.action, e.person_id, e.seq > newest, w.error) == ("subscribe", "new", True, None)
    w.cancel()


def test_watch_overrides_counted_sends_and_unchanged_identities_are_not_events(sc):
    """SPEC §3: "Events: the history actions above except override, plus forget; counted sends
    are not events" — nor is an Identify that changes nothing (it is no "durable preference or
    identity change", and no history entry either)."""
    ws = sc.workspace(allow_override=True, limits=[limit("email", 5, 3600)])
    c = sc.root
    sc.person(ws, "nop", email="nop@example.com", anonymous_id="nop-cookie")
    c.Subscribe(workspace=ws, person="nop", channel="email")
    w = Watch(sc.channel, workspace=ws, after_seq=0).started()
    c.OverrideForImportantMessage(workspace=ws, person="nop", channel="email", message_id="m",
                                  justification="j")
    c.CheckDelivery(workspace=ws, person="nop", channel="email", record_send=True)
    c.Identify(workspace=ws, person_id="nop", email="NOP@example.com")
    c.Identify(workspace=ws, anonymous_id="nop-cookie")
    sc.person(ws, "marker")
    got = w.take(1) + w.quiet(0.3)
    w.cancel()
    assert events_of(got) == [("identify", "marker", "")], events_of(got)
    actions = [e.action for e in c.GetHistory(workspace=ws, person="nop").entries]
    assert actions == ["override", "subscribe", "identify"], actions


def test_watch_anonymous_id_is_set_on_anonymous_profile_events_and_merges_only(sc):
    """SPEC §3: "anonymous_id is set for an anonymous profile's events and on merge, and only
    there" — not when an identified person gets a new anonymous id, nor for a change made
    through an attached anonymous id."""
    ws = sc.workspace()
    c = sc.root
    w = Watch(sc.channel, "sc-read-pii", workspace=ws, after_seq=0).started()
    c.Identify(workspace=ws, person_id="ip")
    c.Identify(workspace=ws, person_id="ip", anonymous_id="fresh-cookie-1")  # not a merge
    c.Subscribe(workspace=ws, person=ref_anon("fresh-cookie-1"), channel="email")
    c.Identify(workspace=ws, anonymous_id="prof-2")
    c.Identify(workspace=ws, person_id="np", anonymous_id="prof-2")  # a merge
    c.Unsubscribe(workspace=ws, person=ref_anon("prof-2"), channel="sms")
    got = w.take(6) + w.quiet(0.3)
    w.cancel()
    assert events_of(got) == [
        ("identify", "ip", ""), ("identify", "ip", ""), ("subscribe", "ip", ""),
        ("identify", "", "prof-2"), ("merge", "np", "prof-2"), ("unsubscribe", "np", "")], \
        events_of(got)


def test_watch_seq_is_global_to_the_server(sc):
    """SPEC §3: "seq (uint64) is global to the server, strictly increasing, never reused":
    changes alternating between two workspaces have interleaved, distinct seqs."""
    a, b = sc.workspace(), sc.workspace()
    wa = Watch(sc.channel, workspace=a, after_seq=0).started()
    wb = Watch(sc.channel, workspace=b, after_seq=0).started()
    for i in range(5):
        sc.person(a, f"a{i}")
        sc.person(b, f"b{i}")
    events = wa.take(5) + wb.take(5)
    wa.cancel()
    wb.cancel()
    by_seq = sorted((e.seq, e.person_id) for e in events)
    assert len({seq for seq, _ in by_seq}) == 10, by_seq
    assert [p for _, p in by_seq] == [p for i in range(5) for p in (f"a{i}", f"b{i}")], by_seq


@pytest.mark.deadline(90)
def test_watch_every_removal_leaves_a_tombstone_with_only_the_id(sc):
    """SPEC §3: "Every removal of a person — ForgetPerson, a suppression that forgets ... —
    emits a forget event", "a tombstone carrying only the person id (or the anonymous id)",
    redacted without `pii`; and "a forgotten person's earlier events leave the feed when
    erasure completes" — without wait_for_erasure, within the erasure deadline (60 s)."""
    ws = sc.workspace()
    c = sc.root
    c.Identify(workspace=ws, anonymous_id="gone-visitor-9876")
    c.Subscribe(workspace=ws, person=ref_anon("gone-visitor-9876"), channel="email",
                source="banner")
    sc.person(ws, "tp", email="tp@example.com", anonymous_id="tp-cookie")
    c.Identify(workspace=ws, anonymous_id="sup-visitor")
    sc.person(ws, "keep")
    w = Watch(sc.channel, "sc-read-pii", workspace=ws, after_seq=0).started()
    c.ForgetPerson(workspace=ws, person=ref_anon("gone-visitor-9876"))
    c.ForgetPerson(workspace=ws, person="tp", also_suppress=True)
    c.SuppressIdentifiers(workspace=ws, identifiers=[ident("anonymous_id", "sup-visitor")])
    tombstones = w.take(3)
    w.cancel()
    assert events_of(tombstones) == [("forget", "", "gone-visitor-9876"), ("forget", "tp", ""),
                                     ("forget", "", "sup-visitor")], events_of(tombstones)
    for t in tombstones:
        assert (t.channel, t.topic, t.source, t.state) == ("", "", "", 0), t
    deadline = time.monotonic() + 65
    while True:
        w = Watch(sc.channel, "sc-read", workspace=ws, from_oldest=True)
        (first,) = w.take(1)
        if events_of([first]) == [("identify", "keep", "")]:
            break
        w.cancel()
        assert time.monotonic() < deadline, "the forgotten persons' events are still in the feed"
        time.sleep(0.2)
    rest = w.take(3) + w.quiet(0.3)
    w.cancel()
    assert [(e.seq, e.person_id) for e in rest] == [(t.seq, t.person_id) for t in tombstones]
    assert [e.anonymous_id for e in rest] == ["***9876", "", "***itor"], rest


def test_watch_needs_scope_read_in_its_workspace(sc):
    """SPEC §5: WatchChanges needs scope `read` (or `admin`); every other scope, and a token of
    another workspace, is PERMISSION_DENIED."""
    ws = sc.workspace()
    sc.workspace(ws="ws-a")
    for token in ("sc-check", "sc-privacy", "sc-override", "sc-pii", "sc-wsa-read"):
        try:
            expect_code(PERMISSION_DENIED, lambda: first_error(sc.channel, token, workspace=ws,
                                                               from_oldest=True))
        except AssertionError as e:
            raise AssertionError(f"{token}: {e}") from None
    for token, w in (("sc-read", ws), ("sc-admin-nopii", ws), ("sc-wsa-read", "ws-a")):
        Watch(sc.channel, token, workspace=w).started().cancel()


@pytest.mark.deadline(60)
def test_watch_out_of_range_names_the_newest_seq_when_nothing_is_retained():
    """SPEC §3: OUT_OF_RANGE names "the oldest retained seq (server-wide; the newest seq when
    nothing is retained)"; a cursor at the newest seq is still good then."""
    srv = DurableServer(tempfile.mkdtemp(prefix="watch-empty-"),
                        extra=("--change-retention", "1", "--erasure-deadline", "2")).start()
    try:
        sc = srv.client
        ws = unique("wz")
        sc.ConfigureWorkspace(pb.WorkspaceConfig(workspace=ws, channels=["email", "sms"]))
        w = Watch(srv.channel, workspace=ws, after_seq=0).started()
        sc.Identify(workspace=ws, person_id="r1")
        sc.Subscribe(workspace=ws, person="r1", channel="email")
        newest = w.take(2)[-1].seq
        w.cancel()
        deadline = time.monotonic() + 30
        while True:
            admin_request(srv.server, "/snapshot", method="POST")
            try:
                first_error(srv.channel, workspace=ws, after_seq=newest - 1, timeout=0.3)
            except grpc.RpcError as e:
                if e.code() == OUT_OF_RANGE:
                    break
            assert time.monotonic() < deadline, "the events never expired"
            time.sleep(0.2)
        e = expect_code(OUT_OF_RANGE, lambda: first_error(srv.channel, workspace=ws,
                                                          after_seq=1))
        assert f"oldest retained seq is {newest}" in e.details(), (newest, e.details())
        w = Watch(srv.channel, workspace=ws, after_seq=newest)
        sc.Subscribe(workspace=ws, person="r1", channel="sms")
        (e,) = w.take(1)
        assert (e.action, e.seq > newest, w.error) == ("subscribe", True, None)
        w.cancel()
    finally:
        srv.close()


# --------------------------------------------------------------------------------------------
# A watcher that reads nothing (SPEC §3 RESOURCE_EXHAUSTED for a consumer too slow): the server
# runs with its stall limit cut from 30 s to STALL_MS by --watch-stall-limit.

STALL_MS = 1000
EVENTS = 7200  # ~400 KB
WATCH = "/subcenter.v1.SubscriptionCenter/WatchChanges"


def stall_server(start_server):
    """subcenterd with the short stall limit, a workspace whose EVENTS events are more than a
    stream buffers before it counts as stuck (256 KiB), and a root client. The events are many
    and small (ids short enough to need no memory of their own once decoded)."""
    server = start_server("subcenterd", server_args() + [
        "--fsync", "interval:20", "--watch-stall-limit", str(STALL_MS // 1000)])
    channel = make_channel(server.port, unlimited=True)
    sc = Client(channel, TOKENS["sc-root"])
    ws = unique("ws-stall")
    channels = ["email", "sms", "push", "in_app"]
    sc.ConfigureWorkspace(pb.WorkspaceConfig(workspace=ws, channels=channels))
    stub = pb_grpc.SubscriptionCenterStub(channel)

    def all_of(method, requests):
        calls = [method.future(r, metadata=sc.metadata, timeout=30) for r in requests]
        for c in calls:
            c.result()

    for batch in range(EVENTS // 900):
        persons = [pb.PersonRef(person_id=f"p{i}") for i in range(batch * 100, batch * 100 + 100)]
        all_of(stub.Identify, [pb.IdentifyRequest(workspace=ws, person_id=p.person_id)
                               for p in persons])
        for ch in channels:  # 9 events a person, ~70 bytes each
            all_of(stub.Subscribe, [pb.PreferenceRequest(workspace=ws, person=p, channel=ch,
                                                         source="s") for p in persons])
            all_of(stub.Unsubscribe, [pb.PreferenceRequest(workspace=ws, person=p, channel=ch,
                                                           source="s") for p in persons])
    return server, channel, ws


def unread_watches(port: int, ws: str, count: int, window: int) -> tuple:
    """`count` WatchChanges streams from the oldest event on one connection whose client grants
    each stream `window` bytes and never reads more."""
    conn = RawH2(port, ack_data=False)
    conn.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window})
    conn._flush()
    assert conn.wait_settings(5)
    body = grpc_frame(pb.WatchRequest(workspace=ws, from_oldest=True).SerializeToString())
    auth = [("authorization", "Bearer " + TOKENS["sc-root"])]
    return conn, [conn.request(WATCH, body, extra=auth) for _ in range(count)]


def wait_all_ended(conn: RawH2, sids: list, timeout: float) -> float:
    """Reads the connection until every stream ended or was reset; returns how long it took,
    or fails naming the streams still open."""
    start = time.monotonic()
    deadline = start + timeout
    while time.monotonic() < deadline and not conn.closed:
        if all(conn.streams[s].ended or conn.streams[s].reset is not None for s in sids):
            return time.monotonic() - start
        conn.pump(0.2)
    open_ = [conn.streams[s].summary() for s in sids
             if not (conn.streams[s].ended or conn.streams[s].reset is not None)]
    raise AssertionError(f"{len(open_)} of {len(sids)} streams still open after {timeout} s "
                         f"(connection closed: {conn.closed}); first: {open_[:1]}")


def whole_messages(data: bytes) -> Optional[list]:
    """The gRPC messages `data` holds, or None if it ends inside one."""
    out, i = [], 0
    while i < len(data):
        n = int.from_bytes(data[i + 1:i + 5], "big")
        if i + 5 + n > len(data):
            return None
        out.append(data[i + 5:i + 5 + n])
        i += 5 + n
    return out


@pytest.mark.deadline(120)
def test_watch_that_reads_nothing_is_cut_off_at_once_and_its_events_freed(start_server):
    """Window 0 and nothing read: each stream gets grpc-status 8 once stuck for the stall limit,
    without the client opening its window (the status used to wait behind the events the
    client did not take), saying how to resume; the events it had buffered are dropped. Its
    client staying connected, the server keeps nothing of the stream: 80 such streams (8
    rounds of 10, each on a connection that stays open) used to keep ~1 MiB each; the memory
    of one round's watchers is reused by the next, so after the first rounds (malloc's arenas
    growing to that working set) RSS stays."""
    server, channel, ws = stall_server(start_server)
    conns = []
    try:
        rss = []
        for _ in range(8):
            conn, sids = unread_watches(server.port, ws, 10, window=0)
            conns.append(conn)
            took = wait_all_ended(conn, sids, timeout=STALL_MS / 1000 + 20)
            for sid in sids:
                st = conn.streams[sid]
                assert st.reset is None and st.ended, st.summary()
                assert st.grpc_status == 8 and st.data == b"", st.summary()
                message = percent_decode(st.trailer_or_header(b"grpc-message") or b"").decode()
                assert "reads too slowly" in message and "last event received" in message, message
            rss.append(rss_kib(server.proc.pid))
        held_mib = (rss[-1] - rss[1]) / 1024
        assert held_mib < 25, (f"{held_mib:.1f} MiB more held after 60 more streams were cut off "
                               f"(RSS MiB after each round: {[r // 1024 for r in rss]}; the last "
                               f"round's cut-off took {took:.1f} s)")
        # A watch that reads gets every event.
        w = Watch(channel, workspace=ws, from_oldest=True)
        assert len(w.take(EVENTS, timeout=20)) == EVENTS and w.quiet(0.2) == []
        w.cancel()
    finally:
        for conn in conns:
            conn.close()
        channel.close()


def resource_exhausted_count(server) -> float:
    return admin_metrics(server)[0]['subcenter_grpc_calls_total{code="RESOURCE_EXHAUSTED"}']


@pytest.mark.deadline(90)
def test_watch_cut_off_mid_message_completes_it_or_is_reset(start_server):
    """A client that took part of an event (a 100-byte window) and reads nothing more: the
    status may not cut that message short, so it waits for the client to take the rest, 5 s
    at most; then the stream is reset with ENHANCE_YOUR_CALM (gRPC clients report
    RESOURCE_EXHAUSTED) and nothing of it is kept. A client that reads after the cut-off gets
    the rest of that message, then the status."""
    server, channel, ws = stall_server(start_server)
    conn = None
    try:
        conn, sids = unread_watches(server.port, ws, 5, window=100)
        took = wait_all_ended(conn, sids, timeout=STALL_MS / 1000 + 5 + 20)
        for sid in sids:
            st = conn.streams[sid]
            assert st.reset == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM, st.summary()
            assert len(st.data) == 100 and st.trailers == [], st.summary()
            assert whole_messages(st.data) is None, "the window ended between two events"
        assert took >= 5, f"reset after {took:.1f} s, before the 5 s grace"
        conn.close()

        counted = resource_exhausted_count(server)
        conn, (sid,) = unread_watches(server.port, ws, 1, window=100)
        st = conn.streams[sid]
        deadline = time.monotonic() + STALL_MS / 1000 + 20
        while resource_exhausted_count(server) == counted:  # cut off (the status waits)
            assert time.monotonic() < deadline, "never cut off"
            conn.pump(0.1)
        conn.pump(0.2)
        assert len(st.data) == 100 and not st.ended and st.reset is None, st.summary()
        conn.ack_data = True
        conn.conn.increment_flow_control_window(65535, stream_id=sid)
        conn._flush()
        conn.wait(sid, timeout=10)
        assert st.ended and st.grpc_status == 8, st.summary()
        messages = whole_messages(st.data)
        assert messages is not None, f"{len(st.data)} bytes end inside a message"
        events = [pb.ChangeEvent.FromString(m) for m in messages]
        assert len(st.data) > 100 and [e.seq for e in events] == sorted(e.seq for e in events)
    finally:
        if conn is not None:
            conn.close()
        channel.close()


# --------------------------------------------------------------------------------------------
# --max-watchers (not in SPEC): WatchChanges streams open at once, server-wide.

def watch_metrics(server) -> tuple:
    m = admin_metrics(server)[0]
    return int(m["subcenter_watch_streams"]), int(m["subcenter_watch_streams_refused_total"])


@pytest.mark.deadline(60)
def test_a_watch_beyond_max_watchers_is_refused_until_one_ends(start_server):
    """With --max-watchers 2 and two streams open, a third is RESOURCE_EXHAUSTED naming the
    flag, on another connection too, and the two go on; once one ends, a new one is served.
    /metrics counts the streams open and the refusals."""
    server = start_server("subcenterd", server_args() + ["--max-watchers", "2"])
    channel = make_channel(server.port)
    sc = Client(channel, TOKENS["sc-root"])
    ws = unique("ws-maxw")
    sc.ConfigureWorkspace(pb.WorkspaceConfig(workspace=ws, channels=["email"]))
    a = Watch(channel, workspace=ws).started()
    b = Watch(channel, workspace=ws).started()
    assert watch_metrics(server) == (2, 0)
    for ch in (channel, make_channel(server.port)):
        e = expect_code(grpc.StatusCode.RESOURCE_EXHAUSTED,
                        lambda: first_error(ch, workspace=ws))  # noqa: B023
        assert "--max-watchers" in e.details() and "2 WatchChanges streams" in e.details(), e
    assert watch_metrics(server) == (2, 2)
    sc.Identify(workspace=ws, person_id="p1")
    assert [x.person_id for x in a.take(1)] == ["p1"]
    assert [x.person_id for x in b.take(1)] == ["p1"]

    a.cancel()
    deadline = time.monotonic() + 10
    while watch_metrics(server)[0] != 1:  # the feed thread ends the stream soon after
        assert time.monotonic() < deadline, watch_metrics(server)
        time.sleep(0.05)
    c = Watch(channel, workspace=ws).started()
    sc.Identify(workspace=ws, person_id="p2")
    assert [x.person_id for x in c.take(1)] == ["p2"]
    assert [x.person_id for x in b.take(1)] == ["p2"]
    assert c.error is None and watch_metrics(server) == (2, 2)


def test_watch_with_a_deadline_is_ended_by_the_server_deadline_exceeded(sc):
    """SPEC §3 lists DEADLINE_EXCEEDED: a quiet WatchChanges stream whose `grpc-timeout`
    passes is ended by the server itself (grpc-status 4 in its trailers, after its headers),
    not left open for the client to cancel; other calls on the connection go on."""
    ws = sc.workspace()
    with RawH2(sc.port) as raw:
        started = time.monotonic()
        sid = raw.request("/subcenter.v1.SubscriptionCenter/WatchChanges",
                          grpc_frame(pb.WatchRequest(workspace=ws).SerializeToString()),
                          extra=md() + [("grpc-timeout", "300m")])
        st = raw.wait(sid, timeout=5)
        assert st.grpc_status == 4 and st.headers and not st.data, st.summary()
        assert 0.25 < time.monotonic() - started < 3, time.monotonic() - started
        ok = raw.wait(raw.request("/subcenter.v1.SubscriptionCenter/GetWorkspace",
                                  grpc_frame(pb.GetWorkspaceRequest(
                                      workspace=ws).SerializeToString()), extra=md()),
                      timeout=5)
        assert ok.grpc_status == 0, ok.summary()
