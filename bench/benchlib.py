#!/usr/bin/env python3
"""Helpers for bench/run (stdlib only). Every subcommand is bounded in time.

  freeport                          print a free TCP port on 127.0.0.1
  wait-port PORT SECONDS            exit 0 once 127.0.0.1:PORT accepts, 1 on timeout
  metrics URL OUT.json              read subcenter_grpc_calls_total from Prometheus text
  h2load STDOUT LOG OUT.json        parse h2load's summary and per-request log (p50/p90/p99)
  idle PID PORT N HOLD OUT.json     RSS per idle TLS+HTTP/2 connection of process PID
  idle-check                        busy fraction of each CPU over 1 s
  cpu-snap PID OUT.json             CPU 0/1 busy ticks and PID's CPU ticks, for busy fractions
  meta OUT.json                     run description from BENCH_* environment variables
  delivery-inputs DIR PERSONS       issue 3: DIR/token, DIR/tokens.json, DIR/delivery-request.bin,
                                    and print the person id asked about
  decision BODY                     print the DeliveryDecision in a gRPC answer's body
  store-bench OUT.json CMD...       run `subcenter-bench store`; its figures and CPU use as JSON
  measured OUT.json CMD...          the same for `subcenter-bench recovery`
  write-inputs DIR                  issue 4: write token, tokens file, Identify and Unsubscribe frames
  redis OUT.txt OUT.json            parse redis-benchmark --csv
  report DIR RESULTS.md|-           print the figures; rewrite the section of RESULTS.md
"""

import hashlib
import json
import os
import re
import secrets
import select
import signal
import socket
import subprocess
import ssl
import sys
import time
import urllib.error
import urllib.request


def die(msg):
    print(f"benchlib: {msg}", file=sys.stderr)
    sys.exit(1)


def write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.write("\n")


def read_json(path):
    with open(path) as f:
        return json.load(f)


# ---------------------------------------------------------------------------- ports


def cmd_freeport(_args):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        print(s.getsockname()[1])


def cmd_wait_port(args):
    port, seconds = int(args[0]), float(args[1])
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(1)


# ---------------------------------------------------------------------------- metrics

SAMPLE = re.compile(r"^subcenter_grpc_calls_total(?:\{(?P<labels>[^}]*)\})?\s+(?P<value>\S+)")
WAL_SAMPLE = re.compile(r"^(?P<name>subcenter_wal_[a-z_]+)\s+(?P<value>\S+)")
CODE = re.compile(r'(?:^|,)\s*code\s*=\s*"(?P<code>[^"]*)"')


def cmd_metrics(args):
    """Sums subcenter_grpc_calls_total over all series: code="OK" vs every other code but
    CANCELLED (calls h2load leaves in flight when a timed run ends and it closes its
    connections; kept apart under "cancelled"); keeps the write-ahead log's samples
    (subcenter_wal_*) under "wal"."""
    url, out = args
    result = {"available": False, "ok": None, "other": None, "cancelled": None, "error": None,
              "wal": {}}
    try:
        with urllib.request.urlopen(url, timeout=3) as r:
            text = r.read(8 << 20).decode("utf-8", "replace")
        ok = other = cancelled = 0.0
        seen = False
        for line in text.splitlines():
            w = WAL_SAMPLE.match(line)
            if w:
                result["wal"][w.group("name")] = float(w.group("value"))
            m = SAMPLE.match(line)
            if not m:
                continue
            seen = True
            c = CODE.search(m.group("labels") or "")
            value = float(m.group("value"))
            if c and c.group("code") == "OK":
                ok += value
            elif c and c.group("code") == "CANCELLED":
                cancelled += value
            else:
                other += value
        if seen:
            result.update(available=True, ok=int(ok), other=int(other), cancelled=int(cancelled))
        else:
            result["error"] = "no subcenter_grpc_calls_total in /metrics"
    except (OSError, urllib.error.URLError, ValueError) as e:
        result["error"] = str(e)
    write_json(out, result)


# ---------------------------------------------------------------------------- h2load

DURATION_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def to_ms(text):
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    return float(m.group(1)) * DURATION_UNITS[m.group(2)] if m else None


