"""ConfigureWorkspace / GetWorkspace (SPEC §1, §3): the default workspace, round trips,
replacement, isolation, unknown workspaces."""

import pytest

from sc_support import (DEFAULT_CHANNELS, NOT_FOUND, PERMISSION_DENIED, expect_code, limit, pb,
                        topic, unique)


def normalized(cfg: pb.WorkspaceConfig) -> dict:
    return {
        "workspace": cfg.workspace,
        "channels": sorted(cfg.channels),
        "topics": sorted((t.id, t.name, t.description, pb.TopicDefault.Name(t.default_state))
                         for t in cfg.topics),
        "limits": sorted((l.channel, l.max_messages, l.window_seconds) for l in cfg.limits),
        "allow_important_override": cfg.allow_important_override,
    }


def test_default_workspace_exists_with_default_channels_and_no_topics(sc):
    cfg = sc.root.GetWorkspace(workspace="default")
    assert cfg.workspace == "default"
    assert sorted(cfg.channels) == sorted(DEFAULT_CHANNELS)
    assert list(cfg.topics) == []


def test_configure_then_get_round_trip(sc):
    ws = unique("ws")
    want = sc.config(
        ws, channels=["email", "sms", "web.push-v2_x"],
        topics=[topic("newsletter", "sub", name="Newsletter", description="Monthly news"),
                topic("product_updates", "unsub", name="Product updates",
                      description="What we shipped")],
        limits=[limit("email", 5, 3600), limit("sms", 1, 86400)],
        allow_override=True)
    answer = sc.root.ConfigureWorkspace(want)
    assert normalized(answer) == normalized(want)
    got = sc.root.GetWorkspace(workspace=ws)
    assert normalized(got) == normalized(want)
    defaults = {t.id: t.default_state for t in got.topics}
    assert defaults == {"newsletter": pb.TOPIC_DEFAULT_SUBSCRIBED,
                        "product_updates": pb.TOPIC_DEFAULT_UNSUBSCRIBED}


def test_configure_replaces_the_whole_configuration(sc):
    ws = sc.workspace(channels=["email", "sms"], topics=[topic("news", "sub")],
                      limits=[limit("email", 2, 60)], allow_override=True)
    second = sc.config(ws, channels=["push"], topics=[topic("promo", "unsub")])
    sc.root.ConfigureWorkspace(second)
    got = sc.root.GetWorkspace(workspace=ws)
    assert normalized(got) == normalized(second)
    assert not got.allow_important_override
    assert list(got.limits) == []


def test_configure_with_no_topics_or_limits(sc):
    ws = sc.workspace(channels=["email"])
    got = sc.root.GetWorkspace(workspace=ws)
    assert list(got.channels) == ["email"]
    assert list(got.topics) == [] and list(got.limits) == []
    assert got.allow_important_override is False


def test_workspace_id_of_64_bytes_accepted(sc):
    ws = ("w" + unique("x").replace("-", "_"))[:20].ljust(64, "z")
    assert len(ws) == 64
    sc.workspace(ws=ws)
    assert sc.root.GetWorkspace(workspace=ws).workspace == ws


def test_unknown_workspace_is_not_found(sc):
    expect_code(NOT_FOUND, lambda: sc.root.GetWorkspace(workspace=unique("nope")))


def test_workspaces_are_isolated(sc):
    ws1, ws2 = sc.workspace(), sc.workspace()
    sc.root.Identify(workspace=ws1, person_id="shared-id", email="shared@example.com")
    expect_code(NOT_FOUND, lambda: sc.root.GetProfile(workspace=ws2, person="shared-id"))
    # the same identifiers are free in the other workspace
    p = sc.root.Identify(workspace=ws2, person_id="other", email="shared@example.com")
    assert p.email == "shared@example.com"
    assert sc.root.GetProfile(workspace=ws1, person=pb.PersonRef(email="shared@example.com")
                              ).person_id == "shared-id"


@pytest.mark.parametrize("channels", [["email"], ["a", "b.c", "d-e", "f_g", "x" * 64]])
def test_channel_ids_accepted(sc, channels):
    ws = sc.workspace(channels=channels)
    assert sorted(sc.root.GetWorkspace(workspace=ws).channels) == sorted(channels)


def test_a_workspace_bound_admin_token_cannot_create_its_own_workspace(sc):
    """SPEC §3 ConfigureWorkspace: "a `*` admin token creates new workspaces" — an admin token
    bound to `ws-a` may configure `ws-a` once it exists, not bring it into being."""
    expect_code(NOT_FOUND, lambda: sc.root.GetWorkspace(workspace="ws-a"))
    expect_code(PERMISSION_DENIED, lambda: sc.client("sc-wsa-admin").ConfigureWorkspace(
        sc.config("ws-a", channels=["email"])))
    expect_code(NOT_FOUND, lambda: sc.root.GetWorkspace(workspace="ws-a"))
