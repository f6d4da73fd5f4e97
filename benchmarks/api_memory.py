"""Search API memory under large uploads: the server's resident memory (RSS) and its peak while clients send
6000 x 6000 JPEGs, against the same number of ordinary uploads (the test captures) in the same run.

What it shows: a query image is decoded straight to at most `QUERY_MAX_SIDE` pixels a side (JPEG at a
reduced DCT scale), so what one request may allocate is bounded by that size, not by the upload's. A bounded
load test on loopback that stops by itself: a fixed number of requests per phase, `--concurrency` at a time.
Data as in `api_latency.py`: a `wherecnn demo` folder (--demo-dir), else a tiny world indexed with an
untrained model (memory does not depend on the weights).

    flock /tmp/wherecnn-heavy.lock .venv/bin/python benchmarks/api_memory.py [--demo-dir var/demo-small]

Writes benchmarks/results/api_memory.json and prints a table.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from api_latency import gallery, query_images, start_server  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "api_memory.json"
LARGE_SIDE = 6000


def large_jpeg(seed: int, side: int = LARGE_SIDE) -> bytes:
    """A side x side JPEG with detail at every scale (a smooth image would compress to nothing)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 255, size=(side // 50, side // 50, 3), dtype=np.uint8)
    img = Image.fromarray(coarse).resize((side, side), Image.Resampling.BILINEAR)
    noise = Image.fromarray(rng.integers(0, 64, size=(side, side, 3), dtype=np.uint8))
    out = io.BytesIO()
    Image.blend(img, noise, 0.25).save(out, format="JPEG", quality=85)
    return out.getvalue()


def memory_mb(pid: int) -> dict[str, float]:
    """VmRSS (now) and VmHWM (peak since the last reset) of a process, in MB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return {"rss_mb": round(fields["VmRSS"], 1), "peak_mb": round(fields["VmHWM"], 1)}


def reset_peak(pid: int) -> None:
    """Start a new peak (Linux: writing 5 to clear_refs resets VmHWM to the current RSS)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def send(url: str, images: list[tuple[str, bytes]], requests: int, concurrency: int) -> dict[str, Any]:
    import httpx

    def one(i: int) -> int:
        name, data = images[i % len(images)]
        with httpx.Client(base_url=url, timeout=120) as client:
            return client.post("/v1/search", files={"image": (name, data)}, data={"k": "5"}).status_code

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        codes = list(pool.map(one, range(requests)))
    return {
        "requests": requests,
        "errors": sum(c != 200 for c in codes),
        "seconds": round(time.perf_counter() - t0, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--demo-dir", type=Path, default=None, help="a `wherecnn demo` folder")
    parser.add_argument("--requests", type=int, default=120, help="requests per phase")
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    from rich.console import Console
    from rich.table import Table
    from wherecnn.search.query import QUERY_MAX_SIDE

    console = Console(width=max(Console().width, 110))
    store_uri, ckpt, data_dir, source, tmp = gallery(args.demo_dir, console)
    ordinary = query_images(data_dir, 16)
    with console.status(f"making {LARGE_SIDE} x {LARGE_SIDE} JPEGs…"):
        large = [(f"large-{i}.jpg", large_jpeg(i)) for i in range(4)]
    server, url = start_server(store_uri, ckpt)
    phases: dict[str, Any] = {}
    try:
        send(url, ordinary, 8, 1)  # warm: model, store and allocator in their steady state
        phases["warm"] = memory_mb(server.pid)
        for phase, images in (
            ("ordinary uploads", ordinary),
            (f"{LARGE_SIDE}x{LARGE_SIDE} JPEG uploads", large),
        ):
            reset_peak(server.pid)
            with console.status(f"{phase}: {args.requests} requests, {args.concurrency} at a time…"):
                load = send(url, images, args.requests, args.concurrency)
            phases[phase] = {
                **load,
                **memory_mb(server.pid),
                "upload_mb": round(np.mean([len(d) for _, d in images]) / 1e6, 2),
            }
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        if tmp is not None:
            tmp.cleanup()
    warm = phases["warm"]["rss_mb"]
    base, big = phases["ordinary uploads"], phases[f"{LARGE_SIDE}x{LARGE_SIDE} JPEG uploads"]
    result = {
        "source": source,
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "query_max_side": QUERY_MAX_SIDE,
        "concurrency": args.concurrency,
        "phases": phases,
        "peak_growth_mb": {
            "ordinary": round(base["peak_mb"] - warm, 1),
            "large": round(big["peak_mb"] - warm, 1),
        },
        "retained_growth_mb": {
            "ordinary": round(base["rss_mb"] - warm, 1),
            "large": round(big["rss_mb"] - warm, 1),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    table = Table(title=f"search API memory ({source}; warm RSS {warm:.0f} MB; {args.concurrency} in flight)")
    for col in ("uploads", "requests", "errors", "upload size", "peak RSS", "RSS after", "peak over warm"):
        table.add_column(col)
    for name in ("ordinary uploads", f"{LARGE_SIDE}x{LARGE_SIDE} JPEG uploads"):
        p = phases[name]
        table.add_row(
            name, str(p["requests"]), str(p["errors"]), f"{p['upload_mb']} MB", f"{p['peak_mb']:.0f} MB",
            f"{p['rss_mb']:.0f} MB", f"{p['peak_mb'] - warm:+.0f} MB",
        )  # fmt: skip
    console.print(table)
    ratio = (big["peak_mb"] - warm) / max(1.0, base["peak_mb"] - warm)
    console.print(f"peak growth, large / ordinary: {ratio:.2f}x; wrote {args.out}")
    return 0 if big["errors"] == 0 and base["errors"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
