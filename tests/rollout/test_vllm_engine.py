"""engine=vllm (vLLM in the training process) on vLLM's CPU build: log-probs equal transformers' before and
after weight pushes, stale engines are refused, and `t1 rl` samples from the policy of every step."""

import copy
import json
import os
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("vllm")

from t1 import config as C  # noqa: E402
from t1.model.load import load  # noqa: E402
from t1.rl.config import RLConfig  # noqa: E402
from t1.rollout.base import SamplingParams  # noqa: E402
from t1.rollout.config import VLLMConfig  # noqa: E402
from t1.rollout.logprobs import processed_logp  # noqa: E402
from t1.rollout.vllm_engine import StaleEngineError, VLLMEngine  # noqa: E402
from t1.rollout.weights import full_parameters  # noqa: E402
from t1.stages.rl import train_rl  # noqa: E402

PARAMS = SamplingParams(temperature=1.2, top_p=0.95, max_new_tokens=24)


# ------------------------------------------------------------------ what t1 hands vLLM (a fake LLM class)
# First in this module: no real engine (and no vLLM process group) exists yet in the process.


class FakeLLM:
    """Stands in for ``vllm.LLM``: records its keyword arguments, the requests' sampling parameters and the
    lifecycle calls; its worker consumes pushed weights."""

    made: list = []

    def __init__(self, **kw):
        FakeLLM.made.append(kw)
        self.calls, self.requests = [], []
        self.worker = SimpleNamespace(reload_weights=lambda weights_iterator: [None for _ in weights_iterator])
        self.llm_engine = SimpleNamespace(engine_core=SimpleNamespace(shutdown=self._shutdown))

    def _shutdown(self):
        from vllm.distributed import parallel_state as ps

        self.calls.append("shutdown")
        ps.destroy_distributed_environment()  # as EngineCore.shutdown → cleanup_dist_env_and_memory does

    def generate(self, prompts, sps, use_tqdm=False):
        self.requests.extend(sps if isinstance(sps, list) else [sps] * len(prompts))
        out = SimpleNamespace(token_ids=[5], logprobs=[{5: SimpleNamespace(logprob=-0.5)}], finish_reason="length")
        return [SimpleNamespace(outputs=[out]) for _ in prompts]

    def collective_rpc(self, fn, args=()):
        return [fn(self.worker, *args)]

    def sleep(self, level):
        self.calls.append(f"sleep {level}")

    def wake_up(self, tags):
        self.calls.append(f"wake {','.join(tags)}")

    def reset_prefix_cache(self):
        self.calls.append("reset")


@pytest.fixture
def fake_llm(monkeypatch):
    import vllm

    FakeLLM.made = []
    monkeypatch.setattr(vllm, "LLM", FakeLLM)
    return FakeLLM


def gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)


def test_only_t1_rls_engine_sleeps_and_starts_from_dummy_weights(fake_llm, tiny_model_dir, monkeypatch):
    """eval / filter / scale (open_engine) read the checkpoint and never sleep: sleep mode means vLLM's CuMem
    allocator, one instance per process, and `t1 scale` may hold two engines. `t1 rl`'s engine (training) runs
    in sleep mode on a GPU and starts from dummy weights, which its first push replaces."""
    from t1.rl.config import RolloutConfig
    from t1.rollout import make_engine, open_engine

    gpu(monkeypatch)
    _, tok = load(tiny_model_dir)
    eng, _, _ = open_engine("vllm", str(tiny_model_dir))
    rl = make_engine(RolloutConfig(engine="vllm"), None, tok, model_path=str(tiny_model_dir), training=True)
    off = make_engine(RolloutConfig(engine="vllm", vllm=VLLMConfig(dummy_weights=False, enable_sleep_mode=False)),
                      None, tok, model_path=str(tiny_model_dir), training=True)
    (other, trained, switched_off) = fake_llm.made
    assert (other["enable_sleep_mode"], other["load_format"]) == (False, "auto")
    assert (trained["enable_sleep_mode"], trained["load_format"]) == (True, "dummy")
    assert (switched_off["enable_sleep_mode"], switched_off["load_format"]) == (False, "auto")
    eng.sleep()
    off.sleep()
    rl.sleep()
    assert eng.llm.calls == [] and off.llm.calls == [] and rl.llm.calls == ["sleep 2"]
    with pytest.raises(StaleEngineError, match="version -1"):  # dummy weights: nothing to sample from yet
        rl.generate([[3]], [0], PARAMS, version=0)


