"""Concurrency (issue 3 tests): 8 threads change and check the same 50 persons at once; each
thread owns one channel's keys (so "the last acknowledged change" of a key is well defined:
completion order within that thread) while every thread checks every person. Each thread
reads its own writes; the final state equals the last acknowledged change per key."""

import random
import threading
import time

import grpc
import pytest

from interop_support import make_channel
from sc_support import (TOKENS, Client, effective_map, entry_states, limit, pb, pb_grpc,
                        reason_name)

THREADS = 8
PERSONS = [f"p{i:02d}" for i in range(50)]
ITERATIONS = 40  # per thread: one change, two checks; a 50-person batch every 10
BUDGET = 60.0  # seconds for all threads


@pytest.mark.deadline(120)
def test_concurrent_changes_and_checks_end_in_the_last_acknowledged_state(sc):
    channels = [f"c{i}" for i in range(THREADS)]
    ws = sc.workspace(channels=channels)
    for pid in PERSONS:
        sc.person(ws, pid)

    last: dict[tuple[str, str], str] = {}  # (channel, person) → SUBSCRIBED / UNSUBSCRIBED
    failures: list[str] = []
    lock = threading.Lock()
    start_gate = threading.Barrier(THREADS)
    deadline = time.monotonic() + BUDGET

    def fail(msg):
        with lock:
            failures.append(msg)

    def worker(index: int):
        rng = random.Random(1000 + index)
        own = channels[index]
        grpc_channel = make_channel(sc.port)
        client = Client(grpc_channel, TOKENS["sc-root"])
        mine: dict[str, str] = {}
        try:
            start_gate.wait(timeout=30)
            for it in range(ITERATIONS):
                if time.monotonic() > deadline:
                    fail(f"thread {index}: out of time at iteration {it}")
                    return
                pid = rng.choice(PERSONS)
                subscribe = rng.random() < 0.5
                method = client.Subscribe if subscribe else client.Unsubscribe
                resp = method(workspace=ws, person=pid, channel=own, source=f"t{index}-{it}")
                state = "SUBSCRIBED" if subscribe else "UNSUBSCRIBED"
                mine[pid] = state
                got = entry_states(resp).get((own, ""))
                if got != state:
                    fail(f"thread {index} it {it}: {method.__name__}({pid}, {own}) answered "
                         f"entry {got}, wanted {state}")
                # read your own write: nobody else writes (own, pid)
                d = client.CheckDelivery(workspace=ws, person=pid, channel=own)
                want = (True, "SUBSCRIBED") if subscribe else (False, "CHANNEL_UNSUBSCRIBED")
                if (d.allowed, reason_name(d.reason)) != want or d.person_id != pid:
                    fail(f"thread {index} it {it}: check({pid}, {own}) after {state} gave "
                         f"({d.allowed}, {reason_name(d.reason)}, {d.person_id!r})")
                # anyone's key, written concurrently by another thread
                other_pid, other_ch = rng.choice(PERSONS), rng.choice(channels)
                d = client.CheckDelivery(workspace=ws, person=other_pid, channel=other_ch)
                if (d.allowed, reason_name(d.reason)) not in \
                        ((True, "SUBSCRIBED"), (False, "CHANNEL_UNSUBSCRIBED")) \
                        or d.person_id != other_pid:
                    fail(f"thread {index}: check({other_pid}, {other_ch}) gave "
                         f"({d.allowed}, {reason_name(d.reason)}, {d.person_id!r})")
                if it % 10 == 5:
                    batch = client.CheckDeliveryBatch(workspace=ws, channel=rng.choice(channels),
                                                      persons=PERSONS, timeout=20)
                    ids = [x.person_id for x in batch.decisions]
                    if ids != PERSONS:
                        fail(f"thread {index}: batch answered in order {ids[:5]}...")
                    bad = [(x.allowed, reason_name(x.reason)) for x in batch.decisions
                           if (x.allowed, reason_name(x.reason)) not in
                           ((True, "SUBSCRIBED"), (False, "CHANNEL_UNSUBSCRIBED"))]
                    if bad:
                        fail(f"thread {index}: batch decisions {bad[:5]}")
        except Exception as e:  # an RPC error or a broken barrier
            fail(f"thread {index}: {type(e).__name__}: {e}")
        finally:
            with lock:
                for pid, state in mine.items():
                    last[(own, pid)] = state
            grpc_channel.close()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=max(1.0, deadline - time.monotonic() + 30))
    assert not any(t.is_alive() for t in threads), "a worker thread did not finish"
    assert not failures, f"{len(failures)} failures, first: {failures[:10]}"
    assert len(last) > THREADS * 10

    mismatches = []
    for pid in PERSONS:
        prefs = sc.root.GetPreferences(workspace=ws, person=pid)
        states = entry_states(prefs)
        eff = effective_map(prefs)
        want = {(ch, ""): st for (ch, p), st in last.items() if p == pid}
        if states != want:
            mismatches.append(f"{pid}: entries {states}, wanted {want}")
        for ch in channels:
            st = want.get((ch, ""), "SUBSCRIBED")
            w = (True, "SUBSCRIBED") if st == "SUBSCRIBED" else (False, "CHANNEL_UNSUBSCRIBED")
            if eff.get((ch, "")) != w:
                mismatches.append(f"{pid}/{ch}: effective {eff.get((ch, ''))}, wanted {w}")
    assert not mismatches, f"{len(mismatches)} mismatches, first: {mismatches[:10]}"


