"""The KL anchor (reference model): a moving average of the policy, a periodic reset, fixed, or none.

The anchor is a plain, frozen copy of the policy's parameters (never wrapped for distribution: every process
updates its own copy identically). ``update`` is called after each optimizer step.

* ``ema`` (the T1 default): θ_ref ← λ θ_ref + (1 − λ) θ after every step. After n steps from θ_ref = θ_0
  with the policy at θ_1 … θ_n: θ_ref = λ^n θ_0 + Σ_k (1 − λ) λ^(n−k) θ_k.
* ``reset``: θ_ref ← θ every ``reset_every`` steps.
* ``fixed``: θ_ref = the starting model (classic KL to the SFT model).
* ``none``: no anchor, no KL term.
"""

from __future__ import annotations

import copy
from typing import Literal

import torch

AnchorMode = Literal["ema", "reset", "fixed", "none"]


class Anchor:
    def __init__(self, policy: torch.nn.Module, mode: AnchorMode, ema_decay: float = 0.99, reset_every: int = 100):
        if mode not in ("ema", "reset", "fixed", "none"):
            raise ValueError(f"unknown anchor mode {mode!r}")
        self.mode, self.ema_decay, self.reset_every = mode, ema_decay, reset_every
        self.model = None
        if mode != "none":
            self.model = copy.deepcopy(policy).eval()
            for p in self.model.parameters():
                p.requires_grad_(False)

    @torch.no_grad()
    def update(self, policy: torch.nn.Module, step: int) -> None:
        """After optimizer step ``step`` (1-based)."""
        if self.model is None or self.mode == "fixed":
            return
        if self.mode == "ema":
            for ref, cur in zip(self.model.parameters(), policy.parameters()):
                ref.lerp_(cur.detach().to(ref.dtype), 1.0 - self.ema_decay)
        elif self.mode == "reset" and step % self.reset_every == 0:
            for ref, cur in zip(self.model.parameters(), policy.parameters()):
                ref.copy_(cur.detach())

    def state_dict(self) -> dict | None:
        return None if self.model is None else {k: v.clone() for k, v in self.model.state_dict().items()}

    def load_state_dict(self, state: dict | None) -> None:
        if self.model is not None and state is not None:
            self.model.load_state_dict(state)
