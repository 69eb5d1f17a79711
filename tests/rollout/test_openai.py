import pytest

from t1.model.load import build_tokenizer
from t1.rollout.base import SamplingParams
from t1.rollout.config import OpenAIConfig
from t1.rollout.openai import OpenAIEngine, ServerError
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
