"""Which device a part runs on, from --device, and how logs and run.json name it."""

from __future__ import annotations

import platform

import torch

from ..errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """auto, cpu, cuda or cuda:N; a GPU that this machine does not have is a ConfigError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device: unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (device.index or 0) >= count:
            have = f"{count} GPU(s)" if count else "no GPU"
            raise ConfigError(f"device {name}: this machine has {have} (use --device cpu or auto)")
    return device


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
