"""Bounds that depend on the model and the machine, checked once the model's config is known and before its
weights load (or, for `t1 rl`, before anything samples) — the hard caps are :mod:`t1.rollout.base`'s.

* **Context.** An engine that runs the model here (fast, generate, vllm) cannot sample past the model's
  context, ``max_position_embeddings`` in its config.json: beyond it the positions were never trained (RoPE
  extrapolates into noise), and vLLM refuses such a request (``max_tokens`` > ``max_model_len``). So a budget
  that leaves no room for a prompt is refused, as is — where the prompts are known (`t1 rl`) — a longest prompt
  + budget past the context. Server engines (vllm_server, openai) are left to their server, which knows its
  own ``max_model_len`` (a local copy of the tokenizer says nothing about it) and refuses with an HTTP 400.
* **Host memory** (fast and generate engines without a GPU; on a GPU :mod:`t1.rollout.memory` estimates it).
  At least: the fp32 weights as loaded, 4 bytes per parameter (unless already loaded), and for each of the
  min(max_batch, sequences) sequences decoded together, per position (prompt + budget): the KV cache, 2 ×
  layers × kv_heads × head_dim × (2 bytes for the fast engine's bf16 cache, 4 for fp32), plus
  :data:`ROW_BYTES` of per-position buffers (the fast engine's random numbers, tokens, log-probs, padding
  mask). It must fit MemAvailable (/proc/meminfo, else ``os.sysconf``), else the run would be killed by the
  kernel's OOM killer minutes in, or swap for hours. Every term is a lower bound, so a refusal is certain.
"""

from __future__ import annotations

import os
from pathlib import Path

from t1.config import ConfigError

GiB = 1 << 30
ROW_BYTES = 33  # fast engine, per (sequence, position): uniforms 8 + tokens 2 × 8 + log-probs 2 × 4 + mask 1
GENERATE_BATCH = 256  # t1.rollout.memory.GENERATE_BATCH: sequences HF generate decodes together
LOCAL_ENGINES = ("fast", "generate", "vllm")  # engines that run the model in this process


def available_memory() -> int | None:
    """Bytes this machine can still give a process without swapping: MemAvailable of /proc/meminfo, else
    free pages × page size (``os.sysconf``); None when neither is known (the check is then skipped)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def local_config(model_path) -> object | None:
    """The transformers config of a model on this disk (its config.json), or None (a hub name: read when the
    model loads, and checked then for `t1 rl`)."""
    if not model_path or not (Path(model_path) / "config.json").is_file():
        return None
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(str(model_path))
    except (OSError, ValueError, KeyError):  # unreadable or an unknown architecture: the loader says why
        return None


def check_context(config, budget: int, max_len: int = 0, field: str = "max_new_tokens",
                  model_len: int = 0) -> None:
    """Refuse a ``budget`` (new tokens) the model's context cannot hold: with the prompts known (``max_len``
    = longest prompt + budget) when that is past the context, else when not even a one-token prompt fits.
    ``model_len``: vLLM's max_model_len when set (its limit instead of the model's)."""
    ctx, what = getattr(config, "max_position_embeddings", None), "the model's context (max_position_embeddings)"
    if model_len:
        ctx, what = model_len, "vllm.max_model_len"
    if not isinstance(ctx, int) or ctx < 1:
        return
    if max_len > ctx:
        raise ConfigError(f"{field}: {budget:,} + the longest prompt ({max_len - budget:,} tokens) = {max_len:,} "
                          f"tokens is more than the {ctx:,} of {what}: lower {field}")
    if budget >= ctx:
        raise ConfigError(f"{field}: {budget:,} leaves no room for a prompt in the {ctx:,} tokens of {what}: "
                          f"lower it below {ctx:,}")


def check_host_memory(ecfg, kind: str, config, budget: int, batch: int, max_len: int = 0, loaded: bool = False,
                      field: str = "max_new_tokens", where: str = "rollout.",
                      available: int | None = None) -> None:
    """Refuse a fast/generate run whose weights (unless ``loaded``) and KV cache for min(max_batch, ``batch``)
    sequences of ``max_len`` (or ``budget``) tokens cannot fit this machine's memory (see the module doc).
    ``where``: the engine options' prefix; ``field``: the budget's name."""
    from t1.rollout.memory import Shape

    if kind not in ("fast", "generate"):
        return
    available = available_memory() if available is None else available
    try:
        shape = Shape.of(config)
    except (AttributeError, TypeError):  # an architecture the estimate does not know: not checked
        return
    if available is None:
        return
    rows = min(ecfg.max_batch if kind == "fast" else GENERATE_BATCH, batch or ecfg.max_batch)
    length = max_len or budget
    kv_bytes = 2 if kind == "fast" and ecfg.dtype != "float32" else 4
    kv = rows * length * (shape.kv_per_token(kv_bytes) + (ROW_BYTES if kind == "fast" else 0))
    weights = 0 if loaded else 4 * shape.params
    if weights + kv > available:
        have = f"{weights / GiB:.1f} GiB of fp32 weights + " if weights else ""
        raise ConfigError(f"{field}: the {kind} engine needs at least {have}{kv / GiB:.1f} GiB of KV cache for "
                          f"{rows:,} sequences × {length:,} tokens, more than the {available / GiB:.1f} GiB "
                          f"this machine has available (MemAvailable): lower {field} or {where}max_batch, or "
                          f"sample on a GPU / a server (t1.rollout.bounds)")


def check_engine(ecfg, kind: str, config, budget: int, batch: int = 0, max_len: int = 0, loaded: bool = False,
                 field: str = "max_new_tokens", where: str = "rollout.") -> None:
    """Both checks, for an engine ``kind`` about to run the model ``config`` (a transformers config)."""
    import torch

    if kind not in LOCAL_ENGINES or config is None or not budget:
        return
    model_len = ecfg.vllm.max_model_len if kind == "vllm" else 0
    check_context(config, budget, max_len, field, model_len)
    if not torch.cuda.is_available():  # on a GPU: t1.rollout.memory's estimate
        check_host_memory(ecfg, kind, config, budget, batch, max_len, loaded, field, where)
