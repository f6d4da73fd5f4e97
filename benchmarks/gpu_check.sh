#!/usr/bin/env bash
# GPU checks for `wherecnn train` / `evaluate` on a CUDA machine (none of this runs in CI: no GPU there).
#
#   bash benchmarks/gpu_check.sh WORLD OUT_DIR      # WORLD: a world from `wherecnn synth --size tiny`
#   DEVICE=cpu STEPS=1 MODELS=where-cnn bash benchmarks/gpu_check.sh WORLD OUT_DIR   # rehearse it here (no NCCL step)
#
# 1. NCCL: rank 0's "stop now" broadcast (`RunContext.agree`) and the embedding all-gather on an NCCL group,
#    the backend Ray Train uses on GPUs (one GPU here: a group of one, collectives still dispatched).
# 2. benchmarks/train_step.py on the GPU: bf16 autocast against fp32 for dual-cpu, dual-resnet, where-cnn.
# 3. End to end on the GPU: train dual-cpu 2 epochs (bf16), resume to 3, evaluate (report) on the GPU;
#    embed the world on the GPU and on the CPU (a GPU-trained checkpoint must rank alike on a CPU-only
#    indexer); fresh places on a GPU run; dual-resnet and where-cnn for an epoch each.
# Everything lands in OUT_DIR (logs, metrics, train_step-cuda.json); the last line says PASS or FAIL.
set -uo pipefail
WORLD=${1:?world dir}
OUT_DIR=${2:?output dir}
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}
export PYTHONPATH="$PWD/platform${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 RAY_AUTH_MODE=disabled
mkdir -p "$OUT_DIR"
fail=0
step() { # step NAME CMD...: run, log to OUT_DIR/NAME.log, note the outcome
    local name=$1
    shift
    local t0=$SECONDS
    if "$@" >"$OUT_DIR/$name.log" 2>&1; then
        echo "ok   $name ($((SECONDS - t0)) s)"
    else
        echo "FAIL $name ($((SECONDS - t0)) s)"
        tail -25 "$OUT_DIR/$name.log"
        fail=1
    fi
}
wherecnn() { "$PY" -m wherecnn "$@"; }

if [ "$DEVICE" = cuda ]; then
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"

step nccl "$PY" - <<'EOF'
import torch
import torch.distributed as dist

from wherecnn.train.context import RunContext
from wherecnn.train.losses import gather_with_grad

dist.init_process_group("nccl", init_method="tcp://127.0.0.1:29517", rank=0, world_size=1)
try:
    dist.broadcast(torch.tensor([1.0]), src=0)
    print("a CPU tensor broadcast on NCCL worked")
except Exception as e:  # what `agree` did before it put its flag on the run's device
    print("a CPU tensor broadcast on NCCL fails:", type(e).__name__, str(e).splitlines()[0])
ctx = RunContext("cuda")
ctx.world = 2  # take the collective path
assert ctx.agree(True) is True and ctx.agree(False) is False
x = torch.randn(8, 4, device="cuda", requires_grad=True)
g = gather_with_grad(x)
g.sum().backward()
assert g.shape == (8, 4) and x.grad is not None
print("agree and gather_with_grad on NCCL: ok")
dist.destroy_process_group()
EOF
fi

step train_step "$PY" benchmarks/train_step.py --device "$DEVICE" --models "${MODELS:-dual-cpu,dual-resnet,where-cnn}" \
    --steps "${STEPS:-20}" --rounds 2 --out "$OUT_DIR/train_step-$DEVICE.json"
cat "$OUT_DIR/train_step.log"

CK=$OUT_DIR/ck
small=(--data "$WORLD" --device "$DEVICE" --no-progress --batch-size 16 --fresh-places 0)
step train "wherecnn" train "${small[@]}" --model dual-cpu --out "$CK/dual-cpu" --epochs 2
step resume "wherecnn" train "${small[@]}" --model dual-cpu --out "$CK/dual-cpu" --epochs 3 --resume
step evaluate "wherecnn" evaluate --data "$WORLD" --checkpoint "$CK/dual-cpu" --out "$OUT_DIR/report" \
    --device "$DEVICE" --no-baselines
step same_ranking "$PY" - "$WORLD" "$CK/dual-cpu" "$DEVICE" <<'EOF'
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from wherecnn.models.embedder import Embedder

world, ck, device = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
card = json.loads((ck / "model_card.json").read_text())
print("trained on", card["train"]["device"], "in", card["train"]["precision"], "epochs", card["epoch"])
assert card["train"]["device"].startswith(device) and card["epoch"] == 3
tiles, captures = pd.read_parquet(world / "tiles.parquet"), pd.read_parquet(world / "captures.parquet")
aerial = [np.asarray(Image.open(world / u).convert("RGB")) for u in tiles["uri"]]
ground = [np.asarray(Image.open(world / u).convert("RGB")) for u in captures["uri"]]
heading, fov = captures["heading_deg"].tolist(), captures["fov_deg"].tolist()
emb = {}
for d in (device, "cpu"):
    e = Embedder.from_checkpoint(str(ck), device=d)
    emb[d] = e.ground(ground, heading_deg=heading, fov_deg=fov), e.aerial(aerial)
(g1, a1), (g2, a2) = emb[device], emb["cpu"]
top1 = ((g1 @ a1.T).argmax(1) == (g2 @ a2.T).argmax(1)).mean()
diff = max(np.abs(g1 - g2).max(), np.abs(a1 - a2).max())
print(f"{len(ground)} ground x {len(aerial)} aerial: max |emb {device} - emb cpu| {diff:.2e}, same top-1 {top1:.3f}")
# cuDNN convolutions run in TF32 by default: embeddings differ in the 3rd-4th digit, near-ties may flip
assert diff < 2e-2 and top1 >= 0.95, "a GPU-trained checkpoint embeds differently on the CPU"
EOF

step fresh "wherecnn" train --data "$WORLD" --device "$DEVICE" --no-progress --batch-size 32 --fresh-places 128 \
    --model dual-cpu --out "$CK/fresh" --epochs 2
step dual_resnet "wherecnn" train "${small[@]}" --model dual-resnet --out "$CK/dual-resnet" --epochs 1
step where_cnn "wherecnn" train "${small[@]}" --model where-cnn --out "$CK/where-cnn" --epochs 1
grep -h '"precision"' "$CK"/*/model_card.json 2>/dev/null | sort | uniq -c
if [ "$fail" = 0 ]; then echo PASS; else echo FAIL; fi
exit $fail
