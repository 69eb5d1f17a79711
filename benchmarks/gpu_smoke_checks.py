"""The checks of benchmarks/gpu_smoke.py (see its docstring): each returns rows of measured vs predicted.

Why these: they are the assumptions behind `t1.rollout.memory` (fitted on CPU) and t1's log-prob numerics that
no CPU test can confirm on a GPU (/work/shared/notes/gpu-path-review.md §3). On CPU every check runs on tiny
shapes so the script itself is tested (tests/test_gpu_smoke.py); the device-memory parts need CUDA and are
skipped there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

GiB = 1 << 30


@dataclass
class Row:
    """One line of the table; ``ok`` None: information or skipped (never fails the run)."""

    check: str
    what: str
    measured: str
    predicted: str = ""
    ok: bool | None = None
    note: str = ""


def cuda() -> bool:
    return torch.cuda.is_available()


def _gib(n: float) -> str:
    return f"{n / GiB:.2f} GiB"


# ---------------------------------------------------------------------------------------------- environment


def environment(device: str) -> list[Row]:
    """Versions, the device, and the collective timeout t1 gives a run vs torch's and accelerate's defaults
    (600 s would abort a job while rank 0 writes a large checkpoint: review D2)."""
    import accelerate
    import transformers
    from accelerate.utils import InitProcessGroupKwargs
    from torch.distributed import constants

    import t1
    from t1.rollout.config import resolve
    from t1.rollout.memory import GPU_80GB
    from t1.runtime.device import NCCL_TIMEOUT

    rows = [Row("env", "torch / transformers / accelerate", f"{torch.__version__} / {transformers.__version__} / "
                f"{accelerate.__version__}", note=f"t1 from {t1.__file__}"),
            Row("env", "engine auto resolves to", resolve("auto"), "fast (no vLLM)" if device == "cpu" else "")]
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        total = props.total_memory
        nccl = ".".join(map(str, torch.cuda.nccl.version()))
        rows += [Row("env", "device", f"{props.name}, {torch.cuda.device_count()} GPU(s), "
                     f"CUDA {torch.version.cuda}, NCCL {nccl}"),
                 Row("env", "device memory", _gib(total), _gib(GPU_80GB), note="the estimate assumes 79.1 GiB"),
                 Row("env", "bf16 supported", str(torch.cuda.is_bf16_supported()), "True",
                     torch.cuda.is_bf16_supported()),
                 Row("env", "SDPA flash / mem-efficient / math", " / ".join(
                     str(f()) for f in (torch.backends.cuda.flash_sdp_enabled,
                                        torch.backends.cuda.mem_efficient_sdp_enabled,
                                        torch.backends.cuda.math_sdp_enabled)))]
    default = constants.default_pg_nccl_timeout or constants.default_pg_timeout
    rows += [Row("env", "torch / accelerate default collective timeout",
                 f"{default.total_seconds():.0f} s / {InitProcessGroupKwargs().timeout}"),
             Row("env", "t1's collective timeout (train.nccl_timeout)", f"{NCCL_TIMEOUT:.0f} s", "> 600 s",
                 NCCL_TIMEOUT > 600)]
    return rows


# ---------------------------------------------------------------------------------------------- activations


def _qwen2(hidden: int, layers: int, heads: int, kv: int, inter: int, vocab: int, dtype, device: str):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                      num_key_value_heads=kv, intermediate_size=inter, vocab_size=vocab,
                      tie_word_embeddings=False, max_position_embeddings=32768, attn_implementation="sdpa")
    with torch.device(device):
        model = Qwen2ForCausalLM(cfg).to(dtype)
    model.model.embed_tokens.weight.requires_grad_(False)  # its gradient is not an activation
    return model


def _saved_bytes(model, ids: torch.Tensor, autocast: bool) -> int:
    """Bytes autograd saves in a forward of ``model.model`` over one sequence, counting each storage once and
    only tensors with a sequence-length dimension (not weights, nor their bf16 casts)."""
    T, storages = ids.shape[1], {}

    def pack(t):
        if T in t.shape:
            s = t.untyped_storage()
            storages[s.data_ptr()] = max(storages.get(s.data_ptr(), 0), s.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
            torch.autocast(ids.device.type, dtype=torch.bfloat16, enabled=autocast):
        model.model(input_ids=ids).last_hidden_state.float().square().mean().backward()
    return sum(storages.values())


def activations(device: str, shapes: list[tuple[str, tuple, int]]) -> list[Row]:
    """Per token and layer, the bytes autograd saves (a 2-layer minus a 1-layer model: the embedding, final norm
    and RoPE tables cancel) against ``Shape.act_per_token``'s constants, with fp32 weights under bf16 autocast
    (one process) and with bf16 weights (FSDP's mixed precision). The constants were fitted on CPU; on CUDA
    flash attention saves less, so measured ≤ 1.05 × predicted passes."""
    from t1.rollout.memory import Shape

    rows = []
    for name, (h, heads, kv, inter, vocab), T in shapes:
        for bf16_weights in (False, True):
            dtype = torch.bfloat16 if bf16_weights else torch.float32
            saved = []
            for layers in (1, 2):
                model = _qwen2(h, layers, heads, kv, inter, vocab, dtype, device)
                ids = torch.randint(0, vocab, (1, T), device=device)
                saved.append(_saved_bytes(model, ids, autocast=not bf16_weights))
                del model
            shape = Shape.of(_qwen2_config(h, 1, heads, kv, inter, vocab))
            predicted = shape.act_per_token(False, bf16_weights)
            measured = (saved[1] - saved[0]) / T
            rows.append(Row("activations", f"{name} T={T} {'bf16' if bf16_weights else 'fp32'} weights, "
                            "bytes/token/layer", f"{measured:,.0f}", f"{predicted:,.0f}",
                            measured <= 1.05 * predicted, f"ratio {measured / predicted:.3f}"))
            if device == "cuda":
                rows += _peak_rows(name, (h, heads, kv, inter, vocab), T, bf16_weights, shape)
    return rows


def _qwen2_config(h, layers, heads, kv, inter, vocab):
    from transformers import Qwen2Config

    return Qwen2Config(hidden_size=h, num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv,
                       intermediate_size=inter, vocab_size=vocab, tie_word_embeddings=False)


def _peak_rows(name: str, dims: tuple, T: int, bf16_weights: bool, shape) -> list[Row]:
    """CUDA: peak allocated in a 2-layer forward + backward, less the layers' gradients and (fp32 weights) their
    bf16 casts under autocast (the estimate counts both as separate lines), without and with accelerate's
    activation checkpointing, against act_per_token × T for 2 layers. Looser than the saved-bytes rows: the
    peak also holds the backward's transients and a few per-token tensors outside the layers."""
    from dataclasses import replace

    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointImpl, checkpoint_wrapper

    h, heads, kv, inter, vocab = dims
    shape, rows = replace(shape, layers=2), []
    for ckpt in (False, True):
        model = _qwen2(h, 2, heads, kv, inter, vocab, torch.bfloat16 if bf16_weights else torch.float32, "cuda")
        if ckpt:
            for i, layer in enumerate(model.model.layers):
                model.model.layers[i] = checkpoint_wrapper(layer, checkpoint_impl=CheckpointImpl.NO_REENTRANT)
        ids = torch.randint(0, vocab, (1, T), device="cuda")
        n = sum(p.numel() for p in model.model.layers.parameters())
        grads = n * (2 if bf16_weights else 4 + 2)  # gradients, and autocast's cached bf16 weights
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=not bf16_weights):
            model.model(input_ids=ids).last_hidden_state.float().square().mean().backward()
        measured = torch.cuda.max_memory_allocated() - base - grads
        predicted = shape.act_per_token(ckpt, bf16_weights) * T
        rows.append(Row("activations", f"{name} T={T} peak, {'checkpointed' if ckpt else 'plain'}, "
                        f"{'bf16' if bf16_weights else 'fp32'} weights", _gib(measured), _gib(predicted),
                        measured <= 1.25 * predicted + 0.25 * GiB,
                        f"ratio {measured / predicted:.3f}"))
        del model
        torch.cuda.empty_cache()
    return rows


