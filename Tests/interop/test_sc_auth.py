"""Credentials and scopes (SPEC §5): every RPC allowed with its scope (and admin), refused with
PERMISSION_DENIED with every other single scope; workspace-bound tokens; UNAUTHENTICATED for
missing, unknown and malformed credentials; the Bearer scheme case-insensitively; Health open."""

import time

import grpc

import pytest

from interop_support import RPC_TIMEOUT, RawH2, grpc_frame, health_pb2, health_stub
from sc_support import (INVALID, NOT_FOUND, PERMISSION_DENIED, SCOPE_TOKENS, TOKENS, UNAUTHENTICATED,
                        entries_map, expect_code, ident, pb, unique)


# RPC → (scope it needs, call(sc, ws, client)). Each call prepares what it needs with the root
# token, so that it can succeed when the client is allowed.
def _person(sc, ws):
    pid = unique("p")
    sc.person(ws, pid)
    return pid


CALLS = {
    "GetProfile": ("read", lambda sc, ws, c: c.GetProfile(workspace=ws, person=_person(sc, ws))),
    "GetPreferences": ("read", lambda sc, ws, c: c.GetPreferences(workspace=ws,
                                                                  person=_person(sc, ws))),
    "GetHistory": ("read", lambda sc, ws, c: c.GetHistory(workspace=ws, person=_person(sc, ws))),
    "GetWorkspace": ("read", lambda sc, ws, c: c.GetWorkspace(workspace=ws)),
    "Identify": ("write", lambda sc, ws, c: c.Identify(workspace=ws, person_id=unique("p"))),
    "Subscribe": ("write", lambda sc, ws, c: c.Subscribe(workspace=ws, person=_person(sc, ws),
                                                         channel="email")),
    "Unsubscribe": ("write", lambda sc, ws, c: c.Unsubscribe(workspace=ws, person=_person(sc, ws),
                                                             channel="email")),
    "UnsubscribeAll": ("write", lambda sc, ws, c: c.UnsubscribeAll(workspace=ws,
                                                                   person=_person(sc, ws))),
    "Resubscribe": ("write", lambda sc, ws, c: c.Resubscribe(workspace=ws,
                                                             person=_person(sc, ws))),
    "CheckDelivery": ("check", lambda sc, ws, c: c.CheckDelivery(
        workspace=ws, person=_person(sc, ws), channel="email")),
    "CheckDeliveryBatch": ("check", lambda sc, ws, c: c.CheckDeliveryBatch(
        workspace=ws, channel="email", persons=[_person(sc, ws), "ghost"])),
    "OverrideForImportantMessage": ("override", lambda sc, ws, c: c.OverrideForImportantMessage(
        workspace=ws, person=_person(sc, ws), channel="email", message_id="m",
        justification="j")),
    "ForgetPerson": ("privacy", lambda sc, ws, c: c.ForgetPerson(workspace=ws,
                                                                 person=_person(sc, ws))),
    "SuppressIdentifiers": ("privacy", lambda sc, ws, c: c.SuppressIdentifiers(
        workspace=ws, identifiers=[ident("email", unique("e") + "@example.com")])),
    "UnsuppressIdentifiers": ("admin", lambda sc, ws, c: c.UnsuppressIdentifiers(
        workspace=ws, identifiers=[ident("email", "x@example.com")])),
    "ConfigureWorkspace": ("admin", lambda sc, ws, c: c.ConfigureWorkspace(
        sc.config(ws, allow_override=True))),
}


def test_calls_table_covers_every_rpc_but_watch():
    methods = {m.name for m in pb.DESCRIPTOR.services_by_name["SubscriptionCenter"].methods}
    assert set(CALLS) == methods - {"WatchChanges"}


@pytest.mark.parametrize("rpc", sorted(CALLS))
def test_scope_allowed_and_refused(sc, rpc):
    ws = sc.workspace(allow_override=True)
    needed, call = CALLS[rpc]
    for scope, token_name in SCOPE_TOKENS.items():
        client = sc.client(token_name)
        if scope == needed:
            call(sc, ws, client)  # must succeed
        else:
            expect_code(PERMISSION_DENIED, lambda: call(sc, ws, client))
    call(sc, ws, sc.client("sc-admin-nopii"))  # admin covers every scope
    call(sc, ws, sc.client("sc-root"))


