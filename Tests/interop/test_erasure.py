"""Erasure on disk (SPEC §3 ForgetPerson, §4): after ForgetPerson with wait_for_erasure, no byte
of any file in the data directory holds the person's email, phone, anonymous id, person id,
sources or override justification — raw, as hex or as base64 — and the person stays unknown
after a restart. The erasure receipt verifies with `subcenterctl verify-receipt`; a tampered one
does not."""

import base64
import hashlib
import hmac
import json
import os
import subprocess
import tempfile
import time

import pytest

import interop_support as support
from crash_support import DurableServer
from sc_support import FAILED_PRECONDITION, NOT_FOUND, expect_code, pb, pb_grpc, unique


def _encodings(text: str) -> list[bytes]:
    raw = text.encode()
    out = [raw, raw.hex().encode(), raw.hex().upper().encode()]
    for enc in (base64.b64encode, base64.urlsafe_b64encode):
        # Any alignment of the value inside a longer base64 stream.
        for pad in range(3):
            b = enc(b"\0" * pad + raw).rstrip(b"=")
            out.append(b[(pad * 4 + 2) // 3 + 1:-2] if len(b) > 8 else b)
    return [o for o in out if len(o) >= 6]


def _scan(directory: str, secrets: dict[str, str]) -> list[str]:
    """Where `secrets` appear in the files of `directory` (raw and encoded). A running
    server may rename or remove a temporary file between the listing and the read (a
    segment rewrite, a snapshot): then the whole directory is read again, so what the file
    held is not missed under its new name."""
    for _ in range(50):
        try:
            return _scan_once(directory, secrets)
        except FileNotFoundError:
            time.sleep(0.01)
    raise AssertionError(f"files of {directory} kept vanishing while it was read")


def _scan_once(directory: str, secrets: dict[str, str]) -> list[str]:
    hits = []
    for root, _, files in os.walk(directory):
        for f in files:
            path = os.path.join(root, f)
            with open(path, "rb") as fh:
                data = fh.read()
            for what, value in secrets.items():
                for needle in _encodings(value):
                    if needle in data:
                        hits.append(f"{what} ({needle[:20]!r}…) in {f}")
    return hits


@pytest.mark.deadline(120)
def test_forgotten_person_leaves_no_trace_on_disk():
    base = tempfile.mkdtemp(prefix="erasure-")
    srv = DurableServer(base).start()
    try:
        sc = srv.client
        ws = unique("er")
        sc.ConfigureWorkspace(pb.WorkspaceConfig(
            workspace=ws, channels=["email", "sms"], allow_important_override=True))
        tag = unique("zq")
        pid, anon = f"person-{tag}", f"anon-{tag}"
        email, phone = f"erase.me.{tag}@distinct-{tag}.example", "+4915112345678"
        sc.Identify(workspace=ws, anonymous_id=anon)
        sc.Subscribe(workspace=ws, person=pb.PersonRef(anonymous_id=anon), channel="email",
                     source=f"anon-source-{tag}")
        sc.Identify(workspace=ws, person_id=pid, email=email, phone=phone, anonymous_id=anon)
        sc.Unsubscribe(workspace=ws, person=pid, channel="sms", source=f"source-{tag}",
                       notice_version=f"notice-{tag}")
        sc.OverrideForImportantMessage(workspace=ws, person=pid, channel="sms",
                                       message_id=f"msg-{tag}", justification=f"why-{tag}")
        keep = unique("keep")
        sc.Identify(workspace=ws, person_id=keep, email=f"{keep}@example.com")
        # A snapshot holding the person, so erasure must rewrite more than the log.
        assert srv.terminate() == 0
        srv.start()
        sc = srv.client
        secrets = {"email": email, "phone": phone, "anonymous id": anon, "person id": pid,
                   "source": f"source-{tag}", "anonymous source": f"anon-source-{tag}",
                   "notice version": f"notice-{tag}", "justification": f"why-{tag}",
                   "message id": f"msg-{tag}"}
        before = _scan(srv.data, secrets)
        # Positive control: the scan finds every value while the person exists.
        assert {h.split(" (")[0] for h in before} == set(secrets), before
        r = sc.ForgetPerson(workspace=ws, person=pid, wait_for_erasure=True, timeout=30)
        assert r.person_id == pid and r.erasure_deadline > r.erased_at > 0
        # Only the change feed's `forget` tombstone, in the log, still names the person id
        # (until the change retention passes: test_person_id_leaves_after_change_retention).
        tombstone = {"person id": secrets.pop("person id")}
        assert all(".log" in h for h in _scan(srv.data, tombstone)), _scan(srv.data, tombstone)
        assert _scan(srv.data, secrets) == []
        # The other person is still there, and the forgotten one stays unknown after a restart.
        assert srv.terminate() == 0
        srv.start()
        sc = srv.client
        assert sc.GetProfile(workspace=ws, person=keep).email == f"{keep}@example.com"
        expect_code(NOT_FOUND, lambda: sc.GetProfile(workspace=ws, person=pid))
        expect_code(NOT_FOUND, lambda: sc.GetProfile(workspace=ws,
                                                     person=pb.PersonRef(email=email)))
        assert _scan(srv.data, secrets) == []

        # The receipt verifies with this server's secret; a tampered one does not.
        ctl = str(support.binary("subcenterctl"))
        ok = subprocess.run([ctl, "verify-receipt", r.receipt, "--data", srv.data],
                            capture_output=True, text=True, timeout=10)
        assert ok.returncode == 0 and "VALID" in ok.stdout, ok.stdout + ok.stderr
        body, sig = r.receipt.split(".")
        # Anyone holding the secret checks it with a standard HMAC-SHA-256, not only our tool:
        # the signature over the first part, and the person hash over "person:<ws>:<id>".
        with open(os.path.join(srv.data, "secret.key"), "rb") as f:
            key = f.read()
        mac = hmac.new(key, body.encode(), hashlib.sha256).digest()
        assert sig == base64.urlsafe_b64encode(mac).rstrip(b"=").decode()
        claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        assert claims["person_hash"] == hmac.new(
            key, f"person:{ws}:{pid}".encode(), hashlib.sha256).hexdigest()
        forged = body[:-2] + ("A" if body[-2] != "A" else "B") + body[-1] + "." + sig
        bad = subprocess.run([ctl, "verify-receipt", forged, "--data", srv.data],
                             capture_output=True, text=True, timeout=10)
        assert bad.returncode != 0 and "INVALID" in bad.stdout
    finally:
        srv.close()


@pytest.mark.deadline(120)
def test_person_id_leaves_after_change_retention():
    """With a short --change-retention, the `forget` tombstone (the person id) leaves the disk
    too, within the retention plus the erasure deadline (here well before)."""
    base = tempfile.mkdtemp(prefix="erasure-ret-")
    srv = DurableServer(base, extra=("--change-retention", "2")).start()
    try:
        sc = srv.client
        ws, pid, secrets = _identified_person(sc)
        sc.ForgetPerson(workspace=ws, person=pid, wait_for_erasure=True, timeout=30)
        secrets["person id"] = pid
        assert _wait_until_gone(srv, secrets, 15) == []
        sc.Identify(workspace=ws, person_id="still-works")
        assert srv.terminate() == 0
        srv.start()
        expect_code(NOT_FOUND, lambda: srv.client.GetProfile(workspace=ws, person=pid))
        assert srv.client.GetProfile(workspace=ws, person="still-works").person_id
    finally:
        srv.close()


@pytest.mark.deadline(120)
def test_erasure_completes_after_a_crash_right_after_forget():
    """A forget acknowledged just before a kill -9 (before its compaction ran) must still
    leave the disk within the erasure deadline of the restarted server."""
    base = tempfile.mkdtemp(prefix="erasure-crash-")
    srv = DurableServer(base, extra=("--erasure-deadline", "2")).start()
    try:
        ws, pid, secrets = _identified_person(srv.client)
        # A snapshot holding the person, then the log: both must lose it.
        assert srv.terminate() == 0
        srv.start()
        assert len(_scan(srv.data, secrets)) >= 2
        srv.client.ForgetPerson(workspace=ws, person=pid)
        srv.kill9()  # its compaction was still to come (it waits ~100 ms for more forgets)
        srv.start()
        expect_code(NOT_FOUND, lambda: srv.client.GetProfile(workspace=ws, person=pid))
        assert _wait_until_gone(srv, secrets, 2 + 3) == []  # the deadline, and some slack
    finally:
        srv.close()


def _email_workspace(sc, ws_prefix: str, tag_prefix: str) -> tuple[str, str]:
    """A fresh workspace with channel email, and a fresh tag for distinctive identifiers."""
    ws, tag = unique(ws_prefix), unique(tag_prefix)
    sc.ConfigureWorkspace(pb.WorkspaceConfig(workspace=ws, channels=["email"]))
    return ws, tag


def _identified_person(sc) -> tuple[str, str, dict[str, str]]:
    """A workspace with an identified person who chose something; the workspace, the
    person id, and the person's email and source to scan for."""
    ws, tag = _email_workspace(sc, "ei", "zi")
    pid, email = f"person-{tag}", f"erase.{tag}@distinct-{tag}.example"
    sc.Identify(workspace=ws, person_id=pid, email=email)
    sc.Subscribe(workspace=ws, person=pid, channel="email", source=f"source-{tag}")
    return ws, pid, {"email": email, "source": f"source-{tag}"}


def _anonymous_profile(sc) -> tuple[str, str, dict[str, str]]:
    """A workspace with an anonymous profile that chose something; the workspace, the
    anonymous id, and the profile's source to scan for."""
    ws, tag = _email_workspace(sc, "ea", "za")
    anon = f"anon-{tag}"
    sc.Identify(workspace=ws, anonymous_id=anon)
    sc.Subscribe(workspace=ws, person=pb.PersonRef(anonymous_id=anon), channel="email",
                 source=f"anon-source-{tag}")
    return ws, anon, {"source": f"anon-source-{tag}"}


def _wait_until_gone(srv: DurableServer, secrets: dict[str, str], seconds: float) -> list[str]:
    deadline = time.monotonic() + seconds
    while _scan(srv.data, secrets) and time.monotonic() < deadline:
        time.sleep(0.1)
    return _scan(srv.data, secrets)


@pytest.mark.deadline(120)
def test_an_anonymous_profile_a_suppression_forgets_leaves_the_disk():
    """A suppression that forgets only an anonymous profile (it has no person id, so the
    answer lists nobody) erases it like any other removal."""
    base = tempfile.mkdtemp(prefix="erasure-anon-")
    srv = DurableServer(base, extra=("--erasure-deadline", "2")).start()
    try:
        ws, anon, secrets = _anonymous_profile(srv.client)
        assert srv.terminate() == 0  # a snapshot holding it too
        srv.start()
        assert _scan(srv.data, secrets)
        r = srv.client.SuppressIdentifiers(workspace=ws, identifiers=[
            pb.Identifier(kind=pb.IDENTIFIER_KIND_ANONYMOUS_ID, value=anon)], reason="test")
        assert r.suppressed == 1 and list(r.forgotten_person_ids) == []
        assert _wait_until_gone(srv, secrets, 2 + 3) == []
    finally:
        srv.close()


@pytest.mark.deadline(120)
def test_an_expired_anonymous_profile_leaves_the_disk():
    """Anonymous-TTL expiry is a removal too (it emits a forget): the profile's data leaves
    every file within the erasure deadline after it expires."""
    base = tempfile.mkdtemp(prefix="erasure-ttl-")
    srv = DurableServer(base, extra=("--erasure-deadline", "2", "--anonymous-ttl", "1")).start()
    try:
        ws, anon, secrets = _anonymous_profile(srv.client)
        assert _scan(srv.data, secrets)
        # Expiry within ~1 s of the TTL (the sweep runs every TTL), then the deadline.
        assert _wait_until_gone(srv, secrets, 1 + 1 + 2 + 3) == []
        expect_code(NOT_FOUND, lambda: srv.client.GetProfile(
            workspace=ws, person=pb.PersonRef(anonymous_id=anon)))
    finally:
        srv.close()


@pytest.mark.deadline(120)
def test_suppressed_identifiers_are_kept_only_as_keyed_hashes():
    """A suppression keeps only keyed hashes on disk: neither the identifiers a forget with
    also_suppress suppressed nor one suppressed on its own appear in any file."""
    base = tempfile.mkdtemp(prefix="erasure-suppress-")
    srv = DurableServer(base, extra=("--erasure-deadline", "2")).start()
    try:
        sc = srv.client
        ws, tag = _email_workspace(sc, "es", "zs")
        pid, email, phone = f"person-{tag}", f"held.{tag}@distinct-{tag}.example", "+4915198765432"
        alone = f"never.held.{tag}@distinct-{tag}.example"
        sc.Identify(workspace=ws, person_id=pid, email=email, phone=phone)
        sc.SuppressIdentifiers(workspace=ws, identifiers=[
            pb.Identifier(kind=pb.IDENTIFIER_KIND_EMAIL, value=alone)], reason="complaint")
        sc.ForgetPerson(workspace=ws, person=pid, also_suppress=True, wait_for_erasure=True,
                        timeout=30)
        expect_code(FAILED_PRECONDITION, lambda: sc.Identify(workspace=ws, person_id="x" + tag,
                                                             email=email))
        assert srv.terminate() == 0  # and the final snapshot
        secrets = {"email": email, "phone": phone, "suppressed email": alone}
        assert _scan(srv.data, secrets) == []
    finally:
        srv.close()


@pytest.mark.deadline(120)
def test_a_suppressions_reason_leaves_with_the_person_it_forgot():
    """A suppression that forgets someone stays in the log as their tombstone, which holds
    the person id and nothing else (SPEC §4): the reason the caller wrote (here naming the
    person) leaves within the erasure deadline, without a restart."""
    base = tempfile.mkdtemp(prefix="erasure-reason-")
    srv = DurableServer(base, extra=("--erasure-deadline", "2")).start()
    try:
        sc = srv.client
        ws, tag = _email_workspace(sc, "esr", "zr")
        email = f"asked.{tag}@distinct-{tag}.example"
        sc.Identify(workspace=ws, person_id=f"person-{tag}", email=email)
        reason = f"erasure request by {email} on ticket {tag}"
        r = sc.SuppressIdentifiers(workspace=ws, identifiers=[
            pb.Identifier(kind=pb.IDENTIFIER_KIND_EMAIL, value=email)], reason=reason)
        assert list(r.forgotten_person_ids) == [f"person-{tag}"]
        secrets = {"email": email, "reason": reason}
        assert _wait_until_gone(srv, secrets, 2 + 3) == []
        call = pb_grpc.SubscriptionCenterStub(srv.channel).WatchChanges(
            pb.WatchRequest(workspace=ws, from_oldest=True), metadata=sc.metadata, timeout=10)
        first = next(iter(call))  # the identify before it is erased: the tombstone is first
        call.cancel()
        assert (first.action, first.person_id) == ("forget", f"person-{tag}")
    finally:
        srv.close()


@pytest.mark.deadline(120)
def test_sigterm_right_after_a_forget_leaves_no_trace():
    """An erasure waits ~100 ms so a burst of forgets shares one compaction; a SIGTERM in
    that pause stopped the server with the person still in the log (until its next start),
    so a stopped server's directory, or a backup copied from it, held them. The pending
    erasure now runs before the final snapshot."""
    base = tempfile.mkdtemp(prefix="erasure-sigterm-")
    srv = DurableServer(base, extra=("--erasure-deadline", "60")).start()
    try:
        sc = srv.client
        ws, _ = _email_workspace(sc, "est", "zt")
        secrets = {}
        for i, how in enumerate(("forget", "suppress")):
            tag = unique("zt")
            pid, email = f"person-{tag}", f"stop.{tag}@distinct-{tag}.example"
            sc.Identify(workspace=ws, person_id=pid, email=email)
            sc.Unsubscribe(workspace=ws, person=pid, channel="email", source=f"src-{tag}")
            secrets.update({f"email {i}": email, f"source {i}": f"src-{tag}"})
            if how == "forget":
                sc.ForgetPerson(workspace=ws, person=pid)
            else:
                reason = f"asked by {email}"
                secrets[f"reason {i}"] = reason
                sc.SuppressIdentifiers(workspace=ws, identifiers=[
                    pb.Identifier(kind=pb.IDENTIFIER_KIND_EMAIL, value=email)], reason=reason)
        assert srv.terminate() == 0  # at once, within the erasure's pause
        assert _scan(srv.data, secrets) == []
    finally:
        srv.close()


def _find_erased(directory: str, receipts: str, *flags: str) -> subprocess.CompletedProcess:
    ctl = str(support.binary("subcenterctl"))
    return subprocess.run([ctl, "find-erased", directory, "-", *flags], input=receipts,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.deadline(180)
def test_find_erased_names_who_a_restored_backup_brings_back():
    """A backup taken before a forget brings the person back when restored; the receipts the
    privacy officer kept tell who (`subcenterctl find-erased`), so they can be forgotten
    again. A person made again under the same id after the forget is someone new."""
    import shutil
    base = tempfile.mkdtemp(prefix="find-erased-")
    srv = DurableServer(base).start()
    restored_srv = None
    try:
        sc = srv.client
        ws = unique("fe")
        sc.ConfigureWorkspace(pb.WorkspaceConfig(workspace=ws, channels=["email"]))
        gone, again, keep = unique("gone"), unique("again"), unique("keep")
        anon = unique("anon")
        for p in (gone, again, keep):
            sc.Identify(workspace=ws, person_id=p, email=f"{p}@example.com")
        sc.Identify(workspace=ws, anonymous_id=anon)
        # The backup: a stopped server's directory (SIGTERM writes a final snapshot).
        assert srv.terminate() == 0
        backup = os.path.join(base, "backup")
        shutil.copytree(srv.data, backup)
        srv.start()
        sc = srv.client
        receipts = [sc.ForgetPerson(workspace=ws, person=gone, wait_for_erasure=True,
                                    timeout=60).receipt,
                    sc.ForgetPerson(workspace=ws, person=pb.PersonRef(anonymous_id=anon),
                                    wait_for_erasure=True, timeout=60).receipt,
                    sc.ForgetPerson(workspace=ws, person=again, wait_for_erasure=True,
                                    timeout=60).receipt]
        time.sleep(0.01)  # the new `again` is created after its erasure, to the millisecond
        sc.Identify(workspace=ws, person_id=again, email=f"{again}@example.com")
        text = "# receipts kept by the privacy officer\n\n" + "\n".join(receipts) + "\n"

        # A running server's directory is refused: its files change while they are read.
        busy = _find_erased(srv.data, text)
        assert busy.returncode == 2 and "running" in busy.stderr, busy.stdout + busy.stderr
        assert srv.terminate() == 0
        # The live data: no one is back (the new `again` is someone new).
        live = _find_erased(srv.data, text)
        assert live.returncode == 0, live.stdout + live.stderr
        assert "3 receipt(s): no one they name is in" in live.stdout, live.stdout

        # Restored from the backup, all three are back, and nothing in it changed.
        restored = os.path.join(base, "restored")
        shutil.copytree(backup, restored)
        before = {f: open(os.path.join(restored, f), "rb").read() for f in os.listdir(restored)}
        found = _find_erased(restored, text)
        assert found.returncode == 1, found.stdout + found.stderr
        assert f"line 3: BACK: person {gone} of workspace {ws}" in found.stdout, found.stdout
        assert f"line 4: BACK: anonymous profile {anon} of workspace {ws}" in found.stdout
        assert f"line 5: BACK: person {again} of workspace {ws}" in found.stdout
        assert keep not in found.stdout
        assert {f: open(os.path.join(restored, f), "rb").read()
                for f in os.listdir(restored)} == before
        as_json = json.loads(_find_erased(restored, text, "--json").stdout)
        assert as_json == {"receipts": 3, "invalid_lines": [], "back": [
            {"line": 3, "workspace": ws, "person_id": gone},
            {"line": 4, "workspace": ws, "anonymous_id": anon},
            {"line": 5, "workspace": ws, "person_id": again}]}

        # A line that is not a receipt of this data's secret is named, and fails the check.
        body, sig = receipts[0].split(".")
        forged = body[:-2] + ("A" if body[-2] != "A" else "B") + body[-1] + "." + sig
        bad = _find_erased(srv.data, forged + "\n" + receipts[1] + "\n")
        assert bad.returncode == 1 and "line 1: INVALID" in bad.stdout, bad.stdout + bad.stderr
        assert json.loads(_find_erased(srv.data, forged + "\n", "--json").stdout)[
            "invalid_lines"] == [1]

        # Forgotten again on the restored data, no one is back.
        restored_srv = DurableServer(base)
        restored_srv.data = restored
        restored_srv.start()
        rc = restored_srv.client
        for ref in (gone, pb.PersonRef(anonymous_id=anon), again):
            rc.ForgetPerson(workspace=ws, person=ref, wait_for_erasure=True, timeout=60)
        assert rc.GetProfile(workspace=ws, person=keep).email == f"{keep}@example.com"
        assert restored_srv.terminate() == 0
        done = _find_erased(restored, text)
        assert done.returncode == 0, done.stdout + done.stderr

        # A receipts file that cannot be read is refused before anything is read.
        ctl = str(support.binary("subcenterctl"))
        unread = subprocess.run([ctl, "find-erased", restored, os.path.join(base, "missing.txt")],
                                capture_output=True, text=True, timeout=60)
        assert unread.returncode == 2 and "cannot read" in unread.stderr, unread.stderr

        # No secret.key: nothing to tell whose hashes they are.
        os.mkdir(os.path.join(base, "empty"))
        none = _find_erased(os.path.join(base, "empty"), text)
        assert none.returncode == 2 and "secret.key" in none.stderr, none.stdout + none.stderr
    finally:
        srv.close()
        if restored_srv is not None:
            restored_srv.close()
