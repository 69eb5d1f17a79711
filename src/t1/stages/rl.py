"""`t1 rl`: the T1 RL loop. It wires sampling, scoring and the update (:mod:`t1.rl.step`, on the pure functions
of :mod:`t1.rl.algo`) to accelerate and the run directory; it holds no algorithm of its own.

One step: take P prompts (each process its share), sample K responses each (the engine), score them (task
reward, then the −1 penalties), then the update (:class:`t1.rl.step.Update`): the policy's and the anchor's
log-probs, rewards shaped with the group-centred KL, RLOO advantages, optionally a subset, the clipped
policy-gradient loss with the entropy bonus, the optimizer step, the anchor's move — fused or in two passes.
Metrics, sampled rollouts and checkpoints go to the run directory (:class:`t1.runtime.run.RunDir`); the
engine gets the new weights at the next step's start, so that checkpoints are written while vLLM sleeps.
With ``algo.kl_beta = 0`` there is no KL term and no anchor: the run's ``config.yaml`` says
``anchor.mode: none`` with a note (:func:`t1.rl.config.resolve_anchor`).

Memory at scale: log-probs and entropy are taken ``train.logits_chunk`` positions at a time
(:mod:`t1.rl.logp`), and under FSDP the anchor is sharded like the policy (:mod:`t1.rl.shard`): FSDP runs
match one process's and resume exactly (tests/rl/test_shard.py, on CPU processes).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from t1.batching import epoch_order
from t1.chat import token_name
from t1.config import ConfigError
from t1.data.prompts import check_enough, load_items
from t1.model import lora
from t1.model.load import chat_format_of, count_parameters, load_for_training, set_attention
from t1.rl import algo, dynamic, overlap, rewards, shard
from t1.rl.anchor import Anchor
from t1.rl.batch import Batch
from t1.rl.config import RLConfig, resolve_anchor
from t1.rl.dynamic import Drawn
from t1.rl.penalties import check as penalty_flags
from t1.rl.rewards import UserReward
from t1.rl.step import Update
from t1.rl.summary import batch_stats, reward_sums, step_row, summary
from t1.rollout import close_engine, make_engine, memory
from t1.rollout.base import SamplingParams, sample_seed
from t1.rollout.config import resolve as resolve_engine
from t1.rollout.weights import full_parameters
from t1.runtime import sharded_state
from t1.runtime.device import gpus_per_node, make_accelerator, resolve_precision
from t1.runtime.optim import BadSteps, make_optimizer
from t1.runtime.run import RunDir, RunError, Timer, set_rng_state
from t1.tasks import get_task

PENALTIES = ("truncated", "repetitive", "garbage")
WARN_STEPS = 3  # a penalty firing on most samples within the first steps is reported (once per kind)


def _penalty(flags) -> str:
    """The −1 penalty a sample got, by kind ("" for none; the first that applies, as the reward takes one)."""
    return next((k for k in PENALTIES if getattr(flags, k)), "")


class RLTrainer:
    def __init__(self, cfg: RLConfig, resume: bool = False, progress: bool = True):
        cfg, note = resolve_anchor(cfg)  # kl_beta = 0: no anchor, and config.yaml says so
        self.cfg, self.progress = cfg, progress
        self.out = Path(cfg.out)
        self.threads = torch.get_num_threads()
        self.task, self.reward = self._start_task(), None
        try:  # the graders, and the run's lock once taken, are released if the setup fails
            self.reward = self._start_reward()
            device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
            self.precision = resolve_precision(cfg.train.precision, device)
            self.acc = acc = make_accelerator(self.precision, cfg.train.nccl_timeout)
            self.world, self.rank = acc.num_processes, acc.process_index
            P = cfg.rollout.prompts_per_step
            if P % self.world:
                raise ConfigError(f"rollout.prompts_per_step: must be divisible by the {self.world} processes "
                                  f"(got {P})")
            self.staleness = overlap.check(cfg, resolve_engine(cfg.rollout.engine), self.world)
            self.run = RunDir(self.out, resume, acc, cfg)  # --resume: cfg checked against config.yaml
        except BaseException:
            self.task.close()
            if self.reward is not None:
                self.reward.close()
            raise
        try:
            self._setup(note)
        except BaseException:
            self.close()
            raise

    def _start_task(self):
        """The task and its grader's worker processes, started first: the workers are forked from this
        process before it holds CUDA, NCCL or vLLM threads (``fork`` copies none of them; a fork of a process
        that holds them is fragile), each process taking its share of the cores (:mod:`t1.tasks.math`)."""
        cfg = self.cfg
        task = get_task(cfg.data.task, countdown=cfg.data.countdown, timeout=cfg.train.grader_timeout,
                        grader=cfg.data.grader)
        start = getattr(task, "start", None)
        if start is not None:
            start()
        return task

    def _start_reward(self) -> UserReward | None:
        """``data.reward``'s worker processes, forked like the graders' before any CUDA or engine thread."""
        d = self.cfg.data
        if d.reward is None:
            return None
        reward = UserReward(rewards.source(d.reward, d), d.reward_weights, d.reward_timeout, d.reward_workers)
        reward.start()
        return reward

    def close(self) -> None:
        """Release the graders, the engine (vLLM's memory) and the run's lock and logs."""
        try:
            ov, self.overlap = getattr(self, "overlap", None), None
            engine, self.engine = getattr(self, "engine", None), None
            if ov is not None:  # asynchronous: stop the sampler thread before the graders it scores with
                ov.stopping = True  # a batch being sampled is not scored
                wait = getattr(engine, "overlaps", False)  # a server's call in flight: not waited for
                if engine is not None:  # a thread waiting on a sampler process gets an error now
                    close_engine(engine)
                    engine = None
                ov.close(wait=wait)
            torch.set_num_threads(self.threads)  # the sampler process's cores were lent to it
            self.task.close()
            if self.reward is not None:
                self.reward.close()
            if engine is not None:
                close_engine(engine)
        finally:
            self.run.close()

    def _check_budget(self) -> None:
        """Before any weights load: a sampling budget past the model's context, or (CPU engines) this machine's
        memory, is refused in one line (:mod:`t1.rollout.bounds`); the prompts' lengths are checked again
        once they are known (:func:`t1.rollout.make_engine`)."""
        from t1.rollout import bounds

        r = self.cfg.rollout
        per_process = -(-r.prompts_per_step * r.samples_per_prompt // self.world)
        config = bounds.local_config(lora.base_path(self.cfg.model))
        bounds.check_engine(r, resolve_engine(r.engine), config, r.max_new_tokens, per_process,
                            field="rollout.max_new_tokens")
        self.memory_checked = torch.cuda.is_available() and config is not None
        if self.memory_checked:  # before loading: this node's RAM is a limit too, not only a note
            self._memory_report(config, host_bytes=memory.host_memory())

    def _memory_report(self, model_config, host_bytes: int | None = None) -> None:
        """GPU (and host) memory for this config (:func:`t1.rollout.memory.check_rl`): printed by the main
        process, refused in one line when it cannot fit — before hours go into it."""
        report = memory.check_rl(self.cfg, model_config, self.world, gpus_per_node(),
                                 host_bytes=host_bytes)
        if self.acc.is_main_process:
            print(memory.format_report(report), file=sys.stderr)

    def _setup(self, note: str) -> None:
        """The model (the checkpoint's when resuming), prompts, anchor, optimizer and engine."""
        cfg, acc = self.cfg, self.acc
        ckpt = self.run.checkpoint
        torch.manual_seed(cfg.train.seed)

        self.items = load_items(cfg.data)  # before the weights: too few prompts is refused at once
        check_enough(len(self.items), cfg.rollout.prompts_per_step, "rollout.prompts_per_step",
                     ", ".join(cfg.data.paths) or "data")
        self._check_budget()
        self.sharding = sharded_state.sharding(acc)  # fsdp1 / fsdp2 / zero3: the policy is split over processes
        model, self.tok = load_for_training(cfg.model, cfg.lora, ckpt, self.precision,
                                            weights=sharded_state.loads_weights(acc, self.sharding))
        self.format = chat_format_of(self.tok, cfg.model, cfg.data.use_chat_template)
        self.warned: set[str] = set()
        if torch.cuda.is_available() and not self.memory_checked:  # a hub model: its config is known now
            self._memory_report(lora.base_of(model).config)
        self.prompt_cache: dict[int, list[int]] = {}
        longest = max(len(self._prompt(i)) for i in range(len(self.items)))
        self.attention = set_attention(model, cfg.train.attention, longest + cfg.rollout.max_new_tokens)
        shard.check_launch(acc, self.sharding, resolve_engine(cfg.rollout.engine), cfg.anchor.mode != "none")
        lora.check_unsharded(model, acc)
        self.run.save_kwargs = lora.save_kwargs(model)
        self.anchor = Anchor(model, cfg.anchor.mode, cfg.anchor.ema_decay, cfg.anchor.reset_every,
                             sharded=self.sharding in ("fsdp1", "fsdp2"))  # under FSDP: no full copy (D4)
        state = self.run.state()
        if state is not None:
            self.anchor.load_state_dict(state["anchor"])  # a full state, loaded when the anchor is placed
        optimizer = make_optimizer(model, cfg.train.optim)
        self.n_params = count_parameters(model)  # before FSDP leaves each process its shard
        sharded_state.weights_from_main(acc, self.sharding)  # the other processes hold a skeleton (D4)
        self.model, self.optimizer = acc.prepare(model, optimizer)
        self.anchor.distribute(acc, self.model)  # sharded like the policy under FSDP (its shards), else moved
        self.start, self.num_tokens = 0, 0
        if state is not None:
            self.num_tokens = int(state.get("num_tokens", 0))
            sharded_state.load_optimizer_state(self.model, self.optimizer, self.sharding, state["optimizer"])
            set_rng_state(state["rng"])
            self.start = state["step"]
        self.raw = acc.unwrap_model(self.model)
        self.raw.train()  # (loaded in eval mode) dropout, LoRA's included, acts in the update
        self.update_step = Update(cfg, acc, self.model, self.optimizer, self.anchor, self.tok.pad_token_id,
                                  self.sharding)
        # an engine holding a copy loads the plain base model; the first push hands it the trained weights
        engine_model = lora.base_path(cfg.model if cfg.lora.rank else ckpt or cfg.model)
        self.engine = make_engine(cfg.rollout, self.raw, self.tok, model_path=engine_model,
                                  max_len=longest + cfg.rollout.max_new_tokens, run_dir=str(self.out),
                                  training=True, process=overlap.sampler_process(cfg, self.staleness))
        self.pending = overlap.my_pending(state, self.rank, self.world)
        self._sleep_engine()  # asleep until the first step's push, which wakes it (TRL: sleep right after start)
        self.params = SamplingParams(cfg.rollout.temperature, cfg.rollout.top_p, cfg.rollout.max_new_tokens,
                                     self.format.stop_ids)
        self.timer, self.overlap = Timer(), None
        self.version = self.start  # optimizer steps taken: the weights the engine must sample from
        self.run.start_metrics(cfg, self.start, note, logs=("metrics", "rollouts"), job_type="rl")
        for line in note.splitlines() if acc.is_main_process else ():
            print(f"rl: {line}", file=sys.stderr)

    # ------------------------------------------------------------------------------------------ sampling

    def _prompt(self, i: int) -> list[int]:
        if i not in self.prompt_cache:
            self.prompt_cache[i] = self.format.prompt_ids(self.tok, self.items[i].prompt)
        return self.prompt_cache[i]

    def _step_prompts(self, step: int) -> list[int]:
        P = self.cfg.rollout.prompts_per_step
        per_epoch = max(1, len(self.items) // P)
        epoch, k = divmod(step, per_epoch)
        order = epoch_order(len(self.items), self.cfg.train.seed, epoch)
        chosen = [order[(k * P + j) % len(order)] for j in range(P)]
        return chosen[self.rank:: self.world]

    def _draw(self, step: int, mine: list[int], round_: int, version: int, timer: Timer) -> Drawn:
        """K samples of each prompt in ``mine`` (round ``round_`` of the step: its own sample seeds) from weight
        ``version``, scored: the task's verdict, the user's reward if any, T1's penalties and the soft overlong
        zone."""
        K, cfg = self.cfg.rollout.samples_per_prompt, self.cfg
        prompts = [self._prompt(i) for i in mine for _ in range(K)]
        seeds = [sample_seed(cfg.train.seed, step, i, k + round_ * K) for i in mine for k in range(K)]
        with timer("sample"):
            if self.engine.shares_weights:
                self.raw.eval()
                samples = self.engine.generate(prompts, seeds, self.params)
                self.raw.train()
            else:  # a copy of the weights: it must hold this version (else StaleEngineError)
                samples = self.engine.generate(prompts, seeds, self.params, version=version)
        if self.overlap is not None and self.overlap.stopping:
            raise RunError("the run is stopping")  # the sampler thread of a run that ended: never scored
        with timer("score"):
            items = [self.items[i] for i in mine for _ in range(K)]
            scores = self.task.score([s.text for s in samples], items)
            flags = [penalty_flags(s.text, it.prompt, s.finished, s.token_ids, self.format.special_ids,
                                   cfg.penalties, lambda t: token_name(self.tok, t))
                     for s, it in zip(samples, items)]
            correct = torch.tensor([float(sc.correct) for sc in scores])
            named = None
            if self.reward is not None:  # the user's reward replaces the task's score (t1.rl.rewards)
                named = self.reward([it.prompt for it in items], [s.text for s in samples],
                                    [it.row or it.to_row() for it in items], correct)
        bad = {k: torch.tensor([getattr(f, k) for f in flags]) for k in PENALTIES}
        reward = algo.penalize(correct if named is None else named.total, bad["truncated"], bad["repetitive"],
                               bad["garbage"], cfg.penalties.value)
        lengths = torch.tensor([float(len(s.token_ids)) for s in samples])
        pen = cfg.penalties  # DAPO's soft overlong punishment on top, where no hard penalty replaced it
        soft = algo.soft_overlong(lengths, self.params.max_new_tokens, pen.overlong_buffer, pen.overlong_factor)
        soft = torch.where(bad["truncated"] | bad["repetitive"] | bad["garbage"], torch.zeros_like(soft), soft)
        return Drawn(prompts, samples, items, scores, flags, correct, bad, reward + soft, soft, named)

    def rollout(self, step: int, version: int | None = None, timer: Timer | None = None
                ) -> tuple[Batch, list[dict]]:
        """This process's share of the step's groups from weight ``version`` (default: the current one),
        scored. With ``algo.dynamic_sampling`` groups whose rewards are all equal (no signal) are dropped and
        more prompts are drawn, round after round, until the share is full or ``algo.dynamic_max_rounds`` is
        reached (every process takes as many rounds, so engines that sample together stay in step); a share
        still short is filled with dropped groups."""
        K, dyn = self.cfg.rollout.samples_per_prompt, self.cfg.algo.dynamic_sampling
        version, timer = self.version if version is None else version, timer or self.timer
        mine = self._step_prompts(step)
        drawn = self._draw(step, mine, 0, version, timer)
        rounds, dropped, filled = 1, 0, 0
        if dyn:
            keep, spare = dynamic.split_groups(drawn.reward, K)
            while rounds < self.cfg.algo.dynamic_max_rounds and self._any_short(len(keep) < len(mine)):
                more = self._draw(step, self._extra_prompts(step, rounds), rounds, version, timer)
                start = len(drawn.reward) // K
                drawn = Drawn.cat([drawn, more])
                k2, s2 = dynamic.split_groups(more.reward, K)
                keep, spare = keep + [start + g for g in k2], spare + [start + g for g in s2]
                rounds += 1
        if not self.staleness:
            self._sleep_engine()  # GPU sleep mode: vLLM's memory is the update's until the next push
        self._warn_penalties(step, drawn.flags)
        if drawn.named is not None:
            self._warn_reward(step, drawn.named, len(drawn.samples))
        if dyn:
            groups, dropped, filled = dynamic.choose(keep, spare, len(mine))
            drawn = drawn.take([g * K + k for g in groups for k in range(K)])
        return self._batch(step, drawn, (rounds, dropped, filled) if dyn else None)

    def _any_short(self, short: bool) -> bool:
        """Whether any process still lacks groups with a signal (a collective: every process asks)."""
        if self.world == 1:
            return short
        flag = torch.tensor(float(short), device=self.acc.device)
        return bool(self.acc.reduce(flag, "max") > 0)

    def _extra_prompts(self, step: int, round_: int) -> list[int]:
        """Round ``round_``'s prompts for dynamic sampling: a permutation of the data seeded by the run's seed,
        the step and the round (so a resumed step draws the same), this process's share."""
        P = self.cfg.rollout.prompts_per_step
        order = epoch_order(len(self.items), self.cfg.train.seed + 7919 * round_, step)
        return [order[j % len(order)] for j in range(P)][self.rank:: self.world]

    def _batch(self, step: int, d: Drawn, dyn: tuple[int, int, int] | None) -> tuple[Batch, list[dict]]:
        """The update's :class:`Batch` and the completions to show, with the step's statistics."""
        K = self.cfg.rollout.samples_per_prompt
        lengths = torch.tensor([float(len(s.token_ids)) for s in d.samples])
        stats = batch_stats(d.reward, d.correct, d.bad, lengths, torch.tensor([s.finished for s in d.samples]), K)
        if self.cfg.penalties.overlong_buffer:
            stats["overlong_soft"] = d.soft.sum()
        if d.named is not None:
            stats.update(reward_sums(d.named))
        if dyn is not None:
            stats.update(dynamic.stats(*dyn))
        ids = [p + s.token_ids for p, s in zip(d.prompts, d.samples)]
        stats["step_tokens"] = torch.tensor(float(sum(map(len, ids))))  # prompt + completion: TRL's num_tokens
        shown = [{"step": step + 1, "prompt": it.prompt, "response": s.text, "reward": float(r),
                  "correct": sc.correct, "extracted": sc.extracted, "rule": sc.rule, "finished": s.finished,
                  "tokens": len(s.token_ids), "penalty": _penalty(f), "penalty_reason": f.reason,
                  "last_token_ids": s.token_ids[-8:],
                  **{k: bool(getattr(f, k)) for k in PENALTIES}}
                 for it, s, sc, f, r in zip(d.items, d.samples, d.scores, d.flags, d.reward)]
        return Batch(ids, [len(p) for p in d.prompts], d.reward, stats, K, self.params, self.cfg.rollout.is_cap,
                     [s.logprobs for s in d.samples]), shown

    def _warn_reward(self, step: int, named, n: int) -> None:
        """One line per step in which ``data.reward`` failed on some samples (their reward is 0): how many,
        and the kinds of failure; never the text."""
        if named.n_failed and self.acc.is_main_process:
            kinds = ", ".join(f"{why}: {k}" for why, k in named.reasons.most_common(3))
            tqdm.write(f"rl: warning: data.reward failed on {named.n_failed} of {n} samples at step {step + 1} "
                       f"({kinds}); those samples get reward 0", file=sys.stderr)

    def _warn_penalties(self, step: int, flags) -> None:
        """One line per penalty kind that fires on most of a step's samples within the first steps: the rule
        and an example of the tokens that fired it (a chat format the model does not follow shows here)."""
        if step >= WARN_STEPS or not self.acc.is_main_process:
            return
        for kind in PENALTIES:
            hit = [f for f in flags if getattr(f, kind)]
            if kind in self.warned or 2 * len(hit) <= len(flags):
                continue
            self.warned.add(kind)
            example = next(r for r in hit[0].reason.split("; ") if r.startswith(kind))
            tqdm.write(f"rl: warning: the {kind} penalty fired on {len(hit)} of {len(flags)} samples at step "
                       f"{step + 1}, e.g. {example}. Check that the model's responses end the way it was trained "
                       f"to ({self.format.describe()})", file=sys.stderr)

    # ---------------------------------------------------------------------------------------- the update

    def update(self, step: int, batch: Batch) -> dict:
        """The optimizer step(s); the engine gets the new weights at the next step's start
        (:meth:`_push_weights`)."""
        with self.timer("train"):
            out = self.update_step(step, batch)
        self.version = step + 1
        return out

    def _sleep_engine(self) -> None:
        """Put an engine holding a copy of the weights to sleep (vLLM on GPU: its weights and KV cache
        freed) from its start and after each sampling call to the next push: the update, the checkpoints and
        ``final/`` gather full FSDP units, which do not fit beside an awake engine (its share was sized for the
        sampling peak); a resumed run's first push also goes through the wake path."""
        if not self.engine.shares_weights:
            self.engine.sleep()

    def _push_weights(self, version: int | None = None) -> None:
        """Hand the policy's weights to an engine that samples from a copy (vLLM, servers, the sampler process)
        as ``version`` (default ``self.version``), one full parameter at a time, right before it samples (it
        wakes for the push, and sleeps again after sampling); engines sharing the policy's tensors need
        nothing."""
        if self.engine.shares_weights:
            return
        with self.timer("push"):
            self.engine.push_weights(full_parameters(self.model, kept=True),
                                     self.version if version is None else version)
            self.acc.wait_for_everyone()

    # -------------------------------------------------------------------------------------------- loop

    def _checkpoint(self, step: int) -> None:
        def gather():  # under FSDP the policy, the anchor and the optimizer are gathered: every process calls
            main = self.acc.is_main_process
            state_dict = sharded_state.model_state(self.acc, self.model, self.sharding, full_parameters)
            anchor = self.anchor.state_dict(keep=main)
            optimizer = sharded_state.optimizer_state(self.model, self.optimizer, self.sharding, keep=main)
            extra = {"optimizer": optimizer, "anchor": anchor, "num_tokens": self.num_tokens}
            if self.overlap is not None:  # the batches sampled from older weights: a resumed run uses them
                mine = {t: overlap.batch_state(*b) for t, b in self.overlap.pending(step).items()}
                extra["pending"] = overlap.gather_pending(self.acc, mine)
            return state_dict, extra

        self.run.save_checkpoint(step, self.raw, self.tok, gather, self.cfg.train.keep_checkpoints)

    def _log(self, step: int, row: dict, shown: list[dict]) -> None:
        """The metrics row (every ``log_every`` steps); every ``rollouts_every`` steps the step's completions
        with their advantages (this process's share): all to ``completions/step_N.parquet``, the first
        ``rollouts_kept`` to rollouts.jsonl and the trackers' table."""
        cfg = self.cfg
        if (step + 1) % cfg.train.log_every == 0 or step + 1 == cfg.train.steps:
            self.run.log(row)
        if cfg.train.rollouts_every and (step + 1) % cfg.train.rollouts_every == 0:
            adv = self.update_step.advantages.tolist()
            shown = [{**r, "advantage": a} for r, a in zip(shown, adv, strict=True)]
            self.run.log(*shown[: cfg.train.rollouts_kept], to="rollouts")
            self.run.completions(step + 1, shown, cfg.train.rollouts_kept)

    def train(self) -> list[dict]:
        """Steps ``start`` … ``train.steps``, then ``final/``; the graders, the engine and the run's lock and
        logs are released however it ends."""
        try:
            return self._train()
        finally:
            self.close()

    def _train(self) -> list[dict]:
        cfg, acc = self.cfg, self.acc
        main = acc.is_main_process
        if main:
            print(f"rl: {self.format.describe()}", file=sys.stderr)
            print(f"rl: {self.n_params / 1e6:.2f}M parameters{lora.describe(self.raw)} | "
                  f"{len(self.items)} prompts ({cfg.data.task}) | "
                  f"{cfg.train.steps} steps × {cfg.rollout.prompts_per_step} prompts × "
                  f"{cfg.rollout.samples_per_prompt} samples | engine {type(self.engine).__name__} | "
                  f"anchor {self.anchor.mode}{f' ({self.sharding}-sharded)' if self.anchor.sharded else ''} | "
                  f"{self.world} process(es) | precision {self.precision} | attention {self.attention}"
                  + (f" | resuming at step {self.start}" if self.start else ""), file=sys.stderr)
        bar = tqdm(total=cfg.train.steps, initial=self.start, desc="rl", unit="step", file=sys.stderr,
                   disable=not (main and self.progress), dynamic_ncols=True)
        history, bad_steps = [], BadSteps("rl", cfg.train.max_bad_steps)
        if self.staleness:
            self.overlap = overlap.Overlap(self.staleness, cfg.train.steps,
                                           lambda t, v: (*self.rollout(t, v, timer := Timer()), timer.pop()),
                                           self._push_weights, getattr(self.engine, "overlaps", False),
                                           acc.is_main_process)
            self.overlap.begin(self.start, self.pending)
        for step in range(self.start, cfg.train.steps):
            t0 = time.perf_counter()
            if self.overlap is None:
                self._push_weights()  # the engine sleeps until here: checkpoints and final/ are written meanwhile
                batch, shown = self.rollout(step)
                times, sampled = {}, self.version
            else:  # sampled by the sampler thread from version step − N (t1.rl.overlap)
                (batch, shown, times), sampled, waited = self.overlap.take(step)
                times = {**times, "wait": waited}
            upd = self.update(step, batch)
            bad_steps.check(step, upd["skipped"])
            if self.overlap is not None:
                self.overlap.advance(self.version)  # push the new version, queue the batch sampled from it
            row = step_row(acc, step, batch.stats, upd, time.perf_counter() - t0, {**times, **self.timer.pop()},
                           self.version, batch.is_cap, sampled)
            self.num_tokens += int(row.pop("step_tokens"))
            row["num_tokens"] = self.num_tokens  # cumulative, as TRL's
            history.append(row)
            self._log(step, row, shown)
            bar.update()
            bar.set_postfix(reward=f"{row['reward']:.3f}", acc=f"{row['accuracy']:.3f}",
                            len=f"{row['response_length']:.0f}", tok_s=f"{row['tokens_per_s']:,.0f}")
            if (step + 1) % cfg.train.save_every == 0 or step + 1 == cfg.train.steps:
                self._checkpoint(step + 1)
        bar.close()
        final = sharded_state.model_state(acc, self.model, self.sharding, full_parameters)
        self.run.save_final(self.raw, self.tok, final, lora.merged_writer(self.raw, self.tok, cfg.lora))
        if main:
            print(summary(history), file=sys.stderr)
        return history


def train_rl(cfg: RLConfig, resume: bool = False, progress: bool = True) -> list[dict]:
    return RLTrainer(cfg, resume=resume, progress=progress).train()
