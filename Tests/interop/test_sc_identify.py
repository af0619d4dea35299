"""Identify and GetProfile (SPEC §1, §3): create, update, identifiers kept, anonymous profiles
and their TTL, merges, lookups by every PersonRef kind, ALREADY_EXISTS and FAILED_PRECONDITION."""

import random
import time

import pytest

from sc_support import (ALREADY_EXISTS, Env, FAILED_PRECONDITION, INVALID, NOT_FOUND, TOKENS,
                        assert_decision, assert_recent, effective_map, entries_map, expect_code,
                        history_tuples,
                        ident, limit, now_ms, pb, pb_grpc, ref_anon, ref_email, ref_id,
                        ref_phone, server_args, tick, topic)


def test_identify_creates_a_person(sc):
    ws = sc.workspace()
    before = now_ms()
    p = sc.root.Identify(workspace=ws, person_id="cust-1", email="jane@example.com",
                         phone="+14155550123", anonymous_id="anon-cust-1")
    assert p.person_id == "cust-1"
    assert p.email == "jane@example.com"
    assert p.phone == "+14155550123"
    assert list(p.anonymous_ids) == ["anon-cust-1"]
    assert p.redacted is False
    assert_recent(p.created_at, before, "created_at")
    assert p.updated_at >= p.created_at
    again = sc.root.GetProfile(workspace=ws, person="cust-1")
    assert (again.person_id, again.email, again.phone, list(again.anonymous_ids),
            again.created_at) == ("cust-1", "jane@example.com", "+14155550123",
                                  ["anon-cust-1"], p.created_at)


def test_identify_person_id_only(sc):
    ws = sc.workspace()
    p = sc.root.Identify(workspace=ws, person_id="bare")
    assert (p.person_id, p.email, p.phone, list(p.anonymous_ids)) == ("bare", "", "", [])


def test_email_is_trimmed_and_lower_cased(sc):
    ws = sc.workspace()
    p = sc.root.Identify(workspace=ws, person_id="p", email="  Jane.Doe@Example.COM \t")
    assert p.email == "jane.doe@example.com"
    assert sc.root.GetProfile(workspace=ws, person=ref_email("jane.doe@example.com")
                              ).person_id == "p"
    assert sc.root.GetProfile(workspace=ws, person=ref_email("JANE.DOE@EXAMPLE.COM")
                              ).person_id == "p"


def test_get_profile_by_every_ref_kind(sc):
    ws = sc.workspace()
    sc.root.Identify(workspace=ws, person_id="p1", email="p1@example.com", phone="+4930123456",
                     anonymous_id="cookie-p1")
    sc.root.Identify(workspace=ws, person_id="p2", email="p2@example.com")  # a distractor
    for ref in (ref_id("p1"), ref_email("p1@example.com"), ref_phone("+4930123456"),
                ref_anon("cookie-p1")):
        prof = sc.root.GetProfile(workspace=ws, person=ref)
        assert prof.person_id == "p1", f"GetProfile({ref}) gave {prof.person_id!r}"
        assert prof.email == "p1@example.com"


def test_new_email_replaces_old_which_stops_resolving(sc):
    ws = sc.workspace()
    first = sc.root.Identify(workspace=ws, person_id="p", email="old@example.com",
                             phone="+14155550100")
    tick()
    p = sc.root.Identify(workspace=ws, person_id="p", email="new@example.com")
    assert p.email == "new@example.com"
    assert p.phone == "+14155550100", "the phone, not given, must be kept"
    assert p.created_at == first.created_at
    assert p.updated_at >= first.updated_at
    expect_code(NOT_FOUND, lambda: sc.root.GetProfile(workspace=ws,
                                                      person=ref_email("old@example.com")))
    assert sc.root.GetProfile(workspace=ws, person=ref_email("new@example.com")).person_id == "p"
    # the old email is free for someone else now
    other = sc.root.Identify(workspace=ws, person_id="q", email="old@example.com")
    assert other.email == "old@example.com"


