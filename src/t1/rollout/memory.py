"""Will a run fit? A per-GPU memory estimate, checked before hours go into loading and sampling.

:func:`check_rl` estimates what `t1 rl` holds on each GPU in each phase of a step and raises
:class:`t1.config.ConfigError` (one line naming the fields to change) when it cannot fit, else returns a
:class:`Report` (:func:`format_report` prints it; ``notes`` warn); :func:`check_sampling` does the same for a
stage that only samples. Bytes, for N parameters and T = max(train.micro_batch_tokens, one whole sequence):

* policy as `t1.stages.rl` holds it: fp32 weights 4N and AdamW moments 8N, fp32 gradients 4N in the update,
  each / world under FSDP or ZeRO-3; unsharded also a bf16 cast in the passes 2N and DDP's buckets 4N. Under
  FSDP the units gathered in the update (a guess from FSDP's behaviour, not measured on GPUs): the root unit
  (embeddings and lm_head, kept gathered from the forward through the backward) and GATHER_LAYERS decoder
  layers (the running one and the prefetched one), each in bf16 with its unsharded bf16 gradient (2 + 2 bytes
  per parameter; 4 + 4 under train.precision fp32). The trainer reduce-scatters every micro-batch under FSDP
  (no no_sync), so gradients stay sharded.
* anchor (anchor.mode != none, algo.kl_beta > 0): fp32, 4N, sharded with the policy's FSDP settings under FSDP
  (4N / world: t1.rl.shard; the trainer refuses DeepSpeed ZeRO-3 with an anchor), else a full copy per process
  plus t1.model.forward.Prepared's bf16 copy of it in the KL pass, 2N (train.fast_forward).
* activations: T × layers × (28h + 12kv + 8i) with fp32 weights under bf16 autocast, (18h + 12kv + 8i) with
  FSDP's bf16 weights, h hidden, kv = kv_heads × head_dim, i intermediate: the bytes autograd saves per token
  and layer of a transformers Qwen2 layer with SDPA, measured on CPU (torch 2.13, transformers 5.19; a fit over
  three shapes, within 1 %). The 8i are the MLP's gate, up, silu(gate) and product in bf16; the h terms the
  RMSNorms' fp32 tensors and a bf16 cast of the input per projection — cf. Korthikanti et al. 2022 ("Reducing
  Activation Recomputation in Large Transformer Models": 34h per GPT layer). Checkpointed (accelerate's
  --fsdp_activation_checkpointing true): each layer's input (2h under FSDP, else 4h) plus two layers.
* logits: T × vocab × 2 (bf16; 4 under train.precision fp32): the logits, which t1.rl.logp saves for the
  backward and overwrites with their gradient there; plus its log-prob work, min(train.logits_chunk, T) ×
  vocab × 8 (two fp32 [chunk, vocab] buffers, forward and backward; measured on CPU as the peak resident
  memory of a bf16 forward + backward), or, with an engine that returns log-probs (fast, vllm, vllm_server),
  the sampler check's top-p sort over MISMATCH_ROWS positions at a time × vocab × 41 (measured likewise)
  when that is larger.
* sampling. ``fast``: bf16 weights 2N kept between calls, dense fp32 KV (the bf16 cache is CPU-kernel only) of
  2 × layers × kv × 4 bytes for min(max_batch, sequences) × (prompt + max_new_tokens) tokens; ``generate``: the
  same cache for ≤ 256 sequences on the policy's weights. ``vllm``: gpu_memory_utilization × device (or
  weights + runtime + kv_cache_memory_bytes) = bf16 weights 2N / tensor_parallel_size + 2 GiB runtime (activation
  profile, CUDA graphs, sampler: a guess from typical start-up logs) + KV cache at 2 × layers ×
  ceil(kv_heads / tp) × head_dim × 2 per token. ``vllm_server``, ``openai``: nothing on these GPUs. Plus 2 GiB
  for the CUDA context, NCCL and allocator slack (a guess).

Phases: static lines stay all step; sampling lines (KV, vLLM's share) and update lines (gradients, activations,
logits, bf16 copies) do not overlap: peak = static + max(sample, update, checkpoint, push). ``checkpoint``
(every train.save_every steps and final/, vLLM asleep): under FSDP the largest unit gathered in fp32 twice —
the root unit (embeddings + lm_head; FSDP1's summon_full_params gathers a whole flat parameter, and its full
optimizer state allocates the unsharded flat size once per unit). ``push`` (every step's, a resumed run's
first too): vLLM's weights awake (its KV cache wakes after the push) beside the root unit gathered in fp32.
With sleep mode (GPU) vLLM frees its weights and KV cache after sampling (level 2) and the update reuses them,
less 1 GiB it keeps (CUDA graphs); without it vLLM keeps its share through the update: peak = static + both.
vLLM reserves its share at start and at every wake-up, so the static lines must fit in
(1 − gpu_memory_utilization) × device (the trainer must torch.cuda.empty_cache() before waking it).
A KV cache holding fewer full-length sequences than a step runs at once is a note, not a refusal: vLLM runs them
in waves (slower, not wrong; shorter responses leave room).
Host RAM per node (:func:`host_ram`, printed beside; refused against ``host_bytes``): at start the model is
read in fp32 — under FSDP by the main process only (4N on its node; the others build a skeleton with unwritten
storage and take their shards from it as the model is wrapped: t1.runtime.sharded_state.weights_from_main),
else by every process (4N each); the unsharded anchor copies it again (4N each; under FSDP it is built from
the shards: nothing), a resume maps
``trainer_state.pt`` (AdamW 8N + anchor 4N, shared through the page cache: once per node); at a checkpoint
the main process gathers the policy, anchor and AdamW to its CPU (16N on its node).
Prompts count as PROMPT_TOKENS = 1024 tokens unless rollout.vllm.max_model_len caps the sequence (a generous
guess for MATH-style prompts with a chat template).

Shapes: config.json of Qwen/Qwen2.5-7B, -14B, -32B on the Hugging Face Hub (QWEN25; vocab 152064, untied
embeddings, q/k/v biases): 7.62e9, 14.77e9, 32.76e9 parameters (the Hub's counts: 7.62B, 14.8B, 32.8B).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, replace

from t1.config import ConfigError
from t1.rollout.config import resolve
from t1.rollout.logprobs import MISMATCH_ROWS

GiB = 1 << 30
GPU_80GB = int(79.1 * GiB)  # what torch reports for an 80 GB A100 / H100
PROMPT_TOKENS = 1024
RUNTIME = 2 * GiB  # CUDA context, NCCL, allocator slack
VLLM_RUNTIME = 2 * GiB  # vLLM besides weights and KV cache
VLLM_ASLEEP = 1 * GiB  # what a sleeping vLLM keeps
GENERATE_BATCH = 256
GATHER_LAYERS = 2  # FSDP: decoder layers gathered at once in the update (running + prefetched)
CHUNK_BYTES = 8  # t1.rl.logp: bytes per logit of a chunk (two fp32 buffers)
MISMATCH_BYTES = 41  # t1.rl.batch.Mismatch (processed_logp with top-p): bytes per logit of the rows it takes
# (hidden, layers, heads, kv_heads, intermediate, vocab): config.json of Qwen/Qwen2.5-{7B,14B,32B}
QWEN25 = {"7b": (3584, 28, 28, 4, 18944, 152064), "14b": (5120, 48, 40, 8, 13824, 152064),
          "32b": (5120, 64, 40, 8, 27648, 152064)}


def qwen25(size: str):
    """A transformers ``Qwen2Config`` with Qwen2.5-``size``'s shapes (7b, 14b, 32b), built without a download."""
    from transformers import Qwen2Config

    h, layers, heads, kv, inter, vocab = QWEN25[size.lower()]
    return Qwen2Config(hidden_size=h, num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv,
                       intermediate_size=inter, vocab_size=vocab, tie_word_embeddings=False)


