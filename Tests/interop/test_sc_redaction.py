"""PII redaction (SPEC §5): with scope pii identifiers are shown and redacted=false; without,
redacted=true and email, phone and anonymous ids are masked, in profiles and in history."""

import pytest

from sc_support import (ALREADY_EXISTS, TOKENS, expect_code, pb, pb_grpc, ref_anon, ref_email,
                        ref_phone)

EMAIL = "jane@example.co.uk"
PHONE = "+14155550123"
ANON_LONG = "ajs-anon-0a1b2c3d"
ANON_FOUR = "abcd"
ANON_SHORT = "xy"


@pytest.fixture
def person(sc):
    ws = sc.workspace()
    sc.root.Identify(workspace=ws, person_id="cust-9", email=EMAIL, phone=PHONE,
                     anonymous_id=ANON_LONG)
    sc.root.Identify(workspace=ws, person_id="cust-9", anonymous_id=ANON_FOUR)
    sc.root.Identify(workspace=ws, person_id="cust-9", anonymous_id=ANON_SHORT)
    return ws


def test_profile_with_pii_is_clear(sc, person):
    p = sc.client("sc-read-pii").GetProfile(workspace=person, person="cust-9")
    assert p.redacted is False
    assert (p.person_id, p.email, p.phone) == ("cust-9", EMAIL, PHONE)
    assert sorted(p.anonymous_ids) == sorted([ANON_LONG, ANON_FOUR, ANON_SHORT])


def test_profile_without_pii_is_redacted(sc, person):
    p = sc.client("sc-read").GetProfile(workspace=person, person="cust-9")
    assert p.redacted is True
    assert p.person_id == "cust-9", "person_id is the caller's key, not PII"
    assert p.email == "j***@e***.uk"
    assert p.phone == "+******0123"
    assert sorted(p.anonymous_ids) == sorted(["***" + ANON_LONG[-4:], "***", "***"])


def test_redacted_is_set_without_pii_even_with_nothing_to_hide(sc):
    """SPEC §5: "Without pii, every response sets redacted = true" — also for a person with no
    email, phone or anonymous id, whose answer shows nothing masked."""
    ws = sc.workspace()
    p = sc.client("sc-write").Identify(workspace=ws, person_id="plain")
    assert (p.person_id, p.redacted) == ("plain", True), p
    assert sc.client("sc-read").GetProfile(workspace=ws, person="plain").redacted is True
    assert sc.client("sc-read").GetHistory(workspace=ws, person="plain").redacted is True
    assert sc.client("sc-read-pii").GetProfile(workspace=ws, person="plain").redacted is False
    assert sc.client("sc-read-pii").GetHistory(workspace=ws, person="plain").redacted is False


def test_lookups_by_identifier_work_without_pii(sc, person):
    r = sc.client("sc-read")
    for ref in (ref_email(EMAIL), ref_phone(PHONE), ref_anon(ANON_LONG)):
        p = r.GetProfile(workspace=person, person=ref)
        assert p.person_id == "cust-9" and p.redacted is True


def test_email_without_dot_in_domain(sc):
    ws = sc.workspace()
    sc.root.Identify(workspace=ws, person_id="local", email="jane@localhost")
    assert sc.client("sc-read").GetProfile(workspace=ws, person="local").email == "j***@l***"
    assert sc.client("sc-read-pii").GetProfile(workspace=ws,
                                               person="local").email == "jane@localhost"


def test_identify_answer_is_redacted_without_pii(sc):
    ws = sc.workspace()
    p = sc.client("sc-write").Identify(workspace=ws, person_id="w", email="walt@mail.example.org",
                                       phone="+4930123456789", anonymous_id="cookie-12345")
    assert p.redacted is True
    assert (p.email, p.phone, list(p.anonymous_ids)) == ("w***@m***.org", "+******6789",
                                                         ["***2345"])
    q = sc.client("sc-write-pii").Identify(workspace=ws, person_id="w")
    assert q.redacted is False
    assert (q.email, q.phone, list(q.anonymous_ids)) == ("walt@mail.example.org",
                                                         "+4930123456789", ["cookie-12345"])
    # the stored values are the clear ones
    assert sc.root.GetProfile(workspace=ws, person=ref_email("walt@mail.example.org")
                              ).person_id == "w"


def test_anonymous_profile_redacted(sc):
    ws = sc.workspace()
    a = sc.client("sc-write").Identify(workspace=ws, anonymous_id="visitor-7777x")
    assert a.redacted is True and list(a.anonymous_ids) == ["***777x"]
    a = sc.client("sc-write").Identify(workspace=ws, anonymous_id="v123")
    assert list(a.anonymous_ids) == ["***"]


def _history_text(resp) -> str:
    return "\n".join(f"{e.action}|{e.channel}|{e.topic}|{e.source}|{e.actor}|{e.detail}"
                     for e in resp.entries)


