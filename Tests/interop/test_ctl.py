"""subcenterctl (SPEC §6) against a real subcenterd over TLS: every command changes or reads the
server as asked (checked through grpcio, not through subcenterctl's own output), `--json` prints
every field of the response with enum value names, `watch` prints events as they arrive, mTLS
with --cert/--key, $SUBCENTER_TOKEN, and the exit codes of refused command lines and calls."""

import json
import os
import select
import socket
import subprocess
import threading
import time

import interop_support as support
from sc_support import (FAILED_PRECONDITION, NOT_FOUND, TOKENS, entries_map, expect_code, limit,
                        pb, pb_grpc, ref_anon, ref_email, server_args, topic, unique)


def argv(port, *args, token="sc-root"):
    out = [str(support.binary("subcenterctl")), "--server", f"127.0.0.1:{port}",
           "--ca", str(support.CA_PEM)]
    return out + (["--token", TOKENS[token]] if token else []) + [str(a) for a in args]


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SUBCENTER_")}
    env.update(extra)
    return env


def ctl(sc, *args, token="sc-root", code=0, stdin=None, env=None, cwd=support.REPO):
    r = subprocess.run(argv(sc.port, *args, token=token), capture_output=True, text=True,
                       input=stdin, env=clean_env(**(env or {})), cwd=cwd, timeout=60)
    assert r.returncode == code, f"exit {r.returncode}, wanted {code}\n{r.stdout}{r.stderr}"
    return r


def ctl_json(sc, *args, **kw):
    return json.loads(ctl(sc, "--json", *args, **kw).stdout)


def fields(message_type) -> list:
    return [f.name for f in message_type.DESCRIPTOR.fields]


def test_identify_profile_and_anonymous_profile(sc):
    ws, pid = sc.workspace(), unique("p")
    ctl(sc, "identify", ws, pid, f"{pid}@example.com", "+14155550123")
    got = sc.root.GetProfile(workspace=ws, person=pid)
    assert (got.email, got.phone) == (f"{pid}@example.com", "+14155550123")
    prof = ctl_json(sc, "profile", ws, f"email:{pid}@example.com")
    assert list(prof) == fields(pb.Profile)  # every field, in .proto order, defaults included
    assert prof["person_id"] == pid and prof["anonymous_ids"] == [] and prof["redacted"] is False
    assert prof["created_at"] == got.created_at  # int64 as a JSON number
    anon = ctl_json(sc, "identify", ws, "", "", "", "anon-" + pid)
    assert anon["person_id"] == "" and anon["anonymous_ids"] == ["anon-" + pid]
    assert sc.root.GetProfile(workspace=ws, person=ref_anon("anon-" + pid)).person_id == ""


def test_preference_commands_with_source_and_notice_version(sc):
    ws = sc.workspace(topics=[topic("news", "unsub")])
    pid = sc.person(ws, email="n@example.com").person_id
    ctl(sc, "subscribe", ws, pid, "email", "news", "--source", "pc", "--notice-version", "v7")
    ctl(sc, "unsubscribe", ws, "email:n@example.com", "sms")
    prefs = sc.root.GetPreferences(workspace=ws, person=pid)
    assert entries_map(prefs) == {("email", "news"): ("SUBSCRIBED", "pc", "v7"),
                                  ("sms", ""): ("UNSUBSCRIBED", "subcenterctl", "")}
    ctl(sc, "unsubscribe-all", ws, pid, "--source", "one_click")
    prefs = sc.root.GetPreferences(workspace=ws, person=pid)
    assert prefs.global_unsubscribed and prefs.global_source == "one_click"
    got = ctl_json(sc, "resubscribe", ws, pid)
    assert not sc.root.GetPreferences(workspace=ws, person=pid).global_unsubscribed
    assert list(got) == fields(pb.Preferences) and got["global_unsubscribed"] is False
    assert {(e["channel"], e["topic"]): e["state"] for e in got["entries"]} == {
        ("email", "news"): "PREFERENCE_STATE_SUBSCRIBED",
        ("sms", ""): "PREFERENCE_STATE_UNSUBSCRIBED"}
    eff = {(e["channel"], e["topic"]): e["reason"] for e in ctl_json(sc, "preferences", ws,
                                                                       pid)["effective"]}
    assert eff[("sms", "")] == "DECISION_REASON_CHANNEL_UNSUBSCRIBED"
    assert eff[("push", "news")] == "DECISION_REASON_TOPIC_NOT_OPTED_IN"


