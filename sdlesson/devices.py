"""Where the course runs, and which precision is actually fast there.

A choice of speed is made by what the machine does fast, never by the device type alone: bf16 halves the bytes
everywhere, but it is only *faster* where the processor computes in bf16 natively (CUDA GPUs from Ampere on, CPUs
with AVX-512 BF16 or AMX). On a laptop CPU with only AVX2 (most of them), bf16 is emulated by converting every
number back and forth, and a training step of the scene VAE takes 15-20x as long as in fp32. So:

    pick_device()            cuda, then mps, then cpu (or the device you name)
    fast_precision(device)   what `precision="auto"` means on that device: "bf16" | "fp16" | "fp32"
    autocast_dtype(p, dev)   the dtype torch.autocast runs with, None for fp32

A learner can always force a choice: `precision="bf16"` (or `--precision bf16`) is honoured as given.
"""

from __future__ import annotations

import functools
import os
import platform
import time

import torch

from .checks import check_device

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def pick_device(device=None) -> torch.device:
    """The given device, else the best available: cuda, then mps, then cpu."""
    if device is not None:
        return check_device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def cpu_has_native_bf16() -> bool:
    """True where this CPU computes bf16 in hardware *and* PyTorch and oneDNN are allowed to use it.

    Three things must agree: the processor has AVX-512 BF16 or AMX; PyTorch's kernels run at AVX-512 level
    (`ATEN_CPU_CAPABILITY=avx2` lowers it); oneDNN's ISA is not capped below bf16 (`ONEDNN_MAX_CPU_ISA=AVX2`).
    """
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False  # arm64 CPUs (Apple, Graviton): fp32 is the safe default; force bf16 to try it
    hardware = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    kernels = torch.backends.cpu.get_cpu_capability().upper().startswith("AVX512")
    isa_cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "ALL").upper()
    onednn = isa_cap == "ALL" or "BF16" in isa_cap or "AMX" in isa_cap
    return bool(hardware and kernels and onednn)


def bf16_step_ratio(batch: int = 16) -> float:
    """Seconds of a bf16-autocast training step of a small conv net over an fp32 one, on the CPU (the fastest of 4
    each: the first call warms oneDNN's kernel cache). About 0.5 where bf16 is native and fast, 5-20 where emulated."""
    gen = torch.Generator().manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(64, 64, 3, padding=1), torch.nn.SiLU(),
                              torch.nn.Conv2d(64, 64, 3, padding=1))
    x = torch.randn(batch, 64, 16, 16, generator=gen)

    def step_seconds(dtype) -> float:
        best = float("inf")
        for _ in range(4):
            start = time.perf_counter()
            with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
                loss = net(x).float().square().mean()
            loss.backward()
            best = min(best, time.perf_counter() - start)
        return best

    return step_seconds(torch.bfloat16) / step_seconds(None)


@functools.lru_cache(maxsize=None)
def cpu_bf16_is_faster() -> bool:
    """Native bf16 is not always a win for small models: measured once per process (about 0.2 s), and only where
    `cpu_has_native_bf16()`."""
    return cpu_has_native_bf16() and bf16_step_ratio() < 0.8  # a clear win, not noise


def fast_precision(device) -> str:
    """What `precision="auto"` picks on `device`: bf16 where it is native and fast, fp16 on CUDA without bf16,
    fp32 elsewhere (MPS, and every CPU where bf16 would be emulated)."""
    device = torch.device(device)
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "cpu":
        return "bf16" if cpu_bf16_is_faster() else "fp32"
    return "fp32"


def autocast_dtype(precision: str, device) -> torch.dtype | None:
    """The dtype for torch.autocast under `precision` on `device`; None means plain fp32."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        precision = fast_precision(device)
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def describe_cpu() -> str:
    """One line a benchmark can print: the kernel level PyTorch uses and whether bf16 is native here."""
    native = "native bf16" if cpu_has_native_bf16() else "no native bf16"
    return f"{torch.backends.cpu.get_cpu_capability()} kernels, {native}, {torch.get_num_threads()} threads"
