"""OverrideForImportantMessage (SPEC §2 rule 3, §3): allowed when the workspace allows it,
decided by rules 4–8 otherwise, never past suppression or erasure, limits skipped and never
counted, every call in the person's history."""

from sc_support import (assert_decision, ident, limit, ref_email, topic)

TOPICS = [topic("news", "sub"), topic("promo", "unsub")]


def override(sc, ws, person, channel="email", topic_id="", message_id="msg-1",
             justification="password reset", client="sc-override"):
    return sc.client(client).OverrideForImportantMessage(
        workspace=ws, person=person, channel=channel, topic=topic_id, message_id=message_id,
        justification=justification)


def override_entries(sc, ws, person):
    hist = sc.root.GetHistory(workspace=ws, person=person, page_size=1000)
    return [e for e in hist.entries if e.action == "override"]


def test_allowed_override_passes_global_unsubscribe_and_is_in_history(sc):
    ws = sc.workspace(topics=TOPICS, allow_override=True)
    sc.person(ws, "p")
    sc.root.UnsubscribeAll(workspace=ws, person="p")
    d = override(sc, ws, "p", message_id="msg-reset-42",
                 justification="security notice required by law")
    assert_decision(d, True, "OVERRIDDEN_IMPORTANT", "p", "globally unsubscribed, allowed ws")
    entries = override_entries(sc, ws, "p")
    assert len(entries) == 1, entries
    e = entries[0]
    assert e.actor == "sc-override"
    assert e.channel == "email"
    assert "msg-reset-42" in e.detail
    assert "security notice required by law" in e.detail
    assert "GLOBAL_UNSUBSCRIBED" in e.detail
    assert "DECISION_REASON_" not in e.detail, f"reason must be unprefixed: {e.detail!r}"
    # the person's own choices are unchanged
    assert_decision(sc.root.CheckDelivery(workspace=ws, person="p", channel="email"), False,
                    "GLOBAL_UNSUBSCRIBED", "p", "plain check after the override")


def test_allowed_override_passes_channel_and_topic_choices(sc):
    ws = sc.workspace(topics=TOPICS, allow_override=True)
    sc.person(ws, "p", email="p@example.com")
    sc.root.Unsubscribe(workspace=ws, person="p", channel="sms")
    assert_decision(override(sc, ws, "p", "sms", message_id="m-sms"), True,
                    "OVERRIDDEN_IMPORTANT", "p", "channel unsubscribed")
    assert_decision(override(sc, ws, ref_email("p@example.com"), "email", "promo",
                             message_id="m-promo"),
                    True, "OVERRIDDEN_IMPORTANT", "p", "topic not opted in")
    assert_decision(override(sc, ws, "p", "push", "news", message_id="m-news"), True,
                    "OVERRIDDEN_IMPORTANT", "p", "nothing to override")
    details = {e.detail for e in override_entries(sc, ws, "p")}
    assert any("m-sms" in d and "CHANNEL_UNSUBSCRIBED" in d for d in details), details
    assert any("m-promo" in d and "TOPIC_NOT_OPTED_IN" in d for d in details), details


def test_allowed_override_skips_limits_and_counts_nothing(sc):
    ws = sc.workspace(limits=[limit("email", 1, 3600)], allow_override=True)
    sc.person(ws, "p")
    for i in range(3):
        assert_decision(override(sc, ws, "p", message_id=f"m{i}"), True, "OVERRIDDEN_IMPORTANT",
                        "p", f"override {i + 1} under a limit of 1")
    assert_decision(sc.root.CheckDelivery(workspace=ws, person="p", channel="email",
                                          record_send=True),
                    True, "SUBSCRIBED", "p", "first recorded send after overrides")
    assert_decision(override(sc, ws, "p", message_id="m-after"), True, "OVERRIDDEN_IMPORTANT",
                    "p", "override with the limit reached")
    assert_decision(sc.root.CheckDelivery(workspace=ws, person="p", channel="email"), False,
                    "MESSAGE_LIMIT_REACHED", "p", "the limit is reached")


