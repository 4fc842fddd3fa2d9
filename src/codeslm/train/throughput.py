"""Model FLOPs per token and the hardware's peak, for model-FLOPs utilisation (MFU).

FLOPs follow the PaLM appendix: 6 per weight per token (forward and backward, the tied output
projection counted once, the embedding lookup free) plus 12 * layers * d_model * seq_len for
attention. The CPU peak is cores * clock * FLOPs per cycle of the widest unit the CPU has.
But: it measures nothing itself; the training loop and the benchmark time their own steps.
"""

from __future__ import annotations

import os
from pathlib import Path

# Dense bf16 tensor-core peaks of common GPUs, by a substring of the device name.
GPU_BF16_PEAK = {
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
    "L4": 121e12,
    "A10": 125e12,
    "4090": 165e12,
}


def flops_per_token(model, seq_len: int) -> float:
    config = model.config
    n_weights = sum(p.numel() for p in model.parameters())
    if not config.tie_word_embeddings:
        n_weights -= model.get_input_embeddings().weight.numel()
    return 6.0 * n_weights + 12.0 * config.num_hidden_layers * config.hidden_size * seq_len


def _cpu_flags_and_mhz() -> tuple[set[str], float]:
    flags: set[str] = set()
    mhz = 0.0
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
            elif line.startswith("cpu MHz") and not mhz:
                mhz = float(line.split(":", 1)[1])
    except OSError:
        pass
    return flags, mhz


def cpu_has_bf16() -> bool:
    """Whether the CPU multiplies bf16 in hardware (Intel AMX, or AVX-512 BF16 as on AMD Zen 4),
    where bf16 autocast pays: a micro training step (8 x 512 tokens, one thread) on AVX-512
    BF16 ran 1.45x faster than fp32 (2,430 vs 1,660 tokens/s), nano 1.3x."""
    flags = _cpu_flags_and_mhz()[0]
    return "amx_bf16" in flags or "avx512_bf16" in flags


def peak_flops(device: str, bf16: bool) -> float | None:
    """Theoretical peak FLOP/s of `device` at the precision used; None when unknown."""
    import torch

    if device.startswith("cuda"):
        name = torch.cuda.get_device_name(torch.device(device))
        return next((v for k, v in GPU_BF16_PEAK.items() if k in name), None) if bf16 else None
    flags, mhz = _cpu_flags_and_mhz()
    if not mhz:
        return None
    cores = (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    )
    cores = min(cores, torch.get_num_threads())
    if bf16 and "amx_bf16" in flags:
        per_cycle = 1024  # one AMX tile unit: 512 bf16 multiply-adds a cycle
    elif bf16 and "avx512_bf16" in flags:
        per_cycle = 128  # VDPBF16PS: 32 bf16 multiply-adds per 512-bit op, two units
    elif "avx512f" in flags:
        per_cycle = 64  # two 16-lane fp32 FMA units
    elif "avx2" in flags and "fma" in flags:
        per_cycle = 32
    else:
        per_cycle = 8
    return cores * mhz * 1e6 * per_cycle
