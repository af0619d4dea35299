"""Helpers of the subscription-center tests (test_sc_*.py), written from SPEC §1–3 and §5.

One `subcenterd` per test module (conftest's `_sc_slot` / `sc` fixtures), started with a tokens
file of freshly generated tokens (TOKEN_SPECS); each test configures its own workspaces with
unique ids through the `*` admin token, so tests never see each other's state.

    c = sc.root                                  # a Client with the `*` admin+pii token
    ws = sc.workspace(topics=[topic("news", "sub")])
    c.Identify(workspace=ws, person_id="p1", email="p1@example.com")
    c.Subscribe(workspace=ws, person="p1", channel="email")     # person= str → person_id
    expect_code(INVALID, lambda: c.Subscribe(workspace=ws, person="p1"), field="channel")
"""

from __future__ import annotations

import atexit
import base64
import hashlib
import itertools
import json
import os
import secrets
import shutil
import tempfile
import time
from typing import Callable, Iterable, Optional

import grpc

from interop_support import RPC_TIMEOUT, ServerSlot, free_port, make_channel
from subcenter_pb.subcenter.v1 import subcenter_pb2 as pb  # noqa: F401
from subcenter_pb.subcenter.v1 import subcenter_pb2_grpc as pb_grpc

OK = grpc.StatusCode.OK
INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
ALREADY_EXISTS = grpc.StatusCode.ALREADY_EXISTS
FAILED_PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
PERMISSION_DENIED = grpc.StatusCode.PERMISSION_DENIED

DEFAULT_CHANNELS = ("email", "sms", "push", "in_app")
ERASURE_DEADLINE_MS = 60_000  # the server runs with the default --erasure-deadline (60 s)

SERVICE = "subcenter.v1.SubscriptionCenter"

# --------------------------------------------------------------------------------------------
# Tokens: name → (workspace, scopes). The tokens themselves are random per test session.

TOKEN_SPECS: dict[str, tuple[str, list[str]]] = {
    "sc-root": ("*", ["admin", "pii"]),
    "sc-admin-nopii": ("*", ["admin"]),
    "sc-read": ("*", ["read"]),
    "sc-read-pii": ("*", ["read", "pii"]),
    "sc-write": ("*", ["write"]),
    "sc-write-pii": ("*", ["write", "pii"]),
    "sc-check": ("*", ["check"]),
    "sc-override": ("*", ["override"]),
    "sc-privacy": ("*", ["privacy"]),
    "sc-pii": ("*", ["pii"]),
    "sc-wsa-admin": ("ws-a", ["admin", "pii"]),
    "sc-wsa-read": ("ws-a", ["read"]),
}
TOKENS: dict[str, str] = {name: "sct_" + secrets.token_urlsafe(24) for name in TOKEN_SPECS}

# The single-scope tokens, by scope.
SCOPE_TOKENS = {"read": "sc-read", "write": "sc-write", "check": "sc-check",
                "override": "sc-override", "privacy": "sc-privacy", "pii": "sc-pii"}


def write_tokens_file(directory: str) -> str:
    entries = [{"name": name, "sha256": hashlib.sha256(TOKENS[name].encode()).hexdigest(),
                "workspace": ws, "scopes": scopes}
               for name, (ws, scopes) in TOKEN_SPECS.items()]
    path = os.path.join(directory, "tokens.json")
    with open(path, "w") as f:
        json.dump(entries, f, indent=1)
    return path


def server_args() -> list[str]:
    """Arguments of a subcenterd with a fresh data directory and the tokens file."""
    base = tempfile.mkdtemp(prefix="sc-test-")
    atexit.register(shutil.rmtree, base, True)
    data = os.path.join(base, "data")
    return ["--admin-listen", f"127.0.0.1:{free_port()}", "--data", data,
            "--tokens", write_tokens_file(base)]


