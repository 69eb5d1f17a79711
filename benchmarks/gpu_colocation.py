"""The colocation memory cycle (review §3.3): after a training step on the GPU it shares with the trainer, can
vLLM take its share back when it wakes?

t1 rl colocates vLLM with the trainer: vLLM reserves ``gpu_memory_utilization`` × the device at start and at
every wake-up, outside PyTorch's caching allocator (CuMem), and frees it when it sleeps. Between, the update
allocates gradients, gathered FSDP units, activations and logits in the freed space — and at the first
optimizer step AdamW's moments, which stay. If the allocator's cached or fragmented blocks leave no contiguous
room, the wake-up fails after step 1 although the totals fit (t1.rollout.memory adds totals). This replays the
cycle with the sizes t1's estimate gives the 7B paper config on 8 GPUs (FSDP, checkpointed), scaled to this
device's memory, and reports whether each wake-up got its share:

1. the static lines that exist before the first step (policy and anchor shards) as tensors;
2. vLLM's share reserved with the CUDA driver (``cuMemAlloc``, outside torch's cache, like vLLM's CuMem) at
   start, then freed (asleep);
3. two update-shaped steps in the trainer's order: per-parameter gradient shards; gathered units allocated and
   freed layer by layer; activations, logits, the log-prob chunk; at the optimizer step AdamW's moments (first
   step: allocated now, per parameter, among the freed blocks) and the gradients freed;
4. ``torch.cuda.empty_cache()`` (t1 calls it before waking vLLM), then the share reserved again.

The allocator setting must be made before CUDA starts, so each setting runs in a fresh process:

    python benchmarks/gpu_colocation.py                                              # default allocator
    PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True python benchmarks/gpu_colocation.py

Prints one JSON line. Without CUDA (``--cpu``) the same cycle runs at 1/4096 of the sizes on CPU tensors, which
checks the script, not the allocator (tests/test_gpu_smoke.py).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import sys
from pathlib import Path

import torch

GiB = 1 << 30
CONFIG = Path(__file__).resolve().parents[1] / "configs" / "rl_qwen2.5_7b.yaml"
WORLD = 8


def plan(device_bytes: int, scale: int = 1) -> dict:
    """Byte sizes of the cycle's allocations for the 7B paper config on ``WORLD`` GPUs of ``device_bytes``
    (from t1.rollout.memory's estimate, every size divided by ``scale``)."""
    from t1 import config as C
    from t1.rl.config import RLConfig
    from t1.rollout import memory as M

    cfg = C.load(RLConfig, CONFIG, [])
    r = M.check_rl(cfg, M.qwen25("7b"), WORLD, 8, device_bytes, sharded=True, checkpointing=True, refuse=False)
    line = {name.split(" (")[0].split(",")[0]: b for name, _, b in r.lines}
    shape = M.Shape.of(M.qwen25("7b"))
    h, q, kv = shape.hidden, shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    layer = [h * q, h * kv, h * kv, q * h, h * shape.inter, h * shape.inter, shape.inter * h, h, h]
    layer += [q, kv, kv] if shape.qkv_bias else []
    params = [shape.vocab * h] + layer * shape.layers + [h, shape.vocab * h]  # per-parameter element counts
    shard = [max(1, 4 * n // WORLD // scale) for n in params]  # fp32 bytes of one process's shard
    share = next(b for name, _, b in r.lines if name.startswith("vLLM share"))
    return {"static": [line["policy fp32 weights /8"] // scale, line["anchor fp32 /8"] // scale],
            "share": share // scale, "shards": shard,
            "gathered_unit": line["FSDP gathered: embed/lm_head + 2 layers"] // 3 // scale,
            "layers": shape.layers, "activations": line["activations"] // scale,
            "logits": next(b for name, _, b in r.lines if name.startswith("logits")) // scale,
            "chunk": next(b for name, _, b in r.lines if name.startswith("log-prob chunk")) // scale,
            "estimate_peak": r.peak // scale}


class Driver:
    """Raw device memory outside torch's caching allocator, through the CUDA driver (libcuda, present wherever
    the NVIDIA driver is); on CPU a bytearray stands in."""

    def __init__(self, device: str):
        self.lib = None
        if device == "cuda":
            torch.empty(1, device="cuda")  # torch's primary context is current on this thread from here on
            self.lib = ctypes.CDLL("libcuda.so.1")
            self.lib.cuMemAlloc_v2.argtypes = [ctypes.POINTER(ctypes.c_uint64), ctypes.c_size_t]
            self.lib.cuMemFree_v2.argtypes = [ctypes.c_uint64]

    def alloc(self, n: int):
        """A handle, or None when the memory is not there."""
        if self.lib is None:
            return bytearray(n)
        ptr = ctypes.c_uint64()
        return ptr.value if self.lib.cuMemAlloc_v2(ctypes.byref(ptr), ctypes.c_size_t(n)) == 0 else None

    def free(self, handle) -> None:
        if self.lib is not None and handle is not None:
            self.lib.cuMemFree_v2(ctypes.c_uint64(handle))


def _step(p: dict, device: str, moments: list) -> None:
    """One update-shaped step in the trainer's order; AdamW's moments appended to ``moments`` on the first."""
    def t(n: int) -> torch.Tensor:
        return torch.empty(n, dtype=torch.uint8, device=device)

    grads = []
    acts = []
    for _ in range(p["layers"]):  # forward: gather a unit, keep its checkpointed activations, free the unit
        unit = t(p["gathered_unit"])
        acts.append(t(max(1, p["activations"] // p["layers"])))
        del unit
    logits, chunk = t(p["logits"]), t(p["chunk"])
    del chunk
    for n in p["shards"]:  # backward: gradient shards appear as the units are reduced
        unit = t(p["gathered_unit"] // 8 or 1)
        grads.append(t(n))
        del unit
    del logits, acts
    if not moments:  # AdamW's first step: exp_avg and exp_avg_sq per parameter, kept for good
        moments += [t(n) for n in p["shards"] for _ in range(2)]
    del grads


def cycle(device: str, scale: int) -> dict:
    """The cycle above; the result as a dict (sizes in GiB at full scale)."""
    total = torch.cuda.get_device_properties(0).total_memory if device == "cuda" else int(79.1 * GiB)
    p = plan(total, scale)
    driver = Driver(device)
    static = [torch.empty(n, dtype=torch.uint8, device=device) for n in p["static"]]
    share = driver.alloc(p["share"])
    out = {"allocator": os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "default"), "device_gib": total / GiB,
           "share_gib": p["share"] * scale / GiB, "estimate_peak_gib": p["estimate_peak"] * scale / GiB,
           "wake_at_start": share is not None, "wakes_after_step": []}
    driver.free(share)
    moments: list = []
    for _ in range(2):
        _step(p, device, moments)
        cached = torch.cuda.memory_reserved() - torch.cuda.memory_allocated() if device == "cuda" else 0
        if device == "cuda":
            torch.cuda.empty_cache()
        share = driver.alloc(p["share"])
        out["wakes_after_step"].append(share is not None)
        out.setdefault("cached_before_empty_gib", cached / GiB)
        if device == "cuda":
            out["free_awake_gib"] = torch.cuda.mem_get_info()[0] / GiB
            out["reserved_gib"] = torch.cuda.memory_reserved() / GiB
        driver.free(share)
    if device == "cuda":
        out["peak_reserved_gib"] = torch.cuda.max_memory_reserved() / GiB
    del static, moments
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cpu", action="store_true", help="the cycle at 1/4096 scale on CPU tensors")
    args = ap.parse_args(argv)
    device = "cpu" if args.cpu or not torch.cuda.is_available() else "cuda"
    print(json.dumps(cycle(device, 4096 if device == "cpu" else 1)), flush=True)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    raise SystemExit(main())