@pytest.mark.deadline(60)
def test_concurrent_recorded_sends_never_exceed_the_limit(sc):
    """record_send counts atomically with the check: 8 threads × 10 recorded sends to one
    person under a limit of 25 → exactly 25 allowed."""
    ws = sc.workspace(limits=[limit("email", 25, 3600)])
    sc.person(ws, "y")
    allowed: list[int] = []
    errors: list[str] = []
    lock = threading.Lock()
    start_gate = threading.Barrier(THREADS)

    def worker():
        grpc_channel = make_channel(sc.port)
        client = Client(grpc_channel, TOKENS["sc-root"])
        n = 0
        try:
            start_gate.wait(timeout=30)
            for _ in range(10):
                d = client.CheckDelivery(workspace=ws, person="y", channel="email",
                                         record_send=True)
                if d.allowed:
                    n += 1
                elif reason_name(d.reason) != "MESSAGE_LIMIT_REACHED":
                    raise AssertionError(f"denied with {reason_name(d.reason)}")
        except Exception as e:
            with lock:
                errors.append(f"{type(e).__name__}: {e}")
        finally:
            with lock:
                allowed.append(n)
            grpc_channel.close()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=45)
    assert not any(t.is_alive() for t in threads), "a worker thread did not finish"
    assert not errors, errors[:5]
    assert sum(allowed) == 25, f"allowed per thread {allowed}, total {sum(allowed)}, limit 25"


def _outcome(future) -> tuple:
    try:
        return ("OK", future.result(timeout=30))
    except grpc.RpcError as e:
        return (e.code().name, e.details())


