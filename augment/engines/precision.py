"""Mixed precision: which dtype a device should run the convolutions in.

The network runs in bf16/fp16; Grams and losses are always fp32 (see losses.py).
"""

from __future__ import annotations

from enum import Enum

import torch


class Precision(str, Enum):
    AUTO = "auto"
    FP32 = "fp32"
    BF16 = "bf16"
    FP16 = "fp16"


def cpu_has_native_bf16() -> bool:
    # Without native bf16 (AVX2 only) oneDNN emulates it: measured ~90x slower than fp32.
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: Precision | str, device: torch.device) -> Precision:
    precision = Precision(precision)
    if precision is not Precision.AUTO:
        return precision
    if device.type == "cuda":
        return Precision.BF16 if torch.cuda.is_bf16_supported() else Precision.FP16
    return Precision.BF16 if device.type == "cpu" and cpu_has_native_bf16() else Precision.FP32


HALF_DTYPES = {Precision.BF16: torch.bfloat16, Precision.FP16: torch.float16}


def use_channels_last(device: torch.device, precision: Precision) -> bool:
    """channels_last: faster with cuDNN, and with bf16 on CPU (measured 1.3x at 128 px);
    slower for fp32 on CPU (0.95x)."""
    return device.type == "cuda" or precision is not Precision.FP32


def enable_fast_fp32(device: torch.device) -> None:
    """TF32 for fp32 matmuls and convolutions on GPUs that have it (Ampere and newer)."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
