"""Damaged data directories (issue 4 "Damage", SPEC §4), with real files and a real subcenterd,
and the offline checker `subcenterctl check-data DIR` (SPEC §6).

A log is made by a server started with a huge --snapshot-interval and stopped with kill -9, so
that the log holds every record and no snapshot exists. Its records are found by parsing the
segment (docs/storage-format.md: 24-byte header, then frames [u32 length][u32 CRC-32C][payload],
each payload starting with its seq). The changes at the end of the log are Identify calls of
persons c0…c{N-1}, one record each, so the persons found after recovery show exactly which
prefix of the records was recovered.

- The newest segment cut at every byte offset of its last two records: the server starts,
  recovers exactly the records that are whole, and the next write survives another restart.
- A zeroed tail (the file extended by zeros, and the last record zeroed in place): zeros
  after the last record are space never written (the writer preallocates it): the log ends
  there, start-up cuts them without a warning.
- A flipped bit in the middle of the log: start-up refused (non-zero exit), stderr naming the
  file and the byte offset; with --recover-truncate it starts from the last good record.
- A damaged newest snapshot: with an older snapshot (or the whole log) present, start-up falls
  back and says so; when the log no longer reaches back, it refuses (reported as it behaves).
- check-data: exit 0 on a clean directory and on a torn tail (warning), 1 on damage, naming the
  file and offset; it changes nothing.

Select with `-k damage`."""

from __future__ import annotations

import json
import os
import time
import shutil
import struct
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

import interop_support as support
from crash_support import DurableServer
from sc_support import pb, pb_grpc, unique

HEADER = 24            # log segment header
FRAME = 8              # [u32 length][u32 crc]
SNAPSHOT_INTERVAL = ("--snapshot-interval", "86400")
N = 6                  # persons identified last, one record each


# ------------------------------------------------------------------------------------------
# Files


def _segments(data: str) -> list[str]:
    return sorted(f for f in os.listdir(data) if f.startswith("wal-") and f.endswith(".log"))


def _snapshots(data: str) -> list[str]:
    return sorted(f for f in os.listdir(data) if f.startswith("snapshot-") and f.endswith(".snap"))


def _varint(b: bytes, i: int) -> int:
    v, shift = 0, 0
    while True:
        c = b[i]
        v |= (c & 0x7F) << shift
        if c < 0x80:
            return v
        shift += 7
        i += 1


def _records(path: str) -> list[tuple[int, int, int]]:
    """(offset, end, seq) of every frame of a clean segment (one that may end in the zeros
    the writer preallocates, as the active segment does after a kill -9)."""
    with open(path, "rb") as f:
        b = f.read()
    assert b[:8] == b"SUBCWLOG", f"{path}: not a log segment"
    out, o = [], HEADER
    while o < len(b):
        if not any(b[o:]):
            break  # preallocated space, never written
        length, _crc = struct.unpack_from("<II", b, o)
        assert 0 < length and o + FRAME + length <= len(b), f"{path}: damaged at {o}"
        payload = b[o + FRAME:o + FRAME + length]
        assert payload[0] == 0x08
        out.append((o, o + FRAME + length, _varint(payload, 1)))
        o += FRAME + length
    return out


def _newest_segment_with_records(data: str) -> str:
    for name in reversed(_segments(data)):
        if os.path.getsize(os.path.join(data, name)) > HEADER:
            return name
    raise AssertionError(f"no log segment with records in {data}: {os.listdir(data)}")


def _copy_case(src_base: str, dst_base: str) -> DurableServer:
    """A copy of a whole DurableServer base (data directory and tokens file)."""
    shutil.copytree(src_base, dst_base)
    srv = DurableServer(dst_base, extra=SNAPSHOT_INTERVAL)
    return srv


# ------------------------------------------------------------------------------------------
# Servers


def _refused_changing_nothing(srv: DurableServer, code: int, *needles: str) -> str:
    """Runs subcenterd on srv's directory expecting it to refuse to start with exit `code`
    and a message holding every one of `needles`, leaving the directory as it was; returns
    the output."""
    before = _tree(srv.data)
    rc, text = _run_refused(srv)
    assert rc == code and all(n in text for n in needles), text
    assert _tree(srv.data) == before, "a refused start-up changed the directory"
    return text


