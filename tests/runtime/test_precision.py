"""`precision: auto` on a CPU follows what the CPU measures, not what its flags claim (issue: a CPU listing a
bf16 flag but multiplying bf16 slower than fp32 made the demo take 1,093 s)."""

import pytest
import torch

from t1.runtime import device


@pytest.fixture(autouse=True)
def fresh(monkeypatch):
    monkeypatch.setattr(device, "_CPU_BF16", None)
    monkeypatch.delenv("T1_CPU_BF16", raising=False)


@pytest.mark.parametrize("fp32, bf16, want", [(6e-3, 1e-3, "bf16"), (2.3e-3, 1e-3, "bf16"),
                                              (1e-3, 3e-3, "fp32"), (1.2e-3, 1e-3, "fp32")])
def test_auto_picks_bf16_only_where_it_measures_faster(monkeypatch, fp32, bf16, want):
    """AMX-like (6×) and AVX512-BF16-like (2.3×) CPUs get bf16; an emulating CPU (3× slower) and one barely
    faster (1.2×, under BF16_SPEEDUP) keep fp32 — whatever /proc/cpuinfo lists."""
    calls = []

    def timed(dtype, rounds=3):
        calls.append(dtype)
        return fp32 if dtype == torch.float32 else bf16

    monkeypatch.setattr(device, "matmul_seconds", timed)
    assert device.resolve_precision("auto", torch.device("cpu")) == want
    assert device.resolve_precision("auto", torch.device("cpu")) == want  # measured once per process
    assert len(calls) == 4 and set(calls) == {torch.float32, torch.bfloat16}
    assert device.resolve_precision("fp32", torch.device("cpu")) == "fp32"  # an explicit choice stands


def test_the_environment_decides_when_asked(monkeypatch):
    monkeypatch.setattr(device, "matmul_seconds", lambda dtype, rounds=3: pytest.fail("measured"))
    for value, want in (("1", "bf16"), ("0", "fp32")):
        monkeypatch.setenv("T1_CPU_BF16", value)
        assert device.resolve_precision("auto", torch.device("cpu")) == want


def test_the_measurement_runs_here():
    """The real timing on this CPU returns a positive duration for both dtypes (its verdict is this machine's,
    so nothing is asserted about which is faster)."""
    assert device.matmul_seconds(torch.float32, rounds=1) > 0 and device.matmul_seconds(torch.bfloat16, 1) > 0