def percentile(sorted_values, p):
    """Nearest-rank percentile; p in (0, 100]."""
    if not sorted_values:
        return None
    k = max(0, min(len(sorted_values) - 1, -(-len(sorted_values) * p // 100) - 1))
    return sorted_values[int(k)]


def cmd_h2load(args):
    stdout_path, log_path, out = args
    text = open(stdout_path, errors="replace").read()
    r = {"parsed": False}
    m = re.search(r"finished in ([\d.]+\w+), ([\d.]+) req/s", text)
    if m:
        r["finished_ms"] = to_ms(m.group(1))
        r["rps"] = float(m.group(2))
        r["parsed"] = True
    m = re.search(
        r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
        r"(\d+) errored, (\d+) timeout", text)
    if m:
        for k, v in zip(("total", "started", "done", "succeeded", "failed", "errored", "timeout"),
                        m.groups()):
            r[k] = int(v)
    m = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text)
    if m:
        r["status"] = dict(zip(("2xx", "3xx", "4xx", "5xx"), map(int, m.groups())))
    m = re.search(r"time for request:\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)", text)
    if m:
        r["h2load_ms"] = dict(zip(("min", "max", "mean", "sd"), map(to_ms, m.groups())))
    m = re.search(r"Application protocol: (\S+)", text)
    r["alpn"] = m.group(1) if m else None
    m = re.search(r"TLS Protocol: (\S+)", text)
    r["tls"] = m.group(1) if m else None
    m = re.search(r"Cipher: (\S+)", text)
    r["cipher"] = m.group(1) if m else None
    # Per-request log: start_us <TAB> status <TAB> duration_us
    lat, non200 = [], 0
    if log_path != "-" and os.path.exists(log_path):
        with open(log_path) as f:
            for line in f:
                parts = line.split("\t")
                if len(parts) < 3:
                    continue
                if parts[1] != "200":
                    non200 += 1
                lat.append(int(parts[2]))
    lat.sort()
    r["log_rows"] = len(lat)
    r["log_non200"] = non200
    r["p50_ms"] = percentile(lat, 50) / 1e3 if lat else None
    r["p90_ms"] = percentile(lat, 90) / 1e3 if lat else None
    r["p99_ms"] = percentile(lat, 99) / 1e3 if lat else None
    write_json(out, r)


# ---------------------------------------------------------------------------- idle connections

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
SETTINGS_EMPTY = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
SETTINGS_ACK = b"\x00\x00\x00\x04\x01\x00\x00\x00\x00"


def vm_rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def frames(buf):
    """Yields (type, flags) of the complete frames in buf; returns the rest."""
    out = []
    while len(buf) >= 9:
        length = int.from_bytes(buf[0:3], "big")
        if len(buf) < 9 + length:
            break
        out.append((buf[3], buf[4]))
        buf = buf[9 + length:]
    return out, buf


def cmd_idle(args):
    """Opens N TLS connections (ALPN h2), sends the preface + SETTINGS, ACKs the server's
    SETTINGS, holds them idle, and reports the RSS growth of PID per connection."""
    pid, port, n, hold, out = int(args[0]), int(args[1]), int(args[2]), float(args[3]), args[4]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    time.sleep(0.2)
    before = vm_rss_kib(pid)
    conns, alpn_bad, failed, t0 = [], 0, [], time.monotonic()
    for i in range(n):
        try:
            raw = socket.create_connection(("127.0.0.1", port), timeout=5)
            s = ctx.wrap_socket(raw, server_hostname="localhost")
            if s.selected_alpn_protocol() != "h2":
                alpn_bad += 1
            s.sendall(PREFACE + SETTINGS_EMPTY)
            conns.append([s, b"", False])  # socket, pending bytes, server SETTINGS acked
        except OSError as e:
            failed.append(f"#{i}: {e}")
            if len(failed) >= 10:
                break
    opened = time.monotonic() - t0
    # Read the server's first frames; ACK its SETTINGS (what any client would do).
    deadline = time.monotonic() + 3.0
    for c in conns:
        c[0].setblocking(False)
    pending = [c for c in conns]
    while pending and time.monotonic() < deadline:
        ready, _, _ = select.select([c[0] for c in pending], [], [], 0.2)
        ready = set(ready)
        for c in list(pending):
            if c[0] not in ready and not c[0].pending():
                continue
            try:
                data = c[0].recv(65536)
            except (ssl.SSLWantReadError, BlockingIOError):
                continue
            except OSError:
                pending.remove(c)
                continue
            if not data:
                pending.remove(c)
                continue
            got, c[1] = frames(c[1] + data)
            for ftype, flags in got:
                if ftype == 4 and not flags & 1 and not c[2]:
                    c[0].setblocking(True)
                    c[0].sendall(SETTINGS_ACK)
                    c[0].setblocking(False)
                    c[2] = True
            if c[2]:
                pending.remove(c)
    time.sleep(hold)
    after = vm_rss_kib(pid)
    # Which connections did the server keep open through the idle period?
    alive = goaway = 0
    for c in conns:
        buf, is_open = c[1], True
        for _ in range(64):
            try:
                data = c[0].recv(65536)
            except (ssl.SSLWantReadError, BlockingIOError):
                break
            except OSError:
                is_open = False
                break
            if not data:
                is_open = False
                break
            buf += data
        got, _ = frames(buf)
        if any(ftype == 7 for ftype, _ in got):
            goaway += 1
            is_open = False
        alive += is_open
    for c in conns:
        try:
            c[0].close()
        except OSError:
            pass
    time.sleep(1.0)
    after_close = vm_rss_kib(pid)
    write_json(out, {
        "requested": n, "opened": len(conns), "settings_acked": sum(1 for c in conns if c[2]),
        "alive_after_hold": alive, "goaway_received": goaway, "alpn_not_h2": alpn_bad, "errors": failed[:10],
        "open_seconds": round(opened, 2), "hold_seconds": hold,
        "rss_before_kib": before, "rss_after_kib": after, "rss_after_close_kib": after_close,
        "kib_per_conn": (after - before) / len(conns) if conns else None,
    })


# ---------------------------------------------------------------------------- issue 3 inputs


def pb_bytes(field, data):
    """One length-delimited protobuf field (wire type 2)."""
    n, length = len(data), b""
    while True:
        b = n & 0x7F
        n >>= 7
        length += bytes([b | (0x80 if n else 0)])
        if not n:
            break
    return bytes([(field << 3) | 2]) + length + data


def delivery_person(persons):
    """p424242, or with fewer persons loaded an even-numbered one that exists: subcenter-bench
    subscribes even-numbered persons to topic news (allowed, SUBSCRIBED), odd ones not."""
    i = 424242 % persons
    return f"p{i - i % 2}"


def cmd_delivery_inputs(args):
    """A random bearer token with scope check in workspace bench, its tokens file, and the
    gRPC frame of DeliveryRequest{workspace "bench", person {person_id "p424242"},
    channel "email", topic "news"} (fields 1-4, hand-encoded). Prints the person id."""
    d, person = args[0], delivery_person(int(args[1]))
    token = secrets.token_urlsafe(24)
    with open(os.path.join(d, "token"), "w") as f:
        f.write(token)
    write_json(os.path.join(d, "tokens.json"), [{
        "name": "bench", "sha256": hashlib.sha256(token.encode()).hexdigest(),
        "workspace": "bench", "scopes": ["check"]}])
    msg = (pb_bytes(1, b"bench") + pb_bytes(2, pb_bytes(1, person.encode()))
           + pb_bytes(3, b"email") + pb_bytes(4, b"news"))
    with open(os.path.join(d, "delivery-request.bin"), "wb") as f:
        f.write(b"\x00" + len(msg).to_bytes(4, "big") + msg)
    print(person)


def grpc_frame(msg):
    return b"\x00" + len(msg).to_bytes(4, "big") + msg


def cmd_write_inputs(args):
    """Issue 4: a random bearer token with scope write in workspace default (DIR/write-token,
    DIR/write-tokens.json), the gRPC frames of IdentifyRequest{workspace "default",
    person_id "bench"} (DIR/identify-request.bin) and PreferenceRequest{workspace "default",
    person {person_id "bench"}, channel "email", source "bench"} (DIR/unsubscribe-request.bin),
    hand-encoded."""
    d = args[0]
    token = secrets.token_urlsafe(24)
    with open(os.path.join(d, "write-token"), "w") as f:
        f.write(token)
    write_json(os.path.join(d, "write-tokens.json"), [{
        "name": "bench-writer", "sha256": hashlib.sha256(token.encode()).hexdigest(),
        "workspace": "default", "scopes": ["write"]}])
    with open(os.path.join(d, "identify-request.bin"), "wb") as f:
        f.write(grpc_frame(pb_bytes(1, b"default") + pb_bytes(2, b"bench")))
    msg = (pb_bytes(1, b"default") + pb_bytes(2, pb_bytes(1, b"bench"))
           + pb_bytes(3, b"email") + pb_bytes(5, b"bench"))
    with open(os.path.join(d, "unsubscribe-request.bin"), "wb") as f:
        f.write(grpc_frame(msg))


def cmd_redis(args):
    """redis OUT.txt OUT.json: redis-benchmark --csv output (one SET line) as JSON."""
    text = open(args[0], errors="replace").read()
    r = {"parsed": False}
    for line in text.splitlines():
        cells = [c.strip('"') for c in line.strip().split(",")]
        if len(cells) >= 5 and cells[0] == "SET":
            try:
                r.update(parsed=True, rps=float(cells[1]), avg_ms=float(cells[2]),
                         p50_ms=float(cells[4]))
                if len(cells) >= 7:
                    r["p99_ms"] = float(cells[6])
            except ValueError:
                pass
    if not r["parsed"]:
        die(f"no SET line in {args[0]}")
    write_json(args[1], r)


REASONS = ["UNSPECIFIED", "SUBSCRIBED", "OVERRIDDEN_IMPORTANT", "SUPPRESSED", "UNKNOWN_PERSON",
           "GLOBAL_UNSUBSCRIBED", "CHANNEL_UNSUBSCRIBED", "TOPIC_UNSUBSCRIBED",
           "TOPIC_NOT_OPTED_IN", "MESSAGE_LIMIT_REACHED"]


def pb_fields(buf):
    """(field, value) of a flat protobuf message: ints for varints, bytes for wire type 2."""
    i, out = 0, []
    while i < len(buf):
        key, shift = 0, 0
        while True:
            b = buf[i]; i += 1
            key |= (b & 0x7F) << shift; shift += 7
            if not b & 0x80:
                break
        field, wire = key >> 3, key & 7
        value, shift = 0, 0
        if wire in (0, 2):
            while True:
                b = buf[i]; i += 1
                value |= (b & 0x7F) << shift; shift += 7
                if not b & 0x80:
                    break
            if wire == 2:
                value, i = buf[i:i + value], i + value
        else:
            raise ValueError(f"wire type {wire}")
        out.append((field, value))
    return out


def cmd_decision(args):
    """Prints `allowed=... reason=... person_id=...` of the DeliveryDecision in a gRPC body."""
    body = open(args[0], "rb").read()
    if len(body) < 5:
        die(f"answer body of {len(body)} bytes")
    n = int.from_bytes(body[1:5], "big")
    f = dict(pb_fields(body[5:5 + n]))
    reason = f.get(2, 0)
    print(f"allowed={'true' if f.get(1) else 'false'} "
          f"reason={REASONS[reason] if reason < len(REASONS) else reason} "
          f"person_id={f.get(3, b'').decode('utf-8', 'replace')}")


def cmd_store_bench(args):
    """store-bench OUT.json CMD...: runs CMD (`subcenter-bench store ...`), parses its
    key=value line, and records CPU 0/1 busy over the run and the process's own CPU time
    (from wait4), so other load on CPU 0 shows. Ends CMD if this process is terminated."""
    run_measured(args[0], args[1:], ("batch_decisions_per_sec",))


def cmd_measured(args):
    """measured OUT.json CMD...: as store-bench, for `subcenter-bench recovery` (expects
    snapshot_load_ms= or replay_ms=) and `subcenter-bench writes` (writes_per_sec=)."""
    run_measured(args[0], args[1:], ("snapshot_load_ms", "replay_ms", "writes_per_sec"))


def run_measured(out, cmd, expect):

    def busy():
        r = {}
        with open("/proc/stat") as f:
            for line in f:
                p = line.split()
                if p[0] in ("cpu0", "cpu1"):
                    v = list(map(int, p[1:9]))
                    r[p[0]] = (sum(v) - v[3] - v[4], sum(v))
        return r

    a, t0 = busy(), time.monotonic()
    child = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)

    def end(signum, _frame):
        child.kill()
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, end)
    signal.signal(signal.SIGINT, end)
    text = child.stdout.read().decode("utf-8", "replace")
    _, status, ru = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    wall, b = time.monotonic() - t0, busy()
    sys.stdout.write(text)
    if child.returncode != 0:
        die(f"{' '.join(cmd)} exited with {child.returncode}")
    figures = {}
    for line in text.splitlines():
        for kv in line.split():
            k, _, v = kv.partition("=")
            if v:
                try:
                    figures[k] = int(v)
                except ValueError:
                    figures[k] = v
    if not any(k in figures for k in expect):
        die(f"none of {', '.join(k + '=' for k in expect)} in its output")
    r = {c: (b[c][0] - a[c][0]) / max(1, b[c][1] - a[c][1]) for c in ("cpu0", "cpu1")}
    r["process"] = (ru.ru_utime + ru.ru_stime) / wall if wall else None
    write_json(out, {"figures": figures, "wall_seconds": round(wall, 2), "cpu": r})


