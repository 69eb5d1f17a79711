"""engine=vllm_server: scripted fake servers (request shape, grouping, errors) and one real `vllm serve` on
127.0.0.1 (vLLM's CPU build): sampled log-probs against transformers, a disk weight push, a dying server."""

from __future__ import annotations

import json
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from t1.model.load import ModelConfig, build_model, build_tokenizer, load, save
from t1.rollout import vllm_server
from t1.rollout.base import SamplingParams
from t1.rollout.config import VLLMServerConfig
from t1.rollout.logprobs import processed_logp
from t1.rollout.openai import ServerError, post_json
from t1.rollout.vllm_engine import StaleEngineError
from t1.rollout.vllm_server import VLLMServerEngine
from t1.rollout.weights import VERSION_FILE, full_parameters
from tests.vllm_serve import kill, serve

TOK = build_tokenizer(100)
EOS = TOK.eos_token_id


# ---------------------------------------------------------------------------------------- fake servers


class Fake:
    """A vLLM-like server on 127.0.0.1: ``routes`` maps "GET /path" / "POST /path" to a reply (a dict, a
    callable of the payload, an int status, or bytes); unknown routes are 404."""

    def __init__(self, routes):
        self.routes, self.requests = routes, []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _answer(self, method):
                path = self.path.split("?")[0]
                n = int(self.headers.get("Content-Length") or 0)
                payload = json.loads(self.rfile.read(n)) if n else None
                fake.requests.append((method, path, payload))
                reply = fake.routes.get(f"{method} {path}", 404)
                reply = reply(payload) if callable(reply) else reply
                if isinstance(reply, int):
                    self.send_response(reply)
                    self.end_headers()
                    self.wfile.write(b'{"detail": "Not Found"}')
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(reply if isinstance(reply, bytes) else json.dumps(reply).encode())

            def do_GET(self):
                self._answer("GET")

            def do_POST(self):
                self._answer("POST")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def completion(payload):
    """n choices, choice k = [seed + k + 3, prompt length + 3]; an even seed stops (with EOS returned when the
    seed divides by 4, as vLLM does; without it otherwise, as a stop string would), an odd one is cut."""
    seed, choices = payload["seed"], []
    for k in range(payload["n"]):
        ids = [(seed + k) % 100 + 3, len(payload["prompt"]) + 3] + ([EOS] if seed % 4 == 0 else [])
        lp = {"tokens": [f"token_id:{i}" for i in ids], "token_logprobs": [-0.5] * len(ids)}
        choices.append({"index": k, "text": "", "finish_reason": "length" if seed % 2 else "stop", "logprobs": lp})
    return {"choices": choices[::-1]}  # out of order: the engine sorts by index


def dev_routes(**over):
    routes = {"GET /weight_info": {"weight_version": "3"}, "GET /v1/models": {"data": [{"id": "tiny"}]},
              "GET /server_info": {"vllm_config": {"model_config": {"logprobs_mode": "processed_logprobs"}}},
              "POST /v1/completions": completion}
    routes.update(over)
    return routes


def cfg(*urls, **kw):
    return VLLMServerConfig(urls=tuple(urls), **{"timeout": 5.0, "sync_timeout": 5.0, "max_retries": 1, **kw})


