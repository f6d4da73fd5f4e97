"""`wherecnn validate` speed on generated manifests of N rows per table (local URIs).

    .venv/bin/python benchmarks/validate.py [--rows 100000]

Writes benchmarks/results/validate.json: wall and CPU seconds, rows/s, load average before and after (the
machines here are shared, so CPU seconds are the comparable figure). Half of the tile URIs do not exist, so
the error path (one Problem per row) is measured too.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from wherecnn.data.formats.common import make_captures, make_pairs, make_tiles
from wherecnn.data.manifest import write_manifests
from wherecnn.data.validate import validate_dir

RESULTS = Path(__file__).resolve().parent / "results" / "validate.json"


def build(out: Path, n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    (out / "img").mkdir(parents=True)
    for i in range(0, n, 2):  # every other tile image exists
        (out / "img" / f"t{i}.jpg").write_bytes(b"x")
    (out / "img" / "c.jpg").write_bytes(b"x")
    lat = 40.7 + rng.uniform(-0.02, 0.02, n)
    lon = -74.0 + rng.uniform(-0.02, 0.02, n)
    ids = np.arange(n)
    caps = pd.DataFrame(
        {
            "capture_id": [f"c{i}" for i in ids],
            "city": "NY",
            "lat": lat,
            "lon": lon,
            "heading_deg": 0.0,
            "fov_deg": 360.0,
            "uri": "img/c.jpg",
            "split": "train",
        }
    )
    tiles = pd.DataFrame(
        {
            "tile_id": [f"t{i}" for i in ids],
            "city": "NY",
            "lat": lat,
            "lon": lon,
            "gsd_m": 0.5,
            "size_m": 64.0,
            "uri": [f"img/t{i}.jpg" for i in ids],
            "split": "gallery",
        }
    )
    pairs = pd.DataFrame(
        {
            "capture_id": caps["capture_id"],
            "tile_id": tiles["tile_id"],
            "track": "offset",
            "semi_positive_tile_ids": [[f"t{(i + 1) % n}"] for i in ids],
        }
    )
    write_manifests(out, make_captures(caps), make_tiles(tiles), make_pairs(pairs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="wherecnn-bench-validate-") as tmp:
        root = Path(tmp)
        build(root, args.rows)
        load0 = os.getloadavg()
        w0, c0 = time.perf_counter(), time.process_time()
        report = validate_dir(root)
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        load1 = os.getloadavg()
    assert report.n_errors == args.rows // 2, report.n_errors
    result = {
        "rows_per_table": args.rows,
        "uris_checked": report.uris_checked,
        "errors_found": report.n_errors,
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
        "rows_per_cpu_s": round(3 * args.rows / cpu),
        "loadavg_before": [round(x, 2) for x in load0],
        "loadavg_after": [round(x, 2) for x in load1],
        "cpu_count": os.cpu_count(),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