def _run_refused(srv: DurableServer, extra: list[str] = (), timeout: float = 15.0):
    """Runs subcenterd on srv's directory expecting it to stop by itself: (exit code, stderr)."""
    args = support.tls_args() + ["--listen", f"127.0.0.1:{support.free_port()}"] + \
        srv._args() + list(extra)
    rc, out, err = support.run_to_exit("subcenterd", args, timeout=timeout)
    return rc, out + err


def _workspace_with(srv: DurableServer, prefix: str, persons: list[str]) -> str:
    """A new workspace (channel email) holding `persons`, one Identify (one record) each."""
    ws = unique(prefix)
    srv.client.ConfigureWorkspace(workspace=ws, channels=["email"])
    for p in persons:
        srv.client.Identify(workspace=ws, person_id=p)
    return ws


def _present(srv: DurableServer, ws: str, persons: list[str]) -> list[str]:
    found = []
    for p in persons:
        try:
            srv.client.GetProfile(workspace=ws, person=p)
            found.append(p)
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.NOT_FOUND, f"GetProfile({p}): {e.code()} {e.details()}"
    return found


def _check_data(data: str):
    ctl = str(support.binary("subcenterctl"))
    r = subprocess.run([ctl, "check-data", data], capture_output=True, text=True, timeout=60)
    return r.returncode, r.stdout + r.stderr


def _check_data_json(data: str) -> dict:
    """check-data --json: one object, its exit status the same as the text report's."""
    ctl = str(support.binary("subcenterctl"))
    r = subprocess.run([ctl, "check-data", data, "--json"], capture_output=True, text=True,
                       timeout=60)
    out = json.loads(r.stdout)
    assert out["exit_status"] == r.returncode and out["sound"] == (r.returncode == 0), r
    assert all(isinstance(line, str) for line in out["report"]), out
    return out


def _tree(data: str) -> dict[str, bytes]:
    out = {}
    for f in sorted(os.listdir(data)):
        with open(os.path.join(data, f), "rb") as fh:
            out[f] = fh.read()
    return out


# ------------------------------------------------------------------------------------------
# The log under test


class LogCase:
    """A data directory whose log ends with the Identify records of persons c0…c{N-1}."""

    def __init__(self, root: str):
        self.root = root
        self.base = os.path.join(root, "pristine")
        os.makedirs(self.base)
        srv = DurableServer(self.base, extra=SNAPSHOT_INTERVAL).start()
        try:
            self.ws = unique("dmg")
            sc = srv.client
            sc.ConfigureWorkspace(workspace=self.ws, channels=["email", "sms"])
            self.early = [f"e{i}" for i in range(3)]
            for p in self.early:
                sc.Identify(workspace=self.ws, person_id=p, email=f"{p}@example.com")
            self.persons = [f"c{i}" for i in range(N)]
            for p in self.persons:
                sc.Identify(workspace=self.ws, person_id=p)
        finally:
            srv.kill9()
        data = srv.data
        assert _snapshots(data) == [], f"a snapshot was written: {os.listdir(data)}"
        self.segment = _newest_segment_with_records(data)
        self.records = _records(os.path.join(data, self.segment))
        # The last N records are the persons', in order.
        assert len(self.records) >= N + 4, self.records
        self.person_records = dict(zip(self.persons, self.records[-N:]))
        self.count = 0

    def copy(self) -> DurableServer:
        self.count += 1
        return _copy_case(self.base, os.path.join(self.root, f"case-{self.count}"))

    def path(self, srv: DurableServer) -> str:
        return os.path.join(srv.data, self.segment)


@pytest.fixture(scope="module")
def log_case():
    root = tempfile.mkdtemp(prefix="damage-")
    case = LogCase(root)
    yield case
    shutil.rmtree(root, ignore_errors=True)


# ------------------------------------------------------------------------------------------
# Truncation at every byte of the last two records


def _truncation_case(case: LogCase, cut: int, and_restart: bool) -> list[str]:
    """Cuts a copy at `cut` bytes; returns problems (empty when right)."""
    srv = case.copy()
    problems = []
    try:
        with open(case.path(srv), "r+b") as f:
            f.truncate(cut)
        want = [p for p, (_, end, _) in case.person_records.items() if end <= cut]
        srv.start()
        got = _present(srv, case.ws, case.persons)
        if got != want:
            problems.append(f"cut at {cut}: recovered {got}, the whole records were {want}")
        if _present(srv, case.ws, case.early) != case.early:
            problems.append(f"cut at {cut}: lost an earlier record")
        if and_restart and not problems:
            assert srv.starts == 1
            nxt = f"n{cut}"
            srv.client.Identify(workspace=case.ws, person_id=nxt)
            srv.kill9()
            srv.start()
            got = _present(srv, case.ws, case.persons + [nxt])
            if got != want + [nxt]:
                problems.append(f"cut at {cut}: after the next write and a restart: {got}, "
                                f"expected {want + [nxt]}")
    except Exception as e:  # noqa: BLE001 — reported with the offset
        problems.append(f"cut at {cut}: {type(e).__name__}: {e}\n{srv.describe()}")
    finally:
        srv.close()
        shutil.rmtree(srv.base, ignore_errors=True)
    return problems


