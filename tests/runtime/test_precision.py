"""`precision: auto` on a CPU follows what the CPU measures, not what its flags claim (issue: a CPU listing a
bf16 flag but multiplying bf16 slower than fp32 made the demo take 1,093 s)."""

import pytest
import torch

from t1.runtime import device


@pytest.fixture(autouse=True)
def fresh(monkeypatch, tmp_path):
    monkeypatch.setattr(device, "_CPU_BF16", None)
    monkeypatch.delenv("T1_CPU_BF16", raising=False)
    monkeypatch.setenv("T1_CACHE_DIR", str(tmp_path / "cache"))  # nothing remembered from this machine


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
    assert len(calls) == 6 and calls[:2] == [torch.float32, torch.bfloat16]  # in turns
    assert device.resolve_precision("fp32", torch.device("cpu")) == "fp32"  # an explicit choice stands


def test_the_verdict_is_remembered_per_machine(monkeypatch, tmp_path):
    """A later process on the same machine reads the verdict instead of timing again (a busy moment must not
    change a run's precision, hence its numbers); an unreadable record is measured again and replaced."""
    monkeypatch.setattr(device, "matmul_seconds", lambda dtype, rounds=3: 1e-3 if dtype == torch.float32 else 4e-3)
    assert device.cpu_bf16_faster() is False
    [record] = (tmp_path / "cache" / "cpu_bf16").iterdir()
    monkeypatch.setattr(device, "_CPU_BF16", None)  # a new process, and now the timing would say bf16
    monkeypatch.setattr(device, "matmul_seconds", lambda dtype, rounds=3: 4e-3 if dtype == torch.float32 else 1e-3)
    assert device.cpu_bf16_faster() is False
    record.write_text("{not json")
    monkeypatch.setattr(device, "_CPU_BF16", None)
    assert device.cpu_bf16_faster() is True and '"bf16": true' in record.read_text()


def test_the_environment_decides_when_asked(monkeypatch):
    monkeypatch.setattr(device, "matmul_seconds", lambda dtype, rounds=3: pytest.fail("measured"))
    for value, want in (("1", "bf16"), ("0", "fp32")):
        monkeypatch.setenv("T1_CPU_BF16", value)
        assert device.resolve_precision("auto", torch.device("cpu")) == want


def test_the_measurement_runs_here():
    """The real timing on this CPU returns a positive duration for both dtypes (its verdict is this machine's,
    so nothing is asserted about which is faster)."""
    assert device.matmul_seconds(torch.float32, rounds=1) > 0 and device.matmul_seconds(torch.bfloat16, 1) > 0
