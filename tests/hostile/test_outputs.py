"""Hostile outputs and command lines (issue "Hardening, round 2"): every stage checks its outputs before any
work (never an input — compared resolved —, never a folder where a file goes or the reverse, writable, room
left); a failed write is one line naming the path and leaves the old result; JSON nested 200,000 deep is a
bad line, not a RecursionError; options go anywhere on the command line; nonsensical flags are refused; files
get the umask's mode.

Each row: (argv template, setup, exit code, needles of the one stderr line). In the argv, ``{d}`` is the
test's folder, ``{model}`` the tiny model; ``setup(d, monkeypatch)`` makes the files and may return a check
``after(d)`` that runs once the command is done (an input intact, the old result kept)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.hostile.conftest import Outcome, fail_writes_to

DEEP = {"array": "[" * 200_000, "object": '{"a":' * 200_000}


def rows(n: int) -> str:
    return "".join(json.dumps({"problem": f"What is {i} + {i}?", "answer": str(2 * i), "prompt": "p",
                               "response": f"\\boxed{{{i}}}"}) + "\n" for i in range(n))


def files(**named: str):
    """A setup writing ``name=text`` files (``__`` in a name is a ``/``); after it, each is checked unchanged."""

    def setup(d: Path, monkeypatch) -> callable:
        for name, text in named.items():
            path = d / name.replace("__", "/")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)

        def intact(d: Path) -> None:
            for name, text in named.items():
                path = d / name.replace("__", "/")
                assert path.is_file() and path.read_text() == text, f"{path} was changed"

        return intact

    return setup


def full_disk_at(name: str, **named: str):
    """:func:`files`, then every write to a temporary of ``name`` fails as on a full disk (ENOSPC)."""

    def setup(d: Path, monkeypatch):
        intact = files(**named)(d, monkeypatch)
        fail_writes_to(monkeypatch, name)

        def after(d: Path) -> None:
            intact(d)
            assert not [p for p in d.rglob("*") if ".tmp" in p.name], "a temporary was left behind"

        return after

    return setup


def nearly_full(d: Path, monkeypatch):
    import shutil

    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(1 << 40, 1 << 40, 3 << 20))


OLD_EVAL = {"ev__summary.json": '{"old": true}', "ev__countdown.samples.jsonl": '{"old": true}\n'}
EVAL = ("eval", "model={model}", "bench=[countdown]", "limit=2", "n=1", "max_new_tokens=4", "--quiet")
INIT = ("init", "model.hidden=16", "model.layers=1", "model.heads=2", "model.kv_heads=2", "model.ffn=32")
CASES = {
    # 1. one output check, before any work, in every stage
    "eval out is a file": (EVAL + ("out={d}/f",), files(f="x"), 2, ["out", "/f: is a file, expected a directory"]),
    "eval out under a file": (EVAL + ("out={d}/f/out",), files(f="x"), 2,
                              ["cannot create it:", "/f is a file, not a directory"]),
    "eval out is the model": (EVAL + ("out={model}",), None, 2, ["is also an input"]),
    "eval on a nearly full disk": (EVAL + ("out={d}/ev",), nearly_full, 2, ["no space left on", "(3 MiB free)"]),
    "scale out is a file": (("scale", "models=[{model}]", "bench=countdown", "budgets=[2]", "limit=1",
                             "out={d}/f"), files(f="x"), 2, ["is a file, expected a directory"]),
    "init out is a file": (INIT + ("out={d}/f",), files(f="x"), 2, ["out", "is a file, expected a directory"]),
    "init out under a file": (INIT + ("out={d}/f/m",), files(f="x"), 2, ["/f is a file, not a directory"]),
    "countdown --out a folder": (("countdown", "--out", "{d}"), None, 2, ["--out", "is a directory"]),
    "countdown --out its config": (("countdown", "{d}/c.yaml", "--out", "{d}/x/../c.yaml"),
                                   files(**{"c.yaml": "{}\n"}), 2, ["is also an input"]),
    "report over a folder": (("report", "{d}/run"), files(**{"run__report.html__x": ""}), 2,
                             ["report.html: is a directory"]),
    "filter over its input": (("filter", "model={model}", "data.source=jsonl", "data.task=math",
                               "data.paths=[{d}/kept.jsonl]", "out={d}", "samples=1", "max_new_tokens=2"),
                              files(**{"kept.jsonl": rows(24)}), 2, ["kept.jsonl", "is also an input"]),
    "filter out is the model": (("filter", "model={model}", "out={model}"), None, 2, ["is also an input"]),
    "prepare out=D/new/../input": (("prepare", "inputs=[{d}/in.jsonl]", "out={d}/new/../in.jsonl"),
                                   files(**{"in.jsonl": rows(3)}), 2, ["is also an input"]),
    "prepare out is a folder": (("prepare", "inputs=[{d}/in.jsonl]", "out={d}"), files(**{"in.jsonl": rows(3)}), 2,
                                ["is a directory"]),
    "grade -o D/new/../input": (("grade", "{d}/in.jsonl", "-o", "{d}/new/../in.jsonl"),
                                files(**{"in.jsonl": rows(3)}), 2, ["is also an input"]),
    "synth out=D/new/../input": (("synth", "inputs=[{d}/in.jsonl]", "out={d}/new/../in.jsonl"),
                                 files(**{"in.jsonl": rows(3)}), 2, ["is also an input"]),
    "sweep out is a file": (("sweep", "sft", "train.epochs=1,2", "--out", "{d}/f"), files(f="x"), 2,
                            ["out", "/f: is a file, expected a directory"]),
    "sweep out under a file": (("sweep", "sft", "train.epochs=1,2", "--out", "{d}/f/sw"), files(f="x"), 2,
                               ["cannot create it:", "/f is a file, not a directory"]),
    "demo out is a file": (("demo", "out={d}/f"), files(f="x"), 2, ["is a file, expected a directory"]),
    # 2. a failed write is one line naming the path, and the old result stays whole
    "eval full disk at the summary": (EVAL + ("out={d}/ev",), full_disk_at("summary.json", **OLD_EVAL), 2,
                                      ["/ev/summary.json: No space left on device"]),
    "grade -o full disk": (("grade", "{d}/in.jsonl", "-o", "{d}/o.jsonl", "--quiet", "--workers", "1"),
                           full_disk_at("o.jsonl", **{"in.jsonl": rows(2), "o.jsonl": "old\n"}), 2,
                           ["/o.jsonl: No space left on device"]),
    "countdown --out full disk": (("countdown", "--out", "{d}/c.jsonl"),
                                  full_disk_at("c.jsonl", **{"c.jsonl": "old"}), 2,
                                  ["/c.jsonl: No space left on device"]),
    "init full disk keeps the old model": (INIT + ("out={d}/m",), full_disk_at("t1_config.yaml", m__x="old"), 2,
                                           ["/m: could not be written", "no space left on device"]),
    # 4. options anywhere after the command (a misplaced option was blamed on the fields)
    "sweep --out between": (("sweep", "sft", "--out", "{d}/sw", "nosuch=a,b", "--seeds", "2"), None, 2,
                            ["nosuch"]),
    "sft --quiet between": (("sft", "out={d}/s", "--quiet", "nosuch=1"), None, 2, ["nosuch"]),
    # 5. nonsensical flags
    "countdown --n -5": (("countdown", "--n", "-5"), None, 2, ["--n must be ≥ 1", "(got -5)"]),
    "countdown --n 0": (("countdown", "--n", "0", "--out", "{d}/c.jsonl"), None, 2, ["--n must be ≥ 1"]),
    "countdown --n past the cap": (("countdown", "--n", "99999999999"), None, 2,
                                   ["--n must be ≥ 1 and ≤ 1,048,576"]),
    "countdown ranges with no problems": (("countdown", "--n", "3", "min_target=99", "max_target=100",
                                           "max_number=1"), None, 2,
                                          ["could not generate 3 problems", "widen min_number/max_number"]),
    "config YAML alias bomb": (("sft", "{d}/bomb.yaml"), files(**{"bomb.yaml": "".join(
        [f"{chr(97 + i)}: &{chr(97 + i)} [" + ",".join([f"*{chr(96 + i)}" if i else '"x"'] * 9) + "]\n"
         for i in range(10)]) + "train: *j\n"}), 2, ["bomb.yaml", "more than 100,000 values", "aliases"]),
    "override YAML alias bomb": (("sft", "train.x=[&a [1,1,1,1,1,1,1,1,1,1], &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a], "
                                  "&c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b], &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c], "
                                  "[*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]]"), None, 2,
                                 ["override train.x", "more than 100,000 values"]),
    "sft out is a file": (("sft", "out={d}/f"), files(f="x"), 2,
                          ["out:", "/f is a file, expected a run directory"]),
    "filter min_pass=-1 named": (("filter", "model={model}", "min_pass=-1"), None, 2,
                                 ["min_pass: must be in [0, 1]", "-1"]),
    "countdown --failed -1": (("countdown", "--failed", "-1"), None, 2, ["--failed must be ≥ 0 (got -1)"]),
}
# 3. a record nested 200,000 deep, wherever a user's JSON Lines are read
for kind, record in DEEP.items():
    deep = files(**{"deep.jsonl": rows(1) + record + "\n"})
    CASES |= {
        f"grade {kind}": (("grade", "{d}/deep.jsonl", "--quiet"), deep, 2, ["deep.jsonl:2", "nested too deeply"]),
        f"prepare {kind}": (("prepare", "inputs=[{d}/deep.jsonl]", "out={d}/p.jsonl"), deep, 2,
                            ["deep.jsonl:2", "nested too deeply"]),
        f"eval {kind}": (("eval", "model={model}", "bench=[{d}/deep.jsonl]", "max_new_tokens=4", "out={d}/ev",
                          "--quiet"), deep, 2,
                         ["deep.jsonl:2", "nested too deeply"]),
        f"sft {kind}": (("sft", "model={model}", "data.source=jsonl", "data.paths=[{d}/deep.jsonl]", "out={d}/s",
                         "--quiet"), deep, 2, ["deep.jsonl:2", "nested too deeply"]),
        f"rl {kind}": (("rl", "model={model}", "data.source=jsonl", "data.task=math",
                        "data.paths=[{d}/deep.jsonl]", "out={d}/r", "--quiet"), deep, 2,
                       ["deep.jsonl:2", "nested too deeply"]),
        f"report {kind}": (("report", "{d}"), files(**{"metrics.jsonl": record + '\n{"step": 1}\n'}), 2,
                           ["metrics.jsonl:1", "nested too deeply"]),
    }

# a CONFIG.yaml or an override nested past the YAML parser's recursion
CASES |= {
    "config file nested too deeply": (("sft", "{d}/deep.yaml"), files(**{"deep.yaml": "a: " + "[" * 200_000}), 2,
                                      ["deep.yaml", "nested too deeply"]),
    "override nested too deeply": (("sft", "train.epochs=" + "[" * 200_000), None, 2,
                                   ["train.epochs", "nested too deeply"]),
}


# refused part-way, after the stage's own lines (the model's chat format, say): the error is the last line
PART_WAY = {"eval full disk at the summary",
            *(f"{stage} {kind}" for stage in ("eval", "sft", "rl") for kind in DEEP)}


def last_line(result, *needles: str) -> None:
    """:meth:`Outcome.one_line` for a command that printed its progress before failing: one error line, the
    last, and no traceback."""
    lines = [x for x in result.err.splitlines() if x.strip() and "warning" not in x.lower()]
    assert "Traceback" not in result.err, result.err[-3000:]
    assert [x for x in lines if ": error: " in x] == lines[-1:], result.err[-3000:]
    for needle in needles:
        assert needle in lines[-1], (needle, lines[-1])


@pytest.mark.parametrize("name", list(CASES))
def test_refused_in_one_line(name, t1, tiny_model_dir, tmp_path, monkeypatch):
    argv, setup, code, needles = CASES[name]
    after = setup(tmp_path, monkeypatch) if setup else None
    result = t1(*(a.format(d=tmp_path, model=tiny_model_dir) for a in argv))
    assert result.code == code, result.err[-3000:]
    (last_line if name in PART_WAY else Outcome.one_line)(result, *needles)
    if after:
        after(tmp_path)


@pytest.mark.parametrize("argv, printed", [
    (("sft", "--print-config", "train.epochs=2", "data.num_examples=7"), ["epochs: 2", "num_examples: 7"]),
    (("sft", "train.epochs=2", "--print-config", "data.num_examples=7"), ["epochs: 2", "num_examples: 7"]),
    (("sft", "train.epochs=2", "data.num_examples=7", "--quiet", "--print-config"), ["num_examples: 7"]),
    (("rl", "train.steps=3", "--resume", "--print-config", "model=m"), ["steps: 3", "model: m"]),
    (("countdown", "--n", "2", "--print-config", "max_number=7"), ["max_number: 7"]),
])
def test_options_may_come_anywhere(argv, printed, t1):
    result = t1(*argv)
    assert result.code == 0, result.err
    for text in printed:
        assert text in result.out


def test_grade_options_before_and_after_the_file(t1, tmp_path):
    (tmp_path / "in.jsonl").write_text(rows(2))
    for argv in (("{d}/in.jsonl", "-o", "{d}/a.jsonl", "--task", "math"),
                 ("--task", "math", "{d}/in.jsonl", "--quiet", "-o", "{d}/a.jsonl", "--workers", "1")):
        result = t1("grade", *(a.format(d=tmp_path) for a in argv))
        assert result.code == 0, result.err
        assert len((tmp_path / "a.jsonl").read_text().splitlines()) == 2


def test_countdown_writes_what_it_says(t1, tmp_path):
    result = t1("countdown", "--out", tmp_path / "c.jsonl", "--n", "3")
    assert result.code == 0 and len((tmp_path / "c.jsonl").read_text().splitlines()) == 3


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o077, 0o600)])
def test_init_writes_the_model_with_the_umask_mode(t1, tmp_path, mask, mode):
    """Every file of a model, the config beside the weights included (written through mkstemp: 0600)."""
    old = os.umask(mask)
    try:
        result = t1(*INIT, f"out={tmp_path / 'm'}")
    finally:
        os.umask(old)
    assert result.code == 0, result.err
    written = [p for p in (tmp_path / "m").rglob("*") if p.is_file()]
    assert {p.name for p in written} >= {"config.json", "model.safetensors", "t1_config.yaml", "tokenizer.json"}
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in written} == {p.name: oct(mode) for p in written}
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no temporary left beside it
