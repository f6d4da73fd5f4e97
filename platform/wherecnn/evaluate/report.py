"""The evaluation report: ``index.html`` + PNGs + ``metrics.json``, self-contained with relative links.

Sections follow the Where-CNN paper: (1) precision comparison of hand-crafted, generic deep and learned
features; (2) initialisation comparison; (3) output examples; (4) activation / Grad-CAM maps; (5) possible
matches on the city's aerial mosaic; (6) a city-wide similarity heat map; plus per-city bars and the training
curve. A "Metrics" block defines every number on the page (`METRIC_DEFINITIONS`). Every figure carries axis
labels, a legend where markers mean something, a colour bar where a colour map encodes a value and a scale bar
in metres on map panels; text is at least `FONT` points at `DPI`, and ranks count from #1 everywhere.
matplotlib runs headless (Agg).
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from wherecnn.evaluate.baselines import DEEP, HANDCRAFTED
from wherecnn.evaluate.evaluation import COUNT_KEYS, CitySet, EvalRun
from wherecnn.geo import metres_to_degrees
from wherecnn.similarity import tile_scores

INIT_ROWS = ("random", "imagenet", "places")
TABLE_KEYS = (
    "R@1", "R@5", "R@10", "R@1%", "hit_rate", "AP", "AP_balanced", "median_m", "within_25m", "within_100m",
    "within_1000m",
)  # fmt: skip
# What every number on the page means (one line each; docs/evaluation.md "Metrics" says the same). A term may
# name several keys, comma-separated.
METRIC_DEFINITIONS: tuple[tuple[str, str], ...] = (
    (
        "rank",
        "1 + the number of the city's gallery tiles scored strictly higher than the query's true tile "
        "(ties count in the query's favour): #1 means the true tile scored best",
    ),
    (
        "R@1, R@5, R@10",
        "share of queries whose true tile ranks within the first K = 1, 5, 10 of its city's gallery",
    ),
    ("R@1%", "the same with K = 1% of the city's gallery size N, at least 1 (K = max(1, N // 100))"),
    (
        "hit_rate",
        "VIGOR hit rate: share of queries where the best-scored of the true tile and its semi-positives "
        "(the other grid tiles that also contain the camera; offset track) ranks #1; equals R@1 without "
        "semi-positives",
    ),
    (
        "AP",
        "pair-verification average precision over all Q·N (query, tile) pairs of a city, a pair "
        "positive when the tile is the query's true tile: area under the step-wise precision-recall curve, "
        "tied scores grouped (scikit-learn's average_precision_score); a random scorer gets about 1/N",
    ),
    (
        "AP_balanced",
        "the same AP on a 1:1 sample: every query's true pair and as many negative pairs drawn "
        "uniformly (a random query with a tile other than its true one); a random scorer gets about 0.5",
    ),
    (
        "precision, recall",
        "of the pairs scored at or above a threshold, the share that are true pairs "
        "(precision); the share of all true pairs scored at or above it (recall). The plotted curve is each "
        "city's interpolated precision (best precision at recall >= r) averaged over cities",
    ),
    ("median_m", "median geodesic (WGS84) distance in metres from the camera to the centre of its #1 tile"),
    (
        "within_25m, within_100m, within_1000m",
        "share of queries whose #1 tile's centre lies within 25, 100 or 1000 m of the camera",
    ),
    (
        "queries, gallery",
        "a city's test queries (ground images) and gallery tiles (N); overall: totals over cities",
    ),
    (
        "overall",
        "the mean over cities of each city's value (a big city does not drown a small one); queries and "
        "gallery are summed",
    ),
    (
        "similarity score",
        "how well a ground image matches a tile: the dot product of their L2-normalised "
        "embeddings (a cosine), minus the hub correction where the model applies one; higher = more alike",
    ),
    (
        "family",
        "hand-crafted (HOG, HSV colour histograms, GIST-like Gabor), generic deep (ResNet-18 pooled "
        "features), both CCA-projected; or learned (a trained two-branch model)",
    ),
    ("checkpoint", "the model id of the checkpoint a row evaluates"),
    (
        "loss, val R@1",
        "training curve: the training loss per step and its mean per epoch; R@1 on the held-out "
        "validation pairs after each epoch",
    ),
)
# How to fill the initialisation table (its rows are `--compare` checkpoints; commands/evaluate.py)
INIT_HINT = (
    "A row reads “not run” until it is given a checkpoint. Train a model from that initialisation — random: "
    "the default; imagenet or places: a local torch state-dict weights file in the model config's "
    "<code>weights</code>, e.g. <code>wherecnn train --data DIR --model where-cnn --set "
    "'weights=\"alexnet-places365.pth\"' --out CKPT_PLACES</code> — then rerun this evaluation with one "
    "<code>--compare NAME=CHECKPOINT</code> per row: <code>wherecnn evaluate --data DIR --checkpoint CKPT "
    "--out REPORT_DIR --compare random=CKPT_RANDOM --compare imagenet=CKPT_IMAGENET --compare "
    "places=CKPT_PLACES</code>. Any other NAME adds a row."
)
DPI = 100  # every figure is saved at this resolution
FONT = 9  # points, the smallest text in a figure (12.5 px at DPI)
RANK_FONT = 11  # rank labels (#1 ...) on tiles and map markers
ACTIVATION_CMAP = "jet"
BEST_COLOUR, CANDIDATE_COLOUR = "gold", "white"  # the #1 tile's and the other candidates' map markers


@dataclass
class Section:
    """Everything the report shows for one (protocol, track)."""

    protocol: str
    track: str
    main: EvalRun
    sets: list[CitySet]
    embedder: Any = None  # the learned Embedder (activation maps); None skips section 4
    baselines: list[EvalRun] = field(default_factory=list)
    compare: dict[str, EvalRun] = field(default_factory=dict)  # initialisation variants
    others: dict[str, EvalRun] = field(default_factory=dict)  # other learned models (e.g. where-cnn)

    @property
    def slug(self) -> str:
        return f"{self.protocol}-{self.track}"


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        return f"{value:.1f}" if abs(value) >= 10 else f"{value:.3f}"
    return html.escape(str(value))


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _family(run: EvalRun) -> str:
    kind = run.name.removeprefix("baseline-")
    if kind in HANDCRAFTED:
        return "hand-crafted"
    if kind in DEEP:
        return "generic deep"
    return "learned"


# ------------------------------------------------------------------------------------------------ figures


def _save(fig: Any, path: Path) -> None:
    """Write one figure (at `DPI`) and free it."""
    fig.savefig(path, dpi=DPI)
    _plt().close(fig)


def _run_colours(runs: Sequence[EvalRun]) -> dict[str, Any]:
    """One colour per run, the same in every figure of a section."""
    import matplotlib

    palette = matplotlib.colormaps["tab10"].colors
    return {run.name: palette[i % len(palette)] for i, run in enumerate(runs)}


def rank_label(rank: int) -> str:
    """How the page shows a 0-based rank (tiles scored strictly higher than the true one): ``#1`` is best."""
    return f"#{int(rank) + 1}"


