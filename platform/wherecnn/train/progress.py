"""What a training run shows while it runs: a rich progress bar on rank 0, else plain lines (logs, Ray
workers, ``--no-progress``), and one line per epoch."""

from __future__ import annotations

from typing import Any


class TrainProgress:
    """rich progress on rank 0: loss, pairs/s and the latest validation R@1."""

    def __init__(
        self, *, enabled: bool, total: int | None, budget_s: float | None, rank0: bool = True
    ) -> None:
        self.enabled, self.total, self.budget_s, self.rank0 = enabled, total, budget_s, rank0
        self._p: Any = None

    def start(self, step: int, elapsed: float) -> None:
        if not self.enabled:
            return
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self._p = Progress(
            TextColumn("[bold]train[/] epoch {task.fields[epoch]}"),
            BarColumn(),
            TextColumn("loss {task.fields[loss]}  {task.fields[rate]} pairs/s  R@1 {task.fields[r1]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        )
        total = self.budget_s if self.budget_s is not None else self.total
        self._task = self._p.add_task(
            "train",
            total=total,
            completed=elapsed if self.budget_s else step,
            epoch=0,
            loss="-",
            rate="-",
            r1="-",
        )
        self._p.start()

    def update(
        self, step: int, elapsed: float, epoch: int, loss: float, rate: float, r1: float | None
    ) -> None:
        if self._p is None:
            if self.rank0 and step % 50 == 0:
                print(f"step {step}: loss {loss:.4f}  {rate:.0f} pairs/s  ({elapsed:.0f} s)", flush=True)
            return
        self._p.update(
            self._task,
            completed=min(elapsed, self.budget_s) if self.budget_s else step,
            epoch=epoch + 1,
            loss=f"{loss:.4f}",
            rate=f"{rate:.0f}",
            r1="-" if r1 is None else f"{r1:.3f}",
        )

    def epoch_done(self, metrics: dict[str, Any]) -> None:
        """One line per epoch: in the progress display, or plain (logs, Ray workers, --no-progress)."""
        val = metrics.get("val", {})
        line = (
            f"epoch {metrics['epoch']}: loss {metrics['loss']:.4f}  T {metrics['temperature']:.3f}  "
            f"{metrics['pairs_per_s']:.0f} pairs/s  val R@1 {val.get('R@1', float('nan')):.3f} "
            f"R@5 {val.get('R@5', float('nan')):.3f}  ({metrics['elapsed_s']:.0f} s)"
        )
        if self._p is not None:
            self._p.console.log(line)
        elif self.rank0:
            print(line, flush=True)

    def stop(self) -> None:
        if self._p is not None:
            self._p.stop()
