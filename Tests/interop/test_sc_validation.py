"""Validation and error codes (SPEC §1, §3): INVALID_ARGUMENT naming the field at every bound,
NOT_FOUND for unknown workspaces and persons, UNKNOWN_PERSON in checks, and refused calls that
change nothing."""

import grpc
import pytest

from sc_support import (FAILED_PRECONDITION, INVALID, NOT_FOUND, TOKENS, assert_decision, entries_map, expect_code,
                        expect_not_found_for_person_calls,
                        history_tuples, ident, limit, make_email, pb, pb_string_field, raw_unary,
                        ref_anon, ref_email, ref_phone, topic, unique)


@pytest.fixture
def ws(sc):
    w = sc.workspace(topics=[topic("news", "sub")], allow_override=True)
    sc.person(w, "p", email="p@example.com")
    return w


# --------------------------------------------------------------------------------------------
# person_id, anonymous_id


@pytest.mark.parametrize("value", ["a" * 256, "é" * 128, "x", "客" * 85])
def test_person_id_up_to_256_bytes_accepted(sc, ws, value):
    assert len(value.encode()) <= 256
    assert sc.root.Identify(workspace=ws, person_id=value).person_id == value
    assert sc.root.GetProfile(workspace=ws, person=value).person_id == value


@pytest.mark.parametrize("value", ["a" * 257, "é" * 129, "客" * 86])
def test_person_id_over_256_bytes_refused(sc, ws, value):
    expect_code(INVALID, lambda: sc.root.Identify(workspace=ws, person_id=value),
                field="person_id")


CONTROL = {"nul": "a\x00b", "soh": "a\x01b", "tab": "a\tb", "newline": "a\nb", "us": "a\x1fb",
           "del": "a\x7fb", "c1-nel": "a\u0085b", "c1-first": "a\u0080b", "c1-last": "a\u009fb",
           "leading-cr": "\rab"}


@pytest.mark.parametrize("name", sorted(CONTROL))
def test_person_id_control_characters_refused(sc, ws, name):
    expect_code(INVALID, lambda: sc.root.Identify(workspace=ws, person_id=CONTROL[name]),
                field="person_id")


@pytest.mark.parametrize("name", ["soh", "del", "c1-nel", "newline"])
def test_anonymous_id_control_characters_refused(sc, ws, name):
    expect_code(INVALID, lambda: sc.root.Identify(workspace=ws, anonymous_id=CONTROL[name]),
                field="anonymous_id")


def test_anonymous_id_length(sc, ws):
    assert sc.root.Identify(workspace=ws, anonymous_id="c" * 256).anonymous_ids[0] == "c" * 256
    expect_code(INVALID, lambda: sc.root.Identify(workspace=ws, anonymous_id="c" * 257),
                field="anonymous_id")
    expect_code(INVALID, lambda: sc.root.Identify(workspace=ws, person_id="p",
                                                  anonymous_id="c" * 257),
                field="anonymous_id")


def test_person_id_not_valid_utf8_refused(sc, ws):
    body = pb_string_field(1, ws.encode()) + pb_string_field(2, b"bad\xc3\x28id")
    md = [("authorization", "Bearer " + TOKENS["sc-root"])]
    expect_code(INVALID, lambda: raw_unary(sc.channel, "Identify", body, md))


def test_person_ref_too_long_or_empty_is_invalid(sc, ws):
    expect_code(INVALID, lambda: sc.root.GetProfile(workspace=ws, person="a" * 257),
                field="person")
    expect_code(INVALID, lambda: sc.root.GetProfile(workspace=ws, person=pb.PersonRef()),
                field="person")