def _nice_length(span: float) -> float:
    """The largest 1, 2 or 5 x 10^k not above ``span`` (a scale bar's length)."""
    if not span > 0:
        return 0.0
    base = 10.0 ** math.floor(math.log10(span))
    return max(m * base for m in (1.0, 2.0, 5.0) if m * base <= span)


def add_scale_bar(ax: Any, metres_per_unit: float, *, fraction: float = 0.25, loc: str = "lower left") -> Any:
    """A scale bar in metres on a map panel whose x data unit is ``metres_per_unit`` metres; returns it."""
    from matplotlib.font_manager import FontProperties
    from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

    x0, x1 = ax.get_xlim()
    metres = _nice_length(abs(x1 - x0) * metres_per_unit * fraction)
    if metres <= 0:
        return None
    label = f"{metres / 1000:g} km" if metres >= 1000 else f"{metres:g} m"
    bar = AnchoredSizeBar(
        ax.transData,
        metres / metres_per_unit,
        label,
        loc,
        pad=0.3,
        borderpad=0.5,
        sep=3,
        color="black",
        frameon=True,
        size_vertical=abs(ax.get_ylim()[1] - ax.get_ylim()[0]) / 150,
        fontproperties=FontProperties(size=FONT),
    )
    bar.patch.set(alpha=0.8, facecolor="white", edgecolor="none")
    ax.add_artist(bar)
    return bar