# ---------------------------------------------------------------------------- CPU use


def cmd_cpu_snap(args):
    """cpu-snap PID OUT.json: /proc/stat busy/total ticks of cpu0 and cpu1, and PID's ticks."""
    pid, out = int(args[0]), args[1]
    snap = {"t": time.monotonic(), "hz": os.sysconf("SC_CLK_TCK")}
    with open("/proc/stat") as f:
        for line in f:
            p = line.split()
            if p[0] in ("cpu0", "cpu1"):
                v = list(map(int, p[1:]))
                idle = v[3] + v[4]  # idle + iowait
                snap[p[0]] = [sum(v[:8]) - idle, sum(v[:8])]
    try:
        with open(f"/proc/{pid}/stat") as f:
            p = f.read().rsplit(")", 1)[1].split()
        snap["pid_ticks"] = int(p[11]) + int(p[12])  # utime + stime
    except OSError:
        snap["pid_ticks"] = None
    write_json(out, snap)


def cmd_idle_check(_args):
    """Prints the busy fraction of every CPU over 1 s (other load before the benchmark)."""
    def read():
        r = {}
        with open("/proc/stat") as f:
            for line in f:
                p = line.split()
                if re.fullmatch(r"cpu\d+", p[0]):
                    v = list(map(int, p[1:9]))
                    r[p[0]] = (sum(v) - v[3] - v[4], sum(v))
        return r
    a = read()
    time.sleep(1.0)
    b = read()
    print(" ".join(f"{c}:{(b[c][0] - a[c][0]) / max(1, b[c][1] - a[c][1]):.2f}" for c in sorted(b)))


def cpu_use(d, stem):
    """{server, cpu0, cpu1} busy fractions between stem-before.json and stem-after.json."""
    a, b = (os.path.join(d, f"{stem}-{w}.json") for w in ("before", "after"))
    if not (os.path.exists(a) and os.path.exists(b)):
        return None
    a, b = read_json(a), read_json(b)
    wall = (b["t"] - a["t"]) * a["hz"]
    r = {}
    for c in ("cpu0", "cpu1"):
        total = b[c][1] - a[c][1]
        r[c] = (b[c][0] - a[c][0]) / total if total else None
    r["server"] = ((b["pid_ticks"] - a["pid_ticks"]) / wall
                   if wall and a["pid_ticks"] is not None and b["pid_ticks"] is not None else None)
    return r


# ---------------------------------------------------------------------------- report

GOAL_RPS = 0.85   # subcenterd req/s >= 0.85 x nghttpd at -c4 -m32
GOAL_P50 = 1.2    # subcenterd p50 <= 1.2 x nghttpd at -c1 -m1
GOAL_RSS = 100.0  # KiB per idle connection
SATURATED = 0.85  # server CPU share below which a -m > 1 run is flagged (client starved?)
GOAL_DELIVERY = 0.6  # issue 3: CheckDelivery req/s >= 0.6 x nghttpd at -c4 -m32, 1M persons
GOAL_BATCH = 2_000_000  # issue 3: CheckDeliveryBatch decisions/s on one core
GOAL_BYTES_PER_PERSON = 300  # issue 3: RSS bytes per person (two preference entries each)
GOAL_WRITES = 1.0  # issue 4: Unsubscribe/s with fsync always >= Redis appendfsync always SET/s
GOAL_SNAPSHOT_MS = 2000  # issue 4: snapshot load of 1M persons < 2 s
GOAL_REPLAY_MS = 3000  # issue 4: replay of 1M log records < 3 s

BEGIN = "<!-- bench/run: latest run (rewritten by bench/run) -->"
END = "<!-- bench/run: end of latest run -->"
HISTORY = "## History"

INTRO = f"""# Subcenter benchmarks

`bench/run` (or `make bench`) measures subcenterd's gRPC `grpc.health.v1.Health/Check`
over HTTP/2 + TLS with h2load, next to nghttpd (same TLS certificate, a tiny static file)
as the HTTP/2+TLS reference on the same machine, and subcenterd's RSS per idle connection.
subcenterd (`--loops 1`) and nghttpd run pinned to CPU 0, h2load and the Python client
pinned to CPU 1, over 127.0.0.1 only. `bench/run --quick` is a smoke test (short runs, one
round, 100,000 persons for issues 3 and 4; it does not touch this file). Raw h2load output and JSON
figures of every run stay in `bench/out/<UTC time>/` (git-ignored).

Goals (issue 2):
- req/s at `-c4 -m32` >= {GOAL_RPS} x nghttpd's
- p50 latency at `-c1 -m1` <= {GOAL_P50} x nghttpd's
- <= {GOAL_RSS:.0f} KiB RSS per idle connection

Goals (issue 3, the subscription service):
- `subcenter.v1.SubscriptionCenter/CheckDelivery` at `-c4 -m32` with 1,000,000 persons loaded
  (`subcenter-bench serve`: the real gRPC service over TLS, `--loops 1`, pinned to CPU 0)
  >= {GOAL_DELIVERY} x nghttpd's req/s at `-c4 -m32` in the same rounds of the same run
- >= {GOAL_BATCH:,} `CheckDeliveryBatch` decisions/s (1,000 persons a call) on one core
- <= {GOAL_BYTES_PER_PERSON} bytes of RSS per person after loading 1,000,000 persons with two
  preference entries each

The batch and RSS-per-person figures come from `subcenter-bench store`, which measures the
store in-process on CPU 0 (one process per round, each loading its own persons): no
gRPC/protobuf decoding, TLS or HTTP/2 in them.

Goals (issue 4, durability):
- `Unsubscribe` at `-c4 -m32` against subcenterd with `--fsync always` (each call a durable
  write) >= Redis's SET/s with `appendfsync always` in the same run (redis-server pinned to
  CPU 0, `redis-benchmark -c 4 -P 32` on CPU 1: 4 connections with 32 commands in flight
  each, as h2load's 4 connections with 32 streams each; `-c 128` is shown beside it)
- loading a snapshot of 1,000,000 persons < 2 s; replaying 1,000,000 log records < 3 s

The write runs use a fresh subcenterd (`--loops 1`, a new data directory under the run's
temporary directory, on the same file system as /tmp) per round and fsync policy, with
person `bench` made by one Identify call; `--fsync none` runs beside `--fsync always` to
show what fsync costs. Recovery comes from `subcenter-bench recovery`, which builds a data
directory with fsync none (1,000,000 persons with two preference entries each, then a
snapshot; or 1,000,000 log records without one), closes it and times `DurableStore.open`
three times (median), with the files in the page cache: the snapshot on both CPUs, as a start
restores its persons on every core (and on CPU 0 alone for reference), the replay on CPU 0.

How the figures are made:
- Each shape runs in rounds; in each round subcenterd and nghttpd alternate (at `-c4 -m32`
  CheckDelivery runs right after them). Figures are the median over the rounds (min-max in
  the second table), ratios are median / median.
- req/s comes from h2load runs *without* `--log-file`: h2load writes one log line per
  request with its own `write()` system call, which makes h2load, not the server, the
  bottleneck at `-c4 -m32` (one test: 318k req/s without the log, 246k with it).
- p50/p90/p99 come from separate h2load runs *with* `--log-file` (nearest rank over the
  per-request latencies of the measured period; h2load itself prints only
  min/max/mean/sd). At `-c1 -m1` the log write happens between requests and does not
  inflate latency; at higher concurrency latency is mostly queueing and tracks throughput.
- h2load counts HTTP 200 as success and never reads `grpc-status`, so the server's own
  `subcenter_grpc_calls_total` (admin `/metrics`) is read around every subcenterd, Unsubscribe and
  CheckDelivery run, and a fixed-count run per shape (`-n`) must match it exactly; one
  CheckDelivery call made with nghttp must answer `grpc-status: 0` and "allowed, SUBSCRIBED".
- With two cores, anything else running (a `swift build`, tests) lands on the benchmark's
  CPUs: while developing this script, runs made next to other work varied up to 3x, quiet
  runs by a few %. bench/run samples CPU use for 1 s before and after the run and, during
  each req/s run and store run, how much of CPU 0 went to something other than the server
  (or the store benchmark); it warns when any is over 10%. It also warns when a server
  used less than 85% of CPU 0 in a `-m` > 1 req/s run (in a quiet run they use 93-98%): then
  h2load was short of CPU 1, or the server waits on something. Each req/s run's req/s divided
  by the server's CPU share ("req/s per server CPU") is shown as a cross-check that such
  load disturbs much less; the goals' verdicts use the req/s medians. Rerun on a quiet
  machine before trusting a figure that comes with such a warning.

"""


