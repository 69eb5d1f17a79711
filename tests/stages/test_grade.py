import json

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
