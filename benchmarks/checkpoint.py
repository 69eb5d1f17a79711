"""A checkpoint's cost with and without its checksums, measured in one run: writing a safetensors file of the
given size (save_file + fsync: what `RunDir.save_checkpoint` does per file) against hashing it for
``checksums.json`` and verifying it on resume (:mod:`t1.runtime.checkpoint`).

    .venv/bin/python benchmarks/checkpoint.py [--mib 512] [--repeats 3]

Decides whether the checksums may stay on for every checkpoint: hashing must stay a fraction of the write (a
7B RL checkpoint is ~122 GB). Results in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from t1.runtime.checkpoint import checksum_problem, write_checksums


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=512, help="size of the weights file")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    tensors = {f"w{i}": torch.randn(args.mib * (1 << 20) // 4 // 8) for i in range(8)}
    with tempfile.TemporaryDirectory(dir=".") as tmp:
        root = Path(tmp)

        def write() -> None:
            save_file(tensors, str(root / "model.safetensors"))
            fd = os.open(root / "model.safetensors", os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)

        t_write = best(write, args.repeats)
        t_hash = best(lambda: write_checksums(root), args.repeats)
        t_check = best(lambda: checksum_problem(root), args.repeats)
    print(f"{args.mib} MiB, {os.cpu_count()} CPUs (best of {args.repeats})")
    for what, t in (("write + fsync", t_write), ("checksums", t_hash), ("verify", t_check)):
        ratio = "" if t is t_write else f"  {t / t_write:5.2f}× the write"
        print(f"{what:>16s} {t:7.3f} s  {args.mib / t:8.0f} MiB/s{ratio}")

if __name__ == "__main__":
    main()