def test_text_output_escapes_control_characters(sc):
    """A stored value with control characters (a source is free text) cannot drive the
    operator's terminal or fake a line: text output shows them escaped, --json as JSON does."""
    ws = sc.workspace()
    pid = sc.person(ws).person_id
    source = "pc\x1b[2J\nforged: line\x85"
    sc.root.Unsubscribe(workspace=ws, person=pid, channel="sms", source=source)
    out = ctl(sc, "preferences", ws, pid).stdout
    assert "\x1b" not in out and "\x85" not in out and "\nforged" not in out
    assert "pc\\u{1B}[2J\\u{A}forged: line\\u{85}" in out
    history = ctl(sc, "history", ws, pid).stdout
    assert "\x1b" not in history and "\\u{1B}" in history
    got = ctl_json(sc, "preferences", ws, pid)
    assert [e["source"] for e in got["entries"]] == [source]


def test_check_batch_record_send_and_override(sc):
    ws = sc.workspace(limits=[limit("email", 1, 3600), limit("sms", 1, 3600)],
                      allow_override=True)
    pid = sc.person(ws).person_id
    for _ in range(2):  # without --record-send nothing is counted
        d = ctl_json(sc, "check", ws, pid, "email")
        assert d == {"allowed": True, "reason": "DECISION_REASON_SUBSCRIBED", "person_id": pid}
    assert "allowed SUBSCRIBED" in ctl(sc, "check", ws, pid, "email", "--record-send").stdout
    limited = sc.root.CheckDelivery(workspace=ws, person=pid, channel="email")
    assert limited.reason == pb.DECISION_REASON_MESSAGE_LIMIT_REACHED
    batch = ctl_json(sc, "check-batch", ws, "sms", "", pid, "nobody", "--record-send")
    assert [(d["allowed"], d["reason"], d["person_id"]) for d in batch["decisions"]] == [
        (True, "DECISION_REASON_SUBSCRIBED", pid), (False, "DECISION_REASON_UNKNOWN_PERSON", "")]
    assert sc.root.CheckDelivery(workspace=ws, person=pid, channel="sms").reason == \
        pb.DECISION_REASON_MESSAGE_LIMIT_REACHED
    o = ctl_json(sc, "override", ws, pid, "email", "", "msg-42", "password reset")
    assert o["allowed"] and o["reason"] == "DECISION_REASON_OVERRIDDEN_IMPORTANT"
    top = sc.root.GetHistory(workspace=ws, person=pid).entries[0]
    assert top.action == "override" and "msg-42" in top.detail and top.actor == "sc-root"


def test_history_pages(sc):
    ws = sc.workspace()
    pid = sc.person(ws).person_id
    for ch in ("email", "sms", "push"):
        sc.root.Subscribe(workspace=ws, person=pid, channel=ch, source="s")
    text = ctl(sc, "history", ws, pid, "--page-size", "2").stdout
    assert len(text.splitlines()) == 3 and "subscribe (push, )" in text.splitlines()[0]
    token = text.splitlines()[-1].removeprefix("next page: ")
    want = sc.root.GetHistory(workspace=ws, person=pid, page_size=2, page_token=token)
    got = ctl_json(sc, "history", ws, pid, "--page-size", "2", "--page-token", token)
    assert [(e["at"], e["action"], e["channel"]) for e in got["entries"]] == \
        [(e.at, e.action, e.channel) for e in want.entries] and len(want.entries) == 2
    assert got["next_page_token"] == want.next_page_token


