"""A fast batched sampler for Llama-family models (Llama, Qwen2, Mistral shapes) on the model's own weights.

The model compute — weights rearranged once, the decode/prefill step over a static KV cache, the C kernels —
is :mod:`t1.model.decode`; this module is the engine around it: batching (longest prompts first, left
padding), every random number of a chunk drawn up front, sampling, and finished rows swapped out of the
batch so they stop costing compute. The rearranged weights are cached until a parameter changes (its
in-place version counter moves).

Sampling is *batch-invariant*: each row draws its uniform numbers from a counter-based hash of (its seed,
the step), and samples by inverse CDF over the temperature-scaled, top-p-truncated distribution. A sample
therefore depends on its prompt and seed alone, which lets N processes reproduce a 1-process run.
"""

from __future__ import annotations

import torch

from t1.model import decode
from t1.model.kernels import ops
from t1.rollout.base import Sample, SamplingParams
from t1.runtime.device import resolve_precision

# -------------------------------------------------------------------------------------------- random


_M1 = -7046029254386353131  # 0x9E3779B97F4A7C15 as int64
_M2 = -4658895280553007687  # 0xBF58476D1CE4E5B9
_M3 = -7723592293110705685  # 0x94D049BB133111EB


def _shr(z: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's ``>>`` is arithmetic: it copies the sign bit)."""
    return (z >> k) & ((1 << (64 - k)) - 1)


def uniform(seeds: torch.Tensor, step: int | torch.Tensor) -> torch.Tensor:
    """A float64 uniform in [0, 1) per (seed, step): splitmix64 on int64 (wrapping arithmetic). ``step`` is an
    int or a tensor broadcastable against ``seeds`` (e.g. seeds [B, 1] and steps [1, T] give [B, T])."""
    steps = torch.as_tensor(step, dtype=torch.long, device=seeds.device)
    z = seeds * _M1 + (steps + 1) * _M2
    z = (z ^ _shr(z, 30)) * _M2
    z = (z ^ _shr(z, 27)) * _M3
    z = z ^ _shr(z, 31)
    return _shr(z, 11).double() / float(1 << 53)


def sample_tokens(logits: torch.Tensor, u: torch.Tensor, temperature: float, top_p: float
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse-CDF sampling from softmax(logits / T) truncated to the top-p nucleus. [B, V], [B] -> tokens
    [B], log-probs [B] under the distribution actually sampled from."""
    logits = logits.float()
    if temperature <= 0:  # greedy
        return logits.argmax(-1), torch.zeros(logits.shape[0], device=logits.device)
    probs = torch.softmax(logits if temperature == 1.0 else logits / temperature, dim=-1)
    if top_p < 1.0:
        probs, order = probs.sort(dim=-1, descending=True)
        cum = probs.cumsum(-1)
        probs = probs.masked_fill(cum - probs > top_p, 0.0)  # keep the smallest prefix with mass ≥ top_p
    cum = probs.cumsum(-1)
    target = (u.to(cum.dtype) * cum[:, -1]).unsqueeze(-1)
    idx = torch.searchsorted(cum, target).clamp(max=probs.shape[-1] - 1)
    picked = probs.gather(-1, idx).squeeze(-1)
    logp = torch.log(picked / cum[:, -1])
    tokens = order.gather(-1, idx).squeeze(-1) if top_p < 1.0 else idx.squeeze(-1)
    return tokens, logp


class FastEngine:
    """Batched sampling with a static KV cache; see the module doc."""

    shares_weights = True  # samples from the policy's own tensors: nothing to push

    def __init__(self, model, tokenizer, max_batch: int = 512, dtype: str = "auto", compact_at: float = 0.05,
                 kernel: bool = True):
        """``kernel``: decode attention on the CPU through :mod:`t1.model.kernels` where it can be built (False:
        batched matmuls over an fp32 cache, as without a C compiler)."""
        self.model, self.tokenizer = model, tokenizer
        self.max_batch = max_batch
        self.compact_at = compact_at
        self.eos = tokenizer.eos_token_id
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos
        self.dtype = dtype
        self._cached: tuple[tuple, decode.Weights] | None = None
        self._kv_cache = decode.CacheBuffer()
        self.kernel = kernel

    def _dtype(self) -> torch.dtype:
        """"auto": bf16 where the hardware has fast bf16 (the sampler's logits then differ from the fp32
        policy's by bf16 rounding; training recomputes log-probs in its own precision), else the model's."""
        if self.dtype == "auto":
            device = next(self.model.parameters()).device
            if resolve_precision("auto", device) == "bf16":
                return torch.bfloat16
            return next(self.model.parameters()).dtype
        return getattr(torch, self.dtype)

    @torch.no_grad()
    def weights(self) -> decode.Weights:
        """The rearranged weights, rebuilt only when a parameter changed since the last call."""
        dtype = self._dtype()
        key = decode.Weights.key(self.model, dtype)
        if self._cached is None or self._cached[0] != key:
            self._cached = None  # free the old copy before building the new one
            self._cached = (key, decode.Weights(self.model, dtype))
        return self._cached[1]

    @torch.inference_mode()
    def generate(self, prompts: list[list[int]], seeds: list[int], params: SamplingParams) -> list[Sample]:
        if len(prompts) != len(seeds):
            raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
        w = self.weights()
        # longest prompts first, so a chunk's left padding stays small
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        results: dict[int, Sample] = {}
        for start in range(0, len(order), self.max_batch):
            chunk = order[start: start + self.max_batch]
            for i, s in zip(chunk, self._run(w, [prompts[i] for i in chunk], [seeds[i] for i in chunk], params)):
                results[i] = s
        return [results[i] for i in range(len(prompts))]

    def _run(self, w: decode.Weights, prompts: list[list[int]], seeds: list[int], params: SamplingParams
             ) -> list[Sample]:
        device = w.embed.device
        B, P, T = len(prompts), max(len(p) for p in prompts), params.max_new_tokens
        ids = torch.full((B, P), self.pad, dtype=torch.long)
        real = torch.ones((B, P + T), dtype=torch.bool)  # which cache slots hold real tokens
        for r, p in enumerate(prompts):
            ids[r, P - len(p):] = torch.tensor(p, dtype=torch.long)
            real[r, : P - len(p)] = False
        ids, real = ids.to(device), real.to(device)
        pad_count = (~real[:, :P]).sum(-1)  # [B]
        kernels = self.kernel and device.type == "cpu" and ops.available()  # built once per process
        cache_k, cache_v = self._kv_cache((len(w.layers), B, w.n_kv, P + T, w.head_dim),
                                          decode.kv_dtype(w, kernels), device)
        u = uniform(torch.tensor(seeds, dtype=torch.long, device=device)[:, None],
                    torch.arange(T, device=device)[None])  # [B, T]: every random number this chunk will use
        table = w.rope_table(P + T)[:, None]  # [P + T, 1, head_dim/2]

        # prefill: causal over the prompt, pads masked (a pad query attends to itself only, avoiding NaN)
        pos = (torch.arange(P, device=device)[None] - pad_count[:, None]).clamp(min=0)
        logits = decode.step(w, ids, table[pos], cache_k, cache_v, 0, decode.prefill_bias(real[:, :P]))
        pad_bias = decode.padding_bias(real)  # decoding: only left padding needs masking

        rows = torch.arange(B, device=device)  # original row of each active batch position
        out_tokens = torch.full((B, T), self.pad, dtype=torch.long, device=device)  # in original row order
        out_logps = torch.zeros((B, T), dtype=torch.float32, device=device)
        tokens = torch.empty((B, T), dtype=torch.long, device=device)  # per active batch position
        logps = torch.empty((B, T), dtype=torch.float32, device=device)
        alive = torch.ones(B, dtype=torch.bool, device=device)
        stops = torch.tensor(params.stops(self.eos), dtype=torch.long, device=device)
        steps = 0
        for t in range(T):
            tok, lp = sample_tokens(logits, u[:, t], params.temperature, params.top_p)
            tokens[:, t], logps[:, t] = tok, lp
            steps = t + 1
            alive &= ~torch.isin(tok, stops)  # a finished row's later tokens are ignored (cut at its first stop)
            n_alive = int(alive.sum())
            if n_alive == 0 or steps == T:
                break
            slot = P + t
            if n_alive <= (1 - self.compact_at) * alive.numel():
                # drop finished rows: save their outputs, then move live rows from the tail into the holes
                # (copying only the cache slots used so far), so the live rows are a prefix of every tensor
                gone = (~alive).nonzero().squeeze(-1)
                out_tokens[rows[gone], :steps] = tokens[gone, :steps]
                out_logps[rows[gone], :steps] = logps[gone, :steps]
                holes = (~alive[:n_alive]).nonzero().squeeze(-1)
                movers = alive[n_alive:].nonzero().squeeze(-1) + n_alive
                per_row = [rows, tok, pad_count, u, tokens, logps] + ([pad_bias] if pad_bias is not None else [])
                for x in per_row:
                    x[holes] = x[movers]
                rows, tok, pad_count, u, tokens, logps = (x[:n_alive] for x in per_row[:6])
                pad_bias = pad_bias[:n_alive] if pad_bias is not None else None
                cache_k[:, holes, :, :slot] = cache_k[:, movers, :, :slot]
                cache_v[:, holes, :, :slot] = cache_v[:, movers, :, :slot]
                cache_k, cache_v = cache_k[:, :n_alive], cache_v[:, :n_alive]
                alive = torch.ones(n_alive, dtype=torch.bool, device=device)  # the prefix is now all live rows
            bias = pad_bias[:, None, None, : slot + 1] if pad_bias is not None else None
            logits = decode.step(w, tok[:, None], table[slot - pad_count][:, None], cache_k, cache_v, slot, bias,
                                 kernels)
        out_tokens[rows, :steps] = tokens[:, :steps]
        out_logps[rows, :steps] = logps[:, :steps]
        return self._samples(out_tokens[:, :steps].cpu(), out_logps[:, :steps].cpu(), steps, stops.cpu())

    def _samples(self, out_tokens: torch.Tensor, out_logps: torch.Tensor, steps: int, stops: torch.Tensor
                 ) -> list[Sample]:
        """Each row's tokens and log-probs [B, steps] (in the original row order) cut at its first stop id."""
        is_eos = torch.isin(out_tokens, stops)
        finished = is_eos.any(-1)
        length = torch.where(finished, is_eos.int().argmax(-1) + 1, steps)
        samples = []
        for r in range(out_tokens.shape[0]):
            n = int(length[r])
            tl = out_tokens[r, :n].tolist()
            body = tl[:-1] if finished[r] else tl
            samples.append(Sample(tl, self.tokenizer.decode(body, skip_special_tokens=True), bool(finished[r]),
                                  out_logps[r, :n].tolist()))
        return samples
