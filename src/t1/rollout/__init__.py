"""Sampling engines behind one small interface.

``engine.generate(prompts, seeds, params) -> list[Sample]``: one sample per prompt (repeat a prompt K times
for K samples), each with its own seed, so a sample depends only on its prompt, seed and the weights — not
on which other prompts share its batch or process.

Engines: :class:`t1.rollout.fast.FastEngine` (transformers weights, our decode loop; CPU and single GPU),
:class:`t1.rollout.hf_generate.GenerateEngine` (plain ``model.generate``, any architecture),
:class:`t1.rollout.vllm_engine.VLLMEngine` (vLLM inside the training process),
:class:`t1.rollout.vllm_server.VLLMServerEngine` (running ``vllm serve`` instances, weights pushed) and
:class:`t1.rollout.openai.OpenAIEngine` (any OpenAI-compatible server, no weight pushes). The table and each
engine's settings: :mod:`t1.rollout.config`.
"""

from __future__ import annotations

from pathlib import Path

from t1.rollout.base import Engine, EngineError, Sample, SamplingParams, sample_seed

__all__ = ["Engine", "EngineError", "Sample", "SamplingParams", "sample_seed", "make_engine", "open_engine",
           "close_engine"]


def make_engine(cfg, model, tokenizer, *, model_path: str | None = None, max_len: int = 0,
                run_dir: str | None = None, training: bool = False, process: tuple[int, int] | None = None
                ) -> Engine:
    """The engine ``cfg`` (a :class:`t1.rollout.config.EngineConfig`, or just an engine name) asks for.
    ``model`` is the loaded policy (fast/generate sample from it); ``model_path`` is where vLLM loads the
    starting weights from; ``max_len`` the longest prompt + budget; ``run_dir`` holds disk-synced weights.
    ``training``: `t1 rl`'s engine, pushed every weight before it samples and asleep in between — vLLM may
    then start from dummy weights and run in sleep mode; every other stage's (:func:`open_engine`) reads the
    checkpoint and never sleeps (:mod:`t1.rollout.vllm_engine`). ``process`` = (slots, threads): the fast
    engine in a child process on a copy of the weights with that many versions in shared memory
    (:class:`t1.rollout.process.ProcessEngine`, asynchronous RL).
    A ``t1 rl`` rollout config carries its budget and step size: they are checked against the policy's context
    and this machine's memory here, before anything samples (:func:`t1.rollout.bounds.check_engine`)."""
    from t1.rollout.config import EngineConfig, resolve

    if isinstance(cfg, str):
        cfg = EngineConfig(engine=cfg)
    kind = resolve(cfg.engine)
    if kind == "fast":
        from t1.model.forward import llama_family

        kind = "fast" if llama_family(model) else "generate"
        if kind == "generate" and process is not None:
            from t1.config import ConfigError

            raise ConfigError("train.max_staleness: the sampler process runs the fast engine, which needs a "
                              "Llama-family model (Llama, Qwen2, Mistral); use rollout.engine=vllm_server, or 0")
    _check_rollout(cfg, kind, model, max_len)
    if kind == "fast" and process is not None:
        from t1.rollout.process import ProcessEngine

        return ProcessEngine(model, tokenizer, slots=process[0], threads=process[1], dtype=cfg.dtype,
                             max_batch=cfg.max_batch)
    if kind == "fast":
        from t1.rollout.fast import FastEngine

        return FastEngine(model, tokenizer, max_batch=cfg.max_batch, dtype=cfg.dtype)
    if kind == "generate":
        from t1.rollout.hf_generate import GenerateEngine

        return GenerateEngine(model, tokenizer)
    if kind == "vllm":
        from t1.rollout.vllm_engine import VLLMEngine

        if model_path is None:
            raise ValueError("engine vllm needs the model's path")
        return VLLMEngine(model_path, tokenizer, cfg.vllm, max_len=max_len, training=training)
    if kind == "vllm_server":
        from t1.rollout.vllm_server import VLLMServerEngine

        return VLLMServerEngine(tokenizer, cfg.vllm_server, run_dir=run_dir,
                                vocab_size=_vocab_size(model, model_path))
    from t1.rollout.openai import OpenAIEngine

    return OpenAIEngine(tokenizer=tokenizer, cfg=cfg.openai, vocab_size=_vocab_size(model, model_path))


