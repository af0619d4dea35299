"""ForgetPerson, SuppressIdentifiers, UnsuppressIdentifiers (SPEC §1, §3)."""

import json
import re

from sc_support import (ERASURE_DEADLINE_MS, FAILED_PRECONDITION, INVALID, NOT_FOUND,
                        assert_decision,
                        assert_recent, b64url_decode, expect_code,
                        expect_not_found_for_person_calls, ident, limit, now_ms, ref_anon,
                        pb, ref_email, ref_phone, reason_name)

B64URL = re.compile(r"^[A-Za-z0-9_-]+$")


def test_forget_person_response_and_receipt_shape(sc):
    ws = sc.workspace()
    sc.person(ws, "p", email="p@example.com")
    before = now_ms()
    r = sc.root.ForgetPerson(workspace=ws, person="p")
    assert r.person_id == "p"
    assert_recent(r.erased_at, before, "erased_at")
    assert r.erasure_deadline == r.erased_at + ERASURE_DEADLINE_MS, \
        f"erasure_deadline {r.erasure_deadline} is not erased_at {r.erased_at} + 60 s"
    parts = r.receipt.split(".")
    assert len(parts) == 2, f"receipt {r.receipt!r} is not two dot-separated parts"
    for part in parts:
        assert B64URL.match(part), f"receipt part {part!r} is not unpadded base64url"
    payload = json.loads(b64url_decode(parts[0]).decode("ascii"))
    assert set(payload) == {"workspace", "person_hash", "erased_at", "erasure_deadline",
                            "snapshot_seq"}, f"receipt keys: {sorted(payload)}"
    assert payload["workspace"] == ws
    assert re.fullmatch(r"[0-9a-f]{64}", payload["person_hash"]), payload["person_hash"]
    assert payload["person_hash"] not in ("p", "")
    for key in ("erased_at", "erasure_deadline", "snapshot_seq"):
        assert type(payload[key]) is int, f"{key} is {payload[key]!r}, not a JSON integer"
    assert payload["erased_at"] == r.erased_at
    assert payload["erasure_deadline"] == r.erasure_deadline
    assert payload["snapshot_seq"] >= 0
    assert len(b64url_decode(parts[1])) == 32, "the signature is not an HMAC-SHA-256"


def test_forgotten_person_reads_not_found_checks_unknown(sc):
    ws = sc.workspace()
    sc.person(ws, "p", email="p@example.com", phone="+14155550123", anonymous_id="cookie-p")
    sc.root.Subscribe(workspace=ws, person="p", channel="email")
    sc.root.ForgetPerson(workspace=ws, person=ref_email("p@example.com"))
    for ref in ("p", ref_email("p@example.com"), ref_phone("+14155550123"), ref_anon("cookie-p")):
        expect_code(NOT_FOUND, lambda: sc.root.GetProfile(workspace=ws, person=ref))
    expect_code(NOT_FOUND, lambda: sc.root.GetPreferences(workspace=ws, person="p"))
    expect_code(NOT_FOUND, lambda: sc.root.GetHistory(workspace=ws, person="p"))
    expect_code(NOT_FOUND, lambda: sc.root.Subscribe(workspace=ws, person="p", channel="sms"))
    expect_code(NOT_FOUND, lambda: sc.root.UnsubscribeAll(workspace=ws, person="p"))
    for ref in ("p", ref_email("p@example.com")):
        assert_decision(sc.root.CheckDelivery(workspace=ws, person=ref, channel="email"), False,
                        "UNKNOWN_PERSON", "", f"forgotten {ref}")
    batch = sc.root.CheckDeliveryBatch(workspace=ws, channel="email", persons=["p"])
    assert_decision(batch.decisions[0], False, "UNKNOWN_PERSON", "", "forgotten, batch")
    # a second forget
    expect_code(NOT_FOUND, lambda: sc.root.ForgetPerson(workspace=ws, person="p"))


def test_forget_unknown_person_not_found(sc):
    ws = sc.workspace()
    expect_code(NOT_FOUND, lambda: sc.root.ForgetPerson(workspace=ws, person="ghost"))
    expect_code(NOT_FOUND, lambda: sc.root.ForgetPerson(workspace=ws,
                                                        person=ref_email("g@example.com")))


def test_forget_without_suppress_allows_a_fresh_start(sc):
    ws = sc.workspace(limits=[limit("email", 1, 3600)])
    sc.person(ws, "p", email="p@example.com")
    sc.root.Unsubscribe(workspace=ws, person="p", channel="sms")
    sc.root.CheckDelivery(workspace=ws, person="p", channel="email", record_send=True)
    sc.root.ForgetPerson(workspace=ws, person="p")
    again = sc.root.Identify(workspace=ws, person_id="p", email="p@example.com")
    assert again.person_id == "p"
    prefs = sc.root.GetPreferences(workspace=ws, person="p")
    assert list(prefs.entries) == [] and prefs.global_unsubscribed is False
    hist = sc.root.GetHistory(workspace=ws, person="p", page_size=1000)
    assert [e.action for e in hist.entries] == ["identify"], \
        f"history of the forgotten person survived: {hist}"
    assert_decision(sc.root.CheckDelivery(workspace=ws, person="p", channel="email",
                                          record_send=True),
                    True, "SUBSCRIBED", "p", "counters were deleted with the person")


