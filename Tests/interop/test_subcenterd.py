"""subcenterd: serves Health but not the interop TestService; bad settings are refused."""

import atexit
import hashlib
import json
import os
import re
import resource
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import tempfile
import time

import grpc
import pytest

from interop_support import (REPO, RPC_TIMEOUT, SERVER_KEY, SERVER_PEM, admin_address, binary,
                             empty_pb2,
                             free_port, health_pb2,
                             health_stub,
                             make_channel, run_to_exit, shared_server_fixture, interop_stub,
                             tls_args)
from sc_support import TOKENS, Client, Env, pb, pb_grpc, raw_unary, server_args


def _subcenterd_args():
    data = tempfile.mkdtemp(prefix="subcenterd-data-")
    atexit.register(shutil.rmtree, data, True)
    return ["--admin-listen", f"127.0.0.1:{free_port()}", "--data", data]


_sd_slot, subcenterd = shared_server_fixture("subcenterd", exe="subcenterd", args=_subcenterd_args)


@pytest.fixture
def sd_channel(subcenterd):
    ch = make_channel(subcenterd.port)
    yield ch
    ch.close()


def test_health_serving(sd_channel):
    response = health_stub(sd_channel).Check(health_pb2.HealthCheckRequest(service=""),
                                             timeout=RPC_TIMEOUT)
    assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_health_unknown_service_not_found(sd_channel):
    with pytest.raises(grpc.RpcError) as err:
        health_stub(sd_channel).Check(health_pb2.HealthCheckRequest(service="grpc.testing.TestService"),
                                      timeout=RPC_TIMEOUT)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("service", ["", "subcenter.v1.SubscriptionCenter"])
def test_health_watch_streams_serving_without_a_token(sd_channel, service):
    """SPEC §3: the server "serves grpc.health.v1.Health (Check, Watch) for "" and
    subcenter.v1.SubscriptionCenter"; §5: "The health service needs no token"."""
    call = health_stub(sd_channel).Watch(health_pb2.HealthCheckRequest(service=service),
                                         timeout=RPC_TIMEOUT)
    try:
        assert next(call).status == health_pb2.HealthCheckResponse.SERVING
    finally:
        call.cancel()


def test_interop_service_not_served(sd_channel):
    with pytest.raises(grpc.RpcError) as err:
        interop_stub(sd_channel).EmptyCall(empty_pb2.Empty(), timeout=RPC_TIMEOUT)
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


def base_args(tmp_path):
    return (["--listen", f"127.0.0.1:{free_port()}", "--admin-listen", f"127.0.0.1:{free_port()}",
             "--data", str(tmp_path / "data")] + tls_args())


@pytest.mark.parametrize("flag,value", [("--max-message-bytes", "abc"), ("--loops", "0"),
                                        ("--max-concurrent-streams", "-1"),
                                        ("--fsync", "interval:60001"), ("--fsync", "interval:0"),
                                        ("--max-message-bytes", ""),
                                        ("--idle-timeout", "-1"), ("--idle-timeout", "31536001"),
                                        ("--max-connections", "0"),
                                        ("--max-connections", "1000001"),
                                        ("--max-watchers", "0"), ("--max-watchers", "1000001"),
                                        ("--watch-stall-limit", "0"),
                                        ("--watch-stall-limit", "3601"),
                                        ("--max-request-bytes-per-connection", "0")])
def test_bad_flag_value_refused(tmp_path, flag, value):
    rc, out, err = run_to_exit("subcenterd", base_args(tmp_path) + [flag, value], timeout=10)
    assert rc is not None, f"subcenterd {flag} {value!r} kept running (stderr: {err[-2000:]})"
    assert rc != 0, f"subcenterd {flag} {value!r} exited 0 (stderr: {err[-2000:]})"
    assert flag.lstrip("-") in err, f"stderr does not name {flag}: {err[-2000:]!r}"


def test_flag_values_at_their_upper_edges_start(start_server):
    """The largest values --watch-stall-limit (3600 s) and --max-watchers (1,000,000) accept
    start a serving server (one above is refused: test_bad_flag_value_refused)."""
    server = start_server("subcenterd", server_args() + ["--watch-stall-limit", "3600",
                                                         "--max-watchers", "1000000"])
    env = Env(server)
    try:
        env.root.Identify(workspace="default", person_id="edge")
    finally:
        env.close()


@pytest.mark.parametrize("grpc_host,admin_host", [("127.0.0.1", "127.0.0.1"),
                                                  ("0.0.0.0", "127.0.0.1")])
