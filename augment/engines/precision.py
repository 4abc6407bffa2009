"""Mixed precision: which dtype a device should run the convolutions in.

The network runs in bf16/fp16; Grams and losses are always fp32 (see losses.py).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from enum import Enum

import torch


class Precision(str, Enum):
    AUTO = "auto"
    FP32 = "fp32"
    BF16 = "bf16"
    FP16 = "fp16"


# x86 instructions that compute in bf16 (dot products into fp32). AVX-512 alone, which is
# all oneDNN's own check asks for, only converts: Skylake-SP to Ice Lake-SP Xeons emulate
# bf16, 3-4x slower than fp32, and AVX2-only CPUs ~90x slower (measured).
BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
# ONEDNN_MAX_CPU_ISA values that keep oneDNN off those instructions even where the CPU has them.
ONEDNN_ISAS_WITHOUT_BF16 = frozenset(
    {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI"}
)


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux lists them in /proc/cpuinfo; empty elsewhere."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                if key.strip() == "flags":
                    return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


def onednn_bf16_allowed() -> bool:
    """Whether this torch's oneDNN may use bf16 instructions: built in, and not capped below
    them by ONEDNN_MAX_CPU_ISA (as CI does to take the AVX2 code paths)."""
    cap = (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "").strip().upper()
    if cap in ONEDNN_ISAS_WITHOUT_BF16:
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def cpu_has_native_bf16() -> bool:
    """bf16 convolutions run on bf16 instructions here, not emulated."""
    return bool(cpu_flags() & BF16_CPU_FLAGS) and onednn_bf16_allowed()


def cuda_has_native_bf16(device: torch.device) -> bool:
    """Compute capability 8.0 (Ampere) or newer on ``device`` itself; torch's own
    is_bf16_supported() also counts the emulated bf16 of older cards."""
    major, _ = torch.cuda.get_device_capability(device)
    return major >= 8


def resolve_precision(precision: Precision | str, device: torch.device) -> Precision:
    """``auto``: bf16 where the device computes in it natively, else fp32 (never fp16: its
    range needs loss scaling, which GatysBatcher does when asked for fp16)."""
    precision = Precision(precision)
    if precision is not Precision.AUTO:
        return precision
    if device.type == "cuda":
        native = cuda_has_native_bf16(device)
    else:
        native = device.type == "cpu" and cpu_has_native_bf16()
    return Precision.BF16 if native else Precision.FP32


HALF_DTYPES = {Precision.BF16: torch.bfloat16, Precision.FP16: torch.float16}


def use_channels_last(device: torch.device, precision: Precision) -> bool:
    """channels_last: faster with cuDNN, and with bf16 on CPU (measured 1.3x at 128 px);
    slower for fp32 on CPU (0.95x)."""
    return device.type == "cuda" or precision is not Precision.FP32


@contextlib.contextmanager
def tf32(device: torch.device, enabled: bool = True) -> Iterator[None]:
    """TF32 for fp32 matmuls and convolutions on GPUs that have it (Ampere and newer), for the
    computations inside only: the process's own settings (a library user's training) are put
    back after."""
    if device.type != "cuda":
        yield
        return
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
