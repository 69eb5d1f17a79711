"""A task of the user's own (a t1.tasks.base.Task subclass named by import path) in every stage that grades:
`t1 grade`, `t1 rl` / `t1 filter` (data.task), `t1 eval` / `t1 scale` on a .jsonl benchmark (task)."""

import json
import textwrap

import pytest

from t1.cli import main
from t1.config import ConfigError
from t1.tasks import get_task

TASK = '''
from t1.tasks.base import Score, Task

class Echo(Task):
    """Correct when the response contains the gold answer's text."""
    name = "echo"

    def score_one(self, response, item):
        hit = (item.answer or "") in response
        return Score(hit, item.answer if hit else None, "ok")

class NotATask:
    pass
'''


@pytest.fixture
def task_file(tmp_path):
    path = tmp_path / "my_task.py"
    path.write_text(textwrap.dedent(TASK))
    return path


def test_a_user_task_loads_by_import_path_and_mistakes_are_one_line(task_file):
    task = get_task(f"{task_file}:Echo")
    assert task.name == "echo" and task.score_one("say 42", task.item({"problem": "p", "answer": 42}, "x")).correct
    for ref, msg in [(f"{task_file}:NotATask", "is not a subclass of t1.tasks.base.Task"),
                     (f"{task_file}:Missing", "has no 'Missing'")]:
        with pytest.raises(ConfigError, match=msg):
            get_task(ref)
    with pytest.raises(ValueError, match="unknown task 'maths'"):
        get_task("maths")


def test_grade_rl_and_eval_take_it(task_file, tmp_path, tiny_model_dir, capsys):
    rows = tmp_path / "g.jsonl"
    rows.write_text("".join(json.dumps(r) + "\n" for r in [{"response": "it is 7", "answer": "7"},
                                                            {"response": "no", "answer": "7"}]))
    assert main(["grade", str(rows), "--task", f"{task_file}:Echo", "--quiet"]) == 0
    assert [json.loads(x)["correct"] for x in capsys.readouterr().out.splitlines()] == [True, False]
    assert main(["grade", str(rows), "--task", "mathz"]) == 2
    assert "--task: must be one of countdown, math, choice or a Task subclass" in capsys.readouterr().err

    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"problem": f"say {i}", "answer": str(i)}) + "\n" for i in range(8)))
    out = tmp_path / "rl"
    assert main(["rl", f"model={tiny_model_dir}", f"out={out}", f"data.task={task_file}:Echo", "data.source=jsonl",
                 f"data.paths=[{prompts}]", "rollout.prompts_per_step=4", "rollout.samples_per_prompt=2",
                 "rollout.max_new_tokens=4", "train.steps=1", "--quiet"]) == 0
    assert (out / "final").exists()
    ev = tmp_path / "eval"
    assert main(["eval", f"model={tiny_model_dir}", f"bench=[{prompts}]", f"task={task_file}:Echo",
                 f"out={ev}", "max_new_tokens=4", "--quiet"]) == 0
    summary = json.loads((ev / "summary.json").read_text())
    assert summary["settings"]["task"] == f"{task_file}:Echo"
