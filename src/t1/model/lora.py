"""LoRA through PEFT: only low-rank adapters train, the base model stays frozen (and shared).

``lora.rank > 0`` in `t1 sft` or `t1 rl` wraps the model with :func:`peft.get_peft_model` (PEFT's own
``LoraConfig``; ``target_modules: [all-linear]`` means every linear layer but the output one, as in PEFT).
What t1 adds on top:

* **t1's own passes see the adapters.** The fast training forward (:class:`t1.model.forward.Prepared`) and
  the fast sampler read each projection through :func:`weight`: ``W + (α/r)·B·A`` for the active adapter,
  differentiable in ``A`` and ``B`` — so training through it is LoRA (gradients reach only the adapter), and
  sampling uses the merged weights without ever changing the base tensors in place (no merge/unmerge drift).
  Adapter dropout acts on the layer's input, which a merged weight cannot express: with ``dropout > 0`` the
  training forward is PEFT's own (slower, exact).
* **Engines that hold a copy** (vLLM, servers) get the merged weights under plain Hugging Face names
  (:func:`merged_parameters`), so they load the base model once and need no LoRA support.
* **Checkpoints and ``final/``** hold the adapter only (PEFT's ``adapter_config.json`` +
  ``adapter_model.safetensors``, with the base model's absolute path) and the tokenizer; with
  ``save_merged: true`` ``final/merged/`` is base + adapter as a plain HF model (for vLLM serving or the hub).
  :func:`t1.model.load.load` reads an adapter directory as base + adapter merged, so `t1 eval`, `t1 scale`,
  `t1 filter` and a following `t1 rl` take a LoRA run's ``final/`` as they take any model.
* The RL anchor of a LoRA run is the adapter's moving average on the shared base (:class:`t1.rl.anchor.Anchor`
  copies only the trainable tensors): no second copy of the base model.

Limits: sharded training (FSDP, DeepSpeed ZeRO-3) with LoRA is refused — PEFT under FSDP needs wrapping rules
t1 does not set up; LoRA runs on one GPU or under DDP. DoRA and other PEFT variants are not exposed.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from t1.config import ConfigError, option, require
from t1.io import parse_json

ADAPTER_CONFIG = "adapter_config.json"


@dataclass(frozen=True)
class LoraConfig:
    rank: int = option(0, "LoRA rank r (0 = off: every weight trains)")
    alpha: float = option(32.0, "LoRA α: the adapter's update is scaled by α / r")
    target_modules: tuple[str, ...] = option(
        ("all-linear",), "module names (or suffixes) that get adapters; all-linear = every linear layer but the "
                         "output one (PEFT's rule)")
    dropout: float = option(0.0, "dropout on the adapter's input (> 0 makes training use PEFT's slower forward)")
    save_merged: bool = option(False, "also write final/merged/: base + adapter as a plain HF model")

    def validate(self) -> None:
        require(self.rank >= 0, "rank", "must be ≥ 0 (0 = off)", self.rank)
        require(self.alpha > 0, "alpha", "must be > 0", self.alpha)
        require(0 <= self.dropout < 1, "dropout", "must be in [0, 1)", self.dropout)
        require(len(self.target_modules) > 0, "target_modules", "must name at least one module",
                self.target_modules)


def lora_option():
    """The ``lora`` section of `t1 sft` and `t1 rl`."""
    return option(help="LoRA adapters through PEFT (rank 0 = full fine-tuning)", factory=LoraConfig)


def _peft():
    try:
        import peft
    except ImportError:
        raise ConfigError("lora.rank: LoRA needs PEFT: pip install 't1[lora]'") from None
    return peft


def is_adapter_dir(path: str | Path) -> bool:
    return (Path(path) / ADAPTER_CONFIG).is_file()


def base_path(path: str | Path) -> str:
    """The base model an adapter directory was trained on (else ``path`` itself)."""
    if not is_adapter_dir(path):
        return str(path)
    try:
        base = parse_json((Path(path) / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
    except (OSError, ValueError, AttributeError) as e:
        raise ConfigError(f"model: {Path(path) / ADAPTER_CONFIG}: unreadable ({e})") from None
    if not isinstance(base, str) or not base:
        raise ConfigError(f"model: {Path(path) / ADAPTER_CONFIG}: no base_model_name_or_path")
    return base


def is_lora(model) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def base_of(model):
    """The transformers model inside a PEFT wrapper (its projections carry the adapters), else ``model``."""
    return model.get_base_model() if is_lora(model) else model


def has_dropout(model) -> bool:
    return is_lora(model) and any(getattr(c, "lora_dropout", 0) for c in model.peft_config.values())


def weight(linear: torch.nn.Module) -> torch.Tensor:
    """A linear layer's effective weight: ``W + Σ (α/r)·B·A`` over its active adapters for a PEFT LoRA layer
    (differentiable in the adapters), its plain weight otherwise."""
    if not hasattr(linear, "lora_A"):
        return linear.weight
    w = linear.get_base_layer().weight
    if linear.merged or linear.disable_adapters:
        return w
    for name in linear.active_adapters:
        if name in linear.lora_A:  # in the adapter's precision (fp32 over a bf16 base), as PEFT's own merge
            w = w + linear.get_delta_weight(name)
    return w


def apply(model, cfg: LoraConfig, base: str | None = None):
    """``model`` wrapped with fresh adapters (base frozen); ``base``: the path recorded as its base model."""
    peft = _peft()
    targets = cfg.target_modules[0] if cfg.target_modules == ("all-linear",) else list(cfg.target_modules)
    config = peft.LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                             target_modules=targets, task_type="CAUSAL_LM", bias="none")
    try:
        wrapped = peft.get_peft_model(model, config)
    except ValueError as e:  # e.g. target modules that match nothing
        raise ConfigError(f"lora.target_modules: {str(e).splitlines()[0][:300]}") from None
    head = wrapped.get_base_model().get_output_embeddings()
    if hasattr(head, "lora_A") and getattr(wrapped.get_base_model().config, "tie_word_embeddings", False):
        raise ConfigError("lora.target_modules: the output layer shares its weight with the input embeddings in "
                          "this model (tied), so an adapter on it cannot be merged; leave it out")
    record_base(wrapped, base)
    return wrapped


def record_base(model, base: str | None) -> None:
    """Write ``base`` (made absolute when local) into the adapter's config: what ``adapter_config.json`` names."""
    if base is not None:
        local = Path(base).expanduser()
        model.peft_config["default"].base_model_name_or_path = str(local.resolve()) if local.exists() else base