def test_a_first_push_over_dummy_weights_must_carry_every_checkpoint_weight(fake_llm, tiny_model_dir):
    """vLLM only logs a weight a push lacks: over dummy weights it would stay random, so the first push is
    checked against the checkpoint's names (tied lm_head: the checkpoint lacks it, the push carries it)."""
    from t1.rollout.base import EngineError

    model, tok = load(tiny_model_dir, dtype="float32")
    eng = VLLMEngine(str(tiny_model_dir), tok, VLLMConfig(), training=True)
    assert fake_llm.made[0]["load_format"] == "dummy" and eng.engine_version() == -1
    with pytest.raises(EngineError, match=r"^rollout.vllm.dummy_weights: the first weight push lacked 1 of the "
                                          r"checkpoint's weights \(e.g. model.norm.weight\)"):
        eng.push_weights(((n, t) for n, t in full_parameters(model) if n != "model.norm.weight"), 1)
    eng.push_weights(full_parameters(model), 1)
    assert eng.engine_version() == 1 and eng.expected is None


def test_another_vllm_series_is_refused_before_the_engine_is_built(fake_llm, tiny_model_dir, monkeypatch):
    """t1 calls reload_weights(weights_iterator=…) and the weight-transfer API of vLLM 0.32: an older wheel
    crashed at the first push, hours in. Refused in one line before vllm.LLM is built."""
    import vllm

    from t1.config import ConfigError

    tok = load(tiny_model_dir, dtype="float32")[1]
    monkeypatch.setattr(vllm, "__version__", "0.31.2")
    with pytest.raises(ConfigError, match=r"^rollout.engine: vLLM 0.31.2 is installed; t1 supports 0.32"):
        VLLMEngine(str(tiny_model_dir), tok, VLLMConfig(), training=True)
    assert fake_llm.made == []


def test_per_request_seeds_switch(fake_llm, tiny_model_dir, monkeypatch):
    """Seeded requests put vLLM's GPU sampler on a per-request loop: by default only the CPU build gets them
    (exact tests and resumes), a GPU run the engine's seed alone; either can be forced."""
    _, tok = load(tiny_model_dir)

    def seeds(**cfg) -> list:
        eng = VLLMEngine(str(tiny_model_dir), tok, VLLMConfig(**cfg))
        eng.llm.requests.clear()  # the start-up probe's
        eng.generate([[3], [4]], [7, 8], PARAMS)
        return [r.seed for r in eng.llm.requests]

    assert seeds() == [7, 8] and seeds(per_request_seeds=False) == [None, None]
    gpu(monkeypatch)
    assert seeds() == [None, None] and seeds(per_request_seeds=True) == [7, 8]


def test_close_shuts_the_engine_core_down(fake_llm, tiny_model_dir, monkeypatch):
    """close() shuts vLLM's engine core down itself (not left to a garbage collection of the LLM that may
    never come); under a distributed launch the trainer's default process group survives it."""
    import torch.distributed as dist
    from vllm.distributed import parallel_state as ps

    _, tok = load(tiny_model_dir)
    eng = VLLMEngine(str(tiny_model_dir), tok, VLLMConfig())
    llm = eng.llm  # a reference held elsewhere: the LLM is not collected at close()
    eng.close()
    eng.close()
    assert llm.calls == ["shutdown"] and eng.llm is None

    monkeypatch.setattr(ps, "_WORLD", None)  # no vLLM world group: only torch's default group is at stake
    made = not dist.is_initialized()
    if made:
        dist.init_process_group("gloo", init_method=f"file://{tmp_store()}", rank=0, world_size=1)
    try:
        monkeypatch.setenv("WORLD_SIZE", "2")  # a launch: the default group is the trainer's
        eng = VLLMEngine(str(tiny_model_dir), tok, VLLMConfig())
        assert fake_llm.made[-1]["distributed_executor_backend"] == "external_launcher"
        llm = eng.llm
        eng.close()
        assert llm.calls == ["shutdown"] and dist.is_initialized()
    finally:
        if made and dist.is_initialized():
            dist.destroy_process_group()