def test_override_never_passes_suppression(sc):
    ws = sc.workspace(allow_override=True)
    sc.person(ws, "p", email="p@example.com")
    sc.root.SuppressIdentifiers(workspace=ws, identifiers=[ident("email", "p@example.com")])
    assert_decision(override(sc, ws, ref_email("p@example.com")), False, "SUPPRESSED",
                    what="suppressed email")
    sc.root.SuppressIdentifiers(workspace=ws, identifiers=[ident("person_id", "q")])
    assert_decision(override(sc, ws, "q"), False, "SUPPRESSED", what="suppressed person id")


def test_override_never_passes_unknown_or_forgotten_person(sc):
    ws = sc.workspace(allow_override=True)
    assert_decision(override(sc, ws, "ghost"), False, "UNKNOWN_PERSON", "", "never identified")
    sc.person(ws, "p")
    sc.root.ForgetPerson(workspace=ws, person="p")
    assert_decision(override(sc, ws, "p"), False, "UNKNOWN_PERSON", "", "forgotten")


def test_refused_override_is_decided_by_rules_4_to_8(sc):
    ws = sc.workspace(topics=TOPICS, limits=[limit("push", 1, 3600)], allow_override=False)
    for pid in ("g", "c", "t", "n", "l", "ok"):
        sc.person(ws, pid)
    sc.root.UnsubscribeAll(workspace=ws, person="g")
    sc.root.Unsubscribe(workspace=ws, person="c", channel="email")
    sc.root.Unsubscribe(workspace=ws, person="t", channel="email", topic="news")
    sc.root.CheckDelivery(workspace=ws, person="l", channel="push", record_send=True)
    cases = [("g", "email", "", False, "GLOBAL_UNSUBSCRIBED"),
             ("c", "email", "", False, "CHANNEL_UNSUBSCRIBED"),
             ("t", "email", "news", False, "TOPIC_UNSUBSCRIBED"),
             ("n", "email", "promo", False, "TOPIC_NOT_OPTED_IN"),
             ("l", "push", "", False, "MESSAGE_LIMIT_REACHED"),
             ("ok", "email", "news", True, "SUBSCRIBED")]
    for pid, ch, t, allowed, reason in cases:
        d = override(sc, ws, pid, ch, t, message_id=f"m-{pid}", justification=f"j-{pid}")
        assert_decision(d, allowed, reason, pid, f"override refused by the workspace ({pid})")
    # every call is in the history, refused ones with the reason
    for pid, ch, t, allowed, reason in cases:
        entries = override_entries(sc, ws, pid)
        assert len(entries) == 1, f"{pid}: {entries}"
        e = entries[0]
        assert f"m-{pid}" in e.detail and f"j-{pid}" in e.detail, e.detail
        if not allowed:
            assert reason in e.detail and "DECISION_REASON_" not in e.detail, e.detail
        assert e.actor == "sc-override"


def test_override_never_counts_a_send_when_the_workspace_refuses_overrides(sc):
    ws = sc.workspace(limits=[limit("email", 1, 3600)], allow_override=False)
    sc.person(ws, "p")
    for i in range(3):
        assert_decision(override(sc, ws, "p", message_id=f"m{i}"), True, "SUBSCRIBED", "p",
                        f"override {i + 1} decided by rule 8")
    assert_decision(sc.root.CheckDelivery(workspace=ws, person="p", channel="email",
                                          record_send=True),
                    True, "SUBSCRIBED", "p", "the overrides counted nothing")
    assert_decision(override(sc, ws, "p", message_id="m-last"), False, "MESSAGE_LIMIT_REACHED",
                    "p", "limits included when overrides are refused")


def test_override_history_actor_is_the_calling_token(sc):
    ws = sc.workspace(allow_override=True)
    sc.person(ws, "p")
    override(sc, ws, "p", message_id="by-override", client="sc-override")
    override(sc, ws, "p", message_id="by-root", client="sc-root")
    actors = {("by-override" in e.detail, "by-root" in e.detail): e.actor
              for e in override_entries(sc, ws, "p")}
    assert actors == {(True, False): "sc-override", (False, True): "sc-root"}
