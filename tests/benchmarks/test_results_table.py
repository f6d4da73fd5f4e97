"""The README's results table is generated from the committed results: it cannot drift from them."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _module():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("results_table", ROOT / "benchmarks" / "results_table.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_readme_table_is_the_one_the_results_give() -> None:
    rt = _module()
    readme = (ROOT / "README.md").read_text()
    between = readme[readme.index(rt.BEGIN) + len(rt.BEGIN) : readme.index(rt.END)]
    assert between.strip() == rt.table(rt.load_runs()).strip(), "run `make results` and commit README.md"


def test_cells_are_the_mean_and_range_over_runs(tmp_path: Path) -> None:
    from wherecnn.models import config_digest, merge, resolve_config

    rt = _module()
    config = resolve_config("dual-cpu", "offset")[0]
    d1 = config_digest(config)

    def run(seed: int, hit: float) -> dict:
        overall = {"hit@1": hit, "hit@10": 0.9, "median_error_m": 4.0, "within_10m": hit, "within_25m": hit}
        row = {"variant": "default", "exact": False, "protocol": "cross-area", "city_given": True,
               "overall": overall, "search_ms": {"p50": 250.0}}  # fmt: skip
        ignored = {**row, "variant": "tile centre (no fine stage)"}
        machine = {"cpu": "Test CPU", "avx512_bf16": False}
        ck = {"config": config, "track": "offset", "minutes": 10, "precision": "fp32", "epochs": 6,
              "seed": seed}  # fmt: skip
        return {"rows": [row, ignored], "machine": machine, "checkpoint": ck, "per_city": 30}

    for seed, hit in ((0, 0.6), (1, 0.8)):
        (tmp_path / f"served-test-seed{seed}.json").write_text(json.dumps(run(seed, hit)))
    # a candidate trained on another track: not the served model, not in the table
    candidate = run(2, 0.1)
    candidate["checkpoint"]["track"] = "photo"
    (tmp_path / "served-test-candidate-seed2.json").write_text(json.dumps(candidate))
    # nor one trained on the same track with another config (a candidate, or the default before it)
    other_recipe = run(3, 0.1)
    candidate = merge(config, {"offset.augment_heading": 15.0})
    other_recipe["checkpoint"]["config"] = candidate
    (tmp_path / "served-test-recipe-seed3.json").write_text(json.dumps(other_recipe))
    assert len(rt.load_runs(tmp_path, track="offset", digest=config_digest(candidate))) == 1
    # a run recorded before the schema gained a setting (at a default that changes nothing) is the same recipe
    older = dict(config) | {"train": {k: v for k, v in config["train"].items() if k != "heading_anneal"}}
    assert config_digest(older) == d1
    text = rt.table(rt.load_runs(tmp_path, track="offset", digest=d1))
    row = next(
        line for line in text.splitlines() if line.startswith("| panorama, heading given: unseen cities")
    )
    assert "0.70 (0.60–0.80)" in row and "250 ms" in row and "| — |" in row  # no city right: city given
    assert "2 run(s) (seeds 0, 1)" in text and "Test CPU" in text and "6, 6 epochs" in text
    assert "trained 10 minutes on 2 cores" in text
    # another query kind of the same checkpoints: its own row, after the panorama rows, and no new run
    other = run(0, 0.3) | {"kind": "photo", "heading": "unknown"}
    other["rows"][0]["overall"] |= {"heading_error_median_deg": 12.0}
    (tmp_path / "served-test-photo-noheading-seed0.json").write_text(json.dumps(other))
    lines = rt.table(rt.load_runs(tmp_path, track="offset", digest=d1)).splitlines()
    photo = next(i for i, line in enumerate(lines) if line.startswith("| 90° photo, heading unknown: unseen"))
    assert photo > next(i for i, line in enumerate(lines) if line.startswith("| panorama, heading given"))
    assert "| 0.30 |" in lines[photo] and "12°" in lines[photo]
    # photos of another field of view (cut from the panoramas): their own row, after the 90-degree ones
    sixty = run(0, 0.1) | {"kind": "photo", "heading": "given", "fov_deg": 60.0}
    (tmp_path / "served-test-seed0-photo60.json").write_text(json.dumps(sixty))
    lines = rt.table(rt.load_runs(tmp_path, track="offset", digest=d1)).splitlines()
    row60 = next(i for i, line in enumerate(lines) if line.startswith("| 60° photo, heading given: unseen"))
    assert row60 > photo and "| 0.10 |" in lines[row60]
    assert "2 run(s) (seeds 0, 1)" in lines[-1]
