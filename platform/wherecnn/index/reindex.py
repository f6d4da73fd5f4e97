"""S3-backed bulk reindex: freeze the source, embed into a new version, validate, switch atomically, prune.

The run folder (``<work_dir>/runs/reindex-<key>``, key = source + store + checkpoint) holds the frozen
manifest and a small state file, so a killed reindex rerun with the same command sees the same tile set and
resumes into the same version. Searches keep answering from the live version the whole time; only a
validated version is ever switched to. Validation refuses a version that would make things worse than the
live one: too little of the manifest embedded (`Settings.reindex_min_embedded`), too few points, fewer points
than the live version by more than `Settings.reindex_max_shrink` (unless ``allow_shrink``), sampled tiles
that do not find themselves. A refused version is marked ``failed`` with its reason (`wherecnn index
versions`), the live one is untouched, and a rerun of the same command starts over: it freezes the source
again (which may have been fixed) into a new version; only a killed run resumes.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from wherecnn.config import Settings, get_settings
from wherecnn.index.manifest import manifest_uri, read_tile_manifest
from wherecnn.index.pipeline import run_index, store_key
from wherecnn.index.store import VectorStore, open_store
from wherecnn.index.summary import IndexSummary
from wherecnn.index.tiles import load_embedder, load_tile

FROZEN = "manifest.parquet"
STATE = "state.json"
# A known tile, re-read and re-embedded by the same model, must find its own point at cosine ~1: strict,
# because weak (e.g. untrained) models put different tiles at cosine 0.9998 and would pass a loose check.
SELF_SCORE_MIN = 0.99999
TIE_EPS = 1e-6


class ValidationError(RuntimeError):
    """The new version failed validation; it was not switched to."""


@dataclass
class ReindexResult:
    summary: IndexSummary
    previous: str | None = None
    pruned: list[str] = field(default_factory=list)
    manifest: str = ""
    absent: int = 0
    checks: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------- freezing


def _listing(source: str, frame: pd.DataFrame, inventory: str | None, settings: Settings) -> set[str]:
    """The objects that exist now: a Parquet inventory of keys, or one paginated listing of the prefix."""
    from wherecnn import storage

    if inventory:
        import pyarrow.parquet as pq

        fs, path = storage.arrow_fs(inventory, settings)
        inv = pq.read_table(path, filesystem=fs).to_pandas()
        if "key" not in inv.columns:
            raise ValueError(f"inventory {inventory}: expected a `key` column (and optionally `bucket`)")
        default_bucket = storage.parse_s3(source).bucket if source.startswith("s3://") else None
        buckets = inv["bucket"] if "bucket" in inv.columns else [default_bucket] * len(inv)
        out = set()
        for bucket, key in zip(buckets, inv["key"], strict=True):
            out.add(f"s3://{bucket}/{key}" if bucket else str(Path(str(key)).absolute()))
        return out
    uri = manifest_uri(source)
    prefix = source if not source.endswith(".parquet") else uri.rsplit("/", 1)[0]
    # list only under the folders the tiles live in (one paginated listing per distinct folder)
    folders = sorted({str(u).rsplit("/", 1)[0] for u in frame["uri"]})
    roots = [f for f in folders if not any(f != g and f.startswith(g + "/") for g in folders)]
    out = set()
    for root in roots or [prefix]:
        try:
            out.update(storage.list_uris(root))
        except FileNotFoundError:
            continue
    return out


def freeze_manifest(
    source: str, run_path: Path, *, inventory: str | None, settings: Settings, console: Any
) -> pd.DataFrame:
    """The run's tile set: reuse the frozen one when resuming, else read + list the source and freeze it."""
    frozen = run_path / FROZEN
    if frozen.exists():
        frame = pd.read_parquet(frozen)
        console.print(f"resuming reindex: frozen manifest {frozen} ({len(frame)} tiles)")
        return frame
    frame = read_tile_manifest(source, settings)
    present = _listing(source, frame, inventory, settings)
    frame["present"] = frame["uri"].isin(present)
    run_path.mkdir(parents=True, exist_ok=True)
    tmp = frozen.with_suffix(".tmp")
    frame.to_parquet(tmp, index=False)
    os.replace(tmp, frozen)
    console.print(f"froze {len(frame)} tiles of {source} ({int((~frame['present']).sum())} listed as absent)")
    return frame


# --------------------------------------------------------------------------------------------- validation


