"""First GPU smoke test: one GPU, no vLLM, no network; a few minutes. Prints measured vs predicted per check and
exits 1 when a check fails (skipped and informational rows never fail).

Why: t1's memory estimate (t1.rollout.memory) was fitted on CPU and its GPU paths were only reviewed, not run
(/work/shared/notes/gpu-path-review.md §3). The checks, in order:

1. environment: versions, device memory (the estimate assumes 79.1 GiB), bf16, SDPA backends, the engine
   ``auto`` picks, and the collective timeout a run gets (t1's vs torch's 600 s);
2. activations: bytes autograd saves per token and layer against ``Shape.act_per_token`` at 11k–17k tokens
   (Qwen2.5-7B, -14B, -32B layer shapes), and on CUDA the peak of a 2-layer forward + backward, plain and
   checkpointed;
3. logits: the update's logits + chunked log-probs, and the top-p check's rows, against CHUNK_BYTES and
   MISMATCH_BYTES (CUDA);
4. checkpoint headroom: a 7B checkpoint with vLLM awake allocated for real (review D3; CUDA);
   colocation: after an update-shaped step, can vLLM take its share back (review §3.3; CUDA; default
   allocator vs expandable segments, benchmarks/gpu_colocation.py);
5. numerics: chunked log-probs vs an fp32 reference, t1's top-p log-probs vs vLLM's algorithm, bf16 spread;
6. FSDP on CUDA (2 GPUs or more; skipped otherwise): `t1 sft` under FSDP2 stopped at a checkpoint and resumed
   equals an uninterrupted run (the optimizer state's GPU-only ``cpu_offload`` gather);
7. throughput: a few `t1 rl` steps (engine fast) on a random Qwen2.5-0.5B-shaped model (`t1 init
   tokenizer=qwen2.5`): completion tokens/s and peak memory vs the estimate's peak.

    python benchmarks/gpu_smoke.py                 # on a GPU machine (CUDA), ≈ 3–8 min
    python benchmarks/gpu_smoke.py --cpu           # tiny shapes on CPU, seconds (also without CUDA)
    python benchmarks/gpu_smoke.py --only env,numerics

Not covered (needs vLLM on a GPU): external_launcher TP, sleep/wake with vLLM's own CuMem allocator (the
colocation check reserves vLLM's share through the CUDA driver instead), reload_weights, weight transfer.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu_smoke_checks as checks  # noqa: E402
from gpu_smoke_checks import Row  # noqa: E402

# (name, (hidden, heads, kv_heads, intermediate, vocab), tokens): config.json of Qwen/Qwen2.5-{7B,14B,32B}
GPU_LAYERS = [("7B", (3584, 28, 4, 18944, 152064), 11264), ("14B", (5120, 40, 8, 13824, 152064), 11264),
              ("32B", (5120, 40, 8, 27648, 152064), 17408)]
CPU_LAYERS = [("tiny", (64, 4, 2, 160, 512), 257)]
# Qwen2.5-0.5B: hidden 896, 24 layers, 14 heads, 2 kv heads, ffn 4864, tied embeddings
RL_MODEL = {"cuda": ["model.hidden=896", "model.layers=24", "model.heads=14", "model.kv_heads=2", "model.ffn=4864",
                     "model.max_positions=4096"],
            "cpu": ["model.hidden=32", "model.layers=2", "model.heads=2", "model.kv_heads=1", "model.ffn=64",
                    "model.max_positions=512"]}
RL_RUN = {"cuda": ["train.steps=4", "rollout.prompts_per_step=32", "rollout.samples_per_prompt=8",
                   "rollout.max_new_tokens=512", "data.num_prompts=256", "train.precision=bf16"],
          "cpu": ["train.steps=2", "rollout.prompts_per_step=2", "rollout.samples_per_prompt=2",
                  "rollout.max_new_tokens=4", "data.num_prompts=8", "train.precision=fp32"]}


def fsdp(device: str, work: Path) -> list[Row]:
    """`t1 sft` on 2 GPUs under FSDP2 (tiny model): stopped at step 2 and resumed = 4 straight steps, bit for
    bit. Skipped with fewer than 2 GPUs."""
    if device != "cuda" or torch.cuda.device_count() < 2:
        return [Row("fsdp", "FSDP2 sft resume on 2 GPUs", "skipped (needs ≥ 2 GPUs)")]
    from safetensors.torch import load_file

    env = {**os.environ, "ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "FSDP_USE_ORIG_PARAMS": "true",
           "FSDP_AUTO_WRAP_POLICY": "TRANSFORMER_BASED_WRAP", "FSDP_STATE_DICT_TYPE": "FULL_STATE_DICT"}
    args = ["tiny.hidden=64", "tiny.layers=2", "tiny.heads=2", "tiny.kv_heads=2", "tiny.ffn=128",
            "data.num_examples=64", "train.epochs=1", "train.batch_size=16", "train.save_every=2",
            "train.precision=fp32", "--quiet"]
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "t1", "sft"]
    for out, extra in (("full", []), ("cut", ["train.max_steps=2"]), ("cut", ["--resume"])):
        proc = subprocess.run([*launch, *args, f"out={work / out}", *extra], env=env, capture_output=True,
                              text=True, timeout=300)
        if proc.returncode:
            return [Row("fsdp", "FSDP2 sft resume on 2 GPUs", "crashed", ok=False, note=proc.stderr[-300:])]
    a, b = (load_file(str(work / o / "final" / "model.safetensors")) for o in ("full", "cut"))
    same = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    return [Row("fsdp", "FSDP2 sft: resumed = uninterrupted weights", str(same), "True", same)]


def colocation(device: str) -> list[Row]:
    """Review §3.3 (benchmarks/gpu_colocation.py): the colocation cycle once per allocator setting, each in a
    fresh process (the setting must precede CUDA). Expandable segments is what docs/multinode.md tells a run to
    set: its row fails when vLLM cannot take its share back after a step; the default allocator's row is
    information (whether expandable segments are required)."""
    script = Path(__file__).resolve().parent / "gpu_colocation.py"
    settings = ["default", "expandable_segments:True"] if device == "cuda" else ["default"]
    rows = []
    for setting in settings:
        env = {k: v for k, v in os.environ.items() if k != "PYTORCH_CUDA_ALLOC_CONF"}
        if setting != "default":
            env["PYTORCH_CUDA_ALLOC_CONF"] = setting
        proc = subprocess.run([sys.executable, str(script), *(["--cpu"] if device == "cpu" else [])], env=env,
                              capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1][:200]
            rows.append(Row("colocation", f"cycle ({setting}) crashed", tail, ok=False))
            continue
        got = json.loads(proc.stdout.strip().splitlines()[-1])
        wakes = [got["wake_at_start"], *got["wakes_after_step"]]
        what = f"vLLM takes its {got['share_gib']:.1f} GiB back after steps 1, 2 ({setting})"
        if device == "cpu":
            rows.append(Row("colocation", what, "ran at 1/4096 on CPU", "", None, "the allocator needs CUDA"))
            continue
        note = (f"cached before empty_cache {got['cached_before_empty_gib']:.2f} GiB, peak reserved "
                f"{got['peak_reserved_gib']:.1f} GiB, free awake {got.get('free_awake_gib', 0):.1f} GiB")
        rows.append(Row("colocation", what, " ".join("yes" if w else "NO" for w in wakes),
                        f"fits ({got['estimate_peak_gib']:.1f} GiB peak)",
                        all(wakes) if setting != "default" else None, note))
    return rows


def rl_throughput(device: str, work: Path) -> list[Row]:
    """A few `t1 rl` steps on a random Qwen2.5-0.5B-shaped model (CPU: a tiny one with the same tokenizer)."""
    from t1 import config as C
    from t1.cli import main
    from t1.rl.config import RLConfig
    from t1.rollout import memory
    from t1.stages.rl import train_rl

    model_dir = work / "qwen-shaped"
    if main(["init", f"out={model_dir}", "tokenizer=qwen2.5", *RL_MODEL[device]]) != 0:
        return [Row("rl", "t1 init tokenizer=qwen2.5", "failed", ok=False)]
    cfg = C.load(RLConfig, None, [f"model={model_dir}", f"out={work / 'rl'}", "rollout.engine=fast",
                                  "train.optim.warmup_steps=0", *RL_RUN[device]])
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    rows = train_rl(cfg, progress=False)
    wall = time.perf_counter() - t0
    metrics = [json.loads(line) for line in (work / "rl" / "metrics.jsonl").read_text().splitlines()] or rows
    later = metrics[1:] or metrics  # the first step includes warm-up
    tok_s = sum(r["tokens_per_s"] for r in later) / len(later)
    split = {k: sum(r.get(k, 0.0) for r in later) / len(later) for k in ("time_sample", "time_train")}
    out = [Row("rl", f"{len(metrics)} steps, completion tokens/s (steps 2+)", f"{tok_s:,.0f}",
               note=f"sample {split['time_sample']:.2f} s / train {split['time_train']:.2f} s per step; "
                    f"wall {wall:.0f} s"),
           Row("rl", "steps finished, loss finite", str(len(metrics)), cfg.train.steps,
               len(metrics) == cfg.train.steps and all(r["loss"] == r["loss"] for r in metrics))]
    if device == "cuda":
        report = memory.check_rl(cfg, model_dir, 1, 1, sharded=False, checkpointing=False, refuse=False)
        peak = torch.cuda.max_memory_allocated()
        out.append(Row("rl", "peak allocated vs the estimate's peak", checks._gib(peak),
                       checks._gib(report.peak()), peak <= report.peak(),
                       f"reserved {checks._gib(torch.cuda.max_memory_reserved())}"))
    return out


CHECKS = ["env", "activations", "logits", "checkpoint", "colocation", "numerics", "fsdp", "rl"]


def run(device: str, only: list[str], work: Path) -> list[Row]:
    """Every check in ``only`` in order; a check that raises becomes a failed row and the next one runs."""
    small = device == "cpu"
    steps = {"env": lambda: checks.environment(device),
             "activations": lambda: checks.activations(device, CPU_LAYERS if small else GPU_LAYERS),
             "logits": lambda: checks.logits_memory(device, 11264, 152064, 3584, 2048),
             "checkpoint": lambda: checks.checkpoint_headroom(device),
             "colocation": lambda: colocation(device),
             "numerics": lambda: checks.numerics(device, 64 if small else 1024, 1000 if small else 152064, 16),
             "fsdp": lambda: fsdp(device, work / "fsdp"),
             "rl": lambda: rl_throughput(device, work)}
    rows = []
    for name in only:
        t0 = time.perf_counter()
        try:
            got = steps[name]()
        except Exception as e:  # report and go on: one broken check must not hide the others
            got = [Row(name, "raised", f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}",
                       ok=False)]
        got[-1].note = f"{got[-1].note} [{time.perf_counter() - t0:.1f} s]".strip()
        rows += got
        print(table(got, header=False), flush=True)
    return rows


def table(rows: list[Row], header: bool = True) -> str:
    mark = {True: "ok", False: "FAIL", None: "-"}
    lines = [f"{'check':<12} {'what':<62} {'measured':>18} {'predicted':>18}  ok    note"] if header else []
    lines += [f"{r.check:<12} {r.what:<62} {r.measured:>18} {str(r.predicted):>18}  {mark[r.ok]:<5} {r.note}"
              for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cpu", action="store_true", help="tiny shapes on CPU (automatic without CUDA)")
    ap.add_argument("--only", default=",".join(CHECKS), help=f"comma-separated subset of {','.join(CHECKS)}")
    ap.add_argument("--work", default=None, help="scratch directory (default: a temporary one)")
    args = ap.parse_args(argv)
    device = "cpu" if args.cpu or not torch.cuda.is_available() else "cuda"
    only = [c for c in args.only.split(",") if c]
    unknown = [c for c in only if c not in CHECKS]
    if unknown:
        ap.error(f"--only: unknown check(s) {', '.join(unknown)}; choose from {', '.join(CHECKS)}")
    print(f"gpu smoke on {device}", flush=True)
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        rows = run(device, only, Path(tmp))
    print("\n" + table(rows))
    failed = [r for r in rows if r.ok is False]
    print(f"\n{len(failed)} of {sum(r.ok is not None for r in rows)} checks failed" if failed else
          f"\nall {sum(r.ok is not None for r in rows)} checks passed")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