@pytest.mark.deadline(120)
def test_damage_truncation_at_every_byte_of_the_last_two_records(log_case):
    start = log_case.records[-2][0]
    end = log_case.records[-1][1]
    cuts = list(range(start, end))  # every offset inside the last two records (end = intact)
    # At every offset, also the next append after recovery and another restart.
    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(lambda c: _truncation_case(log_case, c, True), cuts))
    problems = [p for r in results for p in r]
    print(f"truncation: {len(cuts)} offsets ({start}..{end - 1}) of {log_case.segment}")
    assert len(cuts) > 2 * FRAME
    assert not problems, f"{len(problems)} problem(s):\n" + "\n".join(problems[:20])


# ------------------------------------------------------------------------------------------
# Zeroed tails


@pytest.mark.deadline(60)
def test_damage_zeroed_tail_is_unwritten_space(log_case):
    # The file extended by zeros (space allocated, never written — what the writer's
    # preallocation leaves after a crash): the end of the log, cut at start-up, no warning.
    srv = log_case.copy()
    try:
        with open(log_case.path(srv), "ab") as f:
            f.write(b"\0" * 4096)
        rc, text = _check_data(srv.data)
        assert rc == 0 and "WARNING" not in text and "zeros" in text, text
        srv.start()
        assert _present(srv, log_case.ws, log_case.persons) == log_case.persons
        out = srv.server.output()
        assert "torn" not in out, out
        assert os.path.getsize(log_case.path(srv)) == log_case.records[-1][1]
        srv.client.Identify(workspace=log_case.ws, person_id="after-zeros")
        srv.kill9()
        srv.start()
        assert _present(srv, log_case.ws, ["after-zeros"]) == ["after-zeros"]
    finally:
        srv.close()

    # The last record zeroed in place: it is lost, nothing else.
    srv = log_case.copy()
    try:
        off, end, _ = log_case.records[-1]
        with open(log_case.path(srv), "r+b") as f:
            f.seek(off)
            f.write(b"\0" * (end - off))
        srv.start()
        assert _present(srv, log_case.ws, log_case.persons) == log_case.persons[:-1]
    finally:
        srv.close()


# ------------------------------------------------------------------------------------------
# A flipped bit in the middle


@pytest.mark.deadline(60)
def test_damage_flipped_bit_in_the_middle_refuses_start_naming_file_and_offset(log_case):
    srv = log_case.copy()
    try:
        victim = log_case.persons[2]
        off, end, _ = log_case.person_records[victim]
        path = log_case.path(srv)
        with open(path, "r+b") as f:
            f.seek(off + FRAME + 3)
            byte = f.read(1)[0]
            f.seek(off + FRAME + 3)
            f.write(bytes([byte ^ 0x10]))
        damaged = _tree(srv.data)

        # check-data: damaged, names the file and the offset, changes nothing.
        rc, text = _check_data(srv.data)
        assert rc == 1, text
        assert log_case.segment in text and f"byte offset {off}" in text, text
        report = _check_data_json(srv.data)
        assert report["exit_status"] == 1 and any(
            log_case.segment in line and f"byte offset {off}" in line
            for line in report["report"]), report
        assert "\n".join(report["report"]) + "\n" == text, (report, text)
        assert _tree(srv.data) == damaged

        rc, text = _run_refused(srv)
        assert rc is not None and rc != 0, f"subcenterd started on a damaged log:\n{text}"
        assert log_case.segment in text and f"byte offset {off}" in text, text
        assert "--recover-truncate" in text, text
        assert _tree(srv.data) == damaged, "a refused start changed the data directory"

        # --recover-truncate: starts from the last good record.
        srv.extra.append("--recover-truncate")
        srv.start()
        idx = log_case.persons.index(victim)
        assert _present(srv, log_case.ws, log_case.persons) == log_case.persons[:idx]
        assert _present(srv, log_case.ws, log_case.early) == log_case.early
        srv.client.Identify(workspace=log_case.ws, person_id="after-truncate")
        srv.kill9()
        srv.extra.remove("--recover-truncate")
        srv.start()
        assert _present(srv, log_case.ws, log_case.persons + ["after-truncate"]) == \
            log_case.persons[:idx] + ["after-truncate"]
        srv.kill9()
        rc, text = _check_data(srv.data)
        assert rc == 0, text
        assert _check_data_json(srv.data)["sound"], text
    finally:
        srv.close()