def test_forget_also_suppress_wait_and_verify_receipt(sc, tmp_path):
    ws, pid = sc.workspace(), unique("p")
    sc.person(ws, person_id=pid, email=f"{pid}@example.com")
    f = ctl_json(sc, "forget", ws, pid, "--also-suppress", "--wait", "--timeout-ms", "70000")
    assert list(f) == fields(pb.ForgetResponse) and f["person_id"] == pid
    expect_code(NOT_FOUND, lambda: sc.root.GetProfile(workspace=ws, person=pid))
    expect_code(FAILED_PRECONDITION, lambda: sc.root.Identify(
        workspace=ws, person_id=unique("p"), email=f"{pid}@example.com"))
    data = sc.server.argv[sc.server.argv.index("--data") + 1]
    ok = ctl(sc, "verify-receipt", f["receipt"], "--data", data)
    assert ok.stdout.startswith("VALID: ") and json.loads(ok.stdout[7:])["workspace"] == ws
    # Whose receipt it is: only the secret tells (the person hash is keyed).
    mine = ctl(sc, "verify-receipt", f["receipt"], "--data", data, "--person", pid)
    assert mine.stdout.startswith(f"VALID, about {pid}: "), mine.stdout
    other = ctl(sc, "verify-receipt", f["receipt"], "--data", data, "--person", "x" + pid, code=1)
    assert "NOT about" in other.stdout, other.stdout
    assert ctl_json(sc, "verify-receipt", f["receipt"], "--data", data, "--person", pid)[
        "about_person"] is True
    missing = ctl(sc, "verify-receipt", f["receipt"], code=2, cwd=tmp_path)  # no ./data here
    assert "./data/secret.key" in missing.stderr and "--data" in missing.stderr


def test_suppress_and_unsuppress(sc):
    ws, pid = sc.workspace(), unique("p")
    sc.person(ws, person_id=pid, email=f"{pid}@example.com")
    r = ctl_json(sc, "suppress", ws, f"email:{pid.upper()}@EXAMPLE.COM", "phone:+14155550777",
                 "--reason", "complaint")
    assert r == {"suppressed": 2, "forgotten_person_ids": [pid]}
    expect_code(NOT_FOUND, lambda: sc.root.GetProfile(workspace=ws, person=pid))
    expect_code(FAILED_PRECONDITION, lambda: sc.root.Identify(
        workspace=ws, person_id="again", email=f"{pid}@example.com"))
    assert "unsuppressed: 1" in ctl(sc, "unsuppress", ws, f"email:{pid}@example.com").stdout
    assert sc.root.Identify(workspace=ws, person_id="again", email=f"{pid}@example.com")
    assert sc.root.GetProfile(workspace=ws, person=ref_email(f"{pid}@example.com")).person_id \
        == "again"


def test_a_mistyped_identifier_kind_is_refused_not_taken_for_a_person_id(sc):
    """`emial:jane@…` was a person id: `suppress` then suppressed nobody's id and said
    `suppressed: 1`, leaving the address allowed. A word before a colon must be a kind;
    `id:` names a person id that holds one."""
    ws, pid = sc.workspace(), unique("p")
    email = f"{pid}@example.com"
    sc.person(ws, person_id=pid, email=email)
    for args in (["suppress", ws, f"emial:{email}", "--reason", "GDPR"],
                 ["forget", ws, f"mail:{email}"], ["profile", ws, f"Email:{email}"]):
        r = ctl(sc, *args, code=2)
        assert "unknown kind" in r.stderr and f"id:{args[2]}" in r.stderr, r.stderr
    assert sc.root.GetProfile(workspace=ws, person=pid).person_id == pid  # untouched
    colon = f"user:{pid}"
    ctl(sc, "identify", ws, f"id:{colon}")  # PERSON_ID follows the same rule
    assert ctl_json(sc, "profile", ws, f"id:{colon}")["person_id"] == colon
    ctl(sc, "profile", ws, colon, code=2)
    assert "not a person id" in ctl(sc, "identify", ws, f"email:{email}", code=2).stderr
    assert "unknown kind" in ctl(sc, "identify", ws, f"emial:{email}", code=2).stderr
    assert ctl_json(sc, "profile", ws, f"{pid}")["person_id"] == pid  # no colon: an id


