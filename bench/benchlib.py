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
  report DIR RESULTS.md|-           print the figures; rewrite the section of RESULTS.md
"""

import json
import os
import re
import select
import socket
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
CODE = re.compile(r'(?:^|,)\s*code\s*=\s*"(?P<code>[^"]*)"')


def cmd_metrics(args):
    """Sums subcenter_grpc_calls_total over all series: code="OK" vs every other code."""
    url, out = args
    result = {"available": False, "ok": None, "other": None, "error": None}
    try:
        with urllib.request.urlopen(url, timeout=3) as r:
            text = r.read(8 << 20).decode("utf-8", "replace")
        ok = other = 0.0
        seen = False
        for line in text.splitlines():
            m = SAMPLE.match(line)
            if not m:
                continue
            seen = True
            c = CODE.search(m.group("labels") or "")
            value = float(m.group("value"))
            if c and c.group("code") == "OK":
                ok += value
            else:
                other += value
        if seen:
            result.update(available=True, ok=int(ok), other=int(other))
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


# ---------------------------------------------------------------------------- report

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

BEGIN = "<!-- bench/run: latest run (rewritten by bench/run) -->"
END = "<!-- bench/run: end of latest run -->"
HISTORY = "## History"

INTRO = f"""# Subcenter benchmarks

`bench/run` (or `make bench`) measures subcenterd's gRPC `grpc.health.v1.Health/Check`
over HTTP/2 + TLS with h2load, next to nghttpd (same TLS certificate, a tiny static file)
as the HTTP/2+TLS reference on the same machine, and subcenterd's RSS per idle connection.
subcenterd (`--loops 1`) and nghttpd run pinned to CPU 0, h2load and the Python client
pinned to CPU 1, over 127.0.0.1 only. `bench/run --quick` is a smoke test (short runs, one
round; it does not touch this file). Raw h2load output and JSON figures of every run stay in
`bench/out/<UTC time>/` (git-ignored).

Goals (issue 2):
- req/s at `-c4 -m32` >= {GOAL_RPS} x nghttpd's
- p50 latency at `-c1 -m1` <= {GOAL_P50} x nghttpd's
- <= {GOAL_RSS:.0f} KiB RSS per idle connection

How the figures are made:
- Each shape runs in rounds; in each round subcenterd and nghttpd alternate. Figures are the
  median over the rounds (min-max in the second table), ratios are median / median.
- req/s comes from h2load runs *without* `--log-file`: h2load writes one log line per
  request with its own `write()` system call, which makes h2load, not the server, the
  bottleneck at `-c4 -m32` (one test: 318k req/s without the log, 246k with it).
- p50/p90/p99 come from separate h2load runs *with* `--log-file` (nearest rank over the
  per-request latencies of the measured period; h2load itself prints only
  min/max/mean/sd). At `-c1 -m1` the log write happens between requests and does not
  inflate latency; at higher concurrency latency is mostly queueing and tracks throughput.
- h2load counts HTTP 200 as success and never reads `grpc-status`, so the server's own
  `subcenter_grpc_calls_total` (admin `/metrics`) is read around every subcenterd run, and a
  fixed-count run per shape (`-n`) must match it exactly.
- With two cores, anything else running (a `swift build`, tests) lands on the benchmark's
  CPUs: while developing this script, runs made next to other work varied up to 3x, quiet
  runs by a few %. bench/run samples CPU use for 1 s before and after the run and, during
  each req/s run, how much of CPU 0 went to something other than the server; it warns when
  any is over 10%. Rerun on a quiet machine before trusting a figure that comes with that warning.

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