def test_admin_port_overlapping_the_grpc_port_is_a_flag_error(tmp_path, grpc_host, admin_host):
    """--admin-listen on --listen's address (or a wildcard's) is refused before anything is
    created, naming both flags, instead of failing to bind after creating the data."""
    port = free_port()
    args = ["--listen", f"{grpc_host}:{port}", "--admin-listen", f"{admin_host}:{port}",
            "--data", str(tmp_path / "data")] + tls_args()
    rc, _, err = run_to_exit("subcenterd", args, timeout=10)
    assert rc == 2, f"exit {rc}: {err[-2000:]}"
    assert "--admin-listen" in err and "--listen" in err and "overlaps" in err, err[-2000:]
    assert not (tmp_path / "data").exists()


def test_bad_environment_value_refused(tmp_path):
    rc, out, err = run_to_exit("subcenterd", base_args(tmp_path),
                               env={"SUBCENTER_MAX_MESSAGE_BYTES": "abc"}, timeout=10)
    assert rc is not None, f"subcenterd kept running with SUBCENTER_MAX_MESSAGE_BYTES=abc ({err[-2000:]})"
    assert rc != 0, f"exited 0 with SUBCENTER_MAX_MESSAGE_BYTES=abc (stderr: {err[-2000:]})"
    assert "SUBCENTER_MAX_MESSAGE_BYTES" in err or "max-message-bytes" in err, \
        f"stderr names neither SUBCENTER_MAX_MESSAGE_BYTES nor --max-message-bytes: {err[-2000:]!r}"


def test_unreadable_files_name_their_flag_or_variable(tmp_path):
    """A bad certificate or key names the one flag (or the variable it came from), and a
    tokens file that cannot be read says why."""
    no_key = base_args(tmp_path)[:-2]  # base_args ends with --tls-key KEY
    assert "--tls-key" not in no_key
    rc, _, err = run_to_exit("subcenterd", no_key,
                             env={"SUBCENTER_TLS_KEY": str(tmp_path / "nokey")}, timeout=10)
    assert rc == 2 and "SUBCENTER_TLS_KEY (--tls-key): loading private key" in err, err[-2000:]
    # A certificate path that begins with the key's path still names --tls-cert.
    cert = tls_args()[3] + ".missing.pem"
    rc, _, err = run_to_exit("subcenterd", base_args(tmp_path) + ["--tls-cert", cert],
                             timeout=10)
    assert rc == 2 and "--tls-cert:" in err and "--tls-key" not in err, err[-2000:]
    rc, _, err = run_to_exit("subcenterd", base_args(tmp_path) + ["--tokens", str(tmp_path)],
                             timeout=10)
    assert rc == 2 and "it is a directory" in err, err[-2000:]
    rc, _, err = run_to_exit("subcenterd", base_args(tmp_path) + ["--tokens",
                                                                    str(tmp_path / "none.json")],
                             timeout=10)
    assert rc == 2 and "No such file or directory" in err, err[-2000:]
    assert not (tmp_path / "data").exists()  # read before the data directory is created
    # Given by a variable, the error names it.
    rc, _, err = run_to_exit("subcenterd", base_args(tmp_path),
                             env={"SUBCENTER_TOKENS": str(tmp_path / "none.json")}, timeout=10)
    assert rc == 2 and "SUBCENTER_TOKENS (--tokens)" in err, err[-2000:]
    data = tmp_path / "nokey"
    data.mkdir()
    (data / "wal-00000000000000000001.log").write_bytes(b"")
    args = [a for a in base_args(tmp_path)]
    del args[args.index("--data"):args.index("--data") + 2]
    rc, _, err = run_to_exit("subcenterd", args, env={"SUBCENTER_DATA": str(data)}, timeout=10)
    assert rc == 2 and "SUBCENTER_DATA (--data)" in err and "secret.key" in err, err[-2000:]
    # A data "directory" that is a file is a bad value, named, without a mode warning.
    afile = tmp_path / "afile"
    afile.write_text("x")
    rc, _, err = run_to_exit("subcenterd", args, env={"SUBCENTER_DATA": str(afile)}, timeout=10)
    assert rc == 2 and "SUBCENTER_DATA (--data)" in err and "not a directory" in err, err[-2000:]
    assert "chmod" not in err, err[-2000:]
    # An empty boolean is refused, not taken for "on" (it switched on --recover-truncate,
    # which discards records after damage), and nothing is created.
    fresh = tmp_path / "fresh"
    rc, _, err = run_to_exit("subcenterd", args, env={"SUBCENTER_DATA": str(fresh),
                                                      "SUBCENTER_RECOVER_TRUNCATE": ""},
                             timeout=10)
    assert rc == 2 and "SUBCENTER_RECOVER_TRUNCATE (--recover-truncate)" in err, err[-2000:]
    rc, _, err = run_to_exit("subcenterd", base_args(tmp_path) + ["--recover-truncate="],
                             timeout=10)
    assert rc == 2 and "--recover-truncate: expected true, false, 1 or 0, got ''" in err, err[-2000:]
    assert not fresh.exists()


HASH_A, HASH_B = "a" * 64, "b" * 64