# ------------------------------------------------------------------------------------------
# Snapshots


def _flip_middle_byte(path: str) -> None:
    with open(path, "r+b") as f:
        size = os.fstat(f.fileno()).st_size
        f.seek(size // 2)
        b = f.read(1)[0]
        f.seek(size // 2)
        f.write(bytes([b ^ 0x01]))


@pytest.mark.deadline(90)
def test_damage_damaged_newest_snapshot_falls_back():
    root = tempfile.mkdtemp(prefix="damage-snap-")
    os.makedirs(os.path.join(root, "s"))
    srv = DurableServer(os.path.join(root, "s"), extra=SNAPSHOT_INTERVAL)
    try:
        srv.start()
        ws = unique("snap")
        sc = srv.client
        sc.ConfigureWorkspace(workspace=ws, channels=["email"])
        first = [f"a{i}" for i in range(5)]
        for p in first:
            sc.Identify(workspace=ws, person_id=p, email=f"{p}@example.com")
        assert srv.terminate() == 0  # SIGTERM writes a snapshot
        snaps1 = _snapshots(srv.data)
        assert len(snaps1) == 1, os.listdir(srv.data)
        after_first = os.path.join(root, "after-first")
        shutil.copytree(srv.data, after_first)

        # (1) The only snapshot damaged while the whole log is still there (one run: its
        # segment starts at seq 1): start-up falls back to the whole log and says so.
        one = os.path.join(root, "one")
        shutil.copytree(srv.base, one)
        alt = DurableServer(one, extra=SNAPSHOT_INTERVAL)
        _flip_middle_byte(os.path.join(alt.data, snaps1[0]))
        rc, text = _check_data(alt.data)
        assert rc == 1 and snaps1[0] in text and "DAMAGED" in text, text
        assert "the log is sound" in text and "refuses" not in text, text
        assert "replay" in text, text  # how recovery will go, the damaged snapshot skipped
        alt.start()
        assert _present(alt, ws, first) == first
        out = alt.server.output()
        assert snaps1[0] in out and "falling back to the whole log" in out, out
        alt.close()

        # A second run: more changes, SIGTERM → a newer snapshot; the older snapshot and the
        # segments it covers are deleted.
        srv.start()
        second = [f"b{i}" for i in range(5)]
        for p in second:
            srv.client.Identify(workspace=ws, person_id=p)
        assert srv.terminate() == 0
        snaps2 = _snapshots(srv.data)
        assert len(snaps2) == 1 and snaps2 != snaps1, os.listdir(srv.data)
        rc, text = _check_data(srv.data)
        assert rc == 0, text

        # (2) A crash between the new snapshot's rename and the deletions leaves the older
        # snapshot and its log: rebuild that state, damage the newest → fall back to the older
        # snapshot plus the log, and say so.
        two = os.path.join(root, "two")
        shutil.copytree(srv.base, two)
        alt = DurableServer(two, extra=SNAPSHOT_INTERVAL)
        for f in os.listdir(after_first):
            if not os.path.exists(os.path.join(alt.data, f)):
                shutil.copy2(os.path.join(after_first, f), alt.data)
        _flip_middle_byte(os.path.join(alt.data, snaps2[0]))
        alt.start()
        assert _present(alt, ws, first + second) == first + second
        out = alt.server.output()
        assert snaps2[0] in out and "falling back to an older snapshot" in out, out
        alt.close()

        # (With change retention, the log still reaches back to seq 1 here: no third case.)
    finally:
        srv.close()
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.deadline(90)
def test_damage_in_records_the_snapshot_holds_loses_no_state():
    """A damaged record that the newest snapshot already holds, with changes after the
    snapshot in the same segment: start-up still refuses (nothing is changed without the
    operator's word), saying that --recover-truncate loses no change; with it, every person
    is there, those made after the snapshot included (the records past the damage are kept as
    a segment of their own), and the directory then starts without the flag and checks clean.
    """
    root = tempfile.mkdtemp(prefix="damage-covered-")
    srv = DurableServer(root, extra=SNAPSHOT_INTERVAL)
    try:
        srv.start()
        persons = [f"c{i}" for i in range(6)]
        ws = _workspace_with(srv, "cov", persons)
        status, _, body = support.admin_request(srv.server, "/snapshot", method="POST")
        assert status == 200, (status, body)
        later = [f"d{i}" for i in range(4)]
        for p in later:
            srv.client.Identify(workspace=ws, person_id=p)
        srv.kill9()
        segment = _newest_segment_with_records(srv.data)
        records = _records(os.path.join(srv.data, segment))
        snapshot_seq = int(_snapshots(srv.data)[-1].split("-")[1].split(".")[0])
        assert records[-1][2] == snapshot_seq + len(later), (records, snapshot_seq)
        off = records[2][0]
        with open(os.path.join(srv.data, segment), "r+b") as f:
            f.seek(off + 4)
            f.write(b"\xff\xff\xff\xff")  # the frame's checksum
        rc, text = _run_refused(srv)
        assert rc not in (None, 0), text
        assert f"byte offset {off}" in text and "loses no change" in text, text
        srv.extra.append("--recover-truncate")
        srv.start()
        assert _present(srv, ws, persons + later) == persons + later
        assert segment not in _segments(srv.data)
        srv.client.Identify(workspace=ws, person_id="later")
        srv.kill9()
        srv.extra.remove("--recover-truncate")
        srv.start()
        everyone = persons + later + ["later"]
        assert _present(srv, ws, everyone) == everyone
        srv.kill9()
        rc, text = _check_data(srv.data)
        assert rc == 0, text
    finally:
        srv.close()
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.deadline(90)
def test_damage_to_the_record_a_snapshot_ends_at_leaves_no_hole():
    """SIGTERM (the snapshot holds every record), then a bit flipped in the log's last record:
    start-up cuts it as a torn tail, and since the log would then end before the snapshot, it
    deletes that history instead of leaving a hole; later changes survive kill -9 and
    restarts, check-data finds nothing to advise, and the change feed serves from the new
    oldest seq."""
    root = tempfile.mkdtemp(prefix="damage-hole-")
    srv = DurableServer(root, extra=SNAPSHOT_INTERVAL)
    try:
        srv.start()
        before = [f"b{i}" for i in range(4)]
        ws = _workspace_with(srv, "hole", before)
        assert srv.terminate() == 0
        segment = _newest_segment_with_records(srv.data)
        records = _records(os.path.join(srv.data, segment))
        with open(os.path.join(srv.data, segment), "r+b") as f:
            f.seek(records[-1][1] - 1)
            last = f.read(1)
            f.seek(records[-1][1] - 1)
            f.write(bytes([last[0] ^ 0x01]))
        srv.start()
        assert segment not in _segments(srv.data), _segments(srv.data)
        after = [f"a{i}" for i in range(3)]
        for p in after:
            srv.client.Identify(workspace=ws, person_id=p)
        srv.kill9()
        rc, text = _check_data(srv.data)
        assert rc == 0 and "WARNING" not in text, text
        srv.start()
        assert _present(srv, ws, before + after) == before + after
        stub = pb_grpc.SubscriptionCenterStub(srv.channel)
        call = stub.WatchChanges(pb.WatchRequest(workspace=ws, from_oldest=True),
                                 metadata=srv.client.metadata, timeout=3)
        got = []
        try:
            for e in call:
                got.append(e.person_id)
                if len(got) == len(after):
                    break
        finally:
            call.cancel()
        assert got == after, got
    finally:
        srv.close()
        shutil.rmtree(root, ignore_errors=True)


# ------------------------------------------------------------------------------------------
# check-data


@pytest.mark.deadline(60)
def test_damage_check_data_refuses_a_directory_a_server_is_running_on(log_case):
    """A live directory changes under the reader (segments rewritten, snapshots replaced):
    check-data reported vanished files as an I/O error ("No such file") in ~3 of 10 runs
    under load. It says a server holds the directory (exit 2) and to check a copy."""
    srv = log_case.copy()
    try:
        srv.start()
        rc, text = _check_data(srv.data)
        assert rc == 2 and "a subcenterd is running on" in text and "copy" in text, text
        srv.terminate()
        rc, text = _check_data(srv.data)
        assert rc == 0, text
    finally:
        srv.close()
        shutil.rmtree(srv.base, ignore_errors=True)


def test_check_data_names_the_seqs_a_start_skipped(tmp_path):
    """A start of an existing directory skips seqs (SPEC §3: never reused), with a record
    written before its first change; check-data counts that record apart from the changes
    recovery would replay. A start that changes nothing writes nothing."""
    srv = DurableServer(str(tmp_path)).start()
    try:
        assert srv.terminate() == 0
        srv.start()
        assert srv.terminate() == 0
        rc, text = _check_data(srv.data)
        assert rc == 0 and "replay 0 log record(s)" in text and "skip" not in text, text
        srv.start()
        srv.client.Identify(workspace="default", person_id="p-skip")
        srv.kill9()  # no snapshot at the end: the log after the snapshot holds both records
        rc, text = _check_data(srv.data)
        assert rc == 0, text
        assert ("replay 1 log record(s)" in text
                and "(and skip 1 record(s) of seqs a start skipped)" in text), text
    finally:
        srv.close()


def test_damage_check_data_clean_and_damaged(log_case):
    srv = log_case.copy()
    data = srv.data
    rc, text = _check_data(data)
    assert rc == 0, text
    seg_line = next(l for l in text.splitlines() if l.startswith(log_case.segment))
    n = len(log_case.records)
    first, last = log_case.records[0][2], log_case.records[-1][2]
    assert f"{n} records" in seg_line and f"seq {first}-{last}" in seg_line, text
    assert seg_line.endswith("OK"), text

    # A torn tail (the last record cut short): a warning, exit 0, nothing changed.
    before = _tree(data)
    path = log_case.path(srv)
    with open(path, "r+b") as f:
        f.truncate(log_case.records[-1][1] - 3)
    torn = _tree(data)
    rc, text = _check_data(data)
    assert rc == 0 and "WARNING" in text and f"byte offset {log_case.records[-1][0]}" in text, text
    assert _tree(data) == torn

    # A bad checksum in an earlier record: exit 1, file and offset.
    with open(path, "wb") as f:
        f.write(before[log_case.segment])
    off = log_case.records[3][0]
    with open(path, "r+b") as f:
        f.seek(off + 4)
        f.write(b"\xff\xff\xff\xff")
    rc, text = _check_data(data)
    assert rc == 1 and log_case.segment in text and f"byte offset {off}" in text, text
    assert "DAMAGED" in text

    # A missing directory: exit 2. An empty one (a backup whose copy failed), or one
    # holding only secret.key: exit 1, not OK.
    rc, text = _check_data(os.path.join(data, "nope"))
    assert rc == 2, text
    empty = os.path.join(srv.base, "empty")
    os.mkdir(empty)
    for _ in range(2):
        rc, text = _check_data(empty)
        assert rc == 1 and "EMPTY" in text and "OK" not in text, text
        shutil.copy(os.path.join(data, "secret.key"), empty)
    shutil.rmtree(srv.base, ignore_errors=True)


def test_damage_damaged_only_snapshot_and_expired_log_is_refused():
    """The only snapshot damaged while the log no longer reaches back to seq 1 (its old
    segments expired with --change-retention): nothing to fall back on, so start-up refuses,
    naming the log's first segment, even with --recover-truncate; check-data reports it."""
    root = tempfile.mkdtemp(prefix="damage-expired-")
    srv = DurableServer(root, extra=("--change-retention", "1", "--erasure-deadline", "2"))
    try:
        srv.start()
        ws = _workspace_with(srv, "exp", [f"x{i}" for i in range(5)])
        # Wait until the retention pass rotated, snapshotted and deleted the old segments.
        deadline = time.time() + 20
        while time.time() < deadline and (not _segments(srv.data) or
                                          _segments(srv.data)[0] == "wal-00000000000000000001.log"):
            srv.client.Identify(workspace=ws, person_id="tick")
            time.sleep(0.5)
        assert _segments(srv.data)[0] != "wal-00000000000000000001.log", os.listdir(srv.data)
        assert srv.terminate() == 0
        snaps = _snapshots(srv.data)
        assert snaps, os.listdir(srv.data)
        for snap in snaps:
            _flip_middle_byte(os.path.join(srv.data, snap))
        rc, text = _run_refused(srv)
        assert rc is not None and rc != 0, f"subcenterd started without the data:\n{text}"
        assert _segments(srv.data)[0] in text, text
        # Missing records are no damage --recover-truncate gets past: not advised.
        assert "--recover-truncate cannot help" in text, text
        assert "or start with --recover-truncate" not in text, text
        rc, text = _run_refused(srv, ["--recover-truncate"])
        assert rc is not None and rc != 0, text
        assert "--recover-truncate cannot start from this data" in text, text
        assert "or start with --recover-truncate" not in text, text
        rc, text = _check_data(srv.data)
        assert rc == 1 and snaps[-1] in text, text
        assert "--recover-truncate cannot help" in text, text
        assert "or start with --recover-truncate" not in text, text
    finally:
        srv.close()
        shutil.rmtree(root, ignore_errors=True)


def _suppressed_then_key_swapped(srv: DurableServer, stop) -> tuple:
    """A new workspace with a suppressed email; the server stopped by `stop()`, and its
    secret.key replaced by another. Returns (workspace, email, put_back), put_back()
    restoring the key."""
    ws = unique("sk")
    srv.client.ConfigureWorkspace(workspace=ws, channels=["email"])
    email = f"{ws}@example.com"
    srv.client.SuppressIdentifiers(workspace=ws, identifiers=[
        pb.Identifier(kind=pb.IDENTIFIER_KIND_EMAIL, value=email)], reason="complaint")
    stop()
    key = os.path.join(srv.data, "secret.key")
    saved = open(key, "rb").read()
    with open(key, "wb") as f:
        f.write(os.urandom(32))

    def put_back():
        with open(key, "wb") as f:
            f.write(saved)
    return ws, email, put_back


def _still_suppressed(srv: DurableServer, ws: str, email: str) -> bool:
    d = srv.client.CheckDelivery(workspace=ws, person=pb.PersonRef(email=email), channel="email")
    return pb.DecisionReason.Name(d.reason) == "DECISION_REASON_SUPPRESSED" and not d.allowed


def test_damage_data_under_another_secret_key_is_refused():
    """A restore that brought the wrong secret.key (another server's, or a fresh one beside
    copied data): every suppression would silently stop matching, so start-up refuses,
    naming the snapshot, and changes nothing; check-data says so (exit 1); with the right
    secret back, the suppression holds."""
    base = tempfile.mkdtemp(prefix="damage-secret-")
    srv = DurableServer(base).start()
    try:
        def stop():
            assert srv.terminate() == 0  # the final snapshot

        ws, email, put_back = _suppressed_then_key_swapped(srv, stop)
        _refused_changing_nothing(srv, 1, "another server secret", "snapshot-",
                                  "Put back the secret.key backed up with this data")
        rc, text = _check_data(srv.data)
        assert rc == 1 and "WRONG SECRET" in text and "WRONG secret.key" in text, text
        # Damage after the check does not let the wrong secret through by a fall back to the
        # log (which then wrote a new snapshot under it at SIGTERM).
        snap = os.path.join(srv.data, _snapshots(srv.data)[-1])
        intact = open(snap, "rb").read()
        with open(snap, "wb") as f:
            f.write(intact[:-1] + bytes([intact[-1] ^ 0xFF]))
        _refused_changing_nothing(srv, 1, "another server secret")
        rc, text = _check_data(srv.data)
        assert rc == 1 and "DAMAGED" in text and "WRONG SECRET" in text, text
        with open(snap, "wb") as f:
            f.write(intact)
        put_back()
        rc, text = _check_data(srv.data)
        assert rc == 0 and "WRONG" not in text, text
        srv.start()
        assert _still_suppressed(srv, ws, email)
    finally:
        srv.close()
        shutil.rmtree(base, ignore_errors=True)


def test_damage_a_log_under_another_secret_key_is_refused():
    """Before its first snapshot a directory holds only the log: the records that hold
    suppression hashes name the secret they are keyed with, so a wrong secret.key is refused
    there too (exit 1, naming the record), and check-data reports it."""
    base = tempfile.mkdtemp(prefix="damage-logsecret-")
    srv = DurableServer(base).start()
    try:
        ws, email, put_back = _suppressed_then_key_swapped(srv, srv.kill9)
        assert not _snapshots(srv.data), "no snapshot: the log alone"
        _refused_changing_nothing(srv, 1, "another server secret", "log record")
        rc, text = _check_data(srv.data)
        assert rc == 1 and "WRONG SECRET" in text, text
        put_back()
        srv.start()
        assert _still_suppressed(srv, ws, email)
    finally:
        srv.close()
        shutil.rmtree(base, ignore_errors=True)


def test_damage_data_without_its_secret_key_is_refused(log_case):
    """A restore that forgot secret.key: start-up refuses (a new secret would make every
    suppression stop matching, silently) and changes nothing; check-data says so (exit 1);
    with the secret back, it starts."""
    srv = log_case.copy()
    key = os.path.join(srv.data, "secret.key")
    saved = open(key, "rb").read()
    os.unlink(key)
    _refused_changing_nothing(srv, 2, "secret.key is missing", "suppression")
    rc, text = _check_data(srv.data)
    assert rc == 1 and "secret.key: MISSING" in text, text
    # The log is sound: the advice is the secret, not a repair of the log.
    assert "MISSING or BAD secret.key" in text and "damaged log" not in text, text
    with open(key, "wb") as f:
        f.write(saved[:31])  # a truncated copy is not "missing"
    rc, text = _check_data(srv.data)
    assert rc == 1 and "secret.key: NOT 32 BYTES" in text, text
    with open(key, "wb") as f:
        f.write(saved)
    os.chmod(key, 0o600)
    rc, text = _check_data(srv.data)
    assert rc == 0 and "secret.key: OK" in text, text
    srv.start()
    srv.close()
    shutil.rmtree(srv.base, ignore_errors=True)


def test_a_log_copy_cut_short_inside_records_the_snapshot_holds_is_refused():
    """A backup whose copy of the newest segment was cut short (a full disk, an interrupted
    transfer) is not a crash's torn write when the cut falls inside records the snapshot
    holds (they were synced before it was written): check-data reports it as damage and
    start-up refuses it, naming the file, rather than cutting it and losing the changes
    after the snapshot the segment held; --recover-truncate starts from the snapshot."""
    root = tempfile.mkdtemp(prefix="damage-cut-copy-")
    srv = DurableServer(root, extra=SNAPSHOT_INTERVAL)
    try:
        srv.start()
        ws = _workspace_with(srv, "cut", [f"c{i}" for i in range(4)])
        status, _, body = support.admin_request(srv.server, "/snapshot", method="POST")
        assert status == 200, body
        later = [f"l{i}" for i in range(3)]  # after the snapshot, in the same segment
        for p in later:
            srv.client.Identify(workspace=ws, person_id=p)
        srv.kill9()
        segment = _newest_segment_with_records(srv.data)
        path = os.path.join(srv.data, segment)
        records = _records(path)
        with open(path, "r+b") as f:
            f.truncate(records[1][0] + 5)  # inside the second record of the segment
        rc, text = _check_data(srv.data)
        assert rc == 1 and "cut short" in text and segment in text, text
        _refused_changing_nothing(srv, 1, "cut short", segment)
        srv.extra.append("--recover-truncate")
        srv.start()
        assert _present(srv, ws, later) == []
    finally:
        srv.close()
        shutil.rmtree(root, ignore_errors=True)


def test_damage_an_older_snapshot_under_another_secret_beside_a_newer_one_is_not_read():
    """A first start on the restore directory made a secret.key and a snapshot before the
    backup's files were copied in and its secret.key put back: recovery loads the backup's
    newer snapshot and never reads the stray older one, so check-data says so (exit 0)
    rather than WRONG SECRET, and the server starts with the backup's persons."""
    base_a, base_b = tempfile.mkdtemp(prefix="damage-stray-"), tempfile.mkdtemp(prefix="damage-bk-")
    stray, backup = DurableServer(base_a).start(), DurableServer(base_b).start()
    try:
        _workspace_with(stray, "stray", ["s0"])
        assert stray.terminate() == 0
        persons = [f"b{i}" for i in range(8)]
        ws = _workspace_with(backup, "bk", persons)
        assert backup.terminate() == 0
        old, new = _snapshots(stray.data)[-1], _snapshots(backup.data)[-1]
        assert old < new, (old, new)
        shutil.copy(os.path.join(stray.data, old), backup.data)
        rc, text = _check_data(backup.data)
        assert rc == 0 and "WRONG" not in text and "not read" in text, text
        backup.start()
        assert _present(backup, ws, persons) == persons
    finally:
        stray.close()
        backup.close()
        shutil.rmtree(base_a, ignore_errors=True)
        shutil.rmtree(base_b, ignore_errors=True)
