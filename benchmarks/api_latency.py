"""Search API latency: p50/p99 and requests/s for one uvicorn worker on loopback, split into decode, embed
and store query (the engine's own timings, returned with every response).

A bounded load test that stops by itself: for each concurrency level, a fixed number of requests or a time
cap, whichever comes first. Data: a `wherecnn demo` folder (--demo-dir), else a tiny synthetic world indexed
with an untrained model in a temporary folder (timings do not depend on the weights).

    flock /tmp/wherecnn-heavy.lock .venv/bin/python benchmarks/api_latency.py [--demo-dir var/demo-small]

Writes benchmarks/results/api_latency.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results" / "api_latency.json"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=float), q)) if values else float("nan")


def build_tiny_index(root: Path, console: Any) -> tuple[str, str, str]:
    """Tiny synthetic world → untrained `dual-cpu` checkpoint → Qdrant Edge index: (store, ckpt, data)."""
    import torch
    from wherecnn.data.synthetic import generate
    from wherecnn.evaluate.served import index_grid
    from wherecnn.models.embedder import Embedder
    from wherecnn.train.checkpoint import save_checkpoint

    data = root / "data"
    with console.status("generating the tiny synthetic world…"):
        generate(data, size="tiny", seed=0)
    model = Embedder.untrained("dual-cpu", seed=0).model
    save_checkpoint(
        str(root / "checkpoint"),
        model=model,
        optimizer=torch.optim.Adam(model.parameters()),
        loop_state={"epoch": 0},
        card={"note": "untrained, for latency only"},
        history=[],
    )
    with console.status("indexing the grid tiles (the fine stage's views included)…"):
        index_grid(data, str(root / "checkpoint"), f"edge://{root / 'index'}", run_dir=root / "run")
    return f"edge://{root / 'index'}", str(root / "checkpoint"), str(data)


def gallery(demo_dir: Path | None, console: Any) -> tuple[str, str, str, str, Any]:
    """(store, checkpoint, data, what it is, a temporary folder to clean up or None): a `wherecnn demo`
    folder's, else a tiny synthetic world indexed with an untrained model."""
    if demo_dir is not None:
        store_uri = f"edge://{(demo_dir / 'index').resolve()}"
        return store_uri, str(demo_dir / "checkpoint"), str(demo_dir / "data"), f"demo {demo_dir}", None
    tmp = tempfile.TemporaryDirectory(prefix="wherecnn-bench-")
    store_uri, ckpt, data_dir = build_tiny_index(Path(tmp.name), console)
    return store_uri, ckpt, data_dir, "tiny synthetic world, untrained dual-cpu", tmp