def test_groups_go_as_one_request_each_round_robin_in_order():
    a, b = Fake(dev_routes()), Fake(dev_routes())
    try:
        engine = VLLMServerEngine(TOK, cfg(a.url, b.url))
        prompts = [[4, 5]] * 3 + [[6]] * 2 + [[4, 5]]
        out = engine.generate(prompts, [12, 13, 14, 21, 22, 30], SamplingParams(0.7, 0.9, 8), version=3)
    finally:
        a.close(), b.close()
    # requests (prompt, n, seed): ([4,5], 3, 12) -> a, ([6], 2, 21) -> b, ([4,5], 1, 30) -> a
    reqs = {s.url: [p for m, path, p in s.requests if path == "/v1/completions"] for s in (a, b)}
    # a server's requests run concurrently: they may arrive in either order
    assert sorted((r["prompt"], r["n"], r["seed"]) for r in reqs[a.url]) == [([4, 5], 1, 30), ([4, 5], 3, 12)]
    assert [(r["prompt"], r["n"], r["seed"]) for r in reqs[b.url]] == [([6], 2, 21)]
    r = next(r for r in reqs[a.url] if r["n"] == 3)
    assert r["model"] == "tiny" and r["temperature"] == 0.7 and r["top_p"] == 0.9 and r["max_tokens"] == 8
    assert r["logprobs"] == 0 and r["return_tokens_as_token_ids"] and r["top_k"] == 0
    assert [s.token_ids for s in out] == [[15, 5, EOS], [16, 5, EOS], [17, 5, EOS], [24, 4], [25, 4], [33, 5, EOS]]
    assert [s.finished for s in out] == [True] * 3 + [False] * 2 + [True]
    assert out[0].logprobs == [-0.5] * 3 and out[3].logprobs == [-0.5] * 2
    assert out[5].logprobs == [-0.5, -0.5, 0.0]  # the end-of-sequence token the server did not return


def test_stale_servers_bad_replies_and_missing_dev_mode_are_clear_errors():
    fakes = []
    try:
        fakes.append(no_dev := Fake({"GET /v1/models": {"data": [{"id": "tiny"}]}}))
        with pytest.raises(ServerError, match="VLLM_SERVER_DEV_MODE=1"):
            VLLMServerEngine(TOK, cfg(no_dev.url))
        raw = {"GET /server_info": {"vllm_config": {"model_config": {"logprobs_mode": "raw_logprobs"}}}}
        fakes.append(raw_lp := Fake(dev_routes(**raw)))
        with pytest.raises(ServerError, match="--logprobs-mode processed_logprobs"):
            VLLMServerEngine(TOK, cfg(raw_lp.url))
        fakes.append(good := Fake(dev_routes()))
        engine = VLLMServerEngine(TOK, cfg(good.url))
        with pytest.raises(StaleEngineError, match="version 2"):
            engine.generate([[1]], [0], SamplingParams(), version=2)
        text_tokens = {"index": 0, "finish_reason": "stop", "logprobs": {"tokens": ["a"], "token_logprobs": [0]}}
        for bad in ({"choices": "nope"}, {"choices": []}, b"not json", {"choices": [text_tokens]}):
            good.routes["POST /v1/completions"] = bad
            with pytest.raises(ServerError,
                               match=f"{good.url}.*(malformed completion reply|not JSON|not token_id:<integer>)"):
                engine.generate([[1]], [0], SamplingParams())
        good.routes["POST /v1/completions"] = 503
        t = time.time()
        with pytest.raises(ServerError, match="gave up after 2 attempts"):
            engine.generate([[1]] * 3, [0, 1, 2], SamplingParams())
        assert time.time() - t < 60  # a hang guard: two attempts with short back-offs take about a second
    finally:
        for f in fakes:
            f.close()


def weight_routes():
    return dev_routes(**{"POST /collective_rpc": {"results": [None]},
                         "POST /reset_prefix_cache": {"success": True},
                         "POST /update_weight_version": {"success": True},
                         "POST /init_weight_transfer_engine": {}, "POST /finish_weight_update": {}})


