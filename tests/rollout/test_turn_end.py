"""Every engine stops at the model's turn end: a tiny Qwen2 with Qwen2.5's real tokenizer, after chat-template
SFT, ends its replies with <|im_end|>; each engine (fast, generate, vLLM's CPU build, a real `vllm serve`, an
OpenAI-compatible server) keeps that token as the sample's last, cuts anything after it, and the sample earns no
penalty; the sampled log-probs equal the trainer's."""

from __future__ import annotations

import pytest
import torch

from t1.chat import chat_format
from t1.model.load import chat_format_of, load
from t1.rl.penalties import PenaltyConfig, check
from t1.rollout import make_engine
from t1.rollout.base import SamplingParams
from t1.rollout.logprobs import processed_logp
from t1.rollout.openai import OpenAIEngine
from tests.fake_server import FakeServer
from tests.real_model import arithmetic_rows

IM_START, IM_END, EOT = 151644, 151645, 151643


@pytest.fixture(scope="module")
def sft(qwen_sft_dir):
    model, tok = load(qwen_sft_dir, dtype="float32")
    model.eval()
    fmt = chat_format_of(tok, qwen_sft_dir)
    prompts = [fmt.prompt_ids(tok, r["prompt"]) for r in arithmetic_rows(4, seed=1) for _ in range(4)]
    return model, tok, fmt, prompts


def params(fmt) -> SamplingParams:
    return SamplingParams(1.0, 0.95, 48, fmt.stop_ids)


def check_turns(samples, fmt, min_finished: int) -> None:
    """Finished samples end with a stop id and hold no other; none of them is penalised."""
    assert sum(s.finished for s in samples) >= min_finished, [s.token_ids[-3:] for s in samples]
    for s in samples:
        stops = [i for i, t in enumerate(s.token_ids) if t in fmt.stop_ids]
        assert stops == ([len(s.token_ids) - 1] if s.finished else []), s.token_ids
        if s.finished:
            assert s.token_ids[-1] == IM_END  # the SFT model's turn end, not the base model's eos
            flags = check(s.text, "", True, s.token_ids, fmt.special_ids, PenaltyConfig(repetitive=False))
            assert not flags.any, flags.reason


def max_gap(model, prompts, samples, p: SamplingParams) -> float:
    """Largest |sampler log-prob − the trainer's processed log-prob| over every sampled token, stop included."""
    worst = 0.0
    for prompt, s in zip(prompts, samples):
        with torch.no_grad():
            logits = model(torch.tensor([prompt + s.token_ids])).logits[0].float()
        ref = processed_logp(logits[len(prompt) - 1: -1], torch.tensor(s.token_ids), p.temperature, p.top_p)
        worst = max(worst, float((ref - torch.tensor(s.logprobs)).abs().max()))
    return worst


def test_fast_engine_stops_at_the_turn_end_and_aligns(sft):
    model, tok, fmt, prompts = sft
    from t1.rollout.fast import FastEngine

    samples = FastEngine(model, tok, dtype="float32").generate(prompts, list(range(len(prompts))), params(fmt))
    check_turns(samples, fmt, min_finished=12)
    assert max_gap(model, prompts, samples, params(fmt)) < 1e-3
    base_only = SamplingParams(1.0, 0.95, 48, (EOT,))  # the base model's eos alone: it samples through <|im_end|>
    through = FastEngine(model, tok, dtype="float32").generate(prompts, list(range(len(prompts))), base_only)
    assert any(IM_END in s.token_ids for s in through)


def test_generate_engine_stops_at_the_turn_end(sft):
    model, tok, fmt, prompts = sft
    samples = make_engine("generate", model, tok).generate(prompts, list(range(len(prompts))), params(fmt))
    check_turns(samples, fmt, min_finished=10)


def test_openai_engine_cuts_what_a_server_sends_past_the_turn_end(qwen_tokenizer):
    fmt = chat_format(qwen_tokenizer)
    body = qwen_tokenizer("x = 5. \\boxed{5}", add_special_tokens=False)["input_ids"]
    past = body + [IM_END, 198, IM_START, 872]  # a server that ignored stop_token_ids ran into a new turn
    replies = iter([
        {"choices": [{"text": "ignored", "finish_reason": "length", "logprobs": {
            "tokens": [f"token_id:{t}" for t in past], "token_logprobs": [-0.5] * len(past)}}]},
        {"choices": [{"text": "x = 5. \\boxed{5}", "finish_reason": "stop"}]},  # text only, stopped by the server
    ])
    with FakeServer(lambda payload: next(replies)) as server:
        engine = OpenAIEngine(qwen_tokenizer, base_url=server.url)
        cut, text_only = [engine.generate([[1, 2]], [k], params(fmt))[0] for k in range(2)]
    assert server.requests[0]["stop_token_ids"] == [IM_END, EOT]
    assert cut.finished and cut.token_ids == body + [IM_END] and cut.logprobs == [-0.5] * (len(body) + 1)
    assert cut.text == "x = 5. \\boxed{5}"
    assert text_only.finished and text_only.token_ids == body + [IM_END] and text_only.logprobs is None
    for s in (cut, text_only):
        assert not check(s.text, "", True, s.token_ids, fmt.special_ids, PenaltyConfig()).any


def test_vllm_engine_stops_at_the_turn_end_and_aligns(sft, qwen_sft_dir):
    pytest.importorskip("vllm")
    from t1.rollout.config import VLLMConfig
    from t1.rollout.vllm_engine import VLLMEngine

    model, tok, fmt, prompts = sft
    engine = VLLMEngine(str(qwen_sft_dir), tok, VLLMConfig(dtype="float32"), max_len=512)
    try:
        samples = engine.generate(prompts, list(range(len(prompts))), params(fmt))
    finally:
        engine.close()
    check_turns(samples, fmt, min_finished=12)
    assert all(s.logprobs is not None and len(s.logprobs) == len(s.token_ids) for s in samples)
    assert max_gap(model, prompts, samples, params(fmt)) < 1e-3


@pytest.mark.slow
def test_vllm_server_stops_at_the_turn_end_and_aligns(sft, qwen_sft_dir, tmp_path_factory):
    pytest.importorskip("vllm")
    from t1.rollout.config import VLLMServerConfig
    from t1.rollout.vllm_server import VLLMServerEngine
    from tests.vllm_serve import serve

    model, tok, fmt, prompts = sft
    for url, _, _ in serve(qwen_sft_dir, tmp_path_factory.mktemp("qwen_serve")):
        engine = VLLMServerEngine(tok, VLLMServerConfig(urls=(url,), timeout=120, sync_timeout=120))
        samples = engine.generate(prompts, list(range(len(prompts))), params(fmt))
    check_turns(samples, fmt, min_finished=12)
    assert max_gap(model, prompts, samples, params(fmt)) < 1e-3