def start_server(store_uri: str, ckpt: str) -> tuple[subprocess.Popen[bytes], str]:
    """`wherecnn serve` (one uvicorn worker) in its own process on a free loopback port, so clients don't
    share its GIL; returns once ``/readyz`` answers: (the process, its URL)."""
    import httpx

    url = f"http://127.0.0.1:{(port := _free_port())}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("WHERECNN_")} | {"WHERECNN_DEVICE": "cpu"}
    server = subprocess.Popen(
        [sys.executable, "-m", "wherecnn", "serve", "--store", store_uri, "--checkpoint", ckpt,
         "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 180
    while True:
        try:
            if httpx.get(f"{url}/readyz", timeout=30).status_code == 200:
                return server, url
        except httpx.HTTPError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            os.killpg(server.pid, signal.SIGTERM)
            raise SystemExit(f"search API did not become ready (exit {server.poll()})")
        time.sleep(0.5)


def query_images(data_dir: str, n: int) -> list[tuple[str, bytes]]:
    """Test-split captures (panoramas and photos alternating), as the bytes a client would upload."""
    from wherecnn import storage
    from wherecnn.data.manifest import read_captures

    caps = read_captures(data_dir)
    if "split" in caps and (caps["split"] == "test").any():
        caps = caps[caps["split"] == "test"]
    caps = caps.sort_values("capture_id").head(n)
    return [(str(r.capture_id), storage.read_bytes(r.uri)) for r in caps.itertuples()]


def run_level(
    url: str, images: list[tuple[str, bytes]], *, concurrency: int, requests: int, max_seconds: float, k: int
) -> dict[str, Any]:
    import httpx

    latencies: list[float] = []
    server: dict[str, list[float]] = {
        "decode_ms": [], "embed_ms": [], "query_ms": [], "refine_ms": [], "total_ms": []
    }  # fmt: skip
    errors = 0
    lock = threading.Lock()
    counter = iter(range(requests))
    deadline = time.perf_counter() + max_seconds

    def worker() -> None:
        nonlocal errors
        with httpx.Client(base_url=url, timeout=60) as client:
            while time.perf_counter() < deadline:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                name, data = images[i % len(images)]
                t0 = time.perf_counter()
                resp = client.post("/v1/search", files={"image": (name, data)}, data={"k": str(k)})
                dt = (time.perf_counter() - t0) * 1e3
                with lock:
                    if resp.status_code != 200:
                        errors += 1
                        continue
                    latencies.append(dt)
                    for key, value in resp.json()["timings"].items():
                        if key in server:
                            server[key].append(float(value))

    t_start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for f in [pool.submit(worker) for _ in range(concurrency)]:
            f.result()
    wall = time.perf_counter() - t_start
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "errors": errors,
        "seconds": round(wall, 3),
        "rps": round(len(latencies) / wall, 2) if wall > 0 else 0.0,
        "latency_ms": {
            "p50": round(_pct(latencies, 50), 1),
            "p90": round(_pct(latencies, 90), 1),
            "p99": round(_pct(latencies, 99), 1),
            "mean": round(statistics.fmean(latencies), 1) if latencies else None,
        },
        "server_ms": {
            key: {
                "p50": round(_pct(vals, 50), 2),
                "p99": round(_pct(vals, 99), 2),
                "mean": round(statistics.fmean(vals), 2) if vals else None,
            }
            for key, vals in server.items()
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--demo-dir", type=Path, default=None, help="a `wherecnn demo` folder (data/checkpoint/index)"
    )
    parser.add_argument("--requests", type=int, default=150, help="requests per concurrency level (cap)")
    parser.add_argument("--max-seconds", type=float, default=45.0, help="time cap per concurrency level")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4], help="client threads per level")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    import httpx
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 110))
    store_uri, ckpt, data_dir, source, tmp = gallery(args.demo_dir, console)
    images = query_images(data_dir, 32)
    server, url = start_server(store_uri, ckpt)
    levels = []
    try:
        ready = httpx.get(f"{url}/readyz", timeout=30)
        model = ready.json().get("model")
        cities = httpx.get(f"{url}/v1/cities", timeout=30).json()["cities"]
        n_tiles = sum(c["tiles"] for c in cities)
        run_level(url, images, concurrency=1, requests=5, max_seconds=30, k=args.k)  # warm-up
        for c in args.concurrency:
            with console.status(f"load test: {c} client thread(s)…"):
                levels.append(
                    run_level(
                        url,
                        images,
                        concurrency=c,
                        requests=args.requests,
                        max_seconds=args.max_seconds,
                        k=args.k,
                    )
                )
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        if tmp is not None:
            tmp.cleanup()
    result = {
        "benchmark": "api_latency",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "device": "cpu",
        },
        "setup": {
            "source": source,
            "server": "`wherecnn serve`: uvicorn, 1 worker process, loopback; clients in another process",
            "store": "qdrant-edge",
            "model": model,
            "tiles": n_tiles,
            "cities": len(cities),
            "k_per_city": args.k,
            "query_images": len(images),
        },
        "levels": levels,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    table = Table(title=f"search API latency — {source}, {n_tiles} tiles, k={args.k}/city")
    for col in (
        "clients",
        "requests",
        "req/s",
        "p50 ms",
        "p99 ms",
        "decode p50",
        "embed p50",
        "store p50",
        "fine p50",
        "errors",
    ):
        table.add_column(col, justify="right")
    for lv in levels:
        s = lv["server_ms"]
        table.add_row(
            str(lv["concurrency"]),
            str(lv["requests"]),
            f"{lv['rps']:.1f}",
            f"{lv['latency_ms']['p50']:.1f}",
            f"{lv['latency_ms']['p99']:.1f}",
            f"{s['decode_ms']['p50']:.1f}",
            f"{s['embed_ms']['p50']:.1f}",
            f"{s['query_ms']['p50']:.1f}",
            f"{s['refine_ms']['p50']:.1f}",
            str(lv["errors"]),
        )
    console.print(table)
    console.print(f"wrote {args.out}")
    return 0 if all(lv["errors"] == 0 for lv in levels) else 1


if __name__ == "__main__":
    raise SystemExit(main())