@pytest.mark.parametrize("entries,expected", [
    # A workspace that is neither "*" nor an id: the token could never be used.
    ('[{"name": "a", "sha256": "%s", "workspace": "WA!", "scopes": ["read"]}]' % HASH_A,
     "workspace must be"),
    # One token twice: which credential it is would depend on the order of the entries.
    ('[{"name": "a", "sha256": "%s", "workspace": "wa", "scopes": ["read"]},'
     ' {"name": "b", "sha256": "%s", "workspace": "wb", "scopes": ["admin"]}]' % (HASH_A, HASH_A),
     "entries 0 and 1 have the same sha256"),
    # One name twice: history could not tell the two callers apart.
    ('[{"name": "a", "sha256": "%s", "workspace": "wa", "scopes": ["read"]},'
     ' {"name": "a", "sha256": "%s", "workspace": "wa", "scopes": ["admin"]}]' % (HASH_A, HASH_B),
     "same name 'a'"),
    # A key twice in one entry: one of the two values would be dropped without a word; also
    # when one spelling escapes a character.
    ('[{"name": "a", "sha256": "%s", "workspace": "wa", "workspace": "*", "scopes": ["read"]}]'
     % HASH_A, 'entry 0: the key "workspace" twice'),
    ('[{"name": "b", "sha256": "%s", "workspace": "*", "scopes": ["read"]},'
     ' {"name": "a", "sha256": "%s", "workspace": "wa", "w\\u006frkspace": "*",'
     ' "scopes": ["read"]}]' % (HASH_B, HASH_A), 'entry 1: the key "workspace" twice'),
    # A key the file does not know (a typo, a note) is refused, not ignored.
    ('[{"name": "b", "sha256": "%s", "workspace": "*", "scopes": ["read"]},'
     ' {"name": "a", "sha256": "%s", "workspace": "*", "scopes": ["read"], "scope": ["admin"]}]'
     % (HASH_B, HASH_A),
     'entry 1: unknown key "scope" (keys: name, sha256, workspace, scopes)'),
    ('[{"name": "a", "sha256": "%s", "workspace": "*", "scopes": ["read"], "note": "x"}]' % HASH_A,
     'entry 0: unknown key "note"'),
    # A missing key or a value of the wrong type: one line naming the entry and the key.
    ('[{"name": "a", "sha256": "%s", "workspace": "*"}]' % HASH_A,
     'entry 0: missing key "scopes" (keys: name, sha256, workspace, scopes)'),
    ('[{"name": "a", "sha256": "%s", "workspace": "*", "scopes": "admin"}]' % HASH_A,
     'entry 0: "scopes": expected an array of strings, got "admin"'),
    ('[{"name": 5, "sha256": "%s", "workspace": "*", "scopes": ["read"]}]' % HASH_A,
     'entry 0: "name": expected a string, got 5'),
    ('{"name": "a", "sha256": "%s", "workspace": "*", "scopes": ["read"]}' % HASH_A,
     "expected a JSON array of token entries, got an object"),
    # A token without scopes could make no call.
    ('[{"name": "a", "sha256": "%s", "workspace": "*", "scopes": []}]' % HASH_A,
     "entry 0 ('a'): no scopes"),
])
def test_bad_tokens_file_refused(tmp_path, entries, expected):
    """One line names the flag, the file, the entry and the fault; it is read before the data
    directory is created, so nothing is left behind (no directory, no new secret.key)."""
    tokens = tmp_path / "tokens.json"
    tokens.write_text(entries)
    rc, _, err = run_to_exit("subcenterd", base_args(tmp_path) + ["--tokens", str(tokens)],
                             timeout=10)
    assert rc == 2 and f"--tokens: {tokens}: " in err and expected in err, (rc, err[-2000:])
    assert "DecodingError" not in err and len(err.strip().splitlines()) == 1, err[-2000:]
    assert not (tmp_path / "data").exists()


def test_empty_tokens_file_starts_with_a_warning(start_server, tmp_path):
    """`[]` is a valid file, but every call fails: the start says so."""
    tokens = tmp_path / "tokens.json"
    tokens.write_text("[]")
    srv = start_server("subcenterd", args=["--admin-listen", f"127.0.0.1:{free_port()}",
                                           "--data", str(tmp_path / "data"),
                                           "--tokens", str(tokens)])
    assert (f"subcenterd: warning: --tokens: {tokens}: no tokens: every call will be "
            "UNAUTHENTICATED") in srv.stderr_text(), srv.output()
    ch = make_channel(srv.port)
    try:
        health = health_stub(ch).Check(health_pb2.HealthCheckRequest(service=""),
                                       timeout=RPC_TIMEOUT)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as err:
            pb_grpc.SubscriptionCenterStub(ch).GetWorkspace(
                pb.GetWorkspaceRequest(workspace="default"), timeout=RPC_TIMEOUT,
                metadata=[("authorization", "Bearer sc_anything")])
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        ch.close()