@dataclass(frozen=True)
class Shape:
    """What the estimate needs of a model's config (``inter``: the MLP's intermediate size)."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    inter: int
    vocab: int
    tied: bool
    qkv_bias: bool

    @classmethod
    def of(cls, model_config) -> Shape:
        """From a transformers config, a model directory, or a name naming a Qwen2.5 size ("…qwen2.5-7b…")."""
        if isinstance(model_config, (str, os.PathLike)):
            path = str(model_config)
            if os.path.exists(os.path.join(path, "config.json")):
                from transformers import AutoConfig

                model_config = AutoConfig.from_pretrained(path)
            else:
                size = next((s for s in QWEN25 if f"qwen2.5-{s}" in path.lower().replace("_", "-")), None)
                if size is None:
                    raise ConfigError(f"model: no config.json in {path} and no Qwen2.5 size in its name")
                model_config = qwen25(size)
        c = model_config
        hd = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        return cls(c.hidden_size, c.num_hidden_layers, c.num_attention_heads,
                   getattr(c, "num_key_value_heads", None) or c.num_attention_heads, hd, c.intermediate_size,
                   c.vocab_size, bool(getattr(c, "tie_word_embeddings", False)),
                   c.model_type == "qwen2" or bool(getattr(c, "attention_bias", False)))

    @property
    def params(self) -> int:
        h, q, kv = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim
        attn = h * (q + 2 * kv) + q * h + (q + 2 * kv if self.qkv_bias else 0)
        return self.layers * (attn + 3 * h * self.inter + 2 * h) + self.vocab * h * (1 if self.tied else 2) + h

    def lora_params(self, rank: int) -> int:
        """Adapter parameters at ``rank`` on every projection of every layer (all-linear): r·(in + out) each."""
        h, q, kv, f = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim, self.inter
        return self.layers * rank * ((h + q) + 2 * (h + kv) + (q + h) + 2 * (h + f) + (f + h))

    def kv_per_token(self, nbytes: int, tp: int = 1) -> int:
        return 2 * self.layers * math.ceil(self.kv_heads / tp) * self.head_dim * nbytes

    def act_per_token(self, checkpointing: bool, bf16_weights: bool = False) -> int:
        """Bytes autograd keeps per token (see the module doc); ``bf16_weights``: FSDP's mixed precision."""
        layer = (18 if bf16_weights else 28) * self.hidden + 12 * self.kv_heads * self.head_dim + 8 * self.inter
        residual = (2 if bf16_weights else 4) * self.hidden
        return self.layers * residual + 2 * layer if checkpointing else self.layers * layer


