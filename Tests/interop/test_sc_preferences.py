"""Subscribe, Unsubscribe, UnsubscribeAll, Resubscribe and GetPreferences (SPEC §1, §3)."""

from sc_support import (INVALID, NOT_FOUND, assert_recent, effective_map, entries_map,
                        entry_states, expect_code, limit, now_ms, reason_name, ref_anon, ref_email,
                        ref_phone, tick, topic)


def test_subscribe_channel_only_topic_only_and_both(sc):
    ws = sc.workspace(topics=[topic("news", "sub"), topic("promo", "unsub")])
    sc.person(ws, "p")
    c = sc.root
    before = now_ms()
    r = c.Subscribe(workspace=ws, person="p", channel="email", source="preference_center",
                    notice_version="v3")
    assert r.person_id == "p"
    assert entries_map(r) == {("email", ""): ("SUBSCRIBED", "preference_center", "v3")}
    assert_recent(r.entries[0].updated_at, before, "entry updated_at")
    r = c.Unsubscribe(workspace=ws, person="p", topic="news", source="one_click")
    assert entries_map(r)[("", "news")] == ("UNSUBSCRIBED", "one_click", "")
    r = c.Subscribe(workspace=ws, person="p", channel="sms", topic="promo", source="support",
                    notice_version="2024-05")
    assert entries_map(r) == {
        ("email", ""): ("SUBSCRIBED", "preference_center", "v3"),
        ("", "news"): ("UNSUBSCRIBED", "one_click", ""),
        ("sms", "promo"): ("SUBSCRIBED", "support", "2024-05"),
    }
    got = c.GetPreferences(workspace=ws, person="p")
    assert got.person_id == "p"
    assert entries_map(got) == entries_map(r)
    assert got.global_unsubscribed is False


def test_unsubscribe_replaces_the_entry_of_the_same_key(sc):
    ws = sc.workspace()
    sc.person(ws, "p")
    first = sc.root.Subscribe(workspace=ws, person="p", channel="email", source="a")
    tick()
    r = sc.root.Unsubscribe(workspace=ws, person="p", channel="email", source="b")
    assert entries_map(r) == {("email", ""): ("UNSUBSCRIBED", "b", "")}
    assert r.entries[0].updated_at >= first.entries[0].updated_at
    r = sc.root.Subscribe(workspace=ws, person="p", channel="email", source="c")
    assert entries_map(r) == {("email", ""): ("SUBSCRIBED", "c", "")}


def test_channel_and_topic_both_empty_is_invalid(sc):
    ws = sc.workspace()
    sc.person(ws, "p")
    for method in ("Subscribe", "Unsubscribe"):
        expect_code(INVALID, lambda: getattr(sc.root, method)(workspace=ws, person="p",
                                                              source="x"),
                    field=("channel", "topic"))
    assert list(sc.root.GetPreferences(workspace=ws, person="p").entries) == []


def test_unsubscribe_all_and_resubscribe_keep_entries(sc):
    ws = sc.workspace(topics=[topic("news", "sub")])
    sc.person(ws, "p")
    c = sc.root
    c.Unsubscribe(workspace=ws, person="p", channel="sms", source="pc")
    c.Subscribe(workspace=ws, person="p", topic="news", source="pc")
    entries = entries_map(c.GetPreferences(workspace=ws, person="p"))
    before = now_ms()
    r = c.UnsubscribeAll(workspace=ws, person="p", source="support")
    assert r.global_unsubscribed is True
    assert r.global_source == "support"
    assert_recent(r.global_updated_at, before, "global_updated_at")
    assert entries_map(r) == entries
    eff = effective_map(r)
    assert eff and all(v == (False, "GLOBAL_UNSUBSCRIBED") for v in eff.values()), eff
    tick()
    r = c.Resubscribe(workspace=ws, person="p", source="preference_center")
    assert r.global_unsubscribed is False
    assert r.global_source == "preference_center"
    assert entries_map(r) == entries, "Resubscribe must not erase channel/topic entries"
    got = c.GetPreferences(workspace=ws, person="p")
    assert entries_map(got) == entries and got.global_unsubscribed is False
    eff = effective_map(got)
    assert eff[("sms", "")] == (False, "CHANNEL_UNSUBSCRIBED")
    assert eff[("email", "")] == (True, "SUBSCRIBED")


