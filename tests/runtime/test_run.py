"""The run directory: one run at a time, whole checkpoints only, logs without repeats or torn lines, no code
from a state file, no NaN weights written, clear errors when a save fails."""

import errno
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from t1.cli import main
from t1.config import ConfigError
from t1.io import DataError
from t1.model.load import ModelConfig, build_model, build_tokenizer
from t1.runtime import run as runlib
from t1.runtime.run import CHECKPOINT_STATE, Log, RunDir, RunError, checkpoint_dirs


class OneProcess:
    is_main_process = True

    def wait_for_everyone(self):
        pass


@pytest.fixture(scope="module")
def tiny():
    tok = build_tokenizer(20)
    return build_model(ModelConfig(hidden=16, layers=1, heads=2, kv_heads=2, ffn=32, max_positions=64), tok), tok


def checkpoint(run: RunDir, step: int, tiny, keep: int = 5, **state):
    model, tok = tiny
    run.save_checkpoint(step, model, tok, lambda: (None, {"optimizer": {"x": torch.ones(2)}, **state}), keep)


def test_torn_last_log_line_is_dropped_on_resume(tmp_path, capsys):
    """A failed write leaves half a row at the end of metrics.jsonl: resuming drops it (and the rows past the
    checkpoint's step) with a warning; damage before the last line is an error naming the line."""
    log = tmp_path / "metrics.jsonl"
    log.write_text("".join(json.dumps({"step": s, "loss": 1 / s}) + "\n" for s in range(1, 6)) + '{"step": 6, "lo')
    Log(log, resume_step=4).write({"step": 5, "loss": 0.5})
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [1, 2, 3, 4, 5]
    assert "metrics.jsonl:6: dropped a torn last line" in capsys.readouterr().err
    log.write_text('{"step": 1}\n{"st\n{"step": 2}\n')
    with pytest.raises(DataError, match=r"metrics.jsonl:2: not a valid JSON object"):
        Log(log, resume_step=1)


def test_second_run_on_a_directory_is_refused_and_a_killed_runs_lock_is_not(tmp_path):
    out = tmp_path / "run"
    first = RunDir(out, False, OneProcess())
    with pytest.raises(ConfigError, match=rf"out: {out} is in use by another run \(pid {os.getpid()}\)"):
        RunDir(out, False, OneProcess())
    assert main(["sft", f"out={out}", "--quiet"]) == 2  # the command says so in one line
    first.close()
    RunDir(out, False, OneProcess()).close()  # released on close
    code = ("import sys, time; from pathlib import Path; from t1.runtime.run import RunLock; "
            "RunLock(Path(sys.argv[1])); print(1, flush=True); time.sleep(120)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == b"1"
        with pytest.raises(ConfigError, match=rf"in use by another run \(pid {holder.pid}\)"):
            RunDir(out, False, OneProcess())
    finally:
        holder.kill()
        holder.wait()
    RunDir(out, False, OneProcess()).close()  # a killed run's lock went with it


def test_broken_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, tiny, capsys):
    """Nothing was fsynced before the rename, a power cut: the newest checkpoint's model file is empty."""
    out = tmp_path / "run"
    run = RunDir(out, False, OneProcess())
    for step in (2, 4):
        checkpoint(run, step, tiny, marker=torch.tensor(step))
    run.close()
    (out / "checkpoints" / "step-0000004" / "model.safetensors").write_bytes(b"")
    run = RunDir(out, True, OneProcess())
    assert run.checkpoint == out / "checkpoints" / "step-0000002" and run.state()["marker"] == 2
    err = capsys.readouterr().err
    assert "step-0000004: incomplete (model.safetensors: Error while deserializing header" in err
    assert "resuming from" in err
    assert [p.name for p in checkpoint_dirs(out)] == ["step-0000002"]
    assert (out / "checkpoints" / "broken-step-0000004").is_dir()  # set aside, not deleted
    checkpoint(run, 4, tiny)
    run.close()
    (out / "checkpoints" / "step-0000004" / CHECKPOINT_STATE).write_bytes(b"PK\x03\x04 torn")
    run = RunDir(out, True, OneProcess())
    assert run.checkpoint.name == "step-0000002"
    assert f"{CHECKPOINT_STATE} does not load" in capsys.readouterr().err
    run.close()


