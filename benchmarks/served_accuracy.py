"""Accuracy through the product: the "anywhere" protocol served by the search engine over a real index.

Builds (or reuses, ``--store``) an index of the world's grid tiles with `wherecnn index`'s `run_index`, then
sends held-out places through `SearchEngine.search` (what the API, CLI and dashboard call) under each
retrieval variant, city given and city unknown. A variant is a set of `RetrievalSettings` query-side keys;
``reference`` repeats the default with the coarse stage searched exhaustively (the in-memory reference: it
shows how much HNSW's approximation costs). Writes JSON and prints a table; timings are in-process, one query
at a time (benchmarks/api_latency.py measures them through HTTP).

    flock /tmp/wherecnn-heavy.lock .venv/bin/python benchmarks/served_accuracy.py \\
        --data var/small --checkpoint var/demo-small/checkpoint --out benchmarks/results/served.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_VARIANTS: dict[str, dict[str, Any]] = {
    "tile centre (no fine stage)": {"candidates": 0},
    "default": {},
}


def machine() -> dict[str, Any]:
    """The CPU model, its bf16 support and the load: minutes-bounded numbers depend on them."""
    model, flags = "unknown", ""
    try:
        info = Path("/proc/cpuinfo").read_text()
        model = next(
            line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")
        )
        flags = next(line for line in info.splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        pass
    return {
        "cpu": model,
        "cpus": os.cpu_count(),
        "avx512_bf16": "avx512_bf16" in flags,
        "python": platform.python_version(),
        "load_avg": [round(x, 2) for x in os.getloadavg()],
    }


def checkpoint_info(checkpoint: str) -> dict[str, Any]:
    """How the checkpoint was trained: its config (as stored), track, minutes, the epochs they gave,
    precision, seed."""
    card = json.loads((Path(checkpoint) / "model_card.json").read_text())
    train = card.get("train") or {}
    history = Path(checkpoint) / "metrics.jsonl"
    lines = history.read_text().splitlines() if history.exists() else []
    epochs = sum(1 for line in lines if json.loads(line).get("kind") == "epoch")
    return {
        "model_id": card.get("model_id"),
        "config": card["config"],  # which recipe (results_table: the demo's only)
        "track": (card.get("data") or {}).get("track"),
        "protocol": (card.get("data") or {}).get("protocol"),
        "epochs": epochs or train.get("epochs"),
        "minutes": train.get("minutes"),
        "precision": train.get("precision"),
        "seed": train.get("seed"),
    }


def build_index(
    data: str, checkpoint: str, store: str, index_views: int, cities: list[str] | None
) -> dict[str, Any]:
    from wherecnn.evaluate.served import index_grid
    from wherecnn.retrieval.settings import RetrievalSettings

    t0 = time.perf_counter()
    summary = index_grid(
        data, checkpoint, store, run_dir=tempfile.mkdtemp(prefix="served-run-"), cities=cities,
        retrieval=RetrievalSettings(index_views=index_views),
    )  # fmt: skip
    return {
        "tiles": summary.manifest_tiles,
        "points": summary.points,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    from wherecnn.evaluate.served import ServedRun, answer_queries, anywhere_queries, grid_tiles
    from wherecnn.index.store import open_store
    from wherecnn.models.embedder import Embedder
    from wherecnn.retrieval.settings import RetrievalSettings
    from wherecnn.search.engine import SearchEngine

    store = args.store or args.keep_store or f"edge://{tempfile.mkdtemp(prefix='served-index-')}/index"
    built = None
    if not args.store:
        built = build_index(args.data, args.checkpoint, store, args.index_views, args.cities)
    tiles = grid_tiles(args.data)
    embedder = Embedder.from_checkpoint(args.checkpoint)
    variants = {} if args.no_tile_centre else dict(DEFAULT_VARIANTS)
    variants.setdefault("default", {})
    for item in args.variant or []:
        name, _, spec = item.partition("=")
        variants[name] = json.loads(spec)
    rows = []
    fovs: set[float] = set()  # the photos' fields of view, as the captures record them
    vs = open_store(store, read_only=True)
    try:
        recorded = vs.live_about().get("retrieval")
        for protocol in args.protocols:
            queries = anywhere_queries(
                args.data, protocol=protocol, kind=args.kind, per_city=args.per_city, seed=args.seed,
                split=args.split, cities=args.cities,
            )  # fmt: skip
            if args.kind == "photo":
                fovs.update(float(f) for f in queries["fov_deg"].dropna())
            plan = [(name, spec, True, False) for name, spec in variants.items()]
            if args.hub_weight is not None:
                plan.append((f"hub weight {args.hub_weight:g}", {"hub_weight": args.hub_weight}, True, False))
            if args.unknown_only:
                plan = [(name, spec, False, False) for name, spec, _, _ in plan]
            elif args.unknown_all:
                plan += [(name, spec, False, False) for name, spec, _, _ in list(plan)]
            elif not args.no_unknown:
                plan.append(("default", {}, False, False))  # city unknown
            if args.reference:
                plan.append(("reference (exact coarse)", {}, True, True))
            for name, spec, given, exact in plan:
                spec = dict(spec)
                hub = spec.pop("hub_weight", None)
                settings = RetrievalSettings.from_dict(recorded, **spec)
                engine = SearchEngine(vs, embedder, retrieval=settings, exact=exact, hub_weight=hub)
                engine.warm()  # what a server computes before it reports ready
                engine.search(queries["uri"].iloc[0], cities=[queries["city"].iloc[0]])  # the model's kernels
                outcomes = answer_queries(
                    engine, queries, tiles, city_given=given, heading=args.heading, seed=args.seed,
                    photo_fov_deg=args.photo_fov,
                )  # fmt: skip
                result = ServedRun(protocol, given, outcomes, retrieval=settings.as_dict())
                ms = outcomes["search_ms"].to_numpy()
                row = {"variant": name, "exact": exact, **result.to_json()}
                row["search_ms"] = {"p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99))}
                rows.append(row)
                print(_line(row), flush=True)
    finally:
        vs.close()
    return {
        "benchmark": "served_accuracy",
        "machine": machine(),
        "checkpoint": checkpoint_info(args.checkpoint),
        "data": str(args.data),
        "kind": "photo" if args.photo_fov else args.kind,
        "fov_deg": args.photo_fov or (fovs.pop() if len(fovs) == 1 else None),
        "heading": args.heading,
        "per_city": args.per_city,
        "seed": args.seed,
        "split": args.split,
        "index": built,
        "rows": rows,
    }


def _line(row: dict[str, Any]) -> str:
    o = row["overall"]
    city = f"{o['city_right']:.3f}" if "city_right" in o else "given"
    heading = (
        f"{o['heading_error_median_deg']:.1f} / {o['heading_within_10deg']:.2f}"
        if "heading_error_median_deg" in o
        else "-"
    )
    return (
        f"| {row['protocol']} | {row['variant']} | {city} | {o['hit@1']:.3f} | {o['hit@10']:.3f} | "
        f"{o['median_error_m']:.1f} | {o['within_10m']:.3f} | {o['within_25m']:.3f} | "
        f"{row['search_ms']['p50']:.0f} / {row['search_ms']['p99']:.0f} | {heading} |"
    )


def main() -> None:
    from wherecnn.evaluate.served import HEADING_MODES

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--store", help="an index already built for this checkpoint (else one is built)")
    p.add_argument("--index-views", type=int, default=3)
    p.add_argument("--keep-store", help="build the index here (edge://DIR) and keep it for --store")
    p.add_argument("--protocols", type=lambda s: s.split(","), default=["cross-area", "same-area"])
    p.add_argument("--kind", default="panorama")
    p.add_argument(
        "--photo-fov",
        type=float,
        help="cut a photo of this field of view, facing a random direction, from each panorama query "
        "(fields of view the world has no photos of, e.g. 60; --kind stays panorama)",
    )
    p.add_argument("--per-city", type=int, default=60)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split", default="test", help="test (report) or val (choose settings on)")
    p.add_argument("--cities", type=lambda s: s.split(","), help="only these cities' queries")
    p.add_argument(
        "--heading",
        choices=HEADING_MODES,
        default="given",
        help="send the captures' headings as recorded, off by up to 20 degrees, or none (estimated)",
    )
    p.add_argument("--hub-weight", type=float, help="also the default with this hub correction weight")
    p.add_argument("--no-unknown", action="store_true", help="skip the city-unknown row")
    p.add_argument("--no-tile-centre", action="store_true", help="skip the row without the fine stage")
    p.add_argument("--unknown-all", action="store_true", help="every variant with the city unknown too")
    p.add_argument("--unknown-only", action="store_true", help="every variant with the city unknown only")
    p.add_argument("--variant", action="append", help='NAME={"candidates": 4, ...} (repeatable)')
    p.add_argument("--reference", action="store_true", help="also the exact coarse stage (in-memory check)")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "served.json")
    args = p.parse_args()
    if args.photo_fov and args.kind != "panorama":
        p.error("--photo-fov cuts photos from the panorama queries: leave --kind at panorama")
    head = (
        "protocol | variant | city right | hit@1 | hit@10 | median m | within 10 m | within 25 m | ms | "
        "heading error ° / within 10°"
    )
    print(f"| {head} |")
    print("|" + " --- |" * (head.count("|") + 1))
    out = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
