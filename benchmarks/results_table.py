"""The README's results table, generated from `benchmarks/results/served-test-*.json` so it cannot drift.

Each file is one `benchmarks/served_accuracy.py --split test` run (one trained checkpoint, one seed): the
anywhere protocol through the product for one query kind (panorama or photo; heading given, off or unknown).
Only the runs of checkpoints trained as `make demo` trains its model count (the demo's track,
`wherecnn.demo.TRACK`, and config, `wherecnn.demo.model_digest`); the runs of candidates that were not
adopted, and of the defaults before them, stay beside them for docs/experiments.md.
One row per query kind and mode (protocol, city given or unknown) for the default retrieval settings; each
cell the mean over runs, with the range (min-max) when there are several.

    .venv/bin/python benchmarks/results_table.py            # print the table
    .venv/bin/python benchmarks/results_table.py --write    # and replace it in README.md (make results)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
README = ROOT / "README.md"
BEGIN, END = "<!-- results:begin (benchmarks/results_table.py) -->", "<!-- results:end -->"
COLUMNS = (
    ("hit@1", "hit@1", "{:.2f}"),
    ("hit@10", "hit@10", "{:.2f}"),
    ("median_error_m", "median error (mean of the cities')", "{:.0f} m"),
    ("within_10m", "within 10 m", "{:.2f}"),
    ("within_25m", "within 25 m", "{:.2f}"),
    ("city_right", "city right", "{:.2f}"),
    ("heading_error_median_deg", "heading error (median)", "{:.0f}°"),
)
# Query kinds in the order the table lists them: (kind, heading, field of view) -> the first column.
HEADINGS = {"given": "heading given", "noisy": "heading ±20° off", "unknown": "heading unknown"}
KINDS = {
    **{("panorama", h, None): f"panorama, {text}" for h, text in HEADINGS.items()},
    **{("photo", h, fov): f"{fov:g}° photo, {text}" for fov in (90.0, 60.0) for h, text in HEADINGS.items()},
}


def load_runs(
    results: Path = RESULTS, track: str | None = None, digest: str | None = None
) -> list[dict[str, Any]]:
    """Every `served_accuracy.py --split test` run (a file per checkpoint and query kind) of a checkpoint
    trained on ``track`` with the config of ``digest`` (`models.config_digest`; defaults: the demo's).

    A run's digest is taken now, from the config it recorded: under today's schema, so a setting added since
    (at a default that changes nothing) leaves an older run of the same recipe in the table."""
    from wherecnn import demo
    from wherecnn.models import config_digest

    track = track or demo.TRACK
    digest = digest or demo.model_digest()
    runs = [json.loads(p.read_text()) for p in sorted(results.glob("served-test-*.json"))]
    return [
        run
        for run in runs
        if run["checkpoint"].get("track") == track
        and "config" in run["checkpoint"]
        and config_digest(run["checkpoint"]["config"]) == digest
    ]


def _cell(values: list[float], fmt: str) -> str:
    if not values:
        return "—"
    mean = sum(values) / len(values)
    if len(values) == 1:
        return fmt.format(mean)
    return f"{fmt.format(mean)} ({fmt.format(min(values))}–{fmt.format(max(values))})"


def table(runs: list[dict[str, Any]]) -> str:
    """Markdown: a row per query kind and mode, the runs' mean (and range) in each cell, and a line saying on
    what."""
    modes: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for run in runs:
        kind = run.get("kind", "panorama")
        fov = run.get("fov_deg", 90.0 if kind == "photo" else None)  # the world's photos are 90 degrees
        kind = (kind, run.get("heading", "given"), None if fov is None else float(fov))
        for row in run["rows"]:
            if row["variant"] == "default" and not row.get("exact"):
                modes.setdefault((*kind, row["protocol"], row["city_given"]), []).append(row)
    order = list(KINDS)
    head = ["query", *(label for _, label, _ in COLUMNS), "query time p50"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for (kind, heading, fov, protocol, given), rows in sorted(
        modes.items(),
        key=lambda m: (
            order.index(m[0][:3]) if m[0][:3] in order else len(order),
            m[0][3] != "cross-area",
            not m[0][4],
        ),
    ):
        what = {"cross-area": "unseen cities", "same-area": "new places, seen cities"}.get(protocol, protocol)
        label = KINDS.get((kind, heading, fov), f"{kind}, heading {heading}")
        name = f"{label}: {what} ({protocol}), city " + ("given" if given else "unknown")
        cells = [
            _cell([r["overall"][key] for r in rows if key in r["overall"]], fmt) for key, _, fmt in COLUMNS
        ]
        ms = _cell([r["search_ms"]["p50"] for r in rows], "{:.0f} ms")
        lines.append("| " + " | ".join([name, *cells, ms]) + " |")
    lines.append("")
    lines.append(_provenance(runs))
    return "\n".join(lines)


def _provenance(runs: list[dict[str, Any]]) -> str:
    if not runs:
        return "No runs yet: `benchmarks/served_accuracy.py --split test` writes them."
    ck = list({json.dumps(r["checkpoint"], sort_keys=True): r["checkpoint"] for r in runs}.values())
    cpus = sorted({f"{r['machine']['cpu']}{' with AVX512-BF16' if r['machine'].get('avx512_bf16') else ''}"
                   for r in runs})  # fmt: skip
    epochs = ", ".join(str(c.get("epochs")) for c in ck)
    seeds = ", ".join(str(c.get("seed")) for c in ck)
    # each run's budget: its minutes, or its epochs where it was trained by epochs
    budgets = [f"{c['minutes']:g} minutes" if c.get("minutes") else f"{c.get('epochs')} epochs" for c in ck]
    budget = budgets[0] if len(set(budgets)) == 1 else ", ".join(budgets)
    queries = runs[0].get("per_city")
    return (
        f"{len(ck)} run(s) (seeds {seeds}): `dual-cpu`, {ck[0].get('track')} track, trained {budget} on 2 "
        f"cores of {', '.join(cpus)} ({ck[0].get('precision')}; {epochs} epochs); {queries} held-out places "
        "a city; query time in process, one query at a time."
    )


def replace_in_readme(text: str, readme: Path = README) -> bool:
    """Put ``text`` between the README's markers; True when the README changed."""
    old = readme.read_text()
    if BEGIN not in old or END not in old:
        raise SystemExit(f"{readme}: no {BEGIN} ... {END} markers")
    a, b = old.index(BEGIN) + len(BEGIN), old.index(END)
    new = old[:a] + "\n" + text + "\n" + old[b:]
    if new != old:
        readme.write_text(new)
    return new != old


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--write", action="store_true", help="replace the table in README.md")
    args = p.parse_args()
    text = table(load_runs())
    print(text)
    if args.write:
        print(
            "README.md " + ("updated" if replace_in_readme(text) else "already up to date"), file=sys.stderr
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
