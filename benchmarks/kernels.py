"""t1's C kernels vs the PyTorch ops they replace, each measured in one run on the same inputs.

    .venv/bin/python benchmarks/kernels.py [--model bench|demo] [--repeat 20]

Shapes come from a real RL batch: Countdown prompts, K samples each sharing their prompt, lengths as the
sampler leaves them (``bench``: the rl_step benchmark's ~4M-parameter model, 8 prompts × 8 samples × 128
tokens; ``demo``: the demo's ~1M-parameter model, 48 prompts × 8 samples). Rows:

- packed attention, forward and forward+backward (the kernel vs grouped batched matmuls over padded groups);
- RMSNorm forward (fp32 residual stream -> bf16), SwiGLU forward+backward, RoPE forward+backward;
- one decoding step's attention block (RoPE, cache write, attention) vs the op's PyTorch ops.
"""

from __future__ import annotations

import argparse
import time

import torch

from t1.model.forward import Packed, _attend, _mask_bias
from t1.model.kernels import build, ops
from t1.runtime.device import keep_freed_memory


def timed(fn, repeat: int) -> float:
    for _ in range(3):
        fn()
    best = float("inf")
    for _ in range(3):  # best of three means of `repeat`: robust to the shared machine's hiccups
        t0 = time.perf_counter()
        for _ in range(repeat):
            fn()
        best = min(best, (time.perf_counter() - t0) / repeat)
    return best


def with_kernels(on: bool):
    lib = build.load() if on else None
    ops._lib = lambda: lib  # the indirection the ops read (tests monkeypatch the same)
    return lib


def rl_batch(prompts: int, samples: int, seed: int = 0) -> tuple[list[list[int]], list[int]]:
    """Token sequences shaped like an RL batch: prompts of 30-45 tokens, responses of 20-128 (as sampled)."""
    gen = torch.Generator().manual_seed(seed)
    seqs, prefixes = [], []
    for _ in range(prompts):
        prompt = torch.randint(3, 100, (int(torch.randint(30, 46, (1,), generator=gen)),), generator=gen).tolist()
        for _ in range(samples):
            n = int(torch.randint(20, 129, (1,), generator=gen))
            seqs.append(prompt + torch.randint(3, 100, (n,), generator=gen).tolist())
            prefixes.append(len(prompt))
    return seqs, prefixes


def decode_step(hidden: int, heads: int, gen: torch.Generator):
    """One decoding step's attention block (:func:`t1.model.kernels.ops.decode_block`: the kernel, or its
    PyTorch ops), B rows, a bf16 cache of 170 slots with 100 in use. Returns (B, t0, the step)."""
    B, slots, t0, hd = 64, 170, 100, hidden // heads
    dqkv = (torch.randn(B, 3 * hidden, generator=gen) * 0.5).bfloat16()
    cache = torch.randn(2, B, heads, slots, hd, generator=gen).bfloat16()
    drot = torch.polar(torch.ones(B, hd // 2), torch.rand(B, hd // 2, generator=gen))

    def run():
        ops.decode_block(dqkv, drot, cache[0], cache[1], t0, None, heads)
    return B, t0, run


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=["bench", "demo"], default="bench")
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args()
    keep_freed_memory()  # as t1's trainers run (freed blocks kept: no page faults on the PyTorch path's tensors)
    if build.load() is None:
        raise SystemExit("the C kernels could not be built here (see the log above); nothing to compare")
    hidden, heads, ffn, prompts = (256, 4, 1024, 8) if args.model == "bench" else (128, 4, 512, 48)
    hd = hidden // heads
    seqs, prefixes = rl_batch(prompts, 8)
    packed = Packed(seqs, "cpu", prefixes=prefixes)
    n = packed.n
    gen = torch.Generator().manual_seed(1)
    qkv = (torch.randn(n, 3 * hidden, generator=gen) * 0.5).bfloat16()
    qk = qkv[:, : 2 * hidden].unflatten(-1, (2 * heads, hd)).contiguous()
    v = qkv[:, 2 * hidden:].unflatten(-1, (heads, hd))
    dout = torch.randn(n, hidden, generator=gen).bfloat16()
    groups = [(_mask_bias(allowed, heads, torch.bfloat16), b, T) for allowed, b, T in packed.groups]

    def grouped(q, w):  # t1's PyTorch path (forward.packed_logits without the kernel)
        sizes = [b * T for _, b, T in groups]
        out = [_attend(*qg.view(b, T, 2 * heads, hd).split([heads, heads], dim=2), vg.view(b, T, heads, hd),
                       bias, 1).view(b * T, hidden)
               for qg, vg, (bias, b, T) in zip(q.index_select(0, packed.gather).split(sizes),
                                               w.index_select(0, packed.gather).split(sizes), groups)]
        return torch.cat(out).index_select(0, packed.back)

    def attention(backward: bool):
        def run():
            q, w = qk.detach().requires_grad_(backward), v.detach().requires_grad_(backward)
            out = ops.packed_attention(q, w, packed.layout, heads, grouped)
            if backward:
                torch.autograd.grad(out, (q, w), dout)
        return run

    x32 = torch.randn(n, hidden, generator=gen)
    gu = torch.randn(n, 2 * ffn, generator=gen).bfloat16()
    rot = torch.polar(torch.ones(n, 1, hd // 2), torch.rand(n, 1, hd // 2, generator=gen) * 6)

    def rms():
        ops.rms_norm_to(x32, 1e-6, torch.bfloat16)

    def swiglu():
        g = gu.detach().requires_grad_()
        torch.autograd.grad(ops.swiglu(g), g, torch.ones(n, ffn, dtype=torch.bfloat16))

    def rope():
        x = qk.detach().requires_grad_()
        torch.autograd.grad(ops.rope(x, rot, torch.bfloat16), x, qk)

    B, t0, decode = decode_step(hidden, heads, gen)

    rows = [("packed attention forward", attention(False), attention(False)),
            ("packed attention forward+backward", attention(True), attention(True)),
            ("RMSNorm forward (fp32 -> bf16)", rms, rms),
            ("SwiGLU forward+backward", swiglu, swiglu),
            ("RoPE forward+backward", rope, rope),
            ("decode step attention block", decode, decode)]
    print(f"{args.model} model shapes: {len(seqs)} sequences, {n:,} packed tokens (prompts shared), "
          f"hidden {hidden}, {heads} heads, ffn {ffn}; decode step {B} rows x {t0 + 1} slots; "
          f"{torch.get_num_threads()} threads")
    print(f"{'op':36s} {'PyTorch ms':>11s} {'t1 kernel ms':>13s} {'speed-up':>9s}")
    for name, kernel_fn, torch_fn in rows:
        with_kernels(False)
        t_torch = timed(torch_fn, args.repeat)
        with_kernels(True)
        t_kernel = timed(kernel_fn, args.repeat)
        print(f"{name:36s} {t_torch * 1e3:11.3f} {t_kernel * 1e3:13.3f} {t_torch / t_kernel:8.2f}x")


if __name__ == "__main__":
    main()
