"""`wherecnn demo` end to end on the tiny world, then again to show it reuses what it built."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest


def _demo(out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "COLUMNS": "200"}
    cmd = [sys.executable, "-m", "wherecnn", "demo", "--size", "tiny", "--out", str(out), "--minutes", "0.5"]
    return subprocess.run(
        [*cmd, "--no-progress", *extra], capture_output=True, text=True, env=env, timeout=1200, check=False
    )


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    out = tmp_path_factory.mktemp("demo")
    return out, _demo(out)


def test_demo_runs_every_stage_and_prints_the_summary(demo_run) -> None:
    out, proc = demo_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    state = json.loads((out / "demo.json").read_text())
    assert set(state) == {"data", "train", "index", "evaluate"}
    metrics = state["evaluate"]["metrics"]  # through the store: held-out places anywhere, grid tiles indexed
    assert set(metrics) == {"same-area", "cross-area", "cross-area, city unknown"}
    for key, protocol in metrics.items():
        assert protocol["through_store"] is True
        assert 0.0 <= protocol["overall"]["hit@1"] <= 1.0 and protocol["overall"]["median_error_m"] >= 0.0
        assert ("city_right" in protocol["overall"]) == ("unknown" in key)
    centred = state["evaluate"]["centred"]
    assert set(centred) == {"same-area", "cross-area"}  # the report's paper comparison
    for protocol in centred.values():  # overall: counts summed over cities, rates averaged
        cities = protocol["cities"].values()
        for key in ("queries", "gallery"):
            assert protocol["overall"][key] == sum(c[key] for c in cities), key
        assert protocol["overall"]["R@1"] == pytest.approx(sum(c["R@1"] for c in cities) / len(cities))
    assert (out / "report" / "index.html").exists() and (out / "report" / "served.json").exists()
    assert (out / "checkpoint" / "model_card.json").exists()
    text = proc.stdout
    assert "Per city" in text and "Sample searches" in text and "Next steps" in text
    assert "make dashboard" in text and "wherecnn search" in text
    # the terminal gets progress and results, not Ray's log lines (C++: "[date E pid tid] file.cc:N: ...";
    # Python: "date<TAB>WARNING file.py:N -- ...")
    ray_lines = re.findall(
        r"^.*(?:\] \w+\.cc:\d+:|\t(?:WARNING|ERROR) \w+\.py:\d+ --).*$", text + proc.stderr, re.M
    )
    assert not ray_lines, ray_lines[:5]


def test_demo_index_holds_every_grid_tile_once(demo_run) -> None:
    import pandas as pd
    from wherecnn.index.store import open_store

    out, proc = demo_run
    assert proc.returncode == 0
    tiles = pd.read_parquet(out / "data" / "tiles.parquet")
    grid = tiles[tiles["kind"] == "grid"]
    store = open_store(f"edge://{out / 'index'}", read_only=True)
    try:
        assert store.count() == len(grid) and store.tile_ids() == set(grid["tile_id"])
        assert sorted(store.cities()) == sorted(tiles["city"].unique())
        about = store.live_about()
        assert about["dim"] == 512 and about["retrieval"]["index_views"] == 3
        assert store.retrieve([grid["tile_id"].iloc[0]])[0].vector.shape == (9, 512)
    finally:
        store.close()


def test_second_demo_reuses_everything(demo_run) -> None:
    out, first = demo_run
    assert first.returncode == 0
    before = json.loads((out / "demo.json").read_text())
    proc = _demo(out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for stage in ("data", "train", "index", "evaluate"):
        assert f"[{stage}] up to date" in proc.stdout
    assert json.loads((out / "demo.json").read_text()) == before
