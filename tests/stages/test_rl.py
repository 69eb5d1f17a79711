"""The RL trainer end to end on a tiny model: learning, resume, two processes, bad updates, run directory."""

import json
import os
import socket
import subprocess
import sys
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from t1 import config as C
from t1.rl import objectives, step
from t1.rl.batch import Mismatch, PackedRows
from t1.rl.config import RLConfig
from t1.stages.rl import RLTrainer, train_rl


def rl_args(model_dir, out, *extra):
    return [f"model={model_dir}", f"out={out}", "rollout.prompts_per_step=8", "rollout.samples_per_prompt=8",
            "rollout.max_new_tokens=8", "rollout.temperature=1.0", "rollout.top_p=1.0", "data.num_prompts=64",
            "train.optim.lr=0.01", "train.optim.warmup_steps=0", "train.rollouts_every=5", *extra]


def rl_cfg(model_dir, out, *extra):
    return C.load(RLConfig, None, rl_args(model_dir, out, *extra))


def rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def weights(path):
    return load_file(str(path / "model.safetensors"))


def test_reward_rises_on_an_easily_learnable_reward(tiny_model_dir, tmp_path):
    """A random tiny model with an 8-token budget is mostly truncated (reward −1); ending early earns 0."""
    out = tmp_path / "run"
    history = train_rl(rl_cfg(tiny_model_dir, out, "train.steps=30"), progress=False)
    first = sum(h["reward"] for h in history[:5]) / 5
    last = sum(h["reward"] for h in history[-5:]) / 5
    assert first < -0.6 and last > first + 0.4, (first, last)
    m = rows(out / "metrics.jsonl")
    assert len(m) == 30
    for key in ("reward", "accuracy", "penalty_truncated", "penalty_repetitive", "penalty_garbage",
                "truncation_rate", "response_length", "entropy", "kl", "time_sample", "time_score", "time_train",
                "tokens_per_s"):
        assert key in m[0]
    assert m[-1]["kl"] != 0  # the EMA anchor lags the policy
    # the fast engine samples in bf16 from the trainer's fp32 weights: close, not equal
    assert all(0 < r["sampling/logp_diff_mean"] < 0.05 and r["sampling/logp_diff_max"] < 2 for r in m), \
        [(r["sampling/logp_diff_mean"], r["sampling/logp_diff_max"]) for r in m]
    shown = rows(out / "rollouts.jsonl")
    assert len(shown) == 6 * 8 and {"prompt", "response", "reward", "truncated"} <= set(shown[0])
    assert (out / "final" / "model.safetensors").exists() and (out / "config.yaml").exists()


def test_resume_equals_uninterrupted(tiny_model_dir, tmp_path):
    full, cut = tmp_path / "full", tmp_path / "cut"
    train_rl(rl_cfg(tiny_model_dir, full, "train.steps=4", "train.save_every=2"), progress=False)
    train_rl(rl_cfg(tiny_model_dir, cut, "train.steps=2", "train.save_every=2"), progress=False)
    train_rl(rl_cfg(tiny_model_dir, cut, "train.steps=4", "train.save_every=2"), resume=True, progress=False)
    a, b = weights(full / "final"), weights(cut / "final")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert ([r["reward"] for r in rows(cut / "metrics.jsonl")]
            == [r["reward"] for r in rows(full / "metrics.jsonl")])


def test_killed_run_resumes_without_repeated_log_rows(tiny_model_dir, tmp_path, monkeypatch):
    """Killed after logging a step past its last checkpoint: on --resume metrics.jsonl and rollouts.jsonl both
    drop that step's rows before it is run again, so each log equals the uninterrupted run's."""
    full, cut = tmp_path / "full", tmp_path / "cut"
    extra = ["train.steps=4", "train.save_every=2", "train.rollouts_every=1", "train.rollouts_kept=2"]
    train_rl(rl_cfg(tiny_model_dir, full, *extra), progress=False)
    real = RLTrainer.rollout

    def killed_at_step_4(self, step):
        if step == 3:
            raise KeyboardInterrupt
        return real(self, step)

    monkeypatch.setattr(RLTrainer, "rollout", killed_at_step_4)
    with pytest.raises(KeyboardInterrupt):
        train_rl(rl_cfg(tiny_model_dir, cut, *extra), progress=False)
    assert [r["step"] for r in rows(cut / "rollouts.jsonl")] == [1, 1, 2, 2, 3, 3]
    monkeypatch.undo()
    train_rl(rl_cfg(tiny_model_dir, cut, *extra), resume=True, progress=False)  # the lock went with the error
    for log in ("metrics.jsonl", "rollouts.jsonl"):
        a, b = rows(full / log), rows(cut / log)
        assert [r["step"] for r in b] == [r["step"] for r in a]
        assert [r["reward"] for r in b] == [r["reward"] for r in a]