def fmt(v, spec="{:,.0f}", none="n/a"):
    return none if v is None else spec.format(v)


def ratio(a, b):
    return a / b if a is not None and b not in (None, 0) else None


def median(values):
    v = sorted(x for x in values if x is not None)
    if not v:
        return None
    n = len(v)
    return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2


def spread(values, spec="{:,.0f}"):
    v = [x for x in values if x is not None]
    return f"{spec.format(min(v))}-{spec.format(max(v))}" if len(v) > 1 else ""


def metrics_delta(d, stem):
    """{available, ok, other} from the before/after reads around one h2load run."""
    a, b = (os.path.join(d, f"{stem}-{w}.json") for w in ("before", "after"))
    if not (os.path.exists(a) and os.path.exists(b)):
        return None
    a, b = read_json(a), read_json(b)
    if not (a["available"] and b["available"]):
        return {"available": False, "error": b.get("error") or a.get("error")}
    return {"available": True, "ok": b["ok"] - a["ok"], "other": b["other"] - a["other"]}


def cmd_meta(args):
    """meta OUT.json: from BENCH_* environment variables and $BENCH_COMMANDS (a file)."""
    e = os.environ
    meta = {k[6:].lower(): v for k, v in e.items() if k.startswith("BENCH_")}
    meta["shapes"] = [s.split("=", 1) for s in meta.pop("shapes").split(";")]
    meta["rounds"] = int(meta["rounds"])
    commands = []
    with open(meta.pop("commands")) as f:
        for line in f:
            line = line.rstrip("\n")
            if line.strip() and line not in commands:
                commands.append(line)
    meta["commands"] = commands
    write_json(args[0], meta)


def check_run(who, args, r, problems):
    if not r.get("parsed"):
        problems.append(f"{who} {args}: could not parse h2load's output")
        return
    bad = {k: r.get(k) for k in ("failed", "errored", "timeout") if r.get(k)}
    if bad:
        problems.append(f"{who} {args}: h2load reports {bad}")
    if r.get("alpn") != "h2":
        problems.append(f"{who} {args}: ALPN {r.get('alpn')}")
    if r.get("log_non200"):
        problems.append(f"{who} {args}: {r['log_non200']} non-200 responses in the log")


def load_shape(d, meta, who, name, args, problems, warnings, saturates=True):
    """Median figures of one server at one shape over the rounds."""
    tput, lat, cpu, eff = [], [], [], []
    ok = other = succeeded = 0
    metrics_ok = True
    metrics_err = None
    for k in range(1, meta["rounds"] + 1):
        for kind, bucket in (("tput", tput), ("lat", lat)):
            stem = f"{who}-{name}-r{k}-{kind}"
            p = os.path.join(d, f"{stem}.json")
            if not os.path.exists(p):
                continue
            r = read_json(p)
            check_run(who, args, r, problems)
            bucket.append(r)
            if kind == "tput":
                c = cpu_use(d, f"cpu-{stem}")
                cpu.append(c)
                if c and c.get("cpu0") is not None and c.get("server") is not None \
                        and c["cpu0"] - c["server"] > 0.10:
                    warnings.append(f"{who} {args} round {k}: {c['cpu0'] - c['server']:.0%} of "
                                    "CPU 0 went to something other than the server")
                if c and c.get("server") and r.get("rps"):
                    eff.append(r["rps"] / c["server"])
                    # With -m > 1 a server that keeps up should use its whole core.
                    if saturates and name != "c1m1" and c["server"] < SATURATED:
                        warnings.append(
                            f"{who} {args} round {k}: the server used only {c['server']:.0%} of "
                            f"CPU 0 (CPU 1 busy {fmt(c.get('cpu1'), '{:.0%}')}): h2load was short "
                            "of CPU (other work on CPU 1?) or the server waited on something")
            if who != "nghttpd":
                m = metrics_delta(d, f"metrics-{stem}")
                if m and m.get("available"):
                    ok += m["ok"]
                    other += m["other"]
                    succeeded += r.get("succeeded", 0)
                else:
                    metrics_ok = False
                    metrics_err = (m or {}).get("error")
    res = {
        "runs": len(tput) + len(lat),
        "rps": median(r.get("rps") for r in tput),
        "rps_all": [r.get("rps") for r in tput],
        "p50_ms": median(r.get("p50_ms") for r in lat),
        "p50_all": [r.get("p50_ms") for r in lat],
        "p90_ms": median(r.get("p90_ms") for r in lat),
        "p99_ms": median(r.get("p99_ms") for r in lat),
        "server_cpu": median(c.get("server") for c in cpu if c),
        "rps_per_cpu": median(eff),
        "client_cpu": median(c.get("cpu1") for c in cpu if c),
        "tls": (tput or lat or [{}])[0].get("tls"),
        "cipher": (tput or lat or [{}])[0].get("cipher"),
    }
    if who != "nghttpd":
        res["metrics"] = ({"available": True, "ok": ok, "other": other, "succeeded": succeeded}
                          if metrics_ok and (tput or lat) else
                          {"available": False, "error": metrics_err})
        x = metrics_delta(d, f"metrics-{name}-exact" if who == "subcenterd"
                          else f"metrics-{who}-{name}-exact")
        xp = os.path.join(d, f"{who}-{name}-exact.json")
        if x and x.get("available") and os.path.exists(xp):
            e = read_json(xp)
            check_run(who, f"{args} (-n)", e, problems)
            x.update(n=e.get("total"), succeeded=e.get("succeeded", 0))
        res["exact"] = x
    return res


def count_line(who, args, s, problems):
    """The server's OK count against h2load's, as one list item; a problem if they disagree."""
    m, x = s["metrics"], s["exact"]
    if not m.get("available"):
        return (f"- `{args}`: server OK count: unavailable"
                + (f" ({m['error']})" if m.get("error") else ""))
    good = m["other"] == 0 and m["ok"] >= m["succeeded"]
    line = (f"- `{args}`: timed runs: server OK {m['ok']:,}, non-OK {m['other']:,}; h2load "
            f"succeeded {m['succeeded']:,} (its warm-up is not counted, so OK >= succeeded)")
    if x and x.get("available"):
        exact_good = x["other"] == 0 and x["ok"] == x["succeeded"] == x["n"]
        line += (f"; fixed-count run `-n {x['n']}`: server OK {x['ok']:,}, non-OK "
                 f"{x['other']:,}, h2load succeeded {x['succeeded']:,} "
                 f"{'(match)' if exact_good else '(MISMATCH)'}")
        good = good and exact_good
    if not good:
        problems.append(f"{who} {args}: the server's count disagrees with h2load "
                        "(non-OK gRPC answers?)")
    return line


