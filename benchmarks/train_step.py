"""Training-step throughput: bf16 autocast against fp32, same model, same batch, same process.

`wherecnn train` trains under bf16 autocast where `train.precision` "auto" says so (CUDA, and CPUs with
native bf16 arithmetic: AVX512-BF16 or AMX); the heads, the loss, validation and embedding stay fp32. This
measures one optimiser step (forward both branches, symmetric InfoNCE, backward, Adam) of `dual-cpu` at its
training batch, for the 8-column model (aligned, offset) and the photo track's 16-column one. fp32 and bf16
alternate in rounds and each keeps its best round (the machine is shared; load drifts); the ratio is
bf16 / fp32.

    flock /tmp/wherecnn-heavy.lock .venv/bin/python benchmarks/train_step.py [--steps 6 --rounds 3]

Writes benchmarks/results/train_step.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch


def pairs_per_s(model: Any, batch: int, bf16: bool, steps: int) -> float:
    from wherecnn.train.losses import make_loss

    gen = torch.Generator().manual_seed(0)
    ground = torch.randn(batch, 3, *model.ground_size, generator=gen)
    aerial = torch.randn(batch, 3, *model.aerial_size, generator=gen)
    loss_fn = make_loss(model.config)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    model.train()

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            g, a = model(ground, aerial)
        loss = loss_fn(g.float(), a.float(), model)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()  # warm-up: oneDNN picks its kernels
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * steps / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "train_step.json"))
    args = parser.parse_args()

    from wherecnn.models import build_model
    from wherecnn.train.loop import mixed_precision

    torch.manual_seed(0)
    rows = []
    for track in ("aligned", "photo"):
        model = build_model("dual-cpu", track=track)
        batch = int(model.config["train"]["batch_size"])
        best = {False: 0.0, True: 0.0}
        for _ in range(args.rounds):
            for bf16 in (False, True):
                best[bf16] = max(best[bf16], pairs_per_s(model, batch, bf16, args.steps))
        rows.append(
            {
                "model": f"dual-cpu ({track}: {model.ground_size[1] // model.bearing_column_px} columns)",
                "batch": batch,
                "fp32_pairs_per_s": round(best[False], 1),
                "bf16_pairs_per_s": round(best[True], 1),
                "ratio": round(best[True] / best[False], 2),
            }
        )
    result: dict[str, Any] = {
        "benchmark": "train_step",
        "auto_precision_here": "bf16" if mixed_precision(torch.device("cpu"), "auto") else "fp32",
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },
        "steps": args.steps,
        "rounds": args.rounds,
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))

    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"Training step, pairs/s (train.precision auto here: {result['auto_precision_here']})"
    )
    for col in ("model", "batch", "fp32", "bf16", "bf16 / fp32"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            r["model"],
            str(r["batch"]),
            str(r["fp32_pairs_per_s"]),
            str(r["bf16_pairs_per_s"]),
            f"{r['ratio']}×",
        )
    Console().print(table)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