def test_new_phone_replaces_old_and_identifiers_not_given_are_kept(sc):
    ws = sc.workspace()
    sc.root.Identify(workspace=ws, person_id="p", email="p@example.com", phone="+14155550100",
                     anonymous_id="cookie-a")
    p = sc.root.Identify(workspace=ws, person_id="p", phone="+14155550199")
    assert p.phone == "+14155550199"
    assert p.email == "p@example.com"
    assert list(p.anonymous_ids) == ["cookie-a"]
    expect_code(NOT_FOUND, lambda: sc.root.GetProfile(workspace=ws,
                                                      person=ref_phone("+14155550100")))
    # a second anonymous id is added, the first kept
    p = sc.root.Identify(workspace=ws, person_id="p", anonymous_id="cookie-b")
    assert sorted(p.anonymous_ids) == ["cookie-a", "cookie-b"]
    assert p.email == "p@example.com" and p.phone == "+14155550199"
    for a in ("cookie-a", "cookie-b"):
        assert sc.root.GetProfile(workspace=ws, person=ref_anon(a)).person_id == "p"


def test_anonymous_profile_create_and_return(sc):
    ws = sc.workspace()
    a = sc.root.Identify(workspace=ws, anonymous_id="ajs-visitor-1")
    assert a.person_id == ""
    assert list(a.anonymous_ids) == ["ajs-visitor-1"]
    assert a.email == "" and a.phone == ""
    again = sc.root.Identify(workspace=ws, anonymous_id="ajs-visitor-1")
    assert again.person_id == "" and again.created_at == a.created_at
    got = sc.root.GetProfile(workspace=ws, person=ref_anon("ajs-visitor-1"))
    assert got.person_id == "" and list(got.anonymous_ids) == ["ajs-visitor-1"]
    prefs = sc.root.Subscribe(workspace=ws, person=ref_anon("ajs-visitor-1"), channel="email")
    assert prefs.person_id == ""
    d = sc.root.CheckDelivery(workspace=ws, person=ref_anon("ajs-visitor-1"), channel="email")
    assert_decision(d, True, "SUBSCRIBED", person_id="", what="anonymous profile")


def test_identify_attaches_a_new_anonymous_id(sc):
    ws = sc.workspace()
    sc.root.Identify(workspace=ws, person_id="p")
    p = sc.root.Identify(workspace=ws, person_id="p", anonymous_id="fresh-cookie")
    assert list(p.anonymous_ids) == ["fresh-cookie"]
    assert sc.root.GetProfile(workspace=ws, person=ref_anon("fresh-cookie")).person_id == "p"
    # Identify with only that anonymous id returns the identified person
    assert sc.root.Identify(workspace=ws, anonymous_id="fresh-cookie").person_id == "p"


