"""The embedding pipeline: plain and Ray paths, rejects by reason, and resume after a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from wherecnn.config import get_settings
from wherecnn.index.manifest import read_tile_manifest
from wherecnn.index.pipeline import run_index
from wherecnn.index.store import open_store
from wherecnn.index.summary import rejects_of
from wherecnn.models.embedder import Embedder

CKPT = "untrained:dual-cpu"


def _check_store(store_uri: str, manifest: Path, bad: dict[str, str]) -> None:
    frame = read_tile_manifest(str(manifest))
    good = set(frame["tile_id"]) - set(bad)
    with open_store(store_uri, read_only=True) as store:
        assert store.count() == len(good)
        assert store.tile_ids() == good
        ids, vectors, payloads = store.all_vectors("alpha")
        assert payloads[0]["model"] == Embedder.untrained("dual-cpu").model_id
        assert {"location", "city", "tile_id", "uri", "gsd_m", "bounds", "model"} <= set(payloads[0])
        hits = store.query(vectors[0], k=1, cities="alpha")
        assert hits[0].tile_id == ids[0]


def test_plain_index_skips_bad_tiles_and_reruns_idempotently(
    tile_set: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    manifest, bad = tile_set
    store_uri = f"edge://{tmp_path}/idx"
    run_dir = tmp_path / "run"
    summary = run_index(
        str(manifest), CKPT, store_uri, use_ray=False, batch_size=8, run_dir=run_dir, show_progress=False
    )
    assert summary.embedded == 24 and summary.switched
    assert summary.skipped == {"missing": 1, "unreadable": 2, "wrong_size": 1}
    rejects = {r["tile_id"]: r["reason"] for r in rejects_of(run_dir / "rejects.jsonl")}
    assert rejects == bad
    _check_store(store_uri, manifest, bad)
    again = run_index(
        str(manifest), CKPT, store_uri, use_ray=False, batch_size=8, run_dir=run_dir, show_progress=False
    )
    assert again.up_to_date and again.points == 24


def test_index_resumes_after_kill(tmp_path: Path) -> None:
    """Kill the CLI mid-run (SIGKILL), rerun the same command: exactly one point per good tile."""
    from tests.index.conftest import make_tile_set

    manifest, bad = make_tile_set(tmp_path / "world", n_good=240)
    store_uri = f"edge://{tmp_path}/idx"
    run_dir = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "wherecnn", "index", "--tiles", str(manifest), "--checkpoint", CKPT, "--store",
        store_uri, "--no-ray", "--batch-size", "4", "--threads", "1", "--run-dir", str(run_dir),
    ]  # fmt: skip
    env = {**os.environ, "WHERECNN_WORK_DIR": str(tmp_path / "var")}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    killed = False
    while time.time() < deadline and proc.poll() is None:
        if _points_written(run_dir) >= 8:
            proc.send_signal(signal.SIGKILL)
            killed = True
            break
        time.sleep(0.05)
    proc.wait(timeout=60)
    assert killed, "the job finished before it could be killed; make it bigger"
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "resuming" in done.stderr + done.stdout
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["already_present"] > 0 and summary["points"] == 240
    _check_store(store_uri, manifest, bad)


def _points_written(run_dir: Path) -> int:
    """Progress of the job, from the progress file it keeps in its run folder."""
    progress = run_dir / "progress.json"
    try:
        return int(json.loads(progress.read_text())["embedded"])
    except (FileNotFoundError, ValueError, KeyError):
        return 0


@pytest.mark.slow
def test_ray_index(tile_set: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    import ray

    manifest, bad = tile_set
    store_uri = f"edge://{tmp_path}/idx"
    settings = get_settings(num_cpus=2)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        summary = run_index(
            str(manifest), CKPT, store_uri, use_ray=True, workers=1, batch_size=8, run_dir=tmp_path / "run",
            settings=settings, show_progress=False,
        )  # fmt: skip
    finally:
        ray.shutdown()
    assert summary.engine == "ray" and summary.embedded == 24
    assert summary.skipped == {"missing": 1, "unreadable": 2, "wrong_size": 1}
    _check_store(store_uri, manifest, bad)
    # the Ray path embeds exactly what the plain path embeds
    plain_uri = f"edge://{tmp_path}/plain"
    run_index(str(manifest), CKPT, plain_uri, use_ray=False, run_dir=tmp_path / "run2", show_progress=False)
    with open_store(store_uri, read_only=True) as a, open_store(plain_uri, read_only=True) as b:
        ia, va, _ = a.all_vectors("beta")
        ib, vb, _ = b.all_vectors("beta")
    assert ia == ib and np.allclose(va, vb, atol=1e-5)


def test_runs_into_different_stores_keep_their_own_run_folders(
    tile_set: tuple[Path, dict[str, str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One manifest, one model, two stores: two run folders, each with its own rejects and summary; an "up
    to date" rerun's summary says what the rejects file lists."""
    from wherecnn.config import reset_settings_cache

    monkeypatch.setenv("WHERECNN_WORK_DIR", str(tmp_path / "work"))
    reset_settings_cache()
    try:
        manifest, bad = tile_set
        kwargs = {"use_ray": False, "batch_size": 8, "show_progress": False}
        first = run_index(str(manifest), CKPT, f"edge://{tmp_path / 'a'}", **kwargs)
        second = run_index(str(manifest), CKPT, f"edge://{tmp_path / 'b'}", **kwargs)
        assert first.run_dir != second.run_dir
        assert {Path(first.run_dir).parent, Path(second.run_dir).parent} == {tmp_path / "work" / "runs"}
        again = run_index(str(manifest), CKPT, f"edge://{tmp_path / 'a'}", **kwargs)
        assert again.up_to_date and again.run_dir == first.run_dir
        rejects = rejects_of(Path(again.run_dir) / "rejects.jsonl")
        assert len(rejects) == len(bad) and again.skipped_total == len(bad) == first.skipped_total
        written = json.loads((Path(again.run_dir) / "summary.json").read_text())
        assert sum(written["skipped"].values()) == len(rejects)
    finally:
        reset_settings_cache()


def test_a_version_records_how_its_tiles_are_stored_and_only_the_query_settings_pinned(
    tile_set: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    from wherecnn.retrieval.settings import RetrievalSettings

    manifest, _ = tile_set
    kwargs = {"use_ray": False, "batch_size": 8, "show_progress": False}
    store = f"edge://{tmp_path / 'pinned'}"
    run_index(
        str(manifest),
        CKPT,
        store,
        run_dir=tmp_path / "r",
        retrieval=RetrievalSettings(candidates=4),
        **kwargs,
    )
    with open_store(store, read_only=True) as vs:
        recorded = vs.live_about()["retrieval"]
    assert recorded == {"candidates": 4, "index_views": 1}  # tiles without raster windows: one view each
    assert RetrievalSettings.from_dict(recorded).coarse_headings == RetrievalSettings().coarse_headings
