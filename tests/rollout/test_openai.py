import json
import time
import tracemalloc

import pytest

from t1.model.load import build_tokenizer
from t1.rollout import openai
from t1.rollout.base import SamplingParams
from t1.rollout.config import OpenAIConfig
from t1.rollout.openai import OpenAIEngine, ServerError, post_json
from tests.fake_server import FakeServer

TOK = build_tokenizer(100)


def completion(payload):
    """Echo: 'try <seed mod 10> .' ending by itself; token ids returned vLLM-style."""
    text = f"try {payload['seed'] % 10} ."
    ids = TOK(text, add_special_tokens=False)["input_ids"]
    logprobs = {"tokens": [f"token_id:{i}" for i in ids], "token_logprobs": [-0.5] * len(ids)}
    return {"choices": [{"text": text, "finish_reason": "stop", "logprobs": logprobs}]}


def engine(url, **kw):
    cfg = OpenAIConfig(base_url=url, timeout=kw.get("timeout", 5.0), max_retries=3, concurrency=4)
    return OpenAIEngine(TOK, cfg)


def test_samples_through_a_real_http_server_with_retries():
    with FakeServer(completion, script=[("status", 429), ("status", 503)]) as server:
        out = engine(server.url).generate([[3, 4], [5]], [12, 7], SamplingParams(1.2, 0.95, 32))
    assert [s.text for s in out] == ["try 2 .", "try 7 ."]
    assert all(s.finished and s.token_ids[-1] == TOK.eos_token_id for s in out)
    assert out[0].logprobs[:3] == [-0.5, -0.5, -0.5]
    assert len(server.requests) == 4  # two refused, then both served
    req = server.requests[-1]
    assert req["temperature"] == 1.2 and req["top_p"] == 0.95 and req["max_tokens"] == 32
    assert req["prompt"] in ([3, 4], [5])


def test_timeout_is_retried_and_malformed_reply_is_a_clear_error():
    with FakeServer(completion, script=[("sleep", 1.5)]) as server:
        out = engine(server.url, timeout=0.5).generate([[1]], [3], SamplingParams())
        assert out[0].text == "try 3 ."
    with FakeServer(completion, script=[("garbage", b'{"choices": "nope"}')]) as server:
        with pytest.raises(ServerError, match="malformed completion reply"):
            engine(server.url).generate([[1]], [3], SamplingParams())
    with FakeServer(completion, script=[("status", 400)]) as server:
        with pytest.raises(ServerError, match="HTTP 400"):
            engine(server.url).generate([[1]], [3], SamplingParams())


def test_a_server_dripping_bytes_cannot_stretch_the_timeout():
    """One byte a second, status line and headers included: every socket read succeeds within a per-read
    time-out, so only a deadline for the whole attempt ends it."""
    cfg = OpenAIConfig(base_url="", timeout=2.0, max_retries=0)
    with FakeServer(completion, script=[("drip", 1.0)]) as server:
        t = time.monotonic()
        with pytest.raises(ServerError, match="gave up after 1 attempts .TimeoutError"):
            OpenAIEngine(TOK, cfg, base_url=server.url).generate([[1]], [3], SamplingParams())
        assert time.monotonic() - t < 3 * cfg.timeout


@pytest.mark.parametrize("declared", [True, False])
def test_a_reply_over_the_cap_is_refused_quickly_in_bounded_memory(declared):
    size = openai.MAX_REPLY_BYTES + (8 << 20)
    with FakeServer(completion, script=[("huge", size, declared)]) as server:
        tracemalloc.start()
        t = time.monotonic()
        try:
            with pytest.raises(ServerError, match=f"{server.url}/completions: reply.* refused: over the limit of "
                                                  f"{openai.MAX_REPLY_BYTES} bytes .*MAX_REPLY_BYTES"):
                post_json(server.url + "/completions", {}, api_key=None, timeout=30, max_retries=3)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert time.monotonic() - t < 20
    assert len(server.requests) == 1  # refused, not retried
    assert peak < (1 << 20) if declared else peak < 1.5 * openai.MAX_REPLY_BYTES