def test_two_processes_match_one(tiny_model_dir, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    # fp32: under bf16 a near-zero gradient element can flip sign with summation order, and Adam's first
    # step (≈ lr·sign(g)) turns that into a 2·lr jump in one weight
    # transformers' forward on both sides: several processes always use it (DDP's forward arms the gradient
    # all-reduce), and t1's own forward, equal to 1e-5 (test_fastlm), would still flip such signs
    extra = ["train.steps=1", "rollout.prompts_per_step=4", "algo.kl_beta=0.01", "train.precision=fp32",
             "train.fast_forward=false"]
    train_rl(rl_cfg(tiny_model_dir, one, *extra), progress=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           "-m", "t1", "rl", *rl_args(tiny_model_dir, two, *extra), "--quiet"]
    proc = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 process(es)" in proc.stderr
    r1, r2 = rows(one / "metrics.jsonl")[0], rows(two / "metrics.jsonl")[0]
    assert r1["reward"] == pytest.approx(r2["reward"])
    assert r1["loss"] == pytest.approx(r2["loss"], rel=1e-3, abs=1e-6)
    a, b = weights(one / "final"), weights(two / "final")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-4, rtol=1e-3)
    assert any(not torch.equal(a[k], weights(tiny_model_dir)[k]) for k in a)  # the update did something


def test_non_finite_loss_skips_then_stops(tiny_model_dir, tmp_path, monkeypatch, capsys):
    real = objectives.policy_loss

    def poisoned(*args, **kwargs):
        loss, stats = real(*args, **kwargs)
        return loss * float("nan"), stats

    monkeypatch.setattr(objectives, "policy_loss", poisoned)
    with pytest.raises(RuntimeError, match="3 consecutive steps with a non-finite loss"):
        train_rl(rl_cfg(tiny_model_dir, tmp_path / "nan", "train.steps=10"), progress=False)
    err = capsys.readouterr().err
    assert err.count("update skipped") == 3
    # skipped updates leave the weights alone
    assert not (tmp_path / "nan" / "final").exists()


def test_bad_configs_are_clear(tiny_model_dir, tmp_path):
    with pytest.raises(C.ConfigError, match="model: is required"):
        C.load(RLConfig, None, [])
    with pytest.raises(C.ConfigError, match="rollout.samples_per_prompt: must be ≥ 2"):
        rl_cfg(tiny_model_dir, tmp_path, "rollout.samples_per_prompt=1")
    with pytest.raises(C.ConfigError, match="algo.aggregation: must be one of"):
        rl_cfg(tiny_model_dir, tmp_path, "algo.aggregation=sum")


def test_kl_beta_zero_keeps_no_anchor_and_config_yaml_says_so(tiny_model_dir, tmp_path, capsys):
    """No KL term, no anchor: the run's config.yaml says anchor.mode none, with the reason above it."""
    out = tmp_path / "run"
    tr = RLTrainer(rl_cfg(tiny_model_dir, out, "train.steps=1", "algo.kl_beta=0"), progress=False)
    assert tr.anchor.model is None and tr.cfg.anchor.mode == "none"
    assert (out / "config.yaml").read_text().startswith("# anchor.mode: none, not ema, because algo.kl_beta = 0")
    assert C.load(RLConfig, out / "config.yaml").anchor.mode == "none"
    assert "because algo.kl_beta = 0" in capsys.readouterr().err