def server_slot() -> ServerSlot:
    """A module's subcenterd (restarted with a fresh data directory if a test killed it)."""
    return ServerSlot("subcenterd", server_args)


# --------------------------------------------------------------------------------------------
# Requests

REQUEST_TYPES = {
    "Identify": pb.IdentifyRequest,
    "GetProfile": pb.GetProfileRequest,
    "Subscribe": pb.PreferenceRequest,
    "Unsubscribe": pb.PreferenceRequest,
    "UnsubscribeAll": pb.GlobalRequest,
    "Resubscribe": pb.GlobalRequest,
    "GetPreferences": pb.GetPreferencesRequest,
    "CheckDelivery": pb.DeliveryRequest,
    "CheckDeliveryBatch": pb.DeliveryBatchRequest,
    "OverrideForImportantMessage": pb.OverrideRequest,
    "ForgetPerson": pb.ForgetRequest,
    "SuppressIdentifiers": pb.SuppressRequest,
    "UnsuppressIdentifiers": pb.SuppressRequest,
    "GetHistory": pb.HistoryRequest,
    "ConfigureWorkspace": pb.WorkspaceConfig,
    "GetWorkspace": pb.GetWorkspaceRequest,
}


def ref_id(value: str) -> pb.PersonRef:
    return pb.PersonRef(person_id=value)


def ref_email(value: str) -> pb.PersonRef:
    return pb.PersonRef(email=value)


def ref_phone(value: str) -> pb.PersonRef:
    return pb.PersonRef(phone=value)


def ref_anon(value: str) -> pb.PersonRef:
    return pb.PersonRef(anonymous_id=value)


def as_ref(person) -> pb.PersonRef:
    if isinstance(person, pb.PersonRef):
        return person
    if isinstance(person, str):
        return pb.PersonRef(person_id=person)
    raise TypeError(f"not a person reference: {person!r}")


_KINDS = {"person_id": pb.IDENTIFIER_KIND_PERSON_ID, "email": pb.IDENTIFIER_KIND_EMAIL,
          "phone": pb.IDENTIFIER_KIND_PHONE, "anonymous_id": pb.IDENTIFIER_KIND_ANONYMOUS_ID}


def ident(kind: str, value: str) -> pb.Identifier:
    return pb.Identifier(kind=_KINDS[kind], value=value)


def topic(tid: str, default: str = "sub", name: Optional[str] = None,
          description: str = "") -> pb.Topic:
    state = {"sub": pb.TOPIC_DEFAULT_SUBSCRIBED, "unsub": pb.TOPIC_DEFAULT_UNSUBSCRIBED,
             "unspecified": pb.TOPIC_DEFAULT_UNSPECIFIED}[default]
    return pb.Topic(id=tid, name=name if name is not None else tid.title(),
                    description=description, default_state=state)


def limit(channel: str, max_messages: int, window_seconds: int) -> pb.MessageLimit:
    return pb.MessageLimit(channel=channel, max_messages=max_messages,
                           window_seconds=window_seconds)


class Client:
    """SubscriptionCenter stub with fixed metadata and a timeout on every call.

    `client.Method(request)` or `client.Method(field=value, ...)`; `person=` and `persons=`
    accept PersonRefs or plain strings (person ids)."""

    def __init__(self, channel: grpc.Channel, token: Optional[str] = None,
                 metadata: Optional[list] = None):
        self._stub = pb_grpc.SubscriptionCenterStub(channel)
        if metadata is None:
            metadata = [("authorization", "Bearer " + token)] if token else []
        self.metadata = metadata

    def __getattr__(self, name: str):
        if name not in REQUEST_TYPES:
            raise AttributeError(name)
        rpc = getattr(self._stub, name)
        req_type = REQUEST_TYPES[name]

        def invoke(request=None, *, timeout: float = RPC_TIMEOUT, metadata=None, **fields):
            if request is None:
                if "person" in fields:
                    fields["person"] = as_ref(fields["person"])
                if "persons" in fields:
                    fields["persons"] = [as_ref(p) for p in fields["persons"]]
                request = req_type(**fields)
            return rpc(request, timeout=timeout,
                       metadata=self.metadata if metadata is None else metadata)

        invoke.__name__ = name
        return invoke


