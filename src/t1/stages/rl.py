"""`t1 rl`: the T1 RL loop. It wires the pure functions of :mod:`t1.rl.algo` to sampling, scoring and
accelerate; it holds no algorithm of its own.

One step: take P prompts (each process its share), sample K responses each (the engine), score them (task
reward, then the −1 penalties), get the policy's and the anchor's log-probs, shape rewards with the
group-centred KL and take RLOO advantages, optionally select a subset, run the clipped policy-gradient loss
with the entropy bonus and step the optimizer; finally move the anchor. The update runs fused (policy
forward with gradients kept until the KL is known, one backward) when the batch fits in one micro-batch's
budget, else in two passes (no-gradient pass for the KL, then gradient micro-batches). Losses are normalised
by global counts, so any number of processes gives the same update as one (tested).

Memory at scale: log-probs and entropy are taken ``train.logits_chunk`` positions at a time
(:mod:`t1.rl.logp`), and under FSDP the anchor is sharded like the policy (:mod:`t1.rl.shard`): FSDP runs
match one process's and resume exactly (tests/test_shard.py, on CPU processes).
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from t1 import config as cfglib
from t1.batching import epoch_order, micro_batches
from t1.chat import prompt_ids
from t1.config import ConfigError
from t1.data.prompts import load_items
from t1.model.forward import Forward, packed_logits
from t1.model.load import count_parameters, load, set_attention
from t1.rl import algo, shard
from t1.rl import logp as chunked
from t1.rl.anchor import Anchor
from t1.rl.batch import Batch, Mismatch, PackedRows, pad, sampler_logp
from t1.rl.config import RLConfig
from t1.rl.penalties import check as penalty_flags
from t1.rl.select import select
from t1.rl.summary import step_row, summary
from t1.rollout import close_engine, make_engine, memory
from t1.rollout.base import SamplingParams, sample_seed
from t1.rollout.config import resolve as resolve_engine
from t1.rollout.weights import full_parameters
from t1.runtime.device import make_accelerator, resolve_precision
from t1.runtime.optim import lr_factor, make_optimizer, set_lr
from t1.runtime.run import (
    Metrics,
    Timer,
    checkpoint_dirs,
    load_checkpoint_state,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from t1.tasks import get_task


class RLTrainer:
    def __init__(self, cfg: RLConfig, resume: bool = False, progress: bool = True):
        self.cfg, self.progress = cfg, progress
        self.out = Path(cfg.out)
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.precision = resolve_precision(cfg.train.precision, device)
        self.acc = acc = make_accelerator(self.precision)
        self.world, self.rank = acc.num_processes, acc.process_index
        P = cfg.rollout.prompts_per_step
        if P % self.world:
            raise ConfigError(f"rollout.prompts_per_step: must be divisible by the {self.world} processes (got {P})")
        ckpts = checkpoint_dirs(self.out)
        if not resume and (ckpts or (self.out / "final").exists()):
            raise ConfigError(f"out: {self.out} already holds a run; pass --resume to continue it or choose another out")
        ckpt = ckpts[-1] if (resume and ckpts) else None
        acc.wait_for_everyone()
        torch.manual_seed(cfg.train.seed)

        model, self.tok = load(ckpt or cfg.model, dtype="float32")
        if torch.cuda.is_available():  # refuse a config that cannot fit before hours go into it
            report = memory.check_rl(cfg, model.config, self.world, torch.cuda.device_count())
            if acc.is_main_process:
                print(memory.format_report(report), file=sys.stderr)
        self.items = load_items(cfg.data)
        self.prompt_cache: dict[int, list[int]] = {}
        longest = max(len(self._prompt(i)) for i in range(len(self.items)))
        self.attention = set_attention(model, cfg.train.attention, longest + cfg.rollout.max_new_tokens)
        self.sharding = shard.sharding(acc)  # fsdp1 / fsdp2 / zero3: the policy is split over the processes
        shard.check_launch(acc, self.sharding, resolve_engine(cfg.rollout.engine),
                           cfg.anchor.mode != "none" and cfg.algo.kl_beta > 0)
        self.anchor = Anchor(model, cfg.anchor.mode if cfg.algo.kl_beta > 0 else "none",
                             cfg.anchor.ema_decay, cfg.anchor.reset_every)
        state = load_checkpoint_state(ckpt) if ckpt is not None else None
        if state is not None:
            self.anchor.load_state_dict(state["anchor"])  # a full state, before the anchor is sharded
        optimizer = make_optimizer(model, cfg.train.optim)
        self.n_params = count_parameters(model)  # before FSDP leaves each process its shard
        self.model, self.optimizer = acc.prepare(model, optimizer)
        self.anchor.distribute(acc)  # sharded like the policy under FSDP (t1.rl.shard), else on the device
        self.start = 0
        if state is not None:
            shard.load_optimizer_state(self.model, self.optimizer, self.sharding, state["optimizer"])
            set_rng_state(state["rng"])
            self.start = state["step"]
        self.raw = acc.unwrap_model(self.model)
        fast = cfg.train.fast_forward and not self.sharding  # t1's forward reads whole parameters
        self.policy_logits = Forward(self.model, self.raw, fast)  # with gradients
        # no-gradient pass 1: the bare model under DDP (no gradient hooks); FSDP must gather through its wrapper
        self.raw_logits = Forward(self.model if self.sharding else self.raw, self.raw, fast)
        self.anchor_logits = Forward(self.anchor.model, fast=fast) if self.anchor.model is not None else None
        self.chunk = cfg.train.logits_chunk
        self.engine = make_engine(cfg.rollout, self.raw, self.tok, model_path=str(ckpt or cfg.model),
                                  max_len=longest + cfg.rollout.max_new_tokens, run_dir=str(self.out))
        self.task = get_task(cfg.data.task, countdown=cfg.data.countdown, timeout=cfg.train.grader_timeout)
        self.bad_ids = frozenset(self.tok.all_special_ids) - {self.tok.eos_token_id}
        self.params = SamplingParams(cfg.rollout.temperature, cfg.rollout.top_p, cfg.rollout.max_new_tokens)
        self.timer = Timer()
        self.version = self.start  # optimizer steps taken: the weights the engine must sample from
        self._push_weights()
        if acc.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
            cfglib.save(cfg, self.out / "config.yaml")
        self.metrics = Metrics(self.out / "metrics.jsonl", self.start if ckpt else None) if acc.is_main_process else None

    # ------------------------------------------------------------------------------------------ sampling

    def _prompt(self, i: int) -> list[int]:
        if i not in self.prompt_cache:
            self.prompt_cache[i] = prompt_ids(self.tok, self.items[i].prompt, self.cfg.data.use_chat_template)
        return self.prompt_cache[i]

    def _step_prompts(self, step: int) -> list[int]:
        P = self.cfg.rollout.prompts_per_step
        per_epoch = max(1, len(self.items) // P)
        epoch, k = divmod(step, per_epoch)
        order = epoch_order(len(self.items), self.cfg.train.seed, epoch)
        chosen = [order[(k * P + j) % len(order)] for j in range(P)]
        return chosen[self.rank:: self.world]

    def rollout(self, step: int) -> tuple[Batch, list[dict]]:
        K = self.cfg.rollout.samples_per_prompt
        mine = self._step_prompts(step)
        prompts = [self._prompt(i) for i in mine for _ in range(K)]
        seeds = [sample_seed(self.cfg.train.seed, step, i, k) for i in mine for k in range(K)]
        with self.timer("sample"):
            self.raw.eval()
            if self.engine.shares_weights:
                samples = self.engine.generate(prompts, seeds, self.params)
            else:  # a copy of the weights: it must hold this step's version (else StaleEngineError)
                samples = self.engine.generate(prompts, seeds, self.params, version=self.version)
                self.engine.sleep()  # GPU sleep mode: vLLM's memory is the update's until the next push
            self.raw.train()
        with self.timer("score"):
            items = [self.items[i] for i in mine for _ in range(K)]
            scores = self.task.score([s.text for s in samples], items)
            flags = [penalty_flags(s.text, it.prompt, s.finished, s.token_ids, self.bad_ids, self.cfg.penalties)
                     for s, it in zip(samples, items)]
        correct = torch.tensor([float(sc.correct) for sc in scores])
        bad = {k: torch.tensor([getattr(f, k) for f in flags]) for k in ("truncated", "repetitive", "garbage")}
        reward = algo.penalize(correct, bad["truncated"], bad["repetitive"], bad["garbage"], self.cfg.penalties.value)
        lengths = torch.tensor([float(len(s.token_ids)) for s in samples])
        stats = {"reward": reward.sum(), "accuracy": correct.sum(), "response_tokens": lengths.sum(),
                 "truncated": (~torch.tensor([s.finished for s in samples])).float().sum(),
                 "penalty_truncated": bad["truncated"].float().sum(), "penalty_repetitive": bad["repetitive"].float().sum(),
                 "penalty_garbage": bad["garbage"].float().sum(), "samples": torch.tensor(float(len(samples)))}
        ids = [p + s.token_ids for p, s in zip(prompts, samples)]
        shown = [{"step": step + 1, "prompt": it.prompt, "response": s.text, "reward": float(r),
                  "correct": sc.correct, "extracted": sc.extracted, "finished": s.finished, "tokens": len(s.token_ids),
                  **{k: bool(getattr(f, k)) for k in ("truncated", "repetitive", "garbage")}}
                 for it, s, sc, f, r in zip(items, samples, scores, flags, reward)]
        return Batch(ids, [len(p) for p in prompts], reward, stats, [s.logprobs for s in samples]), shown

    # ---------------------------------------------------------------------------------------- the update

    @torch.no_grad()
    def _pass1(self, batch: Batch, mismatch: Mismatch):
        """Per sequence: KL d_i to the anchor, entropy sum, token count, and — only when one batch takes
        several optimizer steps — the old log-probs of its response tokens. With one step, the old policy is
        the current one and the loss uses the detached current log-probs (ratio 1, same gradient). Also the
        sampler-vs-trainer log-prob mismatch and, when on, each sequence's truncated-IS token weights."""
        keep_old = self.cfg.algo.updates_per_batch > 1
        N = len(batch.ids)
        d = torch.zeros(N)
        ent = torch.zeros(N)
        ntok = torch.zeros(N)
        old: list[torch.Tensor] | None = [torch.empty(0)] * N if keep_old else None
        weights: list[torch.Tensor | None] = [None] * N
        lengths = [len(r) for r in batch.ids]
        with self.acc.autocast():  # weights rearranged once for all micro-batches (no gradients here)
            prep = self.raw_logits.prepare()
            ref_prep = self._anchor_prepared()
        mbs = micro_batches(list(range(N)), lengths, self.cfg.train.micro_batch_tokens, 1,
                            self.cfg.train.bucket_ratio)
        if self.sharding and self.world > 1:  # FSDP's forwards are collectives: as many on every process
            n_mb = int(self.acc.reduce(torch.tensor(float(len(mbs)), device=self.acc.device), "max"))
            for _ in range(n_mb - len(mbs)):
                self._pass1_micro_batch(batch, [0], prep, ref_prep, None)
        for mb in mbs:
            mask, logp, h, ref, w = self._pass1_micro_batch(batch, mb, prep, ref_prep, mismatch)
            if ref is not None:
                d[mb] = algo.sequence_kl(logp, ref, mask, self.cfg.algo.kl_clamp).float().cpu()
            ent[mb] = (h * mask).sum(-1).float().cpu()
            ntok[mb] = mask.sum(-1).float().cpu()
            if w is not None:
                for i, part in zip(mb, w.cpu().split(mask.sum(-1).tolist())):
                    weights[i] = part
            if keep_old:
                for j, i in enumerate(mb):
                    old[i] = logp[j][mask[j]].float().cpu()
        self.anchor.release()  # FSDP1 would keep its root unit gathered through pass 2
        return d, old, ent, ntok, weights

    @torch.no_grad()
    def _pass1_micro_batch(self, batch: Batch, rows: list[int], prep, ref_prep, mismatch: Mismatch | None):
        """(mask, log-probs, entropies, the anchor's log-probs or None, IS weights or None) of ``rows``,
        without gradients; ``mismatch`` None: a stand-in forward whose results are dropped."""
        ids, attn, mask = pad(batch, rows, self.tok.pad_token_id, self.acc.device)
        with self.acc.autocast():
            logits = self.raw_logits(ids, attn, prep)  # [B, T, V]: position t predicts ids[:, t + 1]
            logp, h = chunked.shifted(logits, ids, self.chunk)
            w = None if mismatch is None else \
                chunked.padded_mismatch(mismatch, logits, ids[:, 1:], mask, sampler_logp(batch, rows))
            del logits  # before the anchor's
            ref = None
            if self.anchor.model is not None:
                ref, _ = chunked.shifted(self.anchor_logits(ids, attn, ref_prep), ids, self.chunk, entropy=False)
        return mask, logp, h, ref, w

    @torch.no_grad()
    def _anchor_prepared(self):
        if self.anchor.model is None:
            return None
        return self.anchor_logits.prepare()

    def _fused_micro_batches(self, lengths: list[int]) -> list[list[int]] | None:
        """The micro-batches for a fused step (see ``_update_fused``), or None when the step must take two
        passes: fused needs one optimizer step per batch, no subset selection, one process or plain DDP (not
        FSDP / DeepSpeed), and the whole batch within one micro-batch's token budget, so keeping every graph
        until the backward needs no more memory than one micro-batch. All processes must agree."""
        from accelerate.utils import DistributedType

        cfg = self.cfg
        mbs = None
        if (cfg.train.fused_update and cfg.algo.updates_per_batch == 1 and not cfg.algo.select.drop_uniform_groups
                and not cfg.algo.select.max_per_group and self.acc.distributed_type not in
                (DistributedType.FSDP, DistributedType.DEEPSPEED, DistributedType.MEGATRON_LM)):
            mbs = micro_batches(list(range(len(lengths))), lengths, cfg.train.micro_batch_tokens, 1,
                                cfg.train.bucket_ratio)
            if sum(len(mb) * max(lengths[i] for i in mb) for mb in mbs) > cfg.train.micro_batch_tokens:
                mbs = None
        if self.world > 1:
            agree = self.acc.reduce(torch.tensor(float(mbs is not None), device=self.acc.device), "sum")
            mbs = mbs if bool(agree == self.world) else None
        return mbs

    def update(self, step: int, batch: Batch) -> dict:
        with self.timer("train"):
            lengths = [len(r) for r in batch.ids]
            mbs = self._fused_micro_batches(lengths)
            mismatch = Mismatch(self.cfg.rollout.temperature, self.cfg.rollout.top_p, self.cfg.rollout.is_cap)
            out = self._update_fused(step, batch, mbs, mismatch) if mbs is not None else \
                self._update_two_pass(step, batch, lengths, mismatch)
            out.update(mismatch.stats())
            if not out["skipped"]:
                self.anchor.update(self.model, step + 1)
        self.version = step + 1
        self._push_weights()
        return out

    def _push_weights(self) -> None:
        """Hand the policy's weights to an engine that samples from a copy (vLLM, servers) as version
        ``self.version``, one full parameter at a time; engines sharing the policy's tensors need nothing."""
        if self.engine.shares_weights:
            return
        with self.timer("push"):
            self.engine.push_weights(full_parameters(self.model), self.version)
            self.acc.wait_for_everyone()

    def _shape(self, batch: Batch, d: torch.Tensor, ntok: torch.Tensor):
        """Rewards → KL-shaped rewards → RLOO advantages → selection; global counts for the loss."""
        cfg, K = self.cfg, self.cfg.rollout.samples_per_prompt
        shaped = algo.shape(batch.reward, algo.center_in_group(d, K), cfg.algo.kl_beta)
        adv = algo.rloo(shaped, K)
        keep = select(batch.reward, adv, K, cfg.algo.select)
        counts = self.acc.reduce(torch.tensor([float(len(keep)), float(ntok[keep].sum())], device=self.acc.device), "sum")
        return adv, keep, float(counts[0]), float(counts[1])

    def _optimizer_step(self, loss_sum: float) -> tuple[float, bool]:
        """Clip, then step unless the loss or the gradient is not finite. Returns (grad norm, skipped)."""
        clip = self.cfg.train.optim.grad_clip
        grad_norm = float(self.acc.clip_grad_norm_(self.model.parameters(), clip if clip > 0 else float("inf")))
        skipped = not math.isfinite(grad_norm) or not math.isfinite(loss_sum)
        if not skipped:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm, skipped

    def _result(self, loss_sum, clip_sum, grad_norm, lr, skipped, d, ent, ntok, keep, n_seqs) -> dict:
        cfg = self.cfg
        if self.world > 1:
            loss_sum, clip_sum = self.acc.reduce(torch.tensor([loss_sum, clip_sum], device=self.acc.device), "sum").tolist()
        return {"loss": loss_sum / cfg.algo.updates_per_batch, "grad_norm": grad_norm, "lr": lr, "skipped": skipped,
                "kl": d.sum(), "entropy": ent.sum(), "tokens": ntok.sum(), "selected": torch.tensor(float(len(keep))),
                "clip_fraction": clip_sum / max(1.0, n_seqs * cfg.algo.updates_per_batch)}

    def _set_lr(self, step: int) -> float:
        lr = self.cfg.train.optim.lr * lr_factor(step, self.cfg.train.steps, self.cfg.train.optim)
        set_lr(self.optimizer, lr)
        return lr

    def _update_fused(self, step: int, batch: Batch, mbs: list[list[int]], mismatch: Mismatch) -> dict:
        """Two forwards (policy with gradients, anchor) and one backward per step — the minimum. The policy's
        graphs stay alive until the whole batch's KL to the anchor is known, then every micro-batch's loss
        goes into a single backward (under DDP the last micro-batch's forward arms the gradient all-reduce,
        and one backward fires each parameter's hook once). The ratio is exactly 1 (old = detached current),
        as in the two-pass path with one optimizer step per batch."""
        cfg, acc = self.cfg, self.acc
        N = len(batch.ids)
        d, ent, ntok = torch.zeros(N), torch.zeros(N), torch.zeros(N)
        kept = []
        with acc.autocast():  # one graph for the rearranged weights, shared by every micro-batch
            prep = self.policy_logits.prepare()
            ref_prep = self._anchor_prepared()
        # t1's own forward on one process: the whole batch in one pass with no padding (see t1.model.forward.Packed)
        packed = self.policy_logits.fast and (self.anchor.model is None or self.anchor_logits.fast)
        if packed:
            mbs = [list(range(N))]
        for j, mb in enumerate(mbs):
            sync = acc.no_sync(self.model) if j < len(mbs) - 1 else contextlib.nullcontext()
            with sync, acc.autocast():
                if packed:
                    rows = PackedRows(batch, mb, acc.device)
                    mask = rows.mask
                    logits = packed_logits(prep, rows.packed, rows.select)
                    logp, h = (rows.spread(x) for x in chunked.logp_entropy(logits, rows.targets, self.chunk,
                                                                            grad_in_place=True))
                    w = chunked.mismatch_rows(mismatch, logits, rows.targets, sampler_logp(batch, mb))
                    w = None if w is None else rows.spread(w)
                else:
                    ids, attn, mask = pad(batch, mb, self.tok.pad_token_id, acc.device)
                    logits = self.policy_logits(ids, attn, prep)
                    logp, h = chunked.shifted(logits, ids, self.chunk, grad_in_place=True)
                    w = chunked.padded_mismatch(mismatch, logits, ids[:, 1:], mask, sampler_logp(batch, mb))
                    w = None if w is None else torch.zeros(mask.shape, device=w.device).index_put((mask,), w)
                del logits  # the log-probs' autograd node keeps them, to write their gradient over them
                if self.anchor.model is not None:
                    with torch.no_grad():
                        if packed:
                            ref = rows.spread(chunked.logp_entropy(packed_logits(ref_prep, rows.packed, rows.select),
                                                                   rows.targets, self.chunk, entropy=False)[0])
                        else:
                            ref, _ = chunked.shifted(self.anchor_logits(ids, attn, ref_prep), ids, self.chunk,
                                                     entropy=False)
                    d[mb] = algo.sequence_kl(logp.detach(), ref, mask, cfg.algo.kl_clamp).float().cpu()
            ent[mb] = (h.detach() * mask).sum(-1).float().cpu()
            ntok[mb] = mask.sum(-1).float().cpu()
            kept.append((mb, logp, h if cfg.algo.entropy_coef else None, mask, w))  # h: no gradient unless used
        adv, keep, n_seqs, n_tokens = self._shape(batch, d, ntok)
        lr = self._set_lr(step)
        total, loss_sum, clip_sum = None, 0.0, 0.0
        for mb, logp, h, mask, w in kept:
            loss, st = algo.policy_loss(logp, logp.detach(), adv[mb].to(logp.device), mask, cfg.algo.aggregation,
                                        cfg.algo.clip, h, cfg.algo.entropy_coef, n_seqs=n_seqs, n_tokens=n_tokens,
                                        weight=w)
            loss = loss * self.world
            total = loss if total is None else total + loss
            loss_sum += loss.item() / self.world
            clip_sum += float(st["clip_fraction"]) * len(mb)
        acc.backward(total)
        del kept, total, prep
        grad_norm, skipped = self._optimizer_step(loss_sum)
        return self._result(loss_sum, clip_sum, grad_norm, lr, skipped, d, ent, ntok, keep, n_seqs)

    def _update_two_pass(self, step: int, batch: Batch, lengths: list[int], mismatch: Mismatch) -> dict:
        """Pass 1 without gradients (policy and anchor log-probs → KL, entropy), then pass 2 with gradients
        over the selected responses, one backward per micro-batch: bounded memory, any number of optimizer
        steps per batch (PPO-clipped), subset selection, any accelerate backend."""
        cfg, acc = self.cfg, self.acc
        d, old, ent, ntok, weights = self._pass1(batch, mismatch)
        adv, keep, n_seqs, n_tokens = self._shape(batch, d, ntok)
        lr = self._set_lr(step)
        mbs = micro_batches(keep, lengths, cfg.train.micro_batch_tokens, 1, cfg.train.bucket_ratio)
        n_mb = int(acc.reduce(torch.tensor(float(len(mbs)), device=acc.device), "max")) if self.world > 1 else len(mbs)
        mbs += [[]] * (n_mb - len(mbs))  # every process joins every gradient all-reduce
        loss_sum, clip_sum, grad_norm, skipped = 0.0, 0.0, float("nan"), False
        for _ in range(cfg.algo.updates_per_batch):
            for j, mb in enumerate(mbs):
                rows = mb or [0]
                ids, attn, mask = pad(batch, rows, self.tok.pad_token_id, acc.device)
                # DDP: all-reduce once, at the last micro-batch; FSDP: reduce-scatter every micro-batch (its
                # no_sync would hold whole unsharded gradients until the last)
                last = j == len(mbs) - 1
                sync = contextlib.nullcontext() if last or self.sharding else acc.no_sync(self.model)
                with sync, acc.autocast():
                    logp, h = chunked.shifted(self.policy_logits(ids, attn), ids, self.chunk,
                                              entropy=bool(cfg.algo.entropy_coef), grad_in_place=True)
                    if old is None:
                        old_lp = logp.detach()
                    else:
                        old_lp = torch.zeros_like(logp)
                        for r, i in enumerate(rows):
                            old_lp[r][mask[r]] = old[i].to(logp.device)
                    loss, st = algo.policy_loss(
                        logp, old_lp, adv[rows].to(logp.device), mask, cfg.algo.aggregation, cfg.algo.clip,
                        h, cfg.algo.entropy_coef, n_seqs=n_seqs, n_tokens=n_tokens,
                        weight=chunked.row_weights(weights, rows, mask))
                    loss = loss * (0.0 if not mb else self.world)
                    acc.backward(loss)
                if mb:
                    loss_sum += loss.item() / self.world
                    clip_sum += float(st["clip_fraction"]) * len(mb)
            grad_norm, skipped = self._optimizer_step(loss_sum)
            if skipped:
                break
        return self._result(loss_sum, clip_sum, grad_norm, lr, skipped, d, ent, ntok, keep, n_seqs)

    # -------------------------------------------------------------------------------------------- loop

    def _checkpoint(self, step: int) -> None:
        acc = self.acc
        acc.wait_for_everyone()
        state_dict = shard.model_state(acc, self.model, self.sharding)
        main = acc.is_main_process  # under FSDP the anchor and the optimizer are gathered: every process calls
        anchor = self.anchor.state_dict(keep=main)
        optimizer = shard.optimizer_state(self.model, self.optimizer, self.sharding, keep=main)
        if main:
            def write_model(path: Path) -> None:
                self.raw.save_pretrained(path, state_dict=state_dict)
                self.tok.save_pretrained(path)

            save_checkpoint(self.out, step, write_model, {"step": step, "optimizer": optimizer, "anchor": anchor,
                                                          "rng": rng_state()}, self.cfg.train.keep_checkpoints)
        acc.wait_for_everyone()

    def train(self) -> list[dict]:
        cfg, acc = self.cfg, self.acc
        main = acc.is_main_process
        if main:
            print(f"rl: {self.n_params / 1e6:.2f}M parameters | {len(self.items)} prompts ({cfg.data.task}) | "
                  f"{cfg.train.steps} steps × {cfg.rollout.prompts_per_step} prompts × {cfg.rollout.samples_per_prompt} "
                  f"samples | engine {type(self.engine).__name__} | anchor {self.anchor.mode}"
                  f"{f' ({self.sharding}-sharded)' if self.anchor.sharded else ''} | {self.world} process(es) | "
                  f"precision {self.precision} | attention {self.attention}" + (f" | resuming at step {self.start}" if self.start else ""), file=sys.stderr)
        bar = tqdm(total=cfg.train.steps, initial=self.start, desc="rl", unit="step", file=sys.stderr,
                   disable=not (main and self.progress), dynamic_ncols=True)
        history, bad_streak = [], 0
        for step in range(self.start, cfg.train.steps):
            t0 = time.perf_counter()
            batch, shown = self.rollout(step)
            upd = self.update(step, batch)
            bad_streak = bad_streak + 1 if upd["skipped"] else 0
            if upd["skipped"]:
                print(f"rl: warning: step {step + 1}: non-finite loss or gradient; update skipped", file=sys.stderr)
                if bad_streak >= cfg.train.max_bad_steps:
                    raise RuntimeError(f"rl: {bad_streak} consecutive steps with a non-finite loss or gradient "
                                       f"(last at step {step + 1}); lower train.optim.lr or check the data")
            row = step_row(acc, step, batch.stats, upd, time.perf_counter() - t0, self.timer.pop(), self.version,
                           cfg.rollout.is_cap)
            history.append(row)
            if main and ((step + 1) % cfg.train.log_every == 0 or step + 1 == cfg.train.steps):
                self.metrics.log(row)
            if main and cfg.train.rollouts_every and (step + 1) % cfg.train.rollouts_every == 0:
                with open(self.out / "rollouts.jsonl", "a", encoding="utf-8") as f:
                    for r in shown[: cfg.train.rollouts_kept]:
                        f.write(json.dumps(r, ensure_ascii=False) + "\n")
            bar.update()
            bar.set_postfix(reward=f"{row['reward']:.3f}", acc=f"{row['accuracy']:.3f}", len=f"{row['response_length']:.0f}",
                            tok_s=f"{row['tokens_per_s']:,.0f}")
            if (step + 1) % cfg.train.save_every == 0 or step + 1 == cfg.train.steps:
                self._checkpoint(step + 1)
        bar.close()
        state_dict = shard.model_state(acc, self.model, self.sharding)
        if main:
            final = self.out / "final"
            self.raw.save_pretrained(final, state_dict=state_dict)
            self.tok.save_pretrained(final)
            self.metrics.close()
            print(summary(history), file=sys.stderr)
        acc.wait_for_everyone()
        self.task.close()
        close_engine(self.engine)
        return history


def train_rl(cfg: RLConfig, resume: bool = False, progress: bool = True) -> list[dict]:
    return RLTrainer(cfg, resume=resume, progress=progress).train()