def test_effective_covers_every_channel_times_no_topic_and_every_topic(sc):
    channels = ["email", "sms", "push"]
    ws = sc.workspace(channels=channels, topics=[topic("news", "sub"), topic("promo", "unsub")])
    sc.person(ws, "p")
    c = sc.root
    c.Unsubscribe(workspace=ws, person="p", channel="sms")
    c.Subscribe(workspace=ws, person="p", channel="email", topic="promo")
    c.Unsubscribe(workspace=ws, person="p", channel="push", topic="news")
    prefs = c.GetPreferences(workspace=ws, person="p")
    eff = effective_map(prefs)
    assert set(eff) == {(ch, t) for ch in channels for t in ("", "news", "promo")}
    assert len(prefs.effective) == 9
    assert eff == {
        ("email", ""): (True, "SUBSCRIBED"),
        ("email", "news"): (True, "SUBSCRIBED"),
        ("email", "promo"): (True, "SUBSCRIBED"),
        ("sms", ""): (False, "CHANNEL_UNSUBSCRIBED"),
        ("sms", "news"): (False, "CHANNEL_UNSUBSCRIBED"),
        ("sms", "promo"): (False, "CHANNEL_UNSUBSCRIBED"),
        ("push", ""): (True, "SUBSCRIBED"),
        ("push", "news"): (False, "TOPIC_UNSUBSCRIBED"),
        ("push", "promo"): (False, "TOPIC_NOT_OPTED_IN"),
    }
    # each agrees with CheckDelivery
    for (ch, t), (allowed, reason) in eff.items():
        d = c.CheckDelivery(workspace=ws, person="p", channel=ch, topic=t)
        assert (d.allowed, d.reason) == (allowed, [e.reason for e in prefs.effective
                                                   if (e.channel, e.topic) == (ch, t)][0]), \
            f"CheckDelivery({ch!r}, {t!r}) disagrees with effective"


def test_writes_never_create_a_person(sc):
    ws = sc.workspace()
    for method in ("Subscribe", "Unsubscribe"):
        expect_code(NOT_FOUND, lambda: getattr(sc.root, method)(workspace=ws, person="ghost",
                                                                channel="email"))
    for method in ("UnsubscribeAll", "Resubscribe"):
        expect_code(NOT_FOUND, lambda: getattr(sc.root, method)(workspace=ws, person="ghost"))
    expect_code(NOT_FOUND, lambda: sc.root.GetProfile(workspace=ws, person="ghost"))
    expect_code(NOT_FOUND, lambda: sc.root.GetPreferences(workspace=ws, person="ghost"))


def test_preferences_by_email_and_phone_refs(sc):
    ws = sc.workspace()
    sc.person(ws, "p", email="p@example.com", phone="+14155550123")
    r = sc.root.Unsubscribe(workspace=ws, person=ref_email("p@example.com"), channel="push")
    assert r.person_id == "p"
    got = sc.root.GetPreferences(workspace=ws, person=ref_phone("+14155550123"))
    assert got.person_id == "p"
    assert entry_states(got) == {("push", ""): "UNSUBSCRIBED"}


def test_removed_topic_keeps_entries_hidden_and_readding_brings_them_back(sc):
    news = topic("news", "sub")
    ws = sc.workspace(channels=["email"], topics=[news])
    sc.person(ws, "p")
    c = sc.root
    c.Unsubscribe(workspace=ws, person="p", topic="news", source="pc")
    c.Subscribe(workspace=ws, person="p", channel="email", source="pc")
    c.ConfigureWorkspace(sc.config(ws, channels=["email"]))
    got = c.GetPreferences(workspace=ws, person="p")
    assert entry_states(got) == {("email", ""): "SUBSCRIBED"}
    assert set(effective_map(got)) == {("email", "")}
    # the removed topic is unknown now
    expect_code(INVALID, lambda: c.Subscribe(workspace=ws, person="p", topic="news"),
                field="topic")
    expect_code(INVALID, lambda: c.CheckDelivery(workspace=ws, person="p", channel="email",
                                                 topic="news"), field="topic")
    c.ConfigureWorkspace(sc.config(ws, channels=["email"], topics=[news]))
    got = c.GetPreferences(workspace=ws, person="p")
    assert entry_states(got) == {("email", ""): "SUBSCRIBED", ("", "news"): "UNSUBSCRIBED"}
    assert effective_map(got)[("email", "news")] == (False, "TOPIC_UNSUBSCRIBED")


