"""``engine: vllm`` — vLLM's ``LLM`` inside every training process (TRL's "colocate" design).

* One engine per process, in-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``); with
  ``tensor_parallel_size = t > 1`` every group of t consecutive ranks of a node runs one tensor-parallel
  engine through vLLM's ``external_launcher`` executor: the group's ranks gather their prompts, all submit
  the same requests, and each keeps its own share of the results.
* Prompts go in as token ids, each request with its own seed. ``logprobs_mode=processed_logprobs``: the
  sampled tokens' log-probs come back after temperature and top-p, the distribution actually sampled
  from, which is what the trainer compares with its own (``sampling/logp_diff_*``).
* ``push_weights``: full HF-named tensors, one at a time, into every worker through vLLM's in-place
  ``reload_weights``; then the prefix cache is reset. The worker stores the weight version it received and
  returns it; ``generate(..., version=v)`` refuses to sample from an engine at another version.
* Sleep mode (GPU): after sampling, weights and KV cache are released (level 2: the next push rewrites
  every weight anyway); before the push the weights wake, after it the KV cache.

On vLLM's CPU build (how the tests run): no sleep mode; a seeded request whose prefill is split kills the
engine (``CPU Generator does not use offset``), so chunked prefill is off and the per-step token budget is
at least the longest sequence; the KV cache defaults to 1 GiB (``vllm.kv_cache_memory_bytes``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import torch

from t1.rollout.base import EngineError, Sample, SamplingParams, finish
from t1.rollout.config import VLLMConfig


class StaleEngineError(EngineError):
    """The engine holds other weights than the trainer expects (a push was skipped or failed)."""


def _set_version(worker, version: int) -> int:
    worker.t1_weight_version = version
    return version


def _reload(worker, weights: Iterable, version: int) -> int:
    worker.reload_weights(weights_iterator=weights)
    return _set_version(worker, version)


def _get_version(worker) -> int:
    return getattr(worker, "t1_weight_version", -1)


class VLLMEngine:
    shares_weights = False

    def __init__(self, model_path: str, tokenizer, cfg: VLLMConfig | None = None, *, max_len: int = 0):
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")
        from vllm import LLM

        self.cfg = cfg = cfg or VLLMConfig()
        self.tokenizer = tokenizer
        self.eos = tokenizer.eos_token_id
        self.cuda = torch.cuda.is_available()
        self.tp_group, self.tp = None, cfg.tensor_parallel_size
        kw: dict = {}
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # a distributed launch: one engine per rank (group)
            kw["distributed_executor_backend"] = "external_launcher"
            self.tp_group = _tp_group(self.tp)
        elif self.tp > 1:
            raise ValueError("vllm.tensor_parallel_size > 1 needs a distributed launch (accelerate launch / "
                             "torchrun) with that many ranks per node")
        max_model_len = cfg.max_model_len or max_len or None
        if self.cuda:
            kw.update(gpu_memory_utilization=cfg.gpu_memory_utilization, enable_sleep_mode=cfg.enable_sleep_mode)
            if cfg.kv_cache_memory_bytes:
                kw["kv_cache_memory_bytes"] = cfg.kv_cache_memory_bytes
            if cfg.max_num_batched_tokens:
                kw["max_num_batched_tokens"] = cfg.max_num_batched_tokens
        else:  # vLLM's CPU build: see the module docstring
            kw.update(kv_cache_memory_bytes=cfg.kv_cache_memory_bytes or (1 << 30), enable_chunked_prefill=False,
                      max_num_batched_tokens=max(cfg.max_num_batched_tokens, max_model_len or 0, 8192))
        eager = cfg.enforce_eager if cfg.enforce_eager is not None else not self.cuda
        rank = torch.distributed.get_rank() if self.tp_group is not None else 0
        try:
            self.llm = LLM(model=str(model_path), tokenizer=str(model_path), dtype=cfg.dtype,
                           max_model_len=max_model_len, tensor_parallel_size=self.tp,
                           max_num_seqs=cfg.max_num_seqs, enable_prefix_caching=cfg.enable_prefix_caching,
                           enforce_eager=eager, logprobs_mode="processed_logprobs",
                           seed=cfg.seed + rank // self.tp, skip_tokenizer_init=False, **kw)
            self._probe()  # kernels vLLM lacks for this shape fail at the first forward: fail here, in one line
        except Exception as e:  # noqa: BLE001 - vLLM refuses a model shape, dtype or memory setting: one line
            raise EngineError(refusal(model_path, e)) from None
        self.sleeping = False
        self.weight_version = self._versions(self.llm.collective_rpc(_set_version, args=(0,)))

    def _probe(self) -> None:
        """One greedy token from a one-token prompt (every rank of a tensor-parallel group runs it together)."""
        from vllm import SamplingParams as VSP
        from vllm.inputs import TokensPrompt

        self.llm.generate([TokensPrompt(prompt_token_ids=[0])], VSP(temperature=0.0, max_tokens=1),
                          use_tqdm=False)

    # ------------------------------------------------------------------------------------------ weights

    @staticmethod
    def _versions(replies: list) -> int:
        if not replies or len(set(replies)) != 1:
            raise StaleEngineError(f"vLLM workers disagree on the weight version: {replies}")
        return int(replies[0])

    def push_weights(self, weights: Iterable[tuple[str, torch.Tensor]], version: int) -> None:
        """Load new weights (HF names, full tensors, consumed one at a time) and mark them ``version``."""
        if self.sleeping:
            self.llm.wake_up(tags=["weights"])
        got = self._versions(self.llm.collective_rpc(_reload, args=(weights, version)))
        if got != version:
            raise StaleEngineError(f"vLLM engine reports weight version {got} after pushing version {version}")
        if self.sleeping:
            self.llm.wake_up(tags=["kv_cache"])
            self.sleeping = False
        self.llm.reset_prefix_cache()
        self.weight_version = version

    def engine_version(self) -> int:
        """The weight version the workers hold (asked from them, not remembered here)."""
        return self._versions(self.llm.collective_rpc(_get_version))

    def close(self) -> None:
        """Free the engine (its KV cache and weights) so that another can start in this process."""
        import gc

        self.llm = None
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()

    def sleep(self) -> None:
        """Release weights and KV cache until the next push (GPU, sleep mode on); a no-op elsewhere."""
        if self.cuda and self.cfg.enable_sleep_mode and not self.sleeping:
            self.llm.sleep(level=2)
            self.sleeping = True

    # ----------------------------------------------------------------------------------------- sampling

    def generate(self, prompts: list[list[int]], seeds: list[int], params: SamplingParams,
                 version: int | None = None) -> list[Sample]:
        held = None if version is None else self.engine_version()
        if held != version:
            raise StaleEngineError(f"vLLM engine holds weight version {held}, the trainer is at {version}: a "
                                   "weight push was skipped or failed")
        if self.sleeping:
            raise StaleEngineError("vLLM engine is asleep: push weights before sampling")
        if self.tp_group is None:
            return self._generate(prompts, seeds, params)
        # tensor parallel: every rank of the group submits the group's requests; each keeps its own share
        parts: list = [None] * self.tp
        torch.distributed.all_gather_object(parts, (prompts, seeds), group=self.tp_group)
        every = self._generate([p for ps, _ in parts for p in ps], [s for _, ss in parts for s in ss], params)
        start = sum(len(ps) for ps, _ in parts[: torch.distributed.get_rank(self.tp_group)])
        return every[start: start + len(prompts)]

    def _generate(self, prompts: list[list[int]], seeds: list[int], params: SamplingParams) -> list[Sample]:
        from vllm import SamplingParams as VSP
        from vllm.inputs import TokensPrompt

        if not prompts:
            return []
        greedy = params.temperature <= 0
        stops = params.stops(self.eos)
        sps = [VSP(temperature=0.0 if greedy else params.temperature, top_p=1.0 if greedy else params.top_p,
                   max_tokens=params.max_new_tokens, seed=s % (1 << 63), logprobs=0, detokenize=False,
                   stop_token_ids=list(stops))
               for s in seeds]
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompts], sps, use_tqdm=False)
        return [self._sample(o.outputs[0], stops) for o in outs]

    def _sample(self, c, stops: tuple[int, ...]) -> Sample:
        raw = list(c.token_ids)
        lps = [lp[t].logprob for lp, t in zip(c.logprobs or [], raw)] if c.logprobs else None
        ids, lps, finished = finish(raw, lps, c.finish_reason == "stop", stops)
        body = ids[:-1] if finished else ids
        return Sample(ids, self.tokenizer.decode(body, skip_special_tokens=True), finished, lps)


def refusal(model_path, error: Exception) -> str:
    """vLLM's refusal of a model (a 100-line traceback) as one line naming the model, the cause and what to do."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    cause = lines[-1] if lines else type(error).__name__
    hint = "; rollout.engine=fast (or generate) samples any model t1 can load"
    if "head_dim" in cause or "head size" in cause.lower():
        hint = ("; vLLM's CPU build has no attention kernel for this head size (hidden / heads): choose another "
                "shape, or rollout.engine=fast")
    return f"engine vllm: vLLM cannot run {model_path}: {type(error).__name__}: {cause[:300]}{hint}"


def _tp_group(tp: int):
    """The tensor-parallel group of this rank: consecutive ranks of one node."""
    world = torch.distributed.get_world_size()
    if world % tp:
        raise ValueError(f"vllm.tensor_parallel_size {tp} must divide the {world} training processes")
    ranks = [list(range(i, i + tp)) for i in range(0, world, tp)]
    group, _ = torch.distributed.new_subgroups_by_enumeration(ranks)
    return group

