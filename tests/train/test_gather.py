"""Distributed InfoNCE: two gloo workers with gradient-preserving all_gather reproduce the single-process
gradient on the global batch (after DDP's averaging)."""

from __future__ import annotations

import math
import os
import socket
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from wherecnn.train.losses import gather_with_grad, infonce_loss

    g_all, a_all = torch.load(Path(out) / "inputs.pt")
    per = g_all.shape[0] // world
    g = g_all[rank * per : (rank + 1) * per].clone().requires_grad_(True)
    a = a_all[rank * per : (rank + 1) * per].clone().requires_grad_(True)
    loss = infonce_loss(gather_with_grad(g), gather_with_grad(a), torch.tensor(math.log(1 / 0.07)))
    loss.backward()
    # DDP averages parameter gradients over workers; do the same to the feature gradients
    torch.save((g.grad / world, a.grad / world, float(loss.detach())), Path(out) / f"grad{rank}.pt")
    dist.destroy_process_group()
    # torch 2.14 sometimes aborts in a C++ destructor at interpreter exit after a distributed backward
    # ("terminate called without an active exception", ~1 run in 5 here), after all the work is done and
    # saved; leave without running the exit handlers so the spawn sees a clean exit code
    os._exit(0)


def test_two_workers_match_the_global_batch_gradient(tmp_path: Path) -> None:
    from wherecnn.train.losses import infonce_loss

    torch.manual_seed(0)
    g = torch.nn.functional.normalize(torch.randn(8, 16), dim=1)
    a = torch.nn.functional.normalize(g + 0.5 * torch.randn(8, 16), dim=1)
    torch.save((g, a), tmp_path / "inputs.pt")
    mp.spawn(_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    gr, ar = g.clone().requires_grad_(True), a.clone().requires_grad_(True)
    loss = infonce_loss(gr, ar, torch.tensor(math.log(1 / 0.07)))
    value = float(loss.detach())
    loss.backward()
    parts = [torch.load(tmp_path / f"grad{r}.pt") for r in range(2)]
    assert abs(parts[0][2] - value) < 1e-5 and abs(parts[1][2] - value) < 1e-5
    # each worker's rows get (after averaging) exactly the single-process gradient of the global loss
    assert torch.allclose(torch.cat([p[0] for p in parts]), gr.grad, atol=1e-6)
    assert torch.allclose(torch.cat([p[1] for p in parts]), ar.grad, atol=1e-6)
