"""`t1 sft`: completion-only supervised fine-tuning, from a laptop CPU to a GPU cluster (through accelerate).

Batching: each optimizer step takes a *global batch* of ``batch_size`` examples (a seeded shuffle per epoch).
The global batch is sorted by length and cut into micro-batches of at most ``micro_batch_tokens`` padded
tokens (length bucketing), dealt round-robin to the processes. We bucket rather than pack: packing needs
per-document attention masks to stay exact (varlen flash-attention, which CPUs and many setups lack),
while sorting a batch by length leaves little padding (``pad_fraction`` is logged) with plain attention.

Loss: summed token cross-entropy over response tokens, divided by the number of response tokens in the
*global* batch, so gradient accumulation and any number of processes give the same update as one process
with the whole batch (up to float summation order). Every process computes the same layout from the same
seed, so they always agree on the number of micro-batches.

A step whose loss or gradient norm is NaN/inf is skipped with a warning (as in `t1 rl`); ``train.max_bad_steps``
of them in a row stop the run. The run directory, checkpoints and resume: :class:`t1.runtime.run.RunDir`.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable
from tqdm import tqdm

from t1.batching import collate, epoch_order, micro_batches
from t1.chat import ChatFormat
from t1.config import option, require
from t1.data.sft import SFTDataConfig, load_examples, source_description
from t1.model import lora
from t1.model.forward import Forward, fast_forward_option
from t1.model.load import (
    Attention,
    ModelConfig,
    attention_option,
    build_model,
    build_tokenizer,
    chat_format_of,
    count_parameters,
    load_for_training,
    set_attention,
)
from t1.model.lora import LoraConfig, lora_option
from t1.rl import logp as chunked
from t1.rollout.config import check_seconds
from t1.rollout.weights import full_parameters
from t1.runtime.device import NCCL_TIMEOUT, make_accelerator, resolve_precision
from t1.runtime.optim import BadSteps, OptimConfig, clip_and_step, lr_factor, make_optimizer, set_lr
from t1.runtime.run import RunDir, set_rng_state
from t1.runtime.sharded_state import (
    SHARDED,
    load_optimizer_state,
    loads_weights,
    model_state,
    optimizer_state,
    sharding,
    weights_from_main,
)
from t1.runtime.trackers import Tracking


def _sft_optim() -> OptimConfig:
    return OptimConfig(lr=1e-5, schedule="cosine", warmup_ratio=0.03, weight_decay=0.0)


@dataclass(frozen=True)
class SFTTrainConfig:
    epochs: float = option(3.0, "passes over the data (the paper: 3); fractions allowed")
    batch_size: int = option(64, "examples per optimizer step, across all processes")
    micro_batch_tokens: int = option(16384, "padded tokens per forward/backward on one process")
    bucket_ratio: float = option(
        0.8, "start a new micro-batch when an example is shorter than this × the longest in it (less padding)")
    precision: Literal["auto", "bf16", "fp16", "fp32"] = option(
        "auto", "autocast precision: auto = bf16 where the hardware has it, else fp32")
    logits_chunk: int = option(
        512, "the loss over the vocabulary this many tokens at a time, forward and backward: temporaries of "
             "~chunk × vocab × 8 bytes (0.6 GB at Qwen's 151,936), no logits kept for the backward on one process "
             "(under DDP/FSDP the model's own logits are, in their dtype); 0, or a vocabulary at most 4× the "
             "hidden size: a micro-batch's logits at once, with fp32 copies (see BENCHMARKS.md)")
    fast_forward: bool = fast_forward_option()
    attention: Attention = attention_option()
    seed: int = option(0, "data order and initialisation seed")
    log_every: int = option(10, "optimizer steps between metric rows")
    save_every: int = option(0, "optimizer steps between checkpoints (0 = only at the end)")
    keep_checkpoints: int = option(2, "newest checkpoints to keep")
    max_steps: int = option(0, "stop after this many optimizer steps; the schedule still spans all epochs "
                               "(0 = run all epochs)")
    max_bad_steps: int = option(3, "stop after this many consecutive steps with a NaN/inf loss or gradient "
                                   "(each is skipped)")
    nccl_timeout: float = option(NCCL_TIMEOUT, "seconds a collective (NCCL, gloo) waits for the slowest process "
                                               "before the job aborts (torch's NCCL default is 600: too short "
                                               "while rank 0 writes a large checkpoint)")
    optim: OptimConfig = option(help="optimizer and schedule (the paper: lr 1e-5, cosine)", factory=_sft_optim)

    def validate(self) -> None:
        require(self.epochs > 0, "epochs", "must be > 0", self.epochs)
        require(self.batch_size >= 1, "batch_size", "must be ≥ 1", self.batch_size)
        require(self.micro_batch_tokens >= 16, "micro_batch_tokens", "must be ≥ 16", self.micro_batch_tokens)
        require(self.logits_chunk >= 0, "logits_chunk", "must be ≥ 0 (0 = off)", self.logits_chunk)
        require(0 <= self.bucket_ratio <= 1, "bucket_ratio", "must be in [0, 1]", self.bucket_ratio)
        require(self.log_every >= 1, "log_every", "must be ≥ 1", self.log_every)
        require(self.save_every >= 0, "save_every", "must be ≥ 0", self.save_every)
        require(self.max_steps >= 0, "max_steps", "must be ≥ 0", self.max_steps)
        require(self.max_bad_steps >= 1, "max_bad_steps", "must be ≥ 1", self.max_bad_steps)
        require(self.keep_checkpoints >= 1, "keep_checkpoints", "must be ≥ 1", self.keep_checkpoints)
        check_seconds(self.nccl_timeout, "nccl_timeout")


@dataclass(frozen=True)
class SFTConfig(Tracking):
    out: str = option("runs/sft", "run directory")
    model: str | None = option(None, "initial model: a local path or hub name; null = build a tiny model")
    tiny: ModelConfig = option(help="the tiny model built when model is null", factory=ModelConfig)
    data: SFTDataConfig = option(help="training data", factory=SFTDataConfig)
    train: SFTTrainConfig = option(help="training loop", factory=SFTTrainConfig)
    lora: LoraConfig = lora_option()

    def validate(self) -> None:
        require(not self.lora.rank or bool(self.model), "lora.rank", "LoRA adapts a pretrained model: set model "
                "(a path or hub name), or lora.rank=0 to train the tiny model built here", self.lora.rank)


def token_nll_sum(forward, ids: torch.Tensor, attn: torch.Tensor, loss_mask: torch.Tensor,
                  chunk: int = 0) -> torch.Tensor:
    """Sum over response tokens of −log p(token | prefix), in fp32. ``forward``: (ids, attention_mask) ->
    logits, see :class:`t1.model.forward.Forward`. ``chunk`` > 0 keeps at most ``chunk`` × vocabulary logits
    at a time, forward and backward:

    - on ``forward``'s fast path (one process): the final hidden states once (:func:`_final_hidden`), then the
      output layer and the cross-entropy over the response positions only, ``chunk`` at a time, their
      gradients taken chunk by chunk in the same pass (:class:`_HeadNLL`: no logits kept for the backward);
    - otherwise (a wrapped model under DDP/FSDP, any other callable): the model's logits [B, T, V] as they come,
      log-probs ``chunk`` positions at a time with their gradient written over the logits (:mod:`t1.rl.logp`).

    ``chunk`` = 0, or a vocabulary at most 4× the hidden size (:func:`_chunking_pays`): all at once, the
    selected rows' logits copied to fp32."""
    sel = loss_mask[:, 1:]  # token t is predicted at position t-1
    chunk = chunk if chunk and _chunking_pays(forward) else 0
    if chunk and getattr(forward, "fast", False):
        hidden, weight, bias = _final_hidden(forward, ids, attn)
        return _HeadNLL.apply(hidden[:, :-1][sel], weight, bias, ids[:, 1:][sel], chunk, torch.is_grad_enabled())
    logits = forward(ids, attn)  # [B, T, V]
    if chunk:
        logp, _ = chunked.shifted(logits, ids, chunk, entropy=False, grad_in_place=True)
        return -logp[sel].sum()
    return F.cross_entropy(logits[:, :-1][sel].float(), ids[:, 1:][sel], reduction="sum")


