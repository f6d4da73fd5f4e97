"""The optimiser side: bf16 autocast where the hardware has it."""

from __future__ import annotations

import pytest
import torch
from wherecnn.train.optim import mixed_precision


def test_mixed_precision_is_bf16_on_cuda_and_on_cpus_with_native_bf16(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert mixed_precision(cuda, "auto") and not mixed_precision(cuda, "fp32")
    assert mixed_precision(cpu, "bf16") and not mixed_precision(cpu, "fp32")
    for native in (True, False):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda n=native: n, raising=False)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
        assert mixed_precision(cpu, "auto") is native
    with pytest.raises(ValueError, match="precision"):
        mixed_precision(cpu, "fp16")