def test_refused_call_changes_nothing(sc):
    ws = sc.workspace()
    pid = _person(sc, ws)
    sc.root.Subscribe(workspace=ws, person=pid, channel="sms")
    before = sc.root.GetPreferences(workspace=ws, person=pid)
    for name in ("sc-read", "sc-check", "sc-privacy", "sc-pii", "sc-override"):
        expect_code(PERMISSION_DENIED, lambda: sc.client(name).Unsubscribe(
            workspace=ws, person=pid, channel="email"))
        expect_code(PERMISSION_DENIED, lambda: sc.client(name).UnsubscribeAll(
            workspace=ws, person=pid))
    for name in ("sc-read", "sc-write", "sc-check"):
        expect_code(PERMISSION_DENIED, lambda: sc.client(name).ForgetPerson(
            workspace=ws, person=pid))
    after = sc.root.GetPreferences(workspace=ws, person=pid)
    assert entries_map(after) == entries_map(before)
    assert after.global_unsubscribed is False
    sc.root.GetProfile(workspace=ws, person=pid)
    expect_code(PERMISSION_DENIED, lambda: sc.client("sc-privacy").UnsuppressIdentifiers(
        workspace=ws, identifiers=[ident("email", "x@example.com")]))


def test_star_admin_creates_new_workspaces(sc):
    for name in ("sc-root", "sc-admin-nopii"):
        ws = unique("new")
        sc.client(name).ConfigureWorkspace(sc.config(ws, channels=["email"]))
        assert list(sc.root.GetWorkspace(workspace=ws).channels) == ["email"]


def test_workspace_token_is_confined_to_its_workspace(sc):
    sc.workspace(ws="ws-a")
    other = sc.workspace()
    a = sc.client("sc-wsa-admin")
    # its own workspace: everything
    a.ConfigureWorkspace(sc.config("ws-a", channels=["email", "sms"]))
    assert sorted(a.GetWorkspace(workspace="ws-a").channels) == ["email", "sms"]
    a.Identify(workspace="ws-a", person_id="pa")
    a.Subscribe(workspace="ws-a", person="pa", channel="email")
    a.CheckDelivery(workspace="ws-a", person="pa", channel="email")
    sc.client("sc-wsa-read").GetWorkspace(workspace="ws-a")
    # another workspace, even with admin
    sc.person(other, "po")
    refused = [
        lambda: a.GetWorkspace(workspace=other),
        lambda: a.GetWorkspace(workspace="default"),
        lambda: a.Identify(workspace=other, person_id="x"),
        lambda: a.GetProfile(workspace=other, person="po"),
        lambda: a.Subscribe(workspace=other, person="po", channel="email"),
        lambda: a.CheckDelivery(workspace=other, person="po", channel="email"),
        lambda: a.ForgetPerson(workspace=other, person="po"),
        lambda: a.UnsuppressIdentifiers(workspace=other,
                                        identifiers=[ident("email", "x@example.com")]),
        lambda: a.ConfigureWorkspace(sc.config(other, channels=["push"])),
        lambda: a.ConfigureWorkspace(sc.config(unique("brand-new"), channels=["push"])),
        lambda: sc.client("sc-wsa-read").GetWorkspace(workspace=other),
    ]
    for i, thunk in enumerate(refused):
        try:
            expect_code(PERMISSION_DENIED, thunk)
        except AssertionError as e:
            raise AssertionError(f"call #{i} of the refused list: {e}") from None
    # nothing changed in the other workspace
    assert sorted(sc.root.GetWorkspace(workspace=other).channels) == \
        sorted(["email", "sms", "push", "in_app"])
    assert sc.root.GetProfile(workspace=other, person="po").person_id == "po"
    assert list(sc.root.GetPreferences(workspace=other, person="po").entries) == []


BAD_METADATA = {
    "missing": [],
    "unknown-token": [("authorization", "Bearer sct_" + "x" * 32)],
    "basic": [("authorization", "Basic x")],
    "bearer-alone": [("authorization", "Bearer")],
    "token-without-scheme": [("authorization", TOKENS["sc-root"])],
    "other-scheme-real-token": [("authorization", "Token " + TOKENS["sc-root"])],
    # Whitespace at either end reaches the service (not a reset stream) and is refused there.
    "bearer-space-empty-token": [("authorization", "Bearer ")],
    "trailing-space": [("authorization", f"Bearer {TOKENS['sc-root']} ")],
    "leading-space": [("authorization", f" Bearer {TOKENS['sc-root']}")],
    # Two headers are not one Bearer credential, whichever comes first (the shared
    # connection has the root token's header verified already).
    "two-headers-good-first": [("authorization", f"Bearer {TOKENS['sc-root']}"),
                               ("authorization", "Bearer sct_" + "x" * 32)],
    "two-headers-bad-first": [("authorization", "Bearer sct_" + "x" * 32),
                              ("authorization", f"Bearer {TOKENS['sc-root']}")],
    "the-same-header-twice": [("authorization", f"Bearer {TOKENS['sc-root']}")] * 2,
}