def plot_pr_curves(runs: Sequence[EvalRun], path: Path, title: str) -> None:
    """Pair-verification PR curves, linear axes 0..1, one line per run (style by family, AP in the legend)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 6.2), layout="constrained")
    styles = {"hand-crafted": ":", "generic deep": "--", "learned": "-"}
    colours = _run_colours(runs)
    for run in runs:
        curve = run.pr_curve
        if not curve["recall"]:
            continue
        ap = run.overall.get("AP", float("nan"))
        label = f"{run.name} [{_family(run)}] (AP={ap:.3f})"
        ax.plot(
            curve["recall"],
            curve["precision"],
            styles[_family(run)],
            label=label,
            lw=2,
            color=colours[run.name],
        )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall (share of true pairs scored above the threshold)", fontsize=FONT + 1)
    ax.set_ylabel("precision (share of pairs above the threshold that are true)", fontsize=FONT + 1)
    ax.set_title(title, fontsize=FONT + 2)
    ax.tick_params(labelsize=FONT)
    ax.grid(alpha=0.3)
    ax.legend(
        fontsize=FONT,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.13),
        ncol=1,
        frameon=False,
        title="features [family] (AP)",
        title_fontsize=FONT,
    )
    _save(fig, path)


def plot_city_bars(runs: Sequence[EvalRun], path: Path) -> None:
    """R@1 and AP per city, one bar per run (every run given, in order)."""
    plt = _plt()
    cities = [c.city for c in runs[0].cities]
    colours = _run_colours(runs)
    fig, axes = plt.subplots(1, 2, figsize=(max(10.0, 1.6 * len(cities) + 4), 4.6), layout="constrained")
    width = 0.8 / max(1, len(runs))
    for i, run in enumerate(runs):
        by_city = {c.city: c.metrics for c in run.cities}
        for ax, key in zip(axes, ("R@1", "AP"), strict=True):
            vals = [by_city.get(c, {}).get(key, np.nan) for c in cities]
            ax.bar(np.arange(len(cities)) + i * width, vals, width, label=run.name, color=colours[run.name])
    labels = {"R@1": "R@1 (share of queries, true tile #1)", "AP": "AP (pair verification)"}
    for ax, key in zip(axes, ("R@1", "AP"), strict=True):
        ax.set_xticks(
            np.arange(len(cities)) + 0.4 - width / 2, cities, rotation=30, ha="right", fontsize=FONT
        )
        ax.set_ylim(0, 1)
        ax.set_title(f"{key} per city", fontsize=FONT + 1)
        ax.set_ylabel(labels[key], fontsize=FONT)
        ax.tick_params(axis="y", labelsize=FONT)
        ax.grid(axis="y", alpha=0.3)
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(
        handles,
        names,
        loc="outside lower center",
        ncol=math.ceil(len(runs) / math.ceil(len(runs) / 5)),  # rows of at most 5, evenly filled
        fontsize=FONT,
        title="features",
        title_fontsize=FONT,
    )
    _save(fig, path)


def plot_training_curve(history: Sequence[dict[str, Any]], path: Path) -> bool:
    steps = [h for h in history if h.get("kind") == "step" and "loss" in h]
    epochs = [h for h in history if h.get("kind") == "epoch"]
    if not steps and not epochs:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 4), layout="constrained")
    if steps:
        ax.plot([h["step"] for h in steps], [h["loss"] for h in steps], lw=1, label="loss (step)")
    if epochs:
        ax.plot([h["step"] for h in epochs], [h["loss"] for h in epochs], "o-", label="loss (epoch mean)")
    ax.set_xlabel("training step", fontsize=FONT)
    ax.set_ylabel("training loss", fontsize=FONT)
    ax.set_title("Training curve", fontsize=FONT + 1)
    ax.tick_params(labelsize=FONT)
    ax.grid(alpha=0.3)
    val = [
        (h["step"], h["val"]["R@1"]) for h in epochs if isinstance(h.get("val"), dict) and "R@1" in h["val"]
    ]
    handles, names = ax.get_legend_handles_labels()
    if val:
        ax2 = ax.twinx()
        ax2.plot([v[0] for v in val], [v[1] for v in val], "s-", color="tab:green", label="val R@1")
        ax2.set_ylim(0, 1)
        ax2.set_ylabel("validation R@1", fontsize=FONT)
        ax2.tick_params(labelsize=FONT)
        more, more_names = ax2.get_legend_handles_labels()
        handles, names = handles + more, names + more_names
    ax.legend(handles, names, loc="upper right", fontsize=FONT)
    _save(fig, path)
    return True


def _load(uri: str) -> np.ndarray:
    from wherecnn.storage import load_image

    return load_image(uri)


def _example_queries(run: EvalRun, n: int) -> list[tuple[int, int]]:
    """(city index, query index) pairs: successes and failures from the first cities, deterministic."""
    hits: list[tuple[int, int]] = []
    misses: list[tuple[int, int]] = []
    for ci, c in enumerate(run.cities):
        ranks = c.result.ranks
        hits.extend((ci, int(q)) for q in np.nonzero(ranks == 0)[0][:n])
        misses.extend((ci, int(q)) for q in np.nonzero(ranks > 0)[0][:n])
    want_hits = min(len(hits), max((n + 1) // 2, n - len(misses)))
    return (hits[:want_hits] + misses)[:n]


def _tile_gsd(cs: CitySet, gi: int) -> float | None:
    """Ground metres per pixel of gallery tile ``gi``'s image (the manifest's ``gsd_m``; None without)."""
    if "gsd_m" not in cs.gallery.columns:
        return None
    gsd = float(cs.gallery["gsd_m"].iloc[gi])
    return gsd if math.isfinite(gsd) and gsd > 0 else None


def plot_examples(section: Section, path: Path, n: int = 4) -> bool:
    picks = _example_queries(section.main, n)
    if not picks:
        return False
    plt = _plt()
    from matplotlib.lines import Line2D

    fig, axes = plt.subplots(
        len(picks),
        6,
        figsize=(13, 2.5 * len(picks) + 0.9),
        squeeze=False,
        layout="constrained",
        gridspec_kw={"width_ratios": [3, 1, 1, 1, 1, 1]},
    )
    for row, (ci, qi) in enumerate(picks):
        outcome, cs = section.main.cities[ci], section.sets[ci]
        q = cs.queries.iloc[qi]
        ax = axes[row, 0]
        ax.imshow(_load(q["ground_uri"]))
        rank = int(outcome.result.ranks[qi])
        shown = "" if rank < 5 else " (not shown)"
        ax.set_title(
            f"{cs.city} · {q['capture_id']}\ntrue tile ranked {rank_label(rank)}{shown} of "
            f"{outcome.result.n_gallery}",
            fontsize=FONT,
        )
        ax.axis("off")
        assert outcome.result.topk is not None and outcome.result.topk_scores is not None
        for k in range(5):
            ax = axes[row, k + 1]
            ax.axis("off")
            if k >= outcome.result.topk.shape[1]:
                continue
            gi = int(outcome.result.topk[qi, k])
            tile = _load(cs.gallery["uri"].iloc[gi])
            ax.imshow(tile)
            true = gi == int(cs.positives[qi])
            ax.set_title(
                f"{rank_label(k)} · {outcome.result.topk_scores[qi, k]:.3f}",
                fontsize=RANK_FONT,
                color="green" if true else "black",
                fontweight="bold" if true else "normal",
            )
            if true:
                h, w = tile.shape[:2]
                ax.add_patch(plt.Rectangle((1, 1), w - 3, h - 3, fill=False, ec="lime", lw=4))
            gsd = _tile_gsd(cs, gi)
            if k == 0 and gsd is not None:
                add_scale_bar(ax, gsd, fraction=0.4)
    fig.suptitle(
        "Queries (left) and the five best-scored gallery tiles: #rank · similarity score", fontsize=FONT + 1
    )
    legend = [Line2D([], [], color="lime", lw=4, label="the query's true tile (green outline, green title)")]
    fig.legend(handles=legend, loc="outside lower center", fontsize=FONT, frameon=False)
    _save(fig, path)
    return True


def plot_activations(section: Section, path: Path, n: int = 3) -> bool:
    if section.embedder is None or getattr(section.embedder, "model", None) is None:
        return False
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    from wherecnn.evaluate.evaluation import number_or_none
    from wherecnn.models.activations import pair_maps

    picks = _example_queries(section.main, n)
    if not picks:
        return False
    plt = _plt()
    fig, axes = plt.subplots(
        len(picks),
        4,
        figsize=(14, 2.7 * len(picks) + 0.4),
        squeeze=False,
        layout="constrained",
        gridspec_kw={"width_ratios": [4, 1.5, 4, 1.5]},
    )
    for row, (ci, qi) in enumerate(picks):
        cs = section.sets[ci]
        q = cs.queries.iloc[qi]
        gi = int(cs.positives[qi])
        tile = _load(cs.gallery["uri"].iloc[gi])
        heading, fov = number_or_none(q["heading_deg"]), number_or_none(q["fov_deg"])
        maps = pair_maps(section.embedder, _load(q["ground_uri"]), tile, heading_deg=heading, fov_deg=fov)
        gsd = _tile_gsd(cs, gi)
        for col, (img, heat, title) in enumerate(
            (
                (maps.ground, maps.ground_cam, f"{q['capture_id']}\nground · Grad-CAM"),
                (maps.aerial, maps.aerial_cam, "true tile\naerial · Grad-CAM"),
                (maps.ground, maps.ground_activation, f"{q['capture_id']}\nground · mean activation"),
                (maps.aerial, maps.aerial_activation, "true tile\naerial · mean activation"),
            )
        ):
            ax = axes[row, col]
            ax.imshow(img)
            ax.imshow(heat, cmap=ACTIVATION_CMAP, alpha=0.45, vmin=0, vmax=1)
            ax.set_title(title, fontsize=FONT)
            ax.axis("off")
            if col in (1, 3) and gsd is not None:  # the tile as the model saw it, resized
                add_scale_bar(ax, gsd * tile.shape[1] / maps.aerial.shape[1], fraction=0.5)
    colours = ScalarMappable(norm=Normalize(0, 1), cmap=ACTIVATION_CMAP)
    bar = fig.colorbar(colours, ax=axes, shrink=0.8, aspect=30, pad=0.01)
    bar.set_label("map value, scaled to 0..1 per image (1 = strongest)", fontsize=FONT)
    bar.ax.tick_params(labelsize=FONT)
    fig.suptitle(
        "Where the model looks: Grad-CAM of the match score and mean activation of the last convolution",
        fontsize=FONT + 1,
    )
    _save(fig, path)
    return True


@dataclass
class Mosaic:
    """A city's aerial mosaic overview: the image, a (lat, lon) -> (col, row) mapper and its ground scale."""

    image: np.ndarray
    to_pixel: Any
    metres_per_pixel: float


