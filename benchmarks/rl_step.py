"""RL step throughput: `t1 rl` vs TRL's GRPOTrainer at the same settings, measured in one run — or, with
``--staleness N``, `t1 rl` synchronous vs asynchronous (``train.max_staleness=N``: the fast engine samples in a
child process on half the cores while the update runs on the others; :mod:`t1.rl.overlap`).

    .venv/bin/pip install trl        # not a dependency of t1; only this script needs it (not with --staleness)
    .venv/bin/python benchmarks/rl_step.py [--steps 8] [--warmup 3] [--prompts 8] [--samples 8] [--new-tokens 128]
        [--trl-attention sdpa|eager] [--trl-malloc-tuning] [--staleness N]

Both train the same ~4M-parameter model files (a Llama: the Qwen2 shape without biases; transformers 5
re-tokenizes any qwen2 checkpoint with its own tokenizer) on the same Countdown prompts with K samples per
prompt, the same completion budget, temperature 1.0, top_p 1.0, a KL term (β > 0, so both run a reference
model), one optimizer step per batch and bf16 autocast. The score is completion tokens per second over whole
steps (sampling, scoring, reference and policy passes, optimizer), excluding the first ``--warmup`` steps of
each (while they run, allocators and oneDNN's primitive caches fill: each new peak of a process's heap costs
page faults, ~9 µs each on this VM).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from t1 import config as C
from t1.model.load import ModelConfig, build_model, build_tokenizer, save
from t1.rl.config import RLConfig
from t1.stages.rl import train_rl
from t1.tasks.countdown import CountdownConfig, generate, reward


def run_t1(model_dir: Path, out: Path, args, *extra: str) -> tuple[float, float]:
    cfg = C.load(RLConfig, None, [*extra,
        f"model={model_dir}", f"out={out}", f"train.steps={args.steps}",
        f"rollout.prompts_per_step={args.prompts}", f"rollout.samples_per_prompt={args.samples}",
        f"rollout.max_new_tokens={args.new_tokens}",
        "rollout.temperature=1.0", "rollout.top_p=1.0", "algo.kl_beta=0.04", "train.precision=bf16",
        "train.optim.lr=1e-5", "train.save_every=1000000", "train.rollouts_every=0"])
    history = train_rl(cfg, progress=False)[args.warmup:]
    tokens = sum(h["response_length"] * args.prompts * args.samples for h in history)
    split = {k: sum(h.get(f"time_{k}", 0.0) for h in history) / len(history)
             for k in ("sample", "score", "train", "wait")}
    print(f"t1{' ' + ' '.join(extra) if extra else ''} per step: sample {split['sample']:.3f}s, score "
          f"{split['score']:.3f}s, train {split['train']:.3f}s, waited for the batch {split['wait']:.3f}s")
    return tokens, sum(h["time_step"] for h in history)


def run_trl(model_dir: Path, out: Path, args) -> tuple[float, float]:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    tok = AutoTokenizer.from_pretrained(model_dir)
    problems = generate(CountdownConfig(), args.prompts * (args.steps + 1), seed=1)
    data = Dataset.from_list([{"prompt": p.prompt(), "numbers": list(p.numbers), "target": p.target}
                              for p in problems])

    def countdown_reward(completions, numbers, target, **_):
        return [reward(c, n, t) for c, n, t in zip(completions, numbers, target)]

    times: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.t0 = time.perf_counter()

        def on_step_end(self, *a, **k):
            times.append(time.perf_counter() - self.t0)

    cfg = GRPOConfig(
        output_dir=str(out), per_device_train_batch_size=args.prompts * args.samples, num_generations=args.samples,
        max_completion_length=args.new_tokens, temperature=1.0, top_p=1.0, beta=0.04, learning_rate=1e-5,
        max_steps=args.steps, logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, bf16=True,
        disable_tqdm=True, gradient_accumulation_steps=1, num_iterations=1, seed=0,
    )
    model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation=args.trl_attention)
    trainer = GRPOTrainer(model=model, reward_funcs=countdown_reward,
                          args=cfg, train_dataset=data, processing_class=tok, callbacks=[StepTimer()])
    trainer.train()
    lengths = [h["completions/mean_length"] for h in trainer.state.log_history if "completions/mean_length" in h]
    tokens = sum(lengths[args.warmup:]) * args.prompts * args.samples
    return tokens, sum(times[args.warmup:])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=3, help="steps of each trainer left out of the timing")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--trl-attention", default="sdpa", choices=["sdpa", "eager"],
                    help="TRL's attention kernel (transformers' default is sdpa; t1 picks eager on CPUs for short "
                         "sequences, so 'eager' gives TRL the same choice)")
    ap.add_argument("--trl-malloc-tuning", action="store_true",
                    help="give TRL t1's allocator setting too (t1.runtime.device.keep_freed_memory: freed memory "
                         "kept for reuse, no page faults to get it back); by default TRL runs with glibc's "
                         "defaults")
    ap.add_argument("--staleness", type=int, default=0,
                    help="compare t1 synchronous with t1 at train.max_staleness=N instead of with TRL")
    args = ap.parse_args()
    if args.staleness:
        return versus_async(args)
    if args.trl_malloc_tuning:
        from t1.runtime.device import keep_freed_memory

        keep_freed_memory()
    with tempfile.TemporaryDirectory() as tmp:
        tok = build_tokenizer(100)
        model_dir = save(build_model(ModelConfig(hidden=256, layers=4, heads=4, kv_heads=4, ffn=1024), tok), tok,
                         Path(tmp) / "model")
        trl_tokens, trl_s = run_trl(model_dir, Path(tmp) / "trl", args)
        t1_tokens, t1_s = run_t1(model_dir, Path(tmp) / "t1", args)
    print(f"RL steps: {args.prompts} prompts x {args.samples} samples x {args.new_tokens} tokens, beta 0.04, "
          f"bf16, TRL attention {args.trl_attention}"
          f"{', TRL with t1 malloc tuning' if args.trl_malloc_tuning else ''}, "
          f"{args.steps - args.warmup} timed steps after {args.warmup} warm-up, {torch.get_num_threads()} threads")
    print(f"{'trainer':22s} {'completion tokens':>18s} {'seconds':>8s} {'tokens/s':>9s}")
    print(f"{'TRL GRPOTrainer':22s} {trl_tokens:18,.0f} {trl_s:8.2f} {trl_tokens / trl_s:9,.0f}")
    print(f"{'t1 rl':22s} {t1_tokens:18,.0f} {t1_s:8.2f} {t1_tokens / t1_s:9,.0f}")
    print(f"speed-up: {(t1_tokens / t1_s) / (trl_tokens / trl_s):.2f}x")


def versus_async(args) -> None:
    """t1 synchronous vs t1 at ``train.max_staleness = args.staleness``, one after the other in this process."""
    with tempfile.TemporaryDirectory() as tmp:
        tok = build_tokenizer(100)
        model_dir = save(build_model(ModelConfig(hidden=256, layers=4, heads=4, kv_heads=4, ffn=1024), tok), tok,
                         Path(tmp) / "model")
        sync_tokens, sync_s = run_t1(model_dir, Path(tmp) / "sync", args)
        async_tokens, async_s = run_t1(model_dir, Path(tmp) / "async", args,
                                       f"train.max_staleness={args.staleness}")
    print(f"RL steps: {args.prompts} prompts x {args.samples} samples x {args.new_tokens} tokens, beta 0.04, "
          f"bf16, {args.steps - args.warmup} timed steps after {args.warmup} warm-up, "
          f"{torch.get_num_threads()} threads")
    print(f"{'trainer':26s} {'completion tokens':>18s} {'seconds':>8s} {'tokens/s':>9s}")
    print(f"{'t1 rl, synchronous':26s} {sync_tokens:18,.0f} {sync_s:8.2f} {sync_tokens / sync_s:9,.0f}")
    print(f"{f't1 rl, max_staleness={args.staleness}':26s} {async_tokens:18,.0f} {async_s:8.2f} "
          f"{async_tokens / async_s:9,.0f}")
    print(f"speed-up: {(async_tokens / async_s) / (sync_tokens / sync_s):.2f}x")


if __name__ == "__main__":
    main()