def test_malformed_or_empty_person_refs_are_invalid_in_checks_and_forget(sc):
    """SPEC §3 Errors: "INVALID_ARGUMENT (malformed or out-of-range field; the message names
    the field; a refused call changes nothing)" — a PersonRef with a malformed email, phone or
    anonymous id, or no identifier at all, is refused, not a decision: in CheckDelivery, the
    batch (which then counts no send), the override and ForgetPerson."""
    ws = sc.workspace(limits=[limit("email", 1, 3600)], allow_override=True)
    c = sc.root
    sc.person(ws, "p")
    bad = {"email": ref_email("not-an-email"), "phone": ref_phone("4155550123"),
           "anonymous_id": ref_anon("a" * 257), "person": pb.PersonRef()}
    for field, ref in bad.items():
        calls = {
            "GetProfile": lambda: c.GetProfile(workspace=ws, person=ref),
            "CheckDelivery": lambda: c.CheckDelivery(workspace=ws, person=ref, channel="email"),
            "CheckDeliveryBatch": lambda: c.CheckDeliveryBatch(
                workspace=ws, channel="email", persons=["p", ref], record_send=True),
            "Override": lambda: c.OverrideForImportantMessage(
                workspace=ws, person=ref, channel="email", message_id="m", justification="j"),
            "ForgetPerson": lambda: c.ForgetPerson(workspace=ws, person=ref),
        }
        for rpc, thunk in calls.items():
            try:
                expect_code(INVALID, thunk, field=field)
            except AssertionError as e:
                raise AssertionError(f"{rpc} with a bad {field}: {e}") from None
    assert_decision(c.CheckDelivery(workspace=ws, person="p", channel="email", record_send=True),
                    True, "SUBSCRIBED", "p", "the refused batches counted no send")


def test_suppress_refuses_an_unspecified_kind_or_a_malformed_value(sc, ws):
    """SPEC §3 SuppressIdentifiers: `kind` is one of the four kinds and values are normalized
    first, so a value that is no identifier of its kind is a malformed field (INVALID_ARGUMENT
    naming it) and the call suppresses nothing."""
    cases = [(pb.Identifier(kind=pb.IDENTIFIER_KIND_UNSPECIFIED, value="x@example.com"),
              ("kind", "identifiers")),
             (ident("email", "not-an-email"), "identifiers"), (ident("email", ""), "identifiers"),
             (ident("phone", "4155550123"), "identifiers"),
             (ident("person_id", ""), "identifiers"), (ident("anonymous_id", "a\x01b"),
                                                       "identifiers")]
    for identifier, field in cases:
        expect_code(INVALID, lambda: sc.root.SuppressIdentifiers(
            workspace=ws, identifiers=[ident("email", "p@example.com"), identifier]),
            field=field)
    assert sc.root.GetProfile(workspace=ws, person="p").email == "p@example.com"


def test_email_lower_casing_never_stores_more_than_254_bytes(sc, ws):
    """SPEC §1: an email is "trimmed of whitespace and lower-cased; at most 254 bytes". "İ"
    (2 bytes) lower-cases to "i̇" (3 bytes): 254 bytes as given are refused, or stored in at
    most 254."""
    email = "\u0130@" + "d" * 247 + ".com"
    assert len(email.encode()) == 254
    try:
        p = sc.root.Identify(workspace=ws, person_id="eg", email=email)
    except grpc.RpcError as e:
        assert e.code() == INVALID and "email" in e.details(), e
    else:
        assert len(p.email.encode()) <= 254, f"stored {len(p.email.encode())} bytes"


# --------------------------------------------------------------------------------------------
# email, phone


BAD_EMAILS = {"no-at": "janeexample.com", "two-at": "jane@ex@ample.com",
              "space-local": "ja ne@example.com", "space-domain": "jane@exa mple.com",
              "tab-inside": "jane@exa\tmple.com", "empty-local": "@example.com",
              "empty-domain": "jane@", "only-at": "@", "255-bytes": make_email(255)}


@pytest.mark.parametrize("name", sorted(BAD_EMAILS))
def test_bad_email_refused(sc, ws, name):
    expect_code(INVALID, lambda: sc.root.Identify(workspace=ws, person_id="e1",
                                                  email=BAD_EMAILS[name]), field="email")
    expect_code(NOT_FOUND, lambda: sc.root.GetProfile(workspace=ws, person="e1"))


@pytest.mark.parametrize("email", [make_email(254), "a@b", "  spaced@example.com  ",
                                   # joiners: Persian words and emoji sequences need them
                                   "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645@example.ir",
                                   "\U0001F469\u200d\U0001F4BB@example.com"])