def test_workspace_set_from_file_and_stdin(sc, tmp_path):
    ws = unique("ws")
    path = tmp_path / "ws.json"
    path.write_text(json.dumps({
        "channels": ["email", "sms"],
        "topics": [{"id": "news", "name": "News \"daily\"", "description": "tab\there",
                    "default_state": "UNSUBSCRIBED"},
                   {"id": "tips", "name": "Tips", "default_state": "TOPIC_DEFAULT_SUBSCRIBED"}],
        "limits": [{"channel": "email", "max_messages": 3, "window_seconds": 86400}],
        "allow_important_override": True}))
    ctl(sc, "workspace", "set", ws, path)
    cfg = sc.root.GetWorkspace(workspace=ws)
    assert list(cfg.channels) == ["email", "sms"] and cfg.allow_important_override
    assert [(t.id, t.name, t.description, t.default_state) for t in cfg.topics] == [
        ("news", "News \"daily\"", "tab\there", pb.TOPIC_DEFAULT_UNSUBSCRIBED),
        ("tips", "Tips", "", pb.TOPIC_DEFAULT_SUBSCRIBED)]
    assert [(l.channel, l.max_messages, l.window_seconds) for l in cfg.limits] == \
        [("email", 3, 86400)]
    # `workspace get --json`, edited, goes back in through stdin.
    got = ctl_json(sc, "workspace", "get", ws)
    assert got["topics"][0]["description"] == "tab\there"  # control characters escaped
    got["channels"].append("push")
    got["allow_important_override"] = False
    ctl(sc, "workspace", "set", ws, "-", stdin=json.dumps(got))
    cfg = sc.root.GetWorkspace(workspace=ws)
    assert list(cfg.channels) == ["email", "sms", "push"] and not cfg.allow_important_override
    assert len(cfg.topics) == 2 and len(cfg.limits) == 1
    for bad, named in [({"topics": [{"id": "x", "default_state": "OPT_IN"}]},
                        "topics[0].default_state"),
                       ({"channels": ["email"], "limitz": []}, "limitz"),
                       ({"limits": [{"channel": "email", "max_messages": "3"}]},
                        "limits[0].max_messages")]:
        r = ctl(sc, "workspace", "set", ws, "-", stdin=json.dumps(bad), code=2)
        assert named in r.stderr, r.stderr
    assert "not JSON" in ctl(sc, "workspace", "set", ws, "-", stdin="{", code=2).stderr
    # What a lenient parser would take and silently half-apply: refused, naming it.
    for text, named in [('{"channels": ["email"], "channels": ["sms"]}', 'key "channels" twice'),
                        ('{"topics": [{"id": "a", "id": "b", "default_state": "SUBSCRIBED"}]}',
                         'key "id" twice'),
                        ('{"channels": ["email", "sms",]}', "comma before ']'"),
                        ('{"channels": ["email"],\n}', "comma before '}'")]:
        r = ctl(sc, "workspace", "set", ws, "-", stdin=text, code=2)
        assert named in r.stderr, r.stderr
    # Keys may repeat in different objects, and commas inside strings are text.
    ctl(sc, "workspace", "set", ws, "-", stdin=json.dumps(
        {"channels": ["email", "sms", "push"],
         "topics": [{"id": "a", "name": "x,]", "default_state": "SUBSCRIBED"},
                    {"id": "b", "name": "\"id\":", "default_state": "SUBSCRIBED"}]}))
    assert [t.name for t in sc.root.GetWorkspace(workspace=ws).topics] == ["x,]", '"id":']
    assert list(sc.root.GetWorkspace(workspace=ws).channels) == ["email", "sms", "push"]