def test_several_updates_per_batch_use_the_clipped_ratio(tiny_model_dir, tmp_path):
    """updates_per_batch > 1 keeps the sampling policy's log-probs; after the first update the ratio moves
    off 1, so a large learning rate makes the PPO clip bind."""
    history = train_rl(rl_cfg(tiny_model_dir, tmp_path / "ppo", "train.steps=3", "algo.updates_per_batch=3",
                              "algo.clip=0.05", "train.optim.lr=0.05"), progress=False)
    assert all(h["loss"] == h["loss"] and not h["skipped"] for h in history)  # finite, applied
    assert max(h["clip_fraction"] for h in history) > 0.0
    one = train_rl(rl_cfg(tiny_model_dir, tmp_path / "one", "train.steps=3", "train.optim.lr=0.05"),
                   progress=False)
    assert all(h["clip_fraction"] == 0.0 for h in one)  # one update per batch: ratio 1, nothing clipped


def test_packed_update_equals_padded_update(tiny_model_dir, tmp_path, monkeypatch):
    """The fused update on one process runs the whole batch unpadded through t1's forward (model.forward.Packed);
    it must give the gradients, KL, entropy and loss of the padded micro-batch path through transformers."""
    cfg = rl_cfg(tiny_model_dir, tmp_path / "run", "train.steps=1", "train.precision=fp32", "algo.kl_beta=0.05",
                 "algo.entropy_coef=0.01", "rollout.max_new_tokens=12", "train.micro_batch_tokens=4096")
    tr = RLTrainer(cfg, progress=False)
    batch, _ = tr.rollout(0)
    assert len({len(ids) for ids in batch.ids}) > 1  # sequences of different lengths: padding matters
    packed = PackedRows(batch, list(range(len(batch.ids))), "cpu").packed
    # each prompt's tokens laid out once for its 8 samples
    assert packed.n == sum(map(len, batch.ids)) - sum(7 * batch.n_prompt[8 * g] for g in range(8))
    with torch.no_grad():  # an anchor away from the policy, so the KL term is not zero
        for p in tr.anchor.model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    grads = {}

    def capture(acc, model, optimizer, grad_clip, loss_sum):
        grads[len(grads)] = {n: p.grad.clone() for n, p in tr.raw.named_parameters()}
        optimizer.zero_grad(set_to_none=True)
        return 0.0, True  # "skipped": the weights stay as they are for the second pass

    monkeypatch.setattr(step, "clip_and_step", capture)
    update = tr.update_step
    mbs = update.fused_micro_batches([len(ids) for ids in batch.ids])
    assert mbs is not None and len(mbs) > 1
    r = cfg.rollout  # with the truncated-IS correction on: both layouts must weight the same tokens alike
    m_packed, m_padded = Mismatch(r.temperature, r.top_p, 1.5), Mismatch(r.temperature, r.top_p, 1.5)
    packed = update.fused(batch, mbs, m_packed)
    update.policy.fast = False  # transformers' forward on padded micro-batches
    padded = update.fused(batch, mbs, m_padded)
    assert float(packed["kl"]) != 0
    assert m_packed.n == m_padded.n == sum(len(ids) - n for ids, n in zip(batch.ids, batch.n_prompt))
    for key, value in m_packed.stats().items():
        assert abs(value - m_padded.stats()[key]) <= 1e-4 * max(1.0, abs(value)), key
    for key in ("kl", "entropy", "tokens", "loss"):
        torch.testing.assert_close(torch.as_tensor(packed[key]), torch.as_tensor(padded[key]),
                                   rtol=1e-5, atol=1e-6)
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], rtol=1e-4, atol=1e-6, msg=n)


def test_soft_overlong_punishment_lands_on_finished_responses(tiny_model_dir, tmp_path):
    """DAPO's soft overlong zone (penalties.overlong_buffer) lowers the reward of responses that end inside it;
    truncated ones keep T1's hard −1 (not −2), and the step's metrics carry the mean soft penalty."""
    out = tmp_path / "run"
    train_rl(rl_cfg(tiny_model_dir, out, "train.steps=1", "train.rollouts_every=1", "penalties.overlong_buffer=6",
                    "penalties.overlong_factor=0.5"), progress=False)
    shown = rows(out / "rollouts.jsonl")
    soft = [-0.5 * min(1.0, max(0, r["tokens"] - 2) / 6) if not r["penalty"] else 0.0 for r in shown]
    assert any(s < 0 for s in soft) and any(r["penalty"] for r in shown)  # both kinds in the batch
    for r, s in zip(shown, soft):
        assert r["reward"] == pytest.approx((-1.0 if r["penalty"] else float(r["correct"])) + s)
    [m] = rows(out / "metrics.jsonl")  # over all 64 samples (the rollouts file shows some of them)
    assert -0.5 < m["penalty_overlong_soft"] < 0


