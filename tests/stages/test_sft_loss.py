"""The chunked SFT loss (``train.logits_chunk``) gives the unchunked loss and every parameter's gradient: on t1's
fast forward (hidden states once, output layer + cross-entropy a chunk at a time), on a wrapped model's own
logits (the fallback under DDP/FSDP), with tied or untied output layers, biases, LoRA and bf16 autocast."""

import json
import os
import socket
import subprocess
import sys
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from t1 import config as C
from t1.model import lora
from t1.model.forward import Forward
from t1.model.load import ModelConfig, build_model, build_tokenizer, save
from t1.stages.sft import SFTConfig, _HeadNLL, token_nll_sum, train_sft

SHAPE = ModelConfig(hidden=32, layers=2, heads=4, kv_heads=2, ffn=48, max_positions=64)


def _model(vocab: int = 3000, arch: str = "llama", tied: bool = True):
    model = build_model(replace(SHAPE, tie_embeddings=tied), build_tokenizer(20), arch, vocab_size=vocab)
    with torch.no_grad():  # RMSNorm weights away from 1 (t1 folds the final one into the output layer)
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return model


def _batch(vocab: int, seed: int = 0):
    """Right-padded rows whose loss covers a response after a prompt; one row with no response at all."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (4, 19), generator=g)
    attn = torch.ones_like(ids, dtype=torch.bool)
    mask = torch.zeros_like(attn)
    for r, (prompt, length) in enumerate([(5, 19), (3, 11), (8, 14), (6, 6)]):
        attn[r, length:] = False
        ids[r, length:] = 0
        mask[r, prompt:length] = True
    return ids, attn.long(), mask


def _loss_and_grads(model, forward, chunk, ids, attn, mask, autocast: bool = False):
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = token_nll_sum(forward, ids, attn, mask, chunk)
        loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_same(model, forward, chunks, tol=dict(rtol=1e-5, atol=1e-5), autocast=False, vocab=3000):
    ids, attn, mask = _batch(vocab)
    want, want_g = _loss_and_grads(model, forward, 0, ids, attn, mask, autocast)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert sorted(want_g) == sorted(trainable)
    for chunk in chunks:
        got, got_g = _loss_and_grads(model, forward, chunk, ids, attn, mask, autocast)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, want, **tol)
        assert got_g.keys() == want_g.keys()
        for n in want_g:
            torch.testing.assert_close(got_g[n], want_g[n], **tol, msg=n)


@pytest.mark.parametrize("arch, tied", [("llama", True), ("qwen2", False)])
def test_fast_path_equals_the_unchunked_loss_and_gradients(arch, tied):
    """Vocabulary 3000 ≫ chunks of 1, 7 and 48 rows (49 response tokens: a ragged last chunk, and one chunk
    holding them all)."""
    model = _model(3000, arch, tied)
    forward = Forward(model)
    assert forward.fast
    _assert_same(model, forward, [1, 7, 48, 4096])


def test_fallback_on_the_models_own_logits_equals_the_unchunked_loss():
    """Under DDP/FSDP the wrapped model's forward gives the logits; they are chunked as they come."""
    model = _model(3000)
    forward = Forward(model, fast=False)
    assert not forward.fast
    _assert_same(model, forward, [1, 7, 4096])
    # any callable that returns logits (no fast path to take)
    _assert_same(model, lambda i, a: model(input_ids=i, attention_mask=a).logits, [5])


def test_lora_with_an_adapter_on_the_output_layer():
    """The output layer read as W + (α/r)·B·A; gradients reach the adapters only."""
    pytest.importorskip("peft")
    model = lora.apply(_model(2000, tied=False), lora.LoraConfig(
        rank=4, alpha=8, target_modules=("q_proj", "v_proj", "down_proj", "lm_head")))
    with torch.no_grad():  # B = 0 at init would leave A's gradient zero
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    forward = Forward(model)
    assert forward.fast
    _assert_same(model, forward, [3, 4096], vocab=2000)


def test_bf16_autocast_stays_close():
    """Under bf16 autocast both paths make each chunk's logits in bf16 and take the softmax in fp32: the same
    loss, the same gradients below the output layer, and the output layer's (and what reads it) within the
    accumulation order (measured: 1e-3 of the gradient's norm, a third of bf16's own distance from fp32)."""
    model = _model(3000)
    forward, (ids, attn, mask) = Forward(model), _batch(3000)
    fp32 = _loss_and_grads(model, forward, 0, ids, attn, mask)[1]
    want, want_g = _loss_and_grads(model, forward, 0, ids, attn, mask, autocast=True)
    got, got_g = _loss_and_grads(model, forward, 7, ids, attn, mask, autocast=True)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)
    for n in want_g:
        scale = fp32[n].norm()
        assert (got_g[n] - want_g[n]).norm() <= 5e-3 * scale, n
        assert (got_g[n] - fp32[n]).norm() <= 1.5 * (want_g[n] - fp32[n]).norm() + 1e-3 * scale, n