def load_shape(d, meta, who, name, args, problems, warnings):
    """Median figures of one server at one shape over the rounds."""
    tput, lat, cpu = [], [], []
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
            if who == "subcenterd":
                m = metrics_delta(d, f"metrics-{stem}")
                if m and m.get("available"):
                    ok += m["ok"]
                    other += m["other"]
                    succeeded += r.get("succeeded", 0)
                else:
                    metrics_ok = False
                    metrics_err = (m or {}).get("error")
    res = {
        "rps": median(r.get("rps") for r in tput),
        "rps_all": [r.get("rps") for r in tput],
        "p50_ms": median(r.get("p50_ms") for r in lat),
        "p50_all": [r.get("p50_ms") for r in lat],
        "p90_ms": median(r.get("p90_ms") for r in lat),
        "p99_ms": median(r.get("p99_ms") for r in lat),
        "server_cpu": median(c.get("server") for c in cpu if c),
        "client_cpu": median(c.get("cpu1") for c in cpu if c),
        "tls": (tput or lat or [{}])[0].get("tls"),
        "cipher": (tput or lat or [{}])[0].get("cipher"),
    }
    if who == "subcenterd":
        res["metrics"] = ({"available": True, "ok": ok, "other": other, "succeeded": succeeded}
                          if metrics_ok and (tput or lat) else
                          {"available": False, "error": metrics_err})
        x = metrics_delta(d, f"metrics-{name}-exact")
        xp = os.path.join(d, f"subcenterd-{name}-exact.json")
        if x and x.get("available") and os.path.exists(xp):
            e = read_json(xp)
            check_run(who, f"{args} (-n)", e, problems)
            x.update(n=e.get("total"), succeeded=e.get("succeeded", 0))
        res["exact"] = x
    return res


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
        "of the req/s run, at most 100%; client = CPU 1 busy, h2load plus kernel):")
    out("")
    out("| shape | server | req/s min-max | p50 min-max (ms) | p90 / p99 (ms) | server CPU "
        "| client CPU |")
    out("|---|---|---:|---:|---:|---:|---:|")
    pct = "{:.0%}"
    for name, args, s, n in rows:
        for who, r in (("subcenterd", s), ("nghttpd", n)):
            out(f"| `{args}` | {who} | {spread(r['rps_all']) or fmt(r['rps'])} "
                f"| {spread(r['p50_all'], '{:.3f}') or fmt(r['p50_ms'], '{:.3f}')} "
                f"| {fmt(r['p90_ms'], '{:.3f}')} / {fmt(r['p99_ms'], '{:.3f}')} "
                f"| {fmt(r['server_cpu'], pct)} | {fmt(r['client_cpu'], pct)} |")
    out("")
    out("Server's own count of answers (`subcenter_grpc_calls_total` on the admin `/metrics`):")
    out("")
    for name, args, s, _ in rows:
        m, x = s["metrics"], s["exact"]
        if not m.get("available"):
            out(f"- `{args}`: server OK count: unavailable"
                + (f" ({m['error']})" if m.get("error") else ""))
            continue
        good = m["other"] == 0 and m["ok"] >= m["succeeded"]
        line = (f"- `{args}`: timed runs: server OK {m['ok']:,}, non-OK {m['other']:,}; h2load "
                f"succeeded {m['succeeded']:,} (its warm-up is not counted, so OK >= succeeded)")
        if x and x.get("available"):
            exact_good = x["other"] == 0 and x["ok"] == x["succeeded"] == x["n"]
            line += (f"; fixed-count run `-n {x['n']}`: server OK {x['ok']:,}, non-OK "
                     f"{x['other']:,}, h2load succeeded {x['succeeded']:,} "
                     f"{'(match)' if exact_good else '(MISMATCH)'}")
            good = good and exact_good
        out(line)
        if not good:
            problems.append(f"subcenterd {args}: the server's count disagrees with h2load "
                            "(non-OK gRPC answers?)")
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
    out("Commands (`$W` is the run's temporary directory; ports are picked free per run):")
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


def cmd_report(args):
    d, results = args
    section, verdicts, problems, warnings, meta = build_report(d)
    print()
    print(section)
    v = verdicts
    summary = (f"| {meta['date']} | `{meta['commit']}` | {meta['rounds']} "
               f"| {fmt(v['rps'][0], '{:.2f}')} | {fmt(v['p50'][0], '{:.2f}')} "
               f"| {fmt(v['rss'][0], '{:.1f}')} | {len(warnings)} | {len(problems)} |")
    if results != "-":
        text = open(results).read() if os.path.exists(results) else ""
        if BEGIN in text and END in text:
            head, rest = text.split(BEGIN, 1)
            tail = rest.split(END, 1)[1]
        else:
            head = INTRO
            tail = (f"\n\n{HISTORY}\n\nOne line per full run of `bench/run`.\n\n"
                    f"| date | commit | rounds | req/s ratio `-c4 -m32` (goal >= {GOAL_RPS}) "
                    f"| p50 ratio `-c1 -m1` (goal <= {GOAL_P50}) "
                    f"| KiB per idle connection (goal <= {GOAL_RSS:.0f}) | load warnings "
                    "| problems |\n|---|---|---:|---:|---:|---:|---:|---:|\n")
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
    if warnings:
        print(f"bench: {len(warnings)} warning(s) about other load on the machine (listed above)",
              file=sys.stderr)
    if problems:
        print(f"bench: {len(problems)} problem(s) noticed (listed above)", file=sys.stderr)
        sys.exit(3)


COMMANDS = {
    "freeport": cmd_freeport, "wait-port": cmd_wait_port, "metrics": cmd_metrics,
    "h2load": cmd_h2load, "idle": cmd_idle, "cpu-snap": cmd_cpu_snap, "meta": cmd_meta,
    "idle-check": cmd_idle_check,
    "report": cmd_report,
}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        die(__doc__)
    COMMANDS[sys.argv[1]](sys.argv[2:])
