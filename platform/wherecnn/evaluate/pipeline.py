"""`evaluate_checkpoint`: a checkpoint (+ baselines, + initialisation variants) → metrics and the report.

Shared by ``wherecnn evaluate`` and ``benchmarks/accuracy.py``. Protocol and track default to the ones the
checkpoint was trained with (its model card); a checkpoint trained with protocol "both" is evaluated under
both protocols, one after the other.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from wherecnn.data.manifest import PROTOCOLS, TRACKS
from wherecnn.evaluate.baselines import KINDS, fit_baseline
from wherecnn.evaluate.evaluation import EvalRun, city_sets, evaluate_embedder
from wherecnn.evaluate.report import Section, build_report


@dataclass
class EvaluateOptions:
    data: str
    checkpoint: str
    out: str | None = None  # report dir; None = metrics only
    protocols: Sequence[str] | None = None  # None = the checkpoint's
    track: str | None = None
    baselines: Sequence[str] = KINDS
    compare: dict[str, str] = field(default_factory=dict)  # init name -> checkpoint
    others: dict[str, str] = field(
        default_factory=dict
    )  # other learned models (e.g. where-cnn) -> checkpoint
    max_gallery: int | None = None
    gallery_centres: int | None = None  # None = the model's (offset.gallery_centres for `offset`)
    gallery_scales: Sequence[float] | None = None  # None = the model's (offset.gallery_scales; else 1)
    view_pool: int | None = None  # None = the model's (offset.view_pool for `offset`)
    hub_correction: float | None = None  # weight; None = the model's (config hub_correction; 0 without)
    max_queries: int | None = None
    baseline_pairs: int = 1500
    deep_weights: str | None = None
    device: str = "auto"
    seed: int = 0
    tta: dict[str, Any] | None = None  # test-time views of the checkpoint; None = its config's
    # the anywhere protocol through the product (`evaluate.served`): an index built with this checkpoint,
    # else one of the grid tiles is built in the report folder; 0 queries a city turns it off
    store: str | None = None
    served_queries: int = 30


def read_history(checkpoint: str) -> list[dict[str, Any]]:
    """The checkpoint's metrics.jsonl (empty when it has none)."""
    from wherecnn import storage

    uri = storage.join(checkpoint, "metrics.jsonl")
    if not storage.exists(uri):
        return []
    text = storage.read_bytes(uri).decode()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def resolve_protocols_track(card: dict[str, Any], protocols: Sequence[str] | None, track: str | None) -> Any:
    data = card.get("data", {}) if isinstance(card.get("data"), dict) else {}
    trained = str(data.get("protocol") or "same-area")
    if not protocols:
        protocols = list(PROTOCOLS) if trained == "both" else [trained]
    for p in protocols:
        if p not in PROTOCOLS:
            raise ValueError(f"--protocol must be one of {PROTOCOLS}, got {p!r}")
    track = track or str(data.get("track") or "aligned")
    if track not in TRACKS:
        raise ValueError(f"--track must be one of {TRACKS}, got {track!r}")
    return list(protocols), track


