"""Where and how a run computes: precision, the accelerate Accelerator, the CPU allocator, quiet libraries."""

from __future__ import annotations

import os

import torch


def resolve_precision(precision: str, device: torch.device) -> str:
    """"auto" -> "bf16" where the hardware multiplies bf16 faster than fp32 — CUDA devices with bf16 support,
    CPUs where :func:`cpu_bf16_faster` measures it — else "fp32"."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu":
        return "bf16" if cpu_bf16_faster() else "fp32"
    return "fp32"


BF16_SPEEDUP = 1.3  # bf16 must multiply at least this much faster than fp32 to be chosen on a CPU
_CPU_BF16: bool | None = None


def matmul_seconds(dtype: torch.dtype, rounds: int = 3) -> float:
    """The fastest of ``rounds`` timings of a training-shaped matrix product (2048 × 128 by 128 × 512, the
    demo model's MLP over a batch) in ``dtype`` on this CPU, with the threads torch uses now."""
    import time

    a, b = torch.randn(2048, 128).to(dtype), torch.randn(128, 512).to(dtype)
    a @ b  # the first call picks and prepares the kernel
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        a @ b
        a @ b
        best = min(best, time.perf_counter() - t)
    return best


def cpu_bf16_faster() -> bool:
    """Whether this CPU multiplies bf16 matrices at least BF16_SPEEDUP × faster than fp32. CPUs with AMX tiles
    (~6× measured) or AVX512-BF16 dot products (~2–5× on an AMD EPYC) do; a CPU that merely lists a bf16 flag,
    or emulates bf16, is slower in bf16 than in fp32 — the flag is not the answer, the measurement is.

    Measured once per machine (CPU model and flags, torch version, thread count) and remembered in
    ``~/.cache/t1/cpu_bf16/`` (``T1_CACHE_DIR``): a verdict that changed with the load of the moment would
    change a run's rounding, and the same command would give other numbers on the same machine (seen: one of
    four runs beside three others timed bf16 slower). The measurement takes the fastest of three turns each,
    fp32 and bf16 alternating, so a busy machine slows both alike. ``T1_CPU_BF16=1`` or ``0`` decides instead
    (to compare both on one machine); deleting the file measures again."""
    global _CPU_BF16
    forced = os.environ.get("T1_CPU_BF16", "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    if _CPU_BF16 is None:
        _CPU_BF16 = _remembered_bf16()
    return _CPU_BF16


def _remembered_bf16() -> bool:
    import hashlib
    import json

    from t1.io import atomic_write_text
    from t1.runtime.machine import cache_dir, cpu_id

    key = hashlib.sha256(f"{cpu_id()}|{torch.__version__}|{torch.get_num_threads()}".encode()).hexdigest()[:16]
    path = cache_dir() / "cpu_bf16" / f"{key}.json"
    try:
        return bool(json.loads(path.read_text())["bf16"])
    except (OSError, ValueError, KeyError, TypeError):
        pass  # not measured yet here (or an unreadable file): measure
    fp32, bf16 = float("inf"), float("inf")
    for _ in range(3):
        fp32, bf16 = min(fp32, matmul_seconds(torch.float32)), min(bf16, matmul_seconds(torch.bfloat16))
    faster = fp32 >= BF16_SPEEDUP * bf16
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps({"bf16": faster, "fp32_seconds": fp32, "bf16_seconds": bf16,
                                            "threads": torch.get_num_threads(), "torch": torch.__version__}))
    except OSError:
        pass  # a read-only home: the verdict holds for this process
    return faster


_ALLOCATOR_TUNED = False


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory for reuse instead of handing it back to the kernel.

    PyTorch's CPU tensors come from malloc. By default glibc serves blocks above a (dynamic) threshold with
    fresh ``mmap`` pages and returns them on free, and trims the heap top, so every training step and every
    sampling call page-faults its activations and caches in again — measured here as the same RL update
    taking 0.6 s or 1.4 s depending on what the kernel had to zero. This serves every block from the heap
    (``M_MMAP_MAX`` = 0: even ones above the largest mmap threshold glibc allows, 32 MiB, such as a large
    batch's attention scores — measured: the demo's RL update 1.39 → 1.03 s, its reference pass 190k → 7k
    page faults) and never trims it (``mallopt`` takes a C ``int``: 2 GiB - 1, i.e. "never" for any heap top
    this tool leaves free), so a process keeps its peak like the CUDA caching allocator does.
    Process-wide, idempotent, Linux/glibc only (elsewhere a no-op); returns whether it applied."""
    global _ALLOCATOR_TUNED
    if _ALLOCATOR_TUNED:
        return True
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_max = -1, -4
        # ctypes passes Python ints as C int and silently truncates: 1 << 62 would arrive as 0 ("trim always")
        ok = (libc.mallopt(ctypes.c_int(m_mmap_max), ctypes.c_int(0)) == 1
              and libc.mallopt(ctypes.c_int(m_trim_threshold), ctypes.c_int(2**31 - 1)) == 1)
    except (OSError, AttributeError):  # not glibc (musl, …)
        return False
    _ALLOCATOR_TUNED = ok
    return ok


def quiet_libraries() -> None:
    """Our own progress bars and summaries replace transformers' per-file bars and advisory warnings."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


NCCL_TIMEOUT = 7200.0  # seconds: see make_accelerator


def make_accelerator(precision: str, nccl_timeout: float = NCCL_TIMEOUT):
    """An ``Accelerator`` for this run. accelerate keeps one process-wide state; its accelerator part is reset
    first so that several runs in one process (the demo: SFT then RL; the tests) can each pick a precision.
    The distributed part (process group, rank) is kept.

    ``nccl_timeout``: seconds a collective waits for the slowest process before the job is aborted. accelerate
    hands ``InitProcessGroupKwargs(timeout=…)`` to ``torch.distributed.init_process_group`` when its
    ``PartialState`` creates the group (accelerate 1.15 ``Accelerator.__init__`` → ``AcceleratorState(**
    init_handler.to_kwargs())`` → ``PartialState``; without a handler NCCL's default is 10 minutes,
    ``InitProcessGroupKwargs.__post_init__``). That is the first ``Accelerator`` of the process, which is
    this call in every ``t1`` command (a process group made earlier keeps its own timeout). 10 minutes is
    too short for a T1 step: ranks whose engine finished early wait in the update's first collective for
    the slowest one (10–16k-token samples, several waves: tens of minutes for 32B), and the other ranks wait
    in a barrier while rank 0 writes a 100–500 GB checkpoint. transformers' ``ddp_timeout`` (TRL's) is
    30 minutes and long-generation runs raise it; the default here is 2 hours."""
    from datetime import timedelta

    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import InitProcessGroupKwargs

    quiet_libraries()
    if not torch.cuda.is_available():
        keep_freed_memory()
    AcceleratorState._reset_state()
    cpu = not torch.cuda.is_available()
    group = InitProcessGroupKwargs(timeout=timedelta(seconds=nccl_timeout))
    return Accelerator(mixed_precision="no" if precision == "fp32" else precision, cpu=cpu,
                       kwargs_handlers=[group])


def gpus_per_node() -> int:
    """The GPUs one node gives this job: the launcher's processes per node (``LOCAL_WORLD_SIZE``, one GPU each)
    when it says, else the GPUs this process sees. Under SLURM with ``--gpus-per-task=1`` each process sees one
    GPU (``device_count() == 1``) although the node runs eight: the memory estimate then refused any
    ``tensor_parallel_size`` > 1 as not fitting a node."""
    local = os.environ.get("LOCAL_WORLD_SIZE", "")
    if local.isdigit() and int(local) > 0:
        return int(local)
    return torch.cuda.device_count()


def end_distributed(code: int = 0) -> None:
    """End a command run by a distributed launcher (torchrun, ``accelerate launch``) with exit status
    ``code``: every process waits for the others, destroys its process group, flushes its output and leaves
    with ``os._exit``. A no-op in a single process or when no group was made.

    Why not a normal exit: with gloo, interpreter finalisation still destroys C++ process-group objects that
    Python holds elsewhere (FSDP2's device mesh, accelerate's state) and their worker threads; about one run
    in forty here, one of them was still joinable and the process aborted ("terminate called without an
    active exception", SIGABRT) *after* its work was done and reported — the launcher then fails the whole
    job. PyTorch knows the class of problem (pytorch/pytorch#179291: gloo threads touching Python objects
    during finalisation). Every file t1 writes is closed and fsynced before this point, so skipping the
    finaliser loses nothing. Outside a launcher (``TORCHELASTIC_RUN_ID`` unset, e.g. in-process tests) only
    the group is destroyed and the caller returns normally."""
    import sys

    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    dist.barrier()
    dist.destroy_process_group()
    if os.environ.get("TORCHELASTIC_RUN_ID") is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