def test_history_redacted_without_pii(sc):
    ws = sc.workspace()
    anon = "anon-hist-5678"
    sc.root.Identify(workspace=ws, anonymous_id=anon)
    sc.root.Subscribe(workspace=ws, person=ref_anon(anon), channel="email", source="banner")
    sc.root.Identify(workspace=ws, person_id="h", email=EMAIL, phone=PHONE, anonymous_id=anon)
    clear = sc.client("sc-read-pii").GetHistory(workspace=ws, person="h", page_size=1000)
    assert clear.redacted is False
    masked = sc.client("sc-read").GetHistory(workspace=ws, person="h", page_size=1000)
    assert masked.redacted is True
    assert len(masked.entries) == len(clear.entries)
    text = _history_text(masked)
    for secret in (EMAIL, PHONE, "4155550123", anon, "anon-hist"):
        assert secret not in text, f"{secret!r} appears in redacted history:\n{text}"
    # the structure is the same, only identifiers differ
    assert [(e.at, e.action, e.channel, e.topic, e.source, e.actor) for e in masked.entries] == \
        [(e.at, e.action, e.channel, e.topic, e.source, e.actor) for e in clear.entries]
    # where a redacted history names an identifier, it is masked as in profiles
    clear_text = _history_text(clear)
    if EMAIL in clear_text:
        assert "j***@e***.uk" in text
    if PHONE in clear_text:
        assert "+******0123" in text
    if anon in clear_text:
        assert "***5678" in text


@pytest.mark.parametrize("email,masked", [("j@a.b.c.example.museum", "j***@a***.museum"),
                                          ("x@y.z", "x***@y***.z"),
                                          ("élise@ünï.de", "é***@ü***.de")])
def test_email_mask_keeps_first_characters_and_only_the_last_label(sc, email, masked):
    """SPEC §5: the first character, `***@`, the domain's first character, `***` and the last
    domain label — whatever the number of labels, one-letter parts, characters beyond ASCII."""
    ws = sc.workspace()
    sc.root.Identify(workspace=ws, person_id="r", email=email)
    assert sc.client("sc-read").GetProfile(workspace=ws, person="r").email == masked


def test_identify_returning_the_person_of_an_anonymous_id_is_redacted(sc):
    """SPEC §5: "Without pii, every response sets redacted = true" — also Identify with only an
    anonymous id that already belongs to a person; an anonymous id of five characters shows its
    last four."""
    ws = sc.workspace()
    sc.root.Identify(workspace=ws, person_id="rp", email="walt@mail.example.org",
                     anonymous_id="abcde")
    p = sc.client("sc-write").Identify(workspace=ws, anonymous_id="abcde")
    assert (p.person_id, p.redacted, p.email, list(p.anonymous_ids)) == \
        ("rp", True, "w***@m***.org", ["***bcde"]), p


def test_admin_scope_sees_pii_in_profiles_history_and_events(sc):
    """SPEC §5: `admin` is "everything", so an admin token without an explicit `pii` sees
    identifiers unredacted in profiles, history and change events (README: "An admin token
    sees PII")."""
    ws = sc.workspace()
    sc.root.Identify(workspace=ws, anonymous_id="adm-anon-4321")
    sc.root.Identify(workspace=ws, person_id="adm", email="adm@example.com", phone=PHONE,
                     anonymous_id="adm-anon-4321")
    admin = sc.client("sc-admin-nopii")
    p = admin.GetProfile(workspace=ws, person="adm")
    assert (p.redacted, p.email, p.phone, list(p.anonymous_ids)) == \
        (False, "adm@example.com", PHONE, ["adm-anon-4321"]), p
    assert admin.GetHistory(workspace=ws, person="adm").redacted is False
    feed = pb_grpc.SubscriptionCenterStub(sc.channel).WatchChanges(
        pb.WatchRequest(workspace=ws, from_oldest=True), timeout=10,
        metadata=[("authorization", "Bearer " + TOKENS["sc-admin-nopii"])])
    events = [next(feed), next(feed)]
    feed.cancel()
    assert [(e.action, e.anonymous_id) for e in events] == \
        [("identify", "adm-anon-4321"), ("merge", "adm-anon-4321")], events


def test_already_exists_names_no_pii_of_the_holder_to_a_caller_without_pii(sc):
    """SPEC §5: a caller without `pii` never sees email, phone or anonymous ids unredacted; the
    ALREADY_EXISTS refusal of an identifier another person holds must not show that person's
    other identifiers either."""
    ws = sc.workspace()
    sc.root.Identify(workspace=ws, person_id="holder", email="holder@secret.example",
                     phone="+14155550100", anonymous_id="cookie-holder")
    writer = sc.client("sc-write")
    for fields, hidden in (({"anonymous_id": "cookie-holder"},
                            ("holder@secret.example", "+14155550100")),
                           ({"phone": "+14155550100"},
                            ("holder@secret.example", "cookie-holder"))):
        e = expect_code(ALREADY_EXISTS, lambda: writer.Identify(workspace=ws, person_id="other",
                                                                **fields))
        for value in hidden:
            assert value not in (e.details() or ""), f"{value!r} in {e.details()!r}"