def validate(
    store: VectorStore,
    frame: pd.DataFrame,
    summary: IndexSummary,
    absent: int,
    *,
    checkpoint: str,
    device: str,
    samples: int,
    seed: str,
    settings: Settings,
    live_points: int | None = None,
    allow_shrink: bool = False,
) -> dict[str, Any]:
    """Count == tiles - rejects; enough of the manifest embedded; no fewer points than allowed (at least
    `reindex_min_points`, and against ``live_points``); sampled known tiles, re-read and re-embedded, find
    themselves top-1."""
    expected = len(frame) - absent - summary.skipped_total
    points = store.count()
    share = points / len(frame) if len(frame) else 0.0
    checks: dict[str, Any] = {
        "expected_points": expected,
        "points": points,
        "manifest_tiles": len(frame),
        "embedded_share": round(share, 6),
        "live_points": live_points,
    }
    if points != expected:
        raise ValidationError(
            f"point count {points} != {expected} (manifest {len(frame)} - absent {absent} - rejected "
            f"{summary.skipped_total}); the new version {summary.version} is incomplete or has strays"
        )
    if points < settings.reindex_min_points:
        raise ValidationError(
            f"{summary.version} holds {points} points, fewer than reindex_min_points "
            f"({settings.reindex_min_points}): {summary.skipped_total} of {len(frame)} tiles were skipped "
            f"({summary.skipped_text})"
        )
    if share < settings.reindex_min_embedded:
        raise ValidationError(
            f"{summary.version} holds {points} of the manifest's {len(frame)} tiles ({share:.1%}), under "
            f"reindex_min_embedded ({settings.reindex_min_embedded:.0%}); skipped: {summary.skipped_text}"
        )
    if live_points and not allow_shrink and points < (1.0 - settings.reindex_max_shrink) * live_points:
        raise ValidationError(
            f"{summary.version} holds {points} points against the live version's {live_points}: "
            f"{1 - points / live_points:.0%} fewer, over reindex_max_shrink "
            f"({settings.reindex_max_shrink:.0%}); rerun with --allow-shrink if the source really shrank"
        )
    present = store.tile_ids()
    candidates = sorted(set(frame["tile_id"]) & present)
    rng = np.random.default_rng(int(hashlib.sha256(seed.encode()).hexdigest()[:8], 16))
    chosen = [candidates[i] for i in rng.permutation(len(candidates))[:samples]] if candidates else []
    rows = frame.set_index("tile_id", drop=False).loc[chosen].to_dict("records") if chosen else []
    embedder = load_embedder(checkpoint, device)
    failures = []
    images, kept = [], []
    for row in rows:
        image, reason, detail = load_tile(row, settings=settings)
        if image is None:
            failures.append(f"{row['tile_id']}: cannot re-read ({reason}: {detail})")
        else:
            images.append(image)
            kept.append(row)
    vectors = embedder.aerial(images) if images else np.zeros((0, 1), dtype=np.float32)
    for row, vec in zip(kept, vectors, strict=True):
        hits = store.query(vec, k=5, cities=str(row["city"]))
        own = next((h for h in hits if h.tile_id == row["tile_id"]), None)
        if not hits or own is None or own.score < hits[0].score - TIE_EPS or own.score < SELF_SCORE_MIN:
            top = f"{hits[0].tile_id} ({hits[0].score:.4f})" if hits else "nothing"
            mine = f"{own.score:.4f}" if own else "not in top-5"
            failures.append(f"{row['tile_id']}: top-1 is {top}, own score {mine}")
    checks["sampled"] = len(rows)
    checks["sample_failures"] = failures
    if failures:
        raise ValidationError(
            f"{len(failures)} of {len(rows)} sampled tiles do not find themselves top-1 in {summary.version} "
            f"(source changed during the run, or a different model?): " + "; ".join(failures[:5])
        )
    return checks


# --------------------------------------------------------------------------------------------- entry


def run_key(source: str, store: str, checkpoint: str) -> str:
    return hashlib.sha256(f"{source}|{store}|{checkpoint}".encode()).hexdigest()[:12]


def _state(run_path: Path) -> dict[str, Any]:
    try:
        return json.loads((run_path / STATE).read_text())
    except FileNotFoundError:
        return {}


def _save_state(run_path: Path, **changes: Any) -> None:
    state = {**_state(run_path), **changes}
    tmp = run_path / (STATE + ".tmp")
    tmp.write_text(json.dumps(state, indent=1))
    os.replace(tmp, run_path / STATE)