@pytest.mark.parametrize("case", sorted(BAD_METADATA))
def test_unauthenticated(sc, case):
    ws = sc.workspace()
    sc.person(ws, "p")
    c = sc.raw_client(BAD_METADATA[case])
    expect_code(UNAUTHENTICATED, lambda: c.GetWorkspace(workspace=ws))
    expect_code(UNAUTHENTICATED, lambda: c.CheckDelivery(workspace=ws, person="p",
                                                         channel="email"))
    expect_code(UNAUTHENTICATED, lambda: c.Identify(workspace=ws, person_id="intruder"))
    expect_code(UNAUTHENTICATED, lambda: c.GetWorkspace(workspace=unique("nows")))
    expect_code(NOT_FOUND,
                lambda: sc.root.GetProfile(workspace=ws, person="intruder"))


def test_a_caller_without_the_scope_learns_nothing_of_its_request(sc):
    """The scope is checked before the request is read: a malformed request from a caller
    without the scope is PERMISSION_DENIED, as a well-formed one is."""
    ws = sc.workspace()
    reader = sc.client(SCOPE_TOKENS["read"])
    for bad in ["nul\x00inside", "\x7f", "x" * 257]:
        expect_code(PERMISSION_DENIED, lambda: reader.Identify(workspace=ws, person_id=bad))
        expect_code(INVALID, lambda: sc.root.Identify(workspace=ws, person_id=bad),
                    field="person_id")


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
def test_bearer_scheme_is_case_insensitive(sc, scheme):
    ws = sc.workspace()
    c = sc.raw_client([("authorization", f"{scheme} {TOKENS['sc-root']}")])
    assert c.GetWorkspace(workspace=ws).workspace == ws
    assert c.Identify(workspace=ws, person_id="p").person_id == "p"


def test_bearer_and_its_token_may_be_separated_by_several_spaces(sc):
    """SPEC §5 follows RFC 7235, whose credentials are the scheme, one or more spaces
    (`1*SP`), then the token (README: "Bearer, spaces, and a token")."""
    ws = sc.workspace()
    c = sc.raw_client([("authorization", f"Bearer   {TOKENS['sc-root']}")])
    assert c.GetWorkspace(workspace=ws).workspace == ws


def test_scope_is_checked_before_the_workspace_is_looked_up(sc):
    """SPEC §5: a known token without the scope is PERMISSION_DENIED; checked before the
    request is read (README), so also on a workspace that does not exist (not NOT_FOUND) —
    a caller without the scope cannot learn which workspaces exist."""
    nows = unique("nows")
    expect_code(PERMISSION_DENIED, lambda: sc.client("sc-check").GetWorkspace(workspace=nows))
    expect_code(PERMISSION_DENIED, lambda: sc.client("sc-read").Identify(workspace=nows,
                                                                          person_id="p"))
    expect_code(NOT_FOUND, lambda: sc.client("sc-read").GetWorkspace(workspace=nows))


@pytest.mark.parametrize("service", ["", "subcenter.v1.SubscriptionCenter"])
def test_health_needs_no_token(sc, service):
    resp = health_stub(sc.channel).Check(health_pb2.HealthCheckRequest(service=service),
                                         timeout=RPC_TIMEOUT)
    assert resp.status == health_pb2.HealthCheckResponse.SERVING


def test_one_connection_switching_tokens_is_judged_call_by_call(sc):
    """The server remembers a verified header per connection; another header on the same
    connection must be judged afresh (unknown → UNAUTHENTICATED, narrower → denied)."""
    ws = sc.workspace()
    pid = unique("p")
    sc.person(ws, pid)
    root, check = sc.root, sc.client(SCOPE_TOKENS["check"])
    for _ in range(2):
        root.GetProfile(workspace=ws, person=pid)
        expect_code(UNAUTHENTICATED, lambda: sc.raw_client(
            [("authorization", "Bearer " + TOKENS["sc-root"] + "x")]).GetProfile(
                workspace=ws, person=pid))
        expect_code(PERMISSION_DENIED, lambda: check.GetProfile(workspace=ws, person=pid))
        check.CheckDelivery(workspace=ws, person=pid, channel="email")
        expect_code(UNAUTHENTICATED, lambda: sc.raw_client([]).GetProfile(workspace=ws, person=pid))