def test_forget_anonymous_profile(sc):
    ws = sc.workspace()
    sc.root.Identify(workspace=ws, anonymous_id="visitor-99")
    r = sc.root.ForgetPerson(workspace=ws, person=ref_anon("visitor-99"))
    assert r.person_id == ""
    expect_code(NOT_FOUND, lambda: sc.root.GetProfile(workspace=ws,
                                                      person=ref_anon("visitor-99")))


def test_forget_also_suppress_blocks_every_identifier(sc):
    ws = sc.workspace()
    sc.person(ws, "p", email="p@example.com", phone="+14155550123", anonymous_id="cookie-p")
    sc.root.ForgetPerson(workspace=ws, person="p", also_suppress=True)
    expect_code(FAILED_PRECONDITION, lambda: sc.root.Identify(workspace=ws, person_id="p"))
    expect_code(FAILED_PRECONDITION, lambda: sc.root.Identify(workspace=ws, person_id="q",
                                                              email="p@example.com"))
    expect_code(FAILED_PRECONDITION, lambda: sc.root.Identify(workspace=ws, person_id="q",
                                                              phone="+14155550123"))
    expect_code(FAILED_PRECONDITION, lambda: sc.root.Identify(workspace=ws,
                                                              anonymous_id="cookie-p"))
    expect_code(NOT_FOUND, lambda: sc.root.GetProfile(workspace=ws, person="q"))
    for ref in ("p", ref_email("p@example.com"), ref_phone("+14155550123"), ref_anon("cookie-p")):
        assert_decision(sc.root.CheckDelivery(workspace=ws, person=ref, channel="email"), False,
                        "SUPPRESSED", what=f"suppressed {ref}")


def test_suppress_normalizes_email(sc):
    ws = sc.workspace()
    r = sc.root.SuppressIdentifiers(workspace=ws, identifiers=[ident("email", "X@Y.COM")],
                                    reason="complaint")
    assert r.suppressed == 1
    assert list(r.forgotten_person_ids) == []
    assert_decision(sc.root.CheckDelivery(workspace=ws, person=ref_email("x@y.com"),
                                          channel="email"), False, "SUPPRESSED",
                    what="x@y.com after suppressing X@Y.COM")
    expect_code(FAILED_PRECONDITION, lambda: sc.root.Identify(workspace=ws, person_id="p",
                                                              email="x@y.com"))
    again = sc.root.SuppressIdentifiers(workspace=ws, identifiers=[ident("email", "x@y.com")])
    assert again.suppressed == 0, "an already suppressed identifier is not newly suppressed"


def test_suppress_counts_newly_suppressed(sc):
    ws = sc.workspace()
    r = sc.root.SuppressIdentifiers(workspace=ws, identifiers=[
        ident("email", "a@example.com"), ident("phone", "+14155550001")])
    assert r.suppressed == 2
    r = sc.root.SuppressIdentifiers(workspace=ws, identifiers=[
        ident("phone", "+14155550001"), ident("anonymous_id", "cookie-z"),
        ident("person_id", "pid-z")])
    assert r.suppressed == 2


def test_suppress_refuses_an_unknown_identifier_kind_naming_it(sc):
    """A kind outside the enum (proto3 enums are open: a newer client may send one) is
    INVALID_ARGUMENT naming the identifier's field and the value, and nothing is suppressed."""
    ws = sc.workspace()
    e = expect_code(INVALID, lambda: sc.root.SuppressIdentifiers(workspace=ws, identifiers=[
        ident("email", "k@example.com"), pb.Identifier(kind=99, value="x")]),
        field="identifiers[1].kind")
    assert "unknown identifier kind 99" in e.details(), e.details()
    assert sc.root.SuppressIdentifiers(
        workspace=ws, identifiers=[ident("email", "k@example.com")]).suppressed == 1