def run_reindex(
    source: str,
    checkpoint: str,
    store: VectorStore | str,
    *,
    inventory: str | None = None,
    workers: int = 1,
    batch_size: int = 64,
    use_ray: bool = True,
    device: str = "auto",
    threads: int | None = None,
    samples: int = 8,
    run_dir: str | Path | None = None,
    switch: bool = True,
    allow_shrink: bool = False,
    settings: Settings | None = None,
    console: Any = None,
    show_progress: bool = True,
) -> ReindexResult:
    """Freeze, embed into a new version (resumable), validate, switch, prune. ``switch=False`` stops after
    validation (a rerun of the same command then switches). A run that failed validation is not resumed: the
    rerun archives its folder and freezes the source again."""
    from rich.console import Console

    settings = settings or get_settings()
    console = console or Console(stderr=True)
    store_id = store_key(store)
    run_path = (
        Path(run_dir)
        if run_dir
        else Path(settings.work_dir) / "runs" / f"reindex-{run_key(source, store_id, checkpoint)}"
    )
    state = _state(run_path)
    if state.get("status") in ("switched", "failed"):  # a finished run: archive it, this is a new reindex
        if state.get("status") == "failed":
            console.print(f"the last reindex of this source failed ({state.get('reason')}); starting over")
        suffix = f"{state.get('status')}-{state.get('version') or int(time.time())}"
        run_path.rename(run_path.with_name(f"{run_path.name}-{suffix}"))
        state = {}
    run_path.mkdir(parents=True, exist_ok=True)
    if "run_id" not in state:
        _save_state(run_path, run_id=f"{int(time.time())}", status="freezing", source=source)
    run_id = _state(run_path)["run_id"]
    frame = freeze_manifest(source, run_path, inventory=inventory, settings=settings, console=console)
    absent = int((~frame["present"]).sum())
    todo = frame[frame["present"]].drop(columns=["present"]).reset_index(drop=True)
    _save_state(run_path, status="embedding")

    owned = isinstance(store, str)
    vs = open_store(store, settings=settings) if isinstance(store, str) else store
    try:
        resumed = _validated_and_finished(vs, state, run_path) if switch else None
        if resumed is not None:
            console.print(f"resuming reindex: {resumed.summary.version} was validated; switching to it")
            return _switch(vs, run_path, resumed, settings)
        # the live version's size as recorded (Edge: without opening it, which a reader may hold)
        live_points = next((i.points for i in vs.versions() if i.live), None)
        summary = run_index(
            str(run_path / FROZEN), checkpoint, vs, workers=workers, batch_size=batch_size, use_ray=use_ray,
            device=device, threads=threads, run_dir=run_path, switch=False, tag=f"rx-{run_id}",
            settings=settings, frame=todo, console=console, show_progress=show_progress,
        )  # fmt: skip
        if absent:
            summary.skipped = dict(
                sorted({**summary.skipped, "missing": summary.skipped.get("missing", 0) + absent}.items())
            )
            _append_absent(run_path / "rejects.jsonl", frame[~frame["present"]])
        result = ReindexResult(summary=summary, manifest=str(run_path / FROZEN), absent=absent)
        vs.begin_version(f"rx-{run_id}")  # target the built version for validation
        try:
            result.checks = validate(
                vs, frame, summary, 0, checkpoint=checkpoint, device=device, samples=samples, seed=run_id,
                settings=settings, live_points=live_points, allow_shrink=allow_shrink,
            )  # fmt: skip
        except ValidationError as exc:
            _save_state(run_path, status="failed", version=summary.version, reason=str(exc))
            vs.mark_failed(str(exc), summary.version)
            vs.detach()
            (run_path / "summary.json").write_text(
                json.dumps({**summary.to_json(), "failed": str(exc)}, indent=1)
            )
            raise
        result.previous = vs.live_version()
        _save_state(
            run_path, status="validated", version=summary.version, checks=result.checks, absent=absent,
            previous=result.previous, summary=summary.to_json(),
        )  # fmt: skip
        if not switch:
            console.print(f"validated {summary.version}; not switched (rerun without --no-switch to switch)")
            vs.detach()
            return result
        return _switch(vs, run_path, result, settings)
    finally:
        if owned:
            vs.close()


def _validated_and_finished(vs: VectorStore, state: dict[str, Any], run_path: Path) -> ReindexResult | None:
    """A run killed while switching: validated, its version finished (``ready``) and either still waiting or
    already live, with the live version still the one it was validated against. Its rerun only switches:
    nothing is embedded or validated again. (A ``--no-switch`` run leaves its version building: the rerun
    resumes it and validates it again.)"""
    version = state.get("version")
    if state.get("status") != "validated" or not version:
        return None
    info = next((i for i in vs.versions() if i.version == version), None)
    if info is None or info.status != "ready" or vs.live_version() not in (version, state.get("previous")):
        return None
    fields = {k: v for k, v in state["summary"].items() if k != "skipped_total"}
    return ReindexResult(
        summary=IndexSummary(**fields), previous=state.get("previous"), manifest=str(run_path / FROZEN),
        absent=int(state.get("absent", 0)), checks=dict(state.get("checks", {})),
    )  # fmt: skip


def _switch(vs: VectorStore, run_path: Path, result: ReindexResult, settings: Settings) -> ReindexResult:
    """Make the validated version live (a no-op when it already is), prune, and record the run as switched."""
    vs.switch(result.summary.version)
    result.summary.switched = True
    result.pruned = vs.prune(settings.retention)
    _save_state(run_path, status="switched", switched_at=time.time())
    (run_path / "summary.json").write_text(
        json.dumps({**result.summary.to_json(), "checks": result.checks}, indent=1)
    )
    return result


def _append_absent(path: Path, absent: pd.DataFrame) -> None:
    rows = (
        [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    )
    seen = {r["tile_id"] for r in rows}
    for r in absent.itertuples():
        if r.tile_id not in seen:
            rows.append(
                {
                    "tile_id": r.tile_id,
                    "uri": r.uri,
                    "reason": "missing",
                    "detail": "absent from the frozen listing",
                }
            )
    rows.sort(key=lambda r: r["tile_id"])
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
