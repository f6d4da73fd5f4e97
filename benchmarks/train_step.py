"""Training-step throughput: bf16 autocast against fp32, same model, same batch, same process.

`wherecnn train` trains under bf16 autocast where `train.precision` "auto" says so (CUDA, and CPUs with
native bf16 arithmetic: AVX512-BF16 or AMX); the heads, the loss, validation and embedding stay fp32. This
measures one optimiser step (forward both branches, the model's loss, backward, the optimiser) at the model's
training batch: `dual-cpu` for the 8-column model (aligned, offset) and the photo track's 16-column one, and
any other registered model on `aligned` (``--models``). fp32 and bf16 alternate in rounds and each keeps its
best round (the machine is shared; load drifts); the ratio is bf16 / fp32.

    flock /tmp/wherecnn-heavy.lock .venv/bin/python benchmarks/train_step.py [--steps 6 --rounds 3]
    python benchmarks/train_step.py --device cuda --models dual-cpu,dual-resnet,where-cnn --steps 30

Writes benchmarks/results/train_step.json (train_step-cuda.json on a GPU) and prints a table.
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


def pairs_per_s(model: Any, batch: int, bf16: bool, steps: int, device: torch.device) -> float:
    from wherecnn.train.losses import make_loss

    gen = torch.Generator().manual_seed(0)
    ground = torch.randn(batch, 3, *model.ground_size, generator=gen).to(device)
    aerial = torch.randn(batch, 3, *model.aerial_size, generator=gen).to(device)
    loss_fn = make_loss(model.config)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    model.train()

    def sync() -> None:  # CUDA runs asynchronously: time finished work only
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            g, a = model(ground, aerial)
        loss = loss_fn(g.float(), a.float(), model)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()  # warm-up: oneDNN / cuDNN pick their kernels
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return batch * steps / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    parser.add_argument("--models", default="dual-cpu", help="comma-separated registered model names")
    parser.add_argument("--batch", type=int, default=None, help="default: each model's training batch")
    parser.add_argument("--out", default=None, help="default: results/train_step[-cuda].json")
    args = parser.parse_args()
    device = torch.device(args.device)
    suffix = "" if device.type == "cpu" else f"-{device.type}"
    out = args.out or str(Path(__file__).parent / "results" / f"train_step{suffix}.json")

    from wherecnn.models import build_model
    from wherecnn.train.optim import mixed_precision

    torch.manual_seed(0)
    rows = []
    cases = [
        (name, track)
        for name in args.models.split(",")
        for track in (("aligned", "photo") if name == "dual-cpu" else ("aligned",))
    ]
    for name, track in cases:
        model = build_model(name, track=track).place(device)  # as `wherecnn train` places it
        batch = args.batch or int(model.config["train"]["batch_size"])
        best = {False: 0.0, True: 0.0}
        for _ in range(args.rounds):
            for bf16 in (False, True):
                best[bf16] = max(best[bf16], pairs_per_s(model, batch, bf16, args.steps, device))
        shape = "×".join(map(str, model.ground_size))
        rows.append(
            {
                "model": (
                    f"dual-cpu ({track}: {model.ground_size[1] // model.bearing_column_px} columns)"
                    if name == "dual-cpu"
                    else f"{name} (ground {shape})"
                ),
                "batch": batch,
                "fp32_pairs_per_s": round(best[False], 1),
                "bf16_pairs_per_s": round(best[True], 1),
                "ratio": round(best[True] / best[False], 2),
            }
        )
    result: dict[str, Any] = {
        "benchmark": "train_step",
        "auto_precision_here": "bf16" if mixed_precision(device, "auto") else "fp32",
        "machine": {
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },
        "steps": args.steps,
        "rounds": args.rounds,
        "rows": rows,
    }
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(result, indent=2))

    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"Training step on {result['machine']['device']}, pairs/s "
        f"(train.precision auto here: {result['auto_precision_here']})"
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
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