def test_redirects_are_not_followed_and_the_key_never_shows(monkeypatch):
    key = "sk-secret-1234567890"
    monkeypatch.setenv("T1_TEST_KEY", key)
    cfg = OpenAIConfig(base_url="", timeout=5.0, max_retries=0, api_key_env="T1_TEST_KEY")
    with FakeServer(completion) as other:
        script = [("redirect", other.url + "/completions"), ("echo", 401), ("echo", 503),
                  ("garbage", b'{"choices": "' + key.encode() + b'"}')]
        with FakeServer(completion, script=script) as server:
            engine = OpenAIEngine(TOK, cfg, base_url=server.url)
            errors = []
            for expected in ("redirected .HTTP 307. to http://127.0.0.1.*set the URL to the final address",
                             r"HTTP 401: .*\*\*\*", r"gave up after 1 attempts .HTTP 503: .*\*\*\*",
                             r"malformed completion reply: .*\*\*\*"):
                with pytest.raises(ServerError, match=expected) as err:
                    engine.generate([[1]], [3], SamplingParams())
                errors.append(str(err.value))
            assert engine.generate([[1]], [3], SamplingParams())[0].text == "try 3 ."
        assert other.requests == []  # the redirect's target never heard from us, let alone got the key
    assert all(h["Authorization"] == f"Bearer {key}" for h in server.headers)  # the key goes to base_url only
    assert not any(key in e for e in errors), errors


def test_replies_are_cleaned_of_lone_surrogates():
    body = b'{"choices": [{"text": "a\\ud800b", "finish_reason": "length"}], "x\\udfff": ["\\ud83d"]}'
    with FakeServer(completion, script=[("garbage", body)]) as server:
        reply = post_json(server.url, {}, api_key=None, timeout=5, max_retries=0)
    assert reply == {"choices": [{"text": "a\ufffdb", "finish_reason": "length"}], "x\ufffd": ["\ufffd"]}
    json.dumps(reply, ensure_ascii=False).encode()  # writable as UTF-8
    for bad in (b"[1, 2]", b"[" * 100_000, b'"\xff"'):
        with FakeServer(completion, script=[("garbage", bad)]) as server:
            with pytest.raises(openai.MalformedReply, match=f"{server.url}: reply is not"):
                post_json(server.url, {}, api_key=None, timeout=5, max_retries=0)


@pytest.mark.parametrize("tokens, message", [
    (["token_id:5", "token_id:-1"], "token id -1 is outside the vocabulary .0..127."),
    (["token_id:5", f"token_id:{len(TOK)}"], f"token id {len(TOK)} is outside the vocabulary"),
    (["token_id:5", "token_id:1.5"], "token 'token_id:1.5' is not token_id:<integer>"),
    (["token_id:5", "token_id:"], "token 'token_id:' is not token_id:<integer>"),
    (["token_id:5"] * 9, "returned 9 tokens, more than max_tokens=8"),
])
def test_bad_token_ids_from_a_server_are_refused(tokens, message):
    def reply(payload):
        return {"choices": [{"text": "x", "finish_reason": "length",
                             "logprobs": {"tokens": tokens, "token_logprobs": [-0.5] * len(tokens)}}]}

    with FakeServer(reply) as server:
        with pytest.raises(ServerError, match=f"{server.url}/completions: {message}"):
            engine(server.url).generate([[1]], [3], SamplingParams(max_new_tokens=8))
    assert OpenAIEngine(TOK, OpenAIConfig(), vocab_size=200).vocab_size == 200  # the model's rows, when known



# ------------------------------------------------------------------------------- replies bounded by the request


def test_a_reply_is_bounded_by_what_was_asked_not_by_a_32_mb_floor():
    """A 1 MB text answering a 16-token request: refused while reading (the cap is ~68 KB for 16 tokens)."""
    assert openai.reply_limit(16) < 100_000 and openai.reply_limit(32768) > 8 << 20
    with FakeServer(completion, script=[("text", 1 << 20, False)]) as server:
        t = time.monotonic()
        with pytest.raises(ServerError, match=f"reply of .* bytes refused: over the limit of "
                                              f"{openai.reply_limit(16)} bytes"):
            engine(server.url).generate([[1]], [3], SamplingParams(max_new_tokens=16))
        assert time.monotonic() - t < 5


