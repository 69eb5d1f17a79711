import subprocess
import sys

import pytest

# A fresh process: allocate and free 24 MiB (below the 32 MiB mmap threshold, so it comes from the heap top).
_PROBE = """
import torch
from t1.runtime import keep_freed_memory
assert keep_freed_memory()
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096
x = torch.ones(24 << 20, dtype=torch.uint8)
before = rss()
del x
print((before - rss()) >> 20)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning is Linux-only")
def test_keep_freed_memory_keeps_a_freed_heap_block():
    """Freed memory stays with the process (no page faults to get it back next step). A regression test: the
    trim threshold once reached glibc as 0 ("trim always") through ctypes' silent int truncation."""
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True)
    assert int(out.stdout.strip()) < 4, f"{out.stdout.strip()} MiB went back to the kernel on free"
