"""What an index run did: its summary, progress counters and bar, and its rejects file."""

from __future__ import annotations

import io
import json
import os
import threading
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# --------------------------------------------------------------------------------------------- results


@dataclass
class IndexSummary:
    """What a run did; printed and written to ``summary.json`` in the run folder."""

    manifest_tiles: int = 0
    already_present: int = 0
    embedded: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    points: int = 0
    seconds: float = 0.0
    tiles_per_s: float = 0.0
    version: str | None = None
    switched: bool = False
    up_to_date: bool = False
    engine: str = "plain"
    run_dir: str = ""
    rejects_file: str = ""
    model_id: str = ""

    @property
    def skipped_total(self) -> int:
        return int(sum(self.skipped.values()))

    @property
    def skipped_text(self) -> str:
        """The skips by reason, as people read them ("missing 3, unreadable 2"; "none")."""
        return ", ".join(f"{k} {v}" for k, v in self.skipped.items()) or "none"

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "skipped_total": self.skipped_total}


class Progress:
    """Thread-safe counters a rich progress bar polls (plain path) or a Ray actor mirrors (Ray path)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.embedded = 0
        self.skipped = 0

    def add(self, embedded: int, skipped: int) -> None:
        with self._lock:
            self.embedded += embedded
            self.skipped += skipped

    def get(self) -> tuple[int, int]:
        with self._lock:
            return self.embedded, self.skipped


def write_rejects(path: Path, rejects: Iterable[dict[str, Any]]) -> int:
    rows = sorted(rejects, key=lambda r: r["tile_id"])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as fh:
        for r in rows:
            fh.write(json.dumps(r) + "\n")
    os.replace(tmp, path)
    return len(rows)


# --------------------------------------------------------------------------------------------- reporting


def write_summary(run_path: Path, summary: IndexSummary) -> None:
    (run_path / "summary.json").write_text(json.dumps(summary.to_json(), indent=1))


class progress_bar:
    """A rich bar fed by a `Progress` from a background thread (Ray runs report through an actor)."""

    def __init__(self, console: Any, total: int, progress: Progress, enabled: bool, file: Path) -> None:
        self.console, self.total, self.progress, self.enabled = console, total, progress, enabled
        self.file = file
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _write(self, embedded: int, skipped: int) -> None:
        """``progress.json`` in the run folder: what a watcher (or a test that kills the job) reads."""
        tmp = self.file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"total": self.total, "embedded": embedded, "skipped": skipped}))
        os.replace(tmp, self.file)

    def __enter__(self) -> progress_bar:
        from contextlib import nullcontext

        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        show = self.enabled and self.total > 0
        bar = Progress(
            TextColumn("[bold]embedding tiles"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"), TimeRemainingColumn(), console=self.console, transient=False,
        )  # fmt: skip
        task = bar.add_task("embed", total=self.total, info="")

        def loop() -> None:
            with bar if show else nullcontext():
                while True:
                    done = self._stop.wait(0.1)
                    embedded, skipped = self.progress.get()
                    self._write(embedded, skipped)
                    if show:
                        bar.update(task, completed=embedded + skipped, info=f"skipped {skipped}")
                    if done:
                        return

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def print_summary(summary: IndexSummary, console: Any, title: str = "index") -> None:
    from rich.table import Table

    table = Table(title=f"wherecnn {title}", show_header=False)
    table.add_row("manifest tiles", str(summary.manifest_tiles))
    table.add_row("already present (resumed)", str(summary.already_present))
    table.add_row("embedded this run", str(summary.embedded))
    table.add_row("skipped", f"{summary.skipped_total} ({summary.skipped_text})")
    table.add_row("points in version", str(summary.points))
    table.add_row("tiles/s", f"{summary.tiles_per_s:.1f} ({summary.engine}, {summary.seconds:.1f} s)")
    table.add_row("version", f"{summary.version} ({'live' if summary.switched else 'not switched'})")
    table.add_row("rejects file", summary.rejects_file)
    console.print(table)


def skip_counts(rejects: Iterable[dict[str, Any]]) -> dict[str, int]:
    """Rejected tiles counted by reason, reasons in order."""
    return dict(sorted(Counter(r["reason"] for r in rejects).items()))


def rejects_of(path: str | Path) -> list[dict[str, Any]]:
    p = Path(path)
    if not p.exists():
        return []
    return [json.loads(line) for line in io.StringIO(p.read_text()) if line.strip()]
