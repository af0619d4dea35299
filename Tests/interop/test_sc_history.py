"""GetHistory (SPEC §1, §3): actions, actors, newest first, paging with stable cursors."""

import pytest

from sc_support import (INVALID, NOT_FOUND, PERMISSION_DENIED, expect_code, history_tuples,
                        ref_anon, tick, topic)


def make_changes(sc, ws, pid, n, prefix="s"):
    for i in range(n):
        method = sc.root.Subscribe if i % 2 == 0 else sc.root.Unsubscribe
        method(workspace=ws, person=pid, channel="email", source=f"{prefix}{i}")


def test_every_action_with_actor_newest_first(sc):
    ws = sc.workspace(topics=[topic("news", "sub")], allow_override=True)
    w = sc.client("sc-write")
    w.Identify(workspace=ws, person_id="p")
    w.Identify(workspace=ws, anonymous_id="cookie-hist")
    w.Subscribe(workspace=ws, person=ref_anon("cookie-hist"), channel="sms", source="anon-src")
    tick()
    w.Identify(workspace=ws, person_id="p", anonymous_id="cookie-hist")  # merge
    tick()
    w.Subscribe(workspace=ws, person="p", channel="email", source="s-sub")
    tick()
    sc.root.Unsubscribe(workspace=ws, person="p", topic="news", source="s-unsub")
    tick()
    w.UnsubscribeAll(workspace=ws, person="p", source="s-all")
    tick()
    w.Resubscribe(workspace=ws, person="p", source="s-resub")
    tick()
    sc.client("sc-override").OverrideForImportantMessage(
        workspace=ws, person="p", channel="push", message_id="m-1", justification="legal")
    hist = sc.client("sc-read").GetHistory(workspace=ws, person="p")
    entries = list(hist.entries)
    ats = [e.at for e in entries]
    assert ats == sorted(ats, reverse=True), f"not newest first: {ats}"
    head = [(e.action, e.channel, e.topic, e.source, e.actor) for e in entries[:5]]
    assert head[0][:3] == ("override", "push", "")
    assert head[0][4] == "sc-override"
    assert head[1:] == [("resubscribe", "", "", "s-resub", "sc-write"),
                        ("unsubscribe_all", "", "", "s-all", "sc-write"),
                        ("unsubscribe", "", "news", "s-unsub", "sc-root"),
                        ("subscribe", "email", "", "s-sub", "sc-write")]
    actions = [e.action for e in entries]
    assert "merge" in actions[5:], f"no merge entry: {actions}"
    merge_at = actions.index("merge")
    assert entries[merge_at].actor == "sc-write"
    assert ("subscribe", "sms", "anon-src") in [(e.action, e.channel, e.source)
                                                for e in entries[merge_at + 1:]], \
        f"the anonymous profile's change, older than the merge, is missing: {actions}"
    assert actions[-1] == "identify" and entries[-1].actor == "sc-write"
    assert set(actions) <= {"identify", "merge", "subscribe", "unsubscribe", "unsubscribe_all",
                            "resubscribe", "override"}
    assert hist.next_page_token == ""


@pytest.mark.deadline(60)
def test_page_size_zero_means_100(sc):
    ws = sc.workspace()
    sc.person(ws, "p")
    make_changes(sc, ws, "p", 110)  # 111 entries with the identify
    page = sc.root.GetHistory(workspace=ws, person="p", page_size=0)
    assert len(page.entries) == 100
    assert page.next_page_token != ""
    assert page.entries[0].source == "s109"
    full = sc.root.GetHistory(workspace=ws, person="p", page_size=1000)
    assert len(full.entries) == 111 and full.next_page_token == ""
    rest = sc.root.GetHistory(workspace=ws, person="p", page_token=page.next_page_token)
    assert history_tuples(page) + history_tuples(rest) == history_tuples(full)
    assert rest.next_page_token == ""


