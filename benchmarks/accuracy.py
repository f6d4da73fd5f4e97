"""The issue's accuracy table: every track × protocol, learned models vs baselines, with the targets.

For each track (aligned, offset, photo) and protocol (same-area, cross-area): train each model (default
`dual-cpu` and `where-cnn`) for a wall-clock budget with the one training function (`wherecnn.train`), fit
the baselines (hand-crafted + generic deep, CCA-projected) on the same training pairs, and evaluate all of
them per city against each city's whole gallery (mean over cities). Writes
``benchmarks/results/accuracy.json`` and prints R@1, R@5, R@1%, hit rate, AP and the AP ratio to the best
hand-crafted baseline, with the issue's targets marked.

    wherecnn synth --size small --out var/small
    flock /tmp/wherecnn-heavy.lock .venv/bin/python benchmarks/accuracy.py --data var/small --minutes 15

Full run: 6 combinations × (15 + where-cnn minutes) of training plus evaluation (~3-4 h on 2 cores).
``--reuse`` evaluates checkpoints already in ``--work`` instead of retraining.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results" / "accuracy.json"
TRACKS = ("aligned", "offset", "photo")
PROTOCOLS = ("same-area", "cross-area")
# (track, protocol) -> {metric: minimum} for dual-cpu, from the issue
TARGETS: dict[tuple[str, str], dict[str, float]] = {
    ("aligned", "same-area"): {"R@1": 0.95},
    ("aligned", "cross-area"): {"R@1": 0.92},
    ("offset", "cross-area"): {"R@1": 0.60, "hit_rate": 0.75},
    ("photo", "cross-area"): {"R@1": 0.75},
}
AP_RATIO_TARGET = 5.0


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _card(ckpt: Path) -> dict[str, Any]:
    """How a checkpoint was trained (from its model card): also right for reused checkpoints."""
    card = json.loads((ckpt / "model_card.json").read_text())
    return {"config": card["config"], "run": card.get("train"), "data": card.get("data")}


def _override(item: str) -> dict[str, Any]:
    key, sep, value = item.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"{item!r}: expected KEY=JSON")
    try:
        return {key: json.loads(value)}
    except json.JSONDecodeError:
        return {key: value}


def _scales(text: str) -> tuple[float, ...]:
    from wherecnn.evaluate.evaluation import parse_scales

    try:
        return parse_scales(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def train_model(args: argparse.Namespace, model: str, track: str, protocol: str, out: Path) -> dict[str, Any]:
    from wherecnn.train.loop import run_training
    from wherecnn.train.options import TrainOptions

    minutes = args.where_cnn_minutes if model == "where-cnn" and args.where_cnn_minutes else args.minutes
    if args.reuse and (out / "model_card.json").exists():
        return {"reused": True}
    t0 = time.perf_counter()
    summary = run_training(
        TrainOptions(
            data=str(args.data),
            out=str(out),
            model=model,
            minutes=minutes,
            protocol=protocol,
            track=track,
            workers=args.workers,
            device=args.device,
            overrides=args.set,
            seed=args.seed,
            progress=not args.quiet,
            **args.train,
        )
    )
    return {"minutes": minutes, "seconds": round(time.perf_counter() - t0, 1), "summary": summary}


def run(args: argparse.Namespace) -> dict[str, Any]:
    from rich.console import Console
    from wherecnn.evaluate.baselines import HANDCRAFTED, fit_baseline
    from wherecnn.evaluate.evaluation import city_sets, evaluate_embedder
    from wherecnn.models.embedder import Embedder

    console = Console()
    rows: list[dict[str, Any]] = []
    for track in args.tracks:
        for protocol in args.protocols:
            sets = city_sets(args.data, protocol=protocol, track=track, max_gallery=args.max_gallery)
            gallery_sizes = {s.city: len(s.gallery) for s in sets}
            console.rule(f"{track} · {protocol}: {len(sets)} cities, galleries {gallery_sizes}")
            combo: list[dict[str, Any]] = []
            for kind in args.baselines:
                t0 = time.perf_counter()
                base = fit_baseline(
                    kind,
                    args.data,
                    protocol=protocol,
                    track=track,
                    max_pairs=args.baseline_pairs,
                    weights=args.deep_weights if kind == "deep-generic" else None,
                )
                ev = evaluate_embedder(base, sets, name=f"baseline-{kind}", protocol=protocol, track=track)
                combo.append(
                    {
                        "features": kind,
                        "family": "hand-crafted" if kind in HANDCRAFTED else "generic deep",
                        "model_id": base.model_id,
                        "overall": ev.overall,
                        "cities": ev.to_json()["cities"],
                        "seconds": round(time.perf_counter() - t0, 1),
                    }
                )
                console.print(f"  baseline {kind}: R@1 {ev.overall['R@1']:.3f} AP {ev.overall['AP']:.4f}")
            for model in args.models:
                ckpt = Path(args.work) / f"{model}-{track}-{protocol}"
                training = train_model(args, model, track, protocol, ckpt)
                if not (ckpt / "model.pt").exists():  # e.g. too few pairs for one batch on a tiny world
                    console.print(
                        f"  [red]{model}: training wrote no checkpoint[/red] ({training.get('summary')})"
                    )
                    rows.append(
                        {
                            "track": track,
                            "protocol": protocol,
                            "features": model,
                            "family": "learned",
                            "error": "training wrote no checkpoint",
                            "training": training,
                        }
                    )
                    continue
                emb = Embedder.from_checkpoint(str(ckpt), device=args.device, tta=args.tta)
                ev = evaluate_embedder(
                    emb,
                    sets,
                    name=model,
                    protocol=protocol,
                    track=track,
                    gallery_centres=args.gallery_centres,
                    gallery_scales=args.gallery_scales,
                    view_pool=args.view_pool,
                    hub_correction=args.hub_correction,
                )
                combo.append(
                    {
                        "features": model,
                        "family": "learned",
                        "model_id": emb.model_id,
                        "checkpoint": str(ckpt),
                        "training": training,
                        "train_config": _card(ckpt),
                        "gallery_centres": ev.gallery_centres,
                        "gallery_scales": list(ev.gallery_scales),
                        "view_pool": ev.view_pool,
                        "hub_correction": ev.hub.as_dict(),
                        "tta": emb.model.config.get("tta") or {},
                        "test_views": len(emb.model.test_views()),
                        "overall": ev.overall,
                        "cities": ev.to_json()["cities"],
                    }
                )
                console.print(f"  {model}: R@1 {ev.overall['R@1']:.3f} AP {ev.overall['AP']:.4f}")
                if args.save_embeddings:
                    save_embeddings(args.save_embeddings / f"{model}-{track}-{protocol}", ev, sets)
            best_hand = max(
                (r["overall"]["AP"] for r in combo if r["family"] == "hand-crafted"), default=None
            )
            for r in combo:
                r.update(track=track, protocol=protocol)
                r["AP_ratio_to_best_handcrafted"] = r["overall"]["AP"] / best_hand if best_hand else None
                if r["features"] == "dual-cpu":
                    r["targets"] = _check_targets(track, protocol, r)
            rows.extend(combo)
    return {"rows": rows}


def save_embeddings(prefix: Path, ev: Any, sets: Any) -> None:
    """Each city's embeddings as scored, for re-scoring offline: ``<prefix>-<city>.npz`` with ``query``
    (Q, d), ``gallery`` (N, d) or (N, V, d), ``positives`` and ``semi_positives`` (gallery indices). With
    the hub correction on, the last coordinate carries it (1 for a query, -weight x hubness for a view)."""
    import numpy as np

    prefix.parent.mkdir(parents=True, exist_ok=True)
    for outcome, cs in zip(ev.cities, sets, strict=True):
        semis = np.empty(len(cs.queries), dtype=object)  # ragged: one array per query
        for i in range(len(semis)):
            semis[i] = np.asarray(cs.semi_positives[i] if cs.semi_positives else [], dtype=np.int64)
        np.savez(
            f"{prefix}-{outcome.city}.npz",
            query=outcome.query_emb,
            gallery=outcome.gallery_emb,
            positives=cs.positives,
            semi_positives=semis,
        )


def _check_targets(track: str, protocol: str, row: dict[str, Any]) -> dict[str, Any]:
    checks: dict[str, Any] = {}
    for metric, minimum in TARGETS.get((track, protocol), {}).items():
        value = row["overall"].get(metric)
        checks[f"{metric}>={minimum}"] = bool(value is not None and value >= minimum)
    ratio = row.get("AP_ratio_to_best_handcrafted")
    if ratio is not None:
        checks[f"AP_ratio>={AP_RATIO_TARGET}"] = bool(ratio >= AP_RATIO_TARGET)
    return checks


def print_table(rows: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Accuracy on the synthetic benchmark (mean over cities)")
    for col in (
        "track",
        "protocol",
        "features",
        "R@1",
        "R@5",
        "R@1%",
        "hit rate",
        "AP",
        "AP / best hand",
        "targets",
    ):
        table.add_column(col, justify="right")
    for r in rows:
        if "error" in r:
            table.add_row(r["track"], r["protocol"], r["features"], *["–"] * 6, r["error"])
            continue
        o = r["overall"]
        ratio = r.get("AP_ratio_to_best_handcrafted")
        targets = r.get("targets") or {}
        mark = " ".join(("✓ " if ok else "✗ ") + k for k, ok in targets.items())
        table.add_row(
            r["track"],
            r["protocol"],
            r["features"],
            f"{o['R@1']:.3f}",
            f"{o['R@5']:.3f}",
            f"{o['R@1%']:.3f}",
            f"{o['hit_rate']:.3f}",
            f"{o['AP']:.4f}",
            "–" if ratio is None else f"{ratio:.1f}×",
            mark,
        )
    Console(width=160).print(table)


def main() -> None:
    from wherecnn.evaluate.baselines import KINDS
    from wherecnn.evaluate.pipeline import EvaluateOptions
    from wherecnn.train.options import TrainOptions

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", type=Path, required=True, help="A synthetic world (`wherecnn synth --size small`)."
    )
    parser.add_argument("--minutes", type=float, default=15.0, help="Training budget per dual-cpu run.")
    parser.add_argument("--where-cnn-minutes", type=float, default=None, help="Budget per where-cnn run.")
    parser.add_argument("--models", type=_csv, default=["dual-cpu", "where-cnn"])
    parser.add_argument("--tracks", type=_csv, default=list(TRACKS))
    parser.add_argument("--protocols", type=_csv, default=list(PROTOCOLS))
    parser.add_argument("--baselines", type=_csv, default=list(KINDS))
    parser.add_argument("--baseline-pairs", type=int, default=EvaluateOptions.baseline_pairs)
    parser.add_argument("--deep-weights", default=None, help="Local ResNet-18 weights (else random init).")
    parser.add_argument("--max-gallery", type=int, default=None)
    parser.add_argument("--work", type=Path, default=Path("var/accuracy"), help="Checkpoints go here.")
    parser.add_argument(
        "--reuse", action="store_true", help="Evaluate existing checkpoints instead of training."
    )
    parser.add_argument("--workers", type=int, default=TrainOptions.workers)
    parser.add_argument("--device", default=TrainOptions.device)
    parser.add_argument("--seed", type=int, default=TrainOptions.seed)
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument(
        "--set",
        type=_override,
        action="append",
        default=[],
        help="Model config override KEY=JSON for the trained models, e.g. 'train={\"mine_every\":0}'.",
    )
    parser.add_argument(
        "--train",
        type=_override,
        action="append",
        default=[],
        help="Training option KEY=JSON (a `TrainOptions` field), e.g. fresh_places=1500 style_spread=1.5.",
    )
    parser.add_argument(
        "--tta",
        type=json.loads,
        default=None,
        help="Test-time views for the learned models, JSON (e.g. '{\"flip\": true, \"phases\": 2}', or '{}' "
        "for one view); default: each checkpoint config's.",
    )
    parser.add_argument(
        "--gallery-centres",
        type=int,
        default=None,
        help="offset: embed each gallery tile from K x K centres (as `wherecnn evaluate --gallery-centres`); "
        "default: each checkpoint config's.",
    )
    parser.add_argument(
        "--gallery-scales",
        type=_scales,
        default=None,
        help="offset: also cut those views at these ground scales, e.g. 1,0.85 (as `wherecnn evaluate "
        "--gallery-scales`); default: each checkpoint config's.",
    )
    parser.add_argument(
        "--view-pool",
        type=int,
        default=None,
        help="offset: score a tile by the mean of its P best views (as `wherecnn evaluate --view-pool`); "
        "default: each checkpoint config's.",
    )
    parser.add_argument(
        "--hub-correction",
        type=float,
        default=None,
        help="hub correction weight: each gallery view scored minus W times its hubness in the city's "
        "gallery (as `wherecnn evaluate --hub-correction`; 0: off); default: each checkpoint config's.",
    )
    parser.add_argument(
        "--save-embeddings",
        type=Path,
        default=None,
        help="Also write each learned model's per-city query and gallery embeddings (as scored) to "
        "DIR/<model>-<track>-<protocol>-<city>.npz, for re-scoring offline.",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    args.set = {k: v for item in args.set for k, v in item.items()}
    args.train = {k: v for item in args.train for k, v in item.items()}
    for name, values, allowed in (
        ("tracks", args.tracks, TRACKS),
        ("protocols", args.protocols, PROTOCOLS),
        ("baselines", args.baselines, KINDS),
    ):
        bad = [v for v in values if v not in allowed]
        if bad:
            parser.error(f"--{name}: unknown {bad}; expected some of {', '.join(allowed)}")
    if not (args.data / "pairs.parquet").exists():
        parser.error(
            f"--data {args.data}: no pairs.parquet (make one with `wherecnn synth --size small --out DIR`)"
        )

    t0 = time.perf_counter()
    result = run(args)
    print_table(result["rows"])
    payload = {
        "benchmark": "accuracy",
        "data": str(args.data.resolve()),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "seconds": round(time.perf_counter() - t0, 1),
        **result,
    }
    from wherecnn.evaluate.report import clean_json

    # rows of earlier runs (other tracks, protocols or models) stay; a re-measured row replaces its old one,
    # and each row keeps the settings of the run that measured it (the top-level ones are the latest run's)
    for row in payload["rows"]:
        row["settings"] = payload["settings"]
    if args.out.exists():
        key = lambda r: (r.get("track"), r.get("protocol"), r.get("features"))  # noqa: E731
        fresh = {key(r) for r in payload["rows"]}
        kept = [r for r in json.loads(args.out.read_text()).get("rows", []) if key(r) not in fresh]
        payload["rows"] = kept + payload["rows"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(clean_json(payload), indent=2, default=str) + "\n")
    print(f"wrote {args.out} ({payload['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
