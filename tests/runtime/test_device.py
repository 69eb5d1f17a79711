import subprocess
import sys

import pytest

# A fresh process: allocate and free a block, report how many MiB went back to the kernel. 24 MiB is below
# glibc's largest mmap threshold (it comes from the heap top: trimming would return it), 96 MiB above (by
# default glibc mmaps it and unmaps it on free).
_PROBE = """
import sys, torch
from t1.runtime.device import keep_freed_memory
assert keep_freed_memory()
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096
x = torch.ones(int(sys.argv[1]) << 20, dtype=torch.uint8)
before = rss()
del x
print((before - rss()) >> 20)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning is Linux-only")
@pytest.mark.parametrize("mib", [24, 96])
def test_keep_freed_memory_keeps_a_freed_block(mib):
    """Freed memory stays with the process (no page faults to get it back next step). A regression test: the
    trim threshold once reached glibc as 0 ("trim always") through ctypes' silent int truncation; and blocks
    above 32 MiB were mmapped and unmapped on every free."""
    out = subprocess.run([sys.executable, "-c", _PROBE, str(mib)], capture_output=True, text=True, check=True)
    assert int(out.stdout.strip()) < mib // 2, f"{out.stdout.strip()} of {mib} MiB went back to the kernel on free"
