"""Concurrency (issue 3 tests): 8 threads change and check the same 50 persons at once; each
thread owns one channel's keys (so "the last acknowledged change" of a key is well defined:
completion order within that thread) while every thread checks every person. Each thread
reads its own writes; the final state equals the last acknowledged change per key."""

import random
import threading
import time

import pytest

from interop_support import make_channel
from sc_support import TOKENS, Client, effective_map, entry_states, limit, reason_name

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
