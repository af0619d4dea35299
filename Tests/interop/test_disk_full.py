"""Disk full (SPEC §3 `UNAVAILABLE`, §4), black box on a real full file system: with the data
directory on a small tmpfs that a filler file and the server's own writes fill up, a write is
refused with UNAVAILABLE (not INTERNAL, not a hang) and nothing of it is applied — not in reads,
not in history, not in the change feed, not after a restart — while reads keep working and
/readyz stays 200 (writes resume by themselves); once the filler is deleted, writes resume
without a restart, and every acknowledged change survives a SIGTERM restart and a kill -9.

Needs root (it mounts a tmpfs); skipped otherwise, or when the mount fails. Log segments are
preallocated 4 MiB at a time, so a filler file alone does not fill the disk for the log: the
test also writes large workspace configurations until the log itself hits ENOSPC, then small
journaled writes until they are refused again and again.

Select with `-k disk_full`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from typing import Optional

import grpc
import pytest

from crash_support import DurableServer, write_tokens_file
from interop_support import admin_metrics, admin_request, free_port, run_to_exit, tls_args
from sc_support import NOT_FOUND, Client, entries_map, expect_code, pb, pb_grpc, unique

UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
TMPFS_SIZE = "8m"
WRITE_TIMEOUT = 5.0      # a refused write must be answered well within this (no hang)
CHANNELS = ["email", "sms", "push"]


# --------------------------------------------------------------------------------------------
# The small file system


def _run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=30)


@pytest.fixture
def small_disk():
    """A fresh TMPFS_SIZE tmpfs mounted on a temporary directory; unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("disk-full tests mount a tmpfs and need root")
    if shutil.which("mount") is None or shutil.which("umount") is None:
        pytest.skip("disk-full tests need mount(8) and umount(8)")
    base = tempfile.mkdtemp(prefix="disk-full-")
    mnt = os.path.join(base, "disk")
    os.mkdir(mnt)
    r = _run("mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE},mode=0700", "tmpfs", mnt)
    if r.returncode != 0:
        shutil.rmtree(base, ignore_errors=True)
        pytest.skip(f"cannot mount a tmpfs on {mnt}: {r.stderr.strip() or r.returncode}")
    try:
        yield base, mnt
    finally:
        if _run("umount", mnt).returncode != 0:
            _run("umount", "-l", mnt)
        shutil.rmtree(base, ignore_errors=True)


def fill(directory: str, name: str = "filler") -> str:
    """Appends to `directory/name` until the file system refuses more (ENOSPC)."""
    path = os.path.join(directory, name)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for size in (1 << 20, 1 << 16, 4096, 512, 1):
            chunk = b"\xaa" * size
            for _ in range(100_000):
                try:
                    os.write(fd, chunk)
                except OSError:
                    break
    finally:
        os.close(fd)
    return path


# --------------------------------------------------------------------------------------------
# The server


class DiskServer(DurableServer):
    """DurableServer with its data directory on the small disk (tokens stay outside it)."""

    def __init__(self, base: str, data: str, extra: tuple = ()):
        super().__init__(base, extra=extra)
        self.data = data

    def admin(self, path: str) -> tuple[int, str]:
        status, _, body = admin_request(self.server, path)
        return status, body

    def metrics(self) -> dict[str, float]:
        return admin_metrics(self.server)[0]

    def feed(self, ws: str, until_source: str, timeout: float = 5.0) -> list:
        """The workspace's retained events, up to the one carrying `until_source`."""
        stub = pb_grpc.SubscriptionCenterStub(self.channel)
        call = stub.WatchChanges(pb.WatchRequest(workspace=ws, from_oldest=True),
                                 metadata=self.client.metadata, timeout=timeout)
        events = []
        try:
            for e in call:
                events.append(e)
                if e.source == until_source:
                    break
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                raise
        finally:
            call.cancel()
        assert any(e.source == until_source for e in events), \
            f"the feed of {ws} never showed the acknowledged change {until_source!r}"
        return events


# --------------------------------------------------------------------------------------------
# The journal of acknowledged (and refused) changes