def _chunking_pays(forward) -> bool:
    """Whether ``forward``'s model has logits over 4× wider than its hidden states: the measured break-even of
    the chunked loss on a CPU (bf16, hidden 128: 2 % slower at a 128-entry vocabulary, even at 512, 12 % faster
    at 2048); real vocabularies are 8–170× their models' hidden size, the Countdown tiny model's is 1×. True
    for a callable without a model config."""
    cfg = getattr(lora.base_of(forward.raw), "config", None) if isinstance(forward, Forward) else None
    return cfg is None or cfg.vocab_size > 4 * cfg.hidden_size


def _final_hidden(forward: Forward, ids: torch.Tensor, attn: torch.Tensor):
    """(normalised final hidden states [B, T, H], output weight [V, H], output bias or None) of ``forward``'s
    fast pass, whose output layer ``F.linear(norm(h), lm_head, lm_head_b)`` reads the final norm's weight
    folded into ``lm_head`` (:class:`t1.model.forward.Prepared`; LoRA-merged and tied weights included): the
    same pass with an identity in its place returns norm(h) exactly (products with 1 and 0), for an [H, H]
    product instead of the [V, H] one."""
    prep = forward.prepare()
    weight, bias = prep.lm_head, prep.lm_head_b
    prep.lm_head = torch.eye(weight.shape[1], dtype=weight.dtype, device=weight.device)
    prep.lm_head_b = None
    return forward(ids, attn, prep), weight, bias