def test_watch_from_oldest_and_live(sc):
    ws = sc.workspace()
    pid = sc.person(ws).person_id
    sc.root.Subscribe(workspace=ws, person=pid, channel="email", source="a")
    sc.root.Unsubscribe(workspace=ws, person=pid, channel="sms", source="b")
    lines = ctl(sc, "watch", ws, "--from-oldest", "--count", "3", "--json").stdout.splitlines()
    events = [json.loads(l) for l in lines]
    assert [list(e) for e in events] == [fields(pb.ChangeEvent)] * 3
    assert [(e["action"], e["channel"], e["state"], e["source"]) for e in events] == [
        ("identify", "", "PREFERENCE_STATE_UNSPECIFIED", ""),
        ("subscribe", "email", "PREFERENCE_STATE_SUBSCRIBED", "a"),
        ("unsubscribe", "sms", "PREFERENCE_STATE_UNSUBSCRIBED", "b")]
    stub = pb_grpc.SubscriptionCenterStub(sc.channel)
    feed = stub.WatchChanges(pb.WatchRequest(workspace=ws, from_oldest=True), timeout=10,
                             metadata=[("authorization", "Bearer " + TOKENS["sc-root"])])
    assert [e["seq"] for e in events] == [next(feed).seq for _ in range(3)]
    feed.cancel()
    # Live: each event is printed as it arrives, with no deadline (a unary call gets 5 s).
    # --after-seq takes the whole uint64 range: the largest is beyond the newest seq.
    r = ctl(sc, "watch", ws, "--after-seq", str(2**64 - 1), code=1)
    assert "OUT_OF_RANGE" in r.stderr, r.stderr
    r = ctl(sc, "watch", ws, "--after-seq", str(2**64), code=2)
    assert "after-seq" in r.stderr and str(2**64 - 1) in r.stderr, r.stderr
    proc = subprocess.Popen(argv(sc.port, "watch", ws, "--after-seq", events[-1]["seq"],
                                 "--count", "2"), stdout=subprocess.PIPE, text=True,
                            stderr=subprocess.PIPE, env=clean_env(), cwd=support.REPO)
    try:
        time.sleep(5.5)
        sc.root.Subscribe(workspace=ws, person=pid, channel="push", source="live")
        assert select.select([proc.stdout], [], [], 10)[0], "no event printed within 10 s"
        first = proc.stdout.readline()
        assert "subscribe" in first and "(push, )" in first and "source=live" in first, first
        assert proc.poll() is None  # still watching for the second event
        sc.root.Unsubscribe(workspace=ws, person=pid, channel="push", source="live")
        out, err = proc.communicate(timeout=10)
        assert proc.returncode == 0, err
        assert "unsubscribe" in out and f"person_id={pid}" in out
    finally:
        proc.kill()


