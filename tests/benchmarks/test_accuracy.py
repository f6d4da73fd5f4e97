"""`benchmarks/accuracy.py`, the program behind the README's accuracy table, end to end on the tiny world."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "accuracy.py"


def _run(world: Path, tmp: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    args = [sys.executable, str(SCRIPT), "--data", str(world), "--models", "dual-cpu", "--baselines", "hog"]
    args += ["--tracks", "aligned", "--protocols", "same-area", "--work", str(tmp / "work")]
    args += ["--out", str(tmp / "accuracy.json"), "--quiet", "--device", "cpu", *extra]
    return subprocess.run(args, capture_output=True, text=True, timeout=600)


def test_accuracy_table_trains_evaluates_and_replaces_its_rows(tiny_world: Path, tmp_path: Path) -> None:
    small = 'train={"batch_size": 8, "fresh_places": 64}'
    done = _run(tiny_world, tmp_path, "--minutes", "0.02", "--set", small)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads((tmp_path / "accuracy.json").read_text())["rows"]
    assert [(r["features"], r["family"]) for r in rows] == [("hog", "hand-crafted"), ("dual-cpu", "learned")]
    hog, learned = rows
    for r in rows:
        assert (r["track"], r["protocol"]) == ("aligned", "same-area")
        assert 0.0 <= r["overall"]["R@1"] <= 1.0 and r["cities"]
    assert learned["test_views"] == 4 and learned["train_config"]["config"]["train"]["batch_size"] == 8
    assert learned["train_config"]["data"]["fresh_places"] == 64  # new places rendered: a synthetic world
    ratio = learned["overall"]["AP"] / hog["overall"]["AP"]
    assert abs(learned["AP_ratio_to_best_handcrafted"] - ratio) < 1e-9
    assert set(learned["targets"]) == {"R@1>=0.95", "AP_ratio>=5.0"}
    assert learned["targets"]["R@1>=0.95"] == (learned["overall"]["R@1"] >= 0.95)
    assert learned["hub_correction"]["weight"] == 0.0  # dual-cpu sets it on the offset track only

    # re-evaluating the same checkpoint (one view, a hub correction) replaces the learned row, no retraining
    emb = tmp_path / "emb"
    again = _run(
        tiny_world,
        tmp_path,
        "--reuse",
        "--tta",
        "{}",
        "--baselines",
        "",
        "--hub-correction",
        "0.5",
        "--save-embeddings",
        str(emb),
    )
    assert again.returncode == 0, again.stderr[-3000:]
    rows = json.loads((tmp_path / "accuracy.json").read_text())["rows"]
    assert [r["features"] for r in rows] == ["hog", "dual-cpu"]
    # each row keeps the settings of the run that measured it
    assert rows[0]["settings"]["reuse"] is False
    assert rows[1]["settings"]["reuse"] is True
    assert rows[1]["test_views"] == 1 and rows[1]["training"] == {"reused": True}
    assert rows[1]["hub_correction"] == {"weight": 0.5, "neighbours": 200}
    assert rows[1]["model_id"] == learned["model_id"] + "-tta1"
    assert learned["view_pool"] == 1 and learned["gallery_centres"] == 1

    # the saved embeddings re-score to the row's numbers (the hub correction's coordinate included)
    from wherecnn.evaluate.metrics import retrieval_metrics

    for city, metrics in rows[1]["cities"].items():
        z = np.load(emb / f"dual-cpu-aligned-same-area-{city}.npz", allow_pickle=True)
        assert (
            z["query"].shape[1] == z["gallery"].shape[-1] == 129
        )  # 128 values (one test view) + the hub coordinate
        assert len(z["semi_positives"]) == len(z["query"])
        assert retrieval_metrics(z["query"], z["gallery"], z["positives"])["R@1"] == metrics["R@1"]