def _get_workspace_of_size(total: int) -> bytes:
    """A GetWorkspaceRequest of exactly `total` (128..16383) bytes: one long workspace id."""
    n = total - 3  # the tag and a two-byte length
    return bytes([0x0A, (n & 0x7F) | 0x80, n >> 7]) + b"w" * n


def test_size_and_stream_limits_and_flags_from_the_environment(start_server):
    """SPEC §6: --max-message-bytes N is the "largest request message" and
    --max-concurrent-streams N holds "per connection", over them RESOURCE_EXHAUSTED (§3) on a
    connection that keeps serving; "each [flag] also read from the environment as
    SUBCENTER_<FLAG> ...; flags win": SUBCENTER_ERASURE_DEADLINE=7 sets the erasure deadline,
    SUBCENTER_MAX_MESSAGE_BYTES=1000 loses to --max-message-bytes 3000."""
    server = start_server("subcenterd", server_args() + ["--max-message-bytes", "3000",
                                                         "--max-concurrent-streams", "3"],
                          env={"SUBCENTER_MAX_MESSAGE_BYTES": "1000",
                               "SUBCENTER_ERASURE_DEADLINE": "7"})
    env = Env(server)
    try:
        md = [("authorization", "Bearer " + TOKENS["sc-root"])]
        for size, code in ((3000, grpc.StatusCode.INVALID_ARGUMENT),  # read: the id is too long
                           (3001, grpc.StatusCode.RESOURCE_EXHAUSTED)):
            body = _get_workspace_of_size(size)
            assert len(body) == size
            with pytest.raises(grpc.RpcError) as err:
                raw_unary(env.channel, "GetWorkspace", body, md)
            assert err.value.code() == code, (size, err.value.details())
        watches = [pb_grpc.SubscriptionCenterStub(env.channel).WatchChanges(
            pb.WatchRequest(workspace="default"), metadata=md, timeout=30) for _ in range(4)]
        for w in watches[:3]:
            w.initial_metadata()
        with pytest.raises(grpc.RpcError) as err:
            next(watches[3])
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.value.details()
        for w in watches:
            w.cancel()
        env.root.Identify(workspace="default", person_id="e1")
        r = env.root.ForgetPerson(workspace="default", person="e1")
        assert r.erasure_deadline - r.erased_at == 7000, r
    finally:
        env.close()


@pytest.mark.deadline(60)
def test_every_setting_from_the_environment_alone(tmp_path):
    """SPEC §6: each flag is "also read from the environment as SUBCENTER_<FLAG>, e.g.
    SUBCENTER_LISTEN": a subcenterd given no flag at all listens, keeps its data and reads
    its tokens and certificate where the environment says, with the fsync policy, loops and
    snapshot interval it names; "--snapshot-interval: also snapshot after this many seconds
    with changes" (a change is in a snapshot within about that, and no snapshot is written
    while nothing changes)."""
    import urllib.request
    from interop_support import LIVE_SERVERS, ServerProcess, shutdown
    from sc_support import write_tokens_file
    port, admin = free_port(), free_port()
    env = {"SUBCENTER_LISTEN": f"127.0.0.1:{port}", "SUBCENTER_ADMIN_LISTEN": f"127.0.0.1:{admin}",
           "SUBCENTER_DATA": str(tmp_path / "data"),
           "SUBCENTER_TOKENS": write_tokens_file(str(tmp_path)),
           "SUBCENTER_TLS_CERT": str(SERVER_PEM), "SUBCENTER_TLS_KEY": str(SERVER_KEY),
           "SUBCENTER_FSYNC": "interval:5", "SUBCENTER_LOOPS": "1",
           "SUBCENTER_SNAPSHOT_INTERVAL": "1"}

    def metrics() -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=10) as r:
            return {line.split()[0]: float(line.split()[1])
                    for line in r.read().decode().splitlines()
                    if line and not line.startswith("#")}

    server = ServerProcess("subcenterd", [], env=env, port=port, listen=False)
    LIVE_SERVERS.append(server)
    server.start()
    client = Env(server)
    try:
        log = server.stderr_text()
        assert f"data {tmp_path / 'data'} (fsync interval:5)" in log, log
        assert f"listening on 127.0.0.1:{port} (1 loop," in log, log
        client.root.Identify(workspace="default", person_id="from-env")
        deadline = time.monotonic() + 5
        # interval:5 answers before the fsync: the record is durable a few ms later.
        while (written := metrics()["subcenter_wal_durable_seq"]) == 0:
            assert time.monotonic() < deadline, "the change is not durable 5 s later"
            time.sleep(0.01)
        while metrics()["subcenter_snapshot_seq"] < written:
            assert time.monotonic() < deadline, "the change is in no snapshot 5 s later"
            time.sleep(0.1)
        assert [f for f in os.listdir(tmp_path / "data") if f.endswith(".snap")]
        quiet = metrics()["subcenter_snapshots_written_total"]
        time.sleep(2.5)
        assert metrics()["subcenter_snapshots_written_total"] == quiet, \
            "a snapshot was written with no change since the last one"
    finally:
        client.close()
        shutdown(server, require_clean=True)