def evaluate_checkpoint(
    opts: EvaluateOptions, *, log: Callable[[str], None] = print
) -> tuple[list[Section], Path | None]:
    """Evaluate the checkpoint, the baselines and the variants; write the report when ``opts.out`` is set."""
    from wherecnn.models.embedder import Embedder

    embedder = Embedder.from_checkpoint(opts.checkpoint, device=opts.device, tta=opts.tta)
    protocols, track = resolve_protocols_track(embedder.card, opts.protocols, opts.track)
    unknown = [b for b in opts.baselines if b not in KINDS]
    if unknown:
        raise ValueError(f"unknown baseline(s) {unknown}; expected some of {KINDS}")
    name = str(embedder.card.get("model") or embedder.card.get("config", {}).get("name") or embedder.model_id)
    variants = {k: Embedder.from_checkpoint(v, device=opts.device) for k, v in opts.compare.items()}
    other_models = {k: Embedder.from_checkpoint(v, device=opts.device) for k, v in opts.others.items()}
    sections: list[Section] = []
    for protocol in protocols:
        sets = city_sets(
            opts.data,
            protocol=protocol,
            track=track,
            max_gallery=opts.max_gallery,
            max_queries=opts.max_queries,
            seed=opts.seed,
        )
        n_q = sum(len(s.queries) for s in sets)
        n_g = sum(len(s.gallery) for s in sets)
        log(f"{protocol}/{track}: {len(sets)} cities, {n_q} queries, {n_g} gallery tiles")
        # learned models: each its own gallery centres and hub correction unless the options say
        learned = partial(
            evaluate_embedder,
            sets=sets,
            protocol=protocol,
            track=track,
            gallery_centres=opts.gallery_centres,
            gallery_scales=opts.gallery_scales,
            view_pool=opts.view_pool,
            hub_correction=opts.hub_correction,
        )
        main = learned(embedder, name=name)
        if main.multi_view:
            k = main.gallery_centres
            scales = "" if main.gallery_scales == (1.0,) else f" at {main.gallery_scales} x its side"
            pooled = f", scored by the mean of its {main.view_pool} best" if main.view_pool > 1 else ""
            log(f"  gallery: every tile from {k}x{k} centres over its grid cell{scales}{pooled}")
        if main.hub:
            hub = main.hub
            log(f"  hub correction: scores minus {hub.weight:g} x hubness ({hub.neighbours} neighbours)")
        log(f"  {name}: R@1 {main.overall['R@1']:.3f}  AP {main.overall['AP']:.4f}")
        baselines: list[EvalRun] = []
        for kind in opts.baselines:
            base = fit_baseline(
                kind,
                opts.data,
                protocol=protocol,
                track=track,
                max_pairs=opts.baseline_pairs,
                weights=opts.deep_weights if kind == "deep-generic" else None,
                seed=opts.seed,
            )
            run = evaluate_embedder(base, sets, name=f"baseline-{kind}", protocol=protocol, track=track)
            o = run.overall
            log(f"  baseline {kind} ({base.model_id}): R@1 {o['R@1']:.3f} AP {o['AP']:.4f}")
            baselines.append(run)
        compare = {}
        for label, emb in variants.items():
            compare[label] = learned(emb, name=f"init-{label}")
            o = compare[label].overall
            log(f"  init {label}: R@1 {o['R@1']:.3f} AP {o['AP']:.4f}")
        others = {}
        for label, emb in other_models.items():
            others[label] = learned(emb, name=label)
            o = others[label].overall
            log(f"  {label}: R@1 {o['R@1']:.3f} AP {o['AP']:.4f}")
        sections.append(
            Section(
                protocol=protocol,
                track=track,
                main=main,
                sets=sets,
                embedder=embedder,
                baselines=baselines,
                compare=compare,
                others=others,
            )  # fmt: skip
        )
    served: dict[str, Any] = {}
    if opts.served_queries > 0:
        from wherecnn.evaluate.served import evaluate_served

        served = evaluate_served(
            opts.data, opts.checkpoint, opts.store, per_city=opts.served_queries, seed=opts.seed,
            work_dir=opts.out, log=log,
        )  # fmt: skip
    index = None
    if opts.out:
        notes = []
        if "deep-generic" in opts.baselines:
            src = (
                f"weights file {opts.deep_weights}"
                if opts.deep_weights
                else "random initialisation (no weights file)"
            )
            notes.append(
                f"Generic deep baseline: torchvision ResNet-18 pooled features, {src}, CCA-projected."
            )
        notes.append(
            "Hand-crafted baselines (HOG, HSV colour histograms, GIST-like Gabor) are CCA-projected."
        )
        notes.append(f"Checkpoint: {opts.checkpoint}; data: {opts.data}.")
        index = build_report(
            opts.out, sections, data_dir=opts.data, card=embedder.card, history=read_history(opts.checkpoint),
            notes=notes,
        )  # fmt: skip
        if served:
            write_served(Path(opts.out), served)
    return sections, index


def write_served(out: Path, served: dict[str, Any]) -> None:
    """``served.json`` and ``metrics.json``'s ``anywhere`` section (``"through_store": true``)."""
    (out / "served.json").write_text(json.dumps(served, indent=1))
    metrics_file = out / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.exists() else {}
    metrics["anywhere"] = {"through_store": True, **served}
    metrics_file.write_text(json.dumps(metrics, indent=1))
