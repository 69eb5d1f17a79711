"""Trainer state under FSDP: the KL anchor sharded like the policy, and full (gathered) state for checkpoints.

Under FSDP the anchor is wrapped with the policy's own FSDP settings (accelerate's plugin: auto-wrap policy,
sharding strategy, mixed precision, offload, use_orig_params), as verl and TRL shard their reference models,
so each process holds 1/world of it in fp32 and its forward gathers bf16 weights one unit at a time like the
policy's. Identical wrapping of identical architectures gives identically shaped local shards in the same
order, so the EMA θ_ref ← λ θ_ref + (1 − λ) θ and the reset run shard against shard with no communication
(:func:`local_pairs`). With no backward after its forward, the anchor must not stay gathered: FSDP2 wraps it
to reshard after every forward, and FSDP1, which keeps its root unit gathered after a forward (for the
backward that would follow), is released by hand (:func:`release`) — else the next forward would reuse the
stale gathered root (embeddings, final norm, lm_head from before the EMA moved them).

Checkpoints hold the anchor, like the policy, as a full state dict with Hugging Face names, gathered one
parameter at a time to the main process's CPU (:func:`full_state_dict`); a resume loads it into the
unsharded copy before wrapping, so any number of processes can resume any run. The policy's and the
optimizer's state under FSDP: :mod:`t1.runtime.sharded_state`, shared with `t1 sft`.

Tested on CPU processes over gloo with accelerate's FSDP (versions 1 and 2) forced on (accelerate enables
FSDP only on accelerators): tests/rl/test_shard.py — the sharded EMA/reset against the unsharded one, and `t1
rl` runs that match one process and resume exactly (activation checkpointing in the former only). Not tested:
GPUs, NCCL, bf16 mixed precision under FSDP, CPU offload. DeepSpeed ZeRO-3 with an anchor is refused:
DeepSpeed is not installed here to build and test the equivalent (its partitions and bf16 weights).
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import torch

from t1.config import ConfigError
from t1.rollout.weights import clean_name, full_parameters
from t1.runtime import sharded_state
from t1.runtime.sharded_state import sharding  # noqa: F401  (re-exported: the anchor and tests ask here)


def check_launch(acc, how: str, engine: str, anchor: bool) -> None:
    """Refuse, before anything is loaded onto the devices, what the trainer cannot run sharded: an engine that
    samples from the policy's own (split) weights, FSDP1 without use_orig_params (the optimizer is built on
    the model's own parameters before accelerate wraps it), an anchor under DeepSpeed ZeRO-3."""
    if not how:
        return
    if engine in ("fast", "generate"):
        raise ConfigError(f"rollout.engine: {engine} samples from the policy's own weights, which {how} splits "
                          "over the processes; use vllm or vllm_server")
    if how == "fsdp1" and not acc.state.fsdp_plugin.use_orig_params:
        raise ConfigError("FSDP: launch with --fsdp_use_orig_params true (t1 builds the optimizer on the model's "
                          "own parameters)")
    if how == "zero3" and anchor:
        raise ConfigError("anchor: DeepSpeed ZeRO-3 cannot shard the KL anchor in t1 (FSDP can: accelerate "
                          "launch --use_fsdp); or anchor.mode=none / algo.kl_beta=0")


def shard_like_policy(acc, module: torch.nn.Module) -> torch.nn.Module:
    """``module`` (frozen, on CPU or the device) wrapped the way ``acc.prepare`` wrapped the policy under
    FSDP, or moved to the device when nothing is sharded. Raises ConfigError under DeepSpeed ZeRO-3.

    Under FSDP ``module``'s parameters may be on the meta device (:func:`meta_copy`): it is then sharded
    without weights and each process allocates only its shards, uninitialised — the caller fills them
    (:func:`local_pairs`), so no process ever holds the whole module."""
    how = sharding(acc)
    meta = any(p.is_meta for p in module.parameters())
    if how == "fsdp2":
        from accelerate.utils.fsdp_utils import fsdp2_prepare_model

        plugin = acc.state.fsdp_plugin
        ram_efficient = plugin.cpu_ram_efficient_loading  # its rank-0 broadcast has nothing to send on meta
        plugin.cpu_ram_efficient_loading = ram_efficient and not meta
        try:
            module = fsdp2_prepare_model(acc, module)
        finally:
            plugin.cpu_ram_efficient_loading = ram_efficient
        if meta:
            _materialize(module, acc.device)
        # no backward follows the anchor's forward: free every gathered unit after it (accelerate keeps the root
        # and the embedding/lm_head unit gathered until the backward, which would leave them whole)
        module.set_reshard_after_forward(True, recurse=True)
        return module
    if how == "fsdp1":
        return _fsdp1(acc, module, meta)
    if how == "zero3":
        raise ConfigError("anchor: DeepSpeed ZeRO-3 cannot shard the KL anchor in t1 (FSDP can: accelerate "
                          "launch --use_fsdp); or anchor.mode=none / algo.kl_beta=0")
    return module.to(acc.device)


def release(module: torch.nn.Module) -> None:
    """Free the FSDP1 root unit's gathered weights after a forward without a backward (the anchor's). FSDP1
    keeps the root gathered after its forward for the backward that follows in training; with none, it would
    stay whole for good and, as the next forward finds it gathered and does not gather again, every later
    forward would read the root's weights (embeddings, final norm, lm_head) from before the EMA moved them.
    FSDP2 needs nothing (the anchor is wrapped to reshard after every forward). Uses FSDP1's FlatParamHandle
    (torch 2.13): an AttributeError here means torch changed it."""
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    if not isinstance(module, FSDP) or module._is_root is None:  # no forward yet: nothing gathered
        return
    handle = module._handle
    if handle is not None and handle.uses_sharded_strategy and not handle.needs_unshard():
        handle.reshard(True)
        handle.post_reshard()
        handle._prefetched = False


