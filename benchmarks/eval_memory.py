"""Peak memory and time of the chunked evaluation vs the naive full similarity matrix.

Each case runs in a fresh subprocess (so ru_maxrss is that case's own peak). Data: random unit vectors for the
gallery; each query is its true tile plus noise, renormalised (positives score high, like a trained model).
The chunked case computes every metric the report uses (ranks, R@K, hit rate, top-1, pair-verification AP
and PR curve over all Q·N pairs); the naive case builds the full Q×N matrix, ranks from it and AP over its
flattened pairs.

    flock /tmp/wherecnn-heavy.lock .venv/bin/python benchmarks/eval_memory.py            # all cases
    .venv/bin/python benchmarks/eval_memory.py --cases small                             # quick

Writes benchmarks/results/eval_memory.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results" / "eval_memory.json"
CASES: dict[str, tuple[str, int, int, int]] = {
    # name: (method, queries, gallery, dim)
    "naive-small": ("naive", 1_000, 50_000, 256),
    "chunked-small": ("chunked", 1_000, 50_000, 256),
    "chunked-medium": ("chunked", 10_000, 100_000, 256),
    "chunked-large": ("chunked", 10_000, 1_000_000, 256),
}
GROUPS = {"small": ["naive-small", "chunked-small"], "all": list(CASES)}


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _make_data(n_q: int, n_g: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Built in chunks in float32, so generating the data never peaks above the data itself."""
    rng = np.random.default_rng(seed)
    gallery = np.empty((n_g, d), dtype=np.float32)
    for a in range(0, n_g, 65_536):
        block = rng.standard_normal((min(65_536, n_g - a), d), dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        gallery[a : a + block.shape[0]] = block
    positives = rng.integers(0, n_g, size=n_q)
    query = gallery[positives] + rng.standard_normal((n_q, d), dtype=np.float32) * np.float32(0.15)
    query /= np.linalg.norm(query, axis=1, keepdims=True)
    return query, gallery, positives


def _child(method: str, n_q: int, n_g: int, d: int) -> dict:
    query, gallery, positives = _make_data(n_q, n_g, d)
    data_rss = _peak_rss_mb()
    t0 = time.perf_counter()
    if method == "chunked":
        from wherecnn.evaluate.metrics import evaluate_retrieval, summarize

        result = evaluate_retrieval(query, gallery, positives)
        metrics = summarize(result)
    else:
        from wherecnn.evaluate.metrics import average_precision, recall_at_k

        scores = query @ gallery.T
        true = scores[np.arange(n_q), positives]
        ranks = (scores > true[:, None]).sum(axis=1)
        labels = np.zeros(scores.shape, dtype=bool)
        labels[np.arange(n_q), positives] = True
        metrics = recall_at_k(ranks, n_g)
        metrics["AP"] = average_precision(scores.ravel(), labels.ravel())
    seconds = time.perf_counter() - t0
    return {
        "method": method,
        "queries": n_q,
        "gallery": n_g,
        "dim": d,
        "pairs": n_q * n_g,
        "seconds": round(seconds, 2),
        "data_mb": round(data_rss, 1),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "eval_extra_mb": round(_peak_rss_mb() - data_rss, 1),
        "metrics": {k: round(float(v), 6) for k, v in metrics.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--cases", default="all", help=f"a group ({', '.join(GROUPS)}) or comma-separated names"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--child", nargs=4, metavar=("METHOD", "Q", "N", "D"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        method, n_q, n_g, d = args.child
        print(json.dumps(_child(method, int(n_q), int(n_g), int(d))))
        return

    from rich.console import Console
    from rich.table import Table

    console = Console(width=150)
    names = GROUPS.get(args.cases) or [c.strip() for c in args.cases.split(",")]
    unknown = [n for n in names if n not in CASES]
    if unknown:
        raise SystemExit(f"unknown case(s) {unknown}; known: {', '.join(CASES)}")
    rows = []
    for name in names:
        method, n_q, n_g, d = CASES[name]
        with console.status(f"{name}: {method} {n_q:,} queries × {n_g:,} tiles × {d}-d ..."):
            proc = subprocess.run(
                [sys.executable, __file__, "--child", method, str(n_q), str(n_g), str(d)],
                capture_output=True,
                text=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        if proc.returncode != 0:
            console.print(f"[red]{name} failed[/red]:\n{proc.stderr[-2000:]}")
            rows.append({"case": name, "error": proc.stderr[-2000:]})
            continue
        row = {"case": name, **json.loads(proc.stdout.strip().splitlines()[-1])}
        rows.append(row)
        console.print(f"{name}: {row['seconds']} s, peak RSS {row['peak_rss_mb']} MB")

    table = Table(title="Evaluation memory: chunked vs naive full matrix")
    for col in (
        "case",
        "Q × N × d",
        "pairs",
        "time s",
        "data MB",
        "peak RSS MB",
        "eval extra MB",
        "R@1",
        "AP",
    ):
        table.add_column(col, justify="right")
    for r in rows:
        if "error" in r:
            table.add_row(r["case"], "failed", *[""] * 7)
            continue
        table.add_row(
            r["case"],
            f"{r['queries']:,} × {r['gallery']:,} × {r['dim']}",
            f"{r['pairs']:.2e}",
            f"{r['seconds']:.1f}",
            f"{r['data_mb']:.0f}",
            f"{r['peak_rss_mb']:.0f}",
            f"{r['eval_extra_mb']:.0f}",
            f"{r['metrics']['R@1']:.3f}",
            f"{r['metrics']['AP']:.4f}",
        )
    console.print(table)
    big = max((r for r in rows if r.get("method") == "chunked"), key=lambda r: r["pairs"], default=None)
    if big is not None:
        naive_gb = big["pairs"] * 4 / 1e9
        console.print(
            f"The naive approach at {big['queries']:,} × {big['gallery']:,} would hold a {naive_gb:.1f} GB "
            f"float32 similarity matrix before computing anything."
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": "eval_memory",
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        },
        "cases": rows,
    }
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