_counter = itertools.count(1)


def unique(prefix: str = "ws") -> str:
    """A fresh id matching [a-z0-9_-]{1,64}."""
    return f"{prefix}-{os.getpid() % 100000}-{next(_counter)}-{secrets.token_hex(3)}"


class Env:
    """What a test gets from the `sc` fixture: the server, clients per token, workspaces."""

    def __init__(self, server):
        self.server = server
        self.port = server.port
        self.channel = make_channel(server.port, unlimited=True)
        self._clients: dict[str, Client] = {}

    def close(self) -> None:
        self.channel.close()

    def client(self, name: str = "sc-root") -> Client:
        if name not in self._clients:
            self._clients[name] = Client(self.channel, TOKENS[name])
        return self._clients[name]

    def raw_client(self, metadata: list) -> Client:
        return Client(self.channel, metadata=metadata)

    @property
    def root(self) -> Client:
        return self.client("sc-root")

    def config(self, ws: str, channels: Iterable[str] = DEFAULT_CHANNELS,
               topics: Iterable[pb.Topic] = (), limits: Iterable[pb.MessageLimit] = (),
               allow_override: bool = False) -> pb.WorkspaceConfig:
        return pb.WorkspaceConfig(workspace=ws, channels=list(channels), topics=list(topics),
                                  limits=list(limits), allow_important_override=allow_override)

    def workspace(self, channels: Iterable[str] = DEFAULT_CHANNELS,
                  topics: Iterable[pb.Topic] = (), limits: Iterable[pb.MessageLimit] = (),
                  allow_override: bool = False, ws: Optional[str] = None) -> str:
        """Configures a fresh workspace with the `*` admin token and returns its id."""
        ws = ws or unique("ws")
        self.root.ConfigureWorkspace(self.config(ws, channels, topics, limits, allow_override))
        return ws

    def person(self, ws: str, person_id: Optional[str] = None, **identifiers) -> pb.Profile:
        """Identifies a person (fresh id unless given) with the root token."""
        return self.root.Identify(workspace=ws, person_id=person_id or unique("p"),
                                  **identifiers)


# --------------------------------------------------------------------------------------------
# Assertions


def expect_not_found_for_person_calls(c: Client, ws: str, ref, topic: Optional[str] = None):
    """The reads and writes naming one person (`ref`) all fail NOT_FOUND; `topic` (a
    configured topic) adds Unsubscribe and Resubscribe."""
    calls = {
        "GetProfile": lambda: c.GetProfile(workspace=ws, person=ref),
        "GetPreferences": lambda: c.GetPreferences(workspace=ws, person=ref),
        "GetHistory": lambda: c.GetHistory(workspace=ws, person=ref),
        "Subscribe": lambda: c.Subscribe(workspace=ws, person=ref, channel="email"),
        "UnsubscribeAll": lambda: c.UnsubscribeAll(workspace=ws, person=ref),
        "ForgetPerson": lambda: c.ForgetPerson(workspace=ws, person=ref),
    }
    if topic is not None:
        calls["Unsubscribe"] = lambda: c.Unsubscribe(workspace=ws, person=ref, topic=topic)
        calls["Resubscribe"] = lambda: c.Resubscribe(workspace=ws, person=ref)
    for rpc, thunk in calls.items():
        try:
            expect_code(NOT_FOUND, thunk)
        except AssertionError as e:
            raise AssertionError(f"{rpc}({ref}): {e}") from None