def issue3_report(d, meta, rows, problems, warnings, verdicts, out):
    """Issue 3's table: CheckDelivery next to nghttpd's run of the same shape and rounds,
    and the in-process store figures."""
    persons = int(meta.get("persons") or 0)
    batch = int(meta.get("batch") or 0)
    name = meta.get("delivery_shape", "c4m32")
    row = next((r for r in rows if r[0] == name), None)
    args = row[1] if row else name
    c = load_shape(d, meta, "checkdelivery", name, args, problems, warnings)
    n = row[3] if row else {"rps": None}
    h = row[2] if row else {"rps": None}
    if not c["runs"]:
        problems.append("issue 3: no CheckDelivery runs in this output")
    stores = []
    for k in range(1, meta["rounds"] + 1):
        p = os.path.join(d, f"store-r{k}.json")
        if os.path.exists(p):
            r = read_json(p)
            stores.append(r)
            other = r["cpu"]["cpu0"] - (r["cpu"]["process"] or 0)
            if other > 0.10:
                warnings.append(f"subcenter-bench store round {k}: {other:.0%} of CPU 0 went to "
                                "something other than the benchmark")
    if not stores:
        problems.append("issue 3: no subcenter-bench store results in this output")
    dps = median(r["figures"].get("batch_decisions_per_sec") for r in stores)
    bpp = median(r["figures"].get("rss_bytes_per_person") for r in stores)
    rr = ratio(c["rps"], n["rps"])
    ok_d = rr is not None and rr >= GOAL_DELIVERY
    ok_b = dps is not None and dps >= GOAL_BATCH
    ok_r = bpp is not None and bpp <= GOAL_BYTES_PER_PERSON
    verdicts["delivery"] = (rr, ok_d)
    verdicts["batch"] = (dps, ok_b)
    verdicts["bytes_per_person"] = (bpp, ok_r)
    met = lambda ok: f"**{'MET' if ok else 'NOT MET'}**"
    caveat = ("" if persons == 1_000_000 else
              f" (with {persons:,} persons; the goals are stated for 1,000,000)")
    out(f"#### issue 3: the subscription service{caveat}")
    out("")
    out("| measure | subcenter | nghttpd (same run) | ratio | goal |")
    out("|---|---:|---:|---:|---|")
    out(f"| `CheckDelivery` req/s at `{args}`, {persons:,} persons loaded, gRPC over TLS, server "
        f"on one core (median over {len(c['rps_all'])} round(s)) | {fmt(c['rps'])} "
        f"| {fmt(n['rps'])} | {fmt(rr, '{:.2f}')} | >= {GOAL_DELIVERY} x nghttpd: {met(ok_d)} |")
    out(f"| `CheckDeliveryBatch` decisions/s, {batch:,} persons a call, one core, in-process "
        f"store (median over {len(stores)} run(s)) | {fmt(dps)} | | | >= {GOAL_BATCH:,}: {met(ok_b)} |")
    out(f"| RSS per person after loading {persons:,} persons with two preference entries each, "
        f"in-process store (median over {len(stores)} run(s)) | {fmt(bpp)} bytes | | "
        f"| <= {GOAL_BYTES_PER_PERSON} bytes: {met(ok_r)} |")
    out("")
    person = delivery_person(persons) if persons else "?"
    out("Commands (`$TOKEN`: a random bearer token made for the run, scope `check`, workspace "
        "`bench`; the request is the gRPC frame of `DeliveryRequest{workspace: \"bench\", "
        f"person: {{person_id: \"{person}\"}}, channel: \"email\", topic: \"news\"}}`, "
        "hand-encoded):")
    out("")
    out("```")
    nghttpd_seen = False
    for cmd in meta["commands"]:
        timed = "-D " in cmd and "--log-file" not in cmd
        if cmd.startswith("taskset -c 0 nghttpd "):
            if nghttpd_seen:
                continue  # the second one is the idle-connection test's
            nghttpd_seen = True
            out(cmd)
        elif ("subcenter-bench" in cmd
                or "CheckDelivery" in cmd and (timed or cmd.startswith("nghttp "))
                or "/tiny" in cmd and timed and f" {args} " in cmd):
            out(cmd)
    out("```")
    out("")
    ms = "{:.3f}"
    pct = "{:.0%}"
    out(f"- `CheckDelivery` at `{args}`: req/s {spread(c['rps_all']) or fmt(c['rps'])} over the "
        f"rounds (nghttpd {spread(n.get('rps_all') or []) or fmt(n['rps'])}); latency p50 / p90 / "
        f"p99 {fmt(c['p50_ms'], ms)} / {fmt(c['p90_ms'], ms)} / {fmt(c['p99_ms'], ms)} ms "
        f"(nghttpd p50 {fmt(n.get('p50_ms'), ms)} ms); server CPU {fmt(c['server_cpu'], pct)}, "
        f"client CPU {fmt(c['client_cpu'], pct)}; for comparison subcenterd's Health/Check in the "
        f"same rounds: {fmt(h['rps'])} req/s ({fmt(ratio(c['rps'], h['rps']), '{:.2f}')} x)")
    pr = [ratio(a, b) for a, b in zip(c["rps_all"], n.get("rps_all") or [])]
    out(f"- Cross-checks that other load disturbs less: CheckDelivery / nghttpd req/s round by "
        f"round {', '.join(fmt(x, '{:.2f}') for x in pr) or 'n/a'}; req/s per second of server "
        f"CPU: CheckDelivery {fmt(c['rps_per_cpu'])}, nghttpd {fmt(n.get('rps_per_cpu'))} "
        f"(ratio {fmt(ratio(c['rps_per_cpu'], n.get('rps_per_cpu')), '{:.2f}')}), subcenterd "
        f"Health/Check {fmt(h.get('rps_per_cpu'))}. The goal's verdict above uses the req/s "
        "medians.")
    out(count_line("checkdelivery", args, c, problems).replace(
        f"- `{args}`:", f"- `CheckDelivery` server's own count (`/metrics`), `{args}`:", 1))
    probe = meta.get("delivery_probe") or "not made"
    decision = meta.get("delivery_decision") or "n/a"
    out(f"- one `CheckDelivery` call with nghttp: {probe}; answer: {decision}")
    if "grpc-status: 0" not in probe:
        problems.append(f"CheckDelivery nghttp probe: {probe}")
    if decision != f"allowed=true reason=SUBSCRIBED person_id={person}":
        problems.append(f"CheckDelivery answer: {decision} (expected allowed, SUBSCRIBED, {person})")
    if meta.get("bench_rss_kib"):
        out(f"- `subcenter-bench serve` loaded {persons:,} persons in ~{meta.get('bench_load_seconds')}"
            f" s; its VmRSS then: {int(meta['bench_rss_kib']):,} KiB")
    for k, r in enumerate(stores, 1):
        f = r["figures"]
        out(f"- `subcenter-bench store` round {k}: {fmt(f.get('batch_decisions_per_sec'))} decisions/s, "
            f"{fmt(f.get('rss_bytes_per_person'))} bytes/person (VmRSS {fmt(f.get('rss_before_kib'))} -> "
            f"{fmt(f.get('rss_after_kib'))} KiB), loaded in {fmt(f.get('load_ms'))} ms; CPU 0 busy "
            f"{fmt(r['cpu']['cpu0'], pct)}, of which the benchmark {fmt(r['cpu']['process'], pct)}")
    out("- The store figures are measured in-process: requests are built before the clock "
        "starts and answers are not encoded, so they include no gRPC/protobuf decoding, TLS or "
        "HTTP/2; CheckDelivery above is the whole path. RSS per person is the process's VmRSS "
        "growth over loading, / persons.")
    if meta.get("bench_server_stderr"):
        out("- `subcenter-bench serve`'s stderr, besides the start/stop lines:")
        out("")
        out("```")
        out(meta["bench_server_stderr"])
        out("```")
    out("")


def log_line(d, meta, fsync):
    """What the write-ahead log did in the req/s runs of one fsync policy, from the server's
    subcenter_wal_* counters read before and after each run (summed over the rounds)."""
    total = {}
    for k in range(1, meta["rounds"] + 1):
        stem = os.path.join(d, f"metrics-writes-{fsync}-c4m32-r{k}-tput")
        if not (os.path.exists(stem + "-before.json") and os.path.exists(stem + "-after.json")):
            continue
        a, b = read_json(stem + "-before.json"), read_json(stem + "-after.json")
        for name, value in b.get("wal", {}).items():
            if name in a.get("wal", {}):
                total[name] = total.get(name, 0) + value - a["wal"][name]
    records = total.get("subcenter_wal_records_total")
    batches = total.get("subcenter_wal_batches_total")
    syncs = total.get("subcenter_wal_syncs_total")
    if not records or not batches:
        return f"- write-ahead log, `--fsync {fsync}`: no subcenter_wal_* figures in /metrics"
    line = (f"- write-ahead log, `--fsync {fsync}` (its /metrics counters over the req/s runs): "
            f"{records / batches:.1f} records a write (group commit), "
            f"{total.get('subcenter_wal_bytes_total', 0) / batches / 1024:.1f} KiB a write")
    if syncs:
        line += (f"; {records / syncs:.1f} records an fdatasync, which took "
                 f"{total.get('subcenter_wal_sync_seconds_total', 0) / syncs * 1000:.3f} ms on "
                 f"average")
    else:
        line += "; no fdatasync during the runs"
    failed = total.get("subcenter_wal_failed_batches_total", 0)
    return line + (f"; **{failed:.0f} failed batches**" if failed else "")