@dataclass
class Report:
    """Per-GPU bytes by line; a line's phase is static (all step), sample or update. ``problems`` refuse,
    ``notes`` warn; ``kv_*``: vLLM's KV cache and the sequences a step runs at once per engine."""

    title: str
    device: int
    world: int = 1
    per_node: int = 1
    lines: list[tuple[str, str, int]] = field(default_factory=list)  # (name, phase, bytes)
    detail: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    overlap: bool = False  # sampling memory held through the update (vLLM without sleep mode)
    tp: int = 1  # vLLM's tensor_parallel_size
    kv_tokens: int = 0
    kv_sequences: int = 0
    need_sequences: int = 0
    host: list[tuple[str, int]] = field(default_factory=list)  # host RAM per node: (name, bytes)
    host_peak: int = 0

    def add(self, name: str, phase: str, nbytes: float) -> None:
        if nbytes:
            self.lines.append((name, phase, int(nbytes)))

    def total(self, phase: str) -> int:
        return sum(b for _, p, b in self.lines if p == phase)

    @property
    def peak(self) -> int:
        s, u = self.total("sample"), self.total("update")
        rest = max(self.total("checkpoint"), self.total("push"))
        return self.total("static") + max(s + u if self.overlap else max(s, u), rest)

    @property
    def fits(self) -> bool:
        return not self.problems


def device_memory(device_bytes: int | None = None) -> int:
    if device_bytes:
        return int(device_bytes)
    import torch

    if not torch.cuda.is_available():
        raise ValueError("no GPU here: pass device_bytes (e.g. t1.rollout.memory.GPU_80GB)")
    return torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory


def _on(name: str) -> bool:
    """An ``accelerate launch`` switch in the environment."""
    return os.environ.get(name, "").lower() in ("1", "true")