def test_good_email_accepted(sc, ws, email):
    p = sc.root.Identify(workspace=ws, person_id="e2", email=email)
    assert p.email == email.strip().lower()
    assert sc.root.GetProfile(workspace=ws, person=ref_email(email)).person_id == "e2"


BAD_PHONES = {"no-plus": "14155550123", "7-digits": "+1234567", "16-digits": "+1234567890123456",
              "spaces": "+1 415 555 0123", "dashes": "+1-415-555-0123", "letter": "+1415555012a",
              "plus-only": "+", "double-plus": "++14155550123",
              # E.164 digits are ASCII: other Unicode digits, a fullwidth plus, an invisible tail
              "arabic-indic-digits": "+" + "".join(chr(0x660 + int(d)) for d in "14155550123"),
              "fullwidth-digits": "+" + "".join(chr(0xFF10 + int(d)) for d in "14155550123"),
              "fullwidth-plus": "\uff0b14155550123", "zero-width-space": "+14155550123\u200b"}


@pytest.mark.parametrize("name", sorted(BAD_PHONES))
def test_bad_phone_refused(sc, ws, name):
    expect_code(INVALID, lambda: sc.root.Identify(workspace=ws, person_id="ph1",
                                                  phone=BAD_PHONES[name]), field="phone")
    expect_code(NOT_FOUND, lambda: sc.root.GetProfile(workspace=ws, person="ph1"))


@pytest.mark.parametrize("phone", ["+12345678", "+123456789012345"])
def test_phone_8_and_15_digits_accepted(sc, ws, phone):
    assert sc.root.Identify(workspace=ws, person_id="ph2", phone=phone).phone == phone


# --------------------------------------------------------------------------------------------
# channels, topics, sources, notice versions


def test_unknown_channel_or_topic_refused_everywhere(sc, ws):
    c = sc.root
    cases = {
        "Subscribe channel": (lambda: c.Subscribe(workspace=ws, person="p", channel="fax"),
                              "channel"),
        "Unsubscribe topic": (lambda: c.Unsubscribe(workspace=ws, person="p", topic="nope"),
                              "topic"),
        "CheckDelivery channel": (lambda: c.CheckDelivery(workspace=ws, person="p",
                                                          channel="fax"), "channel"),
        "CheckDelivery empty channel": (lambda: c.CheckDelivery(workspace=ws, person="p",
                                                                channel=""), "channel"),
        "CheckDelivery topic": (lambda: c.CheckDelivery(workspace=ws, person="p",
                                                        channel="email", topic="nope"), "topic"),
        "Batch channel": (lambda: c.CheckDeliveryBatch(workspace=ws, channel="fax",
                                                       persons=["p"]), "channel"),
        "Override channel": (lambda: c.OverrideForImportantMessage(
            workspace=ws, person="p", channel="fax", message_id="m", justification="j"),
            "channel"),
        "Override empty channel": (lambda: c.OverrideForImportantMessage(
            workspace=ws, person="p", channel="", message_id="m", justification="j"),
            "channel"),
        "Override topic": (lambda: c.OverrideForImportantMessage(
            workspace=ws, person="p", channel="email", topic="nope", message_id="m",
            justification="j"), "topic"),
    }
    for what, (thunk, field) in cases.items():
        try:
            expect_code(INVALID, thunk, field=field)
        except AssertionError as e:
            raise AssertionError(f"{what}: {e}") from None
    assert list(c.GetPreferences(workspace=ws, person="p").entries) == []
    assert [e.action for e in c.GetHistory(workspace=ws, person="p").entries] == ["identify"]


@pytest.mark.parametrize("field", ["source", "notice_version"])
def test_source_and_notice_version_128_bytes(sc, ws, field):
    ok = sc.root.Subscribe(workspace=ws, person="p", channel="email", **{field: "s" * 128})
    assert getattr(ok.entries[0], field) == "s" * 128
    sc.root.Subscribe(workspace=ws, person="p", channel="sms", **{field: "é" * 64})
    before = entries_map(sc.root.GetPreferences(workspace=ws, person="p"))
    for value in ("s" * 129, "é" * 65):
        expect_code(INVALID, lambda: sc.root.Unsubscribe(workspace=ws, person="p",
                                                         channel="email", **{field: value}),
                    field=field)
    assert entries_map(sc.root.GetPreferences(workspace=ws, person="p")) == before


