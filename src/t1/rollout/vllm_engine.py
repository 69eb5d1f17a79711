"""``engine: vllm`` — vLLM's ``LLM`` inside every training process (TRL's "colocate" design).

* One engine per process, in-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``); with
  ``tensor_parallel_size = t > 1`` every group of t consecutive ranks of a node runs one tensor-parallel
  engine through vLLM's ``external_launcher`` executor: the group's ranks gather their prompts, all submit
  the same requests, and each keeps its own share of the results.
* Prompts go in as token ids, each request with its own seed where ``per_request_seeds`` (default: on CPU
  only — on GPU vLLM samples seeded requests one by one, see :meth:`VLLMEngine._generate`).
  ``logprobs_mode=processed_logprobs``: the sampled tokens' log-probs come back after temperature and top-p,
  the distribution actually sampled from, which is what the trainer compares with its own
  (``sampling/logp_diff_*``).
* ``push_weights``: full HF-named tensors, one at a time, into every worker through vLLM's in-place
  ``reload_weights``; then the prefix cache is reset. The worker stores the weight version it received and
  returns it; ``generate(..., version=v)`` refuses to sample from an engine at another version.
* ``t1 rl``'s engine (``training=True``) starts from random weights (``load_format="dummy"``) since the
  first push replaces every one (checked against the checkpoint's names), and runs in sleep mode (GPU): it
  sleeps from its creation on and after every sampling call — weights and KV cache released (level 2: the
  next push rewrites every weight anyway) — and before a push the weights wake, after it the KV cache. The
  trainer pushes right before sampling, so checkpoints and ``final/`` are written with vLLM asleep. Other
  stages read the checkpoint and never sleep: sleep mode means vLLM's CuMem allocator, of which a process
  may hold one instance (``gpu_worker.py`` ``_maybe_get_memory_pool_context``), and ``t1 scale`` may hold a
  summarizer's engine beside each model's.
* ``close()`` shuts the engine core down (its executor, worker, model-parallel groups and memory), keeping a
  process group the trainer made.

On vLLM's CPU build (how the tests run): no sleep mode; a seeded request whose prefill is split kills the
engine (``CPU Generator does not use offset``), so chunked prefill is off and the per-step token budget is
at least the longest sequence; the KV cache defaults to 1 GiB (``vllm.kv_cache_memory_bytes``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from pathlib import Path

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

    def __init__(self, model_path: str, tokenizer, cfg: VLLMConfig | None = None, *, max_len: int = 0,
                 training: bool = False):
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")
        from t1.rollout.vllm_version import check_installed

        check_installed()  # the vLLM series this code is written against, in one line before any work
        from vllm import LLM

        self.cfg = cfg = cfg or VLLMConfig()
        self.tokenizer = tokenizer
        self.eos = tokenizer.eos_token_id
        self.cuda = torch.cuda.is_available()
        self.training = training  # t1 rl: colocated with the trainer (its share of the GPU, sleep mode)
        self.sleep_mode = self.cuda and training and cfg.enable_sleep_mode
        self.per_request_seeds = cfg.per_request_seeds if cfg.per_request_seeds is not None else not self.cuda
        # t1 rl: the names the first push must carry (None: the checkpoint is read, no dummy weights)
        self.expected = _checkpoint_names(model_path) if training and cfg.dummy_weights else None
        self.tp_group, self.tp = None, cfg.tensor_parallel_size
        self.external = int(os.environ.get("WORLD_SIZE", "1")) > 1  # the process group is then the trainer's
        if self.external:  # a distributed launch: one engine per rank (group)
            self.tp_group = _tp_group(self.tp)
        elif self.tp > 1:
            raise ValueError("vllm.tensor_parallel_size > 1 needs a distributed launch (accelerate launch / "
                             "torchrun) with that many ranks per node")
        kw = self._llm_kwargs(max_len)
        rank = torch.distributed.get_rank() if self.tp_group is not None else 0
        try:
            self.llm = LLM(model=str(model_path), tokenizer=str(model_path), dtype=cfg.dtype,
                           tensor_parallel_size=self.tp, max_num_seqs=cfg.max_num_seqs,
                           enable_prefix_caching=cfg.enable_prefix_caching, logprobs_mode="processed_logprobs",
                           seed=cfg.seed + rank // self.tp, skip_tokenizer_init=False, **kw)
            self._probe()  # kernels vLLM lacks for this shape fail at the first forward: fail here, in one line
        except Exception as e:  # noqa: BLE001 - vLLM refuses a model shape, dtype or memory setting: one line
            raise EngineError(refusal(model_path, e)) from None
        self.sleeping = False
        # version −1 = random weights: sampling before the first push is refused
        start = -1 if self.expected is not None else 0
        self.weight_version = self._versions(self.llm.collective_rpc(_set_version, args=(start,)))

    def _llm_kwargs(self, max_len: int) -> dict:
        """``LLM``'s launch, memory, weight-loading and compile settings for this machine. Dummy weights (verl's
        ``load_format="dummy"`` for its colocated engines): every rank would otherwise read the whole fp32
        checkpoint (8 × 30 GB per node for 7B) only for the first push to overwrite it."""
        cfg = self.cfg
        kw: dict = {"load_format": "dummy" if self.expected is not None else "auto"}
        if self.external:
            kw["distributed_executor_backend"] = "external_launcher"
        kw["max_model_len"] = max_model_len = cfg.max_model_len or max_len or None
        if self.cuda:
            kw.update(gpu_memory_utilization=cfg.utilization(self.training), enable_sleep_mode=self.sleep_mode)
            if cfg.kv_cache_memory_bytes:
                kw["kv_cache_memory_bytes"] = cfg.kv_cache_memory_bytes
            if cfg.max_num_batched_tokens:
                kw["max_num_batched_tokens"] = cfg.max_num_batched_tokens
        else:  # vLLM's CPU build: see the module docstring
            kw.update(kv_cache_memory_bytes=cfg.kv_cache_memory_bytes or (1 << 30), enable_chunked_prefill=False,
                      max_num_batched_tokens=max(cfg.max_num_batched_tokens, max_model_len or 0, 8192))
        kw["enforce_eager"] = cfg.enforce_eager if cfg.enforce_eager is not None else not self.cuda
        return kw

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
        """Load new weights (HF names, full tensors, consumed one at a time) and mark them ``version``. Over
        dummy weights the first push must carry every weight of the checkpoint: vLLM only logs a weight a
        push lacks, which would leave it random."""
        pushed: set[str] = set()
        if self.expected is not None:
            weights = _named(weights, pushed)
        if self.sleeping:
            self.llm.wake_up(tags=["weights"])
        got = self._versions(self.llm.collective_rpc(_reload, args=(weights, version)))
        if self.expected is not None:
            missing = sorted(self.expected - pushed)
            if missing:
                raise EngineError(f"rollout.vllm.dummy_weights: the first weight push lacked {len(missing)} of "
                                  f"the checkpoint's weights (e.g. {missing[0]}), which vLLM would keep "
                                  "random; set rollout.vllm.dummy_weights=false")
            self.expected = None
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
        """Free the engine so that another can start in this process: shut its engine core down — executor,
        worker, model-parallel groups, memory (vLLM 0.32 ``EngineCore.shutdown``); ``InprocClient`` would
        otherwise do it only when the ``LLM`` is garbage-collected, which nothing guarantees (EngineCore
        ``gc.freeze()``s the objects made at start-up). Under a distributed launch the default process group
        is the trainer's: vLLM's shutdown destroys it (``cleanup_dist_env_and_memory`` →
        ``destroy_distributed_environment``), so there only vLLM's own groups go, and t1's tensor-parallel
        group with them."""
        import gc

        llm, self.llm = self.llm, None
        if llm is None:
            return
        shutdown = getattr(getattr(getattr(llm, "llm_engine", None), "engine_core", None), "shutdown", None)
        if shutdown is not None:
            with _trainer_group_kept() if self.external else contextlib.nullcontext():
                shutdown()
        if self.tp_group is not None and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group(self.tp_group)
            self.tp_group = None
        del llm, shutdown
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()

    def sleep(self) -> None:
        """Release weights and KV cache until the next push (``t1 rl`` on GPU, sleep mode on); a no-op
        elsewhere."""
        if self.sleep_mode and not self.sleeping:
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
        """Without per-request seeds the engine's seed alone drives sampling (as TRL does): vLLM 0.32 gives
        each seeded request its own generator and then draws ``q[i].exponential_(generator=…)`` request by
        request every decode step ("This can be slow", ``topk_topp_sampler.py`` ``random_sample``), and
        skips FlashInfer's sampler; a GPU run is not bit-exact anyway (README)."""
        from vllm import SamplingParams as VSP
        from vllm.inputs import TokensPrompt

        if not prompts:
            return []
        greedy = params.temperature <= 0
        stops = params.stops(self.eos)
        sps = [VSP(temperature=0.0 if greedy else params.temperature, top_p=1.0 if greedy else params.top_p,
                   max_tokens=params.max_new_tokens, seed=s % (1 << 63) if self.per_request_seeds else None,
                   logprobs=0, detokenize=False, stop_token_ids=list(stops))
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



def _checkpoint_names(model_path) -> frozenset[str] | None:
    """The weight names in a local checkpoint's safetensors files (headers only), without the rotary buffers
    vLLM skips (``AutoWeightsLoader``, ``models/utils.py``); None when there are none to read (a hub name,
    ``.bin`` files): vLLM then reads the checkpoint instead of starting from dummy weights."""
    from safetensors import safe_open

    files = sorted(Path(model_path).glob("*.safetensors")) if Path(model_path).is_dir() else []
    names: set[str] = set()
    for f in files:
        with safe_open(str(f), "pt") as fh:
            names.update(k for k in fh.keys() if "rotary_emb." not in k)
    return frozenset(names) or None


def _named(weights: Iterable, names: set[str]):
    """``weights`` as they are, noting each name in ``names``."""
    for name, tensor in weights:
        names.add(name)
        yield name, tensor


@contextlib.contextmanager
def _trainer_group_kept():
    """Within it, vLLM's ``destroy_distributed_environment`` (called by ``EngineCore.shutdown``) destroys
    vLLM's world group coordinator but not torch's default process group, which the trainer made and still
    uses (``end_distributed``'s barrier, further collectives)."""
    from vllm.distributed import parallel_state as ps

    def vllm_groups_only():
        if ps._WORLD:
            ps._WORLD.destroy()
        ps._WORLD = None
        ps._NODE_COUNT = None

    real, ps.destroy_distributed_environment = ps.destroy_distributed_environment, vllm_groups_only
    try:
        yield
    finally:
        ps.destroy_distributed_environment = real
