"""benchmarks/gpu_smoke.py on CPU (tiny shapes): every check runs or says it is skipped, and a failed or crashing
check makes the exit code 1, so a GPU run cannot report success by accident."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import gpu_smoke  # noqa: E402
import gpu_smoke_checks  # noqa: E402


def test_cpu_parts_run_and_pass(tmp_path, capsys):
    assert gpu_smoke.main(["--cpu", "--work", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    table = out[out.index("check "):]
    for check in gpu_smoke.CHECKS:
        assert f"\n{check} " in table, check
    assert "skipped (CUDA only)" in table and "skipped (needs ≥ 2 GPUs)" in table
    assert "FAIL" not in table and "all " in out
    assert table.count("activations ") == 2  # fp32 and bf16 weights: the per-layer constants hold on CPU


def test_a_failed_or_crashing_check_fails_the_run(monkeypatch, capsys):
    def broken(device):
        raise RuntimeError("no device\nmore")

    monkeypatch.setattr(gpu_smoke_checks, "environment", broken)
    monkeypatch.setattr(gpu_smoke_checks, "checkpoint_headroom",
                        lambda device: [gpu_smoke_checks.Row("checkpoint", "x", "1", "0", False)])
    assert gpu_smoke.main(["--cpu", "--only", "env,checkpoint"]) == 1
    out = capsys.readouterr().out
    assert "RuntimeError: no device" in out and "more" not in out
    assert "2 of 2 checks failed" in out
    with pytest.raises(SystemExit):
        gpu_smoke.main(["--cpu", "--only", "nope"])


def test_top_p_reference_matches_t1_on_a_hand_case():
    """The vLLM copy keeps the smallest set of top tokens with mass ≥ top_p (away from exact ties), like t1's
    processed_logp."""
    import torch

    from t1.rollout.logprobs import processed_logp

    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    for t in range(4):
        ours = processed_logp(logits, torch.tensor([t]), 1.0, 0.7)
        ref = gpu_smoke_checks.vllm_top_p_logp(logits, torch.tensor([t]), 1.0, 0.7)
        torch.testing.assert_close(ours, ref)
    assert gpu_smoke_checks.vllm_top_p_logp(logits, torch.tensor([2]), 1.0, 0.7).isinf().all()


def test_the_colocation_cycle_replays_the_estimates_sizes():
    """benchmarks/gpu_colocation.py allocates what t1's estimate counts for the 7B paper config: per-parameter
    shards summing to the policy's shard (and AdamW's two moments to its line), vLLM's share at 0.7 of the
    device; its CPU run completes with every wake-up served (the script works; the allocator needs CUDA)."""
    import gpu_colocation
    from t1.rollout import memory as M

    p = gpu_colocation.plan(M.GPU_80GB)
    assert sum(p["shards"]) == pytest.approx(p["static"][0], rel=1e-6)  # policy fp32 /8
    assert p["share"] == int(0.7 * M.GPU_80GB) and p["layers"] == 28
    got = gpu_colocation.cycle("cpu", 4096)
    assert got["wake_at_start"] and got["wakes_after_step"] == [True, True]
    assert got["share_gib"] == pytest.approx(0.7 * M.GPU_80GB / (1 << 30), rel=1e-3)