def test_global_source_129_bytes_refused(sc, ws):
    sc.root.UnsubscribeAll(workspace=ws, person="p", source="g" * 128)
    expect_code(INVALID, lambda: sc.root.Resubscribe(workspace=ws, person="p", source="g" * 129),
                field="source")
    assert sc.root.GetPreferences(workspace=ws, person="p").global_unsubscribed is True


# --------------------------------------------------------------------------------------------
# override: justification, message_id


def _override(sc, ws, message_id="m", justification="j"):
    return sc.client("sc-override").OverrideForImportantMessage(
        workspace=ws, person="p", channel="email", message_id=message_id,
        justification=justification)


def test_justification_bounds(sc, ws):
    assert_decision(_override(sc, ws, justification="j" * 1024), True, "OVERRIDDEN_IMPORTANT",
                    "p", "1024 bytes")
    assert_decision(_override(sc, ws, justification="é" * 512), True, "OVERRIDDEN_IMPORTANT",
                    "p", "1024 bytes of two-byte characters")
    before = history_tuples(sc.root.GetHistory(workspace=ws, person="p", page_size=1000))
    for value in ("", "j" * 1025, "é" * 513):
        expect_code(INVALID, lambda: _override(sc, ws, justification=value),
                    field="justification")
    after = history_tuples(sc.root.GetHistory(workspace=ws, person="p", page_size=1000))
    assert after == before, "a refused override must not be written to the history"


def test_message_id_bounds(sc, ws):
    assert_decision(_override(sc, ws, message_id="m" * 256), True, "OVERRIDDEN_IMPORTANT", "p",
                    "256 bytes")
    for value in ("", "m" * 257, "m\n; refused: x", "m\x1b[2J", "m\u0085"):
        expect_code(INVALID, lambda: _override(sc, ws, message_id=value), field="message_id")


# --------------------------------------------------------------------------------------------
# suppression reason


def test_suppress_reason_bounds(sc, ws):
    r = sc.root.SuppressIdentifiers(workspace=ws, identifiers=[ident("email", "r1@example.com")],
                                    reason="r" * 256)
    assert r.suppressed == 1
    expect_code(INVALID, lambda: sc.root.SuppressIdentifiers(
        workspace=ws, identifiers=[ident("email", "p@example.com")], reason="r" * 257),
        field="reason")
    # the refused call suppressed nothing and forgot nobody
    assert sc.root.GetProfile(workspace=ws, person="p").email == "p@example.com"
    sc.root.Identify(workspace=ws, person_id="p", email="p@example.com")


def test_suppressed_identifiers_at_their_bounds(sc, ws):
    """SPEC §1's bounds hold for the identifiers of SuppressIdentifiers and
    UnsuppressIdentifiers: a person id or anonymous id of 256 bytes and an email of 254 are
    taken, one byte more is INVALID_ARGUMENT naming the identifier and the call suppresses
    nothing; UnsuppressIdentifiers takes "the same request", so its `reason` is at most 256
    bytes too, and a refused unsuppression frees nothing."""
    c = sc.root
    edge = [ident("person_id", "i" * 256), ident("anonymous_id", "a" * 256),
            ident("email", make_email(254, local="edge"))]
    assert c.SuppressIdentifiers(workspace=ws, identifiers=edge).suppressed == 3
    fresh = ident("email", "fresh@example.com")
    for over in (ident("person_id", "i" * 257), ident("anonymous_id", "a" * 257),
                 ident("email", make_email(255, local="edge"))):
        expect_code(INVALID, lambda: c.SuppressIdentifiers(workspace=ws,
                                                           identifiers=[fresh, over]),
                    field="identifiers[1]")
        expect_code(INVALID, lambda: c.UnsuppressIdentifiers(workspace=ws,
                                                             identifiers=[edge[0], over]),
                    field="identifiers[1]")
    assert c.Identify(workspace=ws, person_id="fresh", email="fresh@example.com").email == \
        "fresh@example.com", "a refused suppression suppressed its other identifiers"
    expect_code(INVALID, lambda: c.UnsuppressIdentifiers(workspace=ws, identifiers=edge,
                                                         reason="r" * 257), field="reason")
    expect_code(FAILED_PRECONDITION, lambda: c.Identify(workspace=ws, person_id="i" * 256))
    assert c.UnsuppressIdentifiers(workspace=ws, identifiers=edge,
                                   reason="r" * 256).suppressed == 3
    assert c.Identify(workspace=ws, person_id="i" * 256, anonymous_id="a" * 256,
                      email=make_email(254, local="edge")).person_id == "i" * 256