@pytest.mark.parametrize("words, ids", [(100, False), (100, True), (48, False)])
def test_a_text_far_longer_than_max_tokens_is_refused(words, ids):
    """The text path (no token ids) re-tokenizes the text: 100 tokens for max_tokens=16 is a server ignoring
    max_tokens (refused, naming the server and the sizes); 48 = 2 × 16 + 16 is tokenizer slack (kept). With
    token ids the text is still what is graded: a text far longer than them is refused too."""
    def reply(payload):
        choice = {"text": "1 " * words, "finish_reason": "length"}
        if ids:
            choice["logprobs"] = {"tokens": ["token_id:28"] * 3, "token_logprobs": [-0.5] * 3}
        return {"choices": [choice]}

    with FakeServer(reply) as server:
        eng = engine(server.url)
        if words > 48:
            with pytest.raises(ServerError, match=f"{server.url}/completions: completion text of 100 tokens for "
                                                  "max_tokens=16 .more than 48 = 2 × max_tokens . 16.: the server "
                                                  "ignores max_tokens"):
                eng.generate([[1]], [3], SamplingParams(max_new_tokens=16))
        else:
            assert len(eng.generate([[1]], [3], SamplingParams(max_new_tokens=16))[0].token_ids) == 48


@pytest.mark.parametrize("bad, shown", [(float("inf"), "inf"), (50, "50"), (float("nan"), "nan"),
                                        (float("-inf"), "-inf"), (1e-3, "0.001"), ("x", "not a number: x"),
                                        (True, "not a number: True")])
def test_log_probs_that_are_not_log_probabilities_are_refused(bad, shown):
    """+Infinity, +50, NaN (sent as JSON's Infinity / NaN, as Python servers do): a log-prob is finite and ≤ 0
    (1e-4 of rounding allowed); anything else would reach the IS weights and metrics.jsonl."""
    def reply(payload):
        lp = {"tokens": ["token_id:28", "token_id:29"], "token_logprobs": [-0.5, bad]}
        return {"choices": [{"text": "1 2", "finish_reason": "length", "logprobs": lp}]}

    with FakeServer(reply) as server:
        with pytest.raises(ServerError, match=f"{server.url}/completions: .*{shown}"):
            engine(server.url).generate([[1]], [3], SamplingParams(max_new_tokens=8))


def test_log_probs_within_rounding_of_zero_are_kept():
    def reply(payload):
        lp = {"tokens": ["token_id:28", "token_id:29"], "token_logprobs": [-0.0, 5e-5]}
        return {"choices": [{"text": "1 2", "finish_reason": "length", "logprobs": lp}]}

    with FakeServer(reply) as server:
        assert engine(server.url).generate([[1]], [3], SamplingParams(max_new_tokens=8))[0].logprobs == [0.0, 5e-5]


@pytest.mark.parametrize("depth", [50, 900, 5000])
def test_deeply_nested_replies_are_one_clear_error(depth):
    """Nested past what the parser follows (or just under it): a ServerError naming the server, never a
    RecursionError."""
    with FakeServer(completion, script=[("nested", depth)]) as server:
        with pytest.raises(ServerError, match=f"{server.url}/completions: (malformed completion reply|reply is "
                                              "not JSON)"):
            engine(server.url).generate([[1]], [3], SamplingParams(max_new_tokens=8))


@pytest.mark.parametrize("size, message", [(1 << 20, "reply of .* bytes refused: over the limit of"),
                                           (10_000, "reply of 10,000 characters for max_tokens=64 .more than "
                                                    "2,304.: the server ignores max_tokens")])
def test_synth_replies_are_bounded_by_max_tokens(tmp_path, size, message):
    """`t1 synth`'s chat calls: a 1 MB reply to max_tokens 64 is refused while reading; 10,000 characters
    (within the bytes, ~156 characters a token) is refused too; neither is cached nor retried."""
    from t1.stages.synth import Cache, Client, Endpoint, SynthConfig

    with FakeServer(completion, script=[("text", size, True)]) as server:
        ep = Endpoint(base_url=server.url, model="m", max_tokens=64)
        cfg = SynthConfig(inputs=("x",), teachers=(ep,), max_retries=0, timeout=5.0)
        client = Client(cfg, Cache(tmp_path / "cache.jsonl"))
        with pytest.raises(ServerError, match=f"{server.url}/chat/completions: {message}"):
            client.chat(ep, "What is 1 + 1?")
    assert not (tmp_path / "cache.jsonl").exists() or (tmp_path / "cache.jsonl").read_text() == ""
    assert len(server.requests) == 1