def city_mosaic(data_dir: str | Path, city: str, max_side: int = 900) -> Mosaic | None:
    """A downsampled overview of ``<data>/<city>/aerial.tif``, a (lat, lon) -> (col, row) mapper and the
    overview's ground metres per pixel (geodesic, measured across its centre, so any CRS works)."""
    tif = Path(data_dir) / city / "aerial.tif"
    if not tif.exists():
        return None
    import rasterio
    from pyproj import Transformer

    from wherecnn.geo import distance_m

    with rasterio.open(tif) as ds:
        scale = max(ds.width, ds.height) / max_side
        oh, ow = max(1, int(ds.height / max(scale, 1))), max(1, int(ds.width / max(scale, 1)))
        bands = min(3, ds.count)
        img = ds.read(list(range(1, bands + 1)), out_shape=(bands, oh, ow))
        fwd = ds.transform @ ds.transform.scale(ds.width / ow, ds.height / oh)
        inv = ~fwd
        to_crs = Transformer.from_crs("EPSG:4326", ds.crs, always_xy=True)
        to_lonlat = Transformer.from_crs(ds.crs, "EPSG:4326", always_xy=True)
    img = np.moveaxis(img, 0, -1)
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    if img.dtype != np.uint8:
        lo, hi = np.percentile(img, (1, 99))
        img = np.clip((img - lo) / max(hi - lo, 1e-9) * 255, 0, 255).astype(np.uint8)
    # ground distance across the middle row of the overview, divided by its pixels
    xs, ys = fwd @ (np.array([0.0, float(ow)]), np.array([oh / 2, oh / 2]))
    lon, lat = to_lonlat.transform(np.asarray(xs), np.asarray(ys))
    span = float(distance_m(lat1=lat[0], lon1=lon[0], lat2=lat[1], lon2=lon[1]))

    def to_pixel(lat: Any, lon: Any) -> tuple[np.ndarray, np.ndarray]:
        x, y = to_crs.transform(np.asarray(lon, float), np.asarray(lat, float))
        col, row = inv @ (np.asarray(x), np.asarray(y))
        return np.asarray(col), np.asarray(row)

    return Mosaic(image=img, to_pixel=to_pixel, metres_per_pixel=span / ow)