def test_disk_push_asks_every_server_to_reload_and_only_the_main_process_writes(tmp_path, monkeypatch):
    a, b = Fake(weight_routes()), Fake(weight_routes())
    try:
        engine = VLLMServerEngine(TOK, cfg(a.url, b.url), run_dir=str(tmp_path))
        engine.push_weights(iter([("w", torch.ones(2))]), 4)
        directory = (tmp_path / "engine_weights").resolve()
        for f in (a, b):
            assert [(path, p) for m, path, p in f.requests if m == "POST"] == [
                ("/collective_rpc", {"method": "reload_weights", "kwargs": {"weights_path": str(directory)}}),
                ("/reset_prefix_cache", {}), ("/update_weight_version", {"new_version": "4"})]
        assert json.loads((directory / VERSION_FILE).read_text()) == {"version": 4} and engine.weight_version == 4

        monkeypatch.setattr(vllm_server, "_rank", lambda default=0: 1)  # another training process
        seen = []
        engine.run_dir = str(tmp_path / "other")
        engine.push_weights((seen.append(n) or (n, torch.ones(1)) for n in ("x", "y")), 5)
        assert seen == ["x", "y"] and not (tmp_path / "other").exists()  # iterated (collectives), nothing sent
        assert sum(m == "POST" for m, _, _ in a.requests) == 3
        monkeypatch.undo()

        a.routes["POST /reset_prefix_cache"] = {"success": False}
        with pytest.raises(ServerError, match=f"{a.url}: could not reset its prefix cache"):
            engine.push_weights(iter([("w", torch.ones(2))]), 6)
    finally:
        a.close(), b.close()


def test_nccl_client_gives_each_server_its_ranks():
    """The fan-out weight-sync client (the GPU broadcast itself is untested here: no GPU)."""
    a, b = Fake(weight_routes()), Fake(weight_routes())
    try:
        engine = VLLMServerEngine(TOK, cfg(a.url, b.url, weight_sync="nccl"))
        client = vllm_server._Servers(engine, [8, 4])
        client.init_weight_transfer_engine({"master_address": "train0", "master_port": 29600, "rank_offset": 1,
                                            "world_size": 13, "packed": False})
        client.finish_weight_update("7")
        for f, offset in ((a, 1), (b, 9)):
            posts = [(path, p) for m, path, p in f.requests if m == "POST"]
            assert posts == [("/init_weight_transfer_engine", {"init_info": {
                "master_address": "train0", "master_port": 29600, "rank_offset": offset, "world_size": 13,
                "packed": False}}), ("/finish_weight_update", {"weight_version": "7"})]
        b.routes["POST /init_weight_transfer_engine"] = 500
        with pytest.raises(ServerError, match="--weight-transfer-config"):
            client.init_weight_transfer_engine({"rank_offset": 1})
    finally:
        a.close(), b.close()


def rl_against(completions, tiny_model_dir, tmp_path, capsys) -> tuple[int, str, str]:
    """`t1 rl` for one step against a fake server answering completions with ``completions`` (weights
    accepted and versioned): (exit code, stderr, the fake's URL)."""
    from t1.cli import main

    version = {"v": "0"}
    routes = weight_routes()
    routes["GET /weight_info"] = lambda _: {"weight_version": version["v"]}
    routes["POST /update_weight_version"] = lambda p: version.update(v=p["new_version"]) or {"success": True}
    routes["POST /v1/completions"] = completions
    fake = Fake(routes)
    try:
        code = main(["rl", f"model={tiny_model_dir}", f"out={tmp_path / 'run'}", "rollout.engine=vllm_server",
                     f"rollout.vllm_server.urls=[{fake.url}]", "rollout.vllm_server.max_retries=0",
                     "rollout.prompts_per_step=2", "rollout.samples_per_prompt=2", "rollout.max_new_tokens=4",
                     "data.num_prompts=8", "train.steps=1", "--quiet"])
    finally:
        fake.close()
    assert any(path == "/v1/completions" for _, path, _ in fake.requests)
    return code, capsys.readouterr().err, fake.url


def test_a_bad_reply_inside_t1_rl_is_one_line_naming_the_server(tiny_model_dir, tmp_path, capsys):
    """A server returning a token id beyond the vocabulary, mid-run: the ServerError (an EngineError) names the
    server and the id, and `t1 rl` prints it as one line and exits 3 — no traceback, no IndexError later."""
    code, err, url = rl_against(lambda p: {"choices": [
        {"index": k, "text": "", "finish_reason": "length",
         "logprobs": {"tokens": ["token_id:7", f"token_id:{len(TOK)}"], "token_logprobs": [-0.5, -0.5]}}
        for k in range(p["n"])]}, tiny_model_dir, tmp_path, capsys)
    assert code == 3, err
    assert f"t1 rl: error: sampling engine: {url}/v1/completions: token id {len(TOK)} is outside the " \
           f"vocabulary (0..{len(TOK) - 1})\n" in err
    assert "Traceback" not in err