class Journal:
    """Per (person, channel) the last acknowledged (STATE, source); every refused source."""

    def __init__(self, ws: str, persons: list[str]):
        self.ws = ws
        self.persons = persons
        self.prefs: dict[tuple[str, str], tuple[str, str]] = {}
        self.refused: set[str] = set()
        self.last_source = ""
        self.count = 0

    def write(self, c: Client, person: str, channel: str, source: str,
              unsubscribe: bool = False) -> Optional[grpc.RpcError]:
        """One Subscribe/Unsubscribe; None when acknowledged, else the error (UNAVAILABLE
        expected; anything else fails the test)."""
        method = c.Unsubscribe if unsubscribe else c.Subscribe
        try:
            method(workspace=self.ws, person=person, channel=channel, source=source,
                   timeout=WRITE_TIMEOUT)
        except grpc.RpcError as e:
            assert e.code() == UNAVAILABLE, \
                f"a write on a full disk got {e.code().name} {e.details()!r}, wanted UNAVAILABLE"
            self.refused.add(source)
            return e
        self.prefs[(person, channel)] = ("UNSUBSCRIBED" if unsubscribe else "SUBSCRIBED", source)
        self.last_source = source
        self.count += 1
        return None

    def problems(self, c: Client) -> list[str]:
        out = []
        for person in self.persons:
            got = entries_map(c.GetPreferences(workspace=self.ws, person=person))
            for (p, ch), want in self.prefs.items():
                if p == person and got.get((ch, ""), (None, None))[:2] != want:
                    out.append(f"{person}/{ch}: server has {got.get((ch, ''))}, "
                               f"last acknowledged {want}")
            history = c.GetHistory(workspace=self.ws, person=person, page_size=1000)
            out += [f"refused write {e.source!r} is in the history of {person}"
                    for e in history.entries if e.source in self.refused]
        return out


