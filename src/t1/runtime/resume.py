"""What may change when a run resumes: the new config against the run's ``config.yaml``.

``--resume`` continues the run that is in ``out``; a command that differs in a field that shapes the run (the
learning rate, a seed, the batch, the data, K, the model or its shape, LoRA, …) would silently train the rest
of the steps as another run and leave a ``config.yaml`` that describes neither. So every changed field is
refused, in one line naming each with its old and new value, unless it is on the allow-list below:

* :data:`SAFE` — fields that change where and how often things are written, or how the same step is computed,
  never what it computes: ``out`` (a moved directory), ``report_to``, ``run_group``, ``train.log_every``,
  ``train.save_every``, ``train.keep_checkpoints``, ``train.rollouts_every``, ``train.rollouts_kept``,
  ``train.max_bad_steps``, ``lora.save_merged``, ``train.nccl_timeout``, ``rollout.vllm.dummy_weights`` (how
  vLLM gets the weights the first push replaces anyway); the memory and speed knobs ``train.micro_batch_tokens``,
  ``train.bucket_ratio``, ``train.logits_chunk``, ``train.attention``, ``train.fast_forward``,
  ``train.fused_update``, ``rollout.max_batch``, ``train.sampler_threads``,
  ``rollout.vllm.gpu_memory_utilization``, ``rollout.vllm.kv_cache_memory_bytes`` (the update's arithmetic is
  the same, up to float rounding: what to lower after running out of memory); and where the vLLM servers are
  and how they are reached (``rollout.vllm_server.urls``, ``sync_dir``, ``nccl_host``, ``nccl_port``,
  ``timeout``, ``sync_timeout``, ``max_retries``, ``concurrency``, ``decode_tokens_per_s``).
* :data:`LENGTH` — how long the run goes: ``train.max_steps`` (`t1 sft`: its lr schedule spans all epochs
  whatever the cap, so extending or shortening is always safe); ``train.steps`` (`t1 rl`) and ``train.epochs``
  (`t1 sft`) set the length the lr schedule spans, so they may change only when the schedule does not depend
  on it (``train.optim.schedule: constant`` and ``train.optim.warmup_ratio: 0``, `t1 rl`'s defaults);
  otherwise the steps already taken followed another schedule than the rest would, and the change is refused.
  A step count below the checkpoint's step is refused too: the run went further already.

Accepted changes are recorded above ``config.yaml`` as comment lines (``# resumed at step N: field old → new``),
which later resumes keep. A run directory without ``config.yaml`` has nothing to compare with and is accepted;
a field the old file lacks (a run from an older t1) is compared with its default.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from t1 import config as cfglib
from t1.config import ConfigError

SAFE = frozenset({
    "out", "report_to", "run_group",
    "train.log_every", "train.save_every", "train.keep_checkpoints", "train.rollouts_every", "train.rollouts_kept",
    "train.max_bad_steps", "lora.save_merged", "train.nccl_timeout", "rollout.vllm.dummy_weights",
    "train.micro_batch_tokens", "train.bucket_ratio", "train.logits_chunk", "train.attention",
    "train.fast_forward", "train.fused_update", "rollout.max_batch", "train.sampler_threads",
    "rollout.vllm.gpu_memory_utilization", "rollout.vllm.kv_cache_memory_bytes",
    *(f"rollout.vllm_server.{f}" for f in ("urls", "sync_dir", "nccl_host", "nccl_port", "timeout",
                                           "sync_timeout", "max_retries", "concurrency", "decode_tokens_per_s")),
})
LENGTH = frozenset({"train.max_steps", "train.steps", "train.epochs"})
SCHEDULED = frozenset({"train.steps", "train.epochs"})  # the lr schedule spans them
PATHS = frozenset({"model", "data.paths"})  # the same files however spelled (m, ./m, /abs/m) are no change
RESUMED = "resumed at step"  # how a recorded change starts in config.yaml


@dataclass(frozen=True)
class Change:
    field: str  # dotted
    old: Any
    new: Any
    why: str = ""  # why it is refused, when more than "it changes the run"

    def __str__(self) -> str:
        return f"{self.field} {show(self.old)} → {show(self.new)}" + (f" ({self.why})" if self.why else "")


def show(value: Any) -> str:
    """A config value as the command line writes it: ``0.001``, ``[tensorboard]``, ``null``, ``""``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(show(v) for v in value) + "]"
    if isinstance(value, str):  # one line, always: a value holding a newline is quoted
        return value if value and value.isprintable() else json.dumps(value)
    return str(value)


