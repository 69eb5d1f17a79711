"""Building t1's C kernels (every ``*.c`` in this folder, into one shared library) at first use, and caching
them.

t1 ships them as C source rather than a compiled extension: they are compiled on the machine that runs them,
with ``-march=native``, by the system C compiler (``$CC``, else ``cc``/``gcc``/``clang``), in well under a second,
into ``$T1_CACHE_DIR`` (default ``$XDG_CACHE_HOME/t1`` or ``~/.cache/t1``) under a name that hashes the
source, the flags, the compiler and the CPU — so a home directory shared between different machines gets one
build per CPU. Builds are atomic (compiled to a temporary file, then renamed), so concurrent ranks are safe.
OpenMP is used where the compiler has it (it then shares PyTorch's thread pool when PyTorch uses GNU
OpenMP, as its Linux wheels do), else the loops run on one thread.

Everything works without them: where no compiler is found, a build fails, or ``T1_KERNELS=0`` is set,
:func:`load` returns None (logging why, once) and :mod:`t1.model.kernels.ops` uses plain PyTorch ops instead.
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

from t1.runtime.machine import cache_dir, cpu_id

log = logging.getLogger(__name__)

SOURCES = sorted(Path(__file__).parent.glob("*.c"))
HEADERS = sorted(Path(__file__).parent.glob("*.h"))  # part of the build's hash, not of its command line
_FALLBACK = "t1 uses plain PyTorch ops instead (slower attention, SwiGLU, RoPE and RMSNorm)"
# -ffast-math is avoided on purpose: linked into a shared library it can switch the whole process to
# flush-to-zero. These three are what vectorising the float reductions needs.
_BASE = ["-O3", "-shared", "-fPIC", "-fassociative-math", "-fno-signed-zeros", "-fno-trapping-math"]
_ATTEMPTS = (["-march=native", "-fopenmp"], ["-march=native"], [])  # best first; later ones for odd compilers


def _compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")


def _build(cc: str, flags: list[str], out: Path) -> str | None:
    """Compile to ``out`` atomically; returns None on success, else the compiler's complaint."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, suffix=".so.tmp")
    os.close(fd)
    try:
        proc = subprocess.run([cc, *_BASE, *flags, *map(str, SOURCES), "-o", tmp], capture_output=True,
                              text=True, check=False, timeout=120)
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
    signatures = {name: [p, p, p, i, i, i, i, i, n, n, n, i]
                  for name in ("t1_scores_f32", "t1_pv_f32")}
    signatures.update(t1_swiglu_fwd=[p, p, n, n, n, i], t1_swiglu_bwd=[p, p, p, n, n, n, i],
                      t1_rope=[p, p, p, n, i, i, n, n, i, i], t1_rms_norm_bwd=[p, p, p, n, n, ctypes.c_float, i],
                      t1_rms_norm_fwd_f32=[p, n, p, n, n, ctypes.c_float, i],
                      t1_rms_norm_fwd_bf16=[p, n, p, n, n, ctypes.c_float, i],
                      t1_decode_block_bf16=[p, p, p, p, p, n, p, p, i, i, i, i, i, n, n, n, i],
                      t1_attn_fwd=[p, n, p, n, p, p, p, i, i, i, i, p, p, p, n, i],
                      t1_attn_bwd=[p, n, p, n, p, p, p, p, p, i, i, i, i, p, p, p, p, p, n, i])
    for name, args in signatures.items():
        fn = getattr(lib, name)
        fn.argtypes = args
        fn.restype = None
    lib.t1_attn_scratch.argtypes, lib.t1_attn_scratch.restype = [i, i, i], n
    return lib


@functools.cache
def load() -> ctypes.CDLL | None:
    """The compiled kernels, building them on first use; None where they cannot be had (reason logged once)."""
    if os.environ.get("T1_KERNELS", "1").strip().lower() in ("0", "false", "no", "off"):
        log.info("T1_KERNELS=0: %s", _FALLBACK)
        return None
    cc = _compiler()
    if cc is None:
        log.info("no C compiler found ($CC, cc, gcc, clang): %s", _FALLBACK)
        return None
    try:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30, check=False).stdout
    except (OSError, subprocess.SubprocessError) as err:
        log.info("C compiler %s unusable (%s): %s", cc, err, _FALLBACK)
        return None
    errors = []
    sources = [f"{src.name}\n{src.read_text()}" for src in [*SOURCES, *HEADERS]]
    build_id = [*sources, *_BASE, cc, version, cpu_id(), platform.machine()]
    for flags in _ATTEMPTS:
        key = hashlib.sha256("\0".join([*build_id, *flags]).encode()).hexdigest()[:16]
        path = cache_dir() / "kernels" / f"t1_kernels-{key}.so"
        if not path.exists():
            error = _build(cc, flags, path)
            if error is not None:
                errors.append(f"{' '.join(flags) or 'plain'}: {error}")
                continue
        try:
            return _bind(ctypes.CDLL(str(path)))
        except OSError as err:
            errors.append(f"{path}: {err}")
    log.warning("could not build t1's C kernels (%s); %s", " | ".join(errors), _FALLBACK)
    return None

