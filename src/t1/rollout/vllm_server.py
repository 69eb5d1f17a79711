"""``engine: vllm_server`` — sample from M running ``vllm serve`` instances; push each step's weights to them.

Servers run with ``VLLM_SERVER_DEV_MODE=1`` (the weight routes exist only then) and ``--logprobs-mode
processed_logprobs`` (sampled tokens' log-probs after temperature and top-p, what the trainer compares with
its own); both are checked at construction (bounded by ``sync_timeout``). Recipe: ``docs/multinode.md``.

* Sampling: prompts go as token ids to ``POST {url}/v1/completions``. A run of identical consecutive prompts
  (the K samples of one prompt) is one request with ``n = K`` — the server's prefix cache shares the prompt —
  and the seed of the run's *first* sample: vLLM seeds sample k with ``seed + k``, so samples are
  reproducible per (prompt, seed of its group) and the other seeds are unused. Runs over 64 are split with
  the same seeds. Requests go round-robin over the servers (offset by the training rank), ``concurrency`` in
  flight per server, each bounded by a time-out and retried ``max_retries`` times (``post_json``); a
  malformed reply or a dead server raises a one-line ``ServerError`` naming the server. Token ids come back
  exactly (``return_tokens_as_token_ids``) and are checked (integers within the model's vocabulary, at most
  ``max_tokens``: ``t1.rollout.openai.token_ids``), their log-probs too (finite, ≤ 0:
  ``t1.rollout.base.check_logprobs``), the server's end-of-sequence token included; a sample that
  stopped without it gets one appended with log-prob 0.0 (as ``t1.rollout.openai``). Text is decoded here
  without special tokens. Knobs a ``generation_config.json`` could set on the server (top-k, min-p,
  penalties) are sent switched off.
* Request time-out: ``max(timeout, waves × max_tokens / decode_tokens_per_s)``, where waves = this step's
  samples on that server (every training rank sends as many as this one: ``t1 rl`` splits a step evenly)
  over the sequences it decodes at once (``max_num_seqs`` × data-parallel size, and no more than its KV
  cache holds at prompt + budget tokens each: both from ``/server_info``).
  vLLM schedules first come, first served and a request's clock starts when it is *sent* (requests not yet
  sent wait here untimed), but a sent request can still queue on the server behind every other rank's: the
  step's whole work on that server bounds its wait, whatever the queue. Lowering ``concurrency`` instead
  cannot help (ranks do not coordinate: 32 ranks × 1 request × n = 64 already fill 8 waves of 256).
* Start-up checks: each server's vLLM series (``GET /version``, where the server has it:
  :mod:`t1.rollout.vllm_version`), its dtype (weights are pushed in it, ``dtype: auto``), its batch size.
* ``generate(..., version=v)`` first asks every server's ``GET /weight_info`` and raises ``StaleEngineError``
  unless each reports ``str(v)``.
* ``weight_sync: disk`` (works anywhere, CPUs included): every process iterates the weights (gathers are
  collectives); the main process (``torch.distributed`` rank 0, else this one) writes safetensors into
  ``sync_dir`` (default ``<run dir>/engine_weights``, readable by every server at the same path) and asks
  each server to ``reload_weights`` from it (``/collective_rpc``), reset its prefix cache and take the
  version (``/update_weight_version``). Tensors are written in the servers' dtype (bf16 on GPUs: half of fp32's
  bytes; ``t1.rollout.weights.engine_copy``).
* ``weight_sync: nccl``: vLLM's trainer-side NCCL weight transfer (``vllm.distributed.weight_transfer``). At
  the first push the main process opens the group through ``NCCLTrainerWeightTransferEngine.trainer_init``
  (rank 0 at ``nccl_host:nccl_port``; server i's workers take the ranks after servers 0..i-1's); a push is
  ``start_weight_update``, per ~1 GiB chunk ``update_weights`` (names, dtypes, shapes) while the chunk is
  broadcast tensor by tensor (in the servers' dtype), then ``finish_weight_update``, a prefix-cache reset and
  the version, as the disk path: vLLM's ``finish_weight_update`` only finalises the reload
  (``AsyncLLM.finish_weight_update`` → ``Worker.finish_weight_update``), so without the reset the next step
  would reuse KV blocks of every shared prompt prefix computed with the old weights. ``nccl_host``: see
  :func:`nccl_address`. Servers need ``--weight-transfer-config '{"backend": "nccl"}'``. Written from vLLM
  0.32's code: untested on hardware in CI (no GPU there).

An API key in ``VLLM_API_KEY`` (what ``vllm serve`` reads) is sent as a bearer token, never shown.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import urllib.parse
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from t1.config import ConfigError
from t1.rollout.base import Sample, SamplingParams, finish, shown
from t1.rollout.config import MAX_TIMEOUT, VLLMServerConfig
from t1.rollout.openai import ServerError, get_json, post_json, reply_limit, scrubbed, token_ids, token_logprobs
from t1.rollout.vllm_engine import StaleEngineError
from t1.rollout.vllm_version import check_installed, check_server
from t1.rollout.weights import engine_copy, write_safetensors

DEV_MODE = ("the weight routes are missing: start `vllm serve` with the environment variable "
            "VLLM_SERVER_DEV_MODE=1")
MAX_N = 64  # samples per request
CHUNK_BYTES = 1 << 30  # nccl sync: tensors held (copied) per update_weights call
DTYPES = ("bfloat16", "float16", "float32")


def _rank(default: int = 0) -> int:
    """This process's ``torch.distributed`` rank, ``default`` when it is not initialized."""
    dist = torch.distributed
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else default