def test_head_nll_with_a_bias_in_fp64():
    """The custom function alone: loss and gradients of x, W and b against autograd on the whole logits."""
    torch.manual_seed(0)
    x, w, b = (torch.randn(*shape, dtype=torch.float64) for shape in ((11, 8), (500, 8), (500,)))
    t = torch.randint(0, 500, (11,))
    out = []
    for fn in (lambda x, w, b: torch.nn.functional.cross_entropy(x @ w.t() + b, t, reduction="sum"),
               lambda x, w, b: _HeadNLL.apply(x, w, b, t, 3, True)):
        args = [a.clone().requires_grad_() for a in (x, w, b)]
        loss = fn(*args)
        (loss * 1.7).backward()
        out.append([loss.detach()] + [a.grad for a in args])
    assert out[1][0].dtype == torch.float64
    for got, want in zip(out[1], out[0]):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_no_response_tokens_gives_zero():
    model = _model(500)
    ids, attn, mask = _batch(500)
    mask[:] = False
    for chunk in (0, 4):
        loss, grads = _loss_and_grads(model, Forward(model), chunk, ids, attn, mask)
        assert float(loss) == 0.0 and all(not g.any() for g in grads.values())


def test_narrow_vocabularies_keep_the_whole_batch_path(monkeypatch):
    """Logits at most 4× the hidden size (the Countdown tiny model): chunking saves nothing there, so the loss
    is computed as before, bit for bit."""
    model = build_model(replace(SHAPE, hidden=64, heads=4), build_tokenizer(20), vocab_size=256)
    forward, (ids, attn, mask) = Forward(model), _batch(256)
    monkeypatch.setattr(_HeadNLL, "apply", lambda *a: pytest.fail("chunked on a narrow vocabulary"))
    for fw in (forward, Forward(model, fast=False)):
        want = _loss_and_grads(model, fw, 0, ids, attn, mask)
        got = _loss_and_grads(model, fw, 7, ids, attn, mask)
        assert torch.equal(got[0], want[0]) and all(torch.equal(got[1][n], want[1][n]) for n in want[1])


def _sft_args(model, out, chunk):
    return [f"out={out}", f"model={model}", "data.num_examples=48", "train.epochs=1", "train.batch_size=16",
            "train.micro_batch_tokens=600", "train.log_every=1", "train.precision=fp32", "train.optim.lr=0.003",
            f"train.logits_chunk={chunk}"]


def _run_result(out):
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    return losses, load_file(str(out / "final" / "model.safetensors"))


def _assert_same_run(got, want):
    assert len(want[0]) == 3 and got[0] == pytest.approx(want[0], rel=1e-5)
    for k, w in want[1].items():
        torch.testing.assert_close(got[1][k], w, rtol=1e-4, atol=1e-5, msg=k)


@pytest.fixture(scope="module")
def wide_model(tmp_path_factory):
    """A tiny Llama over a 1024-entry vocabulary (32× its hidden size: the chunked loss applies)."""
    tok = build_tokenizer(100)
    return save(build_model(replace(SHAPE, max_positions=128), tok, vocab_size=1024), tok,
                tmp_path_factory.mktemp("wide") / "model")


def test_train_sft_takes_the_chunked_loss(wide_model, tmp_path, monkeypatch):
    """`t1 sft` passes train.logits_chunk on: a few steps give the weights and losses of logits_chunk=0."""
    calls = []
    apply = _HeadNLL.apply
    monkeypatch.setattr(_HeadNLL, "apply", lambda *a: calls.append(a[4]) or apply(*a))
    runs = {}
    for chunk in (0, 64):
        train_sft(C.load(SFTConfig, None, _sft_args(wide_model, tmp_path / f"c{chunk}", chunk)), progress=False)
        runs[chunk] = _run_result(tmp_path / f"c{chunk}")
        assert bool(calls) == bool(chunk) and set(calls) <= {64}
    _assert_same_run(runs[64], runs[0])


def test_two_processes_chunk_the_models_own_logits(wide_model, tmp_path):
    """Under DDP (the wrapped model's forward, logits chunked as they come) the same run as one process."""
    one, two = tmp_path / "one", tmp_path / "two"
    train_sft(C.load(SFTConfig, None, _sft_args(wide_model, one, 0)), progress=False)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           "-m", "t1", "sft", *_sft_args(wide_model, two, 64), "--quiet"]
    proc = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 process(es)" in proc.stderr
    _assert_same_run(_run_result(two), _run_result(one))