# --------------------------------------------------------------------------------------------
# ConfigureWorkspace


def _bad_configs(w):
    base = dict(workspace=w, channels=["email", "sms"])
    return {
        "no-channels": (pb.WorkspaceConfig(workspace=w, channels=[]), "channels"),
        "default-unspecified": (pb.WorkspaceConfig(topics=[topic("t", "unspecified")], **base),
                                "default_state"),
        "limit-unknown-channel": (pb.WorkspaceConfig(limits=[limit("push", 1, 60)], **base),
                                  ("limit", "channel")),
        "max-messages-0": (pb.WorkspaceConfig(limits=[limit("email", 0, 60)], **base),
                           "max_messages"),
        "max-messages-negative": (pb.WorkspaceConfig(limits=[limit("email", -1, 60)], **base),
                                  "max_messages"),
        "window-0": (pb.WorkspaceConfig(limits=[limit("email", 1, 0)], **base), "window_seconds"),
        "window-31536001": (pb.WorkspaceConfig(limits=[limit("email", 1, 31_536_001)], **base),
                            "window_seconds"),
        "window-negative": (pb.WorkspaceConfig(limits=[limit("email", 1, -60)], **base),
                            "window_seconds"),
        # proto3 enums are open: a newer client may send a number this server does not know
        "default-unknown-number": (pb.WorkspaceConfig(
            topics=[pb.Topic(id="t", name="T", default_state=7)], **base), "default_state"),
        "topic-name-257": (pb.WorkspaceConfig(topics=[topic("t", "sub", name="n" * 257)], **base),
                           "name"),
        "description-4097": (pb.WorkspaceConfig(
            topics=[topic("t", "sub", description="d" * 4097)], **base), "description"),
        "bad-channel-id": (pb.WorkspaceConfig(workspace=w, channels=["Email"]), "channel"),
        "channel-id-65": (pb.WorkspaceConfig(workspace=w, channels=["c" * 65]), "channel"),
        "bad-topic-id": (pb.WorkspaceConfig(topics=[topic("News Letter", "sub")], **base),
                         ("topic", "id")),
        "topic-id-65": (pb.WorkspaceConfig(topics=[topic("t" * 65, "sub")], **base),
                        ("topic", "id")),
        "topic-id-empty": (pb.WorkspaceConfig(topics=[topic("", "sub", name="T")], **base),
                           ("topic", "id")),
        "channel-id-empty": (pb.WorkspaceConfig(workspace=w, channels=["email", ""]), "channel"),
    }


BAD_CONFIG_NAMES = sorted(_bad_configs("x"))


@pytest.mark.parametrize("name", BAD_CONFIG_NAMES)
def test_bad_configuration_refused_and_changes_nothing(sc, name):
    w = sc.workspace(channels=["email", "sms"], topics=[topic("keep", "sub")],
                     limits=[limit("sms", 2, 60)], allow_override=True)
    before = sc.root.GetWorkspace(workspace=w)
    cfg, field = _bad_configs(w)[name]
    expect_code(INVALID, lambda: sc.root.ConfigureWorkspace(cfg), field=field)
    assert sc.root.GetWorkspace(workspace=w) == before
    # on a new workspace id: not created
    fresh = unique("ws")
    cfg.workspace = fresh
    expect_code(INVALID, lambda: sc.root.ConfigureWorkspace(cfg), field=field)
    expect_code(NOT_FOUND, lambda: sc.root.GetWorkspace(workspace=fresh))