def _background(ax: Any, data_dir: Any, cs: CitySet) -> tuple[Any, float]:
    """Draw the mosaic when there is one; return a (lat, lon) -> (x, y) mapper for the axes and the metres
    per x unit (for the scale bar). Without a mosaic the axes are metres east / north of the gallery's
    centre (equirectangular, fine over a city)."""
    mosaic = city_mosaic(data_dir, cs.city) if data_dir is not None else None
    if mosaic is None:
        lat0, lon0 = float(cs.gallery["lat"].mean()), float(cs.gallery["lon"].mean())
        lat_per_m, lon_per_m = metres_to_degrees(lat=lat0, metres=1.0)
        ax.set_aspect("equal")
        ax.set_xlabel("metres east of the gallery's centre", fontsize=FONT)
        ax.set_ylabel("metres north", fontsize=FONT)
        ax.tick_params(labelsize=FONT)

        def to_metres(lat: Any, lon: Any) -> tuple[np.ndarray, np.ndarray]:
            return (np.asarray(lon, float) - lon0) / lon_per_m, (np.asarray(lat, float) - lat0) / lat_per_m

        return to_metres, 1.0
    ax.imshow(mosaic.image)
    ax.axis("off")
    return mosaic.to_pixel, mosaic.metres_per_pixel


