"""`--precision auto`: bf16 only where the device computes in it natively (CPU flags and
oneDNN's ISA cap mocked; CUDA capability mocked per device)."""

from __future__ import annotations

import platform
from pathlib import Path

import pytest
import torch

from augment.engines import precision
from augment.engines.precision import Precision, resolve_precision

CPU = torch.device("cpu")
SKYLAKE_SP = {"sse2", "avx2", "avx512f", "avx512bw", "avx512vl"}  # AVX-512, bf16 only emulated
ZEN4 = SKYLAKE_SP | {"avx512_bf16", "avx512_vnni"}
SAPPHIRE_RAPIDS = SKYLAKE_SP | {"amx_tile", "amx_bf16", "amx_int8"}
ZEN3 = {"sse2", "avx", "avx2", "fma"}


@pytest.mark.parametrize(
    ("flags", "expected"),
    [(SKYLAKE_SP, Precision.FP32), (ZEN4, Precision.BF16), (SAPPHIRE_RAPIDS, Precision.BF16), (ZEN3, Precision.FP32)],
    ids=["avx512-without-bf16", "avx512_bf16", "amx", "avx2-only"],
)
def test_auto_on_a_cpu_follows_its_bf16_instructions(
    monkeypatch: pytest.MonkeyPatch, flags: set[str], expected: Precision
) -> None:
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset(flags))
    # oneDNN's own check asks only for AVX-512, so it says yes on all of these.
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    assert resolve_precision("auto", CPU) is expected
    assert resolve_precision("fp32", CPU) is Precision.FP32 and resolve_precision("bf16", CPU) is Precision.BF16


def test_a_cpu_capped_below_bf16_by_onednn_runs_fp32(monkeypatch: pytest.MonkeyPatch) -> None:
    # CI's second pass sets ONEDNN_MAX_CPU_ISA=AVX2: a Zen 4 then emulates bf16 like an AVX2 CPU.
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset(ZEN4))
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert resolve_precision("auto", CPU) is Precision.FP32
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "avx512_core_bf16")
    assert resolve_precision("auto", CPU) is Precision.BF16
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)  # a torch without oneDNN bf16
    assert resolve_precision("auto", CPU) is Precision.FP32


def test_auto_on_a_gpu_reads_the_capability_of_the_device_it_runs_on(monkeypatch: pytest.MonkeyPatch) -> None:
    capability = {0: (7, 0), 1: (8, 0), 2: (9, 0)}  # V100, A100, H100 in one machine
    asked: list[torch.device] = []

    def get_device_capability(device: torch.device) -> tuple[int, int]:
        asked.append(device)
        return capability[device.index]

    monkeypatch.setattr(torch.cuda, "get_device_capability", get_device_capability)
    chosen = [resolve_precision("auto", torch.device(f"cuda:{i}")) for i in range(3)]
    assert chosen == [Precision.FP32, Precision.BF16, Precision.BF16]
    assert [d.index for d in asked] == [0, 1, 2]


@pytest.mark.skipif(
    platform.machine() not in ("x86_64", "AMD64") or not Path("/proc/cpuinfo").exists(), reason="x86 Linux only"
)
def test_the_flags_are_read_from_this_cpu() -> None:
    flags = precision.cpu_flags()
    assert "sse2" in flags  # every x86-64 CPU has it
    native = bool(flags & precision.BF16_CPU_FLAGS) and precision.onednn_bf16_allowed()
    assert precision.cpu_has_native_bf16() == native


def test_tf32_is_on_only_inside_augments_own_passes() -> None:
    # A library user's training after augment must find the settings it had: TF32 is a
    # context, not a switch left on (the flags exist without a GPU).
    from augment.engines.precision import tf32

    flags = torch.backends.cuda.matmul, torch.backends.cudnn
    before = tuple(f.allow_tf32 for f in flags)
    try:
        for f in flags:
            f.allow_tf32 = False
        with tf32(torch.device("cuda")):
            assert all(f.allow_tf32 for f in flags)
        assert not any(f.allow_tf32 for f in flags)
        with pytest.raises(RuntimeError), tf32(torch.device("cuda")):
            raise RuntimeError("out of memory")
        assert not any(f.allow_tf32 for f in flags)
        with tf32(torch.device("cpu")):  # nothing to do on a CPU
            assert not any(f.allow_tf32 for f in flags)
    finally:
        for f, value in zip(flags, before):
            f.allow_tf32 = value