# ---------------------------------------------------------------------------------------------- logits


def logits_memory(device: str, T: int, V: int, h: int, chunk: int) -> list[Row]:
    """CUDA: the update's logits [T, V] bf16 plus t1.rl.logp's chunked log-prob forward + backward, against
    T·V·2 + chunk·V·CHUNK_BYTES; and processed_logp (top-p) over MISMATCH_ROWS rows against rows·V·41."""
    from t1.rl.logp import logp_entropy
    from t1.rollout.logprobs import MISMATCH_ROWS, processed_logp
    from t1.rollout.memory import CHUNK_BYTES, MISMATCH_BYTES

    if device != "cuda":
        return [Row("logits", "peak memory of the chunked log-probs", "skipped (CUDA only)")]
    hidden = torch.randn(T, h, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    weight = torch.randn(V, h, device="cuda", dtype=torch.bfloat16) / math.sqrt(h)
    targets = torch.randint(0, V, (T,), device="cuda")
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated() + hidden.numel() * 2  # + hidden's gradient
    torch.cuda.reset_peak_memory_stats()
    logp, ent = logp_entropy(hidden @ weight.t(), targets, chunk=chunk, grad_in_place=True)
    (logp.sum() + ent.sum()).backward()
    measured = torch.cuda.max_memory_allocated() - base
    predicted = T * V * 2 + min(chunk, T) * V * CHUNK_BYTES
    rows = [Row("logits", f"logits + chunked log-probs, T={T} V={V} chunk={chunk}", _gib(measured),
                _gib(predicted), measured <= 1.10 * predicted, f"ratio {measured / predicted:.3f}")]
    del hidden, logp, ent
    rows_n = MISMATCH_ROWS
    logits = torch.randn(rows_n, V, device="cuda", dtype=torch.bfloat16) * 3
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    processed_logp(logits, targets[:rows_n], 1.2, 0.95, chunk=rows_n)
    measured = torch.cuda.max_memory_allocated() - base
    predicted = rows_n * V * MISMATCH_BYTES
    rows.append(Row("logits", f"processed_logp top-p, {rows_n} rows", _gib(measured), _gib(predicted),
                    measured <= 1.10 * predicted, f"{measured / (rows_n * V):.1f} B/logit"))
    return rows


# ---------------------------------------------------------------------------------------------- checkpoint


def checkpoint_headroom(device: str, world: int = 8, util: float = 0.7) -> list[Row]:
    """Review D3: a 7B checkpoint (8 GPUs, FSDP) with vLLM awake holds the static lines (policy, AdamW, anchor
    per rank + runtime), vLLM's share, the gathered root unit (embeddings and lm_head in fp32) and one gathered
    parameter's AdamW moments. On CUDA they are allocated for real; the row says whether they fit and how much
    is left."""
    from t1.rollout.memory import RUNTIME, Shape, qwen25

    shape = Shape.of(qwen25("7b"))
    total = torch.cuda.get_device_properties(0).total_memory if device == "cuda" else int(79.1 * GiB)
    static = 16 * shape.params // world + RUNTIME
    share = int(util * total)
    root = 2 * shape.vocab * shape.hidden * 4
    moments = 2 * shape.inter * shape.hidden * 4
    predicted = static + share + root + moments
    if device != "cuda":
        return [Row("checkpoint", "7B checkpoint with vLLM awake (not allocated on CPU)", "skipped",
                    f"{_gib(predicted)} of {_gib(total)}")]
    torch.cuda.empty_cache()  # what earlier checks left cached would count as held
    held, ok = [], True
    try:
        for n in (static - RUNTIME, share, root, moments):
            held.append(torch.empty(n, dtype=torch.uint8, device="cuda"))
    except torch.cuda.OutOfMemoryError:
        ok = False
    measured, left = torch.cuda.memory_reserved(), torch.cuda.mem_get_info()[0]
    del held
    torch.cuda.empty_cache()
    return [Row("checkpoint", "7B checkpoint with vLLM awake: allocated" + ("" if ok else " (OOM)"),
                _gib(measured), _gib(predicted - RUNTIME), ok, f"free after: {_gib(left)}")]


# ---------------------------------------------------------------------------------------------- numerics


def vllm_top_p_logp(logits: torch.Tensor, targets: torch.Tensor, temperature: float, top_p: float):
    """vLLM's ``apply_top_k_top_p_pytorch`` (top-p part; vllm/v1/sample/ops/topk_topp_sampler.py) after its
    temperature, then log-softmax: the reference for t1's processed_logp."""
    logits = logits.float() / temperature
    logits_sort, logits_idx = logits.sort(dim=-1, descending=False)
    probs_sum = logits_sort.softmax(dim=-1).cumsum(dim=-1)
    mask = probs_sum <= 1 - top_p
    mask[:, -1] = False  # at least one token stays
    logits_sort.masked_fill_(mask, -float("inf"))
    logits = logits_sort.scatter(dim=-1, index=logits_idx, src=logits_sort)
    return torch.log_softmax(logits, -1).gather(-1, targets[:, None]).squeeze(-1)


def numerics(device: str, n: int, V: int, chunk: int) -> list[Row]:
    """t1.rl.logp's chunked log-probs and entropies (values and gradients, bf16 logits, gradient written in
    place) against an fp32 unchunked reference; processed_logp against vLLM's top-p at T=1.2, top_p=0.95;
    the spread between log-probs of sampled tokens under fp32 and bf16-rounded logits (review D8)."""
    from t1.rl.logp import logp_entropy
    from t1.rollout.logprobs import processed_logp

    g = torch.Generator(device=device).manual_seed(0)
    base = torch.randn(n, V, device=device, generator=g) * 3
    targets = torch.randint(0, V, (n,), device=device, generator=g)
    ref = base.to(torch.bfloat16).float().requires_grad_(True)
    lp_ref = torch.log_softmax(ref, -1).gather(-1, targets[:, None]).squeeze(-1)
    p = torch.softmax(ref, -1)
    ent_ref = -(p * torch.log_softmax(ref, -1)).sum(-1)
    (lp_ref.sum() + 0.5 * ent_ref.sum()).backward()
    x = base.to(torch.bfloat16).requires_grad_(True)
    logits = x * 1  # non-leaf, as the output layer's: its storage takes the gradient in place
    lp, ent = logp_entropy(logits, targets, chunk=chunk, grad_in_place=True)
    (lp.sum() + 0.5 * ent.sum()).backward()
    d_val = max(float((lp - lp_ref).detach().abs().max()), float((ent - ent_ref).detach().abs().max()))
    d_grad = float((x.grad.float() - ref.grad).abs().max())
    rows = [Row("numerics", "chunked log-prob/entropy vs fp32 reference: max |Δ|", f"{d_val:.2e}", "≤ 1e-4",
                d_val <= 1e-4),
            Row("numerics", "their gradients (bf16, in place): max |Δ|", f"{d_grad:.2e}", "≤ 1e-2",
                d_grad <= 1e-2)]
    sampled = torch.multinomial(torch.softmax(base / 1.2, -1), 1, generator=g).squeeze(-1)
    ours = processed_logp(base, sampled, 1.2, 0.95)
    theirs = vllm_top_p_logp(base, sampled, 1.2, 0.95)
    both = ours.isfinite() & theirs.isfinite()
    agree = float((ours.isfinite() == theirs.isfinite()).float().mean())
    d_top = float((ours[both] - theirs[both]).abs().max()) if both.any() else 0.0
    rows += [Row("numerics", "top-p log-probs vs vLLM's (T=1.2, p=0.95): max |Δ|", f"{d_top:.2e}", "≤ 1e-4",
                 d_top <= 1e-4),
             Row("numerics", "same nucleus membership as vLLM's", f"{agree:.4f}", "≥ 0.99", agree >= 0.99)]
    lp32 = processed_logp(base, sampled, 1.2, 0.95)
    lp16 = processed_logp(base.to(torch.bfloat16), sampled, 1.2, 0.95)
    fin = lp32.isfinite() & lp16.isfinite()
    spread = float((lp32[fin] - lp16[fin]).abs().max()) if fin.any() else 0.0
    rows.append(Row("numerics", "sampled tokens: |logp fp32 − logp bf16 logits| max", f"{spread:.3f}",
                    note="predicts logp_diff_max on GPU (review D8)"))
    return rows
