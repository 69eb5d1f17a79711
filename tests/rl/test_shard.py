"""The KL anchor sharded like the policy under FSDP (t1.rl.shard, t1.rl.anchor), on two CPU processes over
gloo with accelerate's FSDP forced on (tests/cpu_fsdp.py: accelerate enables FSDP only on accelerators, torch's
FSDP runs on CPU). What is not covered here: GPUs and NCCL, bf16 mixed precision under FSDP, activation
checkpointing in a `t1 rl` run (only in the anchor check), CPU offload, DeepSpeed (not installed; ZeRO-3 with an
anchor is refused)."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from t1.config import ConfigError
from t1.model.load import build_tokenizer

HERE = Path(__file__).resolve().parents[1]  # tests/, where cpu_fsdp.py is


def torchrun(args: list[str], fsdp: int | None, timeout: int = 240,
             **env_extra: str) -> subprocess.CompletedProcess:
    """``args`` on two CPU processes (``fsdp``: accelerate's FSDP version, through tests/cpu_fsdp.py), or
    ``python -m t1 …`` on one process (``fsdp`` None); ``env_extra``: more of accelerate's variables."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if fsdp is None:
        cmd = [sys.executable, "-m", "t1", *args]
    else:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env.update(ACCELERATE_USE_FSDP="true", FSDP_VERSION=str(fsdp),
                   FSDP_AUTO_WRAP_POLICY="TRANSFORMER_BASED_WRAP", FSDP_USE_ORIG_PARAMS="true",
                   FSDP_STATE_DICT_TYPE="FULL_STATE_DICT", **env_extra)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
               str(HERE / "cpu_fsdp.py"), *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-4000:])
    return proc


@pytest.mark.parametrize("version, mode, checkpointing", [(1, "ema", "true"), (1, "reset", "false"),
                                                         (2, "ema", "false"), (2, "reset", "true")])
def test_sharded_anchor_equals_the_unsharded_one(tiny_model_dir, version, mode, checkpointing):
    """5 optimizer steps of an FSDP policy (with or without activation checkpointing, which wraps its layers
    and not the anchor's); after each, the sharded anchor updates shard against shard and an unsharded anchor
    from the gathered policy: equal forwards every step (FSDP1's root unit released), equal full states (to
    1e-7), each process holding half the anchor, and a full state reloads whole."""
    proc = torchrun(["check-anchor", str(tiny_model_dir), mode], fsdp=version,
                    FSDP_ACTIVATION_CHECKPOINTING=checkpointing)
    assert proc.stdout.count(f"anchor check ok: fsdp{version} {mode}") == 2, proc.stdout[-2000:]


def rl_args(model_dir, out, *extra):
    return ["rl", f"model={model_dir}", f"out={out}", "rollout.engine=vllm", "rollout.vllm.dtype=float32",
            "train.precision=fp32", "train.fast_forward=false", "rollout.prompts_per_step=4",
            "rollout.samples_per_prompt=4", "rollout.max_new_tokens=12", "data.num_prompts=32",
            "algo.kl_beta=0.05", "train.optim.lr=0.02", "train.optim.warmup_steps=0", "train.save_every=2",
            "train.logits_chunk=5", *extra, "--quiet"]


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def stable(row: dict) -> dict:
    """A metrics row without its timings."""
    return {k: v for k, v in row.items() if not k.startswith("time") and k != "tokens_per_s"}


def final(out: Path) -> dict:
    return load_file(str(out / "final" / "model.safetensors"))


def saved_anchor(out: Path, step: int) -> dict:
    return torch.load(out / "checkpoints" / f"step-{step:07d}" / "trainer_state.pt", weights_only=False)["anchor"]


@pytest.mark.slow
def test_fsdp_rl_run_trains_resumes_and_matches_one_process(vllm_model_dir, tmp_path):
    """`t1 rl` through vLLM under FSDP1 (the paper configs' launch) and FSDP2 on two processes, the anchor
    sharded: 3 steps equal one process's (KL to the anchor, loss, weights, the anchor itself), and 2 steps +
    resume equal 3 straight ones exactly (anchor and AdamW state gathered into the checkpoint and sharded
    again)."""
    pytest.importorskip("vllm")
    one, full, cut, v2 = (tmp_path / n for n in ("one", "fsdp1", "cut", "fsdp2"))
    torchrun(rl_args(vllm_model_dir, one, "train.steps=3"), fsdp=None)
    err = torchrun(rl_args(vllm_model_dir, full, "train.steps=3"), fsdp=1).stderr
    assert "anchor ema (fsdp1-sharded) | 2 process(es)" in err
    torchrun(rl_args(vllm_model_dir, cut, "train.steps=2"), fsdp=1)
    err = torchrun([*rl_args(vllm_model_dir, cut, "train.steps=3"), "--resume"], fsdp=1).stderr
    assert "resuming at step 2" in err
    torchrun(rl_args(vllm_model_dir, v2, "train.steps=3"), fsdp=2)

    m1, mf, mc, m2 = metrics(one), metrics(full), metrics(cut), metrics(v2)
    assert [r["kl"] for r in mf][0] == 0 and all(r["kl"] > 0.05 for r in mf[1:])  # the anchor lags the policy
    assert [stable(r) for r in mc] == [stable(r) for r in mf]  # resumed = uninterrupted
    for m in (mf, m2):
        for a, b in zip(m1, m):
            assert a["reward"] == b["reward"]
            for k in ("kl", "loss", "entropy", "grad_norm"):
                assert b[k] == pytest.approx(a[k], rel=1e-4, abs=1e-6), k
    w1, wf, wc, w2 = final(one), final(full), final(cut), final(v2)
    assert all(torch.equal(wf[k], wc[k]) for k in wf)
    for w in (wf, w2):
        for k in w1:
            torch.testing.assert_close(w[k], w1[k], rtol=1e-3, atol=1e-4, msg=k)
    a1, af, ac, a2 = (saved_anchor(o, 3) for o in (one, full, cut, v2))
    assert af.keys() == a1.keys() == a2.keys()
    assert all(torch.equal(af[k], ac[k]) for k in af)
    for a in (af, a2):
        for k in a1:
            torch.testing.assert_close(a[k], a1[k], rtol=1e-4, atol=1e-5, msg=k)