def test_unknown_flag_refused(tmp_path):
    rc, out, err = run_to_exit("subcenterd", base_args(tmp_path) + ["--no-such-flag", "1"], timeout=10)
    assert rc not in (None, 0), f"exit {rc}, stderr {err[-2000:]!r}"
    assert "no-such-flag" in err, err[-2000:]


def test_missing_certificate_refused(tmp_path):
    args = ["--listen", f"127.0.0.1:{free_port()}", "--admin-listen", f"127.0.0.1:{free_port()}",
            "--data", str(tmp_path / "data"), "--tls-cert", str(tmp_path / "nope.pem"),
            "--tls-key", str(tmp_path / "nope.key")]
    rc, out, err = run_to_exit("subcenterd", args, timeout=10)
    assert rc not in (None, 0), f"exit {rc}, stderr {err[-2000:]!r}"
    assert any(w in err for w in ("nope.pem", "nope.key", "tls-cert", "tls-key")), err[-2000:]


@pytest.mark.parametrize("loops", ["1", "2"])
def test_an_address_in_use_is_refused_even_by_this_users_own_server(subcenterd, tmp_path, loops):
    """A second subcenterd on the address of a running one must not start: its SO_REUSEPORT
    listeners would silently join the first one's and take half of its connections."""
    grpc_taken = ["--listen", f"127.0.0.1:{subcenterd.port}",
                  "--admin-listen", f"127.0.0.1:{free_port()}"]
    admin = admin_address(subcenterd)
    admin_taken = ["--listen", f"127.0.0.1:{free_port()}", "--admin-listen", admin]
    for args, flag in [(grpc_taken, "--listen"), (admin_taken, "--admin-listen")]:
        rc, out, err = run_to_exit(
            "subcenterd", args + ["--loops", loops, "--data", str(tmp_path / flag)] + tls_args(),
            timeout=10)
        assert rc not in (None, 0), f"started on a taken {flag}: exit {rc}, stderr {err[-2000:]!r}"
        assert flag.lstrip("-") in err and "in use" in err, err[-2000:]
        assert not (tmp_path / flag).exists(), "a refused start created its data directory"
    resp = health_stub(make_channel(subcenterd.port)).Check(
        health_pb2.HealthCheckRequest(service=""), timeout=RPC_TIMEOUT)
    assert resp.status == health_pb2.HealthCheckResponse.SERVING


def test_data_files_are_private_and_a_readable_directory_is_flagged(tmp_path):
    """The data holds personal data: files are created 0600, and a data directory others can
    read (e.g. a restore into a plain `mkdir`) is named in a warning at start."""
    from crash_support import DurableServer
    srv = DurableServer(str(tmp_path))
    os.makedirs(srv.data, mode=0o755)
    os.chmod(srv.data, 0o755)
    try:
        srv.start()
        srv.client.Identify(workspace="default", person_id="p1", email="p1@example.com")
        assert srv.terminate() == 0  # a snapshot too
        out = srv.server.output()
        assert "has mode 0755" in out and "chmod 700" in out, out
        # The first start says it made a secret to back up, and what it runs with.
        assert f"new data directory {srv.data}: created secret.key" in out, out
        assert f"data {srv.data} (fsync always);" in out and "client certificates not" in out
        modes = {f: stat.S_IMODE(os.stat(os.path.join(srv.data, f)).st_mode)
                 for f in os.listdir(srv.data)}
        assert any(f.startswith("snapshot-") for f in modes) and \
            any(f.startswith("wal-") for f in modes), modes
        assert all(m == 0o600 for m in modes.values()), {f: oct(m) for f, m in modes.items()}
        os.chmod(srv.data, 0o700)
        srv.start()
        assert "has mode" not in srv.server.output()
        assert "new data directory" not in srv.server.output()
        assert srv.terminate() == 0
        # A tokens file others may write (anyone could add an admin token) and a secret
        # others may read are named too.
        os.chmod(srv.tokens, 0o666)
        os.chmod(os.path.join(srv.data, "secret.key"), 0o644)
        srv.start()
        out = srv.server.output()
        assert f"{srv.tokens} has mode 0666" in out and "chmod go-w" in out, out
        assert "secret.key has mode 0644" in out and "chmod 600" in out, out
        os.chmod(srv.tokens, 0o600)
        os.chmod(os.path.join(srv.data, "secret.key"), 0o600)
    finally:
        srv.close()


