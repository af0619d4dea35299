"""CheckDelivery and CheckDeliveryBatch (SPEC §2, §3): every row of the decision table and its
precedence, record_send and message limits, batches in order and at the 10,000 bound."""

import random
import time

import pytest

from sc_support import (INVALID, NOT_FOUND, assert_decision, effective_map, entries_map,
                        expect_code, ident,
                        limit, reason_name, ref_anon, ref_email, ref_phone, topic,
                        unique)

TOPICS = [topic("news", "sub"), topic("promo", "unsub")]


def check(sc, ws, person, channel, topic_id="", record=False, client=None):
    return (client or sc.root).CheckDelivery(workspace=ws, person=person, channel=channel,
                                            topic=topic_id, record_send=record)


def test_row8_subscribed_by_default(sc):
    ws = sc.workspace(topics=TOPICS)
    sc.person(ws, "p")
    assert_decision(check(sc, ws, "p", "email"), True, "SUBSCRIBED", "p", "channel only")
    assert_decision(check(sc, ws, "p", "email", "news"), True, "SUBSCRIBED", "p",
                    "SUBSCRIBED-default topic")


def test_row1_suppressed_identifier_of_the_request(sc):
    ws = sc.workspace()
    sc.root.SuppressIdentifiers(workspace=ws, identifiers=[ident("email", "never@example.com")])
    # rule 1 comes before rule 2: never identified, but suppressed
    d = check(sc, ws, ref_email("never@example.com"), "email")
    assert_decision(d, False, "SUPPRESSED", "", "suppressed email never identified")


def test_row1_suppressed_holder_then_unknown_by_other_ids(sc):
    ws = sc.workspace()
    sc.person(ws, "p", email="p@example.com", phone="+14155550123")
    sc.root.SuppressIdentifiers(workspace=ws, identifiers=[ident("email", "p@example.com")])
    assert_decision(check(sc, ws, ref_email("p@example.com"), "email"), False, "SUPPRESSED",
                    what="suppressed email")
    # the holder was forgotten; its person id and phone are not suppressed
    assert_decision(check(sc, ws, "p", "email"), False, "UNKNOWN_PERSON", "", "forgotten holder")
    assert_decision(check(sc, ws, ref_phone("+14155550123"), "sms"), False, "UNKNOWN_PERSON", "",
                    "forgotten holder's phone")


def test_row1_suppressed_person_id(sc):
    ws = sc.workspace()
    sc.person(ws, "p")
    sc.root.SuppressIdentifiers(workspace=ws, identifiers=[ident("person_id", "p")])
    assert_decision(check(sc, ws, "p", "email"), False, "SUPPRESSED", what="suppressed person id")


def test_row2_unknown_person(sc):
    ws = sc.workspace(topics=TOPICS)
    for ref in ("nobody", ref_email("nobody@example.com"), ref_phone("+14155550000"),
                ref_anon("nobody-cookie")):
        assert_decision(check(sc, ws, ref, "email", "news"), False, "UNKNOWN_PERSON", "",
                        f"unknown {ref}")


def test_row4_global_unsubscribed_beats_everything_below(sc):
    ws = sc.workspace(topics=TOPICS)
    sc.person(ws, "p")
    sc.root.Subscribe(workspace=ws, person="p", channel="email", topic="promo")
    sc.root.Subscribe(workspace=ws, person="p", channel="email")
    sc.root.UnsubscribeAll(workspace=ws, person="p")
    for t in ("", "news", "promo"):
        assert_decision(check(sc, ws, "p", "email", t), False, "GLOBAL_UNSUBSCRIBED", "p",
                        f"global unsubscribed, topic {t!r}")


def test_row5_channel_unsubscribed_beats_topic_entries(sc):
    ws = sc.workspace(topics=TOPICS)
    sc.person(ws, "p")
    sc.root.Unsubscribe(workspace=ws, person="p", channel="email")
    sc.root.Subscribe(workspace=ws, person="p", channel="email", topic="promo")
    sc.root.Subscribe(workspace=ws, person="p", topic="news")
    for t in ("", "news", "promo"):
        assert_decision(check(sc, ws, "p", "email", t), False, "CHANNEL_UNSUBSCRIBED", "p",
                        f"channel unsubscribed, topic {t!r}")
    assert_decision(check(sc, ws, "p", "sms"), True, "SUBSCRIBED", "p", "other channel")


