"""Experiment trackers: each backend writes real files that its own reader reads back (scalars, config, tables,
summary, a resumed run continuing the same run), no network and no account; a missing library, an unknown name
and a backend that cannot start are one ConfigError line; a backend failing mid-run is warned about once and
switched off while the run goes on."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from t1.config import ConfigError, load
from t1.runtime import trackers as trk
from t1.runtime.trackers import ReportTo, Trackers, markdown_table, mlflow_key, report_to_option, scalars

CONFIG = {"model": {"name": "tiny", "layers": 2}, "train": {"lr": 3e-4, "budgets": [64, 128]}, "seed": 1}
ROWS = [{"reward": 0.5 + s, "completions/mean_length": 12.0 + s, "step": s, "note": "x", "bad": float("nan"),
         "nested": {"a": 1}, "missing": None} for s in range(3)]
LOGGED = {"reward", "completions/mean_length", "step"}
COMPLETIONS = [{"prompt": "2+2=", "response": "4 | four\nok", "reward": 1.0},
               {"prompt": "3+3=", "response": "7", "reward": 0.0, "extra": True}]


def run_once(report_to, out, resume=False, **kw):
    """What a training run does: config, 3 rows of scalars, a completion table, the eval summary."""
    with Trackers(report_to, out, CONFIG, name="run1", group="g1", job_type="rl", resume=resume, **kw) as t:
        assert t.active == tuple(report_to)
        for s, row in enumerate(ROWS):
            t.log(row, step=s)
        t.table("completions", COMPLETIONS, step=2)
        t.summary({"eval": {"accuracy": 0.75, "name": "math"}})
    return t


# ------------------------------------------------------------------------------------------------- config


@dataclasses.dataclass(frozen=True)
class StageConfig:
    report_to: ReportTo = report_to_option()


def test_report_to_loads_from_the_command_line_and_rejects_unknown_names():
    assert load(StageConfig, None, ["report_to=[tensorboard,mlflow]"]).report_to == ("tensorboard", "mlflow")
    assert load(StageConfig, None, ["report_to=wandb"]).report_to == ("wandb",)
    assert load(StageConfig, None, []).report_to == ()
    with pytest.raises(ConfigError, match=r"^report_to\[1\]: must be one of 'tensorboard' .*\(got 'comet'\)$"):
        load(StageConfig, None, ["report_to=[wandb,comet]"])
    with pytest.raises(ConfigError, match="unknown tracker 'comet'"):
        Trackers(["comet"], "unused", {}, name="x")


def test_no_trackers_is_a_no_op(tmp_path):
    t = Trackers((), tmp_path / "out", CONFIG, name="x")
    t.log({"a": 1.0}, 0)
    t.table("t", [{"a": 1}], 0)
    t.summary({"a": 1.0})
    t.close()
    t.close()
    assert not (tmp_path / "out").exists() and t.active == ()


def test_helpers():
    assert scalars(ROWS[1]) == {"reward": 1.5, "completions/mean_length": 13.0, "step": 1}
    assert scalars({"ok": True, "inf": float("inf")}) == {"ok": 1}
    text = markdown_table(["a", "b"], [["x|y\nz", 0.123456789], ["w" * 900, None]], chars=10, max_rows=1)
    assert "| x\\|y<br>z | 0.123457 |" in text and "w" * 11 not in text and "(1 more rows not shown)" in text
    assert mlflow_key("completions/mean_length") == "completions/mean_length"
    assert mlflow_key("/a//b/../c?") == "a/b/c_"


# ------------------------------------------------------------------------------------------------ backends


def test_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_once(("tensorboard",), tmp_path)
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert set(acc.Tags()["scalars"]) == LOGGED | {"eval/accuracy"}
    for key in LOGGED:
        assert [(e.step, e.value) for e in acc.Scalars(key)] == [(s, float(r[key])) for s, r in enumerate(ROWS)]
    assert [(e.step, e.value) for e in acc.Scalars("eval/accuracy")] == [(2, 0.75)]
    config = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert config.startswith("```yaml\n") and "lr: 0.0003" in config
    table = acc.Tensors("completions/text_summary")[0]
    assert table.step == 2 and "| 4 \\| four<br>ok | 1 |" in table.tensor_proto.string_val[0].decode()


def wandb_records(run_dir) -> list[dict]:
    """The run's .wandb transaction log, read by wandb's own reader (``wandb leet inspect --json``)."""
    out = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(run_dir)],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_wandb_offline_and_resumed(tmp_path, monkeypatch):
    for var in ("WANDB_PROJECT", "WANDB_ENTITY", "WANDB_RUN_ID", "WANDB_RESUME", "WANDB_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for var in ("WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "home" / var.lower()))
    out = tmp_path / "run"
    run_once(("wandb",), out)
    run_id = (out / ".wandb_id").read_text().strip()
    with Trackers(["wandb"], out, CONFIG, name="run1", resume=True) as t:
        t.log({"reward": 9.0}, step=3)
    assert (out / ".wandb_id").read_text().strip() == run_id
    first, second = sorted((out / "wandb").glob(f"offline-run-*-{run_id}"))

    records = wandb_records(first)
    (run,) = [r["run"] for r in records if r["type"] == "run"]
    assert (run["run_id"], run["display_name"], run["project"], run["run_group"], run["job_type"]) == \
        (run_id, "run1", "t1", "g1", "rl")
    assert {k: v for k, v in run["config"]["update"].items() if k != "_wandb"} == CONFIG
    history = [r["history"]["item"] for r in records if r["type"] == "history"]
    assert [{k: v for k, v in h.items() if k in LOGGED} for h in history] == \
        [{k: r[k] for k in LOGGED} for r in ROWS]
    assert not any({"note", "bad", "nested", "missing"} & set(h) for h in history)
    assert (history[2]["completions._type"], history[2]["completions.nrows"]) == ("table-file", 2)
    summary = {}
    for r in records:
        if r["type"] == "summary":
            summary.update(r["summary"].get("update", {}))
    assert summary["eval/accuracy"] == 0.75 and summary["reward"] == 2.5
    assert [r["exit"]["exit_code"] for r in records if r["type"] == "exit"] == [0]

    resumed = wandb_records(second)
    assert [r["run"]["run_id"] for r in resumed if r["type"] == "run"] == [run_id]
    assert [(r["history"]["step"]["num"], r["history"]["item"]["reward"]) for r in resumed
            if r["type"] == "history"] == [(3, 9.0)]


@pytest.fixture
def trackio_dir(tmp_path, monkeypatch):
    """Trackio's local store in tmp_path: TRACKIO_DIR, which trackio reads once when imported, so the modules
    that copied it are patched too."""
    import trackio  # noqa: F401

    store = tmp_path / "trackio"
    monkeypatch.setenv("TRACKIO_DIR", str(store))
    for var in ("TRACKIO_PROJECT", "TRACKIO_SPACE_ID", "TRACKIO_SERVER_URL"):
        monkeypatch.delenv(var, raising=False)
    for name, module in list(sys.modules.items()):
        if name.split(".")[0] == "trackio" and hasattr(module, "TRACKIO_DIR"):
            monkeypatch.setattr(module, "TRACKIO_DIR", store)
    return store


def test_trackio(tmp_path, trackio_dir):
    from trackio.sqlite_storage import SQLiteStorage

    run_once(("trackio",), tmp_path / "run")
    with Trackers(["trackio"], tmp_path / "run", CONFIG, name="run1", group="g1", resume=True) as t:
        t.log({"reward": 9.0}, step=3)
    assert (trackio_dir / "t1.db").is_file()
    assert SQLiteStorage.get_runs("t1") == ["run1"]  # resumed: the same run, not a second one
    logs = SQLiteStorage.get_logs("t1", "run1")
    scalar_logs = [log for log in logs if "reward" in log]
    assert [(log["step"], log["reward"], log["completions/mean_length"]) for log in scalar_logs[:3]] == \
        [(s, r["reward"], r["completions/mean_length"]) for s, r in enumerate(ROWS)]
    assert not any({"__step", "note", "bad", "nested", "missing"} & set(log) for log in logs)
    assert (scalar_logs[3]["step"], scalar_logs[3]["reward"]) == (3, 9.0)
    (table,) = [log["completions"] for log in logs if "completions" in log]
    assert table["_type"] == "trackio.table" and [r["prompt"] for r in table["_value"]] == ["2+2=", "3+3="]
    assert [(log["step"], log["eval/accuracy"]) for log in logs if "eval/accuracy" in log] == [(2, 0.75)]
    config = SQLiteStorage.get_run_config("t1", "run1")
    assert config["model"] == CONFIG["model"] and config["_Group"] == "g1"


def mlflow_client(uri):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def test_mlflow_local_store_and_resumed(tmp_path, monkeypatch):
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_ALLOW_FILE_STORE"):
        monkeypatch.delenv(var, raising=False)
    out = tmp_path / "run"
    run_once(("mlflow",), out)
    assert "MLFLOW_ALLOW_FILE_STORE" not in trk.os.environ  # set only while the store was opened
    run_id = (out / ".mlflow_run_id").read_text().strip()
    with Trackers(["mlflow"], out, {**CONFIG, "seed": 2}, name="run1", resume=True) as t:
        t.log({"reward": 9.0}, step=3)
    assert (out / ".mlflow_run_id").read_text().strip() == run_id

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = mlflow_client((out / "mlruns").resolve().as_uri())
    run = client.get_run(run_id)
    assert client.get_experiment(run.info.experiment_id).name == "t1"
    assert (run.info.run_name, run.info.status, run.data.tags["group"], run.data.tags["job_type"]) == \
        ("run1", "FINISHED", "g1", "rl")
    assert run.data.params == {"model.name": "tiny", "model.layers": "2", "train.lr": "0.0003",
                               "train.budgets": "[64, 128]", "seed": "1"}  # resumed: params kept
    for key in LOGGED:
        expected = [(s, float(r[key])) for s, r in enumerate(ROWS)] + ([(3, 9.0)] if key == "reward" else [])
        assert sorted((m.step, m.value) for m in client.get_metric_history(run_id, key)) == expected
    assert set(run.data.metrics) == LOGGED | {"eval/accuracy"}
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "eval/accuracy")] == [(2, 0.75)]
    table = Path(client.download_artifacts(run_id, "completions/step_00002.json", str(tmp_path)))
    assert json.loads(table.read_text())["columns"] == ["prompt", "response", "reward", "extra"]
    assert len(json.loads(table.read_text())["data"]) == 2
    assert "lr: 0.0003" in Path(client.download_artifacts(run_id, "config.yaml", str(tmp_path))).read_text()


def test_mlflow_honours_tracking_uri_and_experiment(tmp_path, monkeypatch):
    uri = (tmp_path / "elsewhere").resolve().as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "exp2")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    out = tmp_path / "run"
    with Trackers(["mlflow"], out, CONFIG, name="r") as t:
        t.log({"x": 1.0, "bad name?": 2.0}, step=0)
    assert not (out / "mlruns").exists()
    client = mlflow_client(uri)
    run = client.get_run((out / ".mlflow_run_id").read_text().strip())
    assert client.get_experiment(run.info.experiment_id).name == "exp2"
    assert run.data.metrics == {"x": 1.0, "bad name_": 2.0}


# ------------------------------------------------------------------------------------------------- failures


def test_a_missing_library_is_one_line_before_anything_opens(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(ConfigError) as e:
        Trackers(["tensorboard", "wandb"], tmp_path / "out", CONFIG, name="x")
    assert str(e.value) == "report_to: wandb needs its library: pip install 't1[wandb]'"
    assert not (tmp_path / "out").exists()


def test_a_backend_that_cannot_start_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "nosuchscheme://host/path")
    with pytest.raises(ConfigError, match=r"^report_to: mlflow could not start: \w+") as e:
        Trackers(["tensorboard", "mlflow"], tmp_path, CONFIG, name="x")
    assert "\n" not in str(e.value)


class Broken:
    name = "broken"
    closed = 0

    def log(self, values, step):
        raise RuntimeError("connection lost\nretrying later")

    def close(self, failed):
        self.closed += 1


def test_a_backend_failing_mid_run_is_warned_once_and_switched_off(tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    broken = Broken()
    with Trackers(["tensorboard"], tmp_path, CONFIG, name="x") as t:
        t.backends.append(broken)
        for s, row in enumerate(ROWS):
            t.log(row, step=s)
        assert t.active == ("tensorboard",)
    err = capsys.readouterr().err.splitlines()
    assert err == ["t1: warning: broken: log failed (RuntimeError: connection lost retrying later); broken gets "
                   "nothing more from this run"]
    assert broken.closed == 1
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("reward")] == [0, 1, 2]


# ------------------------------------------------------------------------------------------------- resume


def killed_and_resumed(report_to, out):
    """A run logs steps 1..5 and is killed after its checkpoint at step 3; resumed from it, it logs steps 4..6
    again (the values of 4 and 5 marked, to see which copy a tracker keeps). The kill is a close: the data
    the killed run had sent is what a tracker holds either way."""
    with Trackers(report_to, out, CONFIG, name="run1") as t:
        for s in range(1, 6):
            t.log({"reward": float(s)}, step=s)
    with Trackers(report_to, out, CONFIG, name="run1", resume=True, resume_step=3) as t:
        for s in range(4, 7):
            t.log({"reward": s + 0.5}, step=s)


def test_a_resumed_run_shows_each_step_once_in_tensorboard(tmp_path):
    """TensorBoard purges the events the killed run logged past the checkpoint: the resumed run's copy shows."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    killed_and_resumed(("tensorboard",), tmp_path)
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("reward")] == [(1, 1), (2, 2), (3, 3), (4, 4.5), (5, 5.5),
                                                                   (6, 6.5)]
    assert len(acc.Tensors("config/text_summary")) == 1  # the config once, not again on resume


def test_a_resumed_run_shows_each_step_once_in_mlflow(tmp_path, monkeypatch):
    """MLflow cannot delete points: the steps it holds are not sent again (in a real run their values are
    equal: resume is exact)."""
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_ALLOW_FILE_STORE"):
        monkeypatch.delenv(var, raising=False)
    killed_and_resumed(("mlflow",), tmp_path)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = mlflow_client((tmp_path / "mlruns").resolve().as_uri())
    run_id = (tmp_path / ".mlflow_run_id").read_text().strip()
    assert sorted((m.step, m.value) for m in client.get_metric_history(run_id, "reward")) == \
        [(1, 1), (2, 2), (3, 3), (4, 4), (5, 5), (6, 6.5)]


def test_a_resumed_run_shows_each_step_once_in_trackio(tmp_path, trackio_dir):
    from trackio.sqlite_storage import SQLiteStorage

    killed_and_resumed(("trackio",), tmp_path / "run")
    assert [(log["step"], log["reward"]) for log in SQLiteStorage.get_logs("t1", "run1")] == \
        [(1, 1), (2, 2), (3, 3), (4, 4), (5, 5), (6, 6.5)]