def _check_rollout(cfg, kind: str, model, max_len: int) -> None:
    """`t1 rl`'s budget (a RolloutConfig has ``max_new_tokens``) against the loaded policy's context and, on a
    CPU, the memory its step's sequences need per process; other configs were checked by :func:`open_engine`."""
    budget = getattr(cfg, "max_new_tokens", 0)
    if not budget or model is None:
        return
    import torch

    from t1.model import lora
    from t1.rollout import bounds

    dist = torch.distributed
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    per_process = -(-cfg.prompts_per_step * cfg.samples_per_prompt // world)
    bounds.check_engine(cfg, kind, getattr(lora.base_of(model), "config", None), budget, per_process, max_len,
                        loaded=True, field="rollout.max_new_tokens")


def _vocab_size(model, model_path: str | None) -> int:
    """The model's vocabulary (its embedding rows, which may exceed the tokenizer's), from the loaded model or
    the checkpoint's config.json; 0 when neither says. Bounds the token ids a server may return."""
    import json
    from pathlib import Path

    size = getattr(getattr(model, "config", None), "vocab_size", None)
    if size is None and model_path and (Path(model_path) / "config.json").is_file():
        try:
            size = json.loads((Path(model_path) / "config.json").read_text(encoding="utf-8")).get("vocab_size")
        except (OSError, ValueError, AttributeError):
            size = None
    return size if isinstance(size, int) else 0


def open_engine(cfg, model_path: str, *, max_len: int = 0, run_dir: str | None = None, batch: int = 0,
                budget: int = 0, field: str = "max_new_tokens"):
    """(engine, tokenizer, engine name) for sampling from the checkpoint at ``model_path``. The Hugging Face
    model is loaded only for the engines that sample from it (fast, generate): a vLLM engine loads its own
    weights, so a 32B evaluation never holds a second fp32 copy in host memory. With ``batch`` sequences of
    ``budget`` new tokens (``field``: the budget's option), before any weights load: more than MAX_SEQUENCES
    at once, or a budget past the model's context or this machine's memory, is refused
    (:mod:`t1.rollout.bounds`); on a GPU the memory estimate is printed and an impossible configuration
    refused (:mod:`t1.rollout.memory`)."""
    import sys

    import torch

    from t1.config import ConfigError
    from t1.model import lora
    from t1.model.load import load, load_tokenizer
    from t1.rollout import bounds
    from t1.rollout.base import MAX_SEQUENCES
    from t1.rollout.config import EngineConfig, resolve

    if isinstance(cfg, str):
        cfg = EngineConfig(engine=cfg)
    kind = resolve(cfg.engine)
    if kind == "vllm" and lora.is_adapter_dir(model_path):  # vLLM loads plain models: a LoRA run's merged copy
        merged = Path(model_path) / "merged"
        if not (merged / "config.json").exists():
            raise ConfigError(f"model: {model_path} is a LoRA adapter and engine vllm loads plain models: train "
                              "with lora.save_merged=true (final/merged/) or use rollout.engine=fast")
        model_path = merged
    if batch > MAX_SEQUENCES:
        raise ConfigError(f"n: {batch:,} sequences in one engine call (problems × samples per problem) is more "
                          f"than {MAX_SEQUENCES:,} (t1.rollout.base.MAX_SEQUENCES): lower n or limit")
    if budget and kind in bounds.LOCAL_ENGINES:
        bounds.check_engine(cfg, kind, bounds.local_config(lora.base_path(model_path)), budget, batch, max_len,
                            field=field)
    if torch.cuda.is_available() and batch and budget:
        from transformers import AutoConfig

        from t1.rollout import memory

        report = memory.check_sampling(cfg, AutoConfig.from_pretrained(lora.base_path(model_path)),
                                       max_len or budget + memory.PROMPT_TOKENS, batch)
        print(memory.format_report(report), file=sys.stderr)
    if kind in ("fast", "generate"):
        model, tok = load(model_path, dtype="float32")
        model.eval()
    else:
        model, tok = None, load_tokenizer(model_path)
    # not `t1 rl`'s engine: vLLM reads the checkpoint and never sleeps (one sleep-mode engine per process)
    engine = make_engine(cfg, model, tok, model_path=str(model_path), max_len=max_len, run_dir=run_dir,
                         training=False)
    return engine, tok, kind


def close_engine(engine) -> None:
    """Release an engine's resources (vLLM's memory) before another one starts in this process."""
    close = getattr(engine, "close", None)
    if close is not None:
        close()
