"""LoRA training passes: t1's fast forward on merged weights (W + (α/r)·B·A) vs PEFT's own forward, the same
model, adapters, batch and autocast, measured in one run; and sampling with the fast engine from a LoRA model
vs the same weights merged into a plain model.

    .venv/bin/python benchmarks/lora.py [--hidden 256] [--layers 4] [--rank 16] [--batch 16] [--len 256]

Forward+backward per second of a batch (loss: mean log-sum-exp of the logits, gradients reach the adapters
only). Decides whether ``train.fast_forward`` serves LoRA runs: the merged pass computes each weight's full
gradient once (as full fine-tuning does) where PEFT's path computes only the adapters', but it runs t1's fused
pass. Results in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from t1.model import lora
from t1.model.forward import Forward
from t1.model.load import ModelConfig, build_model, build_tokenizer, load, save
from t1.rollout.base import SamplingParams
from t1.rollout.fast import FastEngine


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--len", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.manual_seed(0)
    tok = build_tokenizer(100)
    heads = args.hidden // 64
    shape = ModelConfig(hidden=args.hidden, layers=args.layers, heads=heads, kv_heads=heads,
                        ffn=4 * args.hidden, max_positions=2 * args.len + 64)
    with tempfile.TemporaryDirectory() as tmp:
        base = save(build_model(shape, tok), tok, Path(tmp) / "base")
        model = lora.apply(load(base, dtype="float32")[0], lora.LoraConfig(rank=args.rank, alpha=2.0 * args.rank),
                           base=str(base))
        ids = torch.randint(3, len(tok), (args.batch, args.len))
        attn = torch.ones_like(ids)
        speeds = {}
        for name, fast in (("t1 fast forward, merged", True), ("PEFT forward", False)):
            f = Forward(model, model, fast=fast)

            def step():
                model.zero_grad(set_to_none=True)
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    f(ids, attn).float().logsumexp(-1).mean().backward()

            speeds[name] = timed(step, args.repeats)
        a, b = speeds.values()
        print(f"LoRA r={args.rank} forward+backward, {args.batch}×{args.len} tokens, hidden {args.hidden}, "
              f"{args.layers} layers (bf16 autocast):")
        for name, s in speeds.items():
            print(f"  {name:28s} {s * 1e3:8.1f} ms   {args.batch * args.len / s:10,.0f} tok/s")
        print(f"  ratio PEFT / t1 merged: {b / a:.2f}×")

        lora.save_merged(model, tok, Path(tmp) / "merged")
        plain = load(Path(tmp) / "merged", dtype="float32")[0]
        prompts = [tok("use 3 5 7 to make 22 :")["input_ids"]] * 64
        params = SamplingParams(temperature=1.0, top_p=1.0, max_new_tokens=64)
        times = {}
        for name, m in (("LoRA model (merged on the fly)", model), ("plain merged model", plain)):
            eng = FastEngine(m, tok)
            times[name] = timed(lambda: eng.generate(prompts, list(range(64)), params), 2)
        print("fast engine, 64 samples × 64 tokens:")
        for name, s in times.items():
            print(f"  {name:32s} {s:6.2f} s")
        print(f"  ratio LoRA / plain: {list(times.values())[0] / list(times.values())[1]:.2f}×")


if __name__ == "__main__":
    main()
