"""t1.rollout.memory: the per-GPU estimate, its verdicts on the committed paper configs (80 GB GPUs, FSDP with
activation checkpointing, as many processes as their headers launch: 8 for 7B and 14B, 32 for 32B), refusals
that name the fields, and a tiny CPU model."""

import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from t1 import config as C
from t1.config import ConfigError
from t1.model.load import count_parameters, load
from t1.rl.config import RLConfig, RLTrainConfig, RolloutConfig
from t1.rollout import memory as M
from t1.rollout.config import EngineConfig, VLLMConfig

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
GiB = M.GiB
V = 152064  # Qwen2.5's vocabulary


def paper(size: str, *overrides: str) -> RLConfig:
    return C.load(RLConfig, CONFIGS / f"rl_qwen2.5_{size}.yaml", list(overrides))


def estimate(size: str, world: int = 8, *overrides: str) -> M.Report:
    """As the config headers launch them: FSDP (sharded) with activation checkpointing, 8 GPUs per node."""
    return M.check_rl(paper(size, *overrides), M.qwen25(size), world, 8, M.GPU_80GB, sharded=True,
                      checkpointing=True, refuse=False)


def line(r: M.Report, prefix: str) -> float:
    return sum(b for name, _, b in r.lines if name.startswith(prefix)) / GiB


def gib(x: float) -> float:
    return x / GiB


# ------------------------------------------------------------------------------------------------ shapes


@pytest.mark.parametrize("size, exact, hub", [("7b", 7_615_616_512, 7.62e9), ("14b", 14_770_033_664, 14.8e9),
                                              ("32b", 32_763_876_352, 32.8e9)])
def test_qwen25_parameters(size, exact, hub):
    shape = M.Shape.of(M.qwen25(size))
    assert shape.params == exact
    assert abs(shape.params - hub) / hub < 0.02
    assert M.Shape.of(f"runs/sft-qwen2.5-{size}/final") == shape  # a path naming the size, no download


def test_parameter_formula_matches_transformers():
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    qwen = Qwen2Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                       intermediate_size=96, vocab_size=300, tie_word_embeddings=False)
    llama = LlamaConfig(hidden_size=48, num_hidden_layers=3, num_attention_heads=6, num_key_value_heads=3,
                        intermediate_size=80, vocab_size=200, tie_word_embeddings=True)
    for cfg, cls in [(qwen, Qwen2ForCausalLM), (llama, LlamaForCausalLM)]:
        with torch.device("meta"):
            model = cls(cfg)
        assert M.Shape.of(cfg).params == count_parameters(model)


def test_shape_from_local_dir_and_unknown_name(tiny_model_dir):
    model, _ = load(tiny_model_dir, dtype="float32")
    assert M.Shape.of(tiny_model_dir).params == count_parameters(model)
    with pytest.raises(ConfigError, match="no Qwen2.5 size"):
        M.Shape.of("runs/some-model/final")


def test_kv_and_activation_bytes_per_token():
    s7, s14 = M.Shape.of(M.qwen25("7b")), M.Shape.of(M.qwen25("14b"))
    assert s7.kv_per_token(2) == 2 * 28 * 4 * 128 * 2 == 57_344
    assert s7.kv_per_token(2, tp=2) == 28_672
    assert s14.kv_per_token(2, tp=8) == s14.kv_per_token(2, tp=16) == 2 * 48 * 1 * 128 * 2  # kv heads replicate
    assert s7.act_per_token(False) == 28 * (28 * 3584 + 12 * 512 + 8 * 18944)  # 7.3 MB per token
    assert s7.act_per_token(True, bf16_weights=True) == 28 * 2 * 3584 + 2 * (18 * 3584 + 12 * 512 + 8 * 18944)


# ------------------------------------------------------------------------- the committed paper configs


def launched_processes(size: str) -> int:
    header = (CONFIGS / f"rl_qwen2.5_{size}.yaml").read_text().split("\nout:")[0]
    assert "--use_fsdp" in header and "--fsdp_activation_checkpointing true" in header
    return int(re.search(r"--num_processes (\d+)", header).group(1))