def _zero3() -> bool:
    """Whether ``accelerate launch`` set up DeepSpeed ZeRO-3 (whose processes each read the model)."""
    return _on("ACCELERATE_USE_DEEPSPEED") and os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE") == "3"


def launched() -> tuple[bool, bool]:
    """(sharded, checkpointing) as ``accelerate launch`` set them up: FSDP or DeepSpeed ZeRO-3 shard weights,
    gradients and AdamW; ``--fsdp_activation_checkpointing true`` checkpoints every decoder layer."""
    fsdp = _on("ACCELERATE_USE_FSDP")
    return fsdp or _zero3(), fsdp and _on("FSDP_ACTIVATION_CHECKPOINTING")


def _sampling(r: Report, ecfg, shape: Shape, max_len: int, seqs: int, where: str, training: bool) -> None:
    """The engine's lines for ``seqs`` sequences of ``max_len`` tokens per process; ``where``: field prefix;
    ``training``: `t1 rl` (vLLM's default share is then the colocated one)."""
    if ecfg.engine in ("fast", "generate"):
        b = min(ecfg.max_batch if ecfg.engine == "fast" else GENERATE_BATCH, seqs)
        kv = b * max_len * shape.kv_per_token(4)
        if ecfg.engine == "fast":
            r.add("fast engine bf16 weights", "static", 2 * shape.params)
        r.add(f"{ecfg.engine} engine KV fp32, {b} × {max_len} tok", "sample", kv)
        if r.total("static") + kv > r.device:
            r.problems.append(f"the {ecfg.engine} engine's KV cache ({kv / GiB:.1f} GiB for {b} × {max_len} "
                              f"tokens) does not fit beside {r.total('static') / GiB:.1f} GiB: lower "
                              f"{where}max_batch or {where}max_new_tokens, or use engine vllm")
    elif ecfg.engine == "vllm":
        v = ecfg.vllm
        _vllm(r, v, shape, max_len, min(seqs * v.tensor_parallel_size, v.max_num_seqs), f"{where}vllm.",
              v.utilization(training))
    elif ecfg.engine not in ("vllm_server", "openai"):
        raise ConfigError(f"{where}engine: the estimate needs a concrete engine, not {ecfg.engine!r}")