def test_configuration_bounds_accepted(sc):
    w = unique("ws")
    cfg = pb.WorkspaceConfig(workspace=w, channels=["email"],
                             topics=[topic("t", "unsub", name="n" * 256,
                                           description="d" * 4096)],
                             limits=[limit("email", 1, 31_536_000)])
    sc.root.ConfigureWorkspace(cfg)
    got = sc.root.GetWorkspace(workspace=w)
    assert got.topics[0].name == "n" * 256 and got.topics[0].description == "d" * 4096
    assert got.limits[0].window_seconds == 31_536_000 and got.limits[0].max_messages == 1
    sc.root.ConfigureWorkspace(pb.WorkspaceConfig(workspace=w, channels=["email"],
                                                  limits=[limit("email", 1, 1)]))
    # a topic id is "like a channel's": [a-z0-9_.-]{1,64}
    ids = ["t" * 64, "a.b-c_9"]
    sc.root.ConfigureWorkspace(sc.config(w, channels=["email"],
                                         topics=[topic(t, "sub") for t in ids]))
    assert sorted(t.id for t in sc.root.GetWorkspace(workspace=w).topics) == sorted(ids)


@pytest.mark.parametrize("bad", ["Upper", "has space", "a" * 65, "dot.ted", ""])
def test_bad_workspace_id_refused(sc, bad):
    expect_code(INVALID, lambda: sc.root.ConfigureWorkspace(
        pb.WorkspaceConfig(workspace=bad, channels=["email"])), field="workspace")


# --------------------------------------------------------------------------------------------
# unknown workspace, unknown person


def _unknown_ws_calls(c, w):
    return {
        "Identify": lambda: c.Identify(workspace=w, person_id="p"),
        "GetProfile": lambda: c.GetProfile(workspace=w, person="p"),
        "Subscribe": lambda: c.Subscribe(workspace=w, person="p", channel="email"),
        "Unsubscribe": lambda: c.Unsubscribe(workspace=w, person="p", channel="email"),
        "UnsubscribeAll": lambda: c.UnsubscribeAll(workspace=w, person="p"),
        "Resubscribe": lambda: c.Resubscribe(workspace=w, person="p"),
        "GetPreferences": lambda: c.GetPreferences(workspace=w, person="p"),
        "CheckDelivery": lambda: c.CheckDelivery(workspace=w, person="p", channel="email"),
        "CheckDeliveryBatch": lambda: c.CheckDeliveryBatch(workspace=w, channel="email",
                                                           persons=["p"]),
        "OverrideForImportantMessage": lambda: c.OverrideForImportantMessage(
            workspace=w, person="p", channel="email", message_id="m", justification="j"),
        "ForgetPerson": lambda: c.ForgetPerson(workspace=w, person="p"),
        "SuppressIdentifiers": lambda: c.SuppressIdentifiers(
            workspace=w, identifiers=[ident("email", "a@example.com")]),
        "UnsuppressIdentifiers": lambda: c.UnsuppressIdentifiers(
            workspace=w, identifiers=[ident("email", "a@example.com")]),
        "GetHistory": lambda: c.GetHistory(workspace=w, person="p"),
        "GetWorkspace": lambda: c.GetWorkspace(workspace=w),
    }


@pytest.mark.parametrize("rpc", sorted(_unknown_ws_calls(None, "x")))
def test_unknown_workspace_is_not_found(sc, rpc):
    w = unique("nows")
    expect_code(NOT_FOUND, _unknown_ws_calls(sc.root, w)[rpc])
    if rpc in ("Identify", "SuppressIdentifiers"):
        expect_code(NOT_FOUND, lambda: sc.root.GetWorkspace(workspace=w))


def test_unknown_person_not_found_for_reads_and_writes(sc, ws):
    c = sc.root
    for ref in ("ghost", ref_email("ghost@example.com"), ref_phone("+14155559999"),
                ref_anon("ghost-cookie")):
        expect_not_found_for_person_calls(c, ws, ref, topic="news")