def test_removed_channel_keeps_entries_hidden_and_readding_brings_them_back(sc):
    """As a removed topic (SPEC §3 ConfigureWorkspace), a channel removed from the workspace
    hides people's entries for it and its `effective` rows; configured again, they come back
    (README, "A channel removed from the workspace")."""
    news = topic("news", "sub")
    ws = sc.workspace(channels=["email", "sms"], topics=[news])
    sc.person(ws, "p")
    c = sc.root
    c.Unsubscribe(workspace=ws, person="p", channel="sms", source="pc")
    c.Subscribe(workspace=ws, person="p", channel="sms", topic="news", source="pc")
    c.Subscribe(workspace=ws, person="p", channel="email", source="pc")
    c.ConfigureWorkspace(sc.config(ws, channels=["email"], topics=[news]))
    got = c.GetPreferences(workspace=ws, person="p")
    assert entry_states(got) == {("email", ""): "SUBSCRIBED"}
    assert set(effective_map(got)) == {("email", ""), ("email", "news")}
    c.ConfigureWorkspace(sc.config(ws, channels=["email", "sms"], topics=[news]))
    got = c.GetPreferences(workspace=ws, person="p")
    assert entry_states(got) == {("email", ""): "SUBSCRIBED", ("sms", ""): "UNSUBSCRIBED",
                                 ("sms", "news"): "SUBSCRIBED"}
    assert effective_map(got)[("sms", "news")] == (False, "CHANNEL_UNSUBSCRIBED")


def test_unknown_channel_or_topic_is_invalid_and_stores_nothing(sc):
    ws = sc.workspace(topics=[topic("news", "sub")])
    sc.person(ws, "p")
    expect_code(INVALID, lambda: sc.root.Subscribe(workspace=ws, person="p", channel="fax"),
                field="channel")
    expect_code(INVALID, lambda: sc.root.Unsubscribe(workspace=ws, person="p", topic="nope"),
                field="topic")
    expect_code(INVALID, lambda: sc.root.Unsubscribe(workspace=ws, person="p", channel="email",
                                                     topic="nope"), field="topic")
    assert list(sc.root.GetPreferences(workspace=ws, person="p").entries) == []


def test_effective_of_an_anonymous_profile_at_its_limit_agrees_with_check_delivery(sc):
    """SPEC §3 GetPreferences: `effective` is "the decision CheckDelivery would give now
    (limits included, nothing counted) for every configured channel × (no topic + every
    topic)" — for an anonymous profile too, with a limit reached and entries of every kind."""
    ws = sc.workspace(topics=[topic("news", "sub"), topic("promo", "unsub")],
                      limits=[limit("push", 1, 3600)])
    c = sc.root
    a = ref_anon("eff-anon")
    c.Identify(workspace=ws, anonymous_id="eff-anon")
    c.Subscribe(workspace=ws, person=a, channel="email", topic="promo")
    c.CheckDelivery(workspace=ws, person=a, channel="push", record_send=True)
    c.Unsubscribe(workspace=ws, person=a, topic="news")
    c.Subscribe(workspace=ws, person=a, channel="sms", topic="news")
    eff = effective_map(c.GetPreferences(workspace=ws, person=a))
    assert len(eff) == 4 * 3, sorted(eff)
    assert eff[("push", "")] == (False, "MESSAGE_LIMIT_REACHED"), eff
    for (ch, t), want in sorted(eff.items()):
        d = c.CheckDelivery(workspace=ws, person=a, channel=ch, topic=t)
        assert (d.allowed, reason_name(d.reason)) == want, f"({ch!r}, {t!r})"
