"""Fixtures of the interop suite: server processes on free loopback ports, channels, stubs.

Every server started here is registered; a failing test's report carries the output each live
server printed during that test, and a server that dies during a test fails the test.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Iterable

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import interop_support as support  # noqa: E402

DEFAULT_TEST_DEADLINE = 90  # seconds; override with @pytest.mark.deadline(N)

_live = support.LIVE_SERVERS
launch = support.launch
shutdown = support.shutdown


# --------------------------------------------------------------------------------------------
# Fixtures


# interop-server with default flags, shared by the tests of one module.
_interop_server_slot, interop_server = support.shared_server_fixture("interop_server")


@pytest.fixture
def start_server():
    """Factory: start_server(exe='interop-server', args=[...], client_ca=False, env=None)."""
    started: list[support.ServerProcess] = []

    def factory(exe: str = "interop-server", args: Iterable[str] = (), **kw) -> support.ServerProcess:
        server = launch(exe, args, **kw)
        started.append(server)
        return server

    yield factory
    errors = []
    for server in started:
        try:  # a server that died, hangs on SIGTERM or exits non-zero fails the test here
            shutdown(server, require_clean=True)
        except pytest.fail.Exception as e:
            errors.append(str(e))
    if errors:
        pytest.fail("\n".join(errors), pytrace=False)


@pytest.fixture
def channel(interop_server):
    ch = support.make_channel(interop_server.port)
    yield ch
    ch.close()


@pytest.fixture
def stub(channel):
    return support.interop_stub(channel)


@pytest.fixture
def health(channel):
    return support.health_stub(channel)


# subcenterd for the subscription-center tests (test_sc_*.py): one per module, with the tokens
# of sc_support.TOKEN_SPECS; `sc` is an sc_support.Env (clients per token, fresh workspaces).
@pytest.fixture(scope="module")
def _sc_slot():
    import sc_support
    slot = sc_support.server_slot()
    yield slot
    slot.close()


@pytest.fixture
def sc(_sc_slot):
    import sc_support
    env = sc_support.Env(_sc_slot.get())
    yield env
    env.close()


# --------------------------------------------------------------------------------------------
# Hooks: server output in failure reports, dead servers, per-test deadline


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item):
    item._server_marks = {id(s): s.mark() for s in _live}
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        marks = getattr(item, "_server_marks", {})
        for server in list(_live):
            since = marks.get(id(server), 0)
            text = server.output(since=since)
            state = "running" if server.alive() else f"exited with code {server.proc.returncode}"
            report.sections.append(
                (f"{server.exe} :{server.port} ({state}) output during {report.when}",
                 f"command: {server.describe()}\n{text or '(nothing)'}"))


@pytest.fixture(autouse=True)
def _servers_stay_alive():
    """Fails the test during which a server died (unless the test stopped it on purpose)."""
    yield
    dead = [s for s in _live if not s.alive() and not s.expected_exit]
    if dead:
        msgs = [f"{s.exe} on port {s.port} died during the test with code {s.proc.returncode}\n"
                f"{s.output(limit=6000)}" for s in dead]
        for s in dead:
            s.expected_exit = True  # report once
        pytest.fail("\n".join(msgs), pytrace=False)


class RunTooLong(Exception):
    pass


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    marker = item.get_closest_marker("deadline")
    seconds = int(marker.args[0]) if marker else DEFAULT_TEST_DEADLINE

    def on_alarm(signum, frame):
        raise RunTooLong(f"test ran longer than its {seconds} s deadline")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def pytest_sessionfinish(session, exitstatus):
    for server in list(_live):
        server.kill()