def test_refusals_and_errors(sc):
    ws = sc.workspace()
    pid = sc.person(ws).person_id
    r = ctl(sc, "subscribe", ws, pid, "fax", code=1)
    assert r.stderr.startswith("subcenterctl: INVALID_ARGUMENT: ") and "channel" in r.stderr
    assert list(sc.root.GetPreferences(workspace=ws, person=pid).entries) == []
    r = ctl(sc, "history", ws, pid, "--page-size", "5000", code=1)
    assert "INVALID_ARGUMENT" in r.stderr and "page_size" in r.stderr
    assert "NOT_FOUND" in ctl(sc, "profile", ws, "ghost", code=1).stderr
    assert "UNAUTHENTICATED" in ctl(sc, "profile", ws, pid, token=None, code=1).stderr
    assert "unknown command 'frobnicate'" in ctl(sc, "frobnicate", code=2).stderr
    assert "--bogus" in ctl(sc, "profile", ws, pid, "--bogus", code=2).stderr
    assert "--record-send" in ctl(sc, "subscribe", ws, pid, "email", "--record-send",
                                  code=2).stderr
    assert "missing operands" in ctl(sc, "override", ws, pid, "email", code=2).stderr
    assert "workspace get WS" in ctl(sc, "workspace", "delete", ws, code=2).stderr
    usage = ctl(sc, "--help").stdout
    for word in ("check-batch", "unsuppress", "workspace set", "watch", "--cert", "--json",
                 "--also-suppress", "--page-token", "--from-oldest", "verify-receipt"):
        assert word in usage, word
    # $SUBCENTER_TOKEN stands in for --token: the history's actor is that token's name.
    ctl(sc, "subscribe", ws, pid, "sms", token=None, env={"SUBCENTER_TOKEN": TOKENS["sc-write"]})
    assert sc.root.GetHistory(workspace=ws, person=pid).entries[0].actor == "sc-write"
    # What a command does comes from its flags only: a leftover SUBCENTER_ALSO_SUPPRESS (or
    # _RECORD_SEND) made every later forget suppress (every check count a send).
    assert "SUBCENTER_<FLAG>" in usage and "flags only" in usage
    other = unique("p")
    sc.person(ws, person_id=other, email=f"{other}@example.com")
    ctl(sc, "forget", ws, other, env={"SUBCENTER_ALSO_SUPPRESS": "1", "SUBCENTER_WAIT": "1"})
    assert sc.root.Identify(workspace=ws, person_id=other, email=f"{other}@example.com")


def test_mtls_client_certificate(start_server, tmp_path):
    server = start_server("subcenterd", server_args(), client_ca=True)
    cert = ["--cert", support.CLIENT_PEM, "--key", support.CLIENT_KEY]
    run = lambda *a: subprocess.run(argv(server.port, *a), capture_output=True, text=True,
                                    env=clean_env(), cwd=support.REPO, timeout=30)
    r = run("identify", "default", "m1", "m1@example.com", *cert)
    assert r.returncode == 0, r.stdout + r.stderr
    with support.make_channel(server.port, client_cert=True) as ch:
        got = pb_grpc.SubscriptionCenterStub(ch).GetProfile(
            pb.GetProfileRequest(workspace="default", person=pb.PersonRef(person_id="m1")),
            metadata=[("authorization", "Bearer " + TOKENS["sc-root"])], timeout=10)
    assert got.email == "m1@example.com"
    # No client certificate: the server's alert and what to do, not a broken pipe.
    for _ in range(3):
        refused = run("profile", "default", "m1")
        assert refused.returncode == 1, refused
        assert refused.stderr.startswith("subcenterctl: UNAVAILABLE: "), refused.stderr
        assert "certificate required" in refused.stderr, refused.stderr
        assert "give --cert and --key" in refused.stderr, refused.stderr
    # A client certificate the server's --client-ca did not sign, and one it signed for a
    # server (the server's own).
    key, cert = tmp_path / "rogue.key", tmp_path / "rogue.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=rogue"], check=True,
                   capture_output=True, timeout=30)
    for pem, key, cause, advice in (
            (cert, key, "unknown ca", "signed by the server's --client-ca"),
            (support.SERVER_PEM, support.SERVER_KEY, "unsupported certificate",
             "not one for clients")):
        r = run("profile", "default", "m1", "--cert", pem, "--key", key)
        assert r.returncode == 1, r
        assert cause in r.stderr and advice in r.stderr, r.stderr
    half = run("profile", "default", "m1", "--cert", support.CLIENT_PEM)
    assert half.returncode == 2 and "--key" in half.stderr