def test_stale_tmp_folders_of_a_killed_save_are_removed_at_start(tmp_path):
    out = tmp_path / "run"
    stale = [out / "checkpoints" / ".tmp-step-0000010-4242", out / ".tmp-final-4242",
             out / ".tmp-old-final-4242"]
    for p in stale:
        p.mkdir(parents=True)
        (p / "model.safetensors").write_bytes(b"x" * 100)
    (out / ".tmp-notes").mkdir()  # not a name t1 writes: left alone
    RunDir(out, False, OneProcess()).close()
    assert not any(p.exists() for p in stale) and (out / ".tmp-notes").exists()


def test_trainer_state_holding_pickled_objects_is_refused(tmp_path, tiny):
    """A run folder from someone else must not run code on --resume: trainer_state.pt loads weights only."""
    out = tmp_path / "run"
    run = RunDir(out, False, OneProcess())
    checkpoint(run, 2, tiny)
    run.close()
    state = torch.load(out / "checkpoints" / "step-0000002" / CHECKPOINT_STATE, weights_only=True)
    assert state["step"] == 2 and isinstance(state["rng"]["python"], tuple)
    torch.save({**state, "payload": ConfigError("would run code")}, out / "checkpoints" / "step-0000002" /
               CHECKPOINT_STATE)
    with pytest.raises(DataError, match=f"{CHECKPOINT_STATE}: refused: it holds pickled Python objects"):
        RunDir(out, True, OneProcess())
    with pytest.raises(ConfigError, match="already holds a run"):  # the lock was released by the failure
        RunDir(out, False, OneProcess())


def test_non_finite_weights_are_never_written(tmp_path, tiny):
    """lr=inf or a diverged run: a checkpoint or final/ full of NaN is refused in one line."""
    model, tok = tiny
    bad = {k: v.clone() for k, v in model.state_dict().items()}
    bad["model.norm.weight"][0] = float("nan")
    run = RunDir(tmp_path / "run", False, OneProcess())
    with pytest.raises(RunError, match=r"final: not written: the weights hold NaN or inf \(first in model.norm"):
        run.save_final(model, tok, bad)
    with pytest.raises(RunError, match=r"step-0000003: not written: the weights hold NaN or inf"):
        run.save_checkpoint(3, model, tok, lambda: (bad, {}), 2)
    run.close()
    assert not (tmp_path / "run" / "final").exists() and checkpoint_dirs(tmp_path / "run") == []


def test_failed_save_is_one_error_and_keeps_earlier_checkpoints(tmp_path, tiny, monkeypatch):
    """A full disk during torch.save says only `[enforce fail at inline_container.cc:672]`: the error names
    the checkpoint and the cause, removes the partial copy and leaves earlier checkpoints as they were."""
    out = tmp_path / "run"
    run = RunDir(out, False, OneProcess())
    checkpoint(run, 2, tiny)

    def full_disk(state, path):
        open(path, "wb").write(b"PK partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1216 vs 1110")

    monkeypatch.setattr(runlib.torch, "save", full_disk)
    monkeypatch.setattr(runlib.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10 << 30, 10 << 30, 0))
    with pytest.raises(RunError, match=r"step-0000004: could not be written: no space left on device "
                                       r"\(0 MiB free\); nothing was replaced"):
        checkpoint(run, 4, tiny)
    monkeypatch.undo()

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(type(tiny[0]), "save_pretrained", no_space)
    with pytest.raises(RunError, match=r"final: could not be written: no space left on device"):
        run.save_final(*tiny, None)
    run.close()
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-0000002"] and not (out / "final").exists()
    assert RunDir(out, True, OneProcess()).state()["step"] == 2
