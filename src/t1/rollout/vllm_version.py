"""The vLLM release series t1's vLLM engines are written against, checked where vLLM is met.

t1 calls APIs that move between vLLM releases: ``Worker.reload_weights(weights_iterator=…)`` (0.32: through
``GPUModelRunner.reload_weights``; older releases take no arguments), ``vllm.distributed.weight_transfer``
and the ``/weight_info``, ``/update_weight_version`` routes (recent), some already marked for removal "in
v0.33.0". Another series fails mid-run (a ``TypeError`` at the first push) or silently differs, so it is
refused at start: the local vLLM (``vllm.__version__``) when an engine or the NCCL push imports it, and each
server's (``GET /version``, a plain route of vLLM's API server: ``entrypoints/serve/instrumentator/basic.py``
returns ``{"version": VLLM_VERSION}``) when the ``vllm_server`` engine starts. The extra ``t1[vllm]`` pins
the same series (``pyproject.toml``); vLLM's CPU build used by the tests reports the same version string.
"""

from __future__ import annotations

import re

from t1.config import ConfigError

SERIES = (0, 32)
SUPPORTED = "0.32.x"
INSTALL = "pip install 'vllm==0.32.*'"


def supported(version: object) -> bool:
    """Whether ``version`` (``0.32.0``, ``0.32.1rc1``, ``0.32.0+cu129``) is of the supported series."""
    m = re.match(r"(\d+)\.(\d+)(?![\d])", version) if isinstance(version, str) else None
    return bool(m) and (int(m[1]), int(m[2])) == SERIES


def check_installed(version: str | None = None) -> None:
    """Refuse a local vLLM of another series, in one line (``version``: ``vllm.__version__`` when None)."""
    if version is None:
        import vllm

        version = getattr(vllm, "__version__", "unknown")
    if not supported(version):
        raise ConfigError(f"rollout.engine: vLLM {version} is installed; t1 supports {SUPPORTED} — {INSTALL}")


def check_server(url: str, version: object) -> None:
    """Refuse a server running another vLLM series (``version``: its ``GET /version``), in one line."""
    if not supported(version):
        from t1.rollout.openai import ServerError

        raise ServerError(f"{url}: runs vLLM {str(version)[:100]}; t1 supports {SUPPORTED} — {INSTALL} on that "
                          "server")