def test_row6_topic_unsubscribed_explicit_channel_topic_entry(sc):
    ws = sc.workspace(topics=TOPICS)
    sc.person(ws, "p")
    sc.root.Unsubscribe(workspace=ws, person="p", channel="email", topic="news")
    assert_decision(check(sc, ws, "p", "email", "news"), False, "TOPIC_UNSUBSCRIBED", "p",
                    "(email, news) unsubscribed")
    assert_decision(check(sc, ws, "p", "sms", "news"), True, "SUBSCRIBED", "p",
                    "(sms, news) untouched")
    assert_decision(check(sc, ws, "p", "email"), True, "SUBSCRIBED", "p", "email, no topic")


def test_row6_topic_unsubscribed_on_every_channel(sc):
    ws = sc.workspace(topics=TOPICS)
    sc.person(ws, "p")
    sc.root.Unsubscribe(workspace=ws, person="p", topic="news")
    for ch in ("email", "sms", "push", "in_app"):
        assert_decision(check(sc, ws, "p", ch, "news"), False, "TOPIC_UNSUBSCRIBED", "p",
                        f"('', news) unsubscribed, channel {ch}")


def test_row6_channel_topic_entry_comes_before_topic_entry(sc):
    ws = sc.workspace(topics=TOPICS)
    sc.person(ws, "p")
    sc.root.Unsubscribe(workspace=ws, person="p", topic="news")
    sc.root.Subscribe(workspace=ws, person="p", channel="email", topic="news")
    assert_decision(check(sc, ws, "p", "email", "news"), True, "SUBSCRIBED", "p",
                    "(email, news) SUBSCRIBED over ('', news) UNSUBSCRIBED")
    assert_decision(check(sc, ws, "p", "sms", "news"), False, "TOPIC_UNSUBSCRIBED", "p",
                    "('', news) UNSUBSCRIBED on sms")
    sc.root.Subscribe(workspace=ws, person="p", topic="promo")
    sc.root.Unsubscribe(workspace=ws, person="p", channel="sms", topic="promo")
    assert_decision(check(sc, ws, "p", "sms", "promo"), False, "TOPIC_UNSUBSCRIBED", "p",
                    "(sms, promo) UNSUBSCRIBED over ('', promo) SUBSCRIBED")
    assert_decision(check(sc, ws, "p", "email", "promo"), True, "SUBSCRIBED", "p",
                    "('', promo) SUBSCRIBED opts in")


def test_row6_topic_not_opted_in_and_opting_in(sc):
    ws = sc.workspace(topics=TOPICS)
    sc.person(ws, "p")
    assert_decision(check(sc, ws, "p", "email", "promo"), False, "TOPIC_NOT_OPTED_IN", "p",
                    "UNSUBSCRIBED default, no entry")
    # a channel entry does not opt in to an UNSUBSCRIBED-default topic
    sc.root.Subscribe(workspace=ws, person="p", channel="email")
    assert_decision(check(sc, ws, "p", "email", "promo"), False, "TOPIC_NOT_OPTED_IN", "p",
                    "channel entry SUBSCRIBED only")
    sc.root.Subscribe(workspace=ws, person="p", channel="email", topic="promo")
    assert_decision(check(sc, ws, "p", "email", "promo"), True, "SUBSCRIBED", "p",
                    "(email, promo) SUBSCRIBED")
    assert_decision(check(sc, ws, "p", "sms", "promo"), False, "TOPIC_NOT_OPTED_IN", "p",
                    "sms not opted in")
    # an explicit unsubscribe of an opt-in topic is TOPIC_UNSUBSCRIBED, not NOT_OPTED_IN
    sc.root.Unsubscribe(workspace=ws, person="p", channel="sms", topic="promo")
    assert_decision(check(sc, ws, "p", "sms", "promo"), False, "TOPIC_UNSUBSCRIBED", "p",
                    "(sms, promo) UNSUBSCRIBED")


