"""The engine table (t1.rollout.config): auto resolution, refusals, one config for every stage."""

import pytest

from t1 import config as C
from t1.config import ConfigError
from t1.rl.config import RLConfig
from t1.rollout import config as ec
from t1.stages.filter import FilterConfig


def test_auto_is_vllm_only_on_a_gpu_with_vllm(monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert ec.resolve("auto") == "fast"  # this machine: no GPU
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    monkeypatch.setattr(ec, "vllm_installed", lambda: True)
    assert ec.resolve("auto") == "vllm"
    monkeypatch.setattr(ec, "vllm_installed", lambda: False)
    assert ec.resolve("auto") == "fast"
    with pytest.raises(ConfigError, match="vllm is not installed"):
        ec.resolve("vllm")
    with pytest.raises(ConfigError, match="unknown engine 'sglang'"):
        ec.resolve("sglang")


def test_rl_refuses_an_engine_that_never_gets_the_weights():
    with pytest.raises(ConfigError, match="rollout.engine: openai servers never receive the policy's weights"):
        C.load(RLConfig, None, ["model=m", "rollout.engine=openai"])


def test_rl_and_filter_share_the_engine_sections():
    rl = C.load(RLConfig, None, ["model=m", "rollout.engine=vllm_server", "rollout.vllm_server.urls=[http://a:1]",
                                 "rollout.vllm.tensor_parallel_size=4", "rollout.is_cap=2"])
    assert rl.rollout.vllm_server.urls == ("http://a:1",) and rl.rollout.vllm.tensor_parallel_size == 4
    flt = C.load(FilterConfig, None, ["model=m", "rollout.engine=vllm", "rollout.vllm.gpu_memory_utilization=0.9"])
    assert isinstance(flt.rollout, ec.EngineConfig) and flt.rollout.vllm.gpu_memory_utilization == 0.9
    with pytest.raises(ConfigError, match=r"rollout.vllm.gpu_memory_utilization: must be in \(0, 1\]"):
        C.load(FilterConfig, None, ["model=m", "rollout.vllm.gpu_memory_utilization=1.5"])
    with pytest.raises(ConfigError, match="rollout.is_cap: must be 0 .off. or ≥ 1"):
        C.load(RLConfig, None, ["model=m", "rollout.is_cap=0.5"])


def test_bad_client_settings_name_their_field():
    for field, value, message in (("timeout", 0, "must be a finite number of seconds > 0"),
                                  ("timeout", ".inf", "must be a finite number"),
                                  ("max_retries", -1, "must be ≥ 0"), ("concurrency", 0, "must be ≥ 1"),
                                  ("base_url", "localhost:8000", "must be an http:// or https:// URL")):
        with pytest.raises(ConfigError, match=f"^rollout.openai.{field}: {message}"):
            C.load(FilterConfig, None, ["model=m", f"rollout.openai.{field}={value}"])
    for field, value, message in (("timeout", -1, "must be a finite number"), ("max_retries", -1, "must be ≥ 0"),
                                  ("sync_timeout", 0, "must be a finite number"),
                                  ("concurrency", 0, "must be ≥ 1"),
                                  ("urls", "[ftp://a]", "each must be an http:// or https:// URL"),
                                  ("nccl_port", 0, "must be a port number"),
                                  ("decode_tokens_per_s", 0, "must be a finite number > 0"),
                                  ("decode_tokens_per_s", ".nan", "must be a finite number"),
                                  ("dtype", "float64", "must be one of 'auto' | 'bfloat16'")):
        with pytest.raises(ConfigError, match=f"^rollout.vllm_server.{field}: {message}"):
            C.load(FilterConfig, None, ["model=m", f"rollout.vllm_server.{field}={value}"])