def test_merge_anonymous_profile_choices_by_time(sc):
    ws = sc.workspace(topics=[topic("news", "sub")])
    c = sc.root
    anon = "anon-merge-1"
    c.Identify(workspace=ws, person_id="p", email="p@example.com")
    c.Identify(workspace=ws, anonymous_id=anon)
    # email: the person first, the visitor later → the visitor's choice wins
    c.Unsubscribe(workspace=ws, person="p", channel="email", source="person-email")
    tick()
    c.Subscribe(workspace=ws, person=ref_anon(anon), channel="email", source="anon-email")
    tick()
    # sms: the visitor first, the person later → the person's choice wins
    c.Unsubscribe(workspace=ws, person=ref_anon(anon), channel="sms", source="anon-sms")
    tick()
    c.Subscribe(workspace=ws, person="p", channel="sms", source="person-sms")
    tick()
    # keys only one side has are kept
    c.Unsubscribe(workspace=ws, person=ref_anon(anon), topic="news", source="anon-news")
    c.Subscribe(workspace=ws, person="p", channel="push", source="person-push")
    tick()
    # the visitor's global flag is the later one
    c.UnsubscribeAll(workspace=ws, person=ref_anon(anon), source="anon-global")
    tick()

    merged = c.Identify(workspace=ws, person_id="p", anonymous_id=anon)
    assert merged.person_id == "p"
    assert anon in merged.anonymous_ids
    assert merged.email == "p@example.com"

    prefs = c.GetPreferences(workspace=ws, person="p")
    got = entries_map(prefs)
    assert got[("email", "")][:2] == ("SUBSCRIBED", "anon-email")
    assert got[("sms", "")][:2] == ("SUBSCRIBED", "person-sms")
    assert got[("", "news")][:2] == ("UNSUBSCRIBED", "anon-news")
    assert got[("push", "")][:2] == ("SUBSCRIBED", "person-push")
    assert set(got) == {("email", ""), ("sms", ""), ("", "news"), ("push", "")}
    assert prefs.global_unsubscribed is True
    assert prefs.global_source == "anon-global"

    # the anonymous id keeps resolving to the person; the separate profile is gone
    assert c.GetProfile(workspace=ws, person=ref_anon(anon)).person_id == "p"
    assert c.Identify(workspace=ws, anonymous_id=anon).person_id == "p"
    d = c.CheckDelivery(workspace=ws, person=ref_anon(anon), channel="email")
    assert_decision(d, False, "GLOBAL_UNSUBSCRIBED", person_id="p", what="merged anonymous id")

    # histories joined: the visitor's changes are in the person's history, with a merge
    hist = history_tuples(c.GetHistory(workspace=ws, person="p", page_size=1000))
    actions_sources = {(h[1], h[4]) for h in hist}
    for want in [("subscribe", "anon-email"), ("unsubscribe", "anon-sms"),
                 ("unsubscribe", "anon-news"), ("unsubscribe_all", "anon-global"),
                 ("unsubscribe", "person-email"), ("subscribe", "person-sms")]:
        assert want in actions_sources, f"{want} missing from the merged history {hist}"
    assert any(h[1] == "merge" for h in hist), f"no merge entry in {hist}"


def test_merge_later_global_flag_of_the_person_wins(sc):
    ws = sc.workspace()
    c = sc.root
    anon = "anon-merge-2"
    c.Identify(workspace=ws, person_id="p")
    c.Identify(workspace=ws, anonymous_id=anon)
    c.UnsubscribeAll(workspace=ws, person=ref_anon(anon), source="anon")
    tick()
    c.UnsubscribeAll(workspace=ws, person="p", source="p-unsub")
    tick()
    c.Resubscribe(workspace=ws, person="p", source="p-resub")  # the latest flag: not unsubscribed
    tick()
    c.Identify(workspace=ws, person_id="p", anonymous_id=anon)
    prefs = c.GetPreferences(workspace=ws, person="p")
    assert prefs.global_unsubscribed is False
    d = c.CheckDelivery(workspace=ws, person="p", channel="email")
    assert_decision(d, True, "SUBSCRIBED", person_id="p", what="after merge")


def test_merge_later_resubscribe_of_the_visitor_clears_the_persons_earlier_flag(sc):
    """SPEC §3 Identify: "the later global flag wins" — also when the later one is the
    visitor's Resubscribe (the flag cleared) after the person's UnsubscribeAll."""
    ws = sc.workspace()
    c = sc.root
    c.Identify(workspace=ws, anonymous_id="mr-anon")
    sc.person(ws, "mr")
    c.UnsubscribeAll(workspace=ws, person="mr", source="person-all")
    tick()
    c.UnsubscribeAll(workspace=ws, person=ref_anon("mr-anon"), source="anon-all")
    tick()
    c.Resubscribe(workspace=ws, person=ref_anon("mr-anon"), source="anon-resub")
    tick()
    c.Identify(workspace=ws, person_id="mr", anonymous_id="mr-anon")
    prefs = c.GetPreferences(workspace=ws, person="mr")
    assert (prefs.global_unsubscribed, prefs.global_source) == (False, "anon-resub"), prefs
    assert_decision(c.CheckDelivery(workspace=ws, person="mr", channel="email"), True,
                    "SUBSCRIBED", "mr", "after the merge")


