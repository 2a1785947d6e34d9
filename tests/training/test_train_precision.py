"""train.amp on CPU: bfloat16 autocast where the CPU computes bfloat16 in hardware, float32 elsewhere."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from seg_training.engine.distributed import DistInfo, autocast, autocast_enabled, cpu_has_native_bf16
from seg_training.engine.trainer import precision_of

CPU = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
PROBES = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")


def _cpu_with(monkeypatch: pytest.MonkeyPatch, native_bf16: bool) -> None:
    """Answer torch's CPU feature probes as a CPU with (or without) native bfloat16 would."""
    for name in PROBES:
        monkeypatch.setattr(torch.cpu, name, lambda: native_bf16, raising=False)


@pytest.mark.parametrize("native_bf16", [True, False])
def test_cpu_autocast_follows_native_bf16(monkeypatch, native_bf16):
    _cpu_with(monkeypatch, native_bf16)
    assert cpu_has_native_bf16() is native_bf16
    assert autocast_enabled(CPU.device, True) is native_bf16
    assert autocast_enabled(CPU.device, False) is False  # train.amp false always means float32
    conv = nn.Conv2d(3, 4, 3)
    with autocast(CPU, True):
        out = conv(torch.randn(1, 3, 8, 8))
    assert out.dtype == (torch.bfloat16 if native_bf16 else torch.float32)
    assert precision_of(autocast_enabled(CPU.device, True), CPU) == (
        "bfloat16 autocast" if native_bf16 else "float32"
    )


def test_probe_of_this_cpu_matches_its_flags():
    """The probe agrees with what the kernel reports for this machine's CPU (Linux only)."""
    try:
        flags = open("/proc/cpuinfo").read().split()
    except OSError:
        pytest.skip("no /proc/cpuinfo on this system")
    if not all(hasattr(torch.cpu, name) for name in PROBES):
        pytest.skip("this torch has no CPU bfloat16 probes")
    assert cpu_has_native_bf16() == ("avx512_bf16" in flags or "amx_bf16" in flags)
