"""The local sampler process (t1.rollout.process): the fast engine on a copy of the weights in shared memory."""

import os
import signal

import pytest
import torch

from t1.model.load import ModelConfig, build_model, build_tokenizer
from t1.rollout.base import EngineError, SamplingParams
from t1.rollout.fast import FastEngine
from t1.rollout.process import ProcessEngine, StaleEngineError
from t1.rollout.weights import full_parameters


def _model(seed=0):
    tok = build_tokenizer(100)
    model = build_model(ModelConfig(hidden=64, layers=2, heads=4, kv_heads=2, ffn=128, seed=seed), tok).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(4.0)
    return model, tok


PROMPTS_TEXT = ["use 3 5 7 to make 22 :", "use 9 to make 9 :"]


def test_it_samples_what_the_fast_engine_samples_from_each_pushed_version():
    model, tok = _model()
    prompts = [tok(t)["input_ids"] for t in PROMPTS_TEXT] * 2
    params = SamplingParams(1.0, 0.9, 24)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the child samples on one thread: the same reduction order on both sides
    engine = ProcessEngine(model, tok, slots=2, threads=1, dtype="float32")
    try:
        engine.push_weights(full_parameters(model), 0)
        v0 = FastEngine(model, tok, dtype="float32").generate(prompts, [1, 2, 3, 4], params)
        job = engine.submit(prompts, [1, 2, 3, 4], params, version=0)
        with torch.no_grad():  # the policy moves on and version 1 is written while job 0 may still run
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
        engine.push_weights(full_parameters(model), 1)
        assert [s.token_ids for s in engine.result(job)] == [s.token_ids for s in v0]
        v1 = FastEngine(model, tok, dtype="float32").generate(prompts, [1, 2, 3, 4], params)
        got = engine.generate(prompts, [1, 2, 3, 4], params, version=1)
        assert [s.token_ids for s in got] == [s.token_ids for s in v1] != [s.token_ids for s in v0]
        assert [s.logprobs for s in got] == [s.logprobs for s in v1]
        assert [s.text for s in got] == [s.text for s in v1]
        with pytest.raises(StaleEngineError, match="version 7 was never pushed"):
            engine.submit(prompts, [1, 2, 3, 4], params, version=7)
    finally:
        engine.close()
        torch.set_num_threads(threads)
    assert not engine.proc.is_alive()


def test_a_dead_sampler_is_one_line_not_a_hang():
    model, tok = _model()
    engine = ProcessEngine(model, tok, slots=2, threads=1, dtype="float32")
    try:
        engine.push_weights(full_parameters(model), 0)
        os.kill(engine.proc.pid, signal.SIGKILL)
        with pytest.raises(EngineError, match=r"the sampler process died \(exit code -9\) while sampling job 0; "
                                              "the last checkpoint is intact"):
            engine.generate([tok(PROMPTS_TEXT[0])["input_ids"]], [0], SamplingParams(1.0, 1.0, 8), version=0)
    finally:
        engine.close()
