"""How a model's turns look to t1 — one notion for every stage (SFT labels, every engine's stop condition, the
penalties, log-prob alignment, evaluation, scaling):

* **the prompt**: the tokenizer's chat template with its generation prompt when it has one (and
  ``use_chat_template``), else the plain text;
* **the turn end** (``end_id``): the token the chat template writes right after an assistant message
  (``<|im_end|>`` for Qwen's ChatML, ``<|eot_id|>`` for Llama 3, ``<｜end▁of▁sentence｜>`` for DeepSeek), or the
  tokenizer's eos without a template (or when the template writes no token there). SFT trains every response to
  end with it, and nothing after it: the template's own trailing newline and a following eos are not trained;
* **the stop ids**: any of them ends a sample — the turn end, the tokenizer's eos and every eos id the model's
  ``generation_config.json`` lists (base models list ``<|endoftext|>``, instruct models several). Every engine
  stops at the first of them, keeps it as the sample's last token (its log-prob included) and cuts anything
  after it;
* **special ids**: the tokenizer's special tokens other than the stop ids. One of them inside a response is
  garbage (a base model opening a new turn with ``<|im_start|>``); a stop id never is.

:func:`chat_format` derives all of it once from the tokenizer, its template and the model's eos ids
(:func:`t1.model.load.chat_format_of` reads them from the model directory), and
:meth:`ChatFormat.describe` is the line each stage prints at its start.
"""

from __future__ import annotations

from dataclasses import dataclass

_MARK = "T1 reply"  # an assistant message whose tokens cannot merge with what the template writes after it


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def prompt_ids(tokenizer, prompt: str | list, use_chat_template: bool = True) -> list[int]:
    """Token ids of a prompt as the model sees it before its response (also used for generation)."""
    if use_chat_template and has_chat_template(tokenizer):
        msgs = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
        return list(tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True,
                                                  return_dict=False))
    if isinstance(prompt, list):
        prompt = "\n".join(m["content"] for m in prompt)
    return tokenizer(prompt, add_special_tokens=True)["input_ids"]


@dataclass(frozen=True)
class ChatFormat:
    """The turn structure of one model (see the module docstring); build it with :func:`chat_format`."""

    template: bool  # prompts go through the chat template
    end_id: int  # the token every trained response ends with
    stop_ids: tuple[int, ...]  # any of these ends a sample; end_id first
    special_ids: frozenset[int]  # special tokens that are garbage inside a response (stop ids excluded)
    names: tuple[tuple[int, str], ...] = ()  # (id, token) of the stop ids, for messages
    source: str = ""  # where end_id came from

    def prompt_ids(self, tokenizer, prompt: str | list) -> list[int]:
        return prompt_ids(tokenizer, prompt, self.template)

    def response_ids(self, tokenizer, response: str, separator: str = "") -> list[int]:
        """A response as SFT trains it: its text's tokens, then the turn end. The text is tokenized on its own,
        exactly as a sampler's tokens continue the prompt's (no merge across the prompt boundary)."""
        text = response if self.template else separator + response
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        stops = set(self.stop_ids)  # a response already carrying its turn end is cut there, not doubled
        i = next((i for i, t in enumerate(ids) if t in stops), None)
        return ids + [self.end_id] if i is None else ids[: i + 1]

    def name(self, token_id: int) -> str:
        return dict(self.names).get(token_id, str(token_id))

    def describe(self) -> str:
        """One line: how prompts are rendered and what ends a response."""
        stops = ", ".join(f"{t} {self.name(t)}" for t in self.stop_ids)
        how = "chat template" if self.template else "plain text (no chat template)"
        return (f"tokens: prompts as {how}; responses end with {self.end_id} {self.name(self.end_id)} "
                f"({self.source}); sampling stops at [{stops}]; {len(self.special_ids)} other special tokens "
                f"count as garbage inside a response")


def chat_format(tokenizer, eos_ids=(), use_chat_template: bool = True) -> ChatFormat:
    """The :class:`ChatFormat` of ``tokenizer``; ``eos_ids``: the model's own eos ids
    (:func:`t1.model.load.generation_eos`, which ``t1.model.load.chat_format_of`` passes). Raises ``ValueError``
    when the tokenizer has no eos token at all."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no eos token: t1 cannot tell where a response ends (set eos_token "
                         "in tokenizer_config.json)")
    template = use_chat_template and has_chat_template(tokenizer)
    end_id, source = eos, "the tokenizer's eos"
    if template:
        found = _template_end(tokenizer)
        if found is not None:
            end_id, source = found, "what the chat template writes after an assistant message"
        else:
            source = "the tokenizer's eos: the chat template writes no special token after an assistant message"
    stops = [end_id, eos, *eos_ids]
    stop_ids = tuple(dict.fromkeys(t for t in stops if isinstance(t, int) and 0 <= t))
    special = _special_ids(tokenizer) - set(stop_ids)
    names = tuple((t, token_name(tokenizer, t)) for t in stop_ids)
    return ChatFormat(template, end_id, stop_ids, frozenset(special), names, source)


def _special_ids(tokenizer) -> set[int]:
    ids = set(getattr(tokenizer, "all_special_ids", ()) or ())
    decoder = getattr(tokenizer, "added_tokens_decoder", None) or {}
    ids |= {i for i, t in decoder.items() if getattr(t, "special", False)}
    return ids


def token_name(tokenizer, token_id: int) -> str:
    """``token_id`` as the tokenizer writes it (``<|im_end|>``), for messages."""
    try:
        return str(tokenizer.convert_ids_to_tokens(token_id))
    except Exception:  # noqa: BLE001 - an id outside the tokenizer (a padded embedding row)
        return f"<id {token_id}>"


def _template_end(tokenizer) -> int | None:
    """The added token the chat template writes right after an assistant message's text, or None."""
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": _MARK}]
    try:
        text = tokenizer.apply_chat_template(msgs, tokenize=False)
    except Exception:  # noqa: BLE001 - a template that refuses this conversation: fall back to eos
        return None
    i = text.rfind(_MARK)
    if i < 0:
        return None
    tail = tokenizer(text[i + len(_MARK):], add_special_tokens=False)["input_ids"]
    added = set(getattr(tokenizer, "added_tokens_decoder", None) or {}) | _special_ids(tokenizer)
    return tail[0] if tail and tail[0] in added else None