def lp_reply(values):
    """A completion route whose every choice has two tokens with log-probs ``values``."""
    return lambda p: {"choices": [
        {"index": k, "text": "", "finish_reason": "length",
         "logprobs": {"tokens": ["token_id:7", "token_id:8"], "token_logprobs": list(values)}}
        for k in range(p["n"])]}


@pytest.mark.parametrize("bad, shown", [(float("inf"), "inf"), (50, "50"), (float("nan"), "nan"),
                                        (float("-inf"), "-inf"), (0.01, "0.01"), (None, "not a number: None"),
                                        (10 ** 30, "1000000000000000000000000000000")])
def test_log_probs_must_be_log_probabilities(bad, shown):
    """+Infinity and +50 are not log-probs (≤ 0); NaN is nothing: each is refused naming the server and the
    value, so none reaches the IS weights or metrics.jsonl (where Infinity is not JSON)."""
    fake = Fake(dev_routes(**{"POST /v1/completions": lp_reply([-0.5, bad])}))
    try:
        engine = VLLMServerEngine(TOK, cfg(fake.url))
        with pytest.raises(ServerError, match=f"^{fake.url}/v1/completions: .*{shown}"):
            engine.generate([[1]], [0], SamplingParams(max_new_tokens=8))
        fake.routes["POST /v1/completions"] = lp_reply([-0.0, 5e-5])  # rounding: kept
        assert engine.generate([[1]], [0], SamplingParams(max_new_tokens=8))[0].logprobs == [0.0, 5e-5]
    finally:
        fake.close()


def test_nested_oversized_and_duplicate_replies_are_one_clear_error():
    """A reply nested past the parser (or just under it), one far larger than n × max_tokens can need, and one
    whose choices repeat an index (so another is missing): a ServerError naming the server, nothing raw."""
    fake = Fake(dev_routes())
    try:
        engine = VLLMServerEngine(TOK, cfg(fake.url))
        one = {"index": 0, "text": "", "finish_reason": "length",
               "logprobs": {"tokens": ["token_id:7"], "token_logprobs": [-0.5]}}
        for bad, message in ((b'{"choices": ' + b"[" * 900 + b"]" * 900 + b"}", "(malformed|nested too deeply)"),
                             (b'{"choices": ' + b"[" * 20000 + b"]" * 20000 + b"}", "nested too deeply"),
                             ({"choices": [{"index": [[[[1]]]]}] * 2}, "malformed completion reply"),
                             ({"choices": [one, one]}, "malformed completion reply"),
                             (json.dumps({"choices": [one] * 2, "pad": "x" * (1 << 20)}).encode(),
                              r"over the limit of \d+ bytes")):
            fake.routes["POST /v1/completions"] = bad
            with pytest.raises(ServerError, match=f"^{fake.url}/v1/completions: .*{message}"):
                engine.generate([[1], [1]], [0, 1], SamplingParams(max_new_tokens=8))
    finally:
        fake.close()


def test_an_infinite_log_prob_inside_t1_rl_is_one_line_and_never_reaches_metrics(tiny_model_dir, tmp_path,
                                                                                 capsys):
    code, err, url = rl_against(lp_reply([-0.5, float("inf")]), tiny_model_dir, tmp_path, capsys)
    assert code == 3, err
    assert f"t1 rl: error: sampling engine: {url}/v1/completions: token log-prob inf (token 1) is not a " \
           "log-probability" in err and "Traceback" not in err
    metrics = tmp_path / "run" / "metrics.jsonl"
    assert not metrics.exists() or "Infinity" not in metrics.read_text()