def tmp_store() -> str:
    import tempfile

    fd, path = tempfile.mkstemp(prefix="t1-pg-")
    os.close(fd)
    os.unlink(path)
    return path


# -------------------------------------------------------------------------- vLLM's CPU build, for real


@pytest.fixture(scope="module")
def engine(vllm_model_dir):
    _, tok = load(vllm_model_dir)
    eng = VLLMEngine(str(vllm_model_dir), tok, VLLMConfig(dtype="float32"), max_len=512)
    yield eng
    eng.close()


def prompts(tok):
    return [tok(f"{a} {b} {c}", add_special_tokens=False)["input_ids"]
            for a, b, c in [(3, 4, 5), (9, 1, 7), (2, 2, 8)]]


@torch.no_grad()
def hf_logp(model, prompt, sample) -> torch.Tensor:
    """Transformers' log-probs of a sample's tokens under the distribution vLLM samples from."""
    seq = torch.tensor([prompt + sample.token_ids])
    logits = model(seq).logits[0, len(prompt) - 1: -1]
    return processed_logp(logits, torch.tensor(sample.token_ids), PARAMS.temperature, PARAMS.top_p)


def gap(model, ps, samples) -> float:
    return max(float((hf_logp(model, p, s) - torch.tensor(s.logprobs)).abs().max()) for p, s in zip(ps, samples))


def adamw_step(model, ps):
    """One real optimizer step (maximise the likelihood of some tokens), lr large enough to matter."""
    opt = torch.optim.AdamW(model.parameters(), lr=2e-2)
    seq = torch.tensor([p + p for p in ps if len(p) == len(ps[0])])
    loss = torch.nn.functional.cross_entropy(model(seq).logits[:, :-1].flatten(0, 1), seq[:, 1:].flatten())
    loss.backward()
    opt.step()


def test_logprobs_match_transformers_before_and_after_pushes(engine, vllm_model_dir):
    model, tok = load(vllm_model_dir, dtype="float32")
    ps = prompts(tok) * 3
    seeds = list(range(len(ps)))
    samples = engine.generate(ps, seeds, PARAMS, version=0)
    assert all(len(s.logprobs) == len(s.token_ids) > 0 for s in samples)
    assert gap(model, ps, samples) <= 1e-4
    assert [s.token_ids for s in engine.generate(ps, seeds, PARAMS)] == [s.token_ids for s in samples]  # seeded
    for version in (1, 2):
        old = copy.deepcopy(model)
        adamw_step(model, ps)
        engine.push_weights(full_parameters(model), version)
        assert engine.engine_version() == version
        samples = engine.generate(ps, seeds, PARAMS, version=version)
        assert gap(model, ps, samples) <= 1e-4, version  # the new weights, output layer (tied) included
        assert gap(old, ps, samples) > 1e-2, version  # and not the old ones
    with pytest.raises(StaleEngineError, match="version 2"):
        engine.generate(ps, seeds, PARAMS, version=1)


