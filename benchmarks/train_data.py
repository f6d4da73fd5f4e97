"""Training data throughput: what the training process does besides the step, on a synthetic world.

Two measurements, each against its baseline in the same run (rounds alternate; each side keeps its best):

- batch preparation (`PairDataset.batch`, 64 samples: augmentation, photo cuts, normalisation) against
  preparing the samples one at a time and stacking them (`dataset[i]`, what the loop did before), on the
  offset track's inputs (camera-centred panoramas, 5% tile shift) and the photo track's (90-degree photos
  cut from the panoramas at a new heading, reprojected onto the cylinder canvas);
- fresh places (`FreshPlaces.sample`: render, JPEG round trip, tile cut) with the JPEG and cut work on
  every core against one thread.

    flock /tmp/wherecnn-heavy.lock .venv/bin/python benchmarks/train_data.py --data var/small

Writes benchmarks/results/train_data.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def best_of(rounds: int, cases: dict[str, Callable[[], None]]) -> dict[str, float]:
    """Seconds per call of each case, the best of ``rounds`` alternating rounds."""
    best = {name: float("inf") for name in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def batch_rows(data: str, rounds: int, batches: int) -> list[dict[str, Any]]:
    from wherecnn.data.datasets import PairDataset, load_pairs

    frame = load_pairs(data, track="aligned", protocol="cross-area", split="train").iloc[: 64 * batches]
    base = {"rotation": "quarter", "flip": True, "color": 0.0, "scale": None}
    tracks = {
        "offset (5% shift)": {**base, "shift": 0.05},
        "photo (90° cut, cylinder)": {**base, "shift": 0.0, "photo_fov": 90.0},
    }
    rows = []
    for label, augment in tracks.items():
        ds = PairDataset(frame=frame, augment=augment, seed=0, ground_layout="cylinder")
        ds.preload()
        chunks = [list(range(b * 64, (b + 1) * 64)) for b in range(batches)]

        def per_sample(ds: PairDataset = ds, chunks: list[list[int]] = chunks) -> None:
            for idx in chunks:
                items = [ds[i] for i in idx]
                torch.stack([it["ground"] for it in items]), torch.stack([it["aerial"] for it in items])

        def batched(ds: PairDataset = ds, chunks: list[list[int]] = chunks) -> None:
            for idx in chunks:
                ds.batch(idx)

        one = ds.batch(chunks[0])
        alone = torch.stack([ds[i]["ground"] for i in chunks[0]])
        assert torch.equal(one["ground"], alone), "a batch must equal its samples prepared alone"
        t = best_of(rounds, {"per_sample": per_sample, "batch": batched})
        rows.append(
            {
                "what": f"batch of 64, {label}",
                "baseline": "one sample at a time",
                "baseline_ms": round(t["per_sample"] / batches * 1e3, 1),
                "ours_ms": round(t["batch"] / batches * 1e3, 1),
                "speedup": round(t["per_sample"] / t["batch"], 2),
            }
        )
    return rows


def fresh_row(data: str, rounds: int, places: int) -> dict[str, Any]:
    from wherecnn.data.synthetic.fresh import FreshPlaces

    fresh = FreshPlaces(data, protocol="cross-area", track="aligned", seed=0, style_spread=1.5)
    threads = fresh.workers

    def run(workers: int) -> Callable[[], None]:
        def go() -> None:
            fresh.workers = workers
            fresh.sample(places, epoch=1)

        return go

    t = best_of(rounds, {"one": run(1), "all": run(threads)})
    return {
        "what": f"{places} fresh places (render, JPEG round trip, tile cut)",
        "baseline": "JPEG and cuts on one thread",
        "baseline_ms": round(t["one"] * 1e3),
        "ours_ms": round(t["all"] * 1e3),
        "speedup": round(t["one"] / t["all"], 2),
        "threads": threads,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default="var/small", help="a world made by `wherecnn synth`")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batches", type=int, default=8, help="batches of 64 per round")
    parser.add_argument("--places", type=int, default=1000, help="fresh places per round")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "train_data.json"))
    args = parser.parse_args()
    rows = [*batch_rows(args.data, args.rounds, args.batches), fresh_row(args.data, args.rounds, args.places)]
    result = {
        "benchmark": "train_data",
        "machine": {"cores": os.cpu_count(), "torch_threads": torch.get_num_threads()},
        "rounds": args.rounds,
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))

    from rich.console import Console
    from rich.table import Table

    table = Table(title="Training data, ms (best of alternating rounds)")
    for col in ("what", "baseline", "baseline ms", "ours ms", "speed-up"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(r["what"], r["baseline"], str(r["baseline_ms"]), str(r["ours_ms"]), f"{r['speedup']}×")
    Console().print(table)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