def plot_matches(section: Section, data_dir: Any, path: Path, n: int = 2, top: int = 5) -> bool:
    picks = _example_queries(section.main, n)
    if not picks:
        return False
    plt = _plt()
    fig, axes = plt.subplots(
        1, len(picks), figsize=(6.5 * len(picks), 7.4), squeeze=False, layout="constrained"
    )
    for ax, (ci, qi) in zip(axes[0], picks, strict=True):
        cs, outcome = section.sets[ci], section.main.cities[ci]
        to_xy, metres_per_unit = _background(ax, data_dir, cs)
        assert outcome.result.topk is not None
        idx = outcome.result.topk[qi, :top]
        g = cs.gallery.iloc[idx]
        x, y = to_xy(g["lat"].to_numpy(), g["lon"].to_numpy())
        q = cs.queries.iloc[qi]
        tx, ty = to_xy(q["lat"], q["lon"])
        # candidates as dots, the best guess on top; the camera's star above them all; each rank written
        # beside its dot, so a candidate on the camera (or on another candidate) keeps its number
        for k in reversed(range(len(idx))):
            best = k == 0
            colour = BEST_COLOUR if best else CANDIDATE_COLOUR
            label = "#1: best guess" if best else None
            ax.scatter(
                [x[k]], [y[k]], s=140, c=colour, edgecolors="k", zorder=4 + (len(idx) - k) / 100, label=label
            )
            ax.annotate(
                str(k + 1),
                (x[k], y[k]),
                xytext=(9, 9),
                textcoords="offset points",
                color="black",
                fontsize=RANK_FONT,
                fontweight="bold",
                ha="center",
                va="center",
                zorder=7,
                bbox={"boxstyle": "circle,pad=0.2", "fc": colour, "ec": "k", "lw": 0.8},
            )
        if len(idx) > 1:
            ax.scatter([], [], s=140, c=CANDIDATE_COLOUR, edgecolors="k", label=f"#2–#{len(idx)}: candidates")
        ax.scatter(
            [tx], [ty], marker="*", s=420, c="cyan", edgecolors="k", zorder=6, label="true location (camera)"
        )
        rank = int(outcome.result.ranks[qi])
        ax.set_title(
            f"{cs.city} · {q['capture_id']}\ntop-{top} tiles (numbered by rank); true tile "
            f"{rank_label(rank)}",
            fontsize=FONT + 1,
        )
        add_scale_bar(ax, metres_per_unit)
        ax.legend(
            loc="upper center",
            bbox_to_anchor=(0.5, 0.0),
            ncol=3,
            fontsize=FONT,
            frameon=False,
            markerscale=0.7,
        )
    _save(fig, path)
    return True


