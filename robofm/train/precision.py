"""`trainer.precision=auto`: bf16 autocast where the device runs it faster, fp32 elsewhere, decided once at start.

A CUDA device runs bf16 when it supports it natively. A CPU runs bf16 only with bf16 matrix units (AMX-BF16 or
AVX512-BF16 in its flags) and only when a quick measurement, bf16 against fp32 matmuls at the model's width,
shows bf16 at least MIN_CPU_SPEEDUP times faster: some CPUs with AVX512-BF16 run bf16 slower than fp32, and
without the units bf16 is emulated. The choice is a pure function of what was read and measured
(`choose_precision`), so it is tested without timing."""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from robofm.errors import UsageError

PRECISIONS = ("auto", "fp32", "bf16")
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")  # the /proc/cpuinfo names of the bf16 matrix units
MIN_CPU_SPEEDUP = 1.2  # autocast's casts and the ops it leaves in fp32 eat part of a matmul speedup


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The feature flags of the first CPU in /proc/cpuinfo (empty where it cannot be read, e.g. not on Linux)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return set()
    line = next((ln for ln in text.splitlines() if ln.startswith(("flags", "Features"))), "")
    return set(line.partition(":")[2].split())


def bf16_matmul_speedup(dim: int, timings: int = 5, budget_s: float = 0.5) -> float:
    """How many times faster an [N, dim] @ [dim, dim] matmul runs in bf16 than in fp32 on the CPU: the best of up
    to `timings` each, fp32 and bf16 alternating so that a change of load hits both, stopping after two once
    `budget_s` is spent. N makes one matmul ~0.5 GFLOP (at least 512 rows): smaller ones are ruled by thread
    wake-ups and by other jobs on the cores."""
    rows = min(max(512, round(5e8 / (2 * dim * dim))), 65536)
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(rows, dim, generator=g), torch.randn(dim, dim, generator=g)
    pairs = {torch.float32: (x, w), torch.bfloat16: (x.bfloat16(), w.bfloat16())}
    best = dict.fromkeys(pairs, math.inf)
    deadline = time.perf_counter() + budget_s
    with torch.no_grad():
        for a, b in pairs.values():  # warm up: the first call of each dtype picks and packs its kernels
            a @ b
        for i in range(timings):
            for dtype, (a, b) in pairs.items():
                start = time.perf_counter()
                a @ b
                best[dtype] = min(best[dtype], time.perf_counter() - start)
            if i >= 1 and time.perf_counter() > deadline:
                break
    return best[torch.float32] / best[torch.bfloat16]


def choose_precision(
    device_type: str, *, cuda_bf16: bool = False, cpu_flags: set[str] = frozenset(), bf16_speedup: float | None = None
) -> tuple[str, str]:
    """What `auto` resolves to, and why: ("bf16" | "fp32", "bf16: ..." | "fp32: ...").

    cuda_bf16: the CUDA device supports bf16 natively; cpu_flags: the CPU's feature flags; bf16_speedup: the
    measured bf16/fp32 matmul speedup on the CPU (None: not measured)."""
    if device_type == "cuda":
        if cuda_bf16:
            return "bf16", "bf16: the CUDA device supports bf16"
        return "fp32", "fp32: the CUDA device has no native bf16"
    units = [f for f in BF16_CPU_FLAGS if f in cpu_flags]
    if not units:
        return "fp32", f"fp32: no bf16 matrix units (the CPU has neither {' nor '.join(BF16_CPU_FLAGS)})"
    has = f"the CPU has {' and '.join(units)}"
    if bf16_speedup is None:
        return "fp32", f"fp32: {has}, but bf16 was not measured"
    if bf16_speedup < MIN_CPU_SPEEDUP:
        return "fp32", f"fp32: {has}, but bf16 matmul is only {bf16_speedup:.1f}x fp32 (< {MIN_CPU_SPEEDUP}x)"
    return "bf16", f"bf16: {has}, bf16 matmul {bf16_speedup:.1f}x fp32"


def resolve_precision(precision: str, device: torch.device, dim: int) -> tuple[str, str]:
    """trainer.precision as it runs on `device` for a model of width `dim`: ("fp32" | "bf16", reason). `auto`
    reads the device and, on a CPU with bf16 units, measures matmuls at that width (well under a second)."""
    if precision not in PRECISIONS:
        raise UsageError(f"trainer.precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if precision != "auto":
        return precision, f"{precision}: set by trainer.precision"
    if device.type == "cuda":
        return choose_precision("cuda", cuda_bf16=torch.cuda.is_bf16_supported(including_emulation=False))
    flags = cpu_flags()
    measured = bf16_matmul_speedup(dim) if any(f in flags for f in BF16_CPU_FLAGS) else None
    return choose_precision(device.type, cpu_flags=flags, bf16_speedup=measured)