def test_what_the_trainer_cannot_run_sharded_is_refused():
    from t1.rl import shard

    class Acc:
        class state:
            class fsdp_plugin:
                use_orig_params = False

    shard.check_launch(Acc(), "", "fast", True)  # nothing sharded: anything goes
    with pytest.raises(ConfigError, match="use vllm or vllm_server"):
        shard.check_launch(Acc(), "fsdp2", "fast", True)
    with pytest.raises(ConfigError, match="--fsdp_use_orig_params true"):
        shard.check_launch(Acc(), "fsdp1", "vllm", True)
    Acc.state.fsdp_plugin.use_orig_params = True
    shard.check_launch(Acc(), "fsdp1", "vllm", True)
    with pytest.raises(ConfigError, match="ZeRO-3 cannot shard the KL anchor"):
        shard.check_launch(Acc(), "zero3", "vllm_server", True)
    shard.check_launch(Acc(), "zero3", "vllm_server", False)


def test_zero3_and_unsharded_accelerators():
    """DeepSpeed ZeRO-3 with an anchor is refused with the fix; one process / DDP move the anchor whole."""
    from accelerate.utils import DistributedType

    from t1.rl import shard
    from t1.rl.anchor import Anchor

    class Acc:
        distributed_type = DistributedType.DEEPSPEED
        device = torch.device("cpu")

        class state:
            class deepspeed_plugin:
                zero_stage = 3

    assert shard.sharding(Acc()) == "zero3"
    with pytest.raises(ConfigError, match="--use_fsdp"):
        Anchor(torch.nn.Linear(2, 2), "ema").distribute(Acc())
    Acc.state.deepspeed_plugin.zero_stage = 2
    anchor = Anchor(torch.nn.Linear(2, 2), "ema")
    anchor.distribute(Acc())
    assert not anchor.sharded and shard.sharding(Acc()) == ""


_MAPPED = """
import sys, torch
from t1.runtime.checkpoint import load_checkpoint_state

def rss():
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS")).split()[1]) << 10

before = rss()
state = load_checkpoint_state(sys.argv[1])
print((rss() - before) >> 20, float(state["optimizer"]["m"][-1]))
"""


def test_trainer_state_is_mapped_not_copied(tmp_path):
    """A resumed run's every process loads ``trainer_state.pt`` (AdamW moments and anchor: 12N bytes): mapped
    from the file it costs no private memory until read (D4, host RAM). 256 MiB of state must add < 64 MiB."""
    torch.save({"step": 1, "optimizer": {"m": torch.full((64 << 20,), 3.0)}}, tmp_path / "trainer_state.pt")
    proc = subprocess.run([sys.executable, "-c", _MAPPED, str(tmp_path)], capture_output=True, text=True,
                          timeout=120, check=True)
    grown, last = proc.stdout.split()
    assert float(last) == 3.0 and int(grown) < 64, proc.stdout


@pytest.fixture(scope="module")
def bf16_model_dir(tmp_path_factory):
    """A 24-layer Qwen2 (92 MiB in fp32) stored in bf16, so loading it in fp32 writes new memory."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=1024, hidden_size=256, intermediate_size=1024, num_hidden_layers=24,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=False)
    out = tmp_path_factory.mktemp("bf16") / "model"
    Qwen2ForCausalLM(config).to(torch.bfloat16).save_pretrained(out)
    build_tokenizer(100).save_pretrained(out)  # any tokenizer will do: nothing is sampled
    return out


@pytest.mark.parametrize("version", [1, 2])
def test_only_the_main_process_reads_the_weights(bf16_model_dir, version):
    """Review D4: under FSDP the second process builds a skeleton (its resident memory grows by < 10 % of the
    fp32 model while loading; the main process's by > 50 %, so the measurement sees a load) and takes the main
    process's weights as the model is wrapped — every gathered parameter equals the file's."""
    proc = torchrun(["check-loading", str(bf16_model_dir)], fsdp=version)
    assert proc.stdout.count(f"loading check ok: fsdp{version}") == 2, proc.stdout[-2000:]


@pytest.mark.parametrize("version", [1, 2])
def test_a_consumer_may_keep_every_pushed_weight(tiny_model_dir, version):
    """Review D15: the push hands vLLM tensors it may keep until its fused layers are whole; every one kept to
    the end still holds the model's weight (FSDP1's are copied out of the unit's gathered memory, freed as the
    walk moves on — kept without the copy, reading them crashes the process)."""
    proc = torchrun(["check-kept", str(tiny_model_dir)], fsdp=version)
    assert proc.stdout.count("kept weights ok") == 2, proc.stdout[-2000:]