def test_row7_limit_reached_after_max_recorded_sends(sc):
    ws = sc.workspace(limits=[limit("email", 3, 3600)])
    sc.person(ws, "p")
    for i in range(3):
        assert_decision(check(sc, ws, "p", "email", record=True), True, "SUBSCRIBED", "p",
                        f"recorded send {i + 1}")
    for i in range(2):
        assert_decision(check(sc, ws, "p", "email", record=True), False, "MESSAGE_LIMIT_REACHED",
                        "p", f"send {4 + i}")
    assert_decision(check(sc, ws, "p", "email"), False, "MESSAGE_LIMIT_REACHED", "p",
                    "unrecorded check after the limit")
    assert_decision(check(sc, ws, "p", "sms", record=True), True, "SUBSCRIBED", "p",
                    "a channel without limit")
    sc.person(ws, "q")
    assert_decision(check(sc, ws, "q", "email", record=True), True, "SUBSCRIBED", "q",
                    "another person's count")
    assert effective_map(sc.root.GetPreferences(workspace=ws, person="p"))[("email", "")] == \
        (False, "MESSAGE_LIMIT_REACHED")


def test_unrecorded_checks_and_get_preferences_count_nothing(sc):
    ws = sc.workspace(topics=TOPICS, limits=[limit("email", 2, 3600)])
    sc.person(ws, "p")
    for _ in range(5):
        assert_decision(check(sc, ws, "p", "email"), True, "SUBSCRIBED", "p", "unrecorded")
        assert_decision(check(sc, ws, "p", "email", "news"), True, "SUBSCRIBED", "p", "unrecorded")
        sc.root.GetPreferences(workspace=ws, person="p")
    for i in range(2):
        assert_decision(check(sc, ws, "p", "email", "news", record=True), True, "SUBSCRIBED", "p",
                        f"recorded {i + 1}")
    assert_decision(check(sc, ws, "p", "email", record=True), False, "MESSAGE_LIMIT_REACHED",
                    "p", "third recorded send, limit counts per channel across topics")


def test_denied_decisions_count_nothing(sc):
    ws = sc.workspace(topics=TOPICS, limits=[limit("email", 2, 3600)])
    sc.person(ws, "p")
    sc.root.Unsubscribe(workspace=ws, person="p", channel="email")
    for _ in range(3):
        assert_decision(check(sc, ws, "p", "email", record=True), False, "CHANNEL_UNSUBSCRIBED",
                        "p", "denied")
    sc.root.Subscribe(workspace=ws, person="p", channel="email")
    for _ in range(3):
        assert_decision(check(sc, ws, "p", "email", "promo", record=True), False,
                        "TOPIC_NOT_OPTED_IN", "p", "denied by topic")
    sc.root.UnsubscribeAll(workspace=ws, person="p")
    check(sc, ws, "p", "email", record=True)
    sc.root.Resubscribe(workspace=ws, person="p")
    for i in range(2):
        assert_decision(check(sc, ws, "p", "email", record=True), True, "SUBSCRIBED", "p",
                        f"send {i + 1} after denied ones")
    assert_decision(check(sc, ws, "p", "email", record=True), False, "MESSAGE_LIMIT_REACHED",
                    "p", "third send")


def test_limit_precedence_below_preferences(sc):
    ws = sc.workspace(topics=TOPICS, limits=[limit("email", 1, 3600)])
    sc.person(ws, "p")
    check(sc, ws, "p", "email", record=True)
    assert_decision(check(sc, ws, "p", "email", "promo"), False, "TOPIC_NOT_OPTED_IN", "p",
                    "rule 6 before rule 7")
    sc.root.Unsubscribe(workspace=ws, person="p", channel="email")
    assert_decision(check(sc, ws, "p", "email"), False, "CHANNEL_UNSUBSCRIBED", "p",
                    "rule 5 before rule 7")


@pytest.mark.deadline(30)
def test_limit_window_slides(sc):
    ws = sc.workspace(limits=[limit("push", 1, 1)])
    sc.person(ws, "p")
    assert_decision(check(sc, ws, "p", "push", record=True), True, "SUBSCRIBED", "p", "first")
    assert_decision(check(sc, ws, "p", "push", record=True), False, "MESSAGE_LIMIT_REACHED", "p",
                    "within the 1 s window")
    time.sleep(1.3)
    assert_decision(check(sc, ws, "p", "push", record=True), True, "SUBSCRIBED", "p",
                    "after the window")


