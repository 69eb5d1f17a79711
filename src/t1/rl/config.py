"""`t1 rl` configuration. Defaults are the paper's values where it pins them (docs/method.md, "The RL step");
fields marked *(our choice)* are ours."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from t1.config import option, require
from t1.data.prompts import PromptDataConfig, check_enough
from t1.model.forward import fast_forward_option
from t1.model.load import Attention, attention_option
from t1.model.lora import LoraConfig, lora_option
from t1.rl.penalties import PenaltyConfig
from t1.rollout.base import check_sampling, check_sequences
from t1.rollout.config import EngineConfig, check_seconds
from t1.runtime.device import NCCL_TIMEOUT
from t1.runtime.optim import OptimConfig
from t1.runtime.trackers import Tracking


@dataclass(frozen=True)
class RolloutConfig(EngineConfig):
    """The engine table (:class:`t1.rollout.config.EngineConfig`: ``engine``, ``vllm``, ``vllm_server`` …)
    plus what RL samples."""

    prompts_per_step: int = option(32, "P: prompts per RL step, across all processes (the paper: 32; P × K ≤ "
                                       "65,536, and no more than the prompts in data)")
    samples_per_prompt: int = option(64, "K: samples per prompt — the oversampling (the paper: 64; ≤ 65,536)")
    temperature: float = option(1.2, "sampling temperature (the paper: 1.2)")
    top_p: float = option(0.95, "nucleus sampling (the authors' code: 0.95)")
    max_new_tokens: int = option(10240, "generation budget; longer responses are truncated (paper: 10240; "
                                        "≤ 1,048,576, and the longest prompt + it within the model's context)")
    is_cap: float | None = option(None, "truncated importance sampling: weight each token's loss by min(π_train "
                                        "/ π_sampler, cap) to correct the sampler-trainer mismatch and stale "
                                        "batches (0 = off; null: 2 with train.max_staleness > 0, else off)")

    def validate(self) -> None:
        super().validate()
        require(self.engine != "openai", "engine", "openai servers never receive the policy's weights, so RL "
                "would sample from the starting model forever; use vllm_server (or vllm, fast)", self.engine)
        require(self.prompts_per_step >= 1, "prompts_per_step", "must be ≥ 1", self.prompts_per_step)
        require(self.samples_per_prompt >= 2, "samples_per_prompt", "must be ≥ 2 (RLOO needs a group)",
                self.samples_per_prompt)
        check_sampling(self.samples_per_prompt, self.temperature, self.top_p, self.max_new_tokens,
                       n_field="samples_per_prompt")
        check_sequences(self.prompts_per_step, self.samples_per_prompt, "prompts_per_step",
                        "prompts_per_step × samples_per_prompt")
        require(self.is_cap is None or self.is_cap == 0 or self.is_cap >= 1, "is_cap", "must be 0 (off) or ≥ 1",
                self.is_cap)


@dataclass(frozen=True)
class SelectConfig:
    drop_uniform_groups: bool = option(False, "drop groups whose rewards are all equal (they carry no gradient)")
    max_per_group: int = option(0, "keep at most this many samples per group, balancing high and low "
                                   "rewards (0 = keep all, as the paper does)")

    def validate(self) -> None:
        require(self.max_per_group == 0 or self.max_per_group >= 2, "max_per_group", "must be 0 or ≥ 2",
                self.max_per_group)


@dataclass(frozen=True)
class AlgoConfig:
    kl_beta: float = option(2e-4, "β: weight of the group-centred sequence KL folded into the reward (paper)")
    kl_in: Literal["reward", "loss"] = option(
        "reward", "where the KL to the anchor acts: folded into the reward, group-centred (T1), or as a loss term "
                  "β · agg(k3) on every token (GRPO's, with the objective's aggregation)")
    kl_clamp: float = option(0.5, "per-token log-ratio clamp in the KL (the authors' code: 0.5; 0 = off)")
    entropy_coef: float = option(1e-3, "α: entropy bonus weight (our choice)")
    loss: Literal["t1", "grpo", "dr_grpo", "dapo", "gspo", "cispo"] = option(
        "t1", "policy objective (t1.rl.objectives): t1 (PPO clip, algo.aggregation), grpo (sequence mean), "
              "dr_grpo (sum / budget), dapo (clip-higher, token mean), gspo (sequence ratio), cispo (clipped "
              "IS weight)")
    advantage: Literal["rloo", "grpo", "dr_grpo"] = option(
        "rloo", "advantage estimator (t1.rl.algo): rloo (T1's: leave-one-out mean, no std), grpo ((r − group "
                "mean) / group std), dr_grpo (r − group mean)")
    aggregation: Literal["seq_mean_token_mean", "token_mean"] = option(
        "seq_mean_token_mean", "loss=t1's aggregation: token mean within a sequence then sequence mean, or all "
                               "tokens (the other objectives fix their own)")
    updates_per_batch: int = option(1, "optimizer steps per sampled batch (> 1 uses the PPO clipped ratio)")
    clip: float = option(0.2, "PPO clip range for the ratio, both sides, for t1 / grpo / dr_grpo (acts when "
                              "updates_per_batch > 1 or with stale samples)")
    clip_low: float | None = option(None, "ε_low: the ratio's lower clip 1 − ε_low; null: the objective's "
                                          "paper value (dapo 0.2, gspo 3e-4, cispo 1.0 = none) or algo.clip")
    clip_high: float | None = option(None, "ε_high: the ratio's upper clip 1 + ε_high; null: the objective's "
                                           "paper value (dapo 0.28, gspo 4e-4, cispo 0.28) or algo.clip")
    select: SelectConfig = option(help="optional subset selection after oversampling", factory=SelectConfig)
    dynamic_sampling: bool = option(False, "DAPO's dynamic sampling: drop groups whose rewards are all equal and "
                                           "draw more prompts until the step has P groups with a signal "
                                           "(t1.rl.dynamic)")
    dynamic_max_rounds: int = option(4, "dynamic sampling: at most this many sampling rounds per step; a step "
                                        "still short is filled with dropped groups")

    def validate(self) -> None:
        require(self.kl_beta >= 0, "kl_beta", "must be ≥ 0", self.kl_beta)
        require(self.entropy_coef >= 0, "entropy_coef", "must be ≥ 0", self.entropy_coef)
        require(self.updates_per_batch >= 1, "updates_per_batch", "must be ≥ 1", self.updates_per_batch)
        require(0 <= self.clip < 1, "clip", "must be in [0, 1)", self.clip)
        require(self.clip_low is None or 0 <= self.clip_low <= 1, "clip_low", "must be in [0, 1]", self.clip_low)
        require(self.clip_high is None or self.clip_high >= 0, "clip_high", "must be ≥ 0", self.clip_high)
        require(self.loss == "t1" or self.aggregation == "seq_mean_token_mean", "aggregation",
                f"applies to loss=t1 only ({self.loss} fixes its own)", self.aggregation)
        require(self.kl_clamp >= 0, "kl_clamp", "must be ≥ 0 (0 = off)", self.kl_clamp)
        require(self.dynamic_max_rounds >= 1, "dynamic_max_rounds", "must be ≥ 1", self.dynamic_max_rounds)


@dataclass(frozen=True)
class AnchorConfig:
    mode: Literal["ema", "reset", "fixed", "none"] = option(
        "ema", "KL anchor: ema of the policy (dynamic, T1), periodic reset, fixed starting model, or none")
    ema_decay: float = option(0.99, "λ in θ_ref ← λ θ_ref + (1 − λ) θ (our choice)")
    reset_every: int = option(100, "mode=reset: copy the policy into the anchor every N steps")

    def validate(self) -> None:
        require(0 <= self.ema_decay < 1, "ema_decay", "must be in [0, 1)", self.ema_decay)
        require(self.reset_every >= 1, "reset_every", "must be ≥ 1", self.reset_every)


def _rl_optim() -> OptimConfig:
    return OptimConfig(lr=1.5e-6, schedule="constant", warmup_steps=10, warmup_ratio=0.0, weight_decay=0.1,
                       beta1=0.9, beta2=0.95, grad_clip=1.0)


@dataclass(frozen=True)
class RLTrainConfig:
    steps: int = option(500, "RL steps (one sampled batch each)")
    micro_batch_tokens: int = option(16384, "padded tokens per forward/backward on one process")
    bucket_ratio: float = option(0.8, "start a new micro-batch when a sequence is shorter than this × the "
                                      "longest in it (less padding)")
    fused_update: bool = option(True, "when the whole batch fits in micro_batch_tokens (and one optimizer step "
                                      "per batch, no subset selection, not FSDP/DeepSpeed): keep the policy's "
                                      "graphs until the KL is known and run one backward — one forward fewer")
    precision: Literal["auto", "bf16", "fp16", "fp32"] = option("auto", "autocast precision for training passes")
    logits_chunk: int = option(0, "log-probs and entropy over the vocabulary this many positions at a time, "
                                  "forward and backward (their fp32 temporaries: ~chunk × vocab × 12 bytes; "
                                  "0 = a whole micro-batch at once, fastest for small vocabularies: ~15 % of "
                                  "the CPU benchmark's update; GPU runs with 150k-token vocabularies need "
                                  "2048 — the paper configs set it, and the memory estimate asks for it)")
    fast_forward: bool = fast_forward_option()
    attention: Attention = attention_option()
    seed: int = option(0, "sampling and data-order seed")
    max_staleness: int = option(0, "N: step t's batch is sampled from the weights of step t − N while the "
                                   "update of the steps before runs (0 = synchronous; 1 = one step off-policy, "
                                   "sampling overlaps the update; see the README's asynchronous RL)")
    sampler_threads: int = option(0, "with max_staleness > 0 and the fast engine: CPU threads of the sampler "
                                      "process (0 = half the cores; the update takes the rest)")
    log_every: int = option(1, "steps between metric rows")
    save_every: int = option(50, "steps between checkpoints (and always at the end)")
    keep_checkpoints: int = option(2, "newest checkpoints to keep")
    rollouts_every: int = option(10, "steps between samples of rollouts written to rollouts.jsonl (0 = never)")
    rollouts_kept: int = option(8, "rollouts written per sampled step")
    max_bad_steps: int = option(3, "stop after this many consecutive updates with a NaN/inf loss or gradient")
    grader_timeout: float = option(5.0, "seconds allowed per math answer check")
    nccl_timeout: float = option(NCCL_TIMEOUT, "seconds a collective (NCCL, gloo) waits for the slowest process "
                                               "before the job aborts (torch's NCCL default is 600: too short "
                                               "for long samples and large checkpoints)")
    optim: OptimConfig = option(help="AdamW (0.9, 0.95), wd 0.1, lr 1.5e-6, warm-up then constant (paper)",
                                factory=_rl_optim)

    def validate(self) -> None:
        require(self.steps >= 1, "steps", "must be ≥ 1", self.steps)
        require(0 <= self.max_staleness <= 16, "max_staleness", "must be in [0, 16] (each version in flight "
                "holds a batch, and with the fast engine a copy of the weights)", self.max_staleness)
        require(self.sampler_threads >= 0, "sampler_threads", "must be ≥ 0 (0 = half the cores)",
                self.sampler_threads)
        require(self.micro_batch_tokens >= 16, "micro_batch_tokens", "must be ≥ 16", self.micro_batch_tokens)
        require(self.max_bad_steps >= 1, "max_bad_steps", "must be ≥ 1", self.max_bad_steps)
        require(self.logits_chunk >= 0, "logits_chunk", "must be ≥ 0 (0 = off)", self.logits_chunk)
        require(0 <= self.bucket_ratio <= 1, "bucket_ratio", "must be in [0, 1]", self.bucket_ratio)
        require(self.log_every >= 1, "log_every", "must be ≥ 1", self.log_every)
        require(self.save_every >= 1, "save_every", "must be ≥ 1", self.save_every)
        require(self.keep_checkpoints >= 1, "keep_checkpoints", "must be ≥ 1", self.keep_checkpoints)
        require(self.rollouts_every >= 0, "rollouts_every", "must be ≥ 0 (0 = never)", self.rollouts_every)
        require(self.rollouts_kept >= 0, "rollouts_kept", "must be ≥ 0", self.rollouts_kept)
        require(self.grader_timeout > 0, "grader_timeout", "must be > 0 seconds", self.grader_timeout)
        check_seconds(self.nccl_timeout, "nccl_timeout")


@dataclass(frozen=True)
class RLConfig(Tracking):
    out: str = option("runs/rl", "run directory")
    model: str = option("", "starting checkpoint: a local path or hub name (e.g. the SFT run's final/)")
    data: PromptDataConfig = option(help="RL prompts", factory=PromptDataConfig)
    rollout: RolloutConfig = option(help="sampling (oversampling)", factory=RolloutConfig)
    algo: AlgoConfig = option(help="reward shaping and loss", factory=AlgoConfig)
    anchor: AnchorConfig = option(help="the KL anchor", factory=AnchorConfig)
    penalties: PenaltyConfig = option(help="−1 for truncated, repetitive, garbage", factory=PenaltyConfig)
    train: RLTrainConfig = option(help="the loop", factory=RLTrainConfig)
    lora: LoraConfig = lora_option()

    def validate(self) -> None:
        require(bool(self.model), "model", "is required: a checkpoint path or hub name", self.model)
        # data.num_prompts is the exact count of generated problems and a cap on files' rows: fewer than one
        # step takes would repeat prompts within a step (files: t1.data.prompts.check_enough once read)
        if self.data.num_prompts:
            check_enough(self.data.num_prompts, self.rollout.prompts_per_step, "rollout.prompts_per_step",
                         "data.num_prompts")


IS_CAP_ASYNC = 2.0  # the truncated-IS cap with stale batches when none is given (Yao et al. 2025's C = 2)


def resolve_anchor(cfg: RLConfig) -> tuple[RLConfig, str]:
    """The config as the run records it, with a note for each value it decided (for ``config.yaml`` and the
    log): with ``algo.kl_beta = 0`` there is no KL term, so the run keeps no anchor (``anchor.mode`` none);
    ``rollout.is_cap`` null becomes 2 with ``train.max_staleness`` > 0 (a stale batch needs the correction),
    else 0 (off)."""
    notes = []
    if cfg.rollout.is_cap is None:
        cap = IS_CAP_ASYNC if cfg.train.max_staleness else 0.0
        cfg = dataclasses.replace(cfg, rollout=dataclasses.replace(cfg.rollout, is_cap=cap))
        if cap:
            notes.append(f"rollout.is_cap: {cap:g} because train.max_staleness = {cfg.train.max_staleness} "
                         "(stale batches are corrected by truncated importance sampling)")
    elif cfg.train.max_staleness and cfg.rollout.is_cap == 0:  # e.g. a synchronous run's config.yaml reused
        notes.append(f"warning: train.max_staleness = {cfg.train.max_staleness} with rollout.is_cap = 0: stale "
                     f"batches are not corrected (measured on the demo: RL collapsed); rollout.is_cap="
                     f"{IS_CAP_ASYNC:g} or null turns the correction on")
    if cfg.algo.kl_beta == 0 and cfg.anchor.mode != "none":
        notes.append(f"anchor.mode: none, not {cfg.anchor.mode}, because algo.kl_beta = 0 (no KL term: no "
                     "anchor is kept)")
        cfg = dataclasses.replace(cfg, anchor=dataclasses.replace(cfg.anchor, mode="none"))
    return cfg, "\n".join(notes)
