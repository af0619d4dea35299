"""Fairness between connections: a CheckDelivery caller's latency while other clients flood
the same event loop with 10,000-person CheckDeliveryBatch calls.

    .venv/bin/python bench/fairness.py [--bin .build/release/subcenterd] [--seconds 8]
        [--abusers 2] [--in-flight 8] [--cpu 0]

Starts its own subcenterd (one event loop, `--fsync none`, a fresh data directory, pinned to
`--cpu` with taskset when available) on free loopback ports; measures the caller's latency
alone (the reference of the same run) and then beside the flood; prints one JSON line last.
Needs grpcio and the stubs `Tests/interop/run` generates into .venv/gen.
"""

import argparse
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, ".venv", "gen"))

import grpc  # noqa: E402
from benchlib import percentile  # noqa: E402
from subcenter_pb.subcenter.v1 import subcenter_pb2 as pb  # noqa: E402
from subcenter_pb.subcenter.v1 import subcenter_pb2_grpc as pb_grpc  # noqa: E402

CERTS = os.path.join(REPO, "certs", "dev")
TOKENS = {"root": ("*", ["admin"]), "flood": ("wsa", ["check"]), "caller": ("wsb", ["check"])}
SECRET = {name: "fair_" + secrets.token_urlsafe(16) for name in TOKENS}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(binary: str, cpu: int, base: str) -> tuple[subprocess.Popen, int]:
    tokens = os.path.join(base, "tokens.json")
    with open(tokens, "w") as f:
        json.dump([{"name": n, "sha256": hashlib.sha256(SECRET[n].encode()).hexdigest(),
                    "workspace": ws, "scopes": scopes} for n, (ws, scopes) in TOKENS.items()], f)
    port = free_port()
    argv = [binary, "--listen", f"127.0.0.1:{port}", "--admin-listen", f"127.0.0.1:{free_port()}",
            "--data", os.path.join(base, "data"), "--tokens", tokens, "--loops", "1",
            "--fsync", "none", "--tls-cert", os.path.join(CERTS, "server.pem"),
            "--tls-key", os.path.join(CERTS, "server.key")]
    if shutil.which("taskset"):
        argv = ["taskset", "-c", str(cpu)] + argv
    log = open(os.path.join(base, "server.log"), "wb")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while b"listening on" not in open(log.name, "rb").read():
        if proc.poll() is not None or time.monotonic() > deadline:
            sys.exit("fairness: subcenterd did not start: " + open(log.name).read()[-2000:])
        time.sleep(0.05)
    return proc, port


def stub(port: int, token: str):
    creds = grpc.ssl_channel_credentials(open(os.path.join(CERTS, "ca.pem"), "rb").read())
    channel = grpc.secure_channel(f"localhost:{port}", creds, options=[
        ("grpc.use_local_subchannel_pool", 1), ("grpc.max_receive_message_length", -1)])
    return pb_grpc.SubscriptionCenterStub(channel), [("authorization", "Bearer " + SECRET[token])]


def caller_latencies(port: int, seconds: float) -> list[float]:
    s, md = stub(port, "caller")
    req = pb.DeliveryRequest(workspace="wsb", person=pb.PersonRef(person_id="v"), channel="email")
    out = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t = time.monotonic()
        s.CheckDelivery(req, metadata=md, timeout=30)
        out.append(time.monotonic() - t)
        time.sleep(0.01)
    return sorted(out)


def pct(values: list[float], p: float) -> float:
    """Milliseconds at the nearest-rank percentile `p` (0-1] of sorted seconds."""
    return round(percentile(values, p * 100) * 1000, 2)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.path.join(REPO, ".build", "release", "subcenterd"))
    ap.add_argument("--seconds", type=float, default=8)
    ap.add_argument("--abusers", type=int, default=2)
    ap.add_argument("--in-flight", type=int, default=8)
    ap.add_argument("--cpu", type=int, default=0)
    a = ap.parse_args()
    if not (0 < a.seconds <= 60 and 0 < a.abusers <= 8 and 0 < a.in_flight <= 64):
        sys.exit("fairness: at most --seconds 60, --abusers 8, --in-flight 64")
    base = tempfile.mkdtemp(prefix="fairness-")
    proc, port = start_server(a.bin, a.cpu, base)
    try:
        root, md = stub(port, "root")
        root.ConfigureWorkspace(pb.WorkspaceConfig(workspace="wsa", channels=["email"]), metadata=md)
        root.ConfigureWorkspace(pb.WorkspaceConfig(workspace="wsb", channels=["email"]), metadata=md)
        root.Identify(pb.IdentifyRequest(workspace="wsb", person_id="v"), metadata=md)
        alone = caller_latencies(port, 3)
        stop = threading.Event()
        batches = [0] * a.abusers

        def flood(i: int) -> None:
            s, fmd = stub(port, "flood")
            req = pb.DeliveryBatchRequest(workspace="wsa", channel="email", persons=[
                pb.PersonRef(email=f"u{k}@x.example") for k in range(10000)])
            while not stop.is_set():
                calls = [s.CheckDeliveryBatch.future(req, metadata=fmd, timeout=60)
                         for _ in range(a.in_flight)]
                for c in calls:
                    c.result()
                    batches[i] += 1

        threads = [threading.Thread(target=flood, args=(i,), daemon=True) for i in range(a.abusers)]
        for t in threads:
            t.start()
        time.sleep(1)
        before, t0 = sum(batches), time.monotonic()
        flooded = caller_latencies(port, a.seconds)
        rate = (sum(batches) - before) / (time.monotonic() - t0)
        stop.set()
        for t in threads:
            t.join(timeout=60)
        result = {"alone_p50_ms": pct(alone, 0.5), "alone_p99_ms": pct(alone, 0.99),
                  "flooded_p50_ms": pct(flooded, 0.5), "flooded_p90_ms": pct(flooded, 0.9),
                  "flooded_p99_ms": pct(flooded, 0.99), "calls": len(flooded),
                  "flood_batches_per_s": round(rate, 1), "abusers": a.abusers,
                  "in_flight": a.in_flight}
        print(f"fairness: CheckDelivery alone p50 {result['alone_p50_ms']} ms, beside "
              f"{a.abusers} x {a.in_flight} batches of 10,000 in flight ({rate:.0f} batches/s) "
              f"p50 {result['flooded_p50_ms']} ms, p90 {result['flooded_p90_ms']} ms, "
              f"p99 {result['flooded_p99_ms']} ms ({len(flooded)} calls)")
        print(json.dumps(result))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
