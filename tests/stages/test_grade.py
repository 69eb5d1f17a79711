import json
import os
import time

import pytest

from t1.cli import main


def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))


def test_grade_math_file(tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    _write(src, [{"id": 1, "response": "so \\boxed{\\frac{1}{2}}", "answer": "0.5"},
                 {"id": 2, "response": "\\boxed{3}", "answer": "4"},
                 {"id": 3, "response": "no idea", "answer": "4"}])
    out = tmp_path / "out.jsonl"
    assert main(["grade", str(src), "-o", str(out), "--quiet"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["correct"] for r in rows] == [True, False, False]
    assert [r["extracted"] for r in rows] == ["\\frac{1}{2}", "3", None]
    assert rows[0]["id"] == 1
    printed = capsys.readouterr().out
    assert "accuracy 0.3333 (1/3)" in printed and "no answer found: 1" in printed


def test_grade_to_stdout_and_countdown(tmp_path, capsys):
    src = tmp_path / "cd.jsonl"
    _write(src, [{"response": "\\boxed{ 3 * 5 + 7 }", "numbers": [3, 5, 7], "target": 22},
                 {"response": "\\boxed{ 3 * 5 * 7 }", "numbers": [3, 5, 7], "target": 22}])
    assert main(["grade", str(src), "--task", "countdown", "--quiet"]) == 0
    captured = capsys.readouterr()
    rows = [json.loads(line) for line in captured.out.splitlines()]
    assert [r["correct"] for r in rows] == [True, False]
    assert "accuracy 0.5000 (1/2)" in captured.err


def test_bad_line_names_its_number_or_is_skipped(tmp_path, capsys):
    src = tmp_path / "bad.jsonl"
    _write(src, [{"response": "\\boxed{1}", "answer": "1"}, "{not json", {"response": "x"},
                 {"response": "\\boxed{2}", "answer": "2"}])
    assert main(["grade", str(src), "--quiet"]) == 2
    assert f"{src}:2: not a valid JSON object" in capsys.readouterr().err
    assert main(["grade", str(src), "--quiet", "--skip-bad", "-o", str(tmp_path / "o.jsonl")]) == 0
    printed = capsys.readouterr().out
    assert "accuracy 1.0000 (2/2)" in printed and "bad lines skipped: 2" in printed
    src.write_bytes(b'{"response": "\\\\boxed{1}", "answer": "1"}\n\xff\xfe\n')
    assert main(["grade", str(src), "--quiet"]) == 2
    assert f"{src}:2: not valid UTF-8" in capsys.readouterr().err
    _write(src, [{"response": "x"}])
    assert main(["grade", str(src), "--quiet"]) == 2
    assert f"{src}:1: missing field 'answer'" in capsys.readouterr().err
    _write(src, [{"response": "\\boxed{1}", "answer": "1"}, {"response": "\\boxed{1}", "answer": None}])
    assert main(["grade", str(src), "--quiet"]) == 2  # not graded against the string "None"
    assert f"{src}:2: field 'answer' must be a non-empty string or a number (got null)" in capsys.readouterr().err


def test_a_slow_check_never_blocks_the_rows_behind_it(tmp_path):
    # A check killed at its limit, then a ~1 MB row: the parent used to send that row to the busy worker, block
    # once the pipe filled, and never look at the clock again. Now a row goes only to a worker that can take it.
    import math_verify  # noqa: F401  (imported before the clock starts, as the grader's preload would)

    from t1.stages.grade import grade_file

    src = tmp_path / "in.jsonl"
    big = "x " * 500_000 + "\\boxed{3}"
    _write(src, [{"response": "\\boxed{9^{9^{9^{9}}}}", "answer": "1"}, {"response": big, "answer": "3"},
                 {"response": "\\boxed{(x+1)^{100000}}", "answer": "1"}, {"response": big, "answer": "4"}])
    limit = 2.0
    for workers in (1, 2):
        start = time.perf_counter()
        summary = grade_file(src, tmp_path / "out.jsonl", workers=workers, timeout=limit, progress=False)
        elapsed = time.perf_counter() - start
        rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
        assert [r["status"] for r in rows] == ["timeout", "ok", "timeout", "ok"]
        assert [r["correct"] for r in rows] == [False, True, False, False] and summary.timeouts == 2
        assert elapsed < 3 * 2 * limit / workers + 5  # two checks cut at the limit; unbounded, this never ends


def test_a_lone_surrogate_is_written(tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    src.write_text('{"id": "a\\ud800", "response": "\\\\boxed{2} \\udfff", "answer": "2"}\n')
    out = tmp_path / "out.jsonl"
    assert main(["grade", str(src), "-o", str(out), "--quiet", "--workers", "1"]) == 0
    row = json.loads(out.read_text())
    assert row["correct"] is True and row["id"] == "a\ufffd" and row["response"].endswith("\ufffd")
    capsys.readouterr()
    assert main(["grade", str(src), "--quiet", "--workers", "1"]) == 0  # standard output too
    assert json.loads(capsys.readouterr().out)["id"] == "a\ufffd"


def test_bad_output_or_flags_are_refused_before_any_work(tmp_path, capsys, monkeypatch):
    import t1.stages.grade as grade

    src = tmp_path / "in.jsonl"
    _write(src, [{"response": "\\boxed{1}", "answer": "1"}])
    before = src.read_bytes()
    monkeypatch.setattr(grade, "get_task", lambda *a, **k: pytest.fail("graded before checking its arguments"))
    cases = [(["-o", str(src)], "is also an input"), (["-o", str(tmp_path)], "is a directory"),
             (["--workers", "-2"], "--workers must be an integer ≥ 1 (got -2)"),
             (["--workers", "0"], "--workers must be"), (["--timeout", "0"], "--timeout must be"),
             (["--timeout", "-1"], "--timeout must be"), (["--timeout", "nan"], "--timeout must be")]
    if os.geteuid() != 0:  # root writes anywhere
        (tmp_path / "ro").mkdir(mode=0o500)
        cases.append((["-o", str(tmp_path / "ro" / "out.jsonl")], "not writable"))
    for args, message in cases:
        assert main(["grade", str(src), "--quiet", *args]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, (args, err)
    assert src.read_bytes() == before


def test_the_grader_setting_default_reads_what_models_write_strict_reads_boxes(tmp_path):
    """One setting for every command that grades math: the default reads the final boxes, an answer phrase or a
    final expression and says which rule found the answer; strict reads boxed answers only."""
    from t1 import config as C
    from t1.rl.config import RLConfig
    from t1.stages.evaluate import EvalConfig
    from t1.stages.scale import ScaleConfig

    src = tmp_path / "r.jsonl"
    rows = [{"response": "So $x = \\boxed{2}$ or $x = \\boxed{5}$.", "answer": "2, 5"},
            {"response": "Final Answer: The smallest $k$ is 12.", "answer": "12"},
            {"response": "Completing the square, the minimum value is\n\n$-7$", "answer": "-7"}]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for grader, correct, rules in (("default", [True, True, True], ["boxed", "answer_phrase", "final_expression"]),
                                   ("strict", [True, False, False], ["boxed", "", ""])):
        out = tmp_path / f"{grader}.jsonl"
        assert main(["grade", str(src), "-o", str(out), "--grader", grader, "--quiet"]) == 0
        graded = [json.loads(line) for line in out.read_text().splitlines()]
        assert [g["correct"] for g in graded] == correct and [g["rule"] for g in graded] == rules
    assert C.load(RLConfig, None, ["model=m", "data.grader=strict"]).data.grader == "strict"
    assert C.load(EvalConfig, None, ["model=m", "grader=strict"]).grader == "strict"
    assert C.load(ScaleConfig, None, ["models=[m]", "grader=strict"]).grader == "strict"
    with pytest.raises(C.ConfigError, match="grader"):
        C.load(EvalConfig, None, ["model=m", "grader=lenient"])