def _open_body(conn, path: str, token: str, claimed: int, sent: int) -> int:
    """Starts a call on a raw connection whose single request message claims `claimed` bytes,
    sends `sent` of them and leaves the body unfinished."""
    sid = conn.start(RawH2.grpc_headers(path, extra=[("authorization", f"Bearer {token}")]))
    conn.send_flowed(sid, grpc_frame(b"\x00" * sent, claimed_length=claimed))
    return sid


@pytest.mark.parametrize("token,code", [("sct_not-a-token", 16), (TOKENS["sc-read"], 7)],
                         ids=["unknown-token", "lacking-scope"])
def test_a_call_without_its_credential_is_refused_before_its_body(sc, token, code):
    """A large request's token and scope are checked once its first 64 KiB have arrived: a call
    without them is answered (UNAUTHENTICATED, PERMISSION_DENIED) while its body is still
    coming, and the server asks the client to stop sending it (RST_STREAM NO_ERROR), instead
    of receiving and keeping the body first (an unauthenticated client could hold ~4 MiB a
    stream)."""
    with RawH2(sc.port) as conn:
        sid = _open_body(conn, "/subcenter.v1.SubscriptionCenter/Unsubscribe", token,
                         claimed=4_000_000, sent=100_000)
        st = conn.wait(sid, timeout=5)
        assert st.grpc_status == code, st.summary()
        assert not st.data, st.summary()
        deadline = time.monotonic() + 5
        while st.reset is None and time.monotonic() < deadline and conn.pump(0.2):
            pass
        assert st.reset == 0, f"no RST_STREAM NO_ERROR asking to stop the body: {st.summary()}"
        # A good call on the same connection still works.
        ok = conn.wait(conn.request("/subcenter.v1.SubscriptionCenter/GetWorkspace",
                                    _get_workspace_body(),
                                    extra=[("authorization", f"Bearer {TOKENS['sc-root']}")]),
                       timeout=5)
        assert ok.grpc_status in (0, 5), ok.summary()


def _get_workspace_body() -> bytes:
    return grpc_frame(pb.GetWorkspaceRequest(workspace=unique()).SerializeToString())


def test_each_call_on_one_connection_is_judged_by_its_own_credentials(sc):
    """The server reuses the metadata of a connection's last header block when a call repeats
    it byte for byte: calls that alternate tokens, add or drop a header, or send a token one
    character longer or shorter on one connection each get the answer of their own token."""
    import random
    ws = sc.workspace()
    root, read, check = TOKENS["sc-root"], TOKENS["sc-read"], TOKENS["sc-check"]
    kinds = {
        "root": ([("authorization", "Bearer " + root)], "OK"),
        "read": ([("authorization", "Bearer " + read)], "OK"),
        "check": ([("authorization", "Bearer " + check)], "PERMISSION_DENIED"),
        "root+": ([("authorization", "Bearer " + root + "x")], "UNAUTHENTICATED"),
        "root-": ([("authorization", "Bearer " + root[:-1])], "UNAUTHENTICATED"),
        "root, id": ([("authorization", "Bearer " + root), ("x-request-id", "1")], "OK"),
        "id, check": ([("x-request-id", "1"), ("authorization", "Bearer " + check)],
                      "PERMISSION_DENIED"),
        "id, root-": ([("x-request-id", "1"), ("authorization", "Bearer " + root[:-1])],
                      "UNAUTHENTICATED"),
        "none": ([], "UNAUTHENTICATED"),
        "id only": ([("x-request-id", "1")], "UNAUTHENTICATED"),
    }
    order = [k for k in kinds for _ in range(6)]
    random.Random(7).shuffle(order)
    order += ["root", "root", "root-", "root-", "read", "check", "check", "root"]
    c = sc.raw_client([])
    for i, k in enumerate(order):
        metadata, want = kinds[k]
        try:
            c.GetWorkspace(workspace=ws, metadata=metadata)
            got = "OK"
        except grpc.RpcError as e:
            got = e.code().name
        assert got == want, f"call {i} ({k}): {got}, wanted {want}"
