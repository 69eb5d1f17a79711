"""This machine, as the caches keyed to it see it: where t1 keeps what it builds or measures once per machine
(``~/.cache/t1``, ``T1_CACHE_DIR``), and what identifies the CPU (the C kernels' builds, the bf16 verdict)."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cache_dir() -> Path:
    if os.environ.get("T1_CACHE_DIR"):
        return Path(os.environ["T1_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "t1"


def cpu_id() -> str:
    """What -march=native depends on: the CPU's model and feature flags where Linux tells them."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return "".join(sorted({ln for ln in lines if ln.startswith(("model name", "flags", "Features"))}))
    except OSError:
        return platform.processor() + platform.machine()
