"""Benchmark loaders. Each returns (task name, items), the name for :func:`t1.tasks.get_task`; see
t1/data/SOURCES.md for the files and their origins.

Names: ``math500``, ``aime24``, ``aime25``, ``amc23``, ``omni_math`` (the rule-gradable Omni-MATH set),
``omni500`` (a seeded 500-problem stand-in for the paper's unpublished Omni-MATH-500), ``gpqa`` (GPQA
Diamond from the official CSV at a path you give: its authors ask that it not be redistributed),
``countdown`` (the 500 held-out problems no training set uses), or a path to any JSON Lines file with
``problem`` and ``answer``.
"""

from __future__ import annotations

import csv
import io
import random
from pathlib import Path

from t1.data import DATA_DIR
from t1.data.prompts import PromptDataConfig, load_items
from t1.io import DataError, clean_text, fill, open_input
from t1.tasks.base import Item
from t1.tasks.choice import ChoiceTask
from t1.tasks.countdown import CountdownConfig, CountdownTask, heldout

FILES = {"math500": "math500.jsonl", "aime24": "aime24.jsonl", "aime25": "aime25.jsonl", "amc23": "amc23.jsonl",
         "omni_math": "omni_math_rule.jsonl", "omni500": "omni_math_rule_500.jsonl"}
GPQA_COLUMNS = ("Question", "Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3")


def load_gpqa(path: str | Path, seed: int = 0) -> list[Item]:
    """GPQA from its official CSV: the four options shuffled per question with a fixed seed; the gold answer
    is the letter where the correct option landed. A malformed file is a one-line error naming path:line."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: GPQA CSV not found (give the official gpqa_diamond.csv with --gpqa-csv)")
    with open_input(path, "GPQA CSV file") as raw, io.TextIOWrapper(raw, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        try:
            return _gpqa_items(path, reader, seed)
        except (csv.Error, UnicodeDecodeError) as e:
            raise DataError(f"{path}:{reader.line_num}: not a readable CSV row: {e}") from None


def _gpqa_items(path: Path, reader: csv.DictReader, seed: int) -> list[Item]:
    missing = [c for c in GPQA_COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}")
    items = []
    for i, row in enumerate(reader):
        if any(not isinstance(row.get(c), str) or not row[c].strip() for c in GPQA_COLUMNS):
            raise DataError(f"{path}:{reader.line_num}: a question or option is empty")
        options = tuple(clean_text(row[c].strip()) for c in GPQA_COLUMNS[1:])  # the correct one first
        order = list(range(4))
        random.Random(f"{seed}-{i}").shuffle(order)
        items.append(choice_item(f"gpqa-{i}", clean_text(row["Question"].strip()), options, order))
    if not items:
        raise DataError(f"{path}: no questions")
    return items


def choice_item(id: str, question: str, options: tuple[str, ...], order: list[int]) -> Item:
    """A multiple-choice item whose options (``options[0]`` the correct one) are shown in ``order``; the gold
    answer is the letter where the correct option landed. ``extra`` keeps what :func:`for_sample` needs."""
    letters = "ABCDEFGHIJ"[: len(options)]
    body = question + "\n\n" + "\n".join(f"{letters[j]}) {options[o]}" for j, o in enumerate(order))
    return Item(prompt=fill(ChoiceTask.template, problem=body), answer=letters[order.index(0)], id=id,
                problem=body, extra={"question": question, "options": options, "option_order": list(order)})


def for_sample(item: Item, seed: int, k: int) -> Item:
    """The item as sample ``k`` sees it: a multiple-choice item with its options shuffled anew for every sample
    (seeded by ``seed``, the item's id and ``k``, so a rerun shows the same orders), which keeps a model's
    preference for a letter out of its accuracy; any other item unchanged."""
    options = item.extra.get("options")
    if not options:
        return item
    order = list(range(len(options)))
    random.Random(f"{seed}-{item.id}-{k}").shuffle(order)
    return choice_item(item.id, item.extra["question"], options, order)


def load_bench(name: str, data_dir: str | Path | None = None, gpqa_csv: str | None = None,
               countdown: CountdownConfig | None = None, n_countdown: int = 500, task: str | None = None
               ) -> tuple[str, list[Item]]:
    """(task name, items) of the benchmark ``name`` (see the module doc); ``task``: the task that reads and
    grades a .jsonl benchmark (default math)."""
    if name == "countdown":
        cd = CountdownTask(countdown)
        return "countdown", [cd.item_from_problem(p, f"heldout-{i}")
                             for i, p in enumerate(heldout(cd.cfg, n_countdown))]
    if name == "gpqa":
        if not gpqa_csv:
            raise DataError("bench gpqa: give the official GPQA Diamond CSV with --gpqa-csv PATH")
        return "choice", load_gpqa(gpqa_csv)
    if name in FILES:
        path = Path(data_dir or DATA_DIR) / FILES[name]
    elif name.endswith(".jsonl"):
        path = Path(name)
    else:
        raise DataError(f"unknown benchmark {name!r}: use one of {', '.join([*FILES, 'gpqa', 'countdown'])} "
                        f"or a .jsonl path")
    cfg = PromptDataConfig(task=task or "math", source="jsonl", paths=(str(path),), num_prompts=0)
    return cfg.task, load_items(cfg)
