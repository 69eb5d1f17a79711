"""The policy's weights as full tensors with Hugging Face names, one parameter at a time.

Pushing weights into a sampling engine must never materialise the whole model twice: under FSDP or
DeepSpeed ZeRO-3 each parameter is gathered, handed on, and released before the next one.

* plain / DDP: the parameter itself (no copy);
* FSDP2 (``DTensor`` parameters): ``full_tensor()``, one parameter at a time;
* FSDP1: ``summon_full_params(module, recurse=False)`` for one wrapped module at a time;
* DeepSpeed ZeRO-3: ``GatheredParameters([p])``, one parameter at a time;
* LoRA: base + adapter merged one matrix at a time (:func:`t1.model.lora.merged_state`), base names.

Every process must iterate (the gathers are collectives). Tied weights come out under every name
(``lm_head.weight`` too): a push without the tied output layer would leave the engine's output layer stale
with no warning (vLLM only logs it).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import torch

from t1.model import lora

_WRAPPERS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.", "module.")


def clean_name(name: str) -> str:
    """An HF parameter name without the wrappers' prefixes (FSDP, activation checkpointing, compile, DDP)."""
    for w in _WRAPPERS:
        name = name.replace(w, "")
    return name


def _fsdp1_modules(model: torch.nn.Module):
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    except ImportError:  # pragma: no cover - torch without distributed
        return None, []
    return FSDP, [m for m in model.modules() if isinstance(m, FSDP)]


def _zero3(p: torch.nn.Parameter) -> bool:
    return hasattr(p, "ds_id")


def full_parameters(model: torch.nn.Module, kept: bool = False) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (HF name, full tensor) for every parameter of ``model`` (possibly wrapped), tied names included.
    Each tensor is valid until the next item is requested — unless ``kept``: then every tensor stays valid
    for a consumer that holds on to some (vLLM's layerwise ``reload_weights`` keeps what it receives until each
    of its layers is whole, review D15). Only FSDP1 needs a copy for that: its tensors are views into a unit's
    gathered flat parameter, whose memory is freed when the walk leaves the unit (reading one afterwards
    reads freed memory — a crash on CPU, silently wrong weights on a GPU where vLLM's fused q/k/v or gate/up
    would span two units); FSDP2's ``full_tensor()`` and whole parameters already stay valid."""
    inner = getattr(model, "module", model)  # DDP's wrapper
    if lora.is_lora(inner):  # LoRA (one process or DDP): base + adapter merged, under the base model's names
        yield from lora.merged_state(inner)
        return
    FSDP, fsdp_modules = _fsdp1_modules(model)
    if fsdp_modules:
        for name, t in _fsdp1(model, FSDP):
            yield name, t.clone() if kept else t
        return
    for name, p in model.named_parameters(remove_duplicate=False):
        if _zero3(p):
            import deepspeed

            with deepspeed.zero.GatheredParameters([p]):
                yield clean_name(name), p.data
        elif hasattr(p, "full_tensor"):  # DTensor (FSDP2)
            full = p.full_tensor()
            yield clean_name(name), full
            del full
        else:
            yield clean_name(name), p.data


def _fsdp1(model: torch.nn.Module, FSDP) -> Iterator[tuple[str, torch.Tensor]]:
    """FSDP1: gather one wrapped module's own (non-recursive) parameters at a time."""
    seen: set[str] = set()
    if isinstance(model, FSDP) and getattr(model, "_is_root", None) is None:
        # FSDP1 initialises lazily, taking the first instance it meets as the root: before any forward the walk
        # below would meet a layer first and fail ("Non-root FSDP instance's `_is_root` should not have been set")
        with FSDP.summon_full_params(model, recurse=False, writeback=False):
            pass

    def walk(module: torch.nn.Module, prefix: str):
        for child_name, child in module.named_children():
            yield from walk(child, f"{prefix}{child_name}.")
        if isinstance(module, FSDP):
            with FSDP.summon_full_params(module, recurse=False, writeback=False):
                for name, p in module.named_parameters(remove_duplicate=False):
                    full = clean_name(prefix + name)
                    if full not in seen and "flat_param" not in name:
                        seen.add(full)
                        yield full, p.data

    yield from walk(model, "")


# ------------------------------------------------------------------------------------- files on a disk


VERSION_FILE = "t1_weight_version.json"


def engine_copy(t: torch.Tensor, device, dtype: torch.dtype | None) -> torch.Tensor:
    """A contiguous copy of ``t`` on ``device``, floating-point tensors cast to ``dtype`` (None: kept).

    Why cast on the sending side: vLLM loads a pushed tensor into parameters of its own dtype with
    ``param.data.copy_(loaded_weight)`` (``default_weight_loader``, ``model_executor/model_loader/
    weight_utils.py``), i.e. the same round-to-nearest cast, so sending the fp32 master weights only doubles
    the bytes broadcast or written (131 GB instead of 65 GB per push for a 32B model) for the same result."""
    cast = dtype if dtype is not None and t.is_floating_point() else None
    return t.detach().to(device, dtype=cast, copy=True).contiguous()


def write_safetensors(weights, directory: str | Path, version: int, write: bool = True,
                      shard_bytes: int = 4 << 30, dtype: torch.dtype | None = None) -> Path:
    """Write ``weights`` as safetensors shards into ``directory`` atomically (a new folder renamed into
    place), with the weight version in ``t1_weight_version.json``. Only the writing process passes
    ``write=True``; every process must still iterate ``weights`` (gathers are collectives). Tied tensors
    are cloned so every name is stored; floating-point ones are stored in ``dtype`` (the engine's, see
    :func:`engine_copy`; None: as they come)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    tmp = directory.with_name(directory.name + f".tmp{os.getpid()}")
    if write:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    shard: dict[str, torch.Tensor] = {}
    size, n, index = 0, 0, {}

    def flush():
        nonlocal shard, size, n
        if shard and write:
            fname = f"model-{n:05d}.safetensors"
            save_file(shard, str(tmp / fname), metadata={"format": "pt"})
            index.update({k: fname for k in shard})
        shard, size, n = {}, 0, n + 1

    for name, t in weights:
        if write:
            shard[name] = engine_copy(t, "cpu", dtype)
            size += shard[name].numel() * shard[name].element_size()
        if size >= shard_bytes:
            flush()
    flush()
    if write:
        (tmp / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": index}))
        (tmp / VERSION_FILE).write_text(json.dumps({"version": version}))
        old = directory.with_name(directory.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if directory.exists():
            directory.rename(old)
        tmp.rename(directory)
        shutil.rmtree(old, ignore_errors=True)
    return directory