# ------------------------------------------------------------------------------------ a real vllm serve


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(url, model dir, process): `vllm serve` of a tiny Llama (head size 32: vLLM's CPU attention has no
    kernels for 16)."""
    pytest.importorskip("vllm")
    tok = build_tokenizer(100)
    model = build_model(ModelConfig(hidden=64, layers=2, heads=2, kv_heads=1, ffn=128, max_positions=512), tok)
    root = tmp_path_factory.mktemp("vllm_server")
    yield from serve(save(model, tok, root / "model"), root)


def _max_diff(model, prompts, samples, params) -> float:
    """Largest |engine log-prob − transformers' processed log-prob| over every sampled token."""
    worst = 0.0
    for p, s in zip(prompts, samples):
        with torch.no_grad():
            logits = model(torch.tensor([p + s.token_ids])).logits[0].float()
        ref = processed_logp(logits[len(p) - 1: -1], torch.tensor(s.token_ids), params.temperature, params.top_p)
        diff = (ref - torch.tensor(s.logprobs)).abs().nan_to_num(posinf=1e9)
        worst = max(worst, float(diff.max()))
    return worst


@pytest.mark.slow
def test_real_server_log_probs_and_a_disk_push(served, tmp_path):
    url, model_dir, _ = served
    model, tok = load(model_dir, dtype="float32")
    model.eval()
    engine = VLLMServerEngine(tok, cfg(url, timeout=120, sync_timeout=120, sync_dir=str(tmp_path / "sync")))
    assert engine.server_versions() == ["default"]
    # what t1 reads of a real server (/version passed; /server_info): fp32 (kept exact), batch and KV sizes
    assert engine.push_dtype == torch.float32 and engine.capacity[0][0] >= 1 and engine.capacity[0][1] >= 512
    params = SamplingParams(0.8, 0.9, 24)
    prompts = [[5, 6, 7]] * 3 + [[9, 10]] * 2 + [[11]]
    seeds = [101, 102, 103, 201, 202, 301]
    before = engine.generate(prompts, seeds, params)
    assert len(before) == 6 and all(len(s.logprobs) == len(s.token_ids) for s in before)
    assert len({tuple(s.token_ids) for s in before[:3]}) == 3  # n=3 with one seed: three different samples
    assert [s.token_ids for s in engine.generate(prompts, seeds, params)] == [s.token_ids for s in before]
    for s in before:  # vLLM returns the end-of-sequence token itself when it stopped there
        assert not s.finished or (s.token_ids[-1] == tok.eos_token_id and EOS not in s.token_ids[:-1])
    assert _max_diff(model, prompts, before, params) < 1e-4

    old = [p.detach().clone() for p in model.parameters()]
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():  # one large optimizer-like step
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    engine.push_weights(full_parameters(model), 1)
    assert engine.weight_version == 1 and engine.server_versions() == ["1"]
    assert json.loads((tmp_path / "sync" / VERSION_FILE).read_text()) == {"version": 1}
    after = engine.generate(prompts, seeds, params, version=1)
    assert _max_diff(model, prompts, after, params) < 1e-4
    with torch.no_grad():
        for p, o in zip(model.parameters(), old):
            p.copy_(o)
    assert _max_diff(model, prompts, after, params) > 1e-2  # the old weights would not have sampled these
    with pytest.raises(StaleEngineError, match="version 0"):
        engine.generate(prompts, seeds, params, version=0)