def issue4_report(d, meta, problems, warnings, verdicts, out):
    """Issue 4's table: durable writes beside Redis (same rounds), recovery times."""
    args = "-c4 -m32"
    w = {f: load_shape(d, meta, f"writes-{f}", "c4m32", args, problems, warnings,
                       saturates=(f == "none"))
         for f in ("always", "none")}
    for f in ("always", "none"):
        if not w[f]["runs"]:
            problems.append(f"issue 4: no Unsubscribe runs with --fsync {f} in this output")
    redis = {}
    for kind in ("p32", "c128"):
        runs, cpus = [], []
        for k in range(1, meta["rounds"] + 1):
            p = os.path.join(d, f"redis-{kind}-r{k}.json")
            if os.path.exists(p):
                runs.append(read_json(p))
                c = cpu_use(d, f"cpu-redis-{kind}-r{k}-tput")
                cpus.append(c)
                if c and c.get("cpu0") is not None and c.get("server") is not None \
                        and c["cpu0"] - c["server"] > 0.10:
                    warnings.append(f"redis-server ({kind}) round {k}: {c['cpu0'] - c['server']:.0%}"
                                    " of CPU 0 went to something other than the server")
        redis[kind] = {"rps": median(r["rps"] for r in runs), "rps_all": [r["rps"] for r in runs],
                       "p50_ms": median(r.get("p50_ms") for r in runs),
                       "server_cpu": median(c.get("server") for c in cpus if c),
                       "client_cpu": median(c.get("cpu1") for c in cpus if c)}
    if not redis["p32"]["rps_all"]:
        problems.append("issue 4: no redis-benchmark results in this output")
    inproc = [read_json(os.path.join(d, f"inproc-r{k}.json"))
              for k in range(1, meta["rounds"] + 1)
              if os.path.exists(os.path.join(d, f"inproc-r{k}.json"))]
    if not inproc:
        problems.append("issue 4: no subcenter-bench writes results in this output")
    for k, r in enumerate(inproc, 1):
        other = r["cpu"]["cpu0"] - (r["cpu"]["process"] or 0)
        if other > 0.10:
            warnings.append(f"subcenter-bench writes round {k}: {other:.0%} of CPU 0 went to "
                            "something other than the benchmark")
    alone = {"rps": median(r["figures"]["writes_per_sec"] for r in inproc),
             "rps_all": [r["figures"]["writes_per_sec"] for r in inproc],
             "per_cpu": median(r["figures"].get("writes_per_cpu_sec") for r in inproc),
             "cpu": median(r["cpu"]["process"] for r in inproc)}
    ident = os.path.join(d, "writes-identify.txt")
    idents = open(ident).read().splitlines() if os.path.exists(ident) else []
    for line in idents:
        if "grpc-status: 0" not in line:
            problems.append(f"issue 4: Identify of person bench before the writes: {line}")
    rec = {}
    for kind in ("snapshot", "snapshot-one-core", "replay"):
        p = os.path.join(d, f"recovery-{kind}.json")
        rec[kind] = read_json(p) if os.path.exists(p) else None
        if rec[kind] is None:
            problems.append(f"issue 4: no subcenter-bench recovery ({kind}) result in this output")
        else:
            # The snapshot load runs on both CPUs (a start restores persons on every core).
            cpus = ("cpu0", "cpu1") if kind == "snapshot" else ("cpu0",)
            other = sum(rec[kind]["cpu"][c] for c in cpus) - (rec[kind]["cpu"]["process"] or 0)
            if other > 0.10:
                warnings.append(f"subcenter-bench recovery ({kind}): {other:.0%} of "
                                f"{' and '.join(cpus)} went to something other than the benchmark")
    sf = (rec["snapshot"] or {}).get("figures", {})
    rf = (rec["replay"] or {}).get("figures", {})
    persons = int(meta.get("persons") or 0)
    records = int(meta.get("records") or 0)
    if rec["snapshot"] and sf.get("persons") != persons:
        problems.append(f"recovery (snapshot): loaded {sf.get('persons')} persons, expected {persons}")
    if rec["replay"] and rf.get("replay_records") != records:
        problems.append(f"recovery (replay): replayed {rf.get('replay_records')} records, "
                        f"expected {records}")
    wr = ratio(w["always"]["rps"], redis["p32"]["rps"])
    ok_w = wr is not None and wr >= GOAL_WRITES
    sms, rms = sf.get("snapshot_load_ms"), rf.get("replay_ms")
    ok_s = sms is not None and sms < GOAL_SNAPSHOT_MS
    ok_r = rms is not None and rms < GOAL_REPLAY_MS
    verdicts["writes"] = (wr, ok_w)
    verdicts["snapshot_ms"] = (sms, ok_s)
    verdicts["replay_ms"] = (rms, ok_r)
    met = lambda ok: f"**{'MET' if ok else 'NOT MET'}**"
    caveat = ("" if persons == 1_000_000 and records == 1_000_000 else
              f" (with {persons:,} persons and {records:,} log records; the goals are stated "
              "for 1,000,000)")
    pct = "{:.0%}"
    ms = "{:.3f}"
    out(f"#### issue 4: durability{caveat}")
    out("")
    out("| measure | subcenter | Redis (same run) | ratio | goal |")
    out("|---|---:|---:|---:|---|")
    out(f"| `Unsubscribe` ops/s at `{args}`, `--fsync always`, gRPC over TLS, server on one core "
        f"(median over {len(w['always']['rps_all'])} round(s)) | {fmt(w['always']['rps'])} "
        f"| {fmt(redis['p32']['rps'])} | {fmt(wr, '{:.2f}')} | >= Redis `appendfsync always` "
        f"(`-c 4 -P 32`): {met(ok_w)} |")
    out(f"| `Unsubscribe` ops/s at `{args}`, `--fsync none` (median) | {fmt(w['none']['rps'])} "
        f"| | {fmt(ratio(w['none']['rps'], redis['p32']['rps']), '{:.2f}')} | |")
    out(f"| the store and write-ahead log alone: `Unsubscribe` on the store in-process "
        f"(`subcenter-bench writes`, 128 in flight, `--fsync always`, no gRPC, HTTP/2 or TLS), "
        f"one core (median) | {fmt(alone['rps'])} | {fmt(redis['p32']['rps'])} "
        f"| {fmt(ratio(alone['rps'], redis['p32']['rps']), '{:.2f}')} | |")
    out(f"| Redis SET ops/s, `redis-benchmark -c 128` (no pipelining; second reference) "
        f"| | {fmt(redis['c128']['rps'])} | {fmt(ratio(w['always']['rps'], redis['c128']['rps']), '{:.2f}')} | |")
    out(f"| snapshot load of {sf.get('persons', persons):,} persons (`DurableStore.open`, median "
        f"of 3 opens, both cores as at a start) | {fmt(sms)} ms | | | < {GOAL_SNAPSHOT_MS:,} ms: "
        f"{met(ok_s)} |")
    s1 = (rec["snapshot-one-core"] or {}).get("figures", {})
    out(f"| the same on one core (CPU 0 alone; reference) | {fmt(s1.get('snapshot_load_ms'))} ms "
        "| | | |")
    out(f"| replay of {rf.get('replay_records', records):,} log records (`DurableStore.open`, "
        f"no snapshot, median of 3 opens) | {fmt(rms)} ms | | | < {GOAL_REPLAY_MS:,} ms: {met(ok_r)} |")
    out(f"| reading the same {rf.get('replay_records', records):,} records into the erasure "
        f"summaries (`finishInterruptedErasure` after the first open: what subcenterd does in "
        f"the background after a start, and what the first erasure after it waits for; "
        f"reference) | {fmt(rf.get('segment_scan_ms'))} ms | | | |")
    out("")
    out("Commands (`$WTOKEN`: a random bearer token made for the run, scope `write`, workspace "
        "`default`; the request is the gRPC frame of `PreferenceRequest{workspace: \"default\", "
        "person: {person_id: \"bench\"}, channel: \"email\", source: \"bench\"}`, hand-encoded; "
        f"a fresh subcenterd, data directory and redis-server {meta.get('redis', '?')} per round):")
    out("")
    out("```")
    seen = set()
    for cmd in meta["commands"]:
        key = re.sub(r"\$W/\S+|127\.0\.0\.1:\d+|-p \d+|--port \d+", "", cmd)
        if (("--fsync " in cmd or "/Identify" in cmd or "/Unsubscribe" in cmd and "-D " in cmd
                or "redis-" in cmd or "subcenter-bench recovery" in cmd) and key not in seen):
            seen.add(key)
            out(cmd)
    out("```")
    out("")
    for f in ("always", "none"):
        r = w[f]
        out(f"- `--fsync {f}`: ops/s {spread(r['rps_all']) or fmt(r['rps'])} over the rounds; "
            f"server CPU {fmt(r['server_cpu'], pct)}, client CPU {fmt(r['client_cpu'], pct)}; "
            f"ops/s per second of server CPU {fmt(r['rps_per_cpu'])}")
    out(f"- the store and log alone (`subcenter-bench writes`): writes/s "
        f"{spread(alone['rps_all']) or fmt(alone['rps'])} over the rounds; its CPU "
        f"{fmt(alone['cpu'], pct)}; writes per second of its CPU {fmt(alone['per_cpu'])}. "
        f"Beside the full path's {fmt(w['always']['rps_per_cpu'])} per server CPU-second and "
        f"Health/Check's (TLS, HTTP/2, gRPC framing, no store) in issue 2's table, this splits "
        f"a durable write's cost between the store with its log and the transport")
    for kind, label in (("p32", "-c 4 -P 32"), ("c128", "-c 128")):
        r = redis[kind]
        out(f"- Redis `{label}`: SET/s {spread(r['rps_all']) or fmt(r['rps'])} over the rounds; "
            f"p50 {fmt(r['p50_ms'], ms)} ms (redis-benchmark's); redis-server CPU "
            f"{fmt(r['server_cpu'], pct)}, client CPU {fmt(r['client_cpu'], pct)}")
    out(f"- Why `-c 4 -P 32` is the goal's reference: like h2load `-c4 -m32` it keeps 4 "
        "connections with 32 requests in flight each (128 in all), and Redis then fsyncs once "
        "per batch of commands read in one event-loop pass, as subcenterd's log groups the "
        "records of one batch under one fsync. `-c 128` (128 connections, one command each) "
        "costs redis-benchmark far more CPU per request, so it measures the client more than "
        "Redis; it is shown for reference only.")
    for f in ("always", "none"):
        out(log_line(d, meta, f))
    for f in ("always", "none"):
        out(count_line(f"writes-{f}", args, w[f], problems).replace(
            f"- `{args}`:", f"- server's own count (`/metrics`), `--fsync {f}`:", 1))
    if idents:
        out(f"- Identify of person `bench` with nghttp before each server's runs: "
            f"{'; '.join(sorted(set(l.split(chr(9), 1)[-1] for l in idents)))}")
    for kind, r in rec.items():
        if r:
            f = r["figures"]
            extra = (f", {fmt(f.get('restart_with_log_ms'))} ms for the first open after "
                     "`snapshot()` (the active log segment it covers is still read)"
                     if kind == "snapshot" else "")
            busy = (f"CPU 0 and 1 busy {fmt(r['cpu']['cpu0'], pct)} and "
                    f"{fmt(r['cpu']['cpu1'], pct)}, the benchmark's CPU time "
                    f"{fmt(r['cpu']['process'], pct)} of the run's time"
                    if kind == "snapshot" else
                    f"CPU 0 busy {fmt(r['cpu']['cpu0'], pct)}, of which the benchmark "
                    f"{fmt(r['cpu']['process'], pct)}")
            out(f"- `subcenter-bench recovery` ({kind}): opens {f.get('open_ms_all')} ms{extra}; "
                f"building the directory took {fmt(f.get('build_ms'))} ms; {busy}")
    out("- Recovery is timed in-process with the files in the page cache (they were just "
        "written): it measures decoding and rebuilding the state, not disk reads. The snapshot "
        "load runs on both CPUs, as subcenterd's start does (the reader thread checks the file "
        "while worker threads decode and pack its persons in batches), and again on CPU 0 alone "
        "for reference; the replay (one thread: the log is applied in order) on CPU 0. The "
        "snapshot directory holds one snapshot (written by `compact()`) and an empty log; the "
        f"replay directory holds only log segments: {int(meta.get('replay_persons') or 0):,} "
        "Identify records plus topic Subscribe/Unsubscribe changes over those persons.")
    if meta.get("writes_stderr"):
        out("- issue 4's subcenterd stderr, besides the start/stop lines:")
        out("")
        out("```")
        out(meta["writes_stderr"])
        out("```")
    out("")


