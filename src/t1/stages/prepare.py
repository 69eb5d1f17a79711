"""`t1 prepare`: raw math sources -> RL prompts (question, label), reporting what was dropped and why.

Per row: take the short answer (the ``answer`` field, else the last ``\\boxed{}`` of the worked solution);
drop it when the label cannot be graded by rules — a proof or "show that" problem, a multi-part question or
answer, free text, or a label math-verify cannot parse (checked in the time-bounded grader pool); drop
exact duplicates (normalised text); drop near-duplicates of evaluation problems (MATH500, AIME 24/25, AMC
23, Omni-MATH) by word n-gram overlap: a row goes when the n-grams it shares with one evaluation problem
are at least ``overlap`` of the larger of the two n-gram sets. Normalising by the larger set keeps a short
problem that merely opens like a longer, different one (containment); 5-grams still catch a light
paraphrase, where each changed word breaks at most five n-grams.
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from t1.config import option, require
from t1.data import DATA_DIR
from t1.io import DataError, all_or_nothing, check_output, iter_jsonl
from t1.pool import DeadlinePool
from t1.tasks.boxed import last_boxed
from t1.tasks.math import wrap_gold

EVAL_FILES = ("math500.jsonl", "aime24.jsonl", "aime25.jsonl", "amc23.jsonl", "omni_math_rule.jsonl")
_PROOF = re.compile(r"\b(prove|show that|demonstrate that|justify|explain why)\b", re.I)
_PARTS = [("(a)", "(b)"), ("(i)", "(ii)")]  # lowercase sub-questions; "(A) … (B)" options are gradable
_WORD = re.compile(r"[a-z0-9]+")


@dataclass(frozen=True)
class PrepareConfig:
    inputs: tuple[str, ...] = option((), "raw JSON Lines files (problem + answer or worked solution)")
    out: str = option("runs/prepare/prompts.jsonl", "output JSON Lines (id, problem, answer, source)")
    problem_field: str = option("problem", "field with the problem")
    answer_field: str = option("answer", "field with the short answer (used when present)")
    solution_field: str = option("solution", "field with a worked solution (its last \\boxed{} is the answer)")
    eval_files: tuple[str, ...] = option(EVAL_FILES, "evaluation sets to decontaminate against (names in "
                                                       "t1/data or paths)")
    ngram: int = option(5, "word n-gram length for near-duplicate detection")
    overlap: float = option(0.5, "drop a row sharing at least this fraction of n-grams with one eval problem")
    min_shared: int = option(6, "... and at least this many n-grams (identical texts always match)")
    max_answer_chars: int = option(60, "longer labels are treated as free text")
    check_parse: bool = option(True, "drop labels that math-verify cannot parse (time-bounded)")

    def validate(self) -> None:
        require(len(self.inputs) > 0, "inputs", "give at least one file", self.inputs)
        require(self.ngram >= 2, "ngram", "must be ≥ 2", self.ngram)
        require(0 < self.overlap <= 1, "overlap", "must be in (0, 1]", self.overlap)
        require(self.min_shared >= 1, "min_shared", "must be ≥ 1", self.min_shared)
        require(self.max_answer_chars >= 1, "max_answer_chars", "must be ≥ 1", self.max_answer_chars)


def normalize(text: str) -> list[str]:
    return _WORD.findall(text.lower().replace("\\", " "))


def ngrams(words: list[str], n: int) -> set[tuple[str, ...]]:
    if len(words) < n:
        return {tuple(words)} if words else set()
    return {tuple(words[i: i + n]) for i in range(len(words) - n + 1)}


class Decontaminator:
    """An inverted index of evaluation-problem n-grams; ``match(text)`` names the closest one, if too close."""

    def __init__(self, problems: list[tuple[str, str]], n: int, overlap: float, min_shared: int = 6):
        self.n, self.overlap, self.min_shared = n, overlap, min_shared
        self.sizes: dict[str, int] = {}
        self.index: dict[tuple, list[str]] = defaultdict(list)
        self.exact: dict[str, str] = {}
        for pid, text in problems:
            words = normalize(text)
            self.exact.setdefault(" ".join(words), pid)
            grams = ngrams(words, n)
            self.sizes[pid] = len(grams)
            for g in grams:
                self.index[g].append(pid)

    def match(self, text: str) -> str | None:
        words = normalize(text)
        if " ".join(words) in self.exact:
            return self.exact[" ".join(words)]
        grams = ngrams(words, self.n)
        if not grams:
            return None
        shared: Counter = Counter()
        for g in grams:
            for pid in self.index.get(g, ()):
                shared[pid] += 1
        for pid, k in shared.most_common(3):
            if k >= self.min_shared and k / max(1, len(grams), self.sizes[pid]) >= self.overlap:
                return pid
        return None


def _eval_problems(files) -> list[tuple[str, str]]:
    out = []
    for name in files:
        path = Path(name) if Path(name).exists() else DATA_DIR / name
        for line in iter_jsonl(path):
            out.append((f"{path.stem}:{line.data.get('id', line.number)}", str(line.data.get("problem", ""))))
    return out


def _label_problem(answer: str, problem: str, cfg: PrepareConfig) -> str | None:
    """Why this (problem, answer) cannot be graded by rules, or None."""
    if _PROOF.search(problem):
        return "proof"
    if any(a in problem and b in problem for a, b in _PARTS) or "\\boxed" in answer:
        return "multi-part"
    letters = re.sub(r"\\[a-zA-Z]+|\{|\}", " ", answer)
    if len(answer) > cfg.max_answer_chars or len(re.findall(r"[A-Za-z]{4,}", letters)) >= 2:
        return "free text"
    return None


def _parses(label: str) -> bool:  # runs in a grader worker process
    import logging

    from math_verify import parse

    logging.getLogger("math_verify").setLevel(logging.ERROR)
    return bool(parse(wrap_gold(label), parsing_timeout=None))


def prepare(cfg: PrepareConfig) -> dict:
    """Write the prompts to ``out`` and the counts to ``out``'s ``.report.json``, both or neither; both are
    checked before any work against every input (the raw files and the evaluation sets)."""
    inputs = [*cfg.inputs, *(e for e in cfg.eval_files if Path(e).exists())]
    out = check_output(cfg.out, *inputs, what="out")  # before any work: never an input, writable
    check_output(out.with_suffix(".report.json"), *inputs, what="out's report")
    rows, reasons = [], Counter()
    for path in cfg.inputs:
        for line in iter_jsonl(path):
            r, where = line.data, f"{path}:{line.number}"
            problem = r.get(cfg.problem_field)
            if not isinstance(problem, str) or not problem.strip():
                raise DataError(f"{where}: missing or empty field '{cfg.problem_field}'")
            answer = r.get(cfg.answer_field)
            if not isinstance(answer, str) or not answer.strip():
                sol = r.get(cfg.solution_field)
                answer = last_boxed(sol) if isinstance(sol, str) else None
            if not answer:
                reasons["no answer"] += 1
                continue
            why = _label_problem(answer.strip(), problem, cfg)
            if why:
                reasons[why] += 1
                continue
            rows.append({"id": str(r.get("id", where)), "problem": problem.strip(), "answer": answer.strip(),
                         "source": where})
    if cfg.check_parse and rows:
        with DeadlinePool(_parses, workers=2, timeout=5.0, preload=["math_verify"]) as pool:
            ok = pool.map([(r["answer"],) for r in rows])
        kept = []
        for r, o in zip(rows, ok):
            if o.status == "ok" and o.value:
                kept.append(r)
            else:
                reasons["label does not parse"] += 1
        rows = kept
    seen, unique = set(), []
    for r in rows:
        key = " ".join(normalize(r["problem"]))
        if key in seen:
            reasons["duplicate"] += 1
            continue
        seen.add(key)
        unique.append(r)
    deco = Decontaminator(_eval_problems(cfg.eval_files), cfg.ngram, cfg.overlap, cfg.min_shared)
    final, hits = [], Counter()
    for r in unique:
        pid = deco.match(r["problem"])
        if pid:
            reasons["near-duplicate of an eval problem"] += 1
            hits[pid.split(":")[0]] += 1
            continue
        final.append(r)
    total = len(final) + sum(reasons.values())
    report = {"rows": total, "kept": len(final), "dropped": dict(reasons), "contamination_by_eval_set": dict(hits)}
    with all_or_nothing() as staged:
        staged.write_text(out.with_suffix(".report.json"), json.dumps(report, indent=2))
        staged.write_text(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in final))
    print(f"prepare: kept {len(final)} of {total} rows -> {cfg.out}", file=sys.stderr)
    for why, n in reasons.most_common():
        print(f"  dropped {n:6d}  {why}", file=sys.stderr)
    return report