def test_unknown_person_is_a_decision_in_checks(sc, ws):
    c = sc.root
    assert_decision(c.CheckDelivery(workspace=ws, person="ghost", channel="email"), False,
                    "UNKNOWN_PERSON", "", "CheckDelivery")
    b = c.CheckDeliveryBatch(workspace=ws, channel="email", persons=["ghost", "p"])
    assert_decision(b.decisions[0], False, "UNKNOWN_PERSON", "", "batch[0]")
    assert_decision(b.decisions[1], True, "SUBSCRIBED", "p", "batch[1]")
    assert_decision(c.OverrideForImportantMessage(workspace=ws, person="ghost", channel="email",
                                                  message_id="m", justification="j"),
                    False, "UNKNOWN_PERSON", "", "Override")
    expect_code(NOT_FOUND, lambda: c.GetProfile(workspace=ws, person="ghost"))


def test_refused_identify_changes_nothing(sc, ws):
    before = sc.root.GetProfile(workspace=ws, person="p")
    expect_code(INVALID, lambda: sc.root.Identify(workspace=ws, person_id="p",
                                                  email="new@example.com", phone="4155550123"),
                field="phone")
    expect_code(INVALID, lambda: sc.root.Identify(workspace=ws, person_id="p",
                                                  phone="+14155550123", email="bad"),
                field="email")
    after = sc.root.GetProfile(workspace=ws, person="p")
    assert (after.email, after.phone, list(after.anonymous_ids), after.updated_at) == \
        (before.email, before.phone, list(before.anonymous_ids), before.updated_at)
    expect_code(NOT_FOUND, lambda: sc.root.GetProfile(workspace=ws,
                                                      person=ref_email("new@example.com")))


# Fields of a newer .proto, one of each wire type (varint, length-delimited, 64- and 32-bit),
# under field number 99.
NEWER_FIELDS = (bytes([0x98, 0x06, 0x05]) + bytes([0x9A, 0x06, 0x02]) + b"hi"
                + bytes([0x99, 0x06]) + bytes(8) + bytes([0x9D, 0x06]) + bytes(4))


def test_fields_of_a_newer_proto_and_any_field_order_are_accepted(sc, ws):
    """Protobuf's compatibility rules, which any client generated from a later `proto/`
    relies on: fields the server does not know are skipped, in a request and in a nested
    PersonRef, and fields may come in any order — for the requests the server decodes by
    hand (PreferenceRequest, DeliveryRequest) as for the others."""
    md = [("authorization", "Bearer " + TOKENS["sc-root"])]
    ref = pb.PersonRef(person_id="p").SerializeToString() + NEWER_FIELDS
    # person (2), channel (3), workspace (1), in that order, around unknown fields
    body = (NEWER_FIELDS + bytes([0x12, len(ref)]) + ref + pb_string_field(3, b"sms")
            + NEWER_FIELDS + pb_string_field(1, ws.encode()) + NEWER_FIELDS)
    prefs = pb.Preferences.FromString(raw_unary(sc.channel, "Unsubscribe", body, md))
    assert entries_map(prefs)[("sms", "")][0] == "UNSUBSCRIBED", prefs
    d = pb.DeliveryDecision.FromString(raw_unary(sc.channel, "CheckDelivery", body, md))
    assert_decision(d, False, "CHANNEL_UNSUBSCRIBED", "p", "CheckDelivery")
    for method, request, answer in (
            ("Identify", pb.IdentifyRequest(workspace=ws, person_id="newer"), pb.Profile),
            ("GetHistory", pb.HistoryRequest(workspace=ws, person=pb.PersonRef(person_id="p")),
             pb.HistoryResponse),
            ("GetWorkspace", pb.GetWorkspaceRequest(workspace=ws), pb.WorkspaceConfig)):
        got = answer.FromString(raw_unary(sc.channel, method, NEWER_FIELDS
                                          + request.SerializeToString() + NEWER_FIELDS, md))
        assert got.ListFields(), f"{method}: {got}"
    assert sc.root.GetProfile(workspace=ws, person="newer").person_id == "newer"


# --------------------------------------------------------------------------------------------
# U+0000 inside a string: valid UTF-8 and a C0 control character. Identifiers refuse it; free
# text either keeps it or is refused; no field may be cut short at it.


