"""The RL update of one step's batch: the policy's and the anchor's log-probs, the KL-shaped RLOO advantages, the
clipped policy-gradient loss with the entropy bonus, the optimizer step, the anchor's move. Pure algorithm
lives in :mod:`t1.rl.algo`; this module runs it over micro-batches on the models, with accelerate.

Every forward goes through :meth:`Update.tokens`: a micro-batch's rows in one of two layouts — *packed* (rows
laid end to end with no padding, each prompt once for its K samples, through t1's own forward:
:class:`t1.rl.batch.PackedRows`, :func:`t1.model.forward.packed_logits`; one process only) or *padded*
(right-padded rows through any :class:`t1.model.forward.Forward`: :func:`t1.rl.batch.pad`) — giving the
response mask, log-probs, entropies, the anchor's log-probs and the truncated-IS weights, with or without
gradients. Two schedules use it:

* fused (:meth:`Update.fused`): when the batch fits in one micro-batch's budget, one process or plain DDP, one
  optimizer step per batch and no subset selection — the policy's forward with gradients, kept until the whole
  batch's KL to the anchor is known, then one backward. Packed when t1's forward runs the policy and the anchor.
* two passes (:meth:`Update.two_pass`): a no-gradient pass for the KL, entropy and (several optimizer steps per
  batch) the old log-probs, then gradient micro-batches over the selected responses, one backward each: bounded
  memory, PPO-clipped ratios, subset selection, any accelerate backend.

Losses are normalised by global counts, so any number of processes gives the same update as one (tested).
"""

from __future__ import annotations

import contextlib
from typing import NamedTuple

import torch

from t1.batching import micro_batches
from t1.model.forward import Forward, packed_logits
from t1.rl import algo, objectives
from t1.rl import logp as chunked
from t1.rl.anchor import Anchor
from t1.rl.batch import Batch, Mismatch, PackedRows, pad, sampler_logp
from t1.rl.config import RLConfig
from t1.rl.select import select
from t1.runtime.optim import clip_and_step, lr_factor, set_lr


class Tokens(NamedTuple):
    """A micro-batch's per-token values, each [rows, T-1] in the right-padded layout (column t: token t + 1)."""

    mask: torch.Tensor  # response tokens
    logp: torch.Tensor  # the policy's log-probs of the tokens
    entropy: torch.Tensor | None  # the policy's entropy at each position; None when not asked for
    ref: torch.Tensor | None  # the anchor's log-probs; None without an anchor or when not asked for
    weight: torch.Tensor | None  # truncated-IS weights; None when off (or no mismatch given)