class _HeadNLL(torch.autograd.Function):
    """Σ_rows −log softmax(x Wᵀ + b)[target] for hidden states x [n, H] in the matrix dtype, ``chunk`` rows at a
    time: each chunk's logits in the matrix dtype (as the output layer makes them under autocast), their
    log-softmax in fp32, and with ``grads`` the loss's gradients at once (softmax − one-hot, through the
    output layer), so nothing vocabulary-sized outlives its chunk and the backward only scales them by the
    incoming gradient (one product per chunk fewer than recomputing the logits there). Extra memory: two
    [chunk, V] buffers (matrix dtype and fp32), plus the gradients of x and of W (an fp32 [V, H] accumulator)
    held from the forward to the backward."""

    @staticmethod
    def forward(ctx, x, weight, bias, targets, chunk: int, grads: bool):
        acc, dev, V = torch.promote_types(x.dtype, torch.float32), x.device, weight.shape[0]
        total = torch.zeros((), dtype=acc, device=dev)
        need = [grads and t is not None and t.requires_grad for t in (x, weight, bias)]
        gx = torch.empty_like(x) if need[0] else None
        gw, gb = (torch.zeros(t.shape, dtype=acc, device=dev) if n else None
                  for t, n in zip((weight, bias), need[1:]))
        rows = min(chunk, x.shape[0])  # one buffer for a chunk's logits and then their gradient, one in fp32
        z_buf = torch.empty(rows, V, dtype=x.dtype, device=dev)
        lp_buf = torch.empty(rows, V, dtype=acc, device=dev)
        w_part = torch.empty_like(weight) if gw is not None and x.dtype != acc else None
        with torch.autocast(dev.type, enabled=False):
            for s in range(0, x.shape[0], chunk):
                xs, ts = x[s: s + chunk], targets[s: s + chunk, None]
                z, logp = z_buf[: len(xs)], lp_buf[: len(xs)]
                if bias is None:
                    torch.mm(xs, weight.t(), out=z)
                else:
                    torch.addmm(bias, xs, weight.t(), out=z)
                torch.log_softmax(z, -1, dtype=acc, out=logp)
                total -= logp.gather(-1, ts).sum()
                if not any(need):
                    continue
                dz = logp.exp_().scatter_add_(-1, ts, torch.full(ts.shape, -1.0, dtype=acc, device=dev))
                if gb is not None:
                    gb += dz.sum(0)
                if dz.dtype != x.dtype:  # as the output layer's backward gets it under autocast
                    dz = z.copy_(dz)
                if gx is not None:
                    torch.mm(dz, weight, out=gx[s: s + chunk])
                if w_part is not None:
                    gw.add_(torch.mm(dz.t(), xs, out=w_part))
                elif gw is not None:
                    gw.addmm_(dz.t(), xs)
        ctx.grads = gx, gw, gb
        return total

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        return (*(None if t is None else t * g.to(t.dtype) for t in ctx.grads), None, None, None)


# ---------------------------------------------------------------------------------------------- training


@dataclass
class SFTResult:
    out: Path
    steps: int
    final_loss: float
    tokens_per_s: float
    wall_s: float


def _load_model(cfg: SFTConfig, run: RunDir, precision: str, weights: bool):
    """The checkpoint being resumed, else the configured model (with fresh LoRA adapters when configured),
    else a freshly built tiny one. ``weights=False``: a skeleton to be filled from the main process (FSDP)."""
    if cfg.model or run.checkpoint is not None:
        return load_for_training(cfg.model or "", cfg.lora, run.checkpoint, precision, weights)
    tokenizer = build_tokenizer(cfg.data.countdown.max_value)
    return build_model(cfg.tiny, tokenizer), tokenizer