def plot_heatmap(section: Section, data_dir: Any, path: Path) -> bool:
    picks = _example_queries(section.main, 1)
    if not picks:
        return False
    ci, qi = picks[0]
    cs, outcome = section.sets[ci], section.main.cities[ci]
    scores = tile_scores(outcome.query_emb[qi][None], outcome.gallery_emb, section.main.view_pool)[0]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 8.4), layout="constrained")
    to_xy, metres_per_unit = _background(ax, data_dir, cs)
    x, y = to_xy(cs.gallery["lat"].to_numpy(), cs.gallery["lon"].to_numpy())
    order = np.argsort(scores)  # best drawn last, on top
    sc = ax.scatter(
        x[order], y[order], c=scores[order], cmap="inferno", s=40, marker="s", alpha=0.75, zorder=2
    )
    bar = fig.colorbar(sc, ax=ax, fraction=0.04, pad=0.02)
    bar.set_label("similarity score of the tile to the query (higher = more alike)", fontsize=FONT)
    bar.ax.tick_params(labelsize=FONT)
    q = cs.queries.iloc[qi]
    tx, ty = to_xy(q["lat"], q["lon"])
    ax.scatter(
        [tx], [ty], marker="*", s=400, c="cyan", edgecolors="k", zorder=5, label="true location (camera)"
    )
    best = int(np.argmax(scores))
    ax.scatter(
        [x[best]],
        [y[best]],
        marker="o",
        s=200,
        facecolors="none",
        edgecolors="lime",
        lw=2,
        zorder=5,
        label="#1: best-scored tile",
    )
    ax.scatter([], [], marker="s", s=40, c="grey", alpha=0.75, label="gallery tile, coloured by score")
    add_scale_bar(ax, metres_per_unit)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=3, fontsize=FONT, frameon=False)
    ax.set_title(f"{cs.city}: similarity of every gallery tile to {q['capture_id']}", fontsize=FONT + 1)
    _save(fig, path)
    return True


# ------------------------------------------------------------------------------------------------ assembly


def init_table(section: Section) -> list[list[Any]]:
    """Rows (initialisation, checkpoint, AP, R@1): random, imagenet, places and any other ``--compare`` name;
    "not run" where no checkpoint was given (`INIT_HINT` says how to give one)."""
    rows: list[list[Any]] = []
    names = list(INIT_ROWS) + [n for n in section.compare if n.lower() not in INIT_ROWS]
    lookup = {n.lower(): r for n, r in section.compare.items()}
    for name in names:
        run = lookup.get(name.lower())
        if run is None:
            rows.append([name, "not run", "not run", "not run"])
        else:
            o = run.overall
            rows.append([name, run.model_id, o.get("AP", float("nan")), o.get("R@1", float("nan"))])
    return rows


def _table_values(metrics: dict[str, Any]) -> list[Any]:
    """A table row's `TABLE_KEYS` values, then the `COUNT_KEYS` as whole numbers."""
    counts = [metrics.get(k, float("nan")) for k in COUNT_KEYS]
    return [
        *(metrics.get(k, float("nan")) for k in TABLE_KEYS),
        *(int(v) if isinstance(v, int | float) and math.isfinite(v) else v for v in counts),
    ]


def metrics_block() -> str:
    """The page's "Metrics" section: one definition per term shown (`METRIC_DEFINITIONS`)."""
    items = "".join(
        f"<dt>{html.escape(term)}</dt><dd>{html.escape(text)}</dd>" for term, text in METRIC_DEFINITIONS
    )
    return f"<h2 id='metrics'>Metrics</h2><dl class='metrics'>{items}</dl>"