def _vllm(r: Report, v, shape: Shape, max_len: int, need: int, where: str, util: float) -> None:
    tp, weights = v.tensor_parallel_size, 2 * shape.params / v.tensor_parallel_size
    own = v.kv_cache_memory_bytes
    share = weights + VLLM_RUNTIME + own if own else util * r.device
    kv = max(0.0, share - weights - VLLM_RUNTIME)
    r.kv_tokens, r.need_sequences = int(kv // shape.kv_per_token(2, tp)), need
    r.kv_sequences = r.kv_tokens // max_len
    r.overlap = not v.enable_sleep_mode
    r.add("vLLM share (weights + runtime + kv_cache_memory_bytes)" if own else
          f"vLLM share ({util:g} × device)", "sample", share)
    r.add("vLLM asleep (CUDA graphs)", "update", 0 if r.overlap else VLLM_ASLEEP)
    r.detail.append(f"vLLM: weights bf16 /tp{tp} {weights / GiB:.1f} + runtime {VLLM_RUNTIME / GiB:.1f} + KV "
                    f"{kv / GiB:.1f} GiB = {r.kv_tokens:,} tokens = {r.kv_sequences} sequences of {max_len}; "
                    f"a step runs {need} at once per engine")
    fix = f"raise {where}gpu_memory_utilization or {where}tensor_parallel_size"
    if weights + VLLM_RUNTIME >= share:
        r.problems.append(f"vLLM's {weights / GiB:.1f} GiB of weights + {VLLM_RUNTIME / GiB:.0f} runtime do not "
                          f"fit its {share / GiB:.1f} GiB: {fix}")
    elif r.kv_sequences < 1:
        r.problems.append(f"vLLM's KV cache ({kv / GiB:.1f} GiB, {r.kv_tokens:,} tokens) cannot hold one "
                          f"{max_len}-token sequence: {fix}, or lower {where}max_model_len / max_new_tokens")
    elif r.kv_sequences < need:
        r.notes.append(f"vLLM's KV cache holds {r.kv_sequences} full-length sequences of the {need} a step runs "
                       f"at once: it samples in ~{math.ceil(need / r.kv_sequences)} waves (slower, not wrong)")
    static = r.total("static")
    if share + static > r.device:
        most = math.floor(100 * (1 - static / r.device)) / 100
        lower = f"lower {where}gpu_memory_utilization to ≤ {most:.2f} (and raise {where}tensor_parallel_size), or "
        what = f"lower {where}kv_cache_memory_bytes, or " if own else lower if most >= 0.1 else ""
        r.problems.append(f"vLLM's {share / GiB:.1f} GiB does not fit beside the {static / GiB:.1f} GiB held "
                          f"while it samples: {what}shard the trainer / use more GPUs / engine vllm_server")


def _trainer(r: Report, cfg, engine: str, shape: Shape, world: int, sharded: bool, ckpt: bool,
             tokens: int) -> None:
    n, div = shape.params, (world if sharded else 1)
    tag = f" /{world}" if sharded and world > 1 else ""
    half = 4 if cfg.train.precision == "fp32" else 2  # bytes of a bf16 (or fp32) weight, logit, gradient
    if getattr(getattr(cfg, "lora", None), "rank", 0):
        _lora_state(r, cfg, shape, world, half)
    else:
        r.add(f"policy fp32 weights{tag}", "static", 4 * n / div)
        r.add(f"AdamW moments fp32 ×2{tag}", "static", 8 * n / div)
        r.add(f"gradients fp32{tag}", "update", 4 * n / div)
        if sharded:
            head = shape.vocab * shape.hidden * (1 if shape.tied else 2)
            gathered = head + GATHER_LAYERS * (n - head) / shape.layers
            r.add(f"FSDP gathered: embed/lm_head + {GATHER_LAYERS} layers", "update", 2 * half * gathered)
        else:
            r.add("policy bf16 cast (autocast cache)", "update", 2 * n)
            r.add("DDP gradient buckets fp32", "static", 4 * n if world > 1 else 0)
        if cfg.anchor.mode != "none" and cfg.algo.kl_beta > 0:
            r.add(f"anchor fp32{tag}" if sharded else "anchor fp32 full copy", "static", 4 * n / div)
            r.add("anchor bf16 working copy (KL pass)", "update",
                  2 * n if cfg.train.fast_forward and not sharded else 0)
    act = shape.act_per_token(ckpt, bf16_weights=sharded)  # FSDP gathers bf16 weights (mixed precision)
    r.add(f"activations, {tokens} tok" + (" (checkpointed)" if ckpt else ""), "update", tokens * act)
    V = shape.vocab
    r.add(f"logits → grads, {tokens} × {V} × {half} B", "update", tokens * V * half)
    chunk = min(tokens, cfg.train.logits_chunk or tokens)
    work, what = chunk * V * CHUNK_BYTES, f"log-prob chunk {chunk} × {V} × {CHUNK_BYTES} B"
    if engine in ("fast", "vllm", "vllm_server"):  # engines that return log-probs: the sampler check
        rows = min(tokens, MISMATCH_ROWS)
        if rows * V * MISMATCH_BYTES > work:
            work, what = rows * V * MISMATCH_BYTES, f"sampler check {rows} × {V} × {MISMATCH_BYTES} B"
    r.add(what, "update", work)


def _lora_state(r: Report, cfg, shape: Shape, world: int, half: int) -> None:
    """A LoRA run's trainer state (never sharded, t1.model.lora): the frozen base in the training precision,
    and for the adapter alone fp32 weights, AdamW moments, gradients, DDP buckets and the anchor (its EMA)."""
    n, rank = shape.params, cfg.lora.rank
    a = shape.lora_params(rank)
    r.add(f"LoRA base weights {'fp32' if half == 4 else 'bf16'} (frozen)", "static", half * n)
    r.add(f"LoRA adapter + AdamW ×2, fp32 (r={rank})", "static", 12 * a)
    r.add("LoRA adapter gradients fp32", "update", 4 * a + (4 * a if world > 1 else 0))  # + DDP buckets
    fast = 2 * n if cfg.train.fast_forward and world == 1 else 0  # t1's pass on merged bf16 weights
    r.add("merged bf16 weights (t1's forward)", "update", fast)
    if cfg.anchor.mode != "none" and cfg.algo.kl_beta > 0:
        r.add("anchor: the adapter's EMA (base shared)", "static", 4 * a)
        r.add("anchor merged bf16 weights (KL pass)", "update", fast)


def _update_fit(r: Report, cfg, max_len: int, sharded: bool, ckpt: bool) -> None:
    """Name what to change when static + update (+ vLLM's share without sleep mode) does not fit."""
    need = r.total("static") + r.total("update") + (r.total("sample") if r.overlap else 0)
    if need <= r.device:
        return
    fix = ["rollout.vllm.enable_sleep_mode"] if r.overlap else []
    fix.append("train.micro_batch_tokens" if cfg.train.micro_batch_tokens > max_len else
               f"rollout.max_new_tokens (one {max_len}-token sequence is the smallest micro-batch)")
    if not cfg.train.logits_chunk or cfg.train.logits_chunk > 2048:
        fix.append("train.logits_chunk (2048 or less)")
    if not ckpt:
        fix.append("FSDP with activation checkpointing (accelerate launch --use_fsdp "
                   "--fsdp_activation_checkpointing true)")
    elif not sharded:
        fix.append("FSDP (accelerate launch --use_fsdp)")
    spread = sum(b for name, _, b in r.lines if name.endswith(f" /{r.world}")) * r.world  # shrinks with GPUs
    if sharded and need - spread / r.world < r.device:  # enough GPUs would do; the trainer needs P % world == 0
        least, P = spread / (r.device - need + spread / r.world), cfg.rollout.prompts_per_step
        gpus = next((w for w in range(r.per_node, P + 1, r.per_node) if w >= least and P % w == 0), 0)
        fix.append(f"{gpus} GPUs (FSDP shards more)" if gpus else "more GPUs than rollout.prompts_per_step")
    r.problems.append(f"the update needs {need / GiB:.1f} GiB per GPU of {r.device / GiB:.1f} (static "
                      f"{r.total('static') / GiB:.1f} + update {r.total('update') / GiB:.1f}): change "
                      + ", ".join(fix))


def _checkpoint_push(r: Report, shape: Shape, sharded: bool, vllm: bool) -> None:
    """The checkpoint and push phases (module doc) and their refusals: a config that fits sampling and the
    update can still fail at its first checkpoint, hours in."""
    head = shape.vocab * shape.hidden * (1 if shape.tied else 2)  # FSDP's root unit: embeddings + lm_head
    weights = next((b for name, _, b in r.lines if name.startswith("vLLM share")), 0)
    if vllm and not r.overlap:  # asleep through the checkpoint; at a push its weights wake, not its KV cache
        r.add("vLLM asleep (CUDA graphs)", "checkpoint", VLLM_ASLEEP)
        weights = min(weights, 2 * shape.params / r.tp + VLLM_ASLEEP)
    elif vllm:
        r.add("vLLM share (no sleep mode: awake)", "checkpoint", weights)
    if sharded:
        r.add("checkpoint: root unit fp32 gathered ×2", "checkpoint", 2 * 4 * head)
    if vllm:
        r.add("vLLM weights awake (push)", "push", weights)
        r.add("push: root unit fp32 gathered", "push", 4 * head if sharded else 0)
    static = r.total("static")
    sleep = "turn on rollout.vllm.enable_sleep_mode, " if r.overlap and vllm else ""
    for phase, what, fix in (
            ("checkpoint", "a checkpoint (every train.save_every steps, and final/)", sleep),
            ("push", "a weight push (every step; a resumed run's first)",
             sleep + "raise rollout.vllm.tensor_parallel_size, ")):
        need = static + r.total(phase)
        if r.total(phase) and need > r.device and not r.problems:  # else the update's refusal says it first
            r.problems.append(f"{what} needs {need / GiB:.1f} GiB per GPU of {r.device / GiB:.1f} (static "
                              f"{static / GiB:.1f} + {phase} {r.total(phase) / GiB:.1f}): {fix}use more GPUs "
                              "(FSDP shards the static state more)")


def host_ram(r: Report, cfg, shape: Shape, sharded: bool, host_bytes: int | None, refuse: bool = True) -> None:
    """Host RAM per node (module doc) into ``r.host`` / ``r.host_peak``; over ``host_bytes`` is a problem (a
    note with ``refuse`` False: `t1 rl` checks after the model is loaded, past the start-up peak)."""
    n, procs = shape.params, min(r.per_node, r.world)
    anchor = cfg.anchor.mode != "none" and cfg.algo.kl_beta > 0
    lora_run = bool(getattr(getattr(cfg, "lora", None), "rank", 0))
    readers = 1 if sharded and not _zero3() else procs  # FSDP: the main process reads, the others take shards
    load = readers * (2 if lora_run and cfg.train.precision == "bf16" else 4) * n
    copy = procs * 4 * n if anchor and not sharded and not lora_run else 0
    state = 0 if lora_run else (8 + (4 if anchor else 0)) * n
    gather = 0 if lora_run else (4 + 8 + (4 if anchor else 0)) * n
    r.host = [("model load: fp32 in the main process (the others take their FSDP shards from it)"
               if readers == 1 and procs > 1 else f"model load: fp32 in each of {procs} processes", load),
              (f"anchor copy before placing ({'none: built from the FSDP shards' if sharded else 'per process'})",
               copy), ("trainer state on resume (mapped; once per node)", state),
              ("checkpoint: the main process gathers policy + anchor + AdamW", gather)]
    r.host_peak = max(load + copy + state, gather)
    if host_bytes and r.host_peak > host_bytes:
        (r.problems if refuse else r.notes).append(
            f"host RAM: {r.host_peak / GiB:,.0f} GiB per node needed of {host_bytes / GiB:,.0f} (model load, "
            "trainer state on resume, the checkpoint's gather): use a host with more RAM"
            + ("" if readers == 1 else f" or fewer processes per node ({procs} load the fp32 model)"))


def host_memory() -> int | None:
    """This machine's RAM (MemTotal), or None where /proc/meminfo is not there."""
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) << 10 for line in f if line.startswith("MemTotal"))
    except (OSError, StopIteration, ValueError):
        return None