def flat(data: dict, prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 1}}`` -> ``{"train.lr": 1}`` (an empty mapping stays a value)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            out.update(flat(value, name))
        else:
            out[name] = value
    return out


def recorded(cls: type, path: Path) -> dict[str, Any] | None:
    """The flattened config a run recorded in ``path`` (``config.yaml``), read as ``cls`` (so a field it lacks
    has its default), or None when there is no such file. A file this t1 cannot build as ``cls`` (a field
    since renamed) is compared as it is."""
    if not path.is_file():
        return None
    data = cfglib.read_yaml(path)
    try:
        return flat(cfglib.to_dict(cfglib.from_dict(cls, data)))
    except ConfigError:
        return flat(data)


def _schedule_spans_length(values: dict[str, Any]) -> bool:
    """Whether the lr schedule of a config depends on the run's length (see :func:`t1.runtime.optim.lr_factor`:
    the warm-up as a ratio of all steps, cosine and linear decay over them)."""
    return values.get("train.optim.schedule", "constant") != "constant" or \
        bool(values.get("train.optim.warmup_ratio", 0))


def _same_path(a: Any, b: Any) -> bool:
    """Whether ``a`` and ``b`` name the same existing files here (a path or a list of paths, in order)."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same_path(x, y) for x, y in zip(a, b))
    try:
        return isinstance(a, str) and isinstance(b, str) and bool(a) and bool(b) and os.path.samefile(a, b)
    except OSError:  # one of them is not here (a hub name, a moved file): compared as written
        return False


def changes(old: dict[str, Any], new: dict[str, Any],
            step: int | None = None) -> tuple[list[Change], list[Change]]:
    """(refused, accepted) differences between two flattened configs, in the new config's field order; ``step``:
    the checkpoint's, which a step count may not go below (the run went further already)."""
    refused, accepted = [], []
    for key in [*new, *(k for k in old if k not in new)]:
        same = key in old and key in new and old[key] == new[key]
        if same or (key in PATHS and key in old and key in new and _same_path(old[key], new[key])):
            continue
        change = Change(key, old.get(key), new.get(key))
        cap = new.get(key) if key in ("train.steps", "train.max_steps") else None
        if step is not None and isinstance(cap, int) and 0 < cap < step:
            refused.append(dataclasses.replace(change, why=f"the checkpoint is at step {step} already"))
        elif key in SAFE or (key in LENGTH and key not in SCHEDULED):
            accepted.append(change)
        elif key in SCHEDULED and not (_schedule_spans_length(old) or _schedule_spans_length(new)):
            accepted.append(change)
        elif key in SCHEDULED:
            refused.append(dataclasses.replace(change, why=f"the {new.get('train.optim.schedule')} lr "
                                                           f"schedule and warm-up span {key}"))
        else:
            refused.append(change)
    return refused, accepted


def refusal(where: str, refused: list[Change], remedy: str, risk: str = "resuming would mix two runs") -> str:
    """The one line that names every refused change: ``WHERE was run with a different config: f old → new, …;
    RISK — REMEDY``."""
    return f"{where} was run with a different config: {', '.join(map(str, refused))}; {risk} — {remedy}"


def compare(cfg: Any, path: Path, step: int | None = None) -> tuple[list[Change], list[Change]]:
    """(refused, accepted) changes of ``cfg`` (a resolved stage config) against the config recorded in ``path``
    (both empty when there is no such file)."""
    old = recorded(type(cfg), Path(path))
    return ([], []) if old is None else changes(old, flat(cfglib.to_dict(cfg)), step)


def check(cfg: Any, run_dir: Path, step: int | None = None) -> list[Change]:
    """The changes of ``cfg`` (a resolved stage config) against ``run_dir/config.yaml`` that are safe to resume
    with from the checkpoint at ``step``; a :class:`ConfigError` naming every other one."""
    refused, accepted = compare(cfg, Path(run_dir) / "config.yaml", step)
    if refused:
        raise ConfigError(refusal(f"out: {run_dir}", refused, "start a new out or drop the override"))
    return accepted


def note(path: Path, step: int, accepted: list[Change]) -> str:
    """The comment lines for a resumed run's ``config.yaml``: the changes recorded by earlier resumes (read from
    ``path``, the file about to be rewritten) and this one's (``accepted``, at checkpoint ``step``)."""
    lines = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            if not line.startswith("#"):
                break
            if line[1:].strip().startswith(RESUMED):
                lines.append(line[1:].strip())
    if accepted:
        lines.append(f"{RESUMED} {step}: {', '.join(map(str, accepted))}")
    return "\n".join(lines)