def _chat_format(cfg: SFTConfig, model, tokenizer) -> ChatFormat:
    """The model's chat format (:mod:`t1.chat`); with a template, the saved model's generation config lists its
    stop ids, so it stops at its turn end in any tool (`vllm serve`, ``generate``), not only in t1."""
    fmt = chat_format_of(tokenizer, cfg.model or None, cfg.data.use_chat_template)
    if fmt.template:
        lora.base_of(model).generation_config.eos_token_id = list(fmt.stop_ids)
    return fmt


def _global_batch(order_cache: dict[int, list[int]], n_examples: int, step: int, steps_per_epoch: int,
                  train: SFTTrainConfig) -> list[int]:
    """The examples of optimizer step ``step``: a slice of its epoch's seeded order (one epoch cached)."""
    epoch, k = divmod(step, steps_per_epoch)
    if epoch not in order_cache:
        order_cache.clear()
        order_cache[epoch] = epoch_order(n_examples, train.seed, epoch)
    return order_cache[epoch][k * train.batch_size: (k + 1) * train.batch_size]


def _accumulate(acc, model, forward, examples, lengths: list[int], batch: list[int], pad_id: int,
                train: SFTTrainConfig) -> tuple[int, torch.Tensor, int, int]:
    """Forward and backward over this process's micro-batches of the global ``batch``. Returns (response
    tokens in the global batch, this process's NLL sum, its real tokens, its padded tokens)."""
    world, rank = acc.num_processes, acc.process_index
    global_loss_tokens = sum(examples[i].n_loss for i in batch)
    mine = micro_batches(batch, lengths, train.micro_batch_tokens, world, train.bucket_ratio)[rank::world]
    nll_sum = torch.zeros((), device=acc.device)
    seen = padded = 0
    for j, mb in enumerate(mine):
        sync = acc.no_sync(model) if j < len(mine) - 1 else contextlib.nullcontext()
        dummy = not mb  # an empty share still joins the gradient all-reduce, with zero weight
        ids, attn, mask = collate([examples[i] for i in (mb or batch[:1])], pad_id, acc.device)
        with sync, acc.autocast():
            nll = token_nll_sum(forward, ids, attn, mask, train.logits_chunk)
            loss = nll * (0.0 if dummy else world / global_loss_tokens)
            acc.backward(loss)
        if not dummy:
            nll_sum += nll.detach()
            seen += int(attn.sum())
            padded += ids.numel()
    return global_loss_tokens, nll_sum, seen, padded


def _gather(acc, model, optimizer, how: str) -> tuple[dict | None, dict]:
    """(full model state dict, trainer state) for a checkpoint; every process calls it (under FSDP both are
    gathered: the optimizer's whole, keyed by parameter name, so a resume gets every process's moments back)."""
    optim = optimizer_state(model, optimizer, how, keep=acc.is_main_process)
    return model_state(acc, model, how, full_parameters), {"optimizer": optim}


def _restore(state: dict | None, model, optimizer, how: str) -> int:
    """The step to start at: 0 on a fresh run, else the checkpoint's, its optimizer state (split over the
    processes under FSDP) and RNG state restored."""
    if state is None:
        return 0
    load_optimizer_state(model, optimizer, how, state["optimizer"])
    set_rng_state(state["rng"])
    return state["step"]


def train_sft(cfg: SFTConfig, resume: bool = False, progress: bool = True) -> SFTResult:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    precision = resolve_precision(cfg.train.precision, device)
    acc = make_accelerator(precision, cfg.train.nccl_timeout)  # the collective timeout reaches the group
    run = RunDir(cfg.out, resume, acc, cfg)  # --resume: cfg checked against the run's config.yaml
    try:  # the run's lock and logs are released however it ends
        result = _train(cfg, acc, run, precision, progress)
    finally:
        run.close()
    acc.end_training()
    return result


