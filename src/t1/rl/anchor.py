"""The KL anchor (reference model): a moving average of the policy, a periodic reset, fixed, or none.

The anchor is a frozen fp32 copy of the policy's parameters. Unsharded it is copied from the policy before
the policy is wrapped; under FSDP it is built on the meta device (no memory), sharded like the policy, and each
process fills its shards from the policy's local shards (:meth:`Anchor.distribute`) — a full fp32 copy per
process before sharding would cost 4N bytes of host RAM on every rank (32B on 8 GPUs: 1 TB per node).
``update`` is called after each optimizer step. Parameters that do not train (a LoRA run's base model) are
shared with the policy, not copied: only the trained tensors (the adapter) move and are saved.

* ``ema`` (the T1 default): θ_ref ← λ θ_ref + (1 − λ) θ after every step. After n steps from θ_ref = θ_0
  with the policy at θ_1 … θ_n: θ_ref = λ^n θ_0 + Σ_k (1 − λ) λ^(n−k) θ_k.
* ``reset``: θ_ref ← θ every ``reset_every`` steps.
* ``fixed``: θ_ref = the starting model (classic KL to the SFT model).
* ``none``: no anchor, no KL term.

Distribution (:meth:`Anchor.distribute`): on one process or under DDP every process holds the whole anchor
and updates it identically. Under FSDP it is sharded with the policy's own FSDP settings
(:mod:`t1.rl.shard`): 1/world of it per process, its forward gathering weights unit by unit like the
policy's, and ``update`` runs shard against shard (identical wrapping, identical local shards: no
communication). ``state_dict`` is then a collective that gathers the full anchor (Hugging Face names) one
parameter at a time; ``load_state_dict`` takes such a full state before ``distribute``, which loads it into
the shards.
"""

from __future__ import annotations

import copy
from typing import Literal

import torch

from t1.rl import shard

AnchorMode = Literal["ema", "reset", "fixed", "none"]


class Anchor:
    def __init__(self, policy: torch.nn.Module, mode: AnchorMode, ema_decay: float = 0.99, reset_every: int = 100,
                 sharded: bool = False):
        """``sharded``: the policy is about to be FSDP-wrapped; the anchor is then a meta copy until
        :meth:`distribute` (see the module doc)."""
        if mode not in ("ema", "reset", "fixed", "none"):
            raise ValueError(f"unknown anchor mode {mode!r}")
        self.mode, self.ema_decay, self.reset_every = mode, ema_decay, reset_every
        self.model = None
        self.sharded = False
        self.pending: dict | None = None  # a full state for a meta anchor, loaded once it is sharded
        # names of the tensors that train (and move); None = all of them. Frozen ones (a LoRA run's base) are
        # shared with the policy, not copied: the anchor is the adapter's average on the same base
        frozen = [p for p in policy.parameters() if not p.requires_grad]
        self.trained = ({n for n, p in policy.named_parameters() if p.requires_grad} if frozen else None)
        if mode != "none" and sharded:
            self.model = shard.meta_copy(policy).eval()
        elif mode != "none":
            self.model = copy.deepcopy(policy, memo={id(p): p for p in frozen}).eval()
            for p in self.model.parameters():
                p.requires_grad_(False)

    @property
    def meta(self) -> bool:
        return self.model is not None and any(p.is_meta for p in self.model.parameters())

    @torch.no_grad()
    def distribute(self, acc, policy: torch.nn.Module | None = None) -> None:
        """Shard the anchor like the policy (FSDP) or move it to ``acc``'s device (see the module doc); a meta
        anchor takes ``policy``'s (the wrapped policy's) local shards, then a full state given before."""
        if self.model is None:
            return
        meta = self.meta
        self.sharded = shard.sharding(acc) != ""
        if meta and (policy is None or not self.sharded):
            raise RuntimeError("Anchor.distribute: a sharded anchor needs FSDP and the wrapped policy")
        self.model = shard.shard_like_policy(acc, self.model)
        self.model.eval()
        if meta:
            for ref, cur in shard.local_pairs(self.model, policy):
                ref.copy_(cur.detach())
            if self.pending is not None:
                shard.load_full_state(self.model, self.pending)
            self.pending = None

    def release(self) -> None:
        """After the anchor's forwards of a step: free what FSDP1 keeps gathered (:func:`t1.rl.shard.release`)."""
        if self.sharded:
            shard.release(self.model)

    @torch.no_grad()
    def update(self, policy: torch.nn.Module, step: int) -> None:
        """After optimizer step ``step`` (1-based). ``policy``: the wrapped policy when the anchor is sharded."""
        if self.model is None or self.mode == "fixed":
            return
        self.release()  # a gathered copy would not see the update
        pairs = list(shard.local_pairs(self.model, policy))
        if self.trained is not None:  # LoRA (never sharded): the frozen base is shared, only the adapter moves
            pairs = [(ref, cur) for ref, cur in pairs if cur.requires_grad]
        if self.mode == "ema":
            for ref, cur in pairs:
                ref.lerp_(cur.detach().to(ref.dtype), 1.0 - self.ema_decay)
        elif self.mode == "reset" and step % self.reset_every == 0:
            for ref, cur in pairs:
                ref.copy_(cur.detach())

    def state_dict(self, keep: bool = True) -> dict | None:
        """The anchor's full state (on CPU when sharded); every process calls it when sharded, and those with
        ``keep`` get it."""
        if self.model is None:
            return None
        if self.sharded:
            return shard.full_state_dict(self.model, keep)
        if not keep:
            return None
        return {k: v.clone() for k, v in self.model.state_dict().items()
                if self.trained is None or k in self.trained}

    def load_state_dict(self, state: dict | None) -> None:
        if self.model is None or state is None:
            return
        if self.sharded:
            raise RuntimeError("Anchor.load_state_dict: load before distribute() (the state is a full one)")
        if self.meta:
            self.pending = state
            return
        missing, unexpected = self.model.load_state_dict(state, strict=False)
        params = self.trained if self.trained is not None else \
            dict(self.model.named_parameters(remove_duplicate=False))
        if unexpected or any(k in params for k in missing):
            raise RuntimeError(f"anchor checkpoint does not match the model: missing {missing}, "
                               f"unexpected {unexpected}")