def test_fused_and_two_pass_give_the_same_gradients_for_every_objective(tiny_model_dir, tmp_path, monkeypatch):
    """The same batch through both schedules of the update (fused: one forward with gradients kept until the
    KL is known; two passes: a no-gradient pass, then gradient micro-batches), for every ``algo.loss`` and both
    places of the KL (``algo.kl_in``), with the entropy bonus and the truncated-IS weights on: every
    parameter's gradient equal."""
    cfg = rl_cfg(tiny_model_dir, tmp_path / "run", "train.steps=1", "train.precision=fp32", "algo.kl_beta=0.05",
                 "algo.entropy_coef=0.01", "rollout.max_new_tokens=12", "train.micro_batch_tokens=4096")
    tr = RLTrainer(cfg, progress=False)
    batch, _ = tr.rollout(0)
    with torch.no_grad():  # an anchor away from the policy, so the KL term is not zero
        for p in tr.anchor.model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    grads = []

    def capture(acc, model, optimizer, grad_clip, loss_sum):
        grads.append({n: p.grad.clone() for n, p in tr.raw.named_parameters()})
        optimizer.zero_grad(set_to_none=True)
        return 0.0, True  # "skipped": the weights stay as they are for the next schedule

    monkeypatch.setattr(step, "clip_and_step", capture)
    update = tr.update_step
    lengths = [len(ids) for ids in batch.ids]
    mbs = update.fused_micro_batches(lengths)
    assert mbs is not None
    cases = [(name, "reward") for name in objectives.OBJECTIVES] + [("t1", "loss"), ("dapo", "loss")]
    for name, kl_in in cases:  # the KL folded into the reward (T1), or a loss term on the anchor's log-probs
        update.cfg = replace(cfg, algo=replace(cfg.algo, loss=name, kl_in=kl_in))
        out = [run(batch, arg, Mismatch(1.0, 1.0, 1.5)) for run, arg in ((update.fused, mbs),
                                                                         (update.two_pass, lengths))]
        torch.testing.assert_close(torch.as_tensor(out[0]["loss"]), torch.as_tensor(out[1]["loss"]),
                                   rtol=1e-5, atol=1e-6, msg=f"{name} {kl_in}")
        fused, two = grads[-2:]
        assert fused.keys() == two.keys()
        for n in fused:
            torch.testing.assert_close(fused[n], two[n], rtol=1e-4, atol=1e-6, msg=f"{name} {kl_in}: {n}")
    emb = [g["model.embed_tokens.weight"] for g in grads[::2]]
    assert not torch.equal(emb[0], emb[len(objectives.OBJECTIVES) - 1])  # t1 and cispo differ
    assert not torch.equal(emb[0], emb[-2])  # t1 with the KL in the reward or in the loss


@pytest.mark.parametrize("fused", ["true", "false"])
def test_logits_chunk_changes_nothing(tiny_model_dir, tmp_path, fused):
    """Log-probs and entropy a few positions at a time (t1.rl.logp) against all at once, through the fused
    (packed) update and the two-pass one: the same run."""
    runs = {}
    for chunk in (3, 0):
        out = tmp_path / f"chunk{chunk}"
        train_rl(rl_cfg(tiny_model_dir, out, "train.steps=2", "train.precision=fp32", "algo.kl_beta=0.05",
                        "algo.entropy_coef=0.01", f"train.fused_update={fused}", f"train.logits_chunk={chunk}"),
                 progress=False)
        runs[chunk] = rows(out / "metrics.jsonl"), weights(out / "final")
    (m3, w3), (m0, w0) = runs[3], runs[0]
    for a, b in zip(m3, m0):
        for k in ("reward", "kl", "entropy", "loss", "grad_norm"):
            assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-7), k
    for k in w0:
        torch.testing.assert_close(w3[k], w0[k], rtol=1e-5, atol=1e-6, msg=k)