def test_nul_in_identifiers_refused(sc, ws):
    expect_code(INVALID, lambda: sc.root.Identify(workspace=ws, anonymous_id="a\x00b"),
                field="anonymous_id")
    expect_code(INVALID, lambda: sc.root.Identify(workspace=ws, person_id="p",
                                                  anonymous_id="cookie\x00x"),
                field="anonymous_id")
    expect_code(NOT_FOUND, lambda: sc.root.GetProfile(workspace=ws, person=ref_anon("a")))
    # "p\x00x" is not the person "p"
    try:
        got = sc.root.GetProfile(workspace=ws, person="p\x00x")
    except Exception as e:  # INVALID_ARGUMENT or NOT_FOUND are both right
        assert e.code() in (INVALID, NOT_FOUND), e
    else:
        raise AssertionError(f"GetProfile('p\\x00x') answered the person {got.person_id!r}")


def test_nul_in_a_repeated_field_names_the_element(sc, ws):
    # In a batch of many persons, the caller must learn which one is bad.
    expect_code(INVALID, lambda: sc.root.CheckDeliveryBatch(
        workspace=ws, channel="email", persons=["a", "b", "c\x00"]), field="persons[2].person_id")
    expect_code(INVALID, lambda: sc.root.ConfigureWorkspace(
        workspace=ws, channels=["email", "s\x00ms"]), field="channels[1]")


def test_nul_in_email_is_refused_or_kept_never_cut(sc, ws):
    try:
        p = sc.root.Identify(workspace=ws, person_id="p", email="p2@example.com\x00.evil")
    except Exception as e:
        assert e.code() == INVALID, e
        assert sc.root.GetProfile(workspace=ws, person="p").email == "p@example.com"
    else:
        assert p.email == "p2@example.com\x00.evil", f"email stored as {p.email!r}"


def test_nul_in_workspace_or_channel_does_not_name_another(sc, ws):
    try:
        got = sc.root.GetWorkspace(workspace=ws + "\x00junk")
    except Exception as e:
        assert e.code() in (INVALID, NOT_FOUND), e
    else:
        raise AssertionError(f"workspace {ws!r}+NUL+'junk' answered as {got.workspace!r}")
    expect_code(INVALID, lambda: sc.root.Subscribe(workspace=ws, person="p",
                                                   channel="sms\x00xx"), field="channel")
    expect_code(INVALID, lambda: sc.root.CheckDelivery(workspace=ws, person="p",
                                                       channel="email", topic="news\x00x"),
                field="topic")
    assert list(sc.root.GetPreferences(workspace=ws, person="p").entries) == []


def test_nul_in_page_token_is_invalid(sc, ws):
    expect_code(INVALID, lambda: sc.root.GetHistory(workspace=ws, person="p",
                                                    page_token="\x00"), field="page_token")


def test_nul_in_free_text_is_kept_or_refused_never_cut(sc, ws):
    try:
        r = sc.root.Subscribe(workspace=ws, person="p", channel="email", source="ab\x00cd",
                              notice_version="v\x001")
    except Exception as e:
        assert e.code() == INVALID, e
    else:
        e = r.entries[0]
        assert (e.source, e.notice_version) == ("ab\x00cd", "v\x001"), \
            f"stored as source={e.source!r} notice_version={e.notice_version!r}"
    try:
        cfg = sc.root.ConfigureWorkspace(sc.config(ws, topics=[topic("news", "sub",
                                                                     name="N\x00ame",
                                                                     description="d\x00e")]))
    except Exception as e:
        assert e.code() == INVALID, e
    else:
        got = sc.root.GetWorkspace(workspace=ws).topics[0]
        assert (cfg.topics[0].name, got.name, got.description) == \
            ("N\x00ame", "N\x00ame", "d\x00e"), f"topic stored as {got}"
    try:
        sc.root.OverrideForImportantMessage(workspace=ws, person="p", channel="email",
                                            message_id="m\x00id", justification="j\x00why")
    except Exception as e:
        assert e.code() == INVALID, e
    else:
        detail = [x.detail for x in sc.root.GetHistory(workspace=ws, person="p").entries
                  if x.action == "override"][0]
        assert "m\x00id" in detail and "j\x00why" in detail, f"override detail {detail!r}"
