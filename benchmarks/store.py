"""Vector store: Qdrant Edge HNSW vs exact search on random 128-d vectors, with city and geo-radius filters.

For each size: upsert points/s (batched, through `EdgeStore.upsert`), HNSW build time (Edge runs its
optimizers when the version is finished), then per filter case recall@10 of HNSW against exact search over
the same store and queries/s of both (one query at a time, as the search engine issues them).
Goal: recall@10 >= 0.98.

Isotropic random 128-d vectors are the worst case for a graph index (no cluster structure to navigate), so
recall here depends on graph degree and beam: at m 16 / ef_construct 128 recall@10 was 0.44 (ef 128) and 0.82
(ef 512), not a bug: the exact baseline (Qdrant's exact cosine search) matches a numpy cosine top-10 exactly,
every point is in an HNSW segment, `hnsw_ef` reaches the search (q/s falls as it grows), and quantization is
off. Hence the defaults m 32 / ef_construct 256 / ef 768 (settings); at 100k they give recall@10 0.9935 for
random queries (0.973 at ef 512, 0.998 at ef 1024) and 0.995 for near queries, at about exact search's
speed: exact search over 100k points takes only ~7 ms here; HNSW pays off at 1M.

At 1M on 2 cores the default build takes about an hour (benchmarks/results/store-1m-default.json): filtered
cases search exactly (filters under hnsw_full_scan_threshold, 200k points) at recall 1.0; unfiltered random
queries reach 0.98 at ef 4096. store-1m-threshold-50k.json is the run under the earlier 50,000 KB threshold
(the 143k-point city filter walked the global graph: recall 0.41-0.80); store-1m.json a reduced build without
payload subgraphs. `--keep` keeps a built store, `--store DIR` re-queries it with other settings.

    flock /tmp/wherecnn-heavy.lock .venv/bin/python benchmarks/store.py            # 100k
    flock /tmp/wherecnn-heavy.lock .venv/bin/python benchmarks/store.py --full     # + 1M

Writes benchmarks/results/store.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from wherecnn.config import Settings, get_settings
from wherecnn.index.store import GeoRadius, TilePoint
from wherecnn.index.store.edge import EdgeStore

CITY_CENTRES = [
    (40.71, -74.0), (48.86, 2.35), (35.68, 139.69), (51.51, -0.13), (-33.87, 151.21), (52.52, 13.40),
    (37.77, -122.42),
]  # fmt: skip
SPREAD_DEG = 0.05  # points lie within ~5 km of their city's centre


def make_points(n: int, dim: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    vectors = rng.normal(size=(n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    cities = rng.integers(0, len(CITY_CENTRES), size=n)
    centres = np.asarray(CITY_CENTRES)[cities]
    locs = centres + rng.uniform(-SPREAD_DEG, SPREAD_DEG, size=(n, 2))
    return vectors, cities, locs


def build(
    root: Path, vectors: np.ndarray, cities: np.ndarray, locs: np.ndarray, batch: int, settings: Settings
) -> dict[str, Any]:
    store = EdgeStore(root, settings=settings)
    store.begin_version("bench")
    t0 = time.perf_counter()
    for start in range(0, len(vectors), batch):
        points = [
            TilePoint(
                f"t{i}",
                vectors[i],
                {"city": f"c{cities[i]}", "location": {"lat": float(locs[i, 0]), "lon": float(locs[i, 1])}},
            )  # fmt: skip
            for i in range(start, min(start + batch, len(vectors)))
        ]
        store.upsert(points, batch_size=batch)
    upsert_s = time.perf_counter() - t0
    t1, cpu1 = time.perf_counter(), time.process_time()
    store.switch()  # finish: flush + optimize (HNSW build) + atomic pointer flip
    build_s, build_cpu_s = time.perf_counter() - t1, time.process_time() - cpu1
    store.close()
    reader = EdgeStore(root, settings=settings, read_only=True)
    shard_info = None
    reader.count()
    if reader._shard is not None:
        info = reader._shard.info()
        shard_info = {"segments": info.segments_count, "indexed_vectors": info.indexed_vectors_count}
    reader.close()
    return {"upsert_s": upsert_s, "upsert_points_per_s": len(vectors) / upsert_s, "index_build_s": build_s,
            "index_build_cpu_s": build_cpu_s, "shard": shard_info}  # fmt: skip


def search_all(
    store: EdgeStore, queries: np.ndarray, k: int, filters: dict[str, Any], **kw: Any
) -> tuple[list[list[str]], float]:
    """Top-k tile ids of every query (one at a time, as the search engine issues them) and queries/s."""
    t0 = time.perf_counter()
    hits = [[h.tile_id for h in store.query(q, k, **filters, **kw)] for q in queries]
    return hits, len(queries) / (time.perf_counter() - t0)


def run_case(
    store: EdgeStore,
    queries: np.ndarray,
    k: int,
    filters: dict[str, Any],
    ef: int,
    exact: tuple[list[list[str]], float],
) -> dict[str, Any]:
    """HNSW with search beam `ef` against the exact results of the same queries."""
    store.settings = store.settings.model_copy(update={"hnsw_ef": ef})
    approx, hnsw_qps = search_all(store, queries, k, filters)
    truth, exact_qps = exact
    recalls = [len(set(a) & set(e)) / max(1, len(e)) for a, e in zip(approx, truth, strict=True)]
    return {
        "ef": ef,
        "recall_at_k": float(np.mean(recalls)),
        "min_recall": float(np.min(recalls)),
        "hnsw_qps": hnsw_qps,
        "exact_qps": exact_qps,
        "qps_ratio": hnsw_qps / exact_qps,
        "mean_hits": float(np.mean([len(e) for e in truth])),
    }


def bench_size(n: int, args: argparse.Namespace) -> dict[str, Any]:
    rng = np.random.default_rng(args.seed)
    vectors, cities, locs = make_points(n, args.dim, rng)
    # two query sets: isotropic random vectors (the hardest case for a graph index) and "near" queries, a
    # stored vector plus noise (cosine ~0.9 to it), which is how a photo's embedding sits near its tile's
    query_sets = {"random": rng.normal(size=(args.queries, args.dim)).astype(np.float32)}
    picks = vectors[rng.integers(0, n, size=args.queries)]
    noise = rng.normal(size=picks.shape).astype(np.float32)
    noise *= 0.5 / np.linalg.norm(noise, axis=1, keepdims=True)
    query_sets["near"] = picks + noise
    reuse = args.store is not None
    root = Path(args.store) if reuse else Path(tempfile.mkdtemp(prefix=f"store-bench-{n}-", dir=args.tmp))
    try:
        if reuse:  # the same seeded points were built into it; its persisted HNSW config applies
            out: dict[str, Any] = {"points": n, "reused_store": str(root)}
        else:
            out = {"points": n, **build(root, vectors, cities, locs, args.batch, args.settings)}
        store = EdgeStore(root, settings=args.settings, read_only=True)
        lat0, lon0 = CITY_CENTRES[0]
        cases = {
            "none": {},
            "city": {"cities": "c0"},
            "geo_radius_2km": {"radius": GeoRadius(lat=lat0, lon=lon0, radius_m=2000.0)},
            "city+geo_radius_3km": {"cities": ["c1"], "radius": GeoRadius(*CITY_CENTRES[1], radius_m=3000.0)},
        }
        out["cases"] = []
        for qname, queries in query_sets.items():
            for name, filters in cases.items():
                exact = search_all(store, queries, args.k, filters, exact=True)
                for ef in args.ef:
                    case = run_case(store, queries, args.k, filters, ef, exact)
                    c = {"queries": qname, "filter": name, **case}
                    out["cases"].append(c)
                    print(
                        f"  {n:>8} {qname:<6} {name:<20} ef {ef:<4} recall@{args.k} {c['recall_at_k']:.4f}  "
                        f"hnsw {c['hnsw_qps']:7.1f} q/s  exact {c['exact_qps']:7.1f} q/s "
                        f"x{c['qps_ratio']:.1f}",
                        flush=True,
                    )
        store.close()
        return out
    finally:
        if args.keep or reuse:
            print(f"  kept the {n}-point store in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[100_000], help="Point counts (default 100k)."
    )
    parser.add_argument("--full", action="store_true", help="Also 1M points.")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument(
        "--ef", type=int, nargs="+", default=None, help="HNSW search beams (default: settings)."
    )
    parser.add_argument("--hnsw-m", type=int, default=None, help="Graph degree (default: settings).")
    parser.add_argument("--ef-construct", type=int, default=None, help="Build beam (default: settings).")
    parser.add_argument(
        "--payload-m", type=int, default=None, help="City/geo subgraph degree; 0 = none (default: settings)."
    )
    parser.add_argument(
        "--full-scan-threshold",
        type=int,
        default=None,
        help="KB; filters matching fewer points search exactly (default: settings).",
    )
    parser.add_argument("--batch", type=int, default=1000, help="Upsert batch size.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tmp", default=None, help="Folder for the temporary stores.")
    parser.add_argument("--keep", action="store_true", help="Keep the built stores (for a later look).")
    parser.add_argument(
        "--store",
        default=None,
        help="Query a store kept by --keep (one size, same --seed/--dim) instead of building one.",
    )
    parser.add_argument("--out", default="benchmarks/results/store.json")
    args = parser.parse_args()
    sizes = list(args.sizes) + ([1_000_000] if args.full and 1_000_000 not in args.sizes else [])
    if args.store is not None and len(sizes) != 1:
        parser.error("--store queries one kept store: give exactly one size")
    overrides = {
        "hnsw_m": args.hnsw_m,
        "hnsw_ef_construct": args.ef_construct,
        "hnsw_payload_m": args.payload_m,
        "hnsw_full_scan_threshold": args.full_scan_threshold,
    }
    s = args.settings = get_settings().model_copy(
        update={k: v for k, v in overrides.items() if v is not None}
    )
    args.ef = args.ef or [s.hnsw_ef]
    print(
        f"Edge HNSW m={s.hnsw_m} ef_construct={s.hnsw_ef_construct} payload_m={s.hnsw_payload_m} "
        f"full_scan_threshold={s.full_scan_threshold_kb(args.dim)} KB ef={args.ef} "
        f"quantization={s.quantization}"
    )
    results: list[dict[str, Any]] = []
    report = {
        "benchmark": "store",
        "backend": "qdrant-edge",
        "settings": {"hnsw_m": s.hnsw_m, "hnsw_ef_construct": s.hnsw_ef_construct,
                     "hnsw_payload_m": s.hnsw_payload_m,
                     "hnsw_full_scan_threshold": s.full_scan_threshold_kb(args.dim), "hnsw_ef": args.ef,
                     "quantization": s.quantization},  # fmt: skip
        "dim": args.dim, "queries": args.queries, "k": args.k, "goal_recall": 0.98,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "sizes": results,
    }  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    for n in sizes:  # the report is rewritten after each size, so a long 1M run keeps the 100k result
        results.append(bench_size(n, args))
        Path(args.out).write_text(json.dumps(report, indent=1))
    for r in results:
        if "upsert_s" in r:
            print(
                f"  {r['points']:>8} upsert {r['upsert_points_per_s']:.0f} points/s, "
                f"HNSW build {r['index_build_s']:.1f} s, shard {r['shard']}"
            )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