def expect_code(code: grpc.StatusCode, thunk: Callable, field=None) -> grpc.RpcError:
    """Runs `thunk`, which must fail with `code`; with `field` (a name or a tuple of accepted
    names) the status message must name it."""
    try:
        result = thunk()
    except grpc.RpcError as e:
        assert e.code() == code, \
            f"expected {code.name}, got {e.code().name}: {e.details()!r}"
        if field is not None:
            names = (field,) if isinstance(field, str) else tuple(field)
            assert any(n in (e.details() or "") for n in names), \
                f"{code.name} message {e.details()!r} names none of {names}"
        return e
    raise AssertionError(f"expected {code.name}, the call succeeded with {result!r}")


def reason_name(reason: int) -> str:
    """The DecisionReason name without its prefix: SUBSCRIBED, GLOBAL_UNSUBSCRIBED..."""
    return pb.DecisionReason.Name(reason).removeprefix("DECISION_REASON_")


def assert_decision(decision, allowed: bool, reason: str, person_id: Optional[str] = None,
                    what: str = "") -> None:
    got = (decision.allowed, reason_name(decision.reason))
    assert got == (allowed, reason), \
        f"{what}: wanted (allowed={allowed}, {reason}), got (allowed={got[0]}, {got[1]})"
    if person_id is not None:
        assert decision.person_id == person_id, \
            f"{what}: decision person_id {decision.person_id!r}, wanted {person_id!r}"


def state_name(state: int) -> str:
    return pb.PreferenceState.Name(state).removeprefix("PREFERENCE_STATE_")


def entries_map(prefs) -> dict:
    """{(channel, topic): (STATE, source, notice_version)}; fails on a duplicated key."""
    out = {}
    for e in prefs.entries:
        key = (e.channel, e.topic)
        assert key not in out, f"entry {key} listed twice in {prefs}"
        out[key] = (state_name(e.state), e.source, e.notice_version)
    return out


def entry_states(prefs) -> dict:
    return {k: v[0] for k, v in entries_map(prefs).items()}


def effective_map(prefs) -> dict:
    """{(channel, topic): (allowed, REASON)}; fails on a duplicated key."""
    out = {}
    for e in prefs.effective:
        key = (e.channel, e.topic)
        assert key not in out, f"effective {key} listed twice"
        out[key] = (e.allowed, reason_name(e.reason))
    return out


def now_ms() -> int:
    return int(time.time() * 1000)


def assert_recent(ms: int, before: int, what: str = "timestamp", slack: int = 5000) -> None:
    after = now_ms()
    assert before - slack <= ms <= after + slack, \
        f"{what} {ms} is not between {before} and {after} (Unix ms)"


def tick(seconds: float = 0.015) -> None:
    """Lets the millisecond clock move on so that the next change has a later time."""
    time.sleep(seconds)


def history_tuples(resp) -> list[tuple]:
    return [(e.at, e.action, e.channel, e.topic, e.source, e.actor, e.detail)
            for e in resp.entries]


def b64url_decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def make_email(total_bytes: int, local: str = "jane") -> str:
    """An email of exactly `total_bytes` bytes: short local part, domain labels ≤ 60 bytes."""
    body = total_bytes - len(local) - 1 - len(".com")  # the domain before ".com"
    labels = []
    while body > 60:
        labels.append("d" * 50)
        body -= 51
    labels.append("d" * body)
    email = f"{local}@{'.'.join(labels)}.com"
    assert len(email.encode()) == total_bytes, (len(email), total_bytes)
    return email


def raw_unary(channel: grpc.Channel, method: str, body: bytes, metadata: list,
              timeout: float = RPC_TIMEOUT):
    """Calls `method` with hand-encoded request bytes (for what protobuf refuses to encode)."""
    call = channel.unary_unary(f"/{SERVICE}/{method}")
    return call(body, metadata=metadata, timeout=timeout)


def pb_string_field(number: int, value: bytes) -> bytes:
    assert len(value) < 128
    return bytes([(number << 3) | 2, len(value)]) + value