@pytest.mark.deadline(60)
def test_random_merges_keep_the_later_choice_per_key_and_join_counted_sends(sc):
    """SPEC §3 Identify, on random histories of a person and an anonymous profile: after the
    merge each preference key holds the later choice by set time (the `updated_at` the writes
    answered; a tie goes to the person), the later global flag wins, and (README, Merges and
    sends) the profile's counted sends join the person's, so every `effective` decision is
    §2's for the merged state. Into a new person id too. Seeded, so a failure repeats."""
    from test_sc_delivery import model_decision
    rng = random.Random(1206)
    channels, topics = ["email", "sms", "push"], ["news", "promo"]
    defaults, limits = {"news": "sub", "promo": "unsub"}, {"sms": 3}
    keys = [(ch, "") for ch in channels] + [("", t) for t in topics] + \
        [(ch, t) for ch in channels for t in topics]
    c = sc.root
    failures = []
    for round_ in range(12):
        ws = sc.workspace(channels=channels, topics=[topic(t, defaults[t]) for t in topics],
                          limits=[limit("sms", limits["sms"], 3600)])
        anon = ref_anon("cookie")
        c.Identify(workspace=ws, anonymous_id="cookie")
        sides = {"anon": {"entries": {}, "global": None, "sends": 0}}
        if round_ % 4:  # every fourth round merges into a new person id
            sc.person(ws, "p")
            sides["p"] = {"entries": {}, "global": None, "sends": 0}
        for _ in range(rng.randint(0, 12)):
            side = rng.choice(sorted(sides))
            ref = anon if side == "anon" else "p"
            op = rng.random()
            if op < 0.6:
                key, s = rng.choice(keys), rng.choice("SU")
                r = (c.Subscribe if s == "S" else c.Unsubscribe)(workspace=ws, person=ref,
                                                                 channel=key[0], topic=key[1])
                at = [e.updated_at for e in r.entries if (e.channel, e.topic) == key][0]
                sides[side]["entries"][key] = (s, at)
            elif op < 0.8:
                unsubscribed = rng.random() < 0.6
                r = (c.UnsubscribeAll if unsubscribed else c.Resubscribe)(workspace=ws,
                                                                          person=ref)
                sides[side]["global"] = (unsubscribed, r.global_updated_at)
            elif c.CheckDelivery(workspace=ws, person=ref, channel="sms",
                                 record_send=True).allowed:
                sides[side]["sends"] += 1
        c.Identify(workspace=ws, person_id="p", anonymous_id="cookie")
        person = sides.get("p", {"entries": {}, "global": None, "sends": 0})
        entries = dict(person["entries"])
        for key, (s, at) in sides["anon"]["entries"].items():
            if key not in entries or entries[key][1] < at:
                entries[key] = (s, at)
        flag = person["global"]
        if sides["anon"]["global"] and (flag is None or sides["anon"]["global"][1] > flag[1]):
            flag = sides["anon"]["global"]
        state = {"global": bool(flag and flag[0]),
                 "entries": {k: v[0] for k, v in entries.items()},
                 "sends": {"sms": person["sends"] + sides["anon"]["sends"]}}
        prefs = c.GetPreferences(workspace=ws, person=ref_anon("cookie"))
        got = {k: v[0][0] for k, v in entries_map(prefs).items()}
        if (prefs.person_id, got, prefs.global_unsubscribed) != \
                ("p", state["entries"], state["global"]):
            failures.append((round_, "state", prefs.person_id, got, prefs.global_unsubscribed,
                             sides))
        want = {(ch, t): model_decision(defaults, limits, state, ch, t)
                for ch in channels for t in [""] + topics}
        if effective_map(prefs) != want:
            failures.append((round_, "effective", effective_map(prefs), want, sides))
    assert not failures, f"{len(failures)} merges disagree with SPEC §3, first: {failures[:2]}"


