"""SFT examples: read (prompt, response) pairs from JSON Lines, a hub dataset or the Countdown trace writer,
and tokenize them with the loss mask on the response only.

Field mapping: ``prompt_field`` / ``response_field`` (plain pairs) or ``messages_field`` (a chat: a list of
``{role, content}``; the last assistant message is the response, everything before it the prompt).
Formatting (:class:`t1.chat.ChatFormat`): the tokenizer's chat template when it has one (prompt rendered with
the generation prompt, then the response's tokens and the template's turn end, e.g. ``<|im_end|>``), otherwise
``prompt + separator + response + eos``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from t1.chat import ChatFormat, chat_format
from t1.config import option, require
from t1.io import DataError, iter_jsonl
from t1.tasks.countdown import CountdownConfig, generate, heldout_keys, sample_failed, write_trace


@dataclass(frozen=True)
class SFTDataConfig:
    source: Literal["countdown", "jsonl", "hub"] = option(
        "countdown", "where examples come from: countdown traces, JSON Lines files, or a hub dataset")
    paths: tuple[str, ...] = option((), "JSON Lines files (source=jsonl; also the local copy for source=hub)")
    hub_name: str = option("THUDM/T1", "hub dataset name (source=hub)")
    hub_split: str = option("train", "hub dataset split")
    prompt_field: str = option("prompt", "field holding the prompt")
    response_field: str = option("response", "field holding the target response")
    messages_field: str | None = option(
        None, "field holding a chat (list of {role, content}); overrides the two above")
    separator: str = option(" ", "between prompt and response when the tokenizer has no chat template")
    use_chat_template: bool = option(True, "use the tokenizer's chat template when it has one")
    max_length: int = option(512, "longest tokenized example (prompt + response)")
    overlong: Literal["truncate", "drop"] = option("drop", "what to do with a longer example (counted either way)")
    on_bad: Literal["error", "skip"] = option("error", "a bad row (missing field, empty response, bad JSON or "
                                                        "UTF-8): stop with file:line, or skip and count it")
    num_examples: int = option(20000, "countdown: how many traces; jsonl/hub: cap on examples (0 = all)")
    seed: int = option(0, "countdown: problem seed")
    failed_attempts: int | None = option(None, "countdown: failed attempts per trace (null = geometric)")
    exclude_heldout: int = option(500, "countdown: never train on the first N held-out evaluation problems")
    countdown: CountdownConfig = option(help="countdown: problem and trace knobs", factory=CountdownConfig)

    def validate(self) -> None:
        require(self.max_length >= 8, "max_length", "must be ≥ 8", self.max_length)
        require(self.num_examples >= 0, "num_examples", "must be ≥ 0", self.num_examples)
        require(self.exclude_heldout >= 0, "exclude_heldout", "must be ≥ 0", self.exclude_heldout)
        if self.source == "jsonl":
            require(len(self.paths) > 0, "paths", "source=jsonl needs at least one file", self.paths)
        if self.failed_attempts is not None:
            require(self.failed_attempts >= 0, "failed_attempts", "must be ≥ 0 or null", self.failed_attempts)


@dataclass(frozen=True)
class Pair:
    prompt: str | list  # text, or chat messages before the response
    response: str
    where: str  # "file:line" for error messages


@dataclass(frozen=True)
class Example:
    ids: tuple[int, ...]
    n_prompt: int  # the first n_prompt tokens carry no loss

    @property
    def n_loss(self) -> int:
        return len(self.ids) - self.n_prompt


@dataclass
class DataStats:
    rows: int = 0
    skipped_bad: int = 0
    truncated: int = 0
    dropped_overlong: int = 0
    skip_reasons: list = field(default_factory=list)

    def text(self) -> str:
        return (f"{self.rows} examples | bad rows skipped: {self.skipped_bad} | truncated: {self.truncated}"
                f" | dropped as too long: {self.dropped_overlong}")


# ---------------------------------------------------------------------------------------------- reading


def countdown_pairs(cfg: SFTDataConfig) -> list[Pair]:
    rng = random.Random(cfg.seed + 1)
    pairs = []
    exclude = heldout_keys(cfg.countdown, cfg.exclude_heldout) if cfg.exclude_heldout else frozenset()
    for i, p in enumerate(generate(cfg.countdown, cfg.num_examples, cfg.seed, exclude)):
        failed = sample_failed(cfg.countdown, rng) if cfg.failed_attempts is None else cfg.failed_attempts
        give_up = False
        if cfg.failed_attempts is None and cfg.countdown.give_up > 0:  # drawn only when asked for: the default
            give_up = rng.random() < cfg.countdown.give_up  # traces stay the same draw for draw
        if give_up:
            failed = cfg.countdown.max_failed
        while True:  # a degenerate problem (1 1 1 -> 1) has few distinct wrong attempts: use as many as it has
            try:
                trace = write_trace(p, cfg.countdown, failed, rng, give_up)
                break
            except ValueError:
                if failed == 0:
                    raise
                failed -= 1
        pairs.append(Pair(p.prompt(), trace, f"countdown #{i}"))
    return pairs


def _pair_from_row(row: dict, cfg: SFTDataConfig, where: str) -> Pair:
    if cfg.messages_field:
        msgs = row.get(cfg.messages_field)
        if not isinstance(msgs, list) or not msgs:
            raise DataError(f"{where}: field '{cfg.messages_field}' must be a non-empty list of messages")
        for m in msgs:
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise DataError(f"{where}: each message needs 'role' and 'content'")
        last = max((i for i, m in enumerate(msgs) if m["role"] == "assistant"), default=None)
        if last is None:
            raise DataError(f"{where}: no assistant message in '{cfg.messages_field}'")
        prompt, response = msgs[:last], msgs[last]["content"]
    else:
        for name in (cfg.prompt_field, cfg.response_field):
            if name not in row:
                raise DataError(f"{where}: missing field '{name}'")
        prompt, response = row[cfg.prompt_field], row[cfg.response_field]
        if not isinstance(prompt, str):
            raise DataError(f"{where}: field '{cfg.prompt_field}' must be a string")
    if not isinstance(response, str) or not response.strip():
        raise DataError(f"{where}: empty response")
    return Pair(prompt, response, where)


def _rows_to_pairs(rows, cfg: SFTDataConfig, stats: DataStats) -> list[Pair]:
    pairs = []
    for where, row in rows:
        try:
            pairs.append(_pair_from_row(row, cfg, where))
        except DataError as e:
            if cfg.on_bad == "error":
                raise
            stats.skipped_bad += 1
            stats.skip_reasons.append(str(e))
        if cfg.num_examples and len(pairs) >= cfg.num_examples:
            break
    return pairs


def jsonl_rows(paths, cfg: SFTDataConfig, stats: DataStats):
    for path in paths:
        bad: list = []
        for line in iter_jsonl(path, skip_bad=cfg.on_bad == "skip", bad=bad):
            yield f"{path}:{line.number}", line.data
        stats.skipped_bad += len(bad)
        stats.skip_reasons.extend(f"{path}:{n}: {why}" for n, why in bad)


def hub_rows(cfg: SFTDataConfig, stats: DataStats):
    """Rows of a hub dataset; when the hub cannot be reached, the local copy in ``paths`` instead."""
    try:
        import datasets

        ds = datasets.load_dataset(cfg.hub_name, split=cfg.hub_split)
    except Exception as e:  # no network, no such dataset, gated ...
        if not cfg.paths:
            raise DataError(f"data.hub_name={cfg.hub_name!r}: could not load from the hub ({type(e).__name__}: "
                            f"{str(e)[:200]}); give a local copy in data.paths") from None
        print(f"hub dataset {cfg.hub_name} unavailable ({type(e).__name__}); using {', '.join(cfg.paths)}")
        yield from jsonl_rows(cfg.paths, cfg, stats)
        return
    for i, row in enumerate(ds):
        yield f"{cfg.hub_name}[{cfg.hub_split}] row {i}", row


def read_pairs(cfg: SFTDataConfig, stats: DataStats) -> list[Pair]:
    if cfg.source == "countdown":
        return countdown_pairs(cfg)
    rows = jsonl_rows(cfg.paths, cfg, stats) if cfg.source == "jsonl" else hub_rows(cfg, stats)
    return _rows_to_pairs(rows, cfg, stats)


# ------------------------------------------------------------------------------------------- tokenizing


def encode(pair: Pair, tokenizer, cfg: SFTDataConfig, fmt: ChatFormat | None = None) -> Example:
    """The prompt as every engine sees it (:meth:`ChatFormat.prompt_ids`), then the response's own tokens and the
    turn end (:meth:`ChatFormat.response_ids`): labels end exactly where generation stops, with nothing after
    the turn end (no template newline, no eos behind ``<|im_end|>``)."""
    fmt = fmt or chat_format(tokenizer, (), cfg.use_chat_template)
    p_ids = fmt.prompt_ids(tokenizer, pair.prompt)
    return Example(tuple(p_ids + fmt.response_ids(tokenizer, pair.response, cfg.separator)), len(p_ids))


def tokenize(pairs: list[Pair], tokenizer, cfg: SFTDataConfig, stats: DataStats,
             fmt: ChatFormat | None = None) -> list[Example]:
    fmt = fmt or chat_format(tokenizer, (), cfg.use_chat_template)
    examples = []
    for pair in pairs:
        ex = encode(pair, tokenizer, cfg, fmt)
        if len(ex.ids) > cfg.max_length:
            if cfg.overlong == "drop" or ex.n_prompt >= cfg.max_length - 1:
                stats.dropped_overlong += 1
                continue
            stats.truncated += 1
            ex = Example(ex.ids[: cfg.max_length], ex.n_prompt)
        examples.append(ex)
    stats.rows = len(examples)
    if not examples:
        raise DataError("no usable SFT examples (see the counts of skipped, dropped rows)")
    return examples


def load_examples(cfg: SFTDataConfig, tokenizer, fmt: ChatFormat | None = None
                  ) -> tuple[list[Example], DataStats]:
    stats = DataStats()
    return tokenize(read_pairs(cfg, stats), tokenizer, cfg, stats, fmt), stats


def source_description(cfg: SFTDataConfig) -> str:
    if cfg.source == "countdown":
        return f"{cfg.num_examples} countdown traces (seed {cfg.seed})"
    if cfg.source == "jsonl":
        return ", ".join(str(Path(p)) for p in cfg.paths)
    return f"{cfg.hub_name} [{cfg.hub_split}]"