def make_log_full(srv: DiskServer, mnt: str, journal: Journal, seconds: float = 25.0) -> int:
    """Fills the disk, the log's preallocated space included; returns how many small writes
    were refused in a row at the end (each one journaled)."""
    c = srv.client
    began = time.monotonic()
    # Large records (a workspace of many long topic descriptions) use up the preallocation.
    for size in (1_500_000, 400_000, 100_000, 20_000):
        for k in range(20):
            fill(mnt)
            topics = [pb.Topic(id=f"t{i}", name=f"T{i}", description=chr(97 + k) * 4000,
                               default_state=pb.TOPIC_DEFAULT_SUBSCRIBED)
                      for i in range(max(1, size // 4000))]
            try:
                c.ConfigureWorkspace(workspace="ballast", channels=["email"], topics=topics,
                                     timeout=WRITE_TIMEOUT)
            except grpc.RpcError as e:
                assert e.code() == UNAVAILABLE, (e.code(), e.details())
                break
            assert time.monotonic() - began < seconds, "the disk did not fill up"
    # Then small writes use up what is left in the last page, until refused again and again.
    fill(mnt)
    in_a_row = 0
    for k in range(2000):
        person = journal.persons[k % len(journal.persons)]
        # Short sources: the writes refused afterwards are all larger than these records.
        if journal.write(c, person, "sms", f"f{k}", unsubscribe=k % 2 == 1) is None:
            in_a_row = 0
        else:
            in_a_row += 1
            if in_a_row >= 5:
                break
        if time.monotonic() - began > seconds:
            break
        time.sleep(0.01)
    print(f"make_log_full: {journal.count} writes acknowledged, {len(journal.refused)} refused, "
          f"{in_a_row} refused in a row at the end")
    return in_a_row


# --------------------------------------------------------------------------------------------
# Tests


@pytest.mark.deadline(90)
def test_disk_full_refuses_writes_keeps_reads_and_resumes(small_disk):
    base, mnt = small_disk
    srv = DiskServer(base, os.path.join(mnt, "data"))
    try:
        srv.start()
        c = srv.client
        ws = unique("full")
        c.ConfigureWorkspace(workspace=ws, channels=CHANNELS)
        persons = [f"p{i}" for i in range(6)]
        for p in persons:
            c.Identify(workspace=ws, person_id=p, email=f"{p}@example.com")
        journal = Journal(ws, persons)
        for p in persons:
            assert journal.write(c, p, "email", f"before-{p}") is None

        assert make_log_full(srv, mnt, journal) >= 5, "small writes were never refused"
        before = srv.metrics()

        # Refused: UNAVAILABLE, answered promptly, whatever the write.
        began = time.monotonic()
        err = journal.write(c, "p1", "push", "refused-subscribe")
        assert err is not None, "a Subscribe on a full disk was acknowledged"
        assert time.monotonic() - began < WRITE_TIMEOUT
        expect_code(UNAVAILABLE, lambda: c.Identify(workspace=ws, person_id="refused-person",
                                                    email="refused-person@example.com",
                                                    timeout=WRITE_TIMEOUT))
        refused_global = "refused-global-" + "g" * 40
        expect_code(UNAVAILABLE, lambda: c.UnsubscribeAll(workspace=ws, person="p2",
                                                          source=refused_global,
                                                          timeout=WRITE_TIMEOUT))
        journal.refused.add(refused_global)

        # Reads keep working and show nothing of the refused writes.
        assert c.GetProfile(workspace=ws, person="p1").email == "p1@example.com"
        prefs = c.GetPreferences(workspace=ws, person="p1")
        assert ("push", "") not in entries_map(prefs), "the refused Subscribe is visible"
        assert not c.GetPreferences(workspace=ws, person="p2").global_unsubscribed
        d = c.CheckDelivery(workspace=ws, person="p1", channel="email")
        assert d.allowed and d.person_id == "p1"
        expect_code(NOT_FOUND, lambda: c.GetProfile(workspace=ws, person="refused-person"))
        assert journal.problems(c) == []
        events = srv.feed(ws, journal.last_source)
        assert [e.source for e in events if e.source in journal.refused] == []
        assert [e.person_id for e in events if e.person_id == "refused-person"] == []

        # Monitoring: still ready (writes resume by themselves), the failures are counted.
        assert srv.admin("/healthz")[0] == 200
        status, body = srv.admin("/readyz")
        assert status == 200, f"/readyz on a full disk: {status} {body!r}"
        after = srv.metrics()
        assert after["subcenter_wal_failed"] == 0
        assert after["subcenter_wal_failed_batches_total"] > \
            before["subcenter_wal_failed_batches_total"]

        # Space comes back: writes resume without a restart.
        os.unlink(os.path.join(mnt, "filler"))
        deadline = time.monotonic() + 10
        k = 0
        while journal.write(c, "p1", "push", f"resumed-{k}") is not None:
            assert time.monotonic() < deadline, "writes did not resume once space was back"
            k += 1
            time.sleep(0.1)
        for i, p in enumerate(persons):
            assert journal.write(c, p, "sms", f"after-{p}", unsubscribe=i % 2 == 0) is None
        c.Identify(workspace=ws, person_id="late", email="late@example.com")
        assert journal.problems(c) == []

        # Every acknowledged change survives a graceful restart and a crash; no refused one.
        assert srv.terminate() == 0
        for restart in ("SIGTERM", "kill -9"):
            srv.start()
            c = srv.client
            problems = journal.problems(c)
            assert problems == [], f"after a {restart} restart:\n  " + "\n  ".join(problems)
            assert c.GetProfile(workspace=ws, person="late").email == "late@example.com"
            expect_code(NOT_FOUND, lambda: c.GetProfile(workspace=ws, person="refused-person"))
            events = srv.feed(ws, journal.last_source)
            assert [e.source for e in events if e.source in journal.refused] == [], restart
            if restart == "SIGTERM":
                assert journal.write(c, "p3", "push", "before-crash") is None
                srv.kill9()
    finally:
        srv.close()


@pytest.mark.deadline(60)
def test_disk_full_at_start_up_is_reported_as_a_full_disk(small_disk):
    """A server stopped cleanly, then started on a disk that has filled up meanwhile: it may
    refuse to start, but must say the disk is full, change nothing, and not call it damage
    (no advice to restore a backup or to discard data with --recover-truncate); once space
    is back it starts with every change."""
    base, mnt = small_disk
    srv = DiskServer(base, os.path.join(mnt, "data"))
    try:
        srv.start()
        ws = unique("full")
        srv.client.ConfigureWorkspace(workspace=ws, channels=CHANNELS)
        srv.client.Identify(workspace=ws, person_id="kept", email="kept@example.com")
        assert srv.terminate() == 0
        files = sorted(os.listdir(srv.data))
        filler = fill(mnt)

        port, admin = free_port(), free_port()
        code, out, err = run_to_exit(
            "subcenterd", ["--listen", f"127.0.0.1:{port}"] + tls_args() +
            ["--admin-listen", f"127.0.0.1:{admin}", "--data", srv.data,
             "--tokens", srv.tokens], timeout=5)
        if code is not None:  # it refused to start (serving read-only would also do)
            assert code != 0
            assert "No space left on device" in err or "disk is full" in err.lower(), err
            assert "--recover-truncate" not in err and "backup" not in err, \
                f"a full disk at start-up is reported as damage:\n{err}"
            assert sorted(os.listdir(srv.data)) == files, "a refused start-up changed files"

        os.unlink(filler)
        srv.start()
        assert srv.client.GetProfile(workspace=ws, person="kept").email == "kept@example.com"
    finally:
        srv.close()


@pytest.mark.deadline(30)
def test_disk_full_at_first_start_is_reported_as_a_full_disk(small_disk):
    """The very first start, on a full disk: the server secret cannot be written. Exit 1
    (good settings that cannot start), saying the disk is full, and nothing left behind."""
    base, mnt = small_disk
    filler = fill(mnt)
    data = os.path.join(mnt, "fresh")
    os.mkdir(data, 0o700)
    code, _, err = run_to_exit(
        "subcenterd", ["--listen", f"127.0.0.1:{free_port()}"] + tls_args() +
        ["--admin-listen", f"127.0.0.1:{free_port()}", "--data", data,
         "--tokens", write_tokens_file(base)], timeout=10)
    assert code == 1, (code, err)
    assert "disk is full" in err.lower() and "secret.key" in err, err
    left = [f for f in os.listdir(data) if f.startswith("secret")]
    assert left == [], left
    os.unlink(filler)