def test_merge_into_a_new_person_id(sc):
    """SPEC §3 Identify: "If anonymous_id names an anonymous profile, merge it in" also when
    `person_id` is new: the visitor's choices and history become the new person's, the
    separate profile disappears and the anonymous id names the person."""
    ws = sc.workspace(topics=[topic("promo", "unsub")])
    c = sc.root
    c.Identify(workspace=ws, anonymous_id="anon-np-1")
    c.Subscribe(workspace=ws, person=ref_anon("anon-np-1"), topic="promo", source="banner")
    p = c.Identify(workspace=ws, person_id="newp", anonymous_id="anon-np-1")
    assert p.person_id == "newp" and list(p.anonymous_ids) == ["anon-np-1"], p
    got = entries_map(c.GetPreferences(workspace=ws, person="newp"))
    assert got == {("", "promo"): ("SUBSCRIBED", "banner", "")}, got
    assert c.GetProfile(workspace=ws, person=ref_anon("anon-np-1")).person_id == "newp"
    actions = [e.action for e in c.GetHistory(workspace=ws, person="newp").entries]
    assert "merge" in actions and "subscribe" in actions, actions


def test_merge_keeps_a_global_flag_only_the_person_set(sc):
    """SPEC §3: "the later global flag wins" — the visitor never set one, so a later change of
    the visitor's (a channel entry) does not clear the person's UnsubscribeAll."""
    ws = sc.workspace()
    c = sc.root
    c.Identify(workspace=ws, anonymous_id="mg-anon")
    sc.person(ws, "mg")
    tick()
    c.UnsubscribeAll(workspace=ws, person="mg", source="person-all")
    tick()
    c.Subscribe(workspace=ws, person=ref_anon("mg-anon"), channel="email")
    c.Identify(workspace=ws, person_id="mg", anonymous_id="mg-anon")
    prefs = c.GetPreferences(workspace=ws, person="mg")
    assert (prefs.global_unsubscribed, prefs.global_source) == (True, "person-all"), prefs


def test_merge_refused_by_a_suppressed_identifier_keeps_the_anonymous_profile(sc):
    """SPEC §3 Identify: FAILED_PRECONDITION "(nothing stored) if any identifier is
    suppressed" — a merge the call would have made is not made either."""
    ws = sc.workspace()
    c = sc.root
    c.SuppressIdentifiers(workspace=ws, identifiers=[ident("email", "bad@example.com")])
    c.Identify(workspace=ws, anonymous_id="ms-anon")
    c.Subscribe(workspace=ws, person=ref_anon("ms-anon"), channel="sms")
    expect_code(FAILED_PRECONDITION, lambda: c.Identify(
        workspace=ws, person_id="ms", email="bad@example.com", anonymous_id="ms-anon"))
    assert c.GetProfile(workspace=ws, person=ref_anon("ms-anon")).person_id == ""
    expect_code(NOT_FOUND, lambda: c.GetProfile(workspace=ws, person="ms"))
    got = entries_map(c.GetPreferences(workspace=ws, person=ref_anon("ms-anon")))
    assert got == {("sms", ""): ("SUBSCRIBED", "", "")}, got