@pytest.mark.deadline(90)
def test_racing_identity_claims_have_one_winner_and_suppression_always_wins(sc):
    """SPEC §3 Identify and SuppressIdentifiers under races, calls sent at once on 8
    connections (DESIGN: a write validates against the committed state plus the commands in
    flight):
    - 8 persons claiming one new email: exactly one is created with it, the others are
      ALREADY_EXISTS and not created;
    - 4 persons merging one anonymous profile: exactly one gets it (with its choices), the
      others are ALREADY_EXISTS;
    - an Identify and a suppression of its email: whichever comes first, the email ends up
      suppressed and naming no one, and the person does not exist (refused, or forgotten)."""
    channels = [make_channel(sc.port) for _ in range(THREADS)]
    stubs = [pb_grpc.SubscriptionCenterStub(ch) for ch in channels]
    md = [("authorization", "Bearer " + TOKENS["sc-root"])]
    ws = sc.workspace()
    c = sc.root
    failures = []
    try:
        for rnd in range(20):
            email = f"race{rnd}@example.com"
            got = [_outcome(stubs[i].Identify.future(
                pb.IdentifyRequest(workspace=ws, person_id=f"e{rnd}-{i}", email=email),
                metadata=md, timeout=30)) for i in range(THREADS)]
            winners = [i for i, r in enumerate(got) if r[0] == "OK"]
            if len(winners) != 1 or {r[0] for r in got} != {"OK", "ALREADY_EXISTS"}:
                failures.append(("email", rnd, [r[0] for r in got]))
                continue
            holder = c.GetProfile(workspace=ws, person=pb.PersonRef(email=email)).person_id
            if holder != f"e{rnd}-{winners[0]}":
                failures.append(("email holder", rnd, holder, winners))
            for i in set(range(THREADS)) - set(winners):
                try:
                    c.GetProfile(workspace=ws, person=f"e{rnd}-{i}")
                    failures.append(("email loser created", rnd, i))
                except grpc.RpcError:
                    pass

            anon = f"race-cookie-{rnd}"
            c.Identify(workspace=ws, anonymous_id=anon)
            c.Unsubscribe(workspace=ws, person=pb.PersonRef(anonymous_id=anon), channel="sms")
            got = [_outcome(stubs[i].Identify.future(
                pb.IdentifyRequest(workspace=ws, person_id=f"m{rnd}-{i}", anonymous_id=anon),
                metadata=md, timeout=30)) for i in range(4)]
            winners = [i for i, r in enumerate(got) if r[0] == "OK"]
            if len(winners) != 1 or {r[0] for r in got} != {"OK", "ALREADY_EXISTS"}:
                failures.append(("merge", rnd, [r[0] for r in got]))
                continue
            winner = f"m{rnd}-{winners[0]}"
            if c.GetProfile(workspace=ws, person=pb.PersonRef(anonymous_id=anon)).person_id \
                    != winner or entry_states(c.GetPreferences(workspace=ws, person=winner)) \
                    != {("sms", ""): "UNSUBSCRIBED"}:
                failures.append(("merge result", rnd, winner))

            email = f"sup{rnd}@example.com"
            identify = stubs[rnd % THREADS].Identify.future(
                pb.IdentifyRequest(workspace=ws, person_id=f"s{rnd}", email=email),
                metadata=md, timeout=30)
            suppress = stubs[(rnd + 1) % THREADS].SuppressIdentifiers.future(
                pb.SuppressRequest(workspace=ws, identifiers=[
                    pb.Identifier(kind=pb.IDENTIFIER_KIND_EMAIL, value=email)]),
                metadata=md, timeout=30)
            got_i, got_s = _outcome(identify), _outcome(suppress)
            if got_i[0] not in ("OK", "FAILED_PRECONDITION") or got_s[0] != "OK":
                failures.append(("suppress race", rnd, got_i[0], got_s[0]))
                continue
            forgotten = list(got_s[1].forgotten_person_ids)
            if forgotten != ([f"s{rnd}"] if got_i[0] == "OK" else []):
                failures.append(("forgotten", rnd, got_i[0], forgotten))
            try:
                c.GetProfile(workspace=ws, person=f"s{rnd}")
                failures.append(("suppressed email's claimant exists", rnd, got_i[0]))
            except grpc.RpcError:
                pass
            d = c.CheckDelivery(workspace=ws, person=pb.PersonRef(email=email), channel="email")
            if reason_name(d.reason) != "SUPPRESSED":
                failures.append(("decision", rnd, reason_name(d.reason)))
    finally:
        for ch in channels:
            ch.close()
    assert not failures, f"{len(failures)} races went wrong, first: {failures[:5]}"