def _train(cfg: SFTConfig, acc, run: RunDir, precision: str, progress: bool) -> SFTResult:
    from accelerate.utils import set_seed

    out = Path(cfg.out)
    main, world = acc.is_main_process, acc.num_processes
    set_seed(cfg.train.seed)

    how = sharding(acc)  # fsdp1 / fsdp2: each process holds a shard of the weights and of the optimizer state
    model, tokenizer = _load_model(cfg, run, precision, loads_weights(acc, how))
    fmt = _chat_format(cfg, model, tokenizer)
    examples, stats = load_examples(cfg.data, tokenizer, fmt)
    lengths = [len(e.ids) for e in examples]
    attention = set_attention(model, cfg.train.attention, max(lengths, default=0))
    steps_per_epoch = math.ceil(len(examples) / cfg.train.batch_size)
    total = math.ceil(cfg.train.epochs * steps_per_epoch)  # the schedule's length
    stop = min(total, cfg.train.max_steps) if cfg.train.max_steps else total

    optimizer = make_optimizer(model, cfg.train.optim)
    lora.check_unsharded(model, acc)
    run.save_kwargs = lora.save_kwargs(model)
    weights_from_main(acc, how)  # the other processes hold a skeleton: one copy of the model per node
    model, optimizer = acc.prepare(model, optimizer)
    # t1's forward reads whole parameters; FSDP2 shards the model in place (model is raw), so say it here
    forward = Forward(model, acc.unwrap_model(model), cfg.train.fast_forward and how not in SHARDED)
    start = _restore(run.state(), model, optimizer, how)
    run.start_metrics(cfg, start, job_type="sft")
    if main:
        print(f"sft: {fmt.describe()}", file=sys.stderr)
        print(f"sft: {count_parameters(model) / 1e6:.2f}M parameters{lora.describe(model)} | "
              f"{source_description(cfg.data)} | "
              f"{stats.text()} | {stop} of {total} steps × {cfg.train.batch_size} examples | "
              f"{world} process(es) | precision {precision} | attention {attention}"
              + (f" | resuming at step {start}" if start else ""), file=sys.stderr)

    bar = tqdm(total=stop, initial=start, desc="sft", unit="step", disable=not (main and progress),
               file=sys.stderr, dynamic_ncols=True)
    order_cache: dict[int, list[int]] = {}
    bad_steps = BadSteps("sft", cfg.train.max_bad_steps)
    window = {"nll": 0.0, "tokens": 0, "seen": 0, "padded": 0, "time": 0.0}
    t_start, loss_value, tok_rate = time.perf_counter(), float("nan"), 0.0
    for step in range(start, stop):
        t0 = time.perf_counter()
        batch = _global_batch(order_cache, len(examples), step, steps_per_epoch, cfg.train)
        global_loss_tokens, nll_sum, seen, padded = _accumulate(acc, model, forward, examples, lengths, batch,
                                                                tokenizer.pad_token_id, cfg.train)
        totals = acc.reduce(torch.tensor([float(nll_sum), seen, padded], device=acc.device), reduction="sum")
        lr = cfg.train.optim.lr * lr_factor(step, total, cfg.train.optim)
        set_lr(optimizer, lr)
        grad_norm, skipped = clip_and_step(acc, model, optimizer, cfg.train.optim.grad_clip, float(totals[0]))
        bad_steps.check(step, skipped)
        window["nll"] += float(totals[0])
        window["tokens"] += global_loss_tokens
        window["seen"] += int(totals[1])
        window["padded"] += int(totals[2])
        window["time"] += time.perf_counter() - t0
        bar.update()
        done = step + 1
        if done % cfg.train.log_every == 0 or done == stop:
            loss_value = window["nll"] / max(1, window["tokens"])
            tok_rate = window["seen"] / max(1e-9, window["time"])
            run.log({"step": done, "epoch": round(done / steps_per_epoch, 4), "loss": loss_value,
                     "lr": lr, "grad_norm": grad_norm, "tokens_per_s": tok_rate,
                     "pad_fraction": 1 - window["seen"] / max(1, window["padded"]),
                     "elapsed_s": time.perf_counter() - t_start})
            bar.set_postfix(loss=f"{loss_value:.4f}", tok_s=f"{tok_rate:,.0f}")
            window = dict.fromkeys(window, 0)
        if (cfg.train.save_every and done % cfg.train.save_every == 0) or done == stop:
            run.save_checkpoint(done, acc.unwrap_model(model), tokenizer,
                                lambda: _gather(acc, model, optimizer, how), cfg.train.keep_checkpoints)
    bar.close()
    raw = acc.unwrap_model(model)
    run.save_final(raw, tokenizer, model_state(acc, model, how, full_parameters),
                   lora.merged_writer(raw, tokenizer, cfg.lora))
    wall = time.perf_counter() - t_start
    result = SFTResult(out, stop, loss_value, tok_rate, wall)
    if main:
        print(f"sft done: {stop} steps in {wall:.1f}s | final loss {loss_value:.4f} | {tok_rate:,.0f} tokens/s | "
              f"model in {out / 'final'}", file=sys.stderr)
    return result