def load_adapter(model, path: str | Path, trainable: bool):
    """``model`` with the adapter saved in ``path`` (a checkpoint or ``final/``)."""
    return _peft().PeftModel.from_pretrained(model, str(path), is_trainable=trainable)


def merged_state(model) -> Iterator[tuple[str, torch.Tensor]]:
    """(Hugging Face name, tensor) of base + adapter merged, for every parameter of the base model: what a plain
    copy of the merged model would hold. Tied weights come out under every name."""
    base = base_of(model)
    layers = {name: m for name, m in base.named_modules() if hasattr(m, "lora_A")}
    with torch.no_grad():
        for name, p in base.named_parameters(remove_duplicate=False):
            if ".lora_" in name:
                continue
            owner, _, leaf = name.rpartition(".")
            layer = owner.removesuffix(".base_layer")
            if layer != owner and layer in layers:  # a projection with an adapter: its merged weight
                yield f"{layer}.{leaf}", weight(layers[layer]) if leaf == "weight" else p
            else:
                yield name, p


def save_merged(model, tokenizer, dest: Path) -> None:
    """Base + adapter as a plain HF model (config, safetensors, tokenizer) in ``dest``."""
    base = base_of(model)
    state = {name: t.detach().contiguous() for name, t in merged_state(model)}
    dest.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        plain = _plain_copy(base, state)
    plain.save_pretrained(dest)
    tokenizer.save_pretrained(dest)


def _plain_copy(base, state: dict):
    """A fresh transformers model of ``base``'s class and config holding ``state``."""
    plain = type(base)(base.config)
    missing, unexpected = plain.load_state_dict(state, strict=False)
    real_missing = [k for k in missing if k in dict(plain.named_parameters())]
    if unexpected or real_missing:
        raise RuntimeError(f"merged LoRA state does not match the base model: missing {real_missing[:5]}, "
                           f"unexpected {unexpected[:5]}")
    return plain.to(next(base.parameters()).dtype)


def merged_writer(model, tokenizer, cfg: LoraConfig):
    """What ``RunDir.save_final`` adds to ``final/`` for ``lora.save_merged``: base + adapter in ``merged/``
    (None when not asked for)."""
    if not (cfg.rank and cfg.save_merged):
        return None
    return lambda final: save_merged(model, tokenizer, final / "merged")


def save_kwargs(model) -> dict:
    """Arguments for a LoRA model's ``save_pretrained``: the adapter only — PEFT would otherwise also save a
    targeted output layer's whole (frozen, unchanged) base weight with every checkpoint."""
    return {"save_embedding_layers": False} if is_lora(model) else {}


def check_unsharded(model, acc) -> None:
    """Refuse LoRA under FSDP or DeepSpeed ZeRO-3 (see the module doc), before any step runs."""
    if not is_lora(model):
        return
    kind = getattr(acc.distributed_type, "name", str(acc.distributed_type))
    plugin = getattr(acc.state, "deepspeed_plugin", None) if kind == "DEEPSPEED" else None
    if kind == "FSDP" or (plugin is not None and plugin.zero_stage == 3):
        raise ConfigError("lora.rank: LoRA runs on one process, under DDP or DeepSpeed ZeRO-1/2; not sharded "
                          f"({kind}{' ZeRO-3' if plugin is not None else ''}) — use full fine-tuning there")


def describe(model) -> str:
    """`` | LoRA r=8: 0.20M trainable`` for a LoRA model, else ""."""
    if not is_lora(model):
        return ""
    cfg = model.peft_config["default"]
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return f" | LoRA r={cfg.r} α={cfg.lora_alpha:g}: {trainable / 1e6:.3f}M trainable"