def build_report(d):
    meta = read_json(os.path.join(d, "meta.json"))
    rows, problems, warnings = [], [], []
    for when in ("preflight", "postflight"):
        pre = dict(x.split(":") for x in meta.get(when, "").split() if ":" in x)
        busy = {c: float(v) for c, v in pre.items() if float(v) > 0.10}
        if busy:
            warnings.append(f"{'before' if when == 'preflight' else 'after'} the run, CPUs were "
                            "busy with other work: "
                            + ", ".join(f"{c} {v:.0%}" for c, v in sorted(busy.items())))
    for name, args in meta["shapes"]:
        s = load_shape(d, meta, "subcenterd", name, args, problems, warnings)
        n = load_shape(d, meta, "nghttpd", name, args, problems, warnings)
        rows.append((name, args, s, n))
    lines = []
    out = lines.append
    out(f"### Run of {meta['date']}")
    out("")
    out(f"- machine: {meta['nproc']} cores, {meta['cpu']}, Linux {meta['kernel']}; CPU busy "
        f"in the second before / after the run: {meta.get('preflight') or 'n/a'} / "
        f"{meta.get('postflight') or 'n/a'}")
    out(f"- commit: `{meta['commit']}`; {meta['swift']}; h2load and nghttpd {meta['nghttp2']}")
    out(f"- mode: {meta['mode']}: {meta['rounds']} round(s); req/s runs h2load `-D "
        f"{meta['duration']} --warm-up-time {meta['warmup']}`, latency runs `-D "
        f"{meta['lat_duration']} --warm-up-time {meta['warmup']} --log-file`")
    out(f"- TLS: {rows[0][2]['tls']} {rows[0][2]['cipher']}, ALPN h2; request: the 5-byte gRPC "
        f"frame of an empty HealthCheckRequest; nghttpd: GET of a {meta['tiny_bytes']}-byte file")
    out("")
    out("| shape | subcenterd req/s | nghttpd req/s | ratio | subcenterd p50 | nghttpd p50 "
        "| p50 ratio | goal |")
    out("|---|---:|---:|---:|---:|---:|---:|---|")
    verdicts = {}
    ms = "{:.3f} ms"
    for name, args, s, n in rows:
        rr = ratio(s["rps"], n["rps"])
        pr = ratio(s["p50_ms"], n["p50_ms"])
        goal = ""
        if name == "c4m32":
            ok = rr is not None and rr >= GOAL_RPS
            goal = f"req/s ratio >= {GOAL_RPS}: **{'MET' if ok else 'NOT MET'}**"
            verdicts["rps"] = (rr, ok)
        if name == "c1m1":
            ok = pr is not None and pr <= GOAL_P50
            goal = f"p50 ratio <= {GOAL_P50}: **{'MET' if ok else 'NOT MET'}**"
            verdicts["p50"] = (pr, ok)
        out(f"| `{args}` | {fmt(s['rps'])} | {fmt(n['rps'])} | {fmt(rr, '{:.2f}')} "
            f"| {fmt(s['p50_ms'], ms)} | {fmt(n['p50_ms'], ms)} | {fmt(pr, '{:.2f}')} | {goal} |")
    out("")
    out("Spread over the rounds, tail latency and CPU use (server = its CPU time / wall time "
        "of the req/s run, at most 100%; client = CPU 1 busy, h2load plus kernel; req/s per "
        "server CPU = req/s / server CPU, median over the rounds: what the server does per "
        "second of its own CPU, which other load on the machine disturbs much less than req/s):")
    out("")
    out("| shape | server | req/s min-max | p50 min-max (ms) | p90 / p99 (ms) | server CPU "
        "| client CPU | req/s per server CPU |")
    out("|---|---|---:|---:|---:|---:|---:|---:|")
    pct = "{:.0%}"
    for name, args, s, n in rows:
        for who, r in (("subcenterd", s), ("nghttpd", n)):
            out(f"| `{args}` | {who} | {spread(r['rps_all']) or fmt(r['rps'])} "
                f"| {spread(r['p50_all'], '{:.3f}') or fmt(r['p50_ms'], '{:.3f}')} "
                f"| {fmt(r['p90_ms'], '{:.3f}')} / {fmt(r['p99_ms'], '{:.3f}')} "
                f"| {fmt(r['server_cpu'], pct)} | {fmt(r['client_cpu'], pct)} "
                f"| {fmt(r['rps_per_cpu'])} |")
    out("")
    out("Server's own count of answers (`subcenter_grpc_calls_total` on the admin `/metrics`):")
    out("")
    for name, args, s, _ in rows:
        out(count_line("subcenterd", args, s, problems))
    if meta.get("probe"):
        out(f"- one call with nghttp (which shows trailers): {meta['probe']}")
        if "grpc-status: 0" not in meta["probe"]:
            problems.append(f"nghttp probe: {meta['probe']}")
    out("")
    rss = read_json(os.path.join(d, "rss-subcenterd.json"))
    ref = os.path.join(d, "rss-nghttpd.json")
    rss_n = read_json(ref) if os.path.exists(ref) else None
    k = rss.get("kib_per_conn")
    rss_ok = k is not None and k <= GOAL_RSS
    verdicts["rss"] = (k, rss_ok)
    out(f"RSS per idle connection (freshly started server; {rss['opened']:,} TLS connections "
        f"with ALPN h2 that sent the preface + SETTINGS and ACKed the server's SETTINGS, held "
        f"{rss['hold_seconds']:g} s; VmRSS after - before, / connections):")
    out("")
    out(f"- subcenterd: **{fmt(k, '{:.1f}')} KiB** per connection (VmRSS "
        f"{rss['rss_before_kib']:,} -> {rss['rss_after_kib']:,} KiB; "
        f"{rss['rss_after_close_kib']:,} KiB 1 s after they closed; {rss['alive_after_hold']:,} "
        f"still open after the hold); goal <= {GOAL_RSS:.0f} KiB: **{'MET' if rss_ok else 'NOT MET'}**")
    if rss_n:
        out(f"- nghttpd (reference): {fmt(rss_n.get('kib_per_conn'), '{:.1f}')} KiB per "
            f"connection (VmRSS {rss_n['rss_before_kib']:,} -> {rss_n['rss_after_kib']:,} KiB)")
    for who, r in (("subcenterd", rss), ("nghttpd", rss_n)):
        if r and (r["opened"] < r["requested"] or r["alive_after_hold"] < r["opened"]
                  or r["alpn_not_h2"] or r["settings_acked"] < r["opened"]):
            problems.append(f"{who} idle connections: opened {r['opened']}/{r['requested']}, "
                            f"SETTINGS from the server on {r['settings_acked']}, alive after the "
                            f"hold {r['alive_after_hold']}, ALPN not h2 {r['alpn_not_h2']}, "
                            f"errors {r['errors'][:3]}")
    out("")
    issue3_report(d, meta, rows, problems, warnings, verdicts, out)
    issue4_report(d, meta, problems, warnings, verdicts, out)
    out("All commands of the run (`$W` is the run's temporary directory; ports are picked free "
        "per run):")
    out("")
    out("```")
    for c in meta["commands"]:
        out(c)
    out("```")
    out("")
    if meta.get("server_stderr"):
        out("subcenterd's stderr, besides the start/stop lines:")
        out("")
        out("```")
        out(meta["server_stderr"])
        out("```")
        out("")
    if warnings:
        out("Warnings (other load on the machine; figures may be off):")
        out("")
        for w in warnings:
            out(f"- {w}")
        out("")
    if problems:
        out("Problems noticed in this run:")
        out("")
        for p in problems:
            out(f"- {p}")
        out("")
    return "\n".join(lines), verdicts, problems, warnings, meta