def test_suppress_takes_at_most_10000_identifiers_a_call(sc):
    """10,000 identifiers (each holding a person) in one call, then 10,001: INVALID_ARGUMENT
    naming `identifiers`, nothing suppressed (one call is one step of the store, so it is
    bounded like CheckDeliveryBatch)."""
    ws = sc.workspace()
    sc.person(ws, "held", email="held@example.com")
    many = [ident("email", f"bulk{i}@example.com") for i in range(9_999)]
    r = sc.root.SuppressIdentifiers(workspace=ws,
                                    identifiers=many + [ident("email", "held@example.com")])
    assert r.suppressed == 10_000 and list(r.forgotten_person_ids) == ["held"]
    over = [ident("email", f"over{i}@example.com") for i in range(10_001)]
    expect_code(INVALID, lambda: sc.root.SuppressIdentifiers(workspace=ws, identifiers=over),
                field="identifiers")
    expect_code(INVALID, lambda: sc.root.UnsuppressIdentifiers(workspace=ws, identifiers=over),
                field="identifiers")
    r = sc.root.SuppressIdentifiers(workspace=ws, identifiers=over[:1])
    assert r.suppressed == 1, "the refused call suppressed nothing"


def test_suppress_forgets_the_holder_but_not_its_other_identifiers(sc):
    ws = sc.workspace()
    sc.person(ws, "holder", email="h@example.com", phone="+14155550123", anonymous_id="cookie-h")
    sc.person(ws, "bystander", email="b@example.com")
    r = sc.client("sc-privacy").SuppressIdentifiers(
        workspace=ws, identifiers=[ident("email", "H@Example.com")], reason="bounce")
    assert r.suppressed == 1
    assert list(r.forgotten_person_ids) == ["holder"]
    expect_code(NOT_FOUND, lambda: sc.root.GetProfile(workspace=ws, person="holder"))
    assert sc.root.GetProfile(workspace=ws, person="bystander").email == "b@example.com"
    # the holder's phone, anonymous id and person id are not suppressed
    p = sc.root.Identify(workspace=ws, person_id="newcomer", phone="+14155550123",
                         anonymous_id="cookie-h")
    assert p.phone == "+14155550123"
    assert sc.root.Identify(workspace=ws, person_id="holder").person_id == "holder"
    assert_decision(sc.root.CheckDelivery(workspace=ws, person=ref_email("h@example.com"),
                                          channel="email"), False, "SUPPRESSED",
                    what="the suppressed email")


def test_suppress_lists_each_forgotten_person_once(sc):
    """SPEC §3 SuppressIdentifiers: `suppressed` counts every identifier newly suppressed and
    `forgotten_person_ids` names the persons forgotten: one holding two of the identifiers is
    forgotten (and listed) once, and every holder is forgotten."""
    ws = sc.workspace()
    c = sc.root
    sc.person(ws, "two", email="two@example.com", phone="+14155550111")
    sc.person(ws, "one", email="one@example.com")
    sc.person(ws, "bystander", email="by@example.com")
    r = c.SuppressIdentifiers(workspace=ws, identifiers=[
        ident("email", "two@example.com"), ident("email", "one@example.com"),
        ident("phone", "+14155550111")])
    assert r.suppressed == 3, r
    assert sorted(r.forgotten_person_ids) == ["one", "two"], r
    for pid in ("one", "two"):
        expect_code(NOT_FOUND, lambda: c.GetProfile(workspace=ws, person=pid))
    assert c.GetProfile(workspace=ws, person="bystander").email == "by@example.com"


def test_also_suppress_leaves_an_email_the_person_no_longer_had(sc):
    """SPEC §3 ForgetPerson: `also_suppress` "suppresses every identifier it had" when
    forgotten; an email an earlier Identify replaced "stops naming the person" and is not
    suppressed (README, also_suppress)."""
    ws = sc.workspace()
    c = sc.root
    sc.person(ws, "r", email="old-r@example.com")
    c.Identify(workspace=ws, person_id="r", email="new-r@example.com")
    c.ForgetPerson(workspace=ws, person="r", also_suppress=True)
    assert c.Identify(workspace=ws, person_id="q", email="old-r@example.com").email == \
        "old-r@example.com"
    expect_code(FAILED_PRECONDITION, lambda: c.Identify(workspace=ws, person_id="q2",
                                                        email="new-r@example.com"))


def test_unsuppress_counts_removed_and_frees_the_identifier(sc):
    ws = sc.workspace()
    sc.root.SuppressIdentifiers(workspace=ws, identifiers=[ident("email", "u@example.com"),
                                                           ident("phone", "+14155550002")])
    r = sc.client("sc-admin-nopii").UnsuppressIdentifiers(
        workspace=ws, identifiers=[ident("email", "U@EXAMPLE.COM"),
                                   ident("email", "never-suppressed@example.com")])
    assert r.suppressed == 1
    p = sc.root.Identify(workspace=ws, person_id="p", email="u@example.com")
    assert p.email == "u@example.com"
    expect_code(FAILED_PRECONDITION, lambda: sc.root.Identify(workspace=ws, person_id="q",
                                                              phone="+14155550002"))
    r = sc.root.UnsuppressIdentifiers(workspace=ws, identifiers=[ident("email", "u@example.com")])
    assert r.suppressed == 0