def _start_with_nofile(tmp_path, limits: tuple, extra: list) -> tuple:
    """subcenterd on a free port under RLIMIT_NOFILE `limits`, its output in server.log, once it
    says "listening on": (process, port, log path). The caller kills it."""
    from interop_support import binary
    port = free_port()
    log = tmp_path / "server.log"
    args = [str(binary("subcenterd")), "--listen", f"127.0.0.1:{port}", "--admin-listen",
            f"127.0.0.1:{free_port()}", "--data", str(tmp_path / "data")] + extra + tls_args()
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT,
                                preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, limits))
    deadline = time.monotonic() + 20
    while b"listening on" not in log.read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            pytest.fail(f"subcenterd did not start: {log.read_text()[-2000:]}")
        time.sleep(0.05)
    return proc, port, log


@pytest.mark.deadline(60)
def test_out_of_file_descriptors_pauses_accepting_instead_of_spinning(tmp_path):
    """With every file descriptor taken, a failed accept pauses the listener for a second
    (said once per pause) instead of waking the loops again at once: they used to spin at
    100% CPU and log tens of MB a second. Accepting resumes when descriptors free up."""
    proc, port, log = _start_with_nofile(tmp_path, (48, 48), ["--loops", "1"])
    socks = []
    try:
        for _ in range(60):  # more than the descriptors left; each waits for its handshake
            socks.append(socket.create_connection(("127.0.0.1", port), timeout=2))

        def cpu() -> float:
            fields = open(f"/proc/{proc.pid}/stat").read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        before = cpu()
        time.sleep(3)
        used = cpu() - before
        failures = log.read_text().count("accept failed")
        assert failures >= 1, "no accept failed: the descriptors never ran out"
        assert used < 1.0 and failures <= 10, f"{used:.2f} s of CPU in 3 s, {failures} log lines"
        for s in socks:
            s.close()
        socks = []
        time.sleep(1.5)
        resp = health_stub(make_channel(port)).Check(health_pb2.HealthCheckRequest(service=""),
                                                     timeout=RPC_TIMEOUT)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        for s in socks:
            s.close()
        proc.kill()
        proc.wait()


def test_sighup_reloads_the_tokens_file(start_server):
    """SIGHUP (a closed terminal or SSH session too) never ends the server: it reads the
    tokens file again. A token taken out of it is refused at once, also on a connection that
    used it before (its verified header is not reused) and on a WatchChanges stream, which
    ends; a token added works; a refused file keeps the tokens in force."""
    args = server_args()
    tokens_path = args[args.index("--tokens") + 1]
    server = start_server("subcenterd", args)
    env = Env(server)
    try:
        read = env.client("sc-read")
        ws = env.workspace()
        env.person(ws, "h1")
        assert read.GetProfile(workspace=ws, person="h1").person_id == "h1"
        def watch_as(name):
            w = pb_grpc.SubscriptionCenterStub(env.channel).WatchChanges(
                pb.WatchRequest(workspace=ws, from_oldest=True),
                metadata=env.client(name).metadata, timeout=30)
            assert next(w).person_id == "h1"
            return w
        watch, watch_pii, watch_root = watch_as("sc-read"), watch_as("sc-read-pii"), \
            watch_as("sc-root")
        with open(tokens_path) as f:
            entries = json.load(f)
        added = "sct_added_" + "x" * 20
        kept = [e for e in entries if e["name"] != "sc-read"]
        for e in kept:
            if e["name"] == "sc-read-pii":
                e["scopes"] = ["read"]  # its stream showed PII: it ends
        kept.append({"name": "sc-added", "sha256": hashlib.sha256(added.encode()).hexdigest(),
                     "workspace": "*", "scopes": ["read"]})
        with open(tokens_path, "w") as f:
            json.dump(kept, f)
        server.proc.send_signal(signal.SIGHUP)
        _wait_for(lambda: "SIGHUP: reloaded" in server.stderr_text(), "reload line")
        assert server.proc.poll() is None, "subcenterd died of SIGHUP"
        assert f"{len(kept)} tokens in force" in server.stderr_text(), server.stderr_text()
        with pytest.raises(grpc.RpcError) as err:
            read.GetProfile(workspace=ws, person="h1")
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED, err.value.details()
        with pytest.raises(grpc.RpcError) as err:
            next(watch)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED, err.value.details()
        assert "no longer in the tokens file" in err.value.details()
        with pytest.raises(grpc.RpcError) as err:
            next(watch_pii)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED, err.value.details()
        assert "no longer has scope 'pii'" in err.value.details()
        env.person(ws, "h2")  # a stream whose token kept its access goes on
        assert next(watch_root).person_id == "h2"
        watch_root.cancel()
        added_client = Client(env.channel, added)
        assert added_client.GetProfile(workspace=ws, person="h1").person_id == "h1"

        # An empty file is taken (health still answers), with the start's warning.
        with open(tokens_path, "w") as f:
            f.write("[]")
        server.proc.send_signal(signal.SIGHUP)
        _wait_for(lambda: "0 tokens in force" in server.stderr_text(), "empty reload line")
        assert "no tokens: every call will be UNAUTHENTICATED" in server.stderr_text()
        with pytest.raises(grpc.RpcError) as err:
            env.root.GetProfile(workspace=ws, person="h1")
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with open(tokens_path, "w") as f:
            json.dump(kept, f)
        server.proc.send_signal(signal.SIGHUP)
        _wait_for(lambda: server.stderr_text().count(f"{len(kept)} tokens in force") == 2,
                  "second reload line")

        # A file that is refused: the tokens in force stay, and the log says why.
        with open(tokens_path, "w") as f:
            f.write('[{"name": "broken"}]')
        server.proc.send_signal(signal.SIGHUP)
        _wait_for(lambda: "the tokens in force stay" in server.stderr_text(), "refusal line")
        assert added_client.GetProfile(workspace=ws, person="h1").person_id == "h1"
        assert env.root.GetProfile(workspace=ws, person="h1").person_id == "h1"
    finally:
        env.close()