def check_rl(cfg, model_config, world: int, gpus_per_node: int, device_bytes: int | None = None,
             sharded: bool | None = None, checkpointing: bool | None = None,
             prompt_tokens: int = PROMPT_TOKENS, refuse: bool = True, host_bytes: int | None = None) -> Report:
    """Estimate `t1 rl`'s memory per GPU for ``cfg`` (an RLConfig) and ``model_config`` (a transformers config,
    a model directory, or a Qwen2.5 name); raise ConfigError naming the fields to change when it cannot fit
    (``refuse=False``: return the Report with its ``problems``), else return the Report. ``world``: training
    processes; ``device_bytes``: one GPU's memory (default: this GPU's); ``sharded`` (FSDP/ZeRO-3 trainer state)
    and ``checkpointing`` (activations) default to what ``accelerate launch`` set up; ``host_bytes``: one node's
    RAM, refused when short (default: this machine's, a note, when ``device_bytes`` is this GPU's)."""
    shape, dev = Shape.of(model_config), device_memory(device_bytes)
    sharded = launched()[0] if sharded is None else sharded
    ckpt = launched()[1] if checkpointing is None else checkpointing
    ro = cfg.rollout
    ro = replace(ro, engine=resolve(ro.engine)) if ro.engine == "auto" else ro
    v, tp = ro.vllm, ro.vllm.tensor_parallel_size
    vllm = ro.engine == "vllm"
    max_len = v.max_model_len if vllm and v.max_model_len else prompt_tokens + ro.max_new_tokens
    how = (", FSDP-sharded" if sharded else "") + (", checkpointed" if ckpt else "")
    r = Report(f"t1 rl memory per GPU (GiB): {shape.params / 1e9:.2f}B params, {world} process(es) "
               f"({gpus_per_node}/node){how}, engine {ro.engine}, device {dev / GiB:.1f} GiB", dev, world,
               gpus_per_node)
    r.add("runtime (CUDA, NCCL, slack)", "static", RUNTIME)
    _trainer(r, cfg, ro.engine, shape, world, sharded, ckpt, max(cfg.train.micro_batch_tokens, max_len))
    _sampling(r, ro, shape, max_len, math.ceil(ro.prompts_per_step * ro.samples_per_prompt / world), "rollout.",
              training=True)
    if vllm and (gpus_per_node % tp or world % tp):
        r.problems.append(f"rollout.vllm.tensor_parallel_size {tp} must divide the {gpus_per_node} GPUs per "
                          f"node and the {world} processes")
    if vllm and v.max_model_len and v.max_model_len <= ro.max_new_tokens:
        r.problems.append(f"rollout.vllm.max_model_len {v.max_model_len} leaves no room for a prompt "
                          f"before rollout.max_new_tokens {ro.max_new_tokens}")
    _update_fit(r, cfg, max_len, sharded, ckpt)
    r.tp = tp
    _checkpoint_push(r, shape, sharded, vllm)
    own = None if device_bytes else host_memory()  # on the GPU machine itself: its RAM, as a note
    host_ram(r, cfg, shape, sharded, host_bytes or own, refuse=bool(host_bytes))
    return _verdict(r) if refuse else r