def test_calls_naming_a_suppressed_identifier_get_not_found_or_the_decision_suppressed(sc):
    """SPEC §3 Errors: "other calls naming a suppressed or forgotten person get NOT_FOUND or
    the decision SUPPRESSED" — here identifiers suppressed without ever being identified; in a
    batch (§2 rule 1, "same order") each suppressed one is SUPPRESSED in its own place."""
    ws = sc.workspace(allow_override=True)
    c = sc.root
    sc.person(ws, "a")
    c.SuppressIdentifiers(workspace=ws, identifiers=[ident("email", "s@example.com"),
                                                     ident("person_id", "sp")])
    for ref in (ref_email("s@example.com"), "sp"):
        expect_not_found_for_person_calls(c, ws, ref)
        for rpc, d in (("CheckDelivery", c.CheckDelivery(workspace=ws, person=ref,
                                                         channel="email")),
                       ("Override", c.OverrideForImportantMessage(
                           workspace=ws, person=ref, channel="email", message_id="m",
                           justification="j"))):
            assert_decision(d, False, "SUPPRESSED", what=f"{rpc}({ref})")
    batch = c.CheckDeliveryBatch(workspace=ws, channel="email", record_send=True, persons=[
        "a", ref_email("S@EXAMPLE.COM"), "sp", "ghost"])
    got = [(d.allowed, reason_name(d.reason)) for d in batch.decisions]
    assert got == [(True, "SUBSCRIBED"), (False, "SUPPRESSED"), (False, "SUPPRESSED"),
                   (False, "UNKNOWN_PERSON")], got


def test_suppression_is_keyed_by_kind_and_normalized_value_counted_once(sc):
    """SPEC §1: a suppression is kept "over kind + normalized value", so the same text as a
    person id and as an email are two suppressions; §3: `suppressed` "counts identifiers newly
    suppressed" (or removed), so two spellings of one email in one call count once."""
    ws = sc.workspace()
    c = sc.root
    r = c.SuppressIdentifiers(workspace=ws, identifiers=[
        ident("email", "X@Y.COM"), ident("email", "x@y.com"), ident("phone", "+14155550001"),
        ident("phone", "+14155550001")])
    assert r.suppressed == 2, r
    r = c.UnsuppressIdentifiers(workspace=ws, identifiers=[ident("email", "x@y.com"),
                                                           ident("email", " X@y.com ")])
    assert r.suppressed == 1, r
    c.SuppressIdentifiers(workspace=ws, identifiers=[ident("person_id", "a@b.io")])
    assert c.Identify(workspace=ws, person_id="other", email="a@b.io").email == "a@b.io"
    assert_decision(c.CheckDelivery(workspace=ws, person="a@b.io", channel="email"), False,
                    "SUPPRESSED", what="the suppressed person id")
    assert_decision(c.CheckDelivery(workspace=ws, person=ref_email("a@b.io"), channel="email"),
                    True, "SUBSCRIBED", "other", "the email of the same text")


def test_anonymous_ids_name_the_person_to_forget_or_suppress(sc):
    """SPEC §3: ForgetPerson takes any PersonRef, an attached anonymous id included; "a person
    holding" a suppressed identifier "is forgotten", an anonymous id too; and ForgetPerson
    `also_suppress` of an anonymous profile suppresses its anonymous id."""
    ws = sc.workspace()
    c = sc.root
    sc.person(ws, "fa", anonymous_id="cookie-fa")
    assert c.ForgetPerson(workspace=ws, person=ref_anon("cookie-fa")).person_id == "fa"
    expect_code(NOT_FOUND, lambda: c.GetProfile(workspace=ws, person="fa"))

    sc.person(ws, "h2", anonymous_id="cookie-h2", email="h2@example.com")
    r = c.SuppressIdentifiers(workspace=ws, identifiers=[ident("anonymous_id", "cookie-h2")])
    assert r.suppressed == 1 and list(r.forgotten_person_ids) == ["h2"], r
    expect_code(NOT_FOUND, lambda: c.GetProfile(workspace=ws, person="h2"))
    assert sc.person(ws, "h3", email="h2@example.com").email == "h2@example.com", \
        "the holder's email must not be suppressed"

    c.Identify(workspace=ws, anonymous_id="fs-anon")
    assert c.ForgetPerson(workspace=ws, person=ref_anon("fs-anon"),
                          also_suppress=True).person_id == ""
    expect_code(FAILED_PRECONDITION, lambda: c.Identify(workspace=ws, anonymous_id="fs-anon"))
    assert_decision(c.CheckDelivery(workspace=ws, person=ref_anon("fs-anon"), channel="email"),
                    False, "SUPPRESSED", what="the forgotten profile's anonymous id")