def _wait_for(condition, what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.05)


def test_sighup_reloads_the_tls_certificate_for_new_connections(start_server, tmp_path):
    """A renewed certificate takes no restart: after SIGHUP, connections accepted from then
    on get the new one, a connection already open keeps working, and files that are refused
    (a key that does not match the certificate) keep the certificate in force."""
    cert, key = tmp_path / "server.pem", tmp_path / "server.key"
    shutil.copy(SERVER_PEM, cert)
    shutil.copy(SERVER_KEY, key)
    server = start_server("subcenterd", ["--admin-listen", f"127.0.0.1:{free_port()}",
                                         "--data", str(tmp_path / "data"),
                                         "--tls-cert", str(cert), "--tls-key", str(key)])
    ok = health_pb2.HealthCheckResponse.SERVING

    def check(channel):
        return health_stub(channel).Check(health_pb2.HealthCheckRequest(service=""),
                                          timeout=RPC_TIMEOUT).status

    old = make_channel(server.port)
    assert check(old) == ok
    new_cert, new_key = tmp_path / "new.pem", tmp_path / "new.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(new_key),
                    "-out", str(new_cert), "-days", "1", "-subj", "/CN=renewed",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=30)
    shutil.copy(new_cert, cert)
    shutil.copy(new_key, key)
    server.proc.send_signal(signal.SIGHUP)
    _wait_for(lambda: "reloaded the TLS certificate" in server.stderr_text(), "TLS reload line")
    renewed = grpc.ssl_channel_credentials(root_certificates=new_cert.read_bytes())
    with make_channel(server.port, credentials=renewed) as ch:
        assert check(ch) == ok
    with make_channel(server.port) as ch:  # trusts only the dev CA: the old certificate's
        with pytest.raises(grpc.RpcError) as err:
            check(ch)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert check(old) == ok, "the connection opened before the reload stopped working"
    old.close()

    shutil.copy(SERVER_KEY, key)  # no longer the certificate's key: refused
    server.proc.send_signal(signal.SIGHUP)
    _wait_for(lambda: "the TLS certificate in force stays" in server.stderr_text(),
              "TLS refusal line")
    assert "SIGHUP: --tls-key: " in server.stderr_text()
    with make_channel(server.port, credentials=renewed) as ch:
        assert check(ch) == ok