def test_a_push_without_the_tied_output_layer_leaves_it_stale(engine, vllm_model_dir):
    """vLLM only logs a warning when a push lacks a weight; ``full_parameters`` always carries the tied
    ``lm_head.weight``, and the log-prob gap (``sampling/logp_diff_*`` in RL) is what catches a partial push."""
    model, tok = load(vllm_model_dir, dtype="float32")
    names = [n for n, _ in full_parameters(model)]
    assert "lm_head.weight" in names and "model.embed_tokens.weight" in names
    ps = prompts(tok)
    with torch.no_grad():
        model.lm_head.weight.mul_(1.5)  # tied: the embedding changes with it
    engine.push_weights(((n, t) for n, t in full_parameters(model) if n != "lm_head.weight"), 11)
    assert gap(model, ps, engine.generate(ps, [0, 1, 2], PARAMS, version=11)) > 1e-2  # output layer stale
    engine.push_weights(full_parameters(model), 12)
    assert gap(model, ps, engine.generate(ps, [0, 1, 2], PARAMS, version=12)) <= 1e-4


def rl_args(model_dir, out, *extra):
    return [f"model={model_dir}", f"out={out}", "rollout.engine=vllm", "rollout.vllm.dtype=float32",
            "train.precision=fp32", "rollout.prompts_per_step=4", "rollout.samples_per_prompt=4",
            "rollout.max_new_tokens=12", "rollout.temperature=1.2", "rollout.top_p=0.95", "data.num_prompts=32",
            "train.optim.lr=0.02", "train.optim.warmup_steps=0", "train.rollouts_every=1", *extra]


def metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_rl_through_vllm_samples_from_every_steps_policy(vllm_model_dir, tmp_path, monkeypatch):
    out = tmp_path / "run"
    train_rl(C.load(RLConfig, None, rl_args(vllm_model_dir, out, "train.steps=3")), progress=False)
    m = metrics(out)
    assert [r["weight_version"] for r in m] == [1, 2, 3]
    # fp32 rounding (~1e-6), except where a token's cumulative mass straddles top_p = 0.95 in one of the two
    # implementations: the nucleus then differs by that token and the renormalisation by up to its mass
    # (measured 4e-3 on an AMD EPYC at step 3; 1e-6 at every step with top_p = 1). A stale push is > 1e-2.
    assert all(r["sampling/logp_diff_max"] < 5e-3 for r in m), [r["sampling/logp_diff_max"] for r in m]
    assert m[-1]["grad_norm"] > 0

    # the same run with pushes that only claim the new version: the mismatch metric shows it at once
    def claim_only(self, weights, version):
        for _ in weights:
            pass
        from t1.rollout.vllm_engine import _set_version
        self.llm.collective_rpc(_set_version, args=(version,))
        self.weight_version = version

    monkeypatch.setattr(VLLMEngine, "push_weights", claim_only)
    stale = tmp_path / "stale"
    train_rl(C.load(RLConfig, None, rl_args(vllm_model_dir, stale, "train.steps=3")), progress=False)
    s = metrics(stale)
    # t1 rl's engine starts from dummy weights (never reading the checkpoint): even step 1 samples from them
    assert all(r["sampling/logp_diff_max"] > 1e-2 for r in s), [r["sampling/logp_diff_max"] for r in s]


def test_lora_rl_through_vllm_samples_from_the_merged_weights(vllm_model_dir, tmp_path):
    """vLLM loads the plain base model and is pushed base + adapter merged every step: its log-probs equal the
    trainer's (which reads the adapters) although only the adapter trains."""
    out = tmp_path / "run"
    train_rl(C.load(RLConfig, None, rl_args(vllm_model_dir, out, "train.steps=3", "lora.rank=8", "lora.alpha=16",
                                            "train.optim.lr=0.05")), progress=False)
    m = metrics(out)
    assert [r["weight_version"] for r in m] == [1, 2, 3] and m[-1]["grad_norm"] > 0
    assert all(r["sampling/logp_diff_max"] < 1e-3 for r in m), [r["sampling/logp_diff_max"] for r in m]
    assert (out / "final" / "adapter_model.safetensors").exists()