def test_anonymous_profile_has_an_empty_person_id_in_every_response(sc):
    """SPEC §3: "An anonymous profile has an empty person_id in every response"."""
    ws = sc.workspace(allow_override=True)
    c = sc.root
    a = ref_anon("visitor-zz9")
    c.Identify(workspace=ws, anonymous_id="visitor-zz9")
    got = {
        "GetPreferences": c.GetPreferences(workspace=ws, person=a).person_id,
        "UnsubscribeAll": c.UnsubscribeAll(workspace=ws, person=a).person_id,
        "Resubscribe": c.Resubscribe(workspace=ws, person=a).person_id,
        "Unsubscribe": c.Unsubscribe(workspace=ws, person=a, channel="sms").person_id,
        "CheckDeliveryBatch": c.CheckDeliveryBatch(workspace=ws, channel="email",
                                                   persons=[a]).decisions[0].person_id,
        "Override": c.OverrideForImportantMessage(workspace=ws, person=a, channel="email",
                                                  message_id="m", justification="j").person_id,
    }
    assert all(v == "" for v in got.values()), got


def test_email_of_another_person_already_exists_and_changes_nothing(sc):
    ws = sc.workspace()
    sc.root.Identify(workspace=ws, person_id="p1", email="taken@example.com",
                     phone="+14155550111", anonymous_id="cookie-p1")
    before = sc.root.Identify(workspace=ws, person_id="p2", email="p2@example.com")
    for fields in ({"email": "taken@example.com"}, {"phone": "+14155550111"},
                   {"anonymous_id": "cookie-p1"},
                   {"email": "taken@example.com", "phone": "+14155550222"}):
        expect_code(ALREADY_EXISTS,
                    lambda: sc.root.Identify(workspace=ws, person_id="p2", **fields))
    after = sc.root.GetProfile(workspace=ws, person="p2")
    assert (after.email, after.phone, list(after.anonymous_ids), after.updated_at) == \
        (before.email, before.phone, list(before.anonymous_ids), before.updated_at)
    expect_code(NOT_FOUND, lambda: sc.root.GetProfile(workspace=ws,
                                                      person=ref_phone("+14155550222")))
    # a new person with a taken email is refused and not created
    expect_code(ALREADY_EXISTS, lambda: sc.root.Identify(workspace=ws, person_id="p3",
                                                         email="taken@example.com"))
    expect_code(NOT_FOUND, lambda: sc.root.GetProfile(workspace=ws, person="p3"))


def test_suppressed_identifier_is_failed_precondition_and_nothing_is_stored(sc):
    ws = sc.workspace()
    sc.root.SuppressIdentifiers(workspace=ws, identifiers=[ident("email", "gone@example.com"),
                                                           ident("anonymous_id", "gone-cookie")])
    expect_code(FAILED_PRECONDITION, lambda: sc.root.Identify(
        workspace=ws, person_id="newbie", email="gone@example.com"))
    expect_code(NOT_FOUND, lambda: sc.root.GetProfile(workspace=ws, person="newbie"))
    expect_code(FAILED_PRECONDITION, lambda: sc.root.Identify(workspace=ws,
                                                              anonymous_id="gone-cookie"))
    expect_code(NOT_FOUND, lambda: sc.root.GetProfile(workspace=ws,
                                                      person=ref_anon("gone-cookie")))
    # an existing person: the whole call is refused, other identifiers are not stored either
    before = sc.root.Identify(workspace=ws, person_id="old", email="old@example.com")
    expect_code(FAILED_PRECONDITION, lambda: sc.root.Identify(
        workspace=ws, person_id="old", email="gone@example.com", phone="+14155550777"))
    after = sc.root.GetProfile(workspace=ws, person="old")
    assert (after.email, after.phone) == (before.email, before.phone)
    # a suppressed identifier wins over one another person holds, in whichever field
    sc.root.SuppressIdentifiers(workspace=ws, identifiers=[ident("phone", "+14155550999")])
    sc.root.Identify(workspace=ws, person_id="holder", email="held@example.com",
                     anonymous_id="held-cookie")
    for fields in ({"email": "held@example.com", "phone": "+14155550999"},
                   {"email": "gone@example.com", "anonymous_id": "held-cookie"}):
        expect_code(FAILED_PRECONDITION, lambda: sc.root.Identify(
            workspace=ws, person_id="newbie", **fields))
        expect_code(NOT_FOUND, lambda: sc.root.GetProfile(workspace=ws, person="newbie"))