def build_report(
    out_dir: str | Path,
    sections: Sequence[Section],
    *,
    data_dir: str | Path | None = None,
    card: dict[str, Any] | None = None,
    history: Sequence[dict[str, Any]] = (),
    notes: Sequence[str] = (),
) -> Path:
    """Write every figure, ``metrics.json`` and ``index.html`` under ``out_dir``; returns the HTML path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    card = card or {}
    parts: list[str] = []
    model_name = card.get("model_id") or (sections[0].main.model_id if sections else "model")
    parts.append(f"<h1>wherecnn evaluation — {html.escape(str(model_name))}</h1>")
    if notes:
        parts.append("<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>")
    parts.append(metrics_block())
    metrics_json: dict[str, Any] = {"model": model_name, "card": card, "sections": []}

    for section in sections:
        s = section.slug
        runs = [*section.baselines, *section.compare.values(), *section.others.values(), section.main]
        parts.append(f"<h2>{html.escape(section.protocol)} · {html.escape(section.track)}</h2>")
        rows = [[r.name, _family(r), *_table_values(r.overall)] for r in runs]
        parts.append(
            "<h3>Overall (mean over cities; queries and gallery: totals)</h3>"
            + _table(["features", "family", *TABLE_KEYS, *COUNT_KEYS], rows)
        )

        plot_pr_curves(runs, out / f"{s}-pr.png", f"Pair verification · {section.protocol} · {section.track}")
        parts.append(
            "<h3>1. Precision comparison</h3><p>Pair-verification precision-recall over every (query, tile) "
            "pair of each city's gallery, averaged over cities (linear axes).</p>"
            f"<img src='{s}-pr.png'>"
        )
        parts.append(
            "<h3>2. Initialisation comparison</h3>"
            + _table(["initialisation", "checkpoint", "AP", "R@1"], init_table(section))
            + f"<p class='hint'>{INIT_HINT}</p>"
        )
        if plot_examples(section, out / f"{s}-examples.png"):
            parts.append(
                "<h3>3. Output examples</h3><p>Each query's five best-scored tiles, #1 first (ranks count "
                f"from 1); the true tile is outlined in green.</p><img src='{s}-examples.png'>"
            )
        if plot_activations(section, out / f"{s}-activations.png"):
            parts.append(
                "<h3>4. Strong activations</h3><p>Grad-CAM of the match score and mean activation of each "
                f"branch's last convolution.</p><img src='{s}-activations.png'>"
            )
        else:
            parts.append("<h3>4. Strong activations</h3><p>not available (no learned model).</p>")
        if plot_matches(section, data_dir, out / f"{s}-matches.png"):
            parts.append(f"<h3>5. Possible matches and locations</h3><img src='{s}-matches.png'>")
        if plot_heatmap(section, data_dir, out / f"{s}-heatmap.png"):
            parts.append(f"<h3>6. Geolocalization task: city-wide similarity</h3><img src='{s}-heatmap.png'>")
        plot_city_bars(runs, out / f"{s}-cities.png")  # every evaluated method
        city_rows = [[c.city, *_table_values(c.metrics)] for c in section.main.cities]
        parts.append(
            f"<h3>Per city</h3><img src='{s}-cities.png'><p>Table: {html.escape(section.main.name)}.</p>"
            + _table(["city", *TABLE_KEYS, *COUNT_KEYS], city_rows)
        )
        metrics_json["sections"].append(
            {
                "protocol": section.protocol,
                "track": section.track,
                "runs": [r.to_json() for r in runs],
                "init_comparison": [
                    dict(zip(("init", "checkpoint", "AP", "R@1"), r, strict=True))
                    for r in init_table(section)
                ],  # fmt: skip
            }
        )

    if plot_training_curve(history, out / "training.png"):
        parts.append("<h2>Training curve</h2><img src='training.png'>")
    (out / "metrics.json").write_text(
        json.dumps(clean_json(metrics_json), indent=2, default=_json_default) + "\n"
    )
    style = (
        "body{font-family:sans-serif;max-width:1300px;margin:auto;padding:1em}"
        "table{border-collapse:collapse;font-size:12px;margin:.5em 0}"
        "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}"
        "img{max-width:100%;border:1px solid #eee}"
        "dl.metrics{font-size:13px;display:grid;grid-template-columns:max-content auto;gap:2px 1em}"
        "dl.metrics dt{font-weight:bold;font-family:monospace}dl.metrics dd{margin:0}"
        ".hint{font-size:13px;background:#f6f6f6;padding:.4em .6em}"
    )
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>wherecnn evaluation</title>"
        f"<style>{style}</style></head><body>{''.join(parts)}"
        "<p><a href='metrics.json'>metrics.json</a></p></body></html>"
    )
    index = out / "index.html"
    index.write_text(page)
    return index


def clean_json(value: Any) -> Any:
    """NaN/inf become null, so metrics.json is strict JSON that any parser reads."""
    if isinstance(value, dict):
        return {str(k): clean_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean_json(v) for v in value]
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)
