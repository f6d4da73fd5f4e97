"""Where a training process runs: the local loop or a Ray Train worker (rank, world size, device), how it
reports to Ray and how ranks agree on a decision."""

from __future__ import annotations

import sys
from typing import Any

import torch
import torch.distributed as dist


class RunContext:
    """Rank/world size/device/report for the local loop or a Ray Train worker."""

    def __init__(self, device: str) -> None:
        self.ray = False
        try:
            if "ray" not in sys.modules:  # a Ray Train worker has imported ray already; importing it is slow
                raise ImportError
            import ray.train

            ctx = ray.train.get_context()
            self.ray = ctx.get_world_size() >= 1 and dist.is_available() and dist.is_initialized()
        except Exception:  # not inside a Ray Train worker
            self.ray = False
        if self.ray:
            import ray.train.torch

            self.rank, self.world = dist.get_rank(), dist.get_world_size()
            self.device = ray.train.torch.get_device()
        else:
            self.rank, self.world = 0, 1
            self.device = torch.device(
                "cuda"
                if device == "auto" and torch.cuda.is_available()
                else ("cpu" if device == "auto" else device)
            )

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        if not self.ray:
            return
        import ray.train

        ckpt = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=ckpt)

    def agree(self, flag: bool) -> bool:
        """Rank 0's decision (e.g. the time budget ran out) broadcast to every rank."""
        if self.world == 1:
            return flag
        # on the run's device: NCCL (Ray Train on GPUs) has no CPU tensors
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.broadcast(t, src=0)
        return bool(t.item())