def test_email_or_phone_without_person_id_is_invalid(sc):
    ws = sc.workspace()
    expect_code(INVALID, lambda: sc.root.Identify(workspace=ws, email="x@example.com"),
                field=("person_id", "email"))
    expect_code(INVALID, lambda: sc.root.Identify(workspace=ws, phone="+14155550123"),
                field=("person_id", "phone"))
    expect_code(NOT_FOUND, lambda: sc.root.GetProfile(workspace=ws,
                                                      person=ref_email("x@example.com")))


def test_email_or_phone_with_only_an_anonymous_id_is_invalid_and_creates_nothing(sc):
    """SPEC §3 Identify: "email or phone without person_id is INVALID_ARGUMENT" also when an
    anonymous id is given: the call is refused whole, so no anonymous profile is created and
    an existing one is left as it was."""
    ws = sc.workspace()
    c = sc.root
    for fields in ({"email": "x@example.com"}, {"phone": "+14155550123"}):
        expect_code(INVALID, lambda: c.Identify(workspace=ws, anonymous_id="new-cookie",
                                                **fields), field=("person_id", *fields))
    expect_code(NOT_FOUND, lambda: c.GetProfile(workspace=ws, person=ref_anon("new-cookie")))
    before = c.Identify(workspace=ws, anonymous_id="old-cookie")
    expect_code(INVALID, lambda: c.Identify(workspace=ws, anonymous_id="old-cookie",
                                            email="x@example.com"), field=("person_id", "email"))
    after = c.GetProfile(workspace=ws, person=ref_anon("old-cookie"))
    assert (after.person_id, after.email, after.updated_at) == ("", "", before.updated_at), after
    expect_code(NOT_FOUND, lambda: c.GetProfile(workspace=ws, person=ref_email("x@example.com")))


def test_no_identifier_at_all_is_invalid(sc):
    ws = sc.workspace()
    expect_code(INVALID, lambda: sc.root.Identify(workspace=ws),
                field=("person_id", "anonymous_id"))


def test_identify_records_history(sc):
    ws = sc.workspace()
    p = sc.root.Identify(workspace=ws, person_id="hist", email="h@example.com")
    hist = sc.root.GetHistory(workspace=ws, person=p.person_id)
    assert [e.action for e in hist.entries] == ["identify"]
    assert hist.entries[0].actor == "sc-root"


def _exists(c, ws, anon):
    try:
        c.GetProfile(workspace=ws, person=ref_anon(anon))
        return True
    except Exception as e:
        assert e.code() == NOT_FOUND, e
        return False


def test_an_anonymous_profiles_updated_at_moves_with_changes_not_with_sends_or_overrides(sc):
    """SPEC §1: an anonymous profile "not merged or changed" for the TTL is deleted, and §3
    CheckDelivery is "read-only unless record_send": checks, counted sends and overrides leave
    `updated_at` (what the TTL counts from) as it was; preference and global changes move it
    (README, Anonymous TTL)."""
    ws = sc.workspace(limits=[limit("email", 5, 3600)], allow_override=True)
    c = sc.root
    a = ref_anon("upd-cookie")
    created = c.Identify(workspace=ws, anonymous_id="upd-cookie").updated_at
    tick()
    c.CheckDelivery(workspace=ws, person=a, channel="email")
    c.CheckDelivery(workspace=ws, person=a, channel="email", record_send=True)
    c.CheckDeliveryBatch(workspace=ws, channel="email", persons=[a], record_send=True)
    c.OverrideForImportantMessage(workspace=ws, person=a, channel="email", message_id="m",
                                  justification="j")
    c.GetPreferences(workspace=ws, person=a)
    assert c.GetProfile(workspace=ws, person=a).updated_at == created
    assert c.Identify(workspace=ws, anonymous_id="upd-cookie").updated_at == created
    tick()
    c.Subscribe(workspace=ws, person=a, channel="sms")
    subscribed = c.GetProfile(workspace=ws, person=a).updated_at
    assert subscribed > created
    tick()
    c.UnsubscribeAll(workspace=ws, person=a)
    assert c.GetProfile(workspace=ws, person=a).updated_at > subscribed


