"""Model and optimizer state in a checkpoint when the model is sharded (FSDP 1 or 2), for every trainer.

Why: a checkpoint used to hold the main process's ``optimizer.state_dict()``. Under DDP that is the whole state;
under FSDP it is rank 0's shard only (AdamW moments for rank 0's slices, keyed by parameter index), and a resume
handed every process rank 0's moments: weights restored, the optimizer silently not. Here the state goes through
``torch.distributed.checkpoint.state_dict`` as a *full* state keyed by parameter name, gathered to rank 0's CPU
one parameter at a time on save and split again on load, so a run resumes exactly, on any number of processes.

Tested on CPU processes over gloo with accelerate's FSDP forced on (tests/cpu_fsdp.py): `t1 rl`
(tests/rl/test_shard.py) and `t1 sft` (tests/stages/test_sft_fsdp.py), FSDP 1 and 2, resumed runs equal to
uninterrupted ones bit for bit. Not tested: GPUs/NCCL, CPU offload. DeepSpeed ZeRO-3 partitions the optimizer
too but is not handled here (DeepSpeed is not installed to build and test it): :func:`sharding` names it so a
trainer can refuse or warn.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

SHARDED = ("fsdp1", "fsdp2")  # the ways of holding the model whose optimizer state this module gathers


def sharding(acc) -> str:
    """How ``acc`` (an Accelerator) holds the model: "fsdp1", "fsdp2", "zero3", or "" (whole on every
    process: one process, DDP, DeepSpeed ZeRO-1/2)."""
    from accelerate.utils import DistributedType

    if acc.distributed_type == DistributedType.FSDP:
        return "fsdp2" if acc.is_fsdp2 else "fsdp1"
    if acc.distributed_type == DistributedType.DEEPSPEED:
        plugin = acc.state.deepspeed_plugin
        return "zero3" if plugin is not None and plugin.zero_stage == 3 else ""
    return ""


def loads_weights(acc, how: str) -> bool:
    """Whether this process reads the model's weights: under FSDP only the main process does — the others
    build a skeleton (:func:`t1.model.load.skeleton`) and take the main process's weights as the model is
    wrapped (:func:`weights_from_main`), so a node holds one copy of the model in host memory, not one per
    GPU (a 32B model in fp32 is 131 GB)."""
    return how not in SHARDED or acc.is_main_process


def weights_from_main(acc, how: str) -> None:
    """Make ``acc.prepare`` fill every process's shards from the main process's weights (call before it;
    nothing when the model is not sharded by FSDP). FSDP1: ``sync_module_states`` (each unit is broadcast from
    rank 0 as it is wrapped, on the GPU). FSDP2: accelerate's ``cpu_ram_efficient_loading`` path (the model is
    sharded on the meta device, then each parameter is broadcast from rank 0 and split). What TRL and
    accelerate do with ``fsdp_cpu_ram_efficient_loading``, without transformers' own version of it, which
    fills every other process's model with zeros (the whole model per process)."""
    if how not in SHARDED:
        return
    plugin = acc.state.fsdp_plugin
    if how == "fsdp1":
        plugin.sync_module_states = True
    else:
        plugin.cpu_ram_efficient_loading = True


def model_state(acc, model: torch.nn.Module, how: str,
                parameters: Callable[[torch.nn.Module], Iterable[tuple[str, torch.Tensor]]]) -> dict | None:
    """The model's full state dict for saving: under FSDP gathered one parameter at a time to the main
    process's CPU (others get None; every process calls) from ``parameters(model)`` — (HF name, full tensor)
    pairs, each valid until the next: :func:`t1.rollout.weights.full_parameters`, passed in as it sits in a
    higher layer — else accelerate's ``get_state_dict``. Not accelerate's under FSDP: its FSDP1 full state
    dict (offloaded to CPU, rank 0 only) crashes CPU processes, and it gathers whole units at a time."""
    if how not in SHARDED:
        return acc.get_state_dict(model)
    return gathered(parameters(model), acc.is_main_process)


def gathered(pairs: Iterable[tuple[str, torch.Tensor]], keep: bool) -> dict[str, torch.Tensor] | None:
    """``pairs`` (name, full tensor valid until the next one: a gather per parameter, so every process must
    walk them) copied to CPU where ``keep``; None elsewhere."""
    out = {} if keep else None
    for name, t in pairs:
        if keep:
            out[name] = t.detach().to("cpu", copy=True)
    return out


def optimizer_state(model: torch.nn.Module, optimizer, how: str, keep: bool) -> dict | None:
    """The optimizer's state for a checkpoint: its own state_dict when nothing is sharded; under FSDP the
    full state keyed by parameter name, gathered to CPU (every process calls: collectives). Only processes
    with ``keep`` (the main one) get it, others None."""
    if how not in SHARDED:
        return optimizer.state_dict() if keep else None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    # gathered to CPU one parameter at a time; CPU processes (the tests) skip the "offload": torch 2.13's FSDP1
    # then hands back one tensor for both of a parameter's AdamW moments (exp_avg = exp_avg_sq)
    offload = next(model.parameters()).device.type != "cpu"
    state = get_optimizer_state_dict(model, _inner(optimizer),
                                     options=StateDictOptions(full_state_dict=True, cpu_offload=offload))
    return state if keep else None


def load_optimizer_state(model: torch.nn.Module, optimizer, how: str, state: dict) -> None:
    """Inverse of :func:`optimizer_state`: every process passes the full state it loaded from the checkpoint
    and keeps its own slices of it (under FSDP; else the whole state)."""
    if how not in SHARDED:
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, _inner(optimizer), optim_state_dict=state,
                             options=StateDictOptions(full_state_dict=True))


def _inner(optimizer):
    """The torch optimizer inside accelerate's wrapper."""
    return getattr(optimizer, "optimizer", optimizer)