HISTORY_COLUMNS = [
    "date", "commit", "rounds", f"req/s ratio `-c4 -m32` (goal >= {GOAL_RPS})",
    f"p50 ratio `-c1 -m1` (goal <= {GOAL_P50})",
    f"KiB per idle connection (goal <= {GOAL_RSS:.0f})",
    f"CheckDelivery / nghttpd req/s `-c4 -m32`, 1M persons (goal >= {GOAL_DELIVERY})",
    f"CheckDeliveryBatch decisions/s (goal >= {GOAL_BATCH:,})",
    f"RSS bytes per person (goal <= {GOAL_BYTES_PER_PERSON})",
    f"Unsubscribe `--fsync always` / Redis `appendfsync always` ops/s (goal >= {GOAL_WRITES})",
    f"snapshot load ms, 1M persons (goal < {GOAL_SNAPSHOT_MS})",
    f"replay ms, 1M log records (goal < {GOAL_REPLAY_MS})",
    "load warnings", "problems"]
# (cells in the older table, where the new columns go, how many): issue 3's, then issue 4's
MIGRATIONS = [(8, 6, 3), (11, 9, 3)]


def migrate_history(tail):
    """Adds the columns of later issues to a history table written before them (n/a in old
    rows)."""
    lines = tail.split("\n")
    table = [i for i, l in enumerate(lines) if l.startswith("|")]
    if not table:
        return tail
    for width, at, count in MIGRATIONS:
        if len(lines[table[0]].strip().strip("|").split("|")) != width:
            continue
        new_lines = list(lines)
        for j, i in enumerate(table):
            cells = lines[i].strip().strip("|").split("|")
            if len(cells) != width:
                return tail  # not the table this code wrote; leave it alone
            new = "---:" if j == 1 else " n/a "
            cells[at:at] = [new] * count
            new_lines[i] = "|" + "|".join(cells) + "|"
        lines = new_lines
    n = len(HISTORY_COLUMNS)
    if len(lines[table[0]].strip().strip("|").split("|")) == n:
        lines[table[0]] = "|" + "|".join(f" {c} " for c in HISTORY_COLUMNS) + "|"
    return "\n".join(lines)


def cmd_report(args):
    d, results = args
    section, verdicts, problems, warnings, meta = build_report(d)
    print()
    print(section)
    v = verdicts
    summary = (f"| {meta['date']} | `{meta['commit']}` | {meta['rounds']} "
               f"| {fmt(v['rps'][0], '{:.2f}')} | {fmt(v['p50'][0], '{:.2f}')} "
               f"| {fmt(v['rss'][0], '{:.1f}')} | {fmt(v['delivery'][0], '{:.2f}')} "
               f"| {fmt(v['batch'][0])} | {fmt(v['bytes_per_person'][0])} "
               f"| {fmt(v['writes'][0], '{:.2f}')} | {fmt(v['snapshot_ms'][0])} "
               f"| {fmt(v['replay_ms'][0])} | {len(warnings)} | {len(problems)} |")
    if results != "-":
        text = open(results).read() if os.path.exists(results) else ""
        if BEGIN in text and END in text:
            head, rest = text.split(BEGIN, 1)
            tail = migrate_history(rest.split(END, 1)[1])
        else:
            head = INTRO
            tail = (f"\n\n{HISTORY}\n\nOne line per full run of `bench/run`.\n\n"
                    + "| " + " | ".join(HISTORY_COLUMNS) + " |\n"
                    "|---|---|" + "---:|" * (len(HISTORY_COLUMNS) - 2) + "\n")
        tail = tail.rstrip("\n") + "\n" + summary + "\n"
        with open(results + ".tmp", "w") as f:
            f.write(head + BEGIN + "\n\n" + section + "\n" + END + tail)
        os.replace(results + ".tmp", results)
        print(f"bench: wrote {results}")
    with open(os.path.join(d, "report.md"), "w") as f:
        f.write(section + "\n")

    def verdict(key, spec, unit=""):
        value, ok = v[key]
        return f"{fmt(value, spec)}{unit} ({'met' if ok else 'NOT met'})"

    print(f"bench: goals: req/s ratio at -c4 -m32 {verdict('rps', '{:.2f}')}, p50 ratio at "
          f"-c1 -m1 {verdict('p50', '{:.2f}')}, RSS {verdict('rss', '{:.1f}', ' KiB/conn')}")
    print(f"bench: issue 3 goals: CheckDelivery/nghttpd req/s {verdict('delivery', '{:.2f}')}, "
          f"batch {verdict('batch', '{:,.0f}', ' decisions/s')}, RSS "
          f"{verdict('bytes_per_person', '{:,.0f}', ' bytes/person')}")
    print(f"bench: issue 4 goals: writes fsync always / Redis {verdict('writes', '{:.2f}')}, "
          f"snapshot load {verdict('snapshot_ms', '{:,.0f}', ' ms')}, replay "
          f"{verdict('replay_ms', '{:,.0f}', ' ms')}")
    if warnings:
        print(f"bench: {len(warnings)} warning(s) about other load on the machine (listed above)",
              file=sys.stderr)
    if problems:
        print(f"bench: {len(problems)} problem(s) noticed (listed above)", file=sys.stderr)
        sys.exit(3)


COMMANDS = {
    "freeport": cmd_freeport, "wait-port": cmd_wait_port, "metrics": cmd_metrics,
    "h2load": cmd_h2load, "idle": cmd_idle, "cpu-snap": cmd_cpu_snap, "meta": cmd_meta,
    "idle-check": cmd_idle_check, "delivery-inputs": cmd_delivery_inputs,
    "decision": cmd_decision, "store-bench": cmd_store_bench,
    "write-inputs": cmd_write_inputs, "redis": cmd_redis, "measured": cmd_measured,
    "report": cmd_report,
}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        die(__doc__)
    COMMANDS[sys.argv[1]](sys.argv[2:])