@pytest.mark.slow
def test_rl_through_vllm_resumes_exactly(vllm_model_dir, tmp_path):
    """vLLM's seeded sampling is deterministic for the same weights and requests (no preemption, no split
    prefill on the CPU build's settings): a resumed run draws the samples of an uninterrupted one."""
    full, cut = tmp_path / "full", tmp_path / "cut"
    train_rl(C.load(RLConfig, None, rl_args(vllm_model_dir, full, "train.steps=3", "train.save_every=2")),
             progress=False)
    train_rl(C.load(RLConfig, None, rl_args(vllm_model_dir, cut, "train.steps=2", "train.save_every=2")),
             progress=False)
    train_rl(C.load(RLConfig, None, rl_args(vllm_model_dir, cut, "train.steps=3", "train.save_every=2")),
             resume=True, progress=False)
    a, b = metrics(full), metrics(cut)
    assert [r["step"] for r in b] == [1, 2, 3]
    for key in ("reward", "response_length", "loss", "sampling/logp_diff_mean"):
        assert a[2][key] == b[2][key], key
    ra = (full / "rollouts.jsonl").read_text().splitlines()
    rb = (cut / "rollouts.jsonl").read_text().splitlines()
    assert ra == rb


@pytest.mark.slow
def test_eval_and_scale_with_vllm_agree_with_the_fast_engine(vllm_model_dir, tmp_path):
    """Both engines sample the same distribution: the share of samples that end by themselves (and the
    accuracy) agree within sampling noise over 200 samples; scale runs end to end through vLLM."""
    from t1.eval.sample import EvalSettings
    from t1.rollout.config import EngineConfig
    from t1.stages.evaluate import run_eval
    from t1.stages.scale import ScaleSettings, run_scale

    vllm = EngineConfig(engine="vllm", vllm=VLLMConfig(dtype="float32"))
    finished, acc = {}, {}
    for name, engine in (("fast", EngineConfig(engine="fast", dtype="float32")), ("vllm", vllm)):
        s = EvalSettings(n=8, temperature=1.0, top_p=1.0, max_new_tokens=24, engine=engine)
        summary = run_eval(str(vllm_model_dir), ["countdown"], tmp_path / name, s, limit=25, progress=False)
        rows = [json.loads(x) for x in (tmp_path / name / "countdown.samples.jsonl").read_text().splitlines()]
        assert len(rows) == 200
        finished[name] = sum(r["finished"] for r in rows) / len(rows)
        acc[name] = summary["countdown"]["pass@1"]
    se = (finished["fast"] * (1 - finished["fast"]) / 200 + finished["vllm"] * (1 - finished["vllm"]) / 200) ** 0.5
    assert 0.05 < finished["vllm"] < 0.6 and abs(finished["fast"] - finished["vllm"]) <= 4 * se + 1e-9, finished
    assert abs(acc["fast"] - acc["vllm"]) <= 0.05, acc
    curves = run_scale([("m", str(vllm_model_dir))], "countdown", tmp_path / "scale",
                       ScaleSettings(budgets=(8, 16)), engine=vllm, limit=10, progress=False)
    assert [p["budget"] for p in curves["m"]] == [8, 16]
    assert json.loads((tmp_path / "scale" / "scaling.json").read_text())["curves"]["m"] == curves["m"]


def test_a_model_shape_vllm_refuses_is_one_line(tiny_model_dir, capsys):
    """Head size 16 (the tiny test model): vLLM's CPU build has no attention kernel for it. `t1 eval` says so in
    one line naming the model, the cause and the way out, not a 100-line traceback."""
    from t1.cli import main

    code = main(["eval", f"model={tiny_model_dir}", "bench=[countdown]", "limit=2", "rollout.engine=vllm",
                 "rollout.vllm.dtype=float32", "max_new_tokens=8", "out=/nonexistent-not-written"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and "Traceback" not in "\n".join(err)
    assert err[-1].startswith("t1 eval: error: sampling engine: engine vllm: vLLM cannot run ")
    assert "head_dim=16" in err[-1]
    assert "rollout.engine=fast" in err[-1]
