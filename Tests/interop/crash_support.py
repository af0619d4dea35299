"""Helpers of the durability tests (test_durability.py): a `subcenterd` on a data directory that
outlives its processes, and writer threads that journal every change they make.

SPEC §4: a mutating RPC answers OK only once its change is durable; §2: a counted send is a
durable change like any other (a restart must not reset limits). The tests check it from the
outside: every key is owned by exactly one writer thread, which changes it sequentially, so
"the last acknowledged value" of a key is well defined. For every key the journal keeps that
value and, when the server died while a request was unanswered, the value of that request
(in flight: it may or may not have become durable). After a restart the server's state of
every key must be one of those two: an older acknowledged value is a lost write, anything
else was never sent.

Keys (each value carries a unique `source` or email so that values are distinguishable):
  ("pref", person, channel, topic)  → None | (STATE, source)           Subscribe/Unsubscribe
  ("global", person)                → (unsubscribed, source)           UnsubscribeAll/Resubscribe
  ("email", person)                 → email                            Identify
  ("exists", sender)                → bool                             Identify of a sender
  ("sends", sender)                 → counted sends on `push`          CheckDelivery record_send

The count of sends has no reader in the API, so it is read back through the limit: `push`
has a limit of LIMIT sends per day; a sender's count c is LIMIT minus the sends still allowed
(probed with record_send until MESSAGE_LIMIT_REACHED), after which the sender is full and
must stay denied through every later restart. Writers also drive their senders to the limit
themselves and expect MESSAGE_LIMIT_REACHED exactly at LIMIT.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import grpc

import interop_support as support
from interop_support import free_port, health_pb2, health_stub, make_channel
from sc_support import (TOKENS, Client, entries_map, limit, reason_name, topic,
                        write_tokens_file)
from subcenter_pb.subcenter.v1 import subcenter_pb2 as pb

CHANNELS = ("email", "sms", "push")
TOPIC = "news"
SEND_CHANNEL = "push"
LIMIT = 20                # sends on `push` per person per window
WINDOW = 86_400           # one day: nothing leaves the window during a test
# The preference keys a writer changes on each person it owns (push is left alone).
PREF_KEYS = (("email", ""), ("sms", ""), ("push", ""), ("", TOPIC), ("email", TOPIC))

# Codes a call gets when the server is gone (killed) under it or before it.
GONE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED,
        grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}

_NONE = object()  # "no request in flight"


def workspace_config(ws: str) -> pb.WorkspaceConfig:
    return pb.WorkspaceConfig(workspace=ws, channels=list(CHANNELS),
                              topics=[topic(TOPIC, "sub")],
                              limits=[limit(SEND_CHANNEL, LIMIT, WINDOW)],
                              allow_important_override=False)


def config_problems(got: pb.WorkspaceConfig, want: pb.WorkspaceConfig) -> list[str]:
    g = (list(got.channels), [(t.id, t.name, t.default_state) for t in got.topics],
         [(l.channel, l.max_messages, l.window_seconds) for l in got.limits])
    w = (list(want.channels), [(t.id, t.name, t.default_state) for t in want.topics],
         [(l.channel, l.max_messages, l.window_seconds) for l in want.limits])
    return [] if g == w else [f"workspace {want.workspace}: configuration {g}, configured {w}"]


# --------------------------------------------------------------------------------------------
# The server


class DurableServer:
    """subcenterd restarted again and again on one data directory (and one tokens file)."""

    def __init__(self, base: str, fsync: str = "always", extra: tuple = ()):
        self.base = base
        self.data = os.path.join(base, "data")
        self.tokens = write_tokens_file(base)
        self.fsync = fsync
        self.extra = list(extra)
        self.server: Optional[support.ServerProcess] = None
        self.channel: Optional[grpc.Channel] = None
        self.client: Optional[Client] = None
        self.starts = 0
        self.previous_output = ""  # the output of the last process that ended

    def _args(self) -> list[str]:
        return ["--admin-listen", f"127.0.0.1:{free_port()}", "--data", self.data,
                "--tokens", self.tokens, "--fsync", self.fsync] + self.extra

    @property
    def port(self) -> int:
        return self.server.port

    def start(self, timeout: float = 30.0) -> "DurableServer":
        """Starts it and waits until Health answers SERVING (recovery done)."""
        assert self.server is None or not self.server.alive()
        self.starts += 1
        self.server = support.launch("subcenterd", self._args(), timeout=timeout)
        self.channel = make_channel(self.server.port, unlimited=True)
        self.client = Client(self.channel, TOKENS["sc-root"])
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if not self.server.alive():
                break
            try:
                r = health_stub(self.channel).Check(health_pb2.HealthCheckRequest(service=""),
                                                    timeout=2)
                if r.status == health_pb2.HealthCheckResponse.SERVING:
                    return self
                last = f"status {r.status}"
            except grpc.RpcError as e:
                last = f"{e.code().name} {e.details()!r}"
            time.sleep(0.02)
        raise AssertionError(f"subcenterd start #{self.starts} did not answer Health SERVING "
                             f"within {timeout} s (last: {last}; "
                             f"{'running' if self.server.alive() else 'exited'})\n"
                             f"{self.server.output(limit=6000)}")

    def _forget_process(self) -> None:
        s = self.server
        s.expected_exit = True
        if s in support.LIVE_SERVERS:
            support.LIVE_SERVERS.remove(s)
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        self.previous_output = s.output(limit=8000)

    def kill9(self) -> None:
        """SIGKILL: no shutdown code runs; what was not on disk is gone."""
        s = self.server
        if s is None or s.proc is None:
            return
        s.expected_exit = True
        if s.proc.poll() is None:
            os.kill(s.proc.pid, signal.SIGKILL)
        s.proc.wait(timeout=10)
        s._join_output()
        self._forget_process()

    def terminate(self, timeout: float = 15.0) -> Optional[int]:
        """SIGTERM and wait; the exit code, or None if it had to be killed after `timeout`."""
        s = self.server
        s.expected_exit = True
        rc, killed = s.stop(timeout=timeout)
        self._forget_process()
        return None if killed else rc

    def crash_during_start(self, after: float) -> None:
        """Spawns a process and SIGKILLs it `after` seconds later, whether it is still
        recovering or already serving."""
        self.starts += 1
        s = support.ServerProcess("subcenterd", support.tls_args() + self._args())
        s.expected_exit = True
        s.spawn()
        time.sleep(after)
        if s.proc.poll() is None:
            os.kill(s.proc.pid, signal.SIGKILL)
        s.proc.wait(timeout=10)
        s._join_output()
        self.previous_output = s.output(limit=8000)

    def close(self) -> None:
        if self.server is not None and self.server.alive():
            self.kill9()
        elif self.server is not None:
            self._forget_process()

    def describe(self) -> str:
        return (f"--- output of the previous subcenterd process ---\n"
                f"{self.previous_output or '(nothing)'}")


# --------------------------------------------------------------------------------------------
# The journal


@dataclass
class Slot:
    """One key: its last acknowledged value and the value of an unanswered request."""
    acked: object
    inflight: object = _NONE
    trail: list = field(default_factory=list)  # [(cycle, value, "acked" | "in flight")]

    def ack(self, value, cycle: int) -> None:
        self.acked = value
        self.inflight = _NONE
        self._note(cycle, value, "acked")

    def send(self, value, cycle: int) -> None:
        self.inflight = value
        self._note(cycle, value, "in flight")

    def _note(self, cycle, value, what) -> None:
        self.trail.append((cycle, value, what))
        if len(self.trail) > 6:
            del self.trail[0]

    def allowed(self) -> list:
        return [self.acked] + ([self.inflight] if self.inflight is not _NONE else [])

    def judge(self, key, actual) -> Optional[str]:
        """None when `actual` is acceptable, else why not."""
        if any(actual == v for v in self.allowed()):
            return None
        older = [t for t in self.trail if t[1] == actual]
        why = (f"an older value (lost write: {older[-1][2]} in cycle {older[-1][0]})" if older
               else "a value never acknowledged nor in flight")
        pending = "" if self.inflight is _NONE else f", in flight {self.inflight!r}"
        return (f"{key}: server has {actual!r}, {why}; last acknowledged {self.acked!r}"
                f"{pending}; recent: {self.trail}")

    def resolve(self, actual) -> None:
        self.acked = actual
        self.inflight = _NONE


@dataclass
class Op:
    key: tuple
    value: object
    call: Callable
    check: Callable  # response → problem text or None
    after: Optional[Callable] = None  # run once acknowledged


class Writer:
    """One writer thread's persons, senders and journal; lives across cycles."""

    def __init__(self, index: int, ws: str, persons: list[str], seed: str,
                 rpc_timeout: float = 10.0):
        self.index = index
        self.ws = ws
        self.persons = list(persons)
        self.rng = random.Random(f"{seed}/writer{index}")
        self.rpc_timeout = rpc_timeout
        self.slots: dict[tuple, Slot] = {}
        for pid in self.persons:
            for ch, tp in PREF_KEYS:
                self.slots[("pref", pid, ch, tp)] = Slot(None)
            self.slots[("global", pid)] = Slot((False, ""))
            self.slots[("email", pid)] = Slot(initial_email(pid))
        self.send_n = 0
        self.full_senders: list[str] = []
        self._new_sender()
        self.seq = 0
        self.acked_ops = 0
        self.inflight_ops = 0
        self.inflight_kept = 0  # unanswered changes found durable after the restart
        self.inflight_lost = 0  # ... found not applied (both are correct)
        self.sends_acked = 0
        self.limit_hits = 0
        self.failures: list[str] = []

    # -- senders ----------------------------------------------------------------------------
    def sender(self) -> str:
        return f"s{self.index}-{self.send_n:05d}"

    def _new_sender(self) -> None:
        sp = self.sender()
        self.slots[("exists", sp)] = Slot(False)
        self.slots[("sends", sp)] = Slot(0)

    def _sender_full(self) -> None:
        self.full_senders.append(self.sender())
        self.send_n += 1
        self._new_sender()

    # -- operations -------------------------------------------------------------------------
    def _tag(self, cycle: int) -> str:
        self.seq += 1
        return f"w{self.index}-c{cycle}-n{self.seq}"

    def next_op(self, c: Client, cycle: int) -> Op:
        rng, ws, t = self.rng, self.ws, self.rpc_timeout
        r = rng.random()
        if r < 0.30:
            sp = self.sender()
            if not self.slots[("exists", sp)].acked:
                return Op(("exists", sp), True,
                          lambda: c.Identify(workspace=ws, person_id=sp, timeout=t),
                          lambda resp: None if resp.person_id == sp else
                          f"Identify({sp}) answered person_id {resp.person_id!r}")
            count = self.slots[("sends", sp)].acked
            if count < LIMIT:
                want, value, after = (True, "SUBSCRIBED"), count + 1, None
            else:  # the send after the last allowed one
                want, value, after = (False, "MESSAGE_LIMIT_REACHED"), count, self._limit_hit

            def check(resp, sp=sp, count=count, want=want):
                got = (resp.allowed, reason_name(resp.reason))
                if got == want:
                    return None
                return (f"CheckDelivery({sp}, push, record_send) with {count} acknowledged "
                        f"counted sends of {LIMIT} answered {got}, wanted {want}")
            return Op(("sends", sp), value,
                      lambda: c.CheckDelivery(workspace=ws, person=sp, channel=SEND_CHANNEL,
                                              record_send=True, timeout=t),
                      check, after)
        pid = rng.choice(self.persons)
        tag = self._tag(cycle)
        if r < 0.75:
            ch, tp = rng.choice(PREF_KEYS)
            subscribe = rng.random() < 0.5
            state = "SUBSCRIBED" if subscribe else "UNSUBSCRIBED"
            method = c.Subscribe if subscribe else c.Unsubscribe
            value = (state, tag)
            return Op(("pref", pid, ch, tp), value,
                      lambda: method(workspace=ws, person=pid, channel=ch, topic=tp, source=tag,
                                     timeout=t),
                      lambda resp: None if pref_value(resp, ch, tp) == value else
                      f"{method.__name__}({pid}, {ch!r}, {tp!r}, {tag}) answered "
                      f"{pref_value(resp, ch, tp)!r}")
        if r < 0.87:
            unsub = rng.random() < 0.5
            method = c.UnsubscribeAll if unsub else c.Resubscribe
            value = (unsub, tag)
            return Op(("global", pid), value,
                      lambda: method(workspace=ws, person=pid, source=tag, timeout=t),
                      lambda resp: None if (resp.global_unsubscribed, resp.global_source) == value
                      else f"{method.__name__}({pid}, {tag}) answered "
                           f"{(resp.global_unsubscribed, resp.global_source)!r}")
        email = f"{pid}.{tag}@example.com"
        return Op(("email", pid), email,
                  lambda: c.Identify(workspace=ws, person_id=pid, email=email, timeout=t),
                  lambda resp: None if (resp.person_id, resp.email) == (pid, email) else
                  f"Identify({pid}, email={email}) answered {(resp.person_id, resp.email)!r}")

    def _limit_hit(self) -> None:
        self.limit_hits += 1
        self._sender_full()

    def step(self, c: Client, cycle: int, killed: Optional[threading.Event] = None) -> bool:
        """One change, journaled; False once the writer must stop (server gone, or a failure
        recorded in `failures`)."""
        op = self.next_op(c, cycle)
        slot = self.slots[op.key]
        try:
            resp = op.call()
        except grpc.RpcError as e:
            gone = killed is not None and killed.is_set()
            if gone and e.code() in GONE:
                slot.send(op.value, cycle)  # unanswered: may or may not be durable
                self.inflight_ops += 1
                return False
            self.failures.append(
                f"writer {self.index} cycle {cycle}: {op.key} → {op.value!r} failed "
                f"{'after' if gone else 'before'} the kill: {e.code().name} {e.details()!r}")
            return False
        problem = op.check(resp)
        slot.ack(op.value, cycle)
        self.acked_ops += 1
        if op.key[0] == "sends" and op.after is None:
            self.sends_acked += 1
        if problem:
            self.failures.append(f"writer {self.index} cycle {cycle}: {problem}")
            return False
        if op.after:
            op.after()
        return True

    def run(self, port: int, cycle: int, stop: threading.Event, killed: threading.Event) -> None:
        """Writes until the server is gone (or `stop`); the body of a writer thread."""
        ch = make_channel(port)
        c = Client(ch, TOKENS["sc-root"])
        try:
            while not stop.is_set() and self.step(c, cycle, killed):
                pass
        except Exception as e:  # noqa: BLE001 — reported by the test
            self.failures.append(f"writer {self.index} cycle {cycle}: {type(e).__name__}: {e}")
        finally:
            ch.close()

    # -- verification after a restart ---------------------------------------------------------
    def verify(self, c: Client, cycle: int) -> list[str]:
        """Compares the server's state of every key with the journal; on success the journal
        takes the server's values (requests in flight are settled)."""
        problems: list[str] = []
        settled: list[tuple[Slot, object]] = []
        ws = self.ws

        def judge(key, actual):
            slot = self.slots[key]
            p = slot.judge(key, actual)
            if p:
                problems.append(p)
            else:
                settled.append((slot, actual))

        for pid in self.persons:
            try:
                prefs = c.GetPreferences(workspace=ws, person=pid)
                prof = c.GetProfile(workspace=ws, person=pid)
            except grpc.RpcError as e:
                problems.append(f"person {pid}: {e.code().name} {e.details()!r} after restart "
                                f"(identified and acknowledged before)")
                continue
            em = entries_map(prefs)
            for ch, tp in PREF_KEYS:
                judge(("pref", pid, ch, tp), entry_value(em.get((ch, tp))))
            for k in em:
                if k not in PREF_KEYS:
                    problems.append(f"person {pid}: entry {k} = {em[k]} was never written")
            judge(("global", pid), (prefs.global_unsubscribed, prefs.global_source))
            judge(("email", pid), prof.email)

        # The current sender: does it exist, how many sends are counted?
        sp = self.sender()
        try:
            c.GetProfile(workspace=ws, person=sp)
            exists = True
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.NOT_FOUND:
                problems.append(f"sender {sp}: GetProfile {e.code().name} {e.details()!r}")
                return problems
            exists = False
        judge(("exists", sp), exists)
        probed = None
        sends = self.slots[("sends", sp)]
        if exists and (sends.acked < LIMIT or sends.inflight is not _NONE):
            probed = self._probe(c, sp, problems)
            if probed is not None:
                judge(("sends", sp), probed)

        # Full senders stay at the limit (read-only check, in batches).
        for i in range(0, len(self.full_senders), 5000):
            chunk = self.full_senders[i:i + 5000]
            try:
                resp = c.CheckDeliveryBatch(workspace=ws, channel=SEND_CHANNEL, persons=chunk,
                                            record_send=False)
            except grpc.RpcError as e:
                problems.append(f"CheckDeliveryBatch of full senders: {e.code().name} "
                                f"{e.details()!r}")
                break
            for who, d in zip(chunk, resp.decisions):
                got = (d.allowed, reason_name(d.reason))
                if got != (False, "MESSAGE_LIMIT_REACHED"):
                    problems.append(f"sender {who} had {LIMIT} acknowledged counted sends on "
                                    f"push (limit {LIMIT}) but after restart CheckDelivery "
                                    f"answers {got}: the restart reset its limit")
        if problems:
            return problems
        for slot, actual in settled:
            if slot.inflight is not _NONE and slot.inflight != slot.acked:
                if actual == slot.inflight:
                    self.inflight_kept += 1
                else:
                    self.inflight_lost += 1
            slot.resolve(actual)
        if probed is not None:  # the probe filled the sender up
            self.slots[("sends", sp)].resolve(LIMIT)
            self._sender_full()
        return problems

    def _probe(self, c: Client, sp: str, problems: list[str]) -> Optional[int]:
        """The counted sends of `sp`: LIMIT minus the sends still allowed (which it counts)."""
        allowed = 0
        for _ in range(LIMIT + 1):
            try:
                d = c.CheckDelivery(workspace=self.ws, person=sp, channel=SEND_CHANNEL,
                                    record_send=True)
            except grpc.RpcError as e:
                problems.append(f"probe of {sp}: {e.code().name} {e.details()!r}")
                return None
            got = (d.allowed, reason_name(d.reason))
            if got == (True, "SUBSCRIBED"):
                allowed += 1
                continue
            if got != (False, "MESSAGE_LIMIT_REACHED"):
                problems.append(f"probe of {sp}: CheckDelivery answered {got}")
                return None
            return LIMIT - allowed
        problems.append(f"probe of {sp}: {LIMIT + 1} sends allowed with a limit of {LIMIT}")
        return None

    def stats(self) -> str:
        return (f"w{self.index}: {self.acked_ops} acked, {self.inflight_ops} in flight "
                f"({self.inflight_kept} found applied, {self.inflight_lost} not), "
                f"{self.sends_acked} counted sends, {self.limit_hits} limit hits, "
                f"{len(self.full_senders)} full senders")


def initial_email(pid: str) -> str:
    return f"{pid}@example.com"


def entry_value(entry) -> Optional[tuple]:
    """An entries_map value as journaled: (STATE, source), or None if absent."""
    if entry is None:
        return None
    state, source, notice = entry
    return (state, source) if notice == "" else (state, source, notice)


def pref_value(prefs, ch: str, tp: str) -> Optional[tuple]:
    return entry_value(entries_map(prefs).get((ch, tp)))
