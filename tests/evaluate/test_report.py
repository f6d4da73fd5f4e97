"""`wherecnn evaluate` end to end on a fake world: report files, metrics.json, protocol defaults."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner
from wherecnn.cli import app
from wherecnn.evaluate.evaluation import city_sets
from wherecnn.evaluate.pipeline import resolve_protocols_track

from tests.evaluate.conftest import make_checkpoint


def test_city_sets_follow_the_gallery_contract(fake_world: Path) -> None:
    aligned = {s.city: s for s in city_sets(fake_world, protocol="same-area", track="aligned")}
    alpha = aligned["alpha"]
    kinds = alpha.gallery["kind"].value_counts().to_dict()
    assert kinds == {"grid": 9, "centred": 4}  # all grid tiles + the city's test centred tiles
    assert (alpha.gallery["tile_id"].to_numpy()[alpha.positives] == alpha.queries["tile_id"].to_numpy()).all()
    assert alpha.semi_positives is None
    offset = {s.city: s for s in city_sets(fake_world, protocol="same-area", track="offset")}
    assert set(offset["alpha"].gallery["kind"]) == {"grid"}
    assert offset["alpha"].semi_positives is not None
    cross = city_sets(fake_world, protocol="cross-area", track="photo")
    assert [s.city for s in cross] == ["beta"] and len(cross[0].queries) == 8
    capped = city_sets(fake_world, protocol="same-area", track="aligned", max_gallery=6)
    assert all(len(s.gallery) == 6 for s in capped)  # 4 positives kept + 2 others


def test_evaluate_command_writes_the_report(fake_world: Path, tmp_path: Path) -> None:
    ckpt = make_checkpoint(tmp_path / "ckpt", protocol="same-area", track="aligned")
    out = tmp_path / "report"
    result = CliRunner().invoke(
        app,
        [
            "evaluate",
            "--data",
            str(fake_world),
            "--checkpoint",
            str(ckpt),
            "--out",
            str(out),
            "--baseline",
            "color-hist",
            "--compare",
            f"imagenet={ckpt}",
            "--model",
            f"where-cnn={ckpt}",
            "--view-pool",
            "2",
            "--hub-correction",
            "0.5",
            "--served-queries",
            "2",
        ],
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    # the anywhere protocol, through an index of the grid tiles built in the report folder
    anywhere = metrics["anywhere"]
    assert anywhere["through_store"] is True and (out / "index").is_dir()
    assert set(anywhere) == {"through_store", "same-area", "cross-area", "cross-area, city unknown"}
    for key in ("hit@1", "hit@10", "median_error_m", "within_5m", "within_10m", "within_25m", "within_50m"):
        assert key in anywhere["cross-area"]["overall"] and key in anywhere["cross-area"]["cities"]["beta"]
    assert "city_right" in anywhere["cross-area, city unknown"]["overall"]
    assert "Anywhere, through the search engine" in result.output
    sections = {(s["protocol"], s["track"]) for s in metrics["sections"]}
    assert sections == {("same-area", "aligned")}  # the checkpoint's protocol and track
    same = next(s for s in metrics["sections"] if s["protocol"] == "same-area")
    names = [r["name"] for r in same["runs"]]
    assert names == ["baseline-color-hist", "init-imagenet", "where-cnn", "dual-cpu"]
    main = same["runs"][-1]
    assert set(main["cities"]) == {"alpha", "beta"}
    # the scoring options reach the learned models' runs (and are recorded), not the baselines'
    assert main["view_pool"] == 2 and main["hub_correction"]["weight"] == 0.5
    assert same["runs"][0]["view_pool"] == 1 and same["runs"][0]["hub_correction"]["weight"] == 0.0
    for key in ("R@1", "R@5", "R@10", "R@1%", "hit_rate", "AP", "AP_balanced", "median_m", "within_100m"):
        assert 0 <= main["overall"][key] <= (1 if key != "median_m" else 1e6), key
    init = {row["init"]: row for row in same["init_comparison"]}
    assert init["random"]["AP"] == "not run" and init["imagenet"]["AP"] == pytest.approx(
        main["overall"]["AP"]
    )
    html = (out / "index.html").read_text()
    for png in (
        "same-area-aligned-pr.png",
        "same-area-aligned-examples.png",
        "same-area-aligned-activations.png",
        "same-area-aligned-matches.png",
        "same-area-aligned-heatmap.png",
        "same-area-aligned-cities.png",
        "training.png",
    ):
        assert (out / png).stat().st_size > 1000, png
        assert f"src='{png}'" in html
    assert "not run" in html


def test_protocol_and_track_default_to_the_checkpoint() -> None:
    card = {"data": {"protocol": "both", "track": "photo"}}
    assert resolve_protocols_track(card, None, None) == (["same-area", "cross-area"], "photo")
    assert resolve_protocols_track(card, ["cross-area"], "offset") == (["cross-area"], "offset")
    assert resolve_protocols_track({}, None, None) == (["same-area"], "aligned")
    with pytest.raises(ValueError, match="--track"):
        resolve_protocols_track(card, None, "sideways")


def test_evaluate_rejects_a_missing_checkpoint(fake_world: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app,
        [
            "evaluate",
            "--data",
            str(fake_world),
            "--checkpoint",
            str(tmp_path / "nope"),
            "--out",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 1
    assert "model.pt" in result.output


def test_evaluate_refuses_test_time_views_the_model_cannot_take(fake_world: Path, tmp_path: Path) -> None:
    ckpt = make_checkpoint(tmp_path / "ckpt")
    args = ["evaluate", "--data", str(fake_world), "--checkpoint", str(ckpt), "--out", str(tmp_path / "r")]
    result = CliRunner().invoke(app, [*args, "--tta", '{"phases": 3}'])
    assert result.exit_code == 1 and "tta phases 3" in result.output
    result = CliRunner().invoke(app, [*args, "--tta", "flip"])
    assert result.exit_code == 2 and "--tta expects JSON" in result.output