@pytest.mark.deadline(60)
def test_anonymous_profiles_expire_after_the_ttl_unless_changed(start_server):
    server = start_server("subcenterd", server_args() + ["--anonymous-ttl", "2"])
    env = Env(server)
    try:
        c = env.root
        ws = env.workspace()
        c.Identify(workspace=ws, anonymous_id="idle-visitor")
        c.Identify(workspace=ws, anonymous_id="busy-visitor")
        c.Identify(workspace=ws, person_id="p", anonymous_id="attached-cookie")
        time.sleep(1.0)
        c.Subscribe(workspace=ws, person=ref_anon("busy-visitor"), channel="email")
        changed = time.monotonic()
        time.sleep(1.2)
        # changed 1.2 s ago with a TTL of 2 s: still there
        assert _exists(c, ws, "busy-visitor"), "an anonymous profile changed within the TTL went"
        deadline = time.monotonic() + 15
        while _exists(c, ws, "idle-visitor") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _exists(c, ws, "idle-visitor"), \
            "an idle anonymous profile outlived its TTL by 15 s"
        while _exists(c, ws, "busy-visitor") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _exists(c, ws, "busy-visitor"), \
            f"the changed anonymous profile was still there {time.monotonic() - changed:.1f} s on"
        d = c.CheckDelivery(workspace=ws, person=ref_anon("idle-visitor"), channel="email")
        assert_decision(d, False, "UNKNOWN_PERSON", "", "expired anonymous profile")
        # identified persons and their anonymous ids are not anonymous profiles
        assert c.GetProfile(workspace=ws, person=ref_anon("attached-cookie")).person_id == "p"
        # SPEC §3 WatchChanges: "Every removal of a person — ... anonymous-TTL expiry — emits
        # a forget event", the tombstone carrying the anonymous id.
        feed = pb_grpc.SubscriptionCenterStub(env.channel).WatchChanges(
            pb.WatchRequest(workspace=ws, from_oldest=True), timeout=10,
            metadata=[("authorization", "Bearer " + TOKENS["sc-read-pii"])])
        forgets = set()
        for e in feed:
            if e.action == "forget":
                assert e.person_id == "", e
                forgets.add(e.anonymous_id)
            if forgets >= {"idle-visitor", "busy-visitor"}:
                break
        feed.cancel()
        assert forgets == {"idle-visitor", "busy-visitor"}, forgets
    finally:
        env.close()


@pytest.mark.deadline(60)
def test_anonymous_profiles_whose_ttl_ran_out_while_the_server_was_down_go_at_start(tmp_path):
    """The TTL counts while the server is down: a profile that expired meanwhile is gone right
    after the restart, not one sweep period (here the TTL, 4 s) later."""
    from crash_support import DurableServer
    srv = DurableServer(str(tmp_path), extra=("--anonymous-ttl", "4"))
    try:
        srv.start()
        srv.client.Identify(workspace="default", anonymous_id="left-while-down")
        assert srv.terminate() == 0
        time.sleep(4.5)
        srv.start()
        started = time.monotonic()
        while _exists(srv.client, "default", "left-while-down") and \
                time.monotonic() - started < 10:
            time.sleep(0.05)
        assert time.monotonic() - started < 2.0, \
            f"an expired anonymous profile was served {time.monotonic() - started:.1f} s after start"
    finally:
        srv.close()