def test_unknown_or_empty_channel_and_unknown_topic_are_errors_not_decisions(sc):
    ws = sc.workspace(topics=TOPICS)
    sc.person(ws, "p")
    expect_code(INVALID, lambda: check(sc, ws, "p", ""), field="channel")
    expect_code(INVALID, lambda: check(sc, ws, "p", "fax"), field="channel")
    expect_code(INVALID, lambda: check(sc, ws, "p", "email", "nope"), field="topic")
    expect_code(INVALID, lambda: check(sc, ws, "ghost", "fax"), field="channel")
    expect_code(NOT_FOUND, lambda: check(sc, unique("nows"), "p", "email"))


def test_batch_preserves_order(sc):
    ws = sc.workspace(topics=TOPICS)
    c = sc.root
    for pid in ("a", "b", "c", "d"):
        sc.person(ws, pid, email=f"{pid}@example.com")
    c.Unsubscribe(workspace=ws, person="b", channel="email")
    c.UnsubscribeAll(workspace=ws, person="d")
    c.Unsubscribe(workspace=ws, person="c", topic="news")
    persons = ["d", "ghost", ref_email("a@example.com"), "b", "c", "a", "b"]
    resp = c.CheckDeliveryBatch(workspace=ws, channel="email", topic="news", persons=persons)
    want = [("d", False, "GLOBAL_UNSUBSCRIBED"), ("", False, "UNKNOWN_PERSON"),
            ("a", True, "SUBSCRIBED"), ("b", False, "CHANNEL_UNSUBSCRIBED"),
            ("c", False, "TOPIC_UNSUBSCRIBED"), ("a", True, "SUBSCRIBED"),
            ("b", False, "CHANNEL_UNSUBSCRIBED")]
    assert len(resp.decisions) == len(persons)
    for i, (d, (pid, allowed, reason)) in enumerate(zip(resp.decisions, want)):
        assert_decision(d, allowed, reason, pid, f"batch position {i}")


def test_batch_record_send_counts(sc):
    ws = sc.workspace(limits=[limit("sms", 1, 3600)])
    for pid in ("a", "b"):
        sc.person(ws, pid)
    resp = sc.root.CheckDeliveryBatch(workspace=ws, channel="sms", persons=["a", "b"],
                                      record_send=True)
    for d, pid in zip(resp.decisions, ("a", "b")):
        assert_decision(d, True, "SUBSCRIBED", pid, "recorded batch")
    for pid in ("a", "b"):
        assert_decision(check(sc, ws, pid, "sms"), False, "MESSAGE_LIMIT_REACHED", pid,
                        "after the recorded batch")


def test_batch_record_send_counts_each_decision_in_order(sc):
    ws = sc.workspace(limits=[limit("email", 2, 3600)])
    sc.person(ws, "x")
    resp = sc.root.CheckDeliveryBatch(workspace=ws, channel="email", persons=["x", "x", "x"],
                                      record_send=True)
    got = [(d.allowed, reason_name(d.reason)) for d in resp.decisions]
    assert got == [(True, "SUBSCRIBED"), (True, "SUBSCRIBED"),
                   (False, "MESSAGE_LIMIT_REACHED")], got