def meta_copy(module: torch.nn.Module) -> torch.nn.Module:
    """A frozen copy of ``module`` whose parameters are on the meta device (no memory; ties kept) and whose
    buffers (rotary frequencies: small) are copied: the anchor before FSDP shards it
    (:func:`shard_like_policy`)."""
    import copy

    memo = {id(p): torch.nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=False)
            for p in module.parameters()}
    return copy.deepcopy(module, memo=memo)


def _materialize(module: torch.nn.Module, device) -> None:
    """Allocate an FSDP2-sharded meta module's local shards on ``device`` (uninitialised), keeping its buffers
    (``to_empty`` would leave them uninitialised too)."""
    buffers = {name: b.clone() for name, b in module.named_buffers() if not b.is_meta}
    module.to_empty(device=device)
    with torch.no_grad():
        for name, b in module.named_buffers():
            if name in buffers:
                b.copy_(buffers[name])


def _fsdp1_init(device):
    """FSDP1's ``param_init_fn`` for a meta module: each unit's own parameters allocated on ``device``
    (uninitialised; tied ones once), its buffers left as they are."""
    made: dict[int, torch.nn.Parameter] = {}

    def init(m: torch.nn.Module) -> None:
        for name, p in list(m._parameters.items()):
            if p is not None and p.is_meta:
                if id(p) not in made:
                    made[id(p)] = torch.nn.Parameter(torch.empty_like(p, device=device), requires_grad=False)
                m._parameters[name] = made[id(p)]
    return init


def _fsdp1(acc, module: torch.nn.Module, meta: bool = False) -> torch.nn.Module:
    """FSDP1 with the keyword arguments accelerate's ``prepare_model`` passes for the policy (accelerate 1.x);
    a meta ``module`` gets its shards allocated and nothing broadcast (the caller fills them)."""
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    plugin = acc.state.fsdp_plugin
    plugin.set_auto_wrap_policy(module)  # the policy's class: the same layers wrapped (a no-op once set)
    kwargs = {"sharding_strategy": plugin.sharding_strategy or plugin.reshard_after_forward,
              "cpu_offload": plugin.cpu_offload, "auto_wrap_policy": plugin.auto_wrap_policy,
              "mixed_precision": plugin.mixed_precision_policy, "sync_module_states": plugin.sync_module_states,
              "backward_prefetch": plugin.backward_prefetch, "forward_prefetch": plugin.forward_prefetch,
              "use_orig_params": plugin.use_orig_params, "limit_all_gathers": plugin.limit_all_gathers,
              "device_id": acc.device}
    if meta:
        kwargs.update(param_init_fn=_fsdp1_init(acc.device), sync_module_states=False)
    ignored = plugin.ignored_modules
    if isinstance(ignored, str):  # accelerate's regex over module names
        pattern = re.compile(ignored)
        ignored = [m.to(acc.device) for name, m in module.named_modules() if pattern.fullmatch(name)]
    if ignored is not None:
        kwargs["ignored_modules"] = ignored
    return FSDP(module, **kwargs)


def local(t: torch.Tensor) -> torch.Tensor:
    """This process's shard of a parameter: a DTensor's local tensor (FSDP2); FSDP1's parameters outside a
    forward are their local shards (flat or views) already; whole tensors are their own shard."""
    return t.to_local() if hasattr(t, "to_local") else t


def local_pairs(ref: torch.nn.Module, cur: torch.nn.Module) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(anchor shard, policy shard) for every parameter, checked to have the same name and local shape."""
    a, b = list(ref.named_parameters()), list(cur.named_parameters())
    if len(a) != len(b):
        raise RuntimeError(f"anchor and policy hold {len(a)} and {len(b)} parameters: not wrapped alike")
    for (na, pa), (nb, pb) in zip(a, b):
        la, lb = local(pa), local(pb)
        if clean_name(na) != clean_name(nb) or la.shape != lb.shape:
            raise RuntimeError(f"anchor {na} {tuple(la.shape)} and policy {nb} {tuple(lb.shape)}: "
                               "not wrapped alike")
        yield la, lb


def load_full_state(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a full state dict (Hugging Face names, every process holding it) into an FSDP-sharded module: each
    process keeps its shards. Raises RuntimeError naming what does not match."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    names = {clean_name(n) for n, _ in module.named_parameters()}
    tied = {clean_name(n) for n, _ in module.named_parameters(remove_duplicate=False)}
    missing, unexpected = sorted(names - set(state)), sorted(set(state) - names - tied)
    if missing or unexpected:
        raise RuntimeError(f"anchor checkpoint does not match the model: missing {missing}, "
                           f"unexpected {unexpected}")
    # a copy: torch replaces the dict's entries with the shards it made (FSDP2: DTensors)
    set_model_state_dict(module, dict(state), options=StateDictOptions(full_state_dict=True, strict=False))


def full_state_dict(module: torch.nn.Module, keep: bool) -> dict[str, torch.Tensor] | None:
    """The full parameters of a (possibly sharded) module on CPU with Hugging Face names, gathered one at a
    time; every process must call it (collectives), only those with ``keep`` get the dict (else None)."""
    return sharded_state.gathered(full_parameters(module), keep)
