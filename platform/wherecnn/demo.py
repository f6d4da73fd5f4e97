"""The main job end to end on the embedded default: synthesize → train → index → evaluate → sample searches.

Each stage records what it produced in ``DIR/demo.json`` (with a fingerprint of its inputs), so a second run
reuses data, checkpoint, index and report unless asked to rebuild or an input changed. Layout of ``DIR``:
``data/`` (the synthetic world), ``checkpoint/``, ``index/`` (Qdrant Edge store), ``report/``.

One model serves both protocols: it trains on places that are training places under both the same-area and
the cross-area split (protocol "both"), so the same-area test places and the held-out cities are both unseen.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STAGES = ("data", "train", "index", "evaluate", "search")
# Training budget per world size, minutes of wall clock on the machine at hand.
DEFAULT_MINUTES = {"tiny": 1.0, "small": 10.0, "full": 30.0}
# The tiny world has a few dozen training places: smaller batches and validation sample than the model's,
# and its manifest's pairs rather than new places rendered every epoch (~5 s an epoch there, longer than
# the epoch's own training).
TRAIN_SIZES: dict[str, dict[str, int]] = {"tiny": {"batch_size": 16, "val_size": 24, "fresh_places": 0}}
# The model the demo trains and serves, and its training track: camera-centred tiles shifted a little, for
# cameras anywhere in a tile (docs/search.md).
MODEL = "dual-cpu"
TRACK = "offset"
# Held-out places a city sent through the search engine by the demo's evaluation.
SERVED_QUERIES = {"tiny": 10, "small": 30, "full": 60}
SERVED_COLUMNS = ("hit@1", "median_error_m", "within_10m", "city_right")
# Part of the evaluate stage's fingerprint: bumped when the same inputs give a different report or metrics
# (2: the report's labelled figures and metric definitions; overall queries/gallery as totals), so a rerun
# rebuilds them instead of reusing a stale report and demo.json.
EVALUATE_VERSION = 2


@dataclass
class DemoPaths:
    root: Path

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def checkpoint(self) -> Path:
        return self.root / "checkpoint"

    @property
    def index(self) -> Path:
        return self.root / "index"

    @property
    def store(self) -> str:
        return f"edge://{self.index.resolve()}"

    @property
    def report(self) -> Path:
        return self.root / "report"

    @property
    def state(self) -> Path:
        return self.root / "demo.json"


@dataclass
class StageResult:
    name: str
    seconds: float
    reused: bool
    detail: str = ""


@dataclass
class DemoResult:
    paths: DemoPaths
    stages: list[StageResult] = field(default_factory=list)
    per_city: list[dict[str, Any]] = field(default_factory=list)
    overall: dict[str, dict[str, float]] = field(default_factory=dict)
    searches: list[dict[str, Any]] = field(default_factory=list)


def model_digest() -> str:
    """The digest of the config the demo trains (`models.config_digest`): the README's results table counts
    only the runs of checkpoints trained with it."""
    from wherecnn.models import config_digest, resolve_config

    return config_digest(resolve_config(MODEL, TRACK)[0])


def _fingerprint(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.exists() else "missing"


class _State:
    """``demo.json``: stage name -> {fingerprint, seconds, ...}; written after each completed stage."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}

    def done(self, stage: str, fingerprint: str) -> bool:
        return self.data.get(stage, {}).get("fingerprint") == fingerprint

    def record(self, stage: str, fingerprint: str, seconds: float, **extra: Any) -> None:
        self.data[stage] = {"fingerprint": fingerprint, "seconds": round(seconds, 2), **extra}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2))
        tmp.replace(self.path)

    def forget_from(self, stage: str) -> None:
        """A rebuilt stage invalidates every later one."""
        for later in STAGES[STAGES.index(stage) :]:
            self.data.pop(later, None)