@pytest.mark.deadline(60)
def test_batch_of_exactly_10000_is_accepted_and_10001_refused(sc):
    ws = sc.workspace(limits=[limit("email", 1, 3600)])
    known = [f"k{i}" for i in range(5)]
    for pid in known:
        sc.person(ws, pid)
    sc.root.Unsubscribe(workspace=ws, person="k3", channel="email")
    persons = [known[(i // 1000) % 5] if i % 1000 == 0 else f"u{i}" for i in range(10_000)]
    resp = sc.root.CheckDeliveryBatch(workspace=ws, channel="email", persons=persons,
                                      timeout=30)
    assert len(resp.decisions) == 10_000
    for i, (pid, d) in enumerate(zip(persons, resp.decisions)):
        if pid.startswith("u"):
            assert (d.allowed, reason_name(d.reason), d.person_id) == \
                (False, "UNKNOWN_PERSON", ""), f"position {i} ({pid}): {d}"
        elif pid == "k3":
            assert_decision(d, False, "CHANNEL_UNSUBSCRIBED", pid, f"position {i}")
        else:
            assert_decision(d, True, "SUBSCRIBED", pid, f"position {i}")
    expect_code(INVALID, lambda: sc.root.CheckDeliveryBatch(
        workspace=ws, channel="email", persons=persons + ["k0"], record_send=True, timeout=30),
        field="persons")
    # the refused batch counted nothing
    assert_decision(check(sc, ws, "k0", "email", record=True), True, "SUBSCRIBED", "k0",
                    "after the refused batch")


def test_batch_unknown_channel_or_topic_is_invalid(sc):
    ws = sc.workspace(topics=TOPICS)
    sc.person(ws, "p")
    expect_code(INVALID, lambda: sc.root.CheckDeliveryBatch(workspace=ws, channel="fax",
                                                            persons=["p"]), field="channel")
    expect_code(INVALID, lambda: sc.root.CheckDeliveryBatch(workspace=ws, channel="",
                                                            persons=["p"]), field="channel")
    expect_code(INVALID, lambda: sc.root.CheckDeliveryBatch(workspace=ws, channel="email",
                                                            topic="nope", persons=["p"]),
                field="topic")


def test_removed_topic_or_channel_is_unknown_to_batches_overrides_and_unsubscribes(sc):
    """SPEC §2: "An unknown channel or topic in any request that names one ... is an error
    (INVALID_ARGUMENT), not a decision; a topic removed from the workspace is unknown" — in
    the batch, the override and Unsubscribe as in CheckDelivery; a removed channel as well."""
    ws = sc.workspace(topics=TOPICS, allow_override=True)
    c = sc.root
    sc.person(ws, "p")
    c.ConfigureWorkspace(sc.config(ws, channels=["email", "sms"], topics=[TOPICS[1]],
                                   allow_override=True))
    expect_code(INVALID, lambda: c.CheckDeliveryBatch(workspace=ws, channel="email",
                                                      topic="news", persons=["p"]),
                field="topic")
    expect_code(INVALID, lambda: c.OverrideForImportantMessage(
        workspace=ws, person="p", channel="email", topic="news", message_id="m",
        justification="j"), field="topic")
    expect_code(INVALID, lambda: c.Unsubscribe(workspace=ws, person="p", channel="email",
                                               topic="news"), field="topic")
    expect_code(INVALID, lambda: check(sc, ws, "p", "push"), field="channel")
    expect_code(INVALID, lambda: c.CheckDeliveryBatch(workspace=ws, channel="push",
                                                      persons=["p"]), field="channel")
    expect_code(INVALID, lambda: c.Subscribe(workspace=ws, person="p", channel="push"),
                field="channel")
    assert list(c.GetPreferences(workspace=ws, person="p").entries) == []


# --------------------------------------------------------------------------------------------
# The whole table against a model of SPEC §2, on random workspaces and persons


def model_decision(defaults: dict, limits: dict, state: dict, channel: str, topic_id: str):
    """SPEC §2 rules 4–8 for a known, unsuppressed person: `state` holds `global` (bool),
    `entries` ({(channel, topic): "S"|"U"}) and `sends` ({channel: recorded sends})."""
    if state["global"]:
        return (False, "GLOBAL_UNSUBSCRIBED")
    if state["entries"].get((channel, "")) == "U":
        return (False, "CHANNEL_UNSUBSCRIBED")
    if topic_id:
        entry = state["entries"].get((channel, topic_id)) or state["entries"].get(("", topic_id))
        if entry == "U":
            return (False, "TOPIC_UNSUBSCRIBED")
        if entry is None and defaults[topic_id] == "unsub":
            return (False, "TOPIC_NOT_OPTED_IN")
    if channel in limits and state["sends"].get(channel, 0) >= limits[channel]:
        return (False, "MESSAGE_LIMIT_REACHED")
    return (True, "SUBSCRIBED")


@pytest.mark.deadline(60)
def test_random_states_decide_as_the_table_says_before_and_after_a_reconfiguration(sc):
    """Random workspaces (channels, topics with either default, limits) and persons (entries
    of every key shape, global flags, recorded sends): CheckDelivery with record_send, then
    every (channel, topic) through CheckDelivery, the batch, an override in a workspace that
    refuses overrides (rules 4–8, SPEC §2) and GetPreferences' `effective` all give the
    model's decision; so do they after ConfigureWorkspace drops, adds and reorders channels
    and topics, flips defaults and changes limits (entries of what is no longer configured
    are hidden, not lost: SPEC §3). Seeded, so a failure repeats."""
    rng = random.Random(20261206)
    pool_c, pool_t = ["email", "sms", "push", "in_app", "web", "fax"], ["news", "promo", "tips"]
    c = sc.root
    failures = []

    def draw():
        channels = rng.sample(pool_c, rng.randint(1, 4))
        topics = rng.sample(pool_t, rng.randint(0, 3))
        defaults = {t: rng.choice(["sub", "unsub"]) for t in topics}
        limits = {ch: rng.randint(1, 3) for ch in channels if rng.random() < 0.5}
        return channels, topics, defaults, limits

    def compare(ws, pid, state, channels, topics, defaults, limits, when):
        prefs = c.GetPreferences(workspace=ws, person=pid)
        want = {(ch, t): model_decision(defaults, limits, state, ch, t)
                for ch in channels for t in [""] + topics}
        if effective_map(prefs) != want:
            failures.append((when, pid, "effective", effective_map(prefs), want, state))
        shown = {k: v for k, v in state["entries"].items()
                 if k[0] in ("", *channels) and k[1] in ("", *topics)}
        got = {k: v[0] for k, v in entries_map(prefs).items()}
        if got != {k: {"S": "SUBSCRIBED", "U": "UNSUBSCRIBED"}[v] for k, v in shown.items()}:
            failures.append((when, pid, "entries", got, shown))
        for (ch, t), w in want.items():
            calls = {"check": check(sc, ws, pid, ch, t),
                     "override": c.OverrideForImportantMessage(
                         workspace=ws, person=pid, channel=ch, topic=t, message_id="m",
                         justification="j"),
                     "batch": c.CheckDeliveryBatch(workspace=ws, channel=ch, topic=t,
                                                   persons=[pid]).decisions[0]}
            for rpc, d in calls.items():
                if (d.allowed, reason_name(d.reason)) != w:
                    failures.append((when, pid, rpc, ch, t, reason_name(d.reason), w, state))

    for round_ in range(5):
        channels, topics, defaults, limits = draw()
        ws = sc.workspace(channels=channels, topics=[topic(t, defaults[t]) for t in topics],
                          limits=[limit(ch, n, 3600) for ch, n in limits.items()])
        keys = [(ch, "") for ch in channels] + [("", t) for t in topics] + \
            [(ch, t) for ch in channels for t in topics]
        states = {}
        for i in range(6):
            pid = f"p{i}"
            sc.person(ws, pid)
            state = states[pid] = {"global": False, "entries": {}, "sends": {}}
            for _ in range(rng.randint(0, 8)):
                key, s = rng.choice(keys), rng.choice("SU")
                (c.Subscribe if s == "S" else c.Unsubscribe)(workspace=ws, person=pid,
                                                             channel=key[0], topic=key[1])
                state["entries"][key] = s
            if rng.random() < 0.25:
                c.UnsubscribeAll(workspace=ws, person=pid)
                state["global"] = rng.random() < 0.5
                if not state["global"]:
                    c.Resubscribe(workspace=ws, person=pid)
            for _ in range(rng.randint(0, 4)):
                ch, t = rng.choice(channels), rng.choice([""] + topics)
                want = model_decision(defaults, limits, state, ch, t)
                d = check(sc, ws, pid, ch, t, record=True)
                if (d.allowed, reason_name(d.reason)) != want:
                    failures.append((round_, pid, "record_send", ch, t, reason_name(d.reason),
                                     want, state))
                if d.allowed and ch in limits:
                    state["sends"][ch] = state["sends"].get(ch, 0) + 1
            compare(ws, pid, state, channels, topics, defaults, limits, f"round {round_}")
        channels, topics, defaults, limits = draw()
        c.ConfigureWorkspace(sc.config(ws, channels=channels,
                                       topics=[topic(t, defaults[t]) for t in topics],
                                       limits=[limit(ch, n, 3600) for ch, n in limits.items()]))
        for pid, state in states.items():
            compare(ws, pid, state, channels, topics, defaults, limits,
                    f"round {round_}, reconfigured")
    assert not failures, f"{len(failures)} disagreements with SPEC §2, first: {failures[:3]}"