@pytest.mark.parametrize("size", [1001, -1, -100, 2**31 - 1])
def test_page_size_out_of_range_is_invalid(sc, size):
    ws = sc.workspace()
    sc.person(ws, "p")
    expect_code(INVALID, lambda: sc.root.GetHistory(workspace=ws, person="p", page_size=size),
                field="page_size")


def test_page_size_1000_and_1_accepted(sc):
    ws = sc.workspace()
    sc.person(ws, "p")
    make_changes(sc, ws, "p", 2)
    assert len(sc.root.GetHistory(workspace=ws, person="p", page_size=1000).entries) == 3
    one = sc.root.GetHistory(workspace=ws, person="p", page_size=1)
    assert len(one.entries) == 1 and one.next_page_token


def test_paging_is_stable_when_entries_are_added_between_pages(sc):
    ws = sc.workspace()
    sc.person(ws, "p")
    make_changes(sc, ws, "p", 25)  # 26 entries
    full = history_tuples(sc.root.GetHistory(workspace=ws, person="p", page_size=1000))
    assert len(full) == 26
    page1 = sc.root.GetHistory(workspace=ws, person="p", page_size=10)
    assert history_tuples(page1) == full[:10]
    assert page1.next_page_token
    make_changes(sc, ws, "p", 5, prefix="late")  # newer entries arrive between pages
    page2 = sc.root.GetHistory(workspace=ws, person="p", page_size=10,
                               page_token=page1.next_page_token)
    assert history_tuples(page2) == full[10:20]
    page3 = sc.root.GetHistory(workspace=ws, person="p", page_size=10,
                               page_token=page2.next_page_token)
    assert history_tuples(page3) == full[20:26]
    assert page3.next_page_token == ""
    newest = sc.root.GetHistory(workspace=ws, person="p", page_size=5)
    assert [e.source for e in newest.entries] == ["late4", "late3", "late2", "late1", "late0"]


@pytest.mark.parametrize("token", ["garbage", "not-a-token-at-all", "%%%", "eyJub3QiOiJvdXJzIn0"])
def test_garbage_page_token_is_invalid(sc, token):
    ws = sc.workspace()
    sc.person(ws, "p")
    make_changes(sc, ws, "p", 3)
    expect_code(INVALID, lambda: sc.root.GetHistory(workspace=ws, person="p", page_size=2,
                                                    page_token=token), field="page_token")


def test_page_token_of_another_person_or_workspace_is_invalid(sc):
    """SPEC §3 GetHistory: "a token that is not one of ours is INVALID_ARGUMENT" — a token
    issued for one person's history is not a cursor into another person's, nor into the same
    person id's history in another workspace."""
    ws, ws2 = sc.workspace(), sc.workspace()
    for w in (ws, ws2):
        for pid in ("ha", "hb"):
            sc.person(w, pid)
            make_changes(sc, w, pid, 4)
    token = sc.root.GetHistory(workspace=ws, person="ha", page_size=2).next_page_token
    assert token
    expect_code(INVALID, lambda: sc.root.GetHistory(workspace=ws, person="hb", page_size=2,
                                                    page_token=token), field="page_token")
    expect_code(INVALID, lambda: sc.root.GetHistory(workspace=ws2, person="ha", page_size=2,
                                                    page_token=token), field="page_token")


@pytest.mark.deadline(60)
def test_page_size_1000_gives_1000_entries(sc):
    """SPEC §3: `page_size` above 1000 is INVALID_ARGUMENT, so 1000 is a page size served in
    full: of 1001 entries, 1000 and a token, then the last one."""
    ws = sc.workspace()
    sc.person(ws, "p")
    make_changes(sc, ws, "p", 1000)
    page = sc.root.GetHistory(workspace=ws, person="p", page_size=1000)
    assert len(page.entries) == 1000 and page.next_page_token, len(page.entries)
    assert page.entries[0].source == "s999"
    rest = sc.root.GetHistory(workspace=ws, person="p", page_size=1000,
                              page_token=page.next_page_token)
    assert [e.action for e in rest.entries] == ["identify"] and rest.next_page_token == ""


