import json

from t1.cli import main
from t1.data import DATA_DIR
from t1.stages.prepare import Decontaminator

DATA = DATA_DIR / "math_train.jsonl"

HEXAGON = ("A regular hexagon can be divided into six equilateral triangles. If the perimeter of one of the "
           "triangles is 21 inches, what is the perimeter, in inches, of the regular hexagon?")  # MATH500


def test_decontamination_drops_a_paraphrase_and_keeps_an_unrelated_problem():
    deco = Decontaminator([("math500:5", HEXAGON)], n=5, overlap=0.5)
    paraphrase = ("A regular hexagon can be split into six equilateral triangles. If the perimeter of one of the "
                  "triangles is 27 inches, what is the perimeter, in inches, of the regular hexagon?")
    assert deco.match(paraphrase) == "math500:5"
    assert deco.match("A bag holds 4 red and 6 blue marbles. What is the probability that a marble drawn at "
                      "random is red?") is None
    assert deco.match("How many positive whole-number divisors does 196 have?") is None


def test_prepare_end_to_end_reports_its_counts(tmp_path, capsys):
    rows = [
        {"problem": "What is $2+3$?", "answer": "5"},
        {"problem": "What is $2+3$?", "answer": "5"},                                   # duplicate
        {"problem": "Prove that there are infinitely many primes.", "answer": "QED"},   # proof
        {"problem": "(a) Find $x$. (b) Find $y$.", "answer": "1, 2"},                  # multi-part
        {"problem": "Who proved the theorem?", "answer": "Leonhard Euler and Joseph Lagrange"},  # free text
        {"problem": "Compute $6 \\cdot 7$.", "solution": "We get $\\boxed{42}$."},       # answer from solution
        {"problem": "What is the answer?"},                                              # no answer
        {"problem": HEXAGON.replace("21", "24"), "answer": "48"},                       # near-duplicate of MATH500
        {"problem": "Which is largest? (A) 1 (B) 2 (C) 3", "answer": "\\text{(C)}"},    # choice: gradable
    ]
    src = tmp_path / "raw.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "prompts.jsonl"
    assert main(["prepare", f"inputs=[{src}]", f"out={out}"]) == 0
    kept = [json.loads(line) for line in out.read_text().splitlines()]
    assert [k["answer"] for k in kept] == ["5", "42", "\\text{(C)}"]
    report = json.loads((tmp_path / "prompts.report.json").read_text())
    assert report["rows"] == 9 and report["kept"] == 3
    assert report["dropped"] == {"duplicate": 1, "proof": 1, "multi-part": 1, "free text": 1, "no answer": 1,
                                 "near-duplicate of an eval problem": 1}
    assert report["contamination_by_eval_set"] == {"math500": 1}
    assert "kept 3 of 9 rows" in capsys.readouterr().err


def test_prepare_on_the_shipped_math_train_pool(tmp_path):
    out = tmp_path / "p.jsonl"
    assert main(["prepare", f"inputs=[{DATA}]", f"out={out}", "check_parse=false"]) == 0
    report = json.loads((tmp_path / "p.report.json").read_text())
    assert report["rows"] == 7474 and 6500 < report["kept"] < 7474
    assert report["contamination_by_eval_set"].get("math500", 0) > 10


def test_an_output_that_is_an_input_or_unwritable_is_refused_before_any_work(tmp_path, capsys):
    src = tmp_path / "raw.jsonl"
    src.write_text(json.dumps({"problem": "What is 1 + 1?", "answer": "2"}) + "\n")
    before = src.read_text()
    assert main(["prepare", f"inputs=[{src}]", f"out={src}"]) == 2
    assert "is also an input" in capsys.readouterr().err and src.read_text() == before
    (tmp_path / "taken").write_text("a file where a folder should be")
    assert main(["prepare", f"inputs=[{src}]", f"out={tmp_path / 'taken' / 'out.jsonl'}"]) == 2
    assert "cannot create its folder" in capsys.readouterr().err