@pytest.mark.parametrize("size", ["7b", "14b", "32b"])
def test_paper_configs_use_vllm_with_sleep_mode(size):
    cfg = paper(size)
    assert cfg.rollout.engine == "vllm" and cfg.rollout.vllm.enable_sleep_mode
    assert cfg.rollout.vllm.max_model_len == 1024 + cfg.rollout.max_new_tokens == cfg.train.micro_batch_tokens
    assert cfg.train.logits_chunk == 2048


@pytest.mark.parametrize("size, gpus", [("7b", 8), ("14b", 8), ("32b", 32)])
def test_paper_configs_fit_as_their_headers_launch_them(size, gpus):
    """7B and 14B on one node of 8 × 80 GB, 32B on four: no refusal (the trainer would print this and go on)."""
    assert launched_processes(size) == gpus
    r = M.check_rl(paper(size), M.qwen25(size), gpus, 8, M.GPU_80GB, sharded=True, checkpointing=True)
    assert r.fits and r.peak <= M.GPU_80GB
    assert paper(size).rollout.prompts_per_step % gpus == 0


@pytest.mark.parametrize("size, static, update, peak, kv", [("7b", 16.2, 22.6, 71.6, 153),
                                                            ("14b", 29.5, 30.9, 73.0, 67)])
def test_7b_and_14b_on_8_gpus(size, static, update, peak, kv):
    """The numbers in the headers: the anchor sharded like the policy, log-probs 2048 positions at a time."""
    r = estimate(size)
    n, (h, layers) = M.Shape.of(M.qwen25(size)).params, M.QWEN25[size][:2]
    assert line(r, "policy fp32") == line(r, "anchor fp32 /8") == pytest.approx(4 * n / 8 / GiB)
    assert line(r, "AdamW") == pytest.approx(8 * n / 8 / GiB)
    assert line(r, "logits") == pytest.approx(11264 * V * 2 / GiB)  # bf16, their gradient written over them
    assert line(r, "log-prob chunk") == pytest.approx(2048 * V * 8 / GiB)  # two fp32 [2048, V] buffers
    head = 2 * V * h
    assert line(r, "FSDP gathered") == pytest.approx(4 * (head + 2 * (n - head) / layers) / GiB)
    assert gib(r.total("static")) == pytest.approx(static, abs=0.05)
    assert gib(r.total("update")) == pytest.approx(update, abs=0.05)
    assert gib(r.peak) == pytest.approx(peak, abs=0.05)  # sleep mode: static + max(sample, update)
    assert r.kv_sequences == kv and r.need_sequences == 256 and "waves" in r.notes[0]  # a warning, not a refusal