class Update:
    """The update side of `t1 rl` for a prepared (``acc.prepare``) policy ``model`` and ``optimizer`` and a
    distributed ``anchor``: ``update(step, batch)`` runs one RL step's update and returns its numbers."""

    def __init__(self, cfg: RLConfig, acc, model, optimizer, anchor: Anchor, pad_id: int, sharding: str):
        self.cfg, self.acc, self.model, self.optimizer, self.anchor = cfg, acc, model, optimizer, anchor
        self.world, self.pad_id, self.sharding = acc.num_processes, pad_id, sharding
        self.chunk = cfg.train.logits_chunk
        raw = acc.unwrap_model(model)
        fast = cfg.train.fast_forward and not sharding  # t1's forward reads whole parameters
        self.policy = Forward(model, raw, fast)  # with gradients
        # no-gradient pass 1: the bare model under DDP (no gradient hooks); FSDP must gather through its wrapper
        self.bare = Forward(model if sharding else raw, raw, fast)
        self.reference = Forward(anchor.model, fast=fast) if anchor.model is not None else None
        self.advantages = torch.zeros(0)  # the last update's RLOO advantages (KL-shaped), per sample

    def __call__(self, step: int, batch: Batch) -> dict:
        """Optimizer step(s) of 0-based RL step ``step`` on ``batch``, then the anchor's move (unless skipped)."""
        cfg = self.cfg
        lr = cfg.train.optim.lr * lr_factor(step, cfg.train.steps, cfg.train.optim)
        set_lr(self.optimizer, lr)
        lengths = [len(r) for r in batch.ids]
        mbs = self.fused_micro_batches(lengths)
        mismatch = Mismatch(batch.params.temperature, batch.params.top_p, batch.is_cap)
        out = self.fused(batch, mbs, mismatch) if mbs is not None else self.two_pass(batch, lengths, mismatch)
        out.update(lr=lr, **mismatch.stats())
        if not out["skipped"]:
            self.anchor.update(self.model, step + 1)
        return out

    # ------------------------------------------------------------------------------------- one micro-batch

    def tokens(self, batch: Batch, rows: list[int], forward: Forward, prep, ref_prep=None, *, packed: bool = False,
               mismatch: Mismatch | None = None, entropy: bool = True, anchor: bool = True) -> Tokens:
        """:class:`Tokens` of ``rows``: ``forward`` (on ``prep``, its prepared weights, or None) with gradients
        where they are enabled, the anchor (``anchor``, on ``ref_prep``) without; ``packed`` needs ``prep``.
        ``mismatch``: measure the sampler's log-probs against these (and weight the tokens when it caps)."""
        device = self.acc.device
        sampled = None if mismatch is None else sampler_logp(batch, rows)
        if packed:
            layout = PackedRows(batch, rows, device)
            mask = layout.mask
            logits = packed_logits(prep, layout.packed, layout.select)
            logp, h = chunked.logp_entropy(logits, layout.targets, self.chunk, entropy, grad_in_place=True)
            logp, h = layout.spread(logp), (None if h is None else layout.spread(h))
            w = None if mismatch is None else chunked.mismatch_rows(mismatch, logits, layout.targets, sampled)
            w = None if w is None else layout.spread(w)
        else:
            ids, attn, mask = pad(batch, rows, self.pad_id, device)
            logits = forward(ids, attn, prep)  # [B, T, V]: position t predicts ids[:, t + 1]
            logp, h = chunked.shifted(logits, ids, self.chunk, entropy, grad_in_place=True)
            w = None if mismatch is None else chunked.padded_mismatch(mismatch, logits, ids[:, 1:], mask, sampled)
            w = None if w is None else torch.zeros(mask.shape, device=w.device).index_put((mask,), w)
        del logits  # before the anchor's (the log-probs' autograd node keeps them, to write their gradient over)
        ref = None
        if anchor and self.reference is not None:
            with torch.no_grad():
                if packed:
                    ref, _ = chunked.logp_entropy(packed_logits(ref_prep, layout.packed, layout.select),
                                                  layout.targets, self.chunk, entropy=False)
                    ref = layout.spread(ref)
                else:
                    ref, _ = chunked.shifted(self.reference(ids, attn, ref_prep), ids, self.chunk, entropy=False)
        return Tokens(mask, logp, h, ref, w)

    @torch.no_grad()
    def _reference_prepared(self):
        return None if self.reference is None else self.reference.prepare()

    # ------------------------------------------------------------------------------------------- fused

    def fused_micro_batches(self, lengths: list[int]) -> list[list[int]] | None:
        """The micro-batches for a fused step (see :meth:`fused`), or None when the step must take two passes:
        fused needs one optimizer step per batch, no subset selection, one process or plain DDP (not FSDP /
        DeepSpeed), and the whole batch within one micro-batch's token budget, so keeping every graph until
        the backward needs no more memory than one micro-batch. All processes must agree."""
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

    def fused(self, batch: Batch, mbs: list[list[int]], mismatch: Mismatch) -> dict:
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
            prep = self.policy.prepare()
            ref_prep = self._reference_prepared()
        # t1's own forward on one process: the whole batch in one pass, no padding (t1.model.forward.Packed)
        packed = self.policy.fast and (self.reference is None or self.reference.fast)
        if packed:
            mbs = [list(range(N))]
        for j, mb in enumerate(mbs):
            sync = acc.no_sync(self.model) if j < len(mbs) - 1 else contextlib.nullcontext()
            with sync, acc.autocast():
                t = self.tokens(batch, mb, self.policy, prep, ref_prep, packed=packed, mismatch=mismatch)
                if t.ref is not None:
                    d[mb] = algo.sequence_kl(t.logp.detach(), t.ref, t.mask, cfg.algo.kl_clamp).float().cpu()
            ent[mb] = (t.entropy.detach() * t.mask).sum(-1).float().cpu()
            ntok[mb] = t.mask.sum(-1).float().cpu()
            # the entropy keeps no gradient unless the loss uses it
            kept.append((mb, t._replace(entropy=t.entropy if cfg.algo.entropy_coef else None)))
        adv, keep, n_seqs, n_tokens = self.shape(batch, d, ntok)
        total, loss_sum, clip_sum = None, 0.0, 0.0
        for mb, tk in kept:
            loss, st = self.loss(batch, tk, tk.logp.detach(), adv[mb], n_seqs, n_tokens)
            loss = loss * self.world
            total = loss if total is None else total + loss
            loss_sum += loss.item() / self.world
            clip_sum += float(st["clip_fraction"]) * len(mb)
        acc.backward(total)
        del kept, total, prep, t
        grad_norm, skipped = clip_and_step(acc, self.model, self.optimizer, cfg.train.optim.grad_clip, loss_sum)
        return self.result(loss_sum, clip_sum, grad_norm, skipped, d, ent, ntok, keep, n_seqs)

    # --------------------------------------------------------------------------------------- two passes

    @torch.no_grad()
    def measure(self, batch: Batch, mismatch: Mismatch):
        """Pass 1, per sequence: KL d_i to the anchor, entropy sum, token count, and — only when one batch
        takes several optimizer steps — the old log-probs of its response tokens. With one step, the old
        policy is the current one and the loss uses the detached current log-probs (ratio 1, same gradient).
        Also the sampler-vs-trainer log-prob mismatch and, when on, each sequence's truncated-IS weights."""
        cfg, acc = self.cfg, self.acc
        keep_old = cfg.algo.updates_per_batch > 1
        keep_ref = cfg.algo.kl_in == "loss" and self.reference is not None
        N = len(batch.ids)
        d, ent, ntok = torch.zeros(N), torch.zeros(N), torch.zeros(N)
        old: list[torch.Tensor] | None = [torch.empty(0)] * N if keep_old else None
        refs: list[torch.Tensor] | None = [torch.empty(0)] * N if keep_ref else None
        weights: list[torch.Tensor | None] = [None] * N
        lengths = [len(r) for r in batch.ids]
        with acc.autocast():  # weights rearranged once for all micro-batches (no gradients here)
            prep = self.bare.prepare()
            ref_prep = self._reference_prepared()
        mbs = micro_batches(list(range(N)), lengths, cfg.train.micro_batch_tokens, 1, cfg.train.bucket_ratio)
        if self.sharding and self.world > 1:  # FSDP's forwards are collectives: as many on every process
            n_mb = int(acc.reduce(torch.tensor(float(len(mbs)), device=acc.device), "max"))
            for _ in range(n_mb - len(mbs)):  # stand-ins whose results are dropped
                with acc.autocast():
                    self.tokens(batch, [0], self.bare, prep, ref_prep)
        for mb in mbs:
            with acc.autocast():
                mask, logp, h, ref, w = self.tokens(batch, mb, self.bare, prep, ref_prep, mismatch=mismatch)
            if ref is not None:
                d[mb] = algo.sequence_kl(logp, ref, mask, cfg.algo.kl_clamp).float().cpu()
            ent[mb] = (h * mask).sum(-1).float().cpu()
            ntok[mb] = mask.sum(-1).float().cpu()
            for j, i in enumerate(mb):
                if w is not None:
                    weights[i] = w[j][mask[j]].cpu()
                if keep_old:
                    old[i] = logp[j][mask[j]].float().cpu()
                if keep_ref:
                    refs[i] = ref[j][mask[j]].float().cpu()
        self.anchor.release()  # FSDP1 would keep its root unit gathered through pass 2
        return d, old, refs, ent, ntok, weights

    def two_pass(self, batch: Batch, lengths: list[int], mismatch: Mismatch) -> dict:
        """Pass 1 without gradients (:meth:`measure`), then pass 2 with gradients over the selected responses,
        one backward per micro-batch, ``algo.updates_per_batch`` times (an optimizer step each)."""
        cfg, acc = self.cfg, self.acc
        d, old, refs, ent, ntok, weights = self.measure(batch, mismatch)
        adv, keep, n_seqs, n_tokens = self.shape(batch, d, ntok)
        mbs = micro_batches(keep, lengths, cfg.train.micro_batch_tokens, 1, cfg.train.bucket_ratio)
        n_mb = len(mbs)
        if self.world > 1:
            n_mb = int(acc.reduce(torch.tensor(float(n_mb), device=acc.device), "max"))
        mbs += [[]] * (n_mb - len(mbs))  # every process joins every gradient all-reduce
        loss_sum, clip_sum, grad_norm, skipped = 0.0, 0.0, float("nan"), False
        for _ in range(cfg.algo.updates_per_batch):
            for j, mb in enumerate(mbs):
                rows = mb or [0]
                # DDP: all-reduce once, at the last micro-batch; FSDP: reduce-scatter every micro-batch (its
                # no_sync would hold whole unsharded gradients until the last)
                last = j == len(mbs) - 1
                sync = contextlib.nullcontext() if last or self.sharding else acc.no_sync(self.model)
                with sync, acc.autocast():
                    t = self.tokens(batch, rows, self.policy, None, entropy=bool(cfg.algo.entropy_coef),
                                    anchor=False)
                    t = t._replace(weight=chunked.row_weights(weights, rows, t.mask),
                                   ref=None if refs is None else self._spread(t, rows, refs))
                    old_lp = t.logp.detach() if old is None else self._spread(t, rows, old)
                    loss, st = self.loss(batch, t, old_lp, adv[rows], n_seqs, n_tokens)
                    loss = loss * (0.0 if not mb else self.world)
                    acc.backward(loss)
                if mb:
                    loss_sum += loss.item() / self.world
                    clip_sum += float(st["clip_fraction"]) * len(mb)
            grad_norm, skipped = clip_and_step(acc, self.model, self.optimizer, cfg.train.optim.grad_clip,
                                               loss_sum)
            if skipped:
                break
        return self.result(loss_sum, clip_sum, grad_norm, skipped, d, ent, ntok, keep, n_seqs)

    def loss(self, batch: Batch, t: Tokens, old_logp: torch.Tensor, adv: torch.Tensor, n_seqs: float,
             n_tokens: float):
        """The one place the objective (``algo.loss``, :mod:`t1.rl.objectives`) is computed, for both schedules:
        ``t``'s log-probs against ``old_logp`` with the rows' advantages ``adv``, its entropy bonus (``t.entropy``
        None: none), truncated-IS weights and — ``algo.kl_in: loss`` — the KL to the anchor's log-probs
        ``t.ref``; normalised by the whole batch's counts."""
        a = self.cfg.algo
        low, high = objectives.clip_range(a.loss, a.clip, a.clip_low, a.clip_high)
        s = objectives.Settings(low, high, a.aggregation, n_seqs, n_tokens, batch.params.max_new_tokens)
        ref = t.ref if a.kl_in == "loss" else None
        return objectives.policy_loss(a.loss, t.logp, old_logp, adv.to(t.logp.device), t.mask, s, t.entropy,
                                      a.entropy_coef, t.weight, ref, a.kl_beta)

    @staticmethod
    def _spread(t: Tokens, rows: list[int], kept: list[torch.Tensor]) -> torch.Tensor:
        """Per-token values pass 1 kept per sequence (the old or the anchor's log-probs) in ``t``'s layout."""
        out = torch.zeros_like(t.logp, dtype=torch.float32)
        for r, i in enumerate(rows):
            out[r][t.mask[r]] = kept[i].to(t.logp.device)
        return out.to(t.logp.dtype)

    # ------------------------------------------------------------------------------------------ shared

    def shape(self, batch: Batch, d: torch.Tensor, ntok: torch.Tensor):
        """Rewards → KL-shaped rewards → advantages (``algo.advantage``, RLOO by default) → selection; global
        counts for the loss."""
        cfg, K = self.cfg, batch.group
        beta = cfg.algo.kl_beta if cfg.algo.kl_in == "reward" else 0.0  # else a loss term (Update.loss)
        shaped = algo.shape(batch.reward, algo.center_in_group(d, K), beta)
        adv = algo.ADVANTAGES[cfg.algo.advantage](shaped, K)
        self.advantages = adv.detach().float().cpu()  # this process's, for the completion tables
        keep = select(batch.reward, adv, K, cfg.algo.select)
        counts = self.acc.reduce(torch.tensor([float(len(keep)), float(ntok[keep].sum())], device=self.acc.device),
                                 "sum")
        return adv, keep, float(counts[0]), float(counts[1])

    def result(self, loss_sum, clip_sum, grad_norm, skipped, d, ent, ntok, keep, n_seqs) -> dict:
        updates = self.cfg.algo.updates_per_batch
        if self.world > 1:
            loss_sum, clip_sum = self.acc.reduce(torch.tensor([loss_sum, clip_sum], device=self.acc.device),
                                                 "sum").tolist()
        return {"loss": loss_sum / updates, "grad_norm": grad_norm, "skipped": skipped, "kl": d.sum(),
                "entropy": ent.sum(), "tokens": ntok.sum(), "selected": torch.tensor(float(len(keep))),
                "clip_fraction": clip_sum / max(1.0, n_seqs * updates)}
