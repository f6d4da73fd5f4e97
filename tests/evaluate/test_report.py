"""`wherecnn evaluate` end to end on a fake world: report files, metrics.json, protocol defaults."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import typer.main
from typer.testing import CliRunner
from wherecnn.cli import app
from wherecnn.evaluate import report
from wherecnn.evaluate.evaluation import COUNT_KEYS, city_sets
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


@dataclass
class ReportRun:
    """One `wherecnn evaluate --out` run on the fake world, with every figure the report saved."""

    out: Path
    output: str
    exit_code: int
    figures: dict[str, Any]  # PNG file name -> the matplotlib Figure written there


@pytest.fixture(scope="module")
def report_run(fake_world: Path, tmp_path_factory: pytest.TempPathFactory) -> ReportRun:
    tmp_path = tmp_path_factory.mktemp("report_run")
    ckpt = make_checkpoint(tmp_path / "ckpt", protocol="same-area", track="aligned")
    out = tmp_path / "report"
    figures: dict[str, Any] = {}
    save = report._save

    def keep(fig: Any, path: Path) -> None:
        figures[Path(path).name] = fig
        save(fig, path)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(report, "_save", keep)
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
    return ReportRun(out=out, output=result.output, exit_code=result.exit_code, figures=figures)


def test_evaluate_command_writes_the_report(report_run: ReportRun) -> None:
    out, result = report_run.out, report_run
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


# ------------------------------------------------------------------------------------ what the page shows

PLOTS = ("pr", "examples", "activations", "matches", "heatmap", "cities")


def _section(report_run: ReportRun) -> dict[str, Any]:
    assert report_run.exit_code == 0, report_run.output
    metrics = json.loads((report_run.out / "metrics.json").read_text())
    return next(s for s in metrics["sections"] if s["protocol"] == "same-area")


def _figure(report_run: ReportRun, plot: str) -> Any:
    assert report_run.exit_code == 0, report_run.output
    return report_run.figures[f"same-area-aligned-{plot}.png"]


def _texts(fig: Any) -> list[Any]:
    from matplotlib.text import Text

    return [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]


def _scale_bars(ax: Any) -> list[tuple[str, float]]:
    """(label, bar length in x data units) of each scale bar drawn on ``ax``."""
    from matplotlib.patches import Rectangle
    from matplotlib.text import Text
    from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

    bars = []
    for artist in ax.artists:
        if isinstance(artist, AnchoredSizeBar):
            label = next(t.get_text() for t in artist.findobj(Text) if t.get_text())
            width = max(r.get_width() for r in artist.size_bar.findobj(Rectangle))
            bars.append((label, width))
    return bars


def test_page_defines_every_metric_it_shows(report_run: ReportRun) -> None:
    html = (report_run.out / "index.html").read_text()
    terms = {
        key.strip()
        for term in re.findall(r"<dt>(.*?)</dt>", html.split("<h2 id='metrics'>Metrics</h2>", 1)[1])
        for key in term.split(",")
    }
    shown = {*report.TABLE_KEYS, *COUNT_KEYS, "rank", "similarity score", "family", "checkpoint", "overall"}
    assert shown <= terms, shown - terms
    # every table column is a defined term or self-explaining
    headers = set(re.findall(r"<th>(.*?)</th>", html))
    assert headers - terms <= {"features", "city", "initialisation"}, headers - terms
    # docs/evaluation.md's metric reference names the same keys
    docs = (Path(__file__).parents[2] / "docs" / "evaluation.md").read_text()
    reference = docs.split("## Metrics (", 1)[1].split("\n## ", 1)[0]
    missing = [k for k in (*report.TABLE_KEYS, *COUNT_KEYS) if f"`{k}`" not in reference]
    assert not missing, missing


def test_init_table_says_how_to_fill_it(report_run: ReportRun) -> None:
    html = (report_run.out / "index.html").read_text()
    section = _section(report_run)
    assert any(row["AP"] == "not run" for row in section["init_comparison"])
    hint = html.split("2. Initialisation comparison", 1)[1].split("<h3>", 1)[0]
    assert "--compare NAME=CHECKPOINT" in hint and "weights" in hint
    # the commands it quotes use real options of `wherecnn train` and `wherecnn evaluate`
    commands = typer.main.get_command(app).commands
    for name in ("train", "evaluate"):
        quoted = re.search(rf"wherecnn {name} (.*?)</code>", hint)
        assert quoted is not None, name
        flags = set(re.findall(r"(--[a-z-]+)", quoted.group(1)))
        options = {o for p in commands[name].params for o in p.opts}
        assert flags and flags <= options, (name, flags - options)


def test_ranks_on_the_page_start_at_one(report_run: ReportRun) -> None:
    assert report.rank_label(0) == "#1"
    html = (report_run.out / "index.html").read_text()
    assert not re.search(r"rank(ed)? #?0\b", html)
    fig = _figure(report_run, "examples")
    titles = [[ax.get_title() for ax in row] for row in np.asarray(fig.axes).reshape(-1, 6)]
    true_ranks: dict[str, int] = {}
    for row, axes in zip(titles, np.asarray(fig.axes).reshape(-1, 6), strict=True):
        capture = row[0].split("\n")[0].split(" · ")[1]
        match = re.search(r"true tile ranked #(\d+)", row[0])
        assert match is not None, row[0]
        true_ranks[capture] = int(match.group(1))
        shown = [t for t in row[1:] if t]
        assert [t.split(" · ")[0] for t in shown] == [f"#{k}" for k in range(1, len(shown) + 1)]
        # the green (true) tile's number is the query's rank
        for ax in axes[1:]:
            if ax.get_title() and ax.title.get_color() == "green":
                assert ax.get_title().startswith(f"#{true_ranks[capture]} ")
    assert min(true_ranks.values()) >= 1
    # the map numbers its candidates 1..5 and states the same rank as the examples
    fig = _figure(report_run, "matches")
    for ax in fig.axes:
        capture = ax.get_title().split("\n")[0].split(" · ")[1]
        numbers = sorted(int(t.get_text()) for t in ax.texts if t.get_text().isdigit())
        assert numbers == list(range(1, len(numbers) + 1)) and numbers
        stated = re.search(r"true tile #(\d+)", ax.get_title())
        assert stated is not None, ax.get_title()
        rank = int(stated.group(1))
        assert rank >= 1 and true_ranks.get(capture, rank) == rank


def test_pr_plot_has_linear_axes_labels_and_a_legend(report_run: ReportRun) -> None:
    fig = _figure(report_run, "pr")
    (ax,) = fig.axes
    assert ax.get_yscale() == "linear" and ax.get_xscale() == "linear"
    assert ax.get_ylim()[0] == 0 and 1 <= ax.get_ylim()[1] <= 1.05 and ax.get_xlim() == (0, 1)
    assert "precision" in ax.get_ylabel() and "recall" in ax.get_xlabel()
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    for run in _section(report_run)["runs"]:
        assert any(label.startswith(f"{run['name']} [") and "AP=" in label for label in legend), run["name"]


def test_city_bars_show_every_evaluated_method(report_run: ReportRun) -> None:
    fig = _figure(report_run, "cities")
    (legend,) = fig.legends
    names = [r["name"] for r in _section(report_run)["runs"]]
    assert len(names) == 4  # a baseline, an initialisation variant, another model, the checkpoint
    assert sorted(t.get_text() for t in legend.get_texts()) == sorted(names)
    for ax in fig.axes:
        assert ax.get_ylabel() and len(ax.patches) == len(names) * len(ax.get_xticklabels())


def test_figures_are_readable(report_run: ReportRun) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    for plot in (*PLOTS, "training"):
        fig = report_run.figures[f"same-area-aligned-{plot}.png" if plot != "training" else "training.png"]
        canvas = FigureCanvasAgg(fig)  # the report closed it: lay it out again as when it was saved
        canvas.draw()
        renderer = canvas.get_renderer()
        small = [(t.get_text(), t.get_fontsize()) for t in _texts(fig) if t.get_fontsize() < report.FONT]
        assert not small, (plot, small[:5])  # >= 9 pt, rank labels included
        # titles lie inside the figure and do not run into each other
        page = fig.bbox
        boxes = [ax.title.get_window_extent(renderer) for ax in fig.axes if ax.get_title()]
        for box in boxes:
            assert page.x0 - 1 <= box.x0 and box.x1 <= page.x1 + 1 and box.y1 <= page.y1 + 1, plot
        for i, a in enumerate(boxes):
            assert not any(a.overlaps(b) for b in boxes[i + 1 :]), plot
    rank_font = [
        t.get_fontsize() for t in _figure(report_run, "matches").axes[0].texts if t.get_text().isdigit()
    ]
    assert rank_font and min(rank_font) >= 9


def test_map_panels_have_legends_colour_bars_and_scale_bars(report_run: ReportRun, fake_world: Path) -> None:
    from wherecnn.geo import distance_m

    for ax in _figure(report_run, "matches").axes:
        legend = " | ".join(t.get_text() for t in ax.get_legend().get_texts())
        assert "true location" in legend and "#1" in legend and "candidates" in legend
        ((label, length),) = _scale_bars(ax)
        # no mosaic in the fake world: the axes are metres, so the bar is as long as its label says
        assert label.endswith(" m") and length == pytest.approx(float(label.split()[0]))
    heat = _figure(report_run, "heatmap")
    main = heat.axes[0]
    assert "true location" in " ".join(t.get_text() for t in main.get_legend().get_texts())
    assert _scale_bars(main) and any("similarity" in ax.get_ylabel() for ax in heat.axes[1:])  # colour bar
    act = _figure(report_run, "activations")
    assert any("0..1" in ax.get_ylabel() for ax in act.axes)  # the shared colour bar
    tiles = [ax for ax in act.axes if "aerial" in ax.get_title()]
    assert tiles and all(_scale_bars(ax) for ax in tiles)
    examples = _figure(report_run, "examples")
    assert examples.legends and "true tile" in examples.legends[0].get_texts()[0].get_text()
    # the metre axes of a city without a mosaic match geodesic distances
    import matplotlib.pyplot as plt

    cs = city_sets(fake_world, protocol="same-area", track="aligned")[0]
    fig, ax = plt.subplots()
    to_xy, metres_per_unit = report._background(ax, None, cs)
    plt.close(fig)
    g = cs.gallery
    x, y = to_xy(g["lat"].to_numpy(), g["lon"].to_numpy())
    d = distance_m(
        lat1=g["lat"].iloc[0], lon1=g["lon"].iloc[0], lat2=g["lat"].iloc[-1], lon2=g["lon"].iloc[-1]
    )
    assert metres_per_unit == 1.0 and np.hypot(x[-1] - x[0], y[-1] - y[0]) == pytest.approx(d, rel=5e-3)


def test_city_mosaic_knows_its_ground_resolution(tiny_world: Path) -> None:
    import rasterio

    city = sorted(p.parent.name for p in tiny_world.glob("*/aerial.tif"))[0]
    with rasterio.open(tiny_world / city / "aerial.tif") as ds:
        native, width = float(ds.res[0]), ds.width  # a UTM raster: metres per pixel
    mosaic = report.city_mosaic(tiny_world, city, max_side=width // 2)
    assert mosaic is not None
    assert mosaic.image.shape[1] == width // 2
    assert mosaic.metres_per_pixel == pytest.approx(native * width / mosaic.image.shape[1], rel=0.01)


def test_overall_counts_are_totals_and_rates_means(report_run: ReportRun) -> None:
    main = _section(report_run)["runs"][-1]
    cities = main["cities"].values()
    assert len(cities) == 2
    for key in COUNT_KEYS:
        assert main["overall"][key] == sum(c[key] for c in cities), key
    assert main["overall"]["R@5"] == pytest.approx(np.mean([c["R@5"] for c in cities]))
