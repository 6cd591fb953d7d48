"""Load test of ``lgrnet serve`` on 127.0.0.1: N concurrent clients for T seconds, batching on and off.

For each mode the script starts its own server (``--max-batch B``, then ``--max-batch 1``) on a free local port,
sends one warm-up request, and lets N clients post grounding requests (multipart, one expression, a real_smoke
COCO photo when the shared data is beside the checkout) for T seconds; every ``--bad-every``-th request of a
client is a bad one (not an image, a truncated JPEG, an empty expression, malformed JSON, a body over the limit),
staggered across clients so that with at least ``--bad-every`` clients some client's first request is bad.
It reports requests/s (good requests answered 200), p50/p99 latency of the good requests, the mean batch size
(the server's counters), 4xx/5xx counts and the server's resident memory at the start and the end of the run.

    python benchmarks/serve_load.py                                   # 8 clients, 20 s per mode, shipped model
    python benchmarks/serve_load.py --clients 16 --seconds 30 --json serve_load.json

Exit status 1 when a good request did not get 200, a bad one did not get a 4xx, or anything got a 5xx.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

REAL_SMOKE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real_smoke"
BODY_LIMIT_MB = 1.0


@dataclass
class ModeResult:
    mode: str
    max_batch: int
    clients: int
    seconds: float
    good: int = 0
    good_ok: int = 0
    bad: int = 0
    bad_4xx: int = 0
    server_errors: int = 0  # any 5xx
    failures: list[str] = field(default_factory=list)  # unexpected statuses or transport errors (first few)
    requests_per_s: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    mean_batch_size: float = 0.0
    forwards: int = 0
    rss_start_mb: float = 0.0
    rss_mid_mb: float = 0.0
    rss_end_mb: float = 0.0


def good_request() -> tuple[dict, str]:
    """A multipart grounding request: a real COCO photo and its expression when available, else a drawn scene."""
    manifest = REAL_SMOKE / "manifest.jsonl"
    if manifest.is_file():
        record = json.loads(manifest.read_text().splitlines()[0])
        data = (REAL_SMOKE / record["image"]).read_bytes()
        return {"files": {"image": ("photo.jpg", data, "image/jpeg")}, "data": {"expression": record["expression"]}}, \
            f"real_smoke {record['image']} ({len(data) // 1024} KiB)"
    rng = np.random.default_rng(0)
    picture = rng.integers(0, 255, size=(480, 640, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="JPEG", quality=90)
    return {"files": {"image": ("scene.jpg", buffer.getvalue(), "image/jpeg")},
            "data": {"expression": "the bright square"}}, "a synthetic 640x480 JPEG"


def bad_requests(good: dict) -> list[tuple[str, dict]]:
    """Requests the server must answer with a 4xx."""
    photo = good["files"]["image"][1]
    return [
        ("not-an-image", {"files": {"image": ("a.jpg", b"plain text, not a JPEG\n" * 50)}, "data": {"expression": "a"}}),
        ("truncated-jpeg", {"files": {"image": ("t.jpg", photo[: len(photo) // 2])}, "data": {"expression": "a"}}),
        ("empty-expression", {"files": {"image": ("a.jpg", photo)}, "data": {"expression": "  "}}),
        ("bad-json", {"content": b"{\"image\": ", "headers": {"content-type": "application/json"}}),
        ("over-body-limit", {"content": b"{" + b" " * int(BODY_LIMIT_MB * 1024 * 1024 * 1.5) + b"}",
                             "headers": {"content-type": "application/json"}}),
    ]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def rss_mb(pid: int) -> float:
    """Resident memory of a process in MiB (Linux /proc; 0 elsewhere)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def start_server(checkpoint: str, port: int, max_batch: int, max_wait_ms: float, device: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "lgrnet.cli", "serve", "--checkpoint", checkpoint, "--device", device,
               "--host", "127.0.0.1", "--port", str(port), "--max-batch", str(max_batch),
               "--max-wait-ms", str(max_wait_ms), "--max-body-mb", str(BODY_LIMIT_MB), "--log-level", "warning"]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_until_up(server: subprocess.Popen, base: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited ({server.returncode}): {server.stderr.read().strip()}")
        try:
            if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the server did not answer /healthz within {timeout:.0f} s")


def stop_server(server: subprocess.Popen) -> None:
    if server.poll() is None:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


async def drive(base: str, clients: int, seconds: float, bad_every: int, good: dict,
                bad: list[tuple[str, dict]], result: ModeResult, on_half_time=None) -> None:
    """Every client sends one request after the other until ``seconds`` have passed (at least one each)."""
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def half_time() -> None:
        await asyncio.sleep(seconds / 2)
        on_half_time()

    def failure(text: str) -> None:
        if len(result.failures) < 10:
            result.failures.append(text)

    async def client(index: int, http: httpx.AsyncClient) -> None:
        sent = 0
        while sent == 0 or time.perf_counter() < deadline:
            sent += 1
            # Staggered across clients: with as many clients as bad_every, some client's first request is a bad
            # one, so a slow machine that gets few requests through still tests the error path.
            is_bad = bad_every > 0 and (sent + index) % bad_every == 0
            name, request = bad[(index + sent // bad_every) % len(bad)] if is_bad else ("good", good)
            start = time.perf_counter()
            try:
                response = await http.post(f"{base}/v1/ground", **request)
                status = response.status_code
            except httpx.HTTPError as exc:
                failure(f"{name}: {type(exc).__name__}: {exc}")
                continue
            elapsed = time.perf_counter() - start
            if status >= 500:
                result.server_errors += 1
            if is_bad:
                result.bad += 1
                if 400 <= status < 500:
                    result.bad_4xx += 1
                else:
                    failure(f"{name}: HTTP {status}")
            else:
                result.good += 1
                if status == 200:
                    result.good_ok += 1
                    latencies.append(elapsed)
                else:
                    failure(f"good: HTTP {status}: {response.text[:200]}")

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(limits=limits, timeout=300) as http:
        start = time.perf_counter()
        extra = [half_time()] if on_half_time else []
        await asyncio.gather(*(client(i, http) for i in range(clients)), *extra)
        wall = time.perf_counter() - start
    result.requests_per_s = result.good_ok / wall if wall > 0 else 0.0
    if latencies:
        result.p50_ms = float(np.percentile(latencies, 50) * 1000)
        result.p99_ms = float(np.percentile(latencies, 99) * 1000)


def run_mode(args: argparse.Namespace, mode: str, max_batch: int, good: dict, bad: list) -> ModeResult:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = start_server(args.checkpoint, port, max_batch, args.max_wait_ms, args.device)
    result = ModeResult(mode, max_batch, args.clients, args.seconds)
    try:
        wait_until_up(server, base, args.startup_timeout)
        # Warm-up: a first burst from every client, so that the first (slower) forward passes and the memory of
        # the largest batches are not in the figures.
        asyncio.run(drive(base, args.clients, 0.0, 0, good, bad, ModeResult(mode, max_batch, args.clients, 0.0)))
        before = httpx.get(f"{base}/healthz").json()
        result.rss_start_mb = rss_mb(server.pid)
        asyncio.run(drive(base, args.clients, args.seconds, args.bad_every, good, bad, result,
                          on_half_time=lambda: setattr(result, "rss_mid_mb", rss_mb(server.pid))))
        after = httpx.get(f"{base}/healthz").json()
        result.rss_end_mb = rss_mb(server.pid)
        result.forwards = after["forwards"] - before["forwards"]
        pairs = after["pairs"] - before["pairs"]
        result.mean_batch_size = pairs / result.forwards if result.forwards else 0.0
        if server.poll() is not None:
            result.failures.append(f"the server exited during the run ({server.returncode})")
    finally:
        stop_server(server)
    return result


def ok(result: ModeResult) -> bool:
    return (result.server_errors == 0 and not result.failures and result.good_ok == result.good
            and result.bad_4xx == result.bad and result.good_ok > 0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="synthref", help="what lgrnet serve --checkpoint takes")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20.0, help="how long the clients send, per mode")
    parser.add_argument("--max-batch", type=int, default=16, help="--max-batch of the batching run")
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--bad-every", type=int, default=5, help="every k-th request of a client is bad (0: none)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--startup-timeout", type=float, default=300.0, help="seconds to wait for the model to load")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    good, what = good_request()
    bad = bad_requests(good)
    results = [run_mode(args, "batching on", args.max_batch, good, bad),
               run_mode(args, "batching off", 1, good, bad)]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"lgrnet serve load test: {args.checkpoint} on {args.device}, {args.clients} clients, {args.seconds:g} s "
          f"per mode, good requests: {what}; every {args.bad_every}th request bad; {os.cpu_count()} CPUs, load "
          f"average {load:.1f} at the end")
    print("| mode | requests/s | p50 ms | p99 ms | mean batch | good (200) | bad (4xx) | 5xx "
          "| RSS start / half-time / end MiB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r.mode} (--max-batch {r.max_batch}) | {r.requests_per_s:.2f} | {r.p50_ms:.0f} | {r.p99_ms:.0f} "
              f"| {r.mean_batch_size:.2f} | {r.good_ok}/{r.good} | {r.bad_4xx}/{r.bad} | {r.server_errors} "
              f"| {r.rss_start_mb:.0f} / {r.rss_mid_mb:.0f} / {r.rss_end_mb:.0f} |")
    on, off = results
    if off.requests_per_s > 0:
        print(f"batching raises throughput {on.requests_per_s / off.requests_per_s:.2f}x")
    for r in results:
        for text in r.failures:
            print(f"{r.mode}: {text}", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps({"load_average": load, "results": [asdict(r) for r in results]},
                                              indent=2) + "\n")
    return 0 if all(ok(r) for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
