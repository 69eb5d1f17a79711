"""Benchmark loaders (t1.eval.benchmarks): GPQA from its CSV, the shipped files."""

import csv

import pytest

from t1.eval.benchmarks import load_bench, load_gpqa
from t1.io import DataError


def test_gpqa_loader_on_a_made_up_csv(tmp_path):
    path = tmp_path / "gpqa.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["Question", "Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2",
                                          "Incorrect Answer 3", "Subdomain", "High-level domain", "Explanation"])
        w.writeheader()
        for i in range(20):
            w.writerow({"Question": f"Q{i}?", "Correct Answer": f"right{i}", "Incorrect Answer 1": f"w1-{i}",
                        "Incorrect Answer 2": f"w2-{i}", "Incorrect Answer 3": f"w3-{i}", "Subdomain": "x",
                        "High-level domain": "y", "Explanation": "z"})
    items = load_gpqa(path)
    assert items == load_gpqa(path)  # the shuffle is seeded
    letters = set()
    for i, it in enumerate(items):
        line = next(line for line in it.prompt.splitlines() if line.endswith(f"right{i}"))
        assert line.startswith(f"{it.answer})")  # the recorded letter is where the correct option landed
        letters.add(it.answer)
    assert len(letters) > 1
    task, _ = load_bench("gpqa", gpqa_csv=str(path))
    assert task == "choice"
    bad = tmp_path / "bad.csv"
    bad.write_text("Question,Correct Answer\nq,a\n")
    with pytest.raises(Exception, match="missing column"):
        load_gpqa(bad)



def test_shipped_benchmarks_load():
    sizes = {"math500": 500, "aime24": 30, "aime25": 30, "amc23": 40, "omni500": 500, "countdown": 500}
    for name, n in sizes.items():
        task, items = load_bench(name)
        assert len(items) == n and task in ("math", "countdown")
        assert "\\boxed{}" in items[0].prompt or task == "countdown"



def test_a_malformed_gpqa_csv_is_one_line_naming_it(tmp_path):
    cols = ["Question", "Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3"]
    huge = tmp_path / "huge.csv"
    with open(huge, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        w.writerow(["q1", "a", "b", "c", "d"])
        w.writerow(["x" * 300_000, "a", "b", "c", "d"])  # over the csv module's field limit
    with pytest.raises(DataError, match=r"huge.csv:\d+: not a readable CSV row"):
        load_gpqa(huge)
    empty = tmp_path / "empty_option.csv"
    empty.write_text(",".join(cols) + "\nq1,a,,c,d\n")
    with pytest.raises(DataError, match=r"empty_option.csv:2: a question or option is empty"):
        load_gpqa(empty)
    with pytest.raises(DataError, match="is a directory"):
        load_gpqa(tmp_path)


def test_gpqa_options_are_shuffled_per_sample_with_a_recorded_seed():
    """Every sample of a multiple-choice question sees its own seeded option order, and its gold letter follows
    the correct option: a model's letter preference cannot pass for accuracy, and a rerun sees the same orders."""
    from t1.eval.benchmarks import choice_item, for_sample

    item = choice_item("q7", "Which is right?", ("right", "w1", "w2", "w3"), [2, 0, 3, 1])
    assert item.answer == "B" and item.extra["option_order"] == [2, 0, 3, 1]
    views = [for_sample(item, seed=0, k=k) for k in range(8)]
    assert len({tuple(v.extra["option_order"]) for v in views}) > 2  # orders differ between samples
    for v in views:
        line = next(line for line in v.prompt.splitlines() if line.endswith(") right"))
        assert line.startswith(f"{v.answer})")
    assert [v.prompt for v in views] == [for_sample(item, 0, k).prompt for k in range(8)]  # seeded
    assert [v.prompt for v in views] != [for_sample(item, 1, k).prompt for k in range(8)]
    plain = load_bench("countdown", n_countdown=2)[1][0]
    assert for_sample(plain, 0, 3) is plain  # other items are unchanged