def check_sampling(engine_cfg, model_config, max_len: int, batch: int, device_bytes: int | None = None,
                   refuse: bool = True) -> Report:
    """:func:`check_rl` for one process that only samples ``batch`` sequences of up to ``max_len`` tokens
    (eval, filter, scale); ``engine_cfg``: a t1.rollout.config.EngineConfig."""
    shape, dev = Shape.of(model_config), device_memory(device_bytes)
    ecfg = replace(engine_cfg, engine=resolve(engine_cfg.engine)) if engine_cfg.engine == "auto" else engine_cfg
    r = Report(f"sampling memory per GPU (GiB): {shape.params / 1e9:.2f}B params, engine {ecfg.engine}, "
               f"device {dev / GiB:.1f} GiB", dev)
    r.add("runtime (CUDA, slack)", "static", RUNTIME)
    r.add("model fp32 weights", "static", 4 * shape.params if ecfg.engine in ("fast", "generate") else 0)
    _sampling(r, ecfg, shape, max_len, batch, "", training=False)
    return _verdict(r) if refuse else r


def _verdict(r: Report) -> Report:
    if r.problems:
        raise ConfigError(f"memory: {'; '.join(r.problems)} [estimate: {r.peak / GiB:.1f} of "
                          f"{r.device / GiB:.1f} GiB per GPU, t1.rollout.memory]")
    return r