def test_history_of_unknown_person_not_found(sc):
    ws = sc.workspace()
    expect_code(NOT_FOUND, lambda: sc.root.GetHistory(workspace=ws, person="ghost"))


def test_refused_changes_leave_no_history(sc):
    ws = sc.workspace()
    sc.person(ws, "p")
    before = history_tuples(sc.root.GetHistory(workspace=ws, person="p", page_size=1000))
    expect_code(INVALID, lambda: sc.root.Subscribe(workspace=ws, person="p", channel="fax"))
    expect_code(INVALID, lambda: sc.root.Subscribe(workspace=ws, person="p", channel="email",
                                                   source="x" * 129))
    expect_code(PERMISSION_DENIED, lambda: sc.client("sc-read").Subscribe(
        workspace=ws, person="p", channel="email"))
    after = history_tuples(sc.root.GetHistory(workspace=ws, person="p", page_size=1000))
    assert after == before


@pytest.mark.deadline(60)
def test_page_token_outlives_a_restart_and_a_crash(tmp_path):
    """SPEC §3 GetHistory: `page_token` is an opaque cursor and entries added between pages
    never shift later pages — also when the server restarts between two pages (from its final
    snapshot, or after kill -9 from the log): the next page is the one the token named, and a
    token of another person is still refused."""
    from crash_support import DurableServer
    srv = DurableServer(str(tmp_path)).start()
    try:
        c = srv.client
        c.Identify(workspace="default", person_id="hp")
        c.Identify(workspace="default", person_id="other")
        for i in range(7):
            c.Subscribe(workspace="default", person="hp", channel="email", source=f"s{i}")
        full = history_tuples(c.GetHistory(workspace="default", person="hp", page_size=1000))
        token = c.GetHistory(workspace="default", person="hp", page_size=3).next_page_token
        for stop in (srv.terminate, srv.kill9):
            stop()
            srv.start()
            c = srv.client
            c.Subscribe(workspace="default", person="hp", channel="sms", source="late")
            page = c.GetHistory(workspace="default", person="hp", page_size=3, page_token=token)
            assert history_tuples(page) == full[3:6], stop.__name__
            rest = c.GetHistory(workspace="default", person="hp", page_size=3,
                                page_token=page.next_page_token)
            assert history_tuples(rest) == full[6:] and rest.next_page_token == "", \
                stop.__name__
            expect_code(INVALID, lambda: c.GetHistory(workspace="default", person="other",
                                                      page_token=token), field="page_token")
    finally:
        srv.close()


def test_paging_is_stable_among_entries_of_the_same_millisecond(sc):
    """SPEC §3 GetHistory: "entries added between pages never shift later pages" — also when
    many entries share their millisecond (120 writes in flight together land in a handful of
    milliseconds) and a burst of newer ones, in the same milliseconds as the last page's
    entries or later, arrives between every two pages: the pages together are the history
    as it was at the first page, each entry once."""
    from sc_support import TOKENS, pb, pb_grpc
    ws = sc.workspace()
    sc.person(ws, "h")
    stub = pb_grpc.SubscriptionCenterStub(sc.channel)
    md = [("authorization", "Bearer " + TOKENS["sc-root"])]

    def burst(tag: str, n: int) -> None:
        calls = [stub.Subscribe.future(pb.PreferenceRequest(
            workspace=ws, person=pb.PersonRef(person_id="h"), channel="email",
            source=f"{tag}{i}"), metadata=md, timeout=30) for i in range(n)]
        for call in calls:
            call.result()

    burst("s", 120)
    full = history_tuples(sc.root.GetHistory(workspace=ws, person="h", page_size=1000))
    assert len(full) == 121
    got, token = [], ""
    for _ in range(30):  # 121 entries in pages of 7: 18 pages
        page = sc.root.GetHistory(workspace=ws, person="h", page_size=7, page_token=token)
        got += history_tuples(page)
        burst("late", 5)
        token = page.next_page_token
        if not token:
            break
    assert got == full, f"{len(got)} entries paged, {len(full)} in the history"
