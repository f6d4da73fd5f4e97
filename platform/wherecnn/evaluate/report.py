"""The evaluation report: ``index.html`` + PNGs + ``metrics.json``, self-contained with relative links.

Sections follow the Where-CNN paper: (1) precision comparison of hand-crafted, generic deep and learned
features; (2) initialisation comparison; (3) output examples; (4) activation / Grad-CAM maps; (5) possible
matches on the city's aerial mosaic; (6) a city-wide similarity heat map; plus per-city bars and the training
curve. matplotlib runs headless (Agg).
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
from wherecnn.evaluate.evaluation import CitySet, EvalRun
from wherecnn.similarity import tile_scores

INIT_ROWS = ("random", "imagenet", "places")
TABLE_KEYS = (
    "R@1", "R@5", "R@10", "R@1%", "hit_rate", "AP", "AP_balanced", "median_m", "within_25m", "within_100m",
    "within_1000m",
)  # fmt: skip


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


def plot_pr_curves(runs: Sequence[EvalRun], path: Path, title: str) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 5))
    styles = {"hand-crafted": ":", "generic deep": "--", "learned": "-"}
    for run in runs:
        curve = run.pr_curve
        if not curve["recall"]:
            continue
        ap = run.overall.get("AP", float("nan"))
        label = f"{run.name} [{_family(run)}] (AP={ap:.3f})"
        ax.plot(curve["recall"], curve["precision"], styles[_family(run)], label=label, lw=1.8)
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title=title)
    ax.set_yscale("symlog", linthresh=0.01)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_city_bars(runs: Sequence[EvalRun], path: Path) -> None:
    plt = _plt()
    cities = [c.city for c in runs[0].cities]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    width = 0.8 / max(1, len(runs))
    for i, run in enumerate(runs):
        by_city = {c.city: c.metrics for c in run.cities}
        for ax, key in zip(axes, ("R@1", "AP"), strict=True):
            vals = [by_city.get(c, {}).get(key, np.nan) for c in cities]
            ax.bar(np.arange(len(cities)) + i * width, vals, width, label=run.name)
    for ax, key in zip(axes, ("R@1", "AP"), strict=True):
        ax.set_xticks(np.arange(len(cities)) + 0.4 - width / 2, cities, rotation=30, ha="right", fontsize=8)
        ax.set(title=f"{key} per city", ylim=(0, 1))
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_training_curve(history: Sequence[dict[str, Any]], path: Path) -> bool:
    steps = [h for h in history if h.get("kind") == "step" and "loss" in h]
    epochs = [h for h in history if h.get("kind") == "epoch"]
    if not steps and not epochs:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    if steps:
        ax.plot([h["step"] for h in steps], [h["loss"] for h in steps], lw=1, label="loss (step)")
    if epochs:
        ax.plot([h["step"] for h in epochs], [h["loss"] for h in epochs], "o-", label="loss (epoch mean)")
    ax.set(xlabel="step", ylabel="loss")
    ax.grid(alpha=0.3)
    val = [
        (h["step"], h["val"]["R@1"]) for h in epochs if isinstance(h.get("val"), dict) and "R@1" in h["val"]
    ]
    if val:
        ax2 = ax.twinx()
        ax2.plot([v[0] for v in val], [v[1] for v in val], "s-", color="tab:green", label="val R@1")
        ax2.set(ylabel="val R@1", ylim=(0, 1))
        ax2.legend(loc="center right", fontsize=8)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
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


def plot_examples(section: Section, path: Path, n: int = 4) -> bool:
    picks = _example_queries(section.main, n)
    if not picks:
        return False
    plt = _plt()
    fig, axes = plt.subplots(len(picks), 6, figsize=(13, 2.2 * len(picks)), squeeze=False,
                             gridspec_kw={"width_ratios": [3, 1, 1, 1, 1, 1]})  # fmt: skip
    for row, (ci, qi) in enumerate(picks):
        outcome, cs = section.main.cities[ci], section.sets[ci]
        q = cs.queries.iloc[qi]
        ax = axes[row, 0]
        ax.imshow(_load(q["ground_uri"]))
        ax.set_title(f"{cs.city} · {q['capture_id']} (rank {int(outcome.result.ranks[qi])})", fontsize=8)
        ax.axis("off")
        assert outcome.result.topk is not None and outcome.result.topk_scores is not None
        for k in range(5):
            ax = axes[row, k + 1]
            ax.axis("off")
            if k >= outcome.result.topk.shape[1]:
                continue
            gi = int(outcome.result.topk[qi, k])
            ax.imshow(_load(cs.gallery["uri"].iloc[gi]))
            true = gi == int(cs.positives[qi])
            ax.set_title(f"#{k + 1} {outcome.result.topk_scores[qi, k]:.3f}", fontsize=8,
                         color="green" if true else "black")  # fmt: skip
            if true:
                h, w = _load(cs.gallery["uri"].iloc[gi]).shape[:2]
                ax.add_patch(plt.Rectangle((1, 1), w - 3, h - 3, fill=False, ec="lime", lw=4))
    fig.suptitle("Queries and their top-5 tiles (true tile outlined)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def plot_activations(section: Section, path: Path, n: int = 3) -> bool:
    if section.embedder is None or getattr(section.embedder, "model", None) is None:
        return False
    from wherecnn.evaluate.evaluation import number_or_none
    from wherecnn.models.activations import pair_maps

    picks = _example_queries(section.main, n)
    if not picks:
        return False
    plt = _plt()
    fig, axes = plt.subplots(len(picks), 4, figsize=(13, 2.4 * len(picks)), squeeze=False,
                             gridspec_kw={"width_ratios": [4, 1.5, 4, 1.5]})  # fmt: skip
    for row, (ci, qi) in enumerate(picks):
        cs = section.sets[ci]
        q = cs.queries.iloc[qi]
        tile_uri = cs.gallery["uri"].iloc[int(cs.positives[qi])]
        heading, fov = number_or_none(q["heading_deg"]), number_or_none(q["fov_deg"])
        maps = pair_maps(section.embedder, _load(q["ground_uri"]), _load(tile_uri),
                         heading_deg=heading, fov_deg=fov)  # fmt: skip
        for col, (img, heat, label) in enumerate(
            (
                (maps.ground, maps.ground_cam, "ground Grad-CAM"),
                (maps.aerial, maps.aerial_cam, "aerial Grad-CAM"),
                (maps.ground, maps.ground_activation, "ground activation"),
                (maps.aerial, maps.aerial_activation, "aerial activation"),
            )
        ):
            ax = axes[row, col]
            ax.imshow(img)
            ax.imshow(heat, cmap="jet", alpha=0.45, vmin=0, vmax=1)
            ax.set_title(f"{label} · {q['capture_id']}", fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def city_mosaic(data_dir: str | Path, city: str, max_side: int = 900) -> tuple[np.ndarray, Any] | None:
    """A downsampled overview of ``<data>/<city>/aerial.tif`` and a (lat, lon) -> (col, row) mapper."""
    tif = Path(data_dir) / city / "aerial.tif"
    if not tif.exists():
        return None
    import rasterio
    from pyproj import Transformer

    with rasterio.open(tif) as ds:
        scale = max(ds.width, ds.height) / max_side
        oh, ow = max(1, int(ds.height / max(scale, 1))), max(1, int(ds.width / max(scale, 1)))
        bands = min(3, ds.count)
        img = ds.read(list(range(1, bands + 1)), out_shape=(bands, oh, ow))
        inv = ~(ds.transform * ds.transform.scale(ds.width / ow, ds.height / oh))
        to_crs = Transformer.from_crs("EPSG:4326", ds.crs, always_xy=True)
    img = np.moveaxis(img, 0, -1)
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    if img.dtype != np.uint8:
        lo, hi = np.percentile(img, (1, 99))
        img = np.clip((img - lo) / max(hi - lo, 1e-9) * 255, 0, 255).astype(np.uint8)

    def to_pixel(lat: Any, lon: Any) -> tuple[np.ndarray, np.ndarray]:
        x, y = to_crs.transform(np.asarray(lon, float), np.asarray(lat, float))
        col, row = inv * (np.asarray(x), np.asarray(y))
        return np.asarray(col), np.asarray(row)

    return img, to_pixel


def _background(ax: Any, data_dir: Any, cs: CitySet) -> Any:
    """Draw the mosaic when there is one; return a (lat, lon) -> (x, y) mapper for the axes."""
    mosaic = city_mosaic(data_dir, cs.city) if data_dir is not None else None
    if mosaic is None:
        ax.set_aspect(1 / max(math.cos(math.radians(float(cs.gallery["lat"].mean()))), 1e-6))
        ax.set(xlabel="lon", ylabel="lat")
        return lambda lat, lon: (np.asarray(lon), np.asarray(lat))
    img, to_pixel = mosaic
    ax.imshow(img)
    ax.axis("off")
    return to_pixel


def plot_matches(section: Section, data_dir: Any, path: Path, n: int = 2, top: int = 5) -> bool:
    picks = _example_queries(section.main, n)
    if not picks:
        return False
    plt = _plt()
    fig, axes = plt.subplots(1, len(picks), figsize=(6 * len(picks), 6), squeeze=False)
    for ax, (ci, qi) in zip(axes[0], picks, strict=True):
        cs, outcome = section.sets[ci], section.main.cities[ci]
        to_xy = _background(ax, data_dir, cs)
        assert outcome.result.topk is not None
        idx = outcome.result.topk[qi, :top]
        g = cs.gallery.iloc[idx]
        x, y = to_xy(g["lat"].to_numpy(), g["lon"].to_numpy())
        ax.scatter(x, y, c=np.arange(len(idx)), cmap="autumn", s=80, edgecolors="k", zorder=3)
        for k, (xi, yi) in enumerate(zip(x, y, strict=True)):
            ax.annotate(str(k + 1), (xi, yi), color="white", fontsize=9, ha="center", va="center", zorder=4)
        q = cs.queries.iloc[qi]
        tx, ty = to_xy(q["lat"], q["lon"])
        ax.scatter([tx], [ty], marker="*", s=300, c="cyan", edgecolors="k", zorder=5, label="true location")
        ax.set_title(f"{cs.city} · {q['capture_id']}: top-{top} matches", fontsize=9)
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def plot_heatmap(section: Section, data_dir: Any, path: Path) -> bool:
    picks = _example_queries(section.main, 1)
    if not picks:
        return False
    ci, qi = picks[0]
    cs, outcome = section.sets[ci], section.main.cities[ci]
    scores = tile_scores(outcome.query_emb[qi][None], outcome.gallery_emb, section.main.view_pool)[0]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 7))
    to_xy = _background(ax, data_dir, cs)
    x, y = to_xy(cs.gallery["lat"].to_numpy(), cs.gallery["lon"].to_numpy())
    order = np.argsort(scores)  # best drawn last, on top
    sc = ax.scatter(
        x[order], y[order], c=scores[order], cmap="inferno", s=40, marker="s", alpha=0.75, zorder=2
    )
    fig.colorbar(sc, ax=ax, fraction=0.04, label="similarity")
    q = cs.queries.iloc[qi]
    tx, ty = to_xy(q["lat"], q["lon"])
    ax.scatter([tx], [ty], marker="*", s=400, c="cyan", edgecolors="k", zorder=5, label="true location")
    best = int(np.argmax(scores))
    ax.scatter([x[best]], [y[best]], marker="o", s=200, facecolors="none", edgecolors="lime", lw=2, zorder=5,
               label="best match")  # fmt: skip
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(f"{cs.city}: similarity of every tile to {q['capture_id']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


# ------------------------------------------------------------------------------------------------ assembly


def init_table(section: Section) -> list[list[Any]]:
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
    metrics_json: dict[str, Any] = {"model": model_name, "card": card, "sections": []}

    for section in sections:
        s = section.slug
        runs = [*section.baselines, *section.compare.values(), *section.others.values(), section.main]
        parts.append(f"<h2>{html.escape(section.protocol)} · {html.escape(section.track)}</h2>")
        rows = [[r.name, _family(r), *[r.overall.get(k, float("nan")) for k in TABLE_KEYS]] for r in runs]
        parts.append(
            "<h3>Overall (mean over cities)</h3>" + _table(["features", "family", *TABLE_KEYS], rows)
        )

        plot_pr_curves(runs, out / f"{s}-pr.png", f"Pair verification · {section.protocol} · {section.track}")
        parts.append(
            "<h3>1. Precision comparison</h3><p>Pair-verification precision-recall over every (query, tile) "
            "pair "
            f"of each city's gallery, averaged over cities.</p><img src='{s}-pr.png'>"
        )
        parts.append(
            "<h3>2. Initialisation comparison</h3>"
            + _table(["initialisation", "checkpoint", "AP", "R@1"], init_table(section))
        )
        if plot_examples(section, out / f"{s}-examples.png"):
            parts.append(f"<h3>3. Output examples</h3><img src='{s}-examples.png'>")
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
        bar_runs = [section.main, *section.baselines[:3]]
        plot_city_bars(bar_runs, out / f"{s}-cities.png")
        city_rows = [
            [c.city, *[c.metrics.get(k, float("nan")) for k in TABLE_KEYS]] for c in section.main.cities
        ]
        parts.append(
            f"<h3>Per city ({html.escape(section.main.name)})</h3><img src='{s}-cities.png'>"
            + _table(["city", *TABLE_KEYS], city_rows)
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