def run_demo(
    out: str | Path,
    *,
    size: str = "small",
    seed: int = 0,
    minutes: float | None = None,
    rebuild: bool = False,
    baselines: bool = True,
    log: Callable[[str], None] = print,
    progress: bool = True,
) -> DemoResult:
    """Run (or reuse) every stage; return what a person reads: timings, metrics, sample searches."""
    paths = DemoPaths(Path(out))
    paths.root.mkdir(parents=True, exist_ok=True)
    state = _State(paths.state)
    if rebuild:
        state.forget_from("data")
    result = DemoResult(paths)
    minutes = DEFAULT_MINUTES.get(size, 10.0) if minutes is None else minutes

    def stage(name: str, fingerprint: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        if state.done(name, fingerprint):
            info = state.data[name]
            result.stages.append(StageResult(name, 0.0, True, info.get("detail", "")))
            log(f"[{name}] up to date (built in {info['seconds']:.0f} s); reusing it")
            return info
        state.forget_from(name)
        log(f"[{name}] running ...")
        t0 = time.perf_counter()
        extra = fn()
        seconds = time.perf_counter() - t0
        state.record(name, fingerprint, seconds, **extra)
        result.stages.append(StageResult(name, seconds, False, extra.get("detail", "")))
        log(f"[{name}] done in {seconds:.0f} s {extra.get('detail', '')}")
        return state.data[name]

    # 1. the synthetic world
    def make_data() -> dict[str, Any]:
        from wherecnn.data.synthetic import generate

        summary = generate(paths.data, size=size, seed=seed)
        return {"detail": f"({len(summary['cities'])} cities, {summary['captures']} captures, "
                          f"{summary['tiles']} tiles)"}  # fmt: skip

    data_fp = _fingerprint("data", size, seed)
    stage("data", data_fp, make_data)
    manifests_fp = _fingerprint(data_fp, _file_digest(paths.data / "tiles.parquet"))

    # 2. the default model, trained on places that are training places under both protocols
    def train() -> dict[str, Any]:
        from wherecnn.train.loop import run_training
        from wherecnn.train.options import TrainOptions

        opts = TrainOptions(
            data=str(paths.data), out=str(paths.checkpoint), model=MODEL, minutes=minutes,
            protocol="both", track=TRACK, seed=seed, progress=progress, **TRAIN_SIZES.get(size, {}),
        )  # fmt: skip
        out = run_training(opts)
        r1 = (out.get("val") or {}).get("R@1")
        detail = f"({out['epochs']} epochs, {out['pairs']} pairs in {minutes:g} min"
        return {"detail": detail + (f", validation R@1 {r1:.3f})" if r1 is not None else ")")}

    # the model's config is part of it: a changed default model retrains instead of reusing a stale checkpoint
    train_fp = _fingerprint(manifests_fp, MODEL, model_digest(), TRACK, minutes, seed)
    stage("train", train_fp, train)
    ckpt_fp = _fingerprint(train_fp, _file_digest(paths.checkpoint / "model_card.json"))

    # 3. every city's grid tiles (what a user's own imagery gives: no tile sits on a test camera) into the
    # embedded store, through the Ray Data pipeline, each stored as its cell seen from several centres
    def index() -> dict[str, Any]:
        from wherecnn.evaluate.served import grid_tiles
        from wherecnn.index.pipeline import run_index

        summary = run_index(
            str(paths.data / "tiles.parquet"), str(paths.checkpoint), paths.store, workers=1, use_ray=True,
            run_dir=paths.root / "runs" / "index", show_progress=progress, frame=grid_tiles(paths.data),
        )  # fmt: skip
        return {"detail": f"({summary.embedded} grid tiles embedded, {summary.skipped_total} skipped, "
                          f"{summary.tiles_per_s:.0f} tiles/s)"}  # fmt: skip

    from wherecnn.retrieval.settings import RetrievalSettings

    index_fp = _fingerprint(ckpt_fp, "index", "grid", RetrievalSettings().as_dict())
    stage("index", index_fp, index)

    # 4. both protocols through the product (held-out places anywhere, answered by the search engine over
    # the index just built), then the report's in-memory comparisons (the centred, CVUSA-like protocol)
    def evaluate() -> dict[str, Any]:
        from wherecnn.evaluate.pipeline import EvaluateOptions, evaluate_checkpoint

        # served: through the index just built; the report's in-memory part: the paper's centred protocol
        opts = EvaluateOptions(
            data=str(paths.data), checkpoint=str(paths.checkpoint), out=str(paths.report), track="aligned",
            store=paths.store, served_queries=SERVED_QUERIES.get(size, 30),
        )  # fmt: skip
        if not baselines:
            opts.baselines = ()
        sections, _ = evaluate_checkpoint(opts, log=log)
        centred = {
            s.protocol: {"overall": s.main.overall, "cities": {c.city: c.metrics for c in s.main.cities}}
            for s in sections
        }
        served = json.loads((paths.report / "served.json").read_text())
        return {"detail": f"(report in {paths.report})", "metrics": served, "centred": centred}

    evaluate_fp = _fingerprint(index_fp, "evaluate", baselines, "served", EVALUATE_VERSION)
    evaluated = stage("evaluate", evaluate_fp, evaluate)
    metrics = evaluated.get("metrics", {})
    result.overall = {p: m["overall"] for p, m in metrics.items()}

    # 5. a few sample searches (always run: they are quick and show the store answering)
    from wherecnn.index.store import open_store

    store = open_store(paths.store, read_only=True)
    try:
        t0 = time.perf_counter()
        result.searches = sample_searches(paths, store, count=3, seed=seed)
        seconds = time.perf_counter() - t0
        result.stages.append(StageResult("search", seconds, False, f"({len(result.searches)} queries)"))
        result.per_city = _per_city(store, metrics)
    finally:
        store.close()
    return result


def sample_searches(paths: DemoPaths, store: Any, *, count: int = 3, seed: int = 0) -> list[dict[str, Any]]:
    """Search a few test panoramas from different cities; report the best guess and its error."""
    from wherecnn.data.manifest import read_captures
    from wherecnn.geo import distance_m
    from wherecnn.models.embedder import Embedder
    from wherecnn.search.engine import SearchEngine

    captures = read_captures(paths.data)
    panos = captures[(captures["split"] == "test") & (captures["fov_deg"] >= 360)]
    picks = (
        panos.groupby("city", sort=True).sample(n=1, random_state=seed).head(count) if len(panos) else panos
    )
    engine = SearchEngine(store, Embedder.from_checkpoint(str(paths.checkpoint)))
    out = []
    for row in picks.itertuples(index=False):
        res = engine.search(row.uri, k=5, true_lat=row.lat, true_lon=row.lon)
        best = res.best
        out.append(
            {
                "capture_id": row.capture_id,
                "city": row.city,
                "uri": row.uri,
                "best_city": best.city if best else None,
                "best_lat": best.lat if best else None,
                "best_lon": best.lon if best else None,
                "confidence": best.confidence if best else None,
                "position_source": best.position_source if best else None,
                "heading_deg": best.heading_deg if best else None,  # no heading sent: estimated
                "heading_source": best.heading_source if best else None,
                "error_m": float(distance_m(lat1=row.lat, lon1=row.lon, lat2=best.lat, lon2=best.lon))
                if best
                else None,
            }
        )
    return out


def _per_city(store: Any, metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """Per city: tiles in the live index and each served protocol's hit@1, median error and share within
    10 m."""
    rows = []
    for city in sorted(store.cities()):
        row: dict[str, Any] = {"city": city, "tiles": store.count(cities=[city])}
        for protocol, m in metrics.items():
            cm = m["cities"].get(city)
            if cm is not None:
                row[protocol] = {k: cm.get(k) for k in SERVED_COLUMNS}
        rows.append(row)
    return rows