def test_7b_vllm_share():
    r = estimate("7b")
    n = 7_615_616_512
    assert gib(r.total("sample")) == pytest.approx(0.7 * M.GPU_80GB / GiB) == pytest.approx(55.4, abs=0.05)
    vllm_weights = 2 * n / 2  # bf16, tensor_parallel_size 2: within 2 % of 7.6e9 params × 2 bytes / 2
    assert abs(vllm_weights - 7.6e9) / 7.6e9 < 0.02
    kv = 0.7 * M.GPU_80GB - vllm_weights - M.VLLM_RUNTIME
    assert r.kv_tokens == int(kv // 28_672) and r.kv_sequences == r.kv_tokens // 11264 == 153


def test_unchunked_log_probs_cost_the_update_10_gib():
    """train.logits_chunk=0: one pair of fp32 [11264, V] buffers; 14B still fits (vLLM's share is the peak)."""
    chunked, whole = estimate("14b"), estimate("14b", 8, "train.logits_chunk=0")
    assert line(whole, "log-prob chunk 11264") == pytest.approx(11264 * V * 8 / GiB)  # 12.8
    assert whole.total("update") - chunked.total("update") == pytest.approx((11264 - 2048) * V * 8)  # 10.4 GiB
    assert whole.fits and whole.peak == chunked.peak


def test_32b_needs_32_gpus():
    r = estimate("32b", 32)
    assert gib(r.total("static")) == pytest.approx(17.3, abs=0.05)
    assert gib(r.total("update")) == pytest.approx(42.7, abs=0.05)
    assert gib(r.peak) == pytest.approx(72.6, abs=0.05) and r.kv_sequences == 86
    assert line(r, "logits") == pytest.approx(17408 * V * 2 / GiB)
    server = estimate("32b", 8, "rollout.engine=vllm_server")  # sampling elsewhere: 8 GPUs still cannot
    assert gib(server.peak) == pytest.approx(116.2, abs=0.05) and "16 GPUs" in server.problems[0]
    with pytest.raises(ConfigError, match="16 GPUs"):
        M.check_rl(paper("32b"), M.qwen25("32b"), 8, 8, M.GPU_80GB, True, True)
    assert "gpu_memory_utilization to ≤ 0.58" in estimate("32b", 16).problems[0]  # vLLM's 0.7 cannot sit by 32.5
    edge = estimate("32b", 16, "rollout.vllm.gpu_memory_utilization=0.5")
    assert edge.fits and gib(edge.peak) == pytest.approx(79.0, abs=0.05)  # on paper only: no margin (header)


def test_a_full_anchor_per_process_is_what_sharding_saves():
    """Without FSDP (DDP) every process holds the whole anchor, 4 bytes per parameter: 28.4 GiB at 7B."""
    r = M.check_rl(paper("7b"), M.qwen25("7b"), 8, 8, M.GPU_80GB, sharded=False, checkpointing=True, refuse=False)
    anchor = line(r, "anchor fp32 full copy")
    assert anchor == pytest.approx(4 * 7_615_616_512 / GiB) == pytest.approx(28.4, abs=0.05)
    assert "FSDP (accelerate launch --use_fsdp)" in r.problems[-1]


# ------------------------------------------------------------------------------------- refusals, warnings


def test_fast_engine_at_paper_scale_is_refused():
    cfg = paper("7b", "rollout.engine=fast")
    with pytest.raises(ConfigError, match=r"rollout\.max_batch or rollout\.max_new_tokens") as e:
        M.check_rl(cfg, M.qwen25("7b"), 8, 8, M.GPU_80GB, True, True)
    # 256 sequences × (1024 + 10240) tokens × 28 layers × 2 × 4 kv heads × 128 × 4 bytes (fp32): 308 GiB
    assert "308.0 GiB for 256 × 11264" in str(e.value)


def test_vllm_share_too_small_or_too_large_names_the_fields():
    qwen = M.qwen25("7b")
    with pytest.raises(ConfigError, match=r"raise rollout\.vllm\.gpu_memory_utilization or rollout\.vllm\."
                                          r"tensor_parallel_size"):
        M.check_rl(paper("7b", "rollout.vllm.gpu_memory_utilization=0.1"), qwen, 8, 8, M.GPU_80GB, True, True)
    with pytest.raises(ConfigError, match="cannot hold one 11264-token sequence"):
        M.check_rl(paper("7b", f"rollout.vllm.kv_cache_memory_bytes={100 << 20}"), qwen, 8, 8, M.GPU_80GB, True,
                   True)
    with pytest.raises(ConfigError, match=r"gpu_memory_utilization to ≤ 0\.79"):
        M.check_rl(paper("7b", "rollout.vllm.gpu_memory_utilization=0.9"), qwen, 8, 8, M.GPU_80GB, True, True)
    with pytest.raises(ConfigError, match="tensor_parallel_size 3 must divide"):
        M.check_rl(paper("7b", "rollout.vllm.tensor_parallel_size=3"), qwen, 8, 8, M.GPU_80GB, True, True)
    with pytest.raises(ConfigError, match="max_model_len 10240 leaves no room"):
        M.check_rl(paper("7b", "rollout.vllm.max_model_len=10240"), qwen, 8, 8, M.GPU_80GB, True, True)


def test_without_sleep_mode_vllm_holds_its_share_through_the_update():
    r = estimate("7b", 8, "rollout.vllm.enable_sleep_mode=false")
    assert r.overlap and gib(r.peak) == pytest.approx(16.19 + 55.37 + 21.62, abs=0.05)  # nothing kept asleep
    assert "rollout.vllm.enable_sleep_mode" in r.problems[0]


def test_unsharded_ddp_and_micro_batch_tokens():
    r = M.check_rl(paper("7b"), M.qwen25("7b"), 8, 8, M.GPU_80GB, sharded=False, checkpointing=False, refuse=False)
    assert gib(r.total("static")) == pytest.approx(2 + (4 + 8 + 4 + 4) * 7_615_616_512 / GiB)  # + DDP buckets
    assert "--use_fsdp --fsdp_activation_checkpointing true" in r.problems[-1]
    big = estimate("7b", 8, "train.micro_batch_tokens=131072")
    assert line(big, "activations, 131072") > 0 and "change train.micro_batch_tokens" in big.problems[-1]


def test_enough_kv_gives_no_note():
    r = M.check_rl(paper("7b", "rollout.vllm.tensor_parallel_size=8"), M.qwen25("7b"), 8, 8, M.GPU_80GB, True,
                   True)
    assert r.kv_sequences >= r.need_sequences == 256 and r.notes == []


def test_sharding_and_checkpointing_from_accelerate_launch(monkeypatch):
    for k in ("ACCELERATE_USE_FSDP", "FSDP_ACTIVATION_CHECKPOINTING", "ACCELERATE_USE_DEEPSPEED"):
        monkeypatch.delenv(k, raising=False)
    assert M.launched() == (False, False)
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_ACTIVATION_CHECKPOINTING", "true")
    assert M.launched() == (True, True)
    r = M.check_rl(paper("7b"), M.qwen25("7b"), 8, 8, M.GPU_80GB)
    assert r.fits and "FSDP-sharded, checkpointed" in r.title


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU answers for itself")
def test_device_memory_needs_an_argument_without_a_gpu():
    with pytest.raises(ValueError, match="device_bytes"):
        M.device_memory(None)
    assert M.device_memory(123) == 123


def test_format_report_is_a_table():
    r = estimate("7b", 8)
    text = M.format_report(r)
    assert all(name in text for name, _, _ in r.lines)
    assert "peak = static + max(sample, update, ckpt, push)" in text and "71.56  of 79.1" in text
    assert "host RAM per node, peak: 113.5 GiB" in text
    assert text.splitlines()[-1] == "  verdict: fits"


# ------------------------------------------------------------------------------ tiny model, CPU, sampling


def test_tiny_model_on_cpu(tiny_model_dir):
    model, _ = load(tiny_model_dir, dtype="float32")
    n = count_parameters(model)
    cfg = RLConfig(model=str(tiny_model_dir), rollout=RolloutConfig(
        engine="fast", prompts_per_step=8, samples_per_prompt=4, max_new_tokens=64, max_batch=16),
        train=RLTrainConfig(micro_batch_tokens=2048))
    r = M.check_rl(cfg, tiny_model_dir, 1, 1, 3 * GiB, sharded=False, checkpointing=False, prompt_tokens=32)
    c = model.config
    kv = 16 * 96 * 2 * c.num_hidden_layers * c.num_key_value_heads * (c.hidden_size // c.num_attention_heads) * 4
    assert line(r, "fast engine KV") * GiB == kv  # min(max_batch 16, 8 × 4 sequences) × (32 + 64) tokens, fp32
    assert line(r, "fast engine bf16 weights") * GiB == 2 * n
    assert line(r, "policy fp32 weights") * GiB == 4 * n and line(r, "anchor fp32 full") * GiB == 4 * n
    assert r.total("update") == pytest.approx(4 * n + 2 * n + 2 * n + 2048 * M.Shape.of(c).act_per_token(False)
                                              + 2048 * c.vocab_size * (2 + 8), rel=1e-6)  # logits, chunk
    assert r.peak == r.total("static") + max(r.total("sample"), r.total("update"))
    with pytest.raises(ConfigError, match="train.micro_batch_tokens"):
        M.check_rl(cfg, tiny_model_dir, 1, 1, M.RUNTIME + (8 << 20), sharded=False, checkpointing=False,
                   prompt_tokens=32)


def test_check_sampling_for_eval():
    vllm = EngineConfig(engine="vllm", vllm=VLLMConfig(gpu_memory_utilization=0.9))
    r = M.check_sampling(vllm, M.qwen25("32b"), max_len=17408, batch=500, device_bytes=M.GPU_80GB)
    assert r.need_sequences == 256 and r.kv_sequences == int((0.9 * M.GPU_80GB - 2 * 32_763_876_352 - 2 * GiB)
                                                             // (2 * 64 * 8 * 128 * 2)) // 17408
    with pytest.raises(ConfigError, match=r"raise vllm\.gpu_memory_utilization"):  # 61.0 GiB of weights at tp 1
        M.check_sampling(replace(vllm, vllm=VLLMConfig(gpu_memory_utilization=0.5)), M.qwen25("32b"), 17408, 500,
                         M.GPU_80GB)
    with pytest.raises(ConfigError, match="lower max_batch or max_new_tokens"):
        M.check_sampling(EngineConfig(engine="fast"), M.qwen25("7b"), 11264, 512, M.GPU_80GB)
    assert M.check_sampling(EngineConfig(engine="vllm_server"), M.qwen25("32b"), 17408, 500, M.GPU_80GB).peak == \
        M.RUNTIME


@pytest.mark.parametrize("weights", [torch.float32, torch.bfloat16])
def test_activation_formula_matches_what_autograd_saves(weights):
    """The per-layer bytes per token: a 2-layer minus a 1-layer transformers Qwen2 under bf16 autocast, counting
    the storages autograd saves that scale with the tokens (fp32 weights: DDP / one process; bf16: FSDP)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    T = 256

    def saved(layers):
        cfg = Qwen2Config(hidden_size=384, intermediate_size=1536, num_hidden_layers=layers, num_attention_heads=6,
                          num_key_value_heads=2, vocab_size=500, tie_word_embeddings=False)
        cfg._attn_implementation = "sdpa"
        model = Qwen2ForCausalLM(cfg).to(weights)
        storages = {}

        def pack(t):
            if T in t.shape:
                storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast("cpu", torch.bfloat16):
            model.model(input_ids=torch.randint(0, 500, (1, T)))
        return sum(storages.values()), M.Shape.of(cfg)

    (two, shape), (one, _) = saved(2), saved(1)
    formula = shape.act_per_token(False, bf16_weights=weights == torch.bfloat16) / 2
    assert (two - one) / T == pytest.approx(formula, rel=0.03)


def test_lora_adapter_count_matches_peft_and_shrinks_the_trainer_state():
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      intermediate_size=96, vocab_size=300, tie_word_embeddings=False)
    model = get_peft_model(Qwen2ForCausalLM(cfg), LoraConfig(r=8, target_modules="all-linear"))
    assert M.Shape.of(cfg).lora_params(8) == sum(p.numel() for p in model.parameters() if p.requires_grad)
    # 7B on 8 GPUs under DDP: full fine-tuning cannot fit (whole anchor, moments, gradients per process) ...
    full = M.check_rl(paper("7b"), M.qwen25("7b"), 8, 8, M.GPU_80GB, sharded=False, checkpointing=True,
                      refuse=False)
    lora = M.check_rl(paper("7b", "lora.rank=16"), M.qwen25("7b"), 8, 8, M.GPU_80GB, sharded=False,
                      checkpointing=True, refuse=False)
    assert not full.fits and lora.fits, lora.problems
    adapter = M.Shape.of(M.qwen25("7b")).lora_params(16)
    assert line(lora, "LoRA adapter + AdamW") == pytest.approx(12 * adapter / GiB)  # weights + AdamW moments
    assert line(lora, "anchor: the adapter's EMA") == pytest.approx(4 * adapter / GiB)
    assert line(lora, "LoRA base weights bf16") == pytest.approx(2 * 7_615_616_512 / GiB)
    assert line(full, "AdamW moments") > 50 * 8 * adapter / GiB


# ------------------------------------------------------------------------- checkpoint, push and host RAM

TiB = 1 << 40


@pytest.mark.parametrize("size, gpus, ckpt, push, host", [("7b", 8, 9.12, 12.15, 113.5),
                                                          ("14b", 8, 12.60, 13.68, 220.1),
                                                          ("32b", 32, 12.60, 14.43, 488.2)])
def test_checkpoint_push_and_host_ram_of_the_paper_configs(size, gpus, ckpt, push, host):
    """The root unit (embed + lm_head) gathered in fp32 twice at a checkpoint, once at a push beside vLLM's
    awake weights; host RAM per node: the main process alone loads the fp32 model (4N), a resume maps the
    trainer state (12N), the checkpoint gathers 16N: every paper config fits a 1 TiB host; on 128 GiB only
    7B does. Without FSDP every process would read the model: 8 × 4N more."""
    r = M.check_rl(paper(size), M.qwen25(size), gpus, 8, M.GPU_80GB, sharded=True, checkpointing=True,
                   refuse=False, host_bytes=TiB)
    n, h = M.Shape.of(M.qwen25(size)).params, M.QWEN25[size][0]
    assert line(r, "checkpoint: root unit") == pytest.approx(2 * 4 * 2 * V * h / GiB)
    assert gib(r.total("checkpoint")) == pytest.approx(ckpt, abs=0.01)
    assert gib(r.total("push")) == pytest.approx(push, abs=0.01)
    assert gib(r.host_peak) == pytest.approx(host, abs=0.1) and r.fits
    assert dict(r.host)["trainer state on resume (mapped; once per node)"] == 12 * n
    assert r.host[0] == ("model load: fp32 in the main process (the others take their FSDP shards from it)", 4 * n)
    small = M.check_rl(paper(size), M.qwen25(size), gpus, 8, M.GPU_80GB, sharded=True, checkpointing=True,
                       refuse=False, host_bytes=TiB // 8)
    assert small.fits == (size == "7b")
    if size == "32b":
        with pytest.raises(ConfigError, match=r"host RAM: 488 GiB per node needed of 128 .*with more RAM \["):
            M.check_rl(paper(size), M.qwen25(size), gpus, 8, M.GPU_80GB, True, True, host_bytes=TiB // 8)
    unsharded = M.check_rl(paper(size), M.qwen25(size), gpus, 8, M.GPU_80GB, sharded=False, refuse=False)
    assert dict(unsharded.host)["model load: fp32 in each of 8 processes"] == 8 * 4 * n


def test_a_config_that_fits_only_without_the_checkpoint_phase_is_refused():
    """A model whose embeddings dominate (a large vocabulary, two layers) and short sequences: sampling and the
    update fit, the checkpoint's fp32 gather of embed + lm_head does not — refused before the run, not at its
    first checkpoint."""
    from transformers import Qwen2Config

    big_vocab = Qwen2Config(hidden_size=4096, num_hidden_layers=2, num_attention_heads=32, num_key_value_heads=8,
                            intermediate_size=11008, vocab_size=600_000, tie_word_embeddings=False)
    cfg = paper("7b", "rollout.max_new_tokens=256", "train.micro_batch_tokens=512",
                "rollout.vllm.max_model_len=512", f"rollout.vllm.kv_cache_memory_bytes={GiB}",
                "rollout.vllm.tensor_parallel_size=8")
    r = M.check_rl(cfg, big_vocab, 8, 8, 10 * M.GPU_80GB, True, True, refuse=False)
    other = r.total("static") + max(r.total("sample"), r.total("update"), r.total("push"))
    device = int(other + 0.5 * (r.peak - other))  # between: everything but the checkpoint fits
    assert r.total("static") + r.total("checkpoint") == r.peak > device > other
    with pytest.raises(ConfigError, match=r"a checkpoint \(every train.save_every steps, and final/\) needs"):
        M.check_rl(cfg, big_vocab, 8, 8, device, True, True)


def test_sampling_stages_take_most_of_the_gpu_unless_told():
    """D9: a stage that only samples (eval, filter, scale) has the GPU to itself: vLLM's default share is 0.9
    there and 0.35 (colocated) only in t1 rl; a share the user set is kept in both."""
    from t1.rollout.vllm_engine import VLLMEngine

    assert (VLLMConfig().utilization(False), VLLMConfig().utilization(True)) == (0.9, 0.35)
    assert VLLMConfig(gpu_memory_utilization=0.5).utilization(False) == 0.5
    ecfg = EngineConfig(engine="vllm")
    r = M.check_sampling(ecfg, M.qwen25("32b"), 8192, 8, M.GPU_80GB * 2, refuse=False)  # 61 GiB of weights
    assert line(r, "vLLM share (0.9 × device)") == pytest.approx(0.9 * 2 * M.GPU_80GB / GiB) and r.fits
    for training, util in ((False, 0.9), (True, 0.35)):
        engine = VLLMEngine.__new__(VLLMEngine)
        engine.cfg, engine.cuda, engine.expected, engine.external = VLLMConfig(), True, None, False
        engine.training, engine.sleep_mode = training, training
        assert engine._llm_kwargs(128)["gpu_memory_utilization"] == util


def test_host_ram_of_this_machine_is_a_note(monkeypatch):
    """On the GPU machine itself (no device_bytes) the host lines are checked against its RAM as a note: `t1 rl`
    estimates after the model is loaded, past the start-up peak."""
    monkeypatch.setattr(M, "device_memory", lambda device_bytes=None: M.GPU_80GB)
    monkeypatch.setattr(M, "host_memory", lambda: 1 << 38)
    r = M.check_rl(paper("32b"), M.qwen25("32b"), 32, 8, sharded=True, checkpointing=True)
    assert r.fits and any(n.startswith("host RAM: 488 GiB per node needed of 256") for n in r.notes)


def test_t1_rl_checks_gpu_and_host_memory_before_loading_the_weights(tiny_model_dir, monkeypatch, capsys):
    """On a GPU machine `t1 rl` estimates from the model's config.json before any weight loads, with this
    node's RAM as a limit (a 32B model's per-rank fp32 loads would exhaust it before any later check ran);
    a refusal there is the run's one line."""
    from types import SimpleNamespace

    from t1.stages.rl import RLTrainer

    calls = []

    def check_rl(cfg, model_config, world, gpus, host_bytes=None):
        calls.append((model_config.hidden_size, world, gpus, host_bytes))
        raise ConfigError("host RAM: 2,100 GiB per node needed of 1,024")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr(M, "check_rl", check_rl)
    monkeypatch.setattr(M, "host_memory", lambda: 1 << 40)
    rollout = {"engine": "fast", "max_new_tokens": 64}
    cfg = C.from_dict(RLConfig, {"model": str(tiny_model_dir), "rollout": rollout})
    trainer = SimpleNamespace(cfg=cfg, world=8, acc=SimpleNamespace(is_main_process=True))
    trainer._memory_report = lambda *a, **k: RLTrainer._memory_report(trainer, *a, **k)
    with pytest.raises(ConfigError, match="^host RAM"):
        RLTrainer._check_budget(trainer)
    assert calls == [(32, 8, 8, 1 << 40)]
