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


# Two CPU processes over gloo: the default process group's timeout as each process sees it after
# make_accelerator (the backend's options hold what init_process_group received).
_GROUP = """
import sys, torch, torch.distributed as dist
from t1.runtime.device import make_accelerator
acc = make_accelerator("fp32", *map(float, sys.argv[2:]))
backend = dist.distributed_c10d._get_default_group()._get_backend(torch.device("cpu"))
with open(f"{sys.argv[1]}/rank{acc.process_index}", "w") as f:
    f.write(str(int(backend.options._timeout.total_seconds())))
dist.barrier()
dist.destroy_process_group()
"""


@pytest.mark.parametrize("args, seconds", [(["1234"], 1234), ([], 7200)])
def test_the_collective_timeout_reaches_the_process_group(tmp_path, args, seconds):
    """`train.nccl_timeout` (default 2 h) is the timeout torch.distributed's group is created with: accelerate
    passes InitProcessGroupKwargs to init_process_group (without it, NCCL aborts a collective after 10 min)."""
    import os
    import socket

    script = tmp_path / "group.py"
    script.write_text(_GROUP)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           str(script), str(tmp_path), *args]
    out = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert [(tmp_path / f"rank{r}").read_text() for r in (0, 1)] == [str(seconds)] * 2


def test_gpus_per_node_follows_the_launcher_not_the_visible_devices(monkeypatch):
    """SLURM's --gpus-per-task=1 shows each process one GPU of an 8-GPU node: the estimate must see 8 (the
    launcher's LOCAL_WORLD_SIZE), else a tensor-parallel engine of 2 is refused as not fitting a node."""
    import torch

    from t1.runtime.device import gpus_per_node

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert gpus_per_node() == 8
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert gpus_per_node() == 1
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "")  # set but empty: the devices decide
    assert gpus_per_node() == 1
