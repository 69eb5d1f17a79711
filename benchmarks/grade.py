"""Answers graded per second: `t1 grade` vs a plain single-process math-verify loop, on the 500 MATH500
reference solutions, measured in one run, verdicts compared.

    .venv/bin/python benchmarks/grade.py [--repeat 3]

The plain loop is what a user would write: ``verify(parse(gold), parse(response))`` per row, with the gold
wrapped in ``$...$`` (unwrapped, math-verify grades bare answers by their last number; see
t1.tasks.math). `t1 grade` is timed end to end — reading the file, starting its worker pool, writing rows.
A third line times t1's grading function (extraction included) in one process, no pool: the cost per answer
of t1's own work against the plain loop's, which does not depend on how many cores are free (on a machine
busy with other jobs the pool's speed-up shrinks, this ratio does not).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from t1.data import DATA_DIR
from t1.io import read_jsonl
from t1.stages.grade import grade_file
from t1.tasks.math import grade_math, wrap_gold


def plain_loop(rows):
    from math_verify import parse, verify

    return [bool(verify(parse(wrap_gold(r["answer"])), parse(r["solution"]))) for r in rows]


def one_process(rows):
    return [grade_math(r["solution"], r["answer"])[1] for r in rows]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3, help="best of N for each side")
    args = ap.parse_args()
    rows = read_jsonl(DATA_DIR / "math500.jsonl")
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "in.jsonl", Path(tmp) / "out.jsonl"
        src.write_text("".join(json.dumps({"id": r["id"], "response": r["solution"], "answer": r["answer"]}) + "\n"
                               for r in rows))
        plain_loop(rows[:5])  # import and warm math-verify once for both sides
        t_plain, t_t1, t_one = [], [], []
        for _ in range(args.repeat):
            start = time.perf_counter()
            plain = plain_loop(rows)
            t_plain.append(time.perf_counter() - start)
            start = time.perf_counter()
            grade_file(src, out, task="math", progress=False)
            t_t1.append(time.perf_counter() - start)
            start = time.perf_counter()
            one = one_process(rows)
            t_one.append(time.perf_counter() - start)
        ours = [json.loads(line)["correct"] for line in out.read_text().splitlines()]
    n = len(rows)
    same = sum(a == b for a, b in zip(plain, ours))
    best_plain, best_t1, best_one = min(t_plain), min(t_t1), min(t_one)
    print(f"MATH500 reference solutions: {n} answers, {os.cpu_count()} cores, best of {args.repeat}")
    print(f"{'grader':34s} {'seconds':>8s} {'answers/s':>10s} {'correct':>8s}")
    print(f"{'plain math-verify loop (1 proc)':34s} {best_plain:8.3f} {n / best_plain:10.1f} {sum(plain):8d}")
    print(f"{'t1 grade':34s} {best_t1:8.3f} {n / best_t1:10.1f} {sum(ours):8d}")
    print(f"{'t1 grade_math, 1 proc (no pool)':34s} {best_one:8.3f} {n / best_one:10.1f} {sum(one):8d}")
    print(f"speed-up: {best_plain / best_t1:.2f}x   identical verdicts: {same}/{n}   "
          f"one process: {best_plain / best_one:.2f}x")


if __name__ == "__main__":
    main()