def _server_rl(served, out, *extra) -> list[dict]:
    """`t1 rl` through the module's real server on its tiny model; the metrics rows."""
    from t1 import config as C
    from t1.rl.config import RLConfig
    from t1.stages.rl import train_rl

    url, model_dir, _ = served
    cfg = C.load(RLConfig, None, [
        f"model={model_dir}", f"out={out}", "rollout.engine=vllm_server", f"rollout.vllm_server.urls=[{url}]",
        "train.precision=fp32", "rollout.prompts_per_step=4", "rollout.samples_per_prompt=4",
        "rollout.max_new_tokens=12", "rollout.temperature=1.2", "rollout.top_p=0.95", "data.num_prompts=32",
        "train.optim.lr=0.02", "train.optim.warmup_steps=0", *extra])
    train_rl(cfg, progress=False)
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_rl_through_a_server_samples_from_every_steps_policy(served, tmp_path):
    """`t1 rl rollout.engine=vllm_server`: the server starts from the run's model, gets the weights after every
    step through the disk sync, and the sampler-trainer log-prob gap stays at fp32 rounding."""
    out = tmp_path / "run"
    rows = _server_rl(served, out, "train.steps=3")
    assert [r["weight_version"] for r in rows] == [1, 2, 3]
    # fp32 rounding, except at the top-p nucleus edge (tests/rollout/test_vllm_engine.py: 4e-3 here at step 3)
    assert all(r["sampling/logp_diff_max"] < 5e-3 for r in rows), [r["sampling/logp_diff_max"] for r in rows]
    # pushed at the start of each step (t1.stages.rl: the engine sleeps through the checkpoints): step 3 sampled
    # version 2; the weights of its update (3) go to final/, not to the servers
    assert json.loads((out / "engine_weights" / VERSION_FILE).read_text()) == {"version": 2}


@pytest.mark.slow
def test_asynchronous_rl_through_a_server_samples_one_version_behind(served, tmp_path):
    """`train.max_staleness=1` with a server: step t's batch is sampled from version t − 1 while the update of
    step t − 1 runs; the server is pushed only once the batch it was sampling is done."""
    out = tmp_path / "run"
    rows = _server_rl(served, out, "train.steps=4", "train.max_staleness=1")
    assert [r["sampling/version"] for r in rows] == [0, 0, 1, 2]
    assert [r["sampling/staleness"] for r in rows] == [0, 1, 1, 1]
    assert all(0 < r["sampling/is_weight_mean"] for r in rows)
    # a stale batch's log-probs are the older version's: at step 2 (version 0 against the trainer's 1) they
    # differ beyond fp32 rounding, at step 1 (on-policy) they agree to it
    assert rows[0]["sampling/logp_diff_max"] < 5e-3 < rows[1]["sampling/logp_diff_max"]
    # the last batch (step 4) came from version 2; versions 3 and 4 were never needed by the server
    assert json.loads((out / "engine_weights" / VERSION_FILE).read_text()) == {"version": 2}


@pytest.mark.slow
def test_real_server_dying_mid_step_is_a_clear_error(served, tmp_path, monkeypatch):
    """Runs last: it kills the module's server — after the step's first request has gone out, so the others
    of the same ``generate`` meet a dead server (deterministic, unlike a kill on a timer)."""
    import t1.rollout.vllm_server as vs

    url, _, proc = served
    engine = VLLMServerEngine(TOK, cfg(url, timeout=20, sync_timeout=20, sync_dir=str(tmp_path / "sync"),
                                       concurrency=1))  # one request at a time: the later ones find it dead
    result, sent = {}, []

    def post_then_crash(*args, **kwargs):
        reply = post_json(*args, **kwargs)
        if not sent:
            sent.append(1)
            kill(proc, (signal.SIGKILL,))  # a crash, not a shutdown
        return reply

    monkeypatch.setattr(vs, "post_json", post_then_crash)

    def sample():
        try:
            result["out"] = engine.generate([[5, 6, 7]] * 8 + [[8]] * 8 + [[9]] * 8, list(range(24)),
                                            SamplingParams(1.0, 1.0, 400))
        except Exception as e:  # noqa: BLE001 - handed to the test thread
            result["error"] = e

    worker = threading.Thread(target=sample)
    t = time.time()
    worker.start()
    worker.join(60)
    assert not worker.is_alive(), "generate hung after the server died"
    assert isinstance(result.get("error"), ServerError) and url in str(result["error"]), result
    assert time.time() - t < 60
    with pytest.raises(ServerError, match=url):
        engine.generate([[5]], [0], SamplingParams(), version=1)
    model = build_model(ModelConfig(hidden=64, layers=2, heads=2, kv_heads=1, ffn=128, max_positions=512), TOK)
    with pytest.raises(ServerError, match=url):
        engine.push_weights(full_parameters(model), 2)