def format_report(r: Report) -> str:
    """A small table: one row per line (GiB, phase), the phase totals, the peak, vLLM's KV cache, the verdict."""
    rows = [r.title] + [f"  {name:42s} {b / GiB:7.2f}  {phase}" for name, phase, b in r.lines]
    how = "static + max(sample + update, ckpt, push)" if r.overlap else "static + max(sample, update, ckpt, push)"
    static, sample, update, ckpt, push = (r.total(p) / GiB for p in ("static", "sample", "update", "checkpoint",
                                                                      "push"))
    rows += [f"  {'static / sample / update / checkpoint / push':46s} {static:.2f} / {sample:.2f} / {update:.2f}"
             f" / {ckpt:.2f} / {push:.2f}", f"  {'peak = ' + how:46s} {r.peak / GiB:.2f}  of {r.device / GiB:.1f}"]
    if r.host:
        rows += [f"  host RAM per node: {name} {b / GiB:,.1f}" for name, b in r.host if b]
        rows.append(f"  host RAM per node, peak: {r.host_peak / GiB:,.1f} GiB")
    rows += [f"  {d}" for d in r.detail] + [f"  note: {n}" for n in r.notes]
    return "\n".join(rows + ["  verdict: " + ("fits" if r.fits else "REFUSED: " + "; ".join(r.problems))])
