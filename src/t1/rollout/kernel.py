"""The CPU sampler's decode-step attention kernel (``decode_attention.c``), built at first use and cached.

t1 ships it as C source rather than a compiled extension: it is compiled on the machine that runs it, with
``-march=native``, by the system C compiler (``$CC``, else ``cc``/``gcc``/``clang``), in well under a second,
into ``$T1_CACHE_DIR`` (default ``$XDG_CACHE_HOME/t1`` or ``~/.cache/t1``) under a name that hashes the
source, the flags, the compiler and the CPU — so a home directory shared between different machines gets one
build per CPU. Builds are atomic (compiled to a temporary file, then renamed), so concurrent ranks are safe.
OpenMP is used where the compiler has it (it then shares PyTorch's thread pool when PyTorch uses GNU
OpenMP, as its Linux wheels do), else the loops run on one thread.

Everything works without it: where no compiler is found, a build fails, or ``T1_KERNELS=0`` is set,
:func:`load` returns None (logging why, once) and the sampler uses batched matmuls over an fp32 cache.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("decode_attention.c")
# -ffast-math is avoided on purpose: linked into a shared library it can switch the whole process to
# flush-to-zero. These three are what vectorising the float reductions needs.
_BASE = ["-O3", "-shared", "-fPIC", "-fassociative-math", "-fno-signed-zeros", "-fno-trapping-math"]
_ATTEMPTS = (["-march=native", "-fopenmp"], ["-march=native"], [])  # best first; later ones for odd compilers


def cache_dir() -> Path:
    if os.environ.get("T1_CACHE_DIR"):
        return Path(os.environ["T1_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "t1"


def _compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")


def _cpu_id() -> str:
    """What -march=native depends on: the CPU's model and feature flags where Linux tells them."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return "".join(sorted({ln for ln in lines if ln.startswith(("model name", "flags", "Features"))}))
    except OSError:
        return platform.processor() + platform.machine()


def _build(cc: str, flags: list[str], out: Path) -> str | None:
    """Compile to ``out`` atomically; returns None on success, else the compiler's complaint."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, suffix=".so.tmp")
    os.close(fd)
    try:
        proc = subprocess.run([cc, *_BASE, *flags, str(SOURCE), "-o", tmp], capture_output=True, text=True,
                              timeout=120)
        if proc.returncode != 0:
            return (proc.stderr or proc.stdout).strip()[-500:] or f"exit status {proc.returncode}"
        os.replace(tmp, out)
        return None
    except (OSError, subprocess.SubprocessError) as err:
        return str(err)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    p, i, n = ctypes.c_void_p, ctypes.c_int, ctypes.c_long
    for name in ("t1_scores_f32", "t1_scores_bf16", "t1_pv_f32", "t1_pv_bf16"):
        fn = getattr(lib, name)
        fn.argtypes = [p, p, p, i, i, i, i, i, n, n, n, i]
        fn.restype = None
    return lib


@functools.cache
def load() -> ctypes.CDLL | None:
    """The compiled kernel, building it on first use; None where it cannot be had (reason logged once)."""
    if os.environ.get("T1_KERNELS", "1").strip().lower() in ("0", "false", "no", "off"):
        log.info("T1_KERNELS=0: the sampler uses batched matmuls for attention")
        return None
    cc = _compiler()
    if cc is None:
        log.info("no C compiler found ($CC, cc, gcc, clang): the sampler uses batched matmuls for attention")
        return None
    try:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as err:
        log.info("C compiler %s unusable (%s): the sampler uses batched matmuls for attention", cc, err)
        return None
    errors = []
    build_id = [SOURCE.read_text(), *_BASE, cc, version, _cpu_id(), platform.machine()]
    for flags in _ATTEMPTS:
        key = hashlib.sha256("\0".join([*build_id, *flags]).encode()).hexdigest()[:16]
        path = cache_dir() / "kernels" / f"decode_attention-{key}.so"
        if not path.exists():
            error = _build(cc, flags, path)
            if error is not None:
                errors.append(f"{' '.join(flags) or 'plain'}: {error}")
                continue
        try:
            return _bind(ctypes.CDLL(str(path)))
        except OSError as err:
            errors.append(f"{path}: {err}")
    log.warning("could not build the decode-attention kernel (%s); the sampler uses batched matmuls for "
                "attention", " | ".join(errors))
    return None


def attention(lib: ctypes.CDLL, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              bias: torch.Tensor | None) -> torch.Tensor:
    """One decoding step's attention through the kernel. q [B, Hq, D] fp32 (scaled, rotated); k and v
    [B, Hkv, T, D] slices of the caches (fp32 or bf16, same dtype and strides, last dimension contiguous);
    bias [B, T] additive (0 / -inf) or None -> [B, Hq * D] fp32. CPU tensors only."""
    B, Hq, D = q.shape
    Hkv, T = k.shape[1], k.shape[2]
    if (k.shape != v.shape or k.stride() != v.stride() or k.dtype != v.dtype or k.stride(-1) != 1
            or k.shape[0] != B or k.shape[3] != D or Hq % Hkv or k.device.type != "cpu"
            or k.dtype not in (torch.float32, torch.bfloat16)):
        raise ValueError(f"decode attention: bad cache slices k {tuple(k.shape)} {k.stride()} {k.dtype}, "
                         f"v {tuple(v.shape)} {v.stride()} {v.dtype}, for q {tuple(q.shape)}")
    q = q.to(torch.float32).contiguous()
    pairs = B * Hq
    scores = torch.empty(pairs, T)
    args = (pairs, Hq, Hq // Hkv, D, T, k.stride(0), k.stride(1), k.stride(2), torch.get_num_threads())
    bf16 = k.dtype == torch.bfloat16
    (lib.t1_scores_bf16 if bf16 else lib.t1_scores_f32)(q.data_ptr(), k.data_ptr(), scores.data_ptr(), *args)
    if bias is not None:
        scores.view(B, Hq, T).add_(bias[:, None, :T])
    probs = torch.softmax(scores, dim=-1)
    out = torch.empty(B, Hq * D)
    (lib.t1_pv_bf16 if bf16 else lib.t1_pv_f32)(probs.data_ptr(), v.data_ptr(), out.data_ptr(), *args)
    return out