def _world() -> int:
    """Training processes sampling at once (``torch.distributed``, else ``WORLD_SIZE``, else 1)."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def _groups(prompts: list[list[int]], seeds: list[int]) -> list[tuple[int, int, int]]:
    """(start, n, seed) per request: runs of identical consecutive prompts, at most MAX_N samples each; a
    split run continues its first sample's seed (vLLM seeds sample k of a request with seed + k)."""
    out, start = [], 0
    for i in range(1, len(prompts) + 1):
        if i == len(prompts) or prompts[i] != prompts[start]:
            for s in range(start, i, MAX_N):
                out.append((s, min(MAX_N, i - s), seeds[start] % (1 << 62) + (s - start)))
            start = i
    return out


class VLLMServerEngine:
    shares_weights = False

    def __init__(self, tokenizer, cfg: VLLMServerConfig | None = None, run_dir: str | None = None,
                 vocab_size: int = 0):
        self.cfg = cfg = cfg or VLLMServerConfig()
        self.urls = [u.rstrip("/") for u in cfg.urls]
        if not self.urls:
            raise ValueError("vllm_server.urls: needs at least one server")
        self.tokenizer, self.eos = tokenizer, tokenizer.eos_token_id
        self.vocab_size = vocab_size or len(tokenizer)  # ids a reply may hold: the model's embedding rows
        self.api_key = os.environ.get("VLLM_API_KEY") or None
        self.run_dir = run_dir
        self.rank = _rank(int(os.environ.get("RANK", "0")))  # offsets the round-robin
        self.weight_version: int | None = None
        self._nccl = None
        checked = self._each(self._check)
        self.models = [m for m, _, _ in checked]
        self.capacity = [c for _, _, c in checked]  # (sequences, KV-cache tokens) of each server
        self.push_dtype = _push_dtype(cfg.dtype, [d for _, d, _ in checked])

    # ------------------------------------------------------------------------------------------- HTTP

    def _get(self, url: str, path: str, timeout: float, missing: str | None = None) -> dict:
        """GET a JSON object; one attempt (a dead server fails here at once). ``missing``: the message of a 404."""
        try:
            return get_json(url + path, api_key=self.api_key, timeout=timeout)
        except ServerError as e:
            if e.status == 404 and missing:
                raise ServerError(f"{url}: {missing}", 404) from None
            raise

    def _post(self, url: str, path: str, body: dict, retries: int | None = None) -> dict:
        """An administrative POST (weights), bounded by ``sync_timeout``."""
        return post_json(url + path, body, api_key=self.api_key, timeout=self.cfg.sync_timeout,
                         max_retries=self.cfg.max_retries if retries is None else retries)

    def _each(self, fn) -> list:
        """``fn(url)`` on every server at once; the first failure is raised once all have answered."""
        with ThreadPoolExecutor(len(self.urls)) as pool:
            return list(pool.map(fn, self.urls))

    def _check(self, url: str) -> tuple[str, str | None, tuple[int, int]]:
        """Dev mode and processed log-probs on, a supported vLLM; (served model's name, its dtype, its
        :func:`_capacity`). ``/server_info``'s ``vllm_config`` is vLLM's config dumped to JSON (torch dtypes
        as ``str``: ``"torch.bfloat16"``, ``entrypoints/serve/dev/server_info/api_router.py``)."""
        timeout = self.cfg.sync_timeout
        self._get(url, "/weight_info", timeout, missing=DEV_MODE)
        version = self._version(url, timeout)
        if version is not None:
            check_server(url, version)
        info = self._get(url, "/server_info?config_format=json", timeout, missing=DEV_MODE)
        try:
            config = info["vllm_config"]
            mode = config["model_config"]["logprobs_mode"]
        except (KeyError, TypeError):
            raise ServerError(f"{url}/server_info: no logprobs_mode in {shown(info)}") from None
        if mode != "processed_logprobs":
            raise ServerError(f"{url}: returns {mode!r} log-probs; start `vllm serve` with "
                              "--logprobs-mode processed_logprobs")
        return self._model_name(url, timeout), _served_dtype(config), _capacity(config)

    def _version(self, url: str, timeout: float):
        """The server's vLLM version (``GET /version``), None where it has no such route (404)."""
        try:
            return self._get(url, "/version", timeout).get("version")
        except ServerError as e:
            if e.status == 404:
                return None
            raise

    def _model_name(self, url: str, timeout: float) -> str:
        if self.cfg.model:
            return self.cfg.model
        models = self._get(url, "/v1/models", timeout)
        try:
            name = models["data"][0]["id"]
            if not isinstance(name, str) or not 0 < len(name) <= 1000:
                raise TypeError
            return name
        except (KeyError, IndexError, TypeError):
            raise ServerError(f"{url}/v1/models: malformed reply: {shown(models)}") from None

    # ----------------------------------------------------------------------------------------- sampling

    def server_versions(self) -> list[str | None]:
        """Every server's weight version (``GET /weight_info``), as strings."""
        def one(url):
            v = self._get(url, "/weight_info", self.cfg.timeout).get("weight_version")
            return None if v is None else shown(v)
        return self._each(one)

    def generate(self, prompts: list[list[int]], seeds: list[int], params: SamplingParams,
                 version: int | None = None) -> list[Sample]:
        """One sample per prompt, in order (see the module docstring for seeds)."""
        if len(seeds) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
        if version is not None:
            got = self.server_versions()
            stale = {u: v for u, v in zip(self.urls, got) if v != str(version)}
            if stale:
                raise StaleEngineError(f"vLLM servers hold other weights than version {version}: {stale}; "
                                       "a weight push was skipped or failed")
        if not prompts:
            return []
        pools = [ThreadPoolExecutor(self.cfg.concurrency) for _ in self.urls]
        longest = max(map(len, prompts)) + params.max_new_tokens
        timeouts = [self.request_timeout(s, len(prompts), params.max_new_tokens, longest)
                    for s in range(len(self.urls))]
        try:
            futures = []
            for g, (start, n, seed) in enumerate(_groups(prompts, seeds)):
                s = (g + self.rank) % len(self.urls)
                futures.append(pools[s].submit(self._request, s, prompts[start], n, seed, params, timeouts[s]))
            return [sample for f in futures for sample in f.result()]
        finally:  # on a failure, requests not yet sent are dropped; those in flight end within their time-out
            for pool in pools:
                pool.shutdown(wait=False, cancel_futures=True)

    def request_timeout(self, s: int, samples: int, budget: int, longest: int = 0) -> float:
        """Seconds a request to server ``s`` may take when this process samples ``samples`` × ``budget``
        tokens (``longest``: prompt + budget): the step's work on that server at ``decode_tokens_per_s``
        (module docstring), at least ``timeout``, at most a day."""
        seqs, kv_tokens = self.capacity[s]
        at_once = max(1, min(seqs, kv_tokens // max(1, longest))) if kv_tokens else seqs
        on_server = -(-samples * _world() // len(self.urls))
        waves = -(-on_server // at_once)
        return min(MAX_TIMEOUT, max(self.cfg.timeout, waves * budget / self.cfg.decode_tokens_per_s))

    def _request(self, s: int, prompt: list[int], n: int, seed: int, params: SamplingParams,
                 timeout: float) -> list[Sample]:
        greedy = params.temperature <= 0
        payload = {"model": self.models[s], "prompt": list(prompt), "n": n, "seed": seed,
                   "max_tokens": params.max_new_tokens, "temperature": 0.0 if greedy else params.temperature,
                   "top_p": 1.0 if greedy else params.top_p, "top_k": 0, "min_p": 0.0, "repetition_penalty": 1.0,
                   "presence_penalty": 0.0, "frequency_penalty": 0.0, "logprobs": 0,
                   "return_tokens_as_token_ids": True, "stop_token_ids": list(params.stops(self.eos))}
        url = self.urls[s] + "/v1/completions"
        reply = post_json(url, payload, api_key=self.api_key, timeout=timeout,
                          max_retries=self.cfg.max_retries, max_bytes=reply_limit(n * params.max_new_tokens))
        return scrubbed(self.api_key, self._samples, url, reply, n, params)

    def _samples(self, url: str, reply: dict, n: int, params: SamplingParams) -> list[Sample]:
        try:  # choices 0..n-1, each once, in any order (an index that is not an int is malformed)
            choices = reply["choices"]
            by_index = {c["index"]: c for c in choices if type(c["index"]) is int}
            if not isinstance(choices, list) or len(choices) != n or sorted(by_index) != list(range(n)):
                raise ValueError
            return [self._sample(url, by_index[k], params) for k in range(n)]
        except (KeyError, IndexError, TypeError, ValueError, AttributeError, RecursionError):
            raise ServerError(f"{url}: malformed completion reply: {shown(reply)}") from None

    def _sample(self, url: str, choice: dict, params: SamplingParams) -> Sample:
        lp = choice["logprobs"]
        # checked: the trainer indexes them
        raw = token_ids(url, lp["tokens"], self.vocab_size, params.max_new_tokens)
        lps = token_logprobs(url, lp["token_logprobs"], len(raw))
        ids, lps, finished = finish(raw, lps, choice["finish_reason"] == "stop", params.stops(self.eos))
        body = ids[:-1] if finished else ids
        return Sample(ids, self.tokenizer.decode(body, skip_special_tokens=True), finished, lps)

    def sleep(self) -> None:
        """Servers keep their own memory: nothing to do."""

    # ------------------------------------------------------------------------------------------ weights

    def push_weights(self, weights: Iterable[tuple[str, torch.Tensor]], version: int) -> None:
        """Hand (HF name, full tensor) pairs to every server as ``version``; every process must call this."""
        if self.cfg.weight_sync == "nccl":
            self._push_nccl(weights, version)
        else:
            self._push_disk(weights, version)
        self.weight_version = version

    def _push_disk(self, weights, version: int) -> None:
        if self.cfg.sync_dir:
            directory = Path(self.cfg.sync_dir)
        elif self.run_dir:
            directory = Path(self.run_dir) / "engine_weights"
        else:
            raise ValueError("vllm_server.weight_sync=disk needs vllm_server.sync_dir (or a run directory)")
        directory = directory.resolve()
        main = _rank() == 0  # asked now: the process group may have started after this engine
        write_safetensors(weights, directory, version, write=main, dtype=self.push_dtype)
        if main:
            self._each(lambda url: self._reload(url, str(directory), version))

    def _reload(self, url: str, path: str, version: int) -> None:
        # not retried: a failed reload (e.g. a path the server cannot see) kills vLLM's engine; show its reason
        self._post(url, "/collective_rpc", {"method": "reload_weights", "kwargs": {"weights_path": path}},
                   retries=0)
        self._publish(url, version)

    def _publish(self, url: str, version: int) -> None:
        """After new weights: drop the KV blocks computed with the old ones, then announce the version (a
        sampler checks it). vLLM refuses the reset (``success: false``) while blocks are held by running
        requests (``entrypoints/serve/dev/cache/api_router.py``): none run during a push."""
        if not self._post(url, "/reset_prefix_cache", {}).get("success", False):
            raise ServerError(f"{url}: could not reset its prefix cache after the weight update")
        self._post(url, "/update_weight_version", {"new_version": str(version)})

    def _push_nccl(self, weights, version: int) -> None:
        if _rank() != 0:
            for _ in weights:  # the gathers are collectives
                pass
            return
        if self._nccl is None:
            self._nccl = self._init_nccl()
        group, client = self._nccl.model_update_group, self._nccl.client
        client.start_weight_update()
        side = ThreadPoolExecutor(1)
        try:
            for chunk in _chunks(weights, CHUNK_BYTES, self.push_dtype):
                meta = {"names": [n for n, _ in chunk], "shapes": [list(t.shape) for _, t in chunk],
                        "dtype_names": [str(t.dtype).split(".")[-1] for _, t in chunk]}
                receiving = side.submit(client.update_weights, meta)  # the servers wait in the broadcast
                if receiving.done():  # refused at once (as vLLM's trainer engine): do not wait for peers
                    receiving.result()
                stream = torch.cuda.current_stream()
                for _, t in chunk:
                    group.broadcast(t, src=0, stream=stream)
                receiving.result()
            torch.cuda.current_stream().synchronize()
        finally:  # never join a thread stuck in a broken NCCL call
            side.shutdown(wait=False)
        client.finish_weight_update(None)  # the version comes after the cache reset
        self._each(lambda url: self._publish(url, version))

    def _init_nccl(self):
        try:
            import vllm
        except ImportError:
            raise ConfigError("rollout.vllm_server.weight_sync: nccl needs vLLM on the training nodes too — "
                              "pip install 'vllm==0.32.*' there (or weight_sync=disk)") from None
        check_installed(getattr(vllm, "__version__", "unknown"))
        from vllm.distributed.weight_transfer import ModuleSource
        from vllm.distributed.weight_transfer.nccl_engine import NCCLTrainerInitInfo as Info
        from vllm.distributed.weight_transfer.nccl_engine import NCCLTrainerWeightTransferEngine as Trainer

        def workers(url: str) -> int:  # TP × PP × DP
            n = self._get(url, "/get_world_size", self.cfg.sync_timeout, DEV_MODE).get("world_size")
            if not isinstance(n, int) or n < 1:
                raise ServerError(f"{url}/get_world_size: malformed reply: {n!r}")
            return n

        sizes = self._each(workers)
        info = Info(master_address=nccl_address(self.cfg.nccl_host, self.urls), master_port=self.cfg.nccl_port,
                    world_size=1 + sum(sizes), packed=False, rank=0)
        # the source is unused: pushes drive the broadcast themselves (their weights arrive one at a time)
        return Trainer.trainer_init(info, client=_Servers(self, sizes), source=ModuleSource(torch.nn.Module()))

    def close(self) -> None:
        """Leave the NCCL weight-transfer group (the servers keep running)."""
        if self._nccl is not None:
            nccl, self._nccl = self._nccl, None
            self._each(lambda url: self._post(url, "/shutdown_weight_transfer_engine", {}, retries=0))
            nccl.shutdown()


def _served_dtype(config) -> str | None:
    """The dtype a server holds its weights in (``model_config.dtype``: ``"torch.bfloat16"``), None if unknown."""
    dtype = config.get("model_config", {}).get("dtype") if isinstance(config, dict) else None
    name = dtype.removeprefix("torch.") if isinstance(dtype, str) else None
    return name if name in DTYPES else None


def _capacity(config) -> tuple[int, int]:
    """(sequences a server decodes at once, its KV-cache tokens; 0: unknown). Sequences: ``max_num_seqs`` (per
    data-parallel rank, vLLM's ``SchedulerConfig``) × ``data_parallel_size``, 1 where it does not say (the
    time-out only grows). KV tokens: ``cache_config.num_gpu_blocks`` (the API process sums its engines' after
    start-up, ``v1/engine/core_client.py``) × ``block_size``: fewer full-length sequences may fit than
    ``max_num_seqs`` (a 32B server's KV holds ~100 of 17k tokens), and vLLM preempts the rest."""
    def whole(*path):
        value = config
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        return value if type(value) is int and value >= 1 else None

    seqs, dp = whole("scheduler_config", "max_num_seqs"), whole("parallel_config", "data_parallel_size") or 1
    blocks, size = whole("cache_config", "num_gpu_blocks"), whole("cache_config", "block_size")
    return (seqs * dp if seqs else 1), (blocks * size if blocks and size else 0)


def _push_dtype(configured: str, served: list[str | None]) -> torch.dtype | None:
    """The dtype pushed weights travel in: ``configured``, or (auto) the servers' own — vLLM casts what it
    receives to it anyway (:func:`t1.rollout.weights.engine_copy`), so fp32 stays fp32 for an fp32 server
    (the CPU tests) and a bf16 GPU server gets half the bytes. Servers of different dtypes, or one that does
    not say: no cast (each casts for itself)."""
    if configured != "auto":
        return getattr(torch, configured)
    kinds = set(served)
    return getattr(torch, kinds.pop()) if len(kinds) == 1 and None not in kinds else None


def nccl_address(configured: str, urls: list[str]) -> str:
    """The IPv4 address of this trainer for the NCCL weight-transfer rendezvous.

    vLLM's rank 0 *binds* its TCP store to it (``StatelessProcessGroup.create``: an ``AF_INET`` socket,
    ``listen_socket.bind((host, port))``, ``vllm/distributed/utils.py``) and the servers connect to it, so it
    must be this host's address on the servers' network. A host name is resolved here, as vLLM would: on
    stock Ubuntu the host's own name (and ``socket.getfqdn()``) maps to 127.0.1.1 in ``/etc/hosts``, which
    no other node reaches. Empty: the source address of a route to the first remote server (a UDP socket
    "connected" there: no packet is sent). A loopback address while a server is remote is refused."""
    hosts = [urllib.parse.urlsplit(u).hostname or "" for u in urls]
    remote = [h for h in hosts if not ipaddress.ip_address(_ip(h) or "0.0.0.0").is_loopback]
    target = (remote or hosts)[0]
    address = _ip(configured) if configured else _route_to(target)
    if address is None:
        what = f"cannot resolve {configured!r} here" if configured else f"no route to the server host {target}"
        raise ConfigError(f"rollout.vllm_server.nccl_host: {what}; set it to this node's IPv4 address on the "
                          "servers' network")
    if remote and ipaddress.ip_address(address).is_loopback:
        raise ConfigError(f"rollout.vllm_server.nccl_host: {configured or 'this host'} is {address} here, a "
                          f"loopback address the server {remote[0]} cannot reach; set it to this node's IPv4 "
                          "address on the servers' network")
    return address


def _ip(host: str) -> str | None:
    """``host``'s IPv4 address as resolved here (an address as is), None if it does not resolve."""
    try:
        return socket.gethostbyname(host)
    except (OSError, UnicodeError):
        return None


def _route_to(host: str) -> str | None:
    """The local address this host would send from to ``host`` (a connected UDP socket sends nothing)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((host, 9))
            return s.getsockname()[0]
    except (OSError, UnicodeError):
        return None


def _chunks(weights, limit: int, dtype: torch.dtype | None = None) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """Copies of the pairs on this GPU in ``dtype`` (each tensor is valid only until the next is drawn), a
    chunk closed as soon as it holds ``limit`` bytes. After a failed push the NCCL group is unusable (as in
    vLLM)."""
    chunk, size = [], 0
    for name, t in weights:
        chunk.append((name, engine_copy(t, torch.cuda.current_device(), dtype)))
        size += chunk[-1][1].numel() * chunk[-1][1].element_size()
        if size >= limit:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


class _Servers:
    """vLLM's ``VLLMWeightSyncClient`` over every server at once (``HTTPVLLMWeightSyncClient`` drives one
    server, and the trainer engine gives it NCCL rank offset 1): server i's workers take the ranks after the
    trainer's (0) and those of servers 0..i-1. Calls are not retried (an NCCL rendezvous cannot be)."""

    def __init__(self, engine: VLLMServerEngine, sizes: list[int]):
        self.engine, self.offsets = engine, [1 + sum(sizes[:i]) for i in range(len(sizes))]

    def _all(self, path: str, body) -> None:
        e = self.engine
        with ThreadPoolExecutor(len(e.urls)) as pool:
            list(pool.map(lambda i: e._post(e.urls[i], path, body(i), retries=0), range(len(e.urls))))

    def init_weight_transfer_engine(self, init_info: dict) -> None:
        try:
            self._all("/init_weight_transfer_engine",
                      lambda i: {"init_info": dict(init_info, rank_offset=self.offsets[i])})
        except ServerError as err:
            raise ServerError(f"{err} (start every server with --weight-transfer-config "
                              "'{\"backend\": \"nccl\"}' and let it reach nccl_host:nccl_port)") from None

    def start_weight_update(self) -> None:
        self._all("/start_weight_update", lambda i: {})

    def update_weights(self, update_info) -> None:
        self._all("/update_weights", lambda i: {"update_info": update_info})

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        self._all("/finish_weight_update", lambda i: {"weight_version": weight_version})