def test_tls_failures_are_unavailable_not_a_crash(sc):
    """A server whose certificate does not verify, a name it is not valid for, a peer that
    closes at once or says nothing: exit 1 with UNAVAILABLE (they used to abort with a
    double free), and --timeout-ms bounds the handshake."""
    base = [str(support.binary("subcenterctl")), "--token", TOKENS["sc-root"]]
    run = lambda *a: subprocess.run(base + [str(x) for x in a], capture_output=True, text=True,
                                    env=clean_env(), cwd=support.REPO, timeout=30)
    server = f"127.0.0.1:{sc.port}"
    for args, cause, advice in (
            (["--ca", support.SERVER_PEM], "", "not signed by the --ca file"),
            (["--ca", support.CA_PEM, "--server-name", "wrong.example"], "(hostname mismatch)",
             "not for --server-name")):
        r = run("--server", server, *args, "health")
        assert r.returncode == 1 and r.stderr.startswith("subcenterctl: UNAVAILABLE: "), r
        assert cause in r.stderr and advice in r.stderr, r.stderr
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        port = listener.getsockname()[1]
        held = []

        def accept(close_at_once: bool):
            c, _ = listener.accept()
            if close_at_once:
                c.close()
            else:
                held.append(c)

        t = threading.Thread(target=accept, args=(True,))
        t.start()
        r = run("--server", f"127.0.0.1:{port}", "--ca", support.CA_PEM, "health")
        t.join()
        assert r.returncode == 1 and "UNAVAILABLE" in r.stderr, r
        t = threading.Thread(target=accept, args=(False,))
        t.start()
        start = time.monotonic()
        r = run("--server", f"127.0.0.1:{port}", "--ca", support.CA_PEM, "--timeout-ms", "800",
                "health")
        took = time.monotonic() - start
        t.join()
        for c in held:
            c.close()
        assert r.returncode == 1 and "timed out" in r.stderr and took < 5, (took, r)


def test_token_create_writes_json_and_tokens_must_be_printable(sc, tmp_path):
    r = subprocess.run([str(support.binary("subcenterctl")), "token", "create", 'ops"team\\x',
                        "default", "read"], capture_output=True, text=True, env=clean_env())
    assert r.returncode == 0, r
    entry = json.loads(r.stdout.split("tokens file entry: ", 1)[1])
    assert entry["name"] == 'ops"team\\x' and entry["scopes"] == ["read"]
    r = subprocess.run([str(support.binary("subcenterctl")), "token", "create", "", "default",
                        "read"], capture_output=True, text=True, env=clean_env())
    assert r.returncode == 2 and "must not be empty" in r.stderr
    r = subprocess.run([str(support.binary("subcenterctl")), "token", "create", "ops", "WA!",
                        "read"], capture_output=True, text=True, env=clean_env())
    assert r.returncode == 2 and "workspace must be" in r.stderr, r
    ws = sc.workspace()
    r = ctl(sc, "workspace", "get", ws, token=None, env={"SUBCENTER_TOKEN": TOKENS["sc-root"] + "\r"},
            code=2)
    assert "visible ASCII" in r.stderr


def test_command_line_problems_are_usage_errors_and_output_failures_are_not_done(sc, tmp_path):
    """Exit 2 with nothing sent for an empty `email:` or invalid UTF-8; `--` ends the flags (a person id may start with `--`); control
    characters in messages are escaped; output that cannot be written is not exit 0."""
    ws = sc.workspace()
    r = ctl(sc, "profile", ws, "email:", code=2)
    assert "names no email" in r.stderr, r.stderr
    ctl(sc, "identify", ws, "--", "--odd-id")
    assert "--odd-id" in ctl(sc, "profile", ws, "--", "--odd-id").stdout
    binary = str(support.binary("subcenterctl"))
    r = subprocess.run([binary.encode(), b"identify", ws.encode(), b"\xff\xfeab"],
                       capture_output=True, env=clean_env(), timeout=30)
    assert r.returncode == 2 and b"not valid UTF-8" in r.stderr, r
    r = subprocess.run([binary, "frob\x1b[2J"], capture_output=True, text=True, env=clean_env())
    assert r.returncode == 2 and "\x1b" not in r.stderr and "\\u{1B}" in r.stderr, r
    with open("/dev/full", "w") as full:
        r = subprocess.run([binary, "token", "create", "a", "default", "read"], stdout=full,
                           stderr=subprocess.PIPE, text=True, env=clean_env())
    assert r.returncode == 1 and "could not be written" in r.stderr, r