def test_max_connections_closes_new_connections_over_it(start_server):
    """--max-connections 2: two connections serve; a third is closed on arrival (its TLS
    handshake fails), counted in subcenter_connections_refused_total and said once in the
    log; once one of the two closes, a new connection serves. So clients cannot take every
    descriptor (the log needs some for its segments)."""
    from interop_support import RawH2, admin_metrics
    server = start_server("subcenterd", server_args() + ["--max-connections", "2"])
    a, b = RawH2(server.port), RawH2(server.port)
    try:
        for conn in (a, b):
            st = conn.wait(conn.request("/grpc.health.v1.Health/Check",
                                        b"\x00\x00\x00\x00\x00"), timeout=5)
            assert st.grpc_status == 0, st.summary()
        for _ in range(2):
            with pytest.raises((ssl.SSLError, OSError, AssertionError)):
                RawH2(server.port).close()
        samples, _ = admin_metrics(server)
        assert samples["subcenter_connections_refused_total"] == 2, samples
        assert samples["subcenter_open_connections"] == 2, samples
        assert server.stderr_text().count("2 connections open (--max-connections)") == 1, \
            server.stderr_text()
        a.close()
        deadline = time.monotonic() + 5
        while True:  # the server sees the close at its next pass
            try:
                c = RawH2(server.port)
                break
            except (ssl.SSLError, OSError, AssertionError):
                assert time.monotonic() < deadline, "no new connection after one closed"
                time.sleep(0.05)
        st = c.wait(c.request("/grpc.health.v1.Health/Check", b"\x00\x00\x00\x00\x00"), timeout=5)
        assert st.grpc_status == 0, st.summary()
        c.close()
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("soft,hard,max_connections,fits", [
    (300, 300, 1000, 225),    # the hard limit holds 300: a quarter stays for files
    (300, None, 500, None),   # a low soft limit is raised to 500 + 256 (if the hard one allows)
])
def test_the_descriptor_limit_is_fitted_to_max_connections(tmp_path, soft, hard, max_connections,
                                                            fits):
    """At start the soft descriptor limit is raised to --max-connections + 256 as far as the
    hard limit allows; when it cannot hold them, the connections are capped to what leaves a
    reserve for the server's own files, and the log says so and what to raise."""
    hard_now = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    limits = (soft, hard if hard is not None else hard_now)
    if fits is None and hard_now != resource.RLIM_INFINITY and hard_now < max_connections + 256:
        pytest.skip(f"the hard descriptor limit {hard_now} is below {max_connections + 256}")
    proc, _, log = _start_with_nofile(tmp_path, limits,
                                      ["--max-connections", str(max_connections)])
    try:
        text = log.read_text()
        open_files = [l for l in open(f"/proc/{proc.pid}/limits") if l.startswith("Max open files")]
        if fits is None:
            assert "descriptor limit" not in text, text
            assert open_files[0].split()[3] == str(max_connections + 256), open_files
        else:
            assert (f"leaves room for {fits} connections, not --max-connections {max_connections}: "
                    f"raise it to {max_connections + 256}") in text, text
    finally:
        proc.kill()
        proc.wait()


def _default_loops(tmp_path, preexec) -> int:
    """Starts subcenterd without --loops, `preexec` run in the child first; returns how many
    event loops its start line says it runs."""
    proc = subprocess.Popen([str(binary("subcenterd"))] + base_args(tmp_path), cwd=str(REPO),
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, preexec_fn=preexec)
    try:
        deadline = time.monotonic() + 20
        lines = []
        while time.monotonic() < deadline:
            line = proc.stderr.readline().decode("utf-8", "replace")
            if not line:
                break
            lines.append(line)
            m = re.search(r"listening on \S+ \((\d+) loops?,", line)
            if m:
                return int(m.group(1))
        raise AssertionError(f"no start line: {''.join(lines)[-2000:]!r}")
    finally:
        proc.kill()
        proc.wait()


def test_default_loops_follow_the_cpus_the_process_may_run_on(tmp_path):
    """SPEC: `--loops` defaults to the cores; a process confined to one CPU (taskset, a
    cpuset) runs one loop, not one per core online."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("one CPU: confining the server to one changes nothing")
    assert _default_loops(tmp_path, lambda: os.sched_setaffinity(0, {cpus[-1]})) == 1


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def _cpu_cgroup_dir():
    """A new cgroup whose CPU quota this test may set (v2 `cpu.max` or v1
    `cpu.cfs_quota_us`), as (directory, version); skips where none can be made."""
    for line in _read("/proc/self/mountinfo").splitlines():
        fields = line.split(" ")
        dash = fields.index("-")
        kind, point, options = fields[dash + 1], fields[4], fields[dash + 3].split(",")
        if kind == "cgroup2" and "cpu" in _read(f"{point}/cgroup.subtree_control").split():
            version = 2
        elif kind == "cgroup" and "cpu" in options:
            version = 1
        else:
            continue
        path = f"{point}/subcenter-test-{os.getpid()}"
        try:
            os.mkdir(path)
        except OSError:
            continue
        return path, version
    pytest.skip("no cgroup with the CPU controller can be made here (not root, or none mounted)")


@pytest.mark.parametrize("quota,loops", [(1.0, 1), (0.5, 1), (1.5, 2)])
def test_default_loops_follow_the_cgroup_cpu_quota(tmp_path, quota, loops):
    """A container's CPU limit (the cgroup's CPU quota) bounds the default loops, rounded
    up: a limit of 1.5 CPUs runs 2 loops on a larger machine, one of 1 CPU or less runs 1."""
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("one CPU: a quota of one changes nothing")
    path, version = _cpu_cgroup_dir()
    try:
        period = 100000
        if version == 2:
            with open(f"{path}/cpu.max", "w") as f:
                f.write(f"{int(quota * period)} {period}")
        else:
            with open(f"{path}/cpu.cfs_period_us", "w") as f:
                f.write(str(period))
            with open(f"{path}/cpu.cfs_quota_us", "w") as f:
                f.write(str(int(quota * period)))

        def join():
            with open(f"{path}/cgroup.procs", "w") as f:
                f.write(str(os.getpid()))

        assert _default_loops(tmp_path, join) == loops
    finally:
        for _ in range(50):  # the killed server leaves the cgroup a moment later
            try:
                os.rmdir(path)
                break
            except OSError:
                time.sleep(0.1)
