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

from t1 import config as C
from t1.cli import main
from t1.config import ConfigError
from t1.io import DataError
from t1.model.load import ModelConfig, build_model, build_tokenizer
from t1.runtime import resume as resumelib
from t1.runtime import run as runlib
from t1.runtime.checkpoint import write_checksums
from t1.runtime.run import CHECKPOINT_STATE, CHECKSUMS, Log, RunDir, RunError, checkpoint_dirs


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


def two_checkpoints(out, tiny):
    """A run folder ``out`` holding checkpoints at steps 2 and 4 (each trainer state marked with its step)."""
    run = RunDir(out, False, OneProcess())
    for step in (2, 4):
        checkpoint(run, step, tiny, marker=torch.tensor(step))
    run.close()
    return out


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
    out = two_checkpoints(tmp_path / "run", tiny)
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
    (out / "checkpoints" / "step-0000004" / CHECKSUMS).unlink()  # a checkpoint from before checksums
    run = RunDir(out, True, OneProcess())
    assert run.checkpoint.name == "step-0000002"
    assert f"incomplete ({CHECKPOINT_STATE} does not load" in capsys.readouterr().err
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
    write_checksums(out / "checkpoints" / "step-0000002")  # whoever made the folder made its checksums too
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


# ---------------------------------------------------------------------------------------------- what is whole


def flip_a_weight_byte(path):
    """One byte of the tensor data changed, the safetensors header intact (bit rot, a copy gone wrong)."""
    data = bytearray(path.read_bytes())
    start = 8 + int.from_bytes(data[:8], "little")
    data[start + (len(data) - start) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_checksums_catch_damaged_bytes_under_an_intact_header(tmp_path, tiny, capsys):
    out = two_checkpoints(tmp_path / "run", tiny)
    ckpt = out / "checkpoints" / "step-0000004"
    files = json.loads((ckpt / CHECKSUMS).read_text())["files"]
    assert set(files) == {p.name for p in ckpt.iterdir()} - {CHECKSUMS} and CHECKPOINT_STATE in files
    flip_a_weight_byte(ckpt / "model.safetensors")
    run = RunDir(out, True, OneProcess())
    assert run.checkpoint.name == "step-0000002" and run.state()["marker"] == 2
    run.close()
    err = capsys.readouterr().err
    assert "step-0000004: damaged (model.safetensors: its bytes do not match checksums.json" in err
    assert "set aside as broken-step-0000004" in err
    (out / "checkpoints" / "step-0000002" / CHECKSUMS).unlink()  # from before checksums: taken as it is
    run = RunDir(out, True, OneProcess())
    assert run.checkpoint.name == "step-0000002" and not capsys.readouterr().err
    run.close()


def test_a_lora_checkpoint_is_whole_and_its_adapter_is_checked(tmp_path, capsys):
    """A LoRA run's checkpoint is the adapter (adapter_config.json + adapter_model.safetensors), no config.json
    or model.safetensors: it is resumed from, not set aside as incomplete."""
    from t1.model import lora

    tok = build_tokenizer(20)
    model = lora.apply(build_model(ModelConfig(hidden=16, layers=1, heads=2, kv_heads=2, ffn=32,
                                               max_positions=64), tok), lora.LoraConfig(rank=2))
    out = tmp_path / "run"
    run = RunDir(out, False, OneProcess())
    run.save_kwargs = lora.save_kwargs(model)
    for step in (2, 4):
        checkpoint(run, step, (model, tok))
    run.close()
    ckpt = out / "checkpoints" / "step-0000004"
    assert (ckpt / "adapter_config.json").exists() and not (ckpt / "config.json").exists()
    run = RunDir(out, True, OneProcess())
    assert run.checkpoint == ckpt and not capsys.readouterr().err
    run.close()
    flip_a_weight_byte(ckpt / "adapter_model.safetensors")
    run = RunDir(out, True, OneProcess())
    assert run.checkpoint.name == "step-0000002"
    assert "damaged (adapter_model.safetensors: its bytes do not match" in capsys.readouterr().err
    run.close()
    (out / "checkpoints" / "step-0000002" / "adapter_model.safetensors").unlink()
    assert runlib.check_checkpoint(out / "checkpoints" / "step-0000002")[1] == "no adapter_model.safetensors"


def test_a_sharded_checkpoint_needs_every_shard_its_index_lists(tmp_path, tiny):
    from safetensors.torch import save_file

    ckpt = tmp_path / "step-0000002"
    ckpt.mkdir()
    (ckpt / "config.json").write_text("{}")
    shards = [f"model-0000{i}-of-00002.safetensors" for i in (1, 2)]
    index = {"weight_map": {"a": shards[0], "b": shards[1]}}
    (ckpt / "model.safetensors.index.json").write_text(json.dumps(index))
    save_file({"a": torch.ones(2)}, str(ckpt / shards[0]))
    torch.save({"step": 2}, ckpt / CHECKPOINT_STATE)
    assert runlib.check_checkpoint(ckpt) == (None, f"no {shards[1]}")
    save_file({"b": torch.ones(2)}, str(ckpt / shards[1]))
    assert runlib.check_checkpoint(ckpt) == ({"step": 2}, None)


# ---------------------------------------------------------------------------------------------- a changed config


def rl(*extra):
    from t1.rl.config import RLConfig

    return C.load(RLConfig, None, ["model=m", "out=runs/x", *extra])


def sft(*extra):
    from t1.stages.sft import SFTConfig

    return C.load(SFTConfig, None, ["out=runs/x", *extra])


@pytest.mark.parametrize("make, before, after, refused", [
    (rl, ["train.optim.lr=0.001"], ["train.optim.lr=0.002"], "train.optim.lr 0.001 → 0.002"),
    (rl, [], ["train.seed=1", "rollout.samples_per_prompt=16"],
     "rollout.samples_per_prompt 64 → 16, train.seed 0 → 1"),
    (rl, [], ["model=other"], "model m → other"),
    (rl, [], ["lora.rank=4"], "lora.rank 0 → 4"),
    (rl, [], ["data.num_prompts=64"], "data.num_prompts 4096 → 64"),
    (rl, ["train.steps=2"], ["train.steps=4", "train.optim.schedule=cosine"],
     "train.steps 2 → 4 (the cosine lr schedule and warm-up span train.steps), train.optim.schedule constant → "
     "cosine"),
    (rl, ["train.steps=2", "train.optim.warmup_ratio=0.1"], ["train.steps=4", "train.optim.warmup_ratio=0.1"],
     "train.steps 2 → 4 (the constant lr schedule"),
    (sft, [], ["train.epochs=4"], "train.epochs 3.0 → 4.0 (the cosine lr schedule"),
    (sft, [], ["tiny.hidden=64"], "tiny.hidden 128 → 64"),
    (sft, [], ["data.num_examples=10", "train.batch_size=8"],
     "data.num_examples 20000 → 10, train.batch_size 64 → 8"),
    (rl, ["train.steps=2"], ["train.steps=4", "report_to=[tensorboard]", "train.save_every=1", "out=elsewhere",
                             "train.micro_batch_tokens=1000"], None),  # a longer run under a constant lr
    (sft, ["train.max_steps=5"], ["train.max_steps=0", "train.log_every=1", "lora.save_merged=true"], None),
])
def test_resume_refuses_a_changed_field_that_shapes_the_run(tmp_path, make, before, after, refused):
    C.save(make(*before), tmp_path / "config.yaml")
    new = make(*before, *after)
    if refused is None:
        accepted = resumelib.check(new, tmp_path)
        assert {c.field for c in accepted} == {a.split("=")[0] for a in after}
        return
    with pytest.raises(ConfigError) as e:
        resumelib.check(new, tmp_path)
    line = str(e.value)
    assert "\n" not in line and line.startswith(f"out: {tmp_path} was run with a different config: {refused}")
    assert line.endswith("resuming would mix two runs — start a new out or drop the override")


def test_resume_refusal_comes_before_anything_moves_and_accepted_changes_are_recorded(tmp_path, tiny):
    out = tmp_path / "run"
    run = RunDir(out, False, OneProcess(), rl("train.steps=2"))
    run.start_metrics(rl("train.steps=2"), 0)
    for step in (2, 4):
        checkpoint(run, step, tiny)
    run.close()
    (out / "checkpoints" / "step-0000004" / "model.safetensors").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"train.optim.lr 1.5e-06 → 0.001; resuming would mix two runs"):
        RunDir(out, True, OneProcess(), rl("train.optim.lr=0.001"))
    assert (out / "checkpoints" / "step-0000004").is_dir()  # refused: not even the broken one was set aside
    for steps in (6, 8):
        cfg = rl(f"train.steps={steps}", "train.log_every=2")
        run = RunDir(out, True, OneProcess(), cfg)
        run.start_metrics(cfg, 2)
        run.close()
    text = (out / "config.yaml").read_text()
    assert text.startswith("# resumed at step 2: train.steps 2 → 6, train.log_every 1 → 2\n"
                           "# resumed at step 2: train.steps 6 → 8\n")
    assert C.load(type(cfg), out / "config.yaml").train.steps == 8


class OtherRank(OneProcess):
    is_main_process, num_processes = False, 2


def test_every_process_follows_the_main_process_choice(tmp_path, tiny, monkeypatch):
    """Under torchrun only the main process checks the checkpoints and the config; the others take its choice
    (a broadcast), so they go on from the same checkpoint or stop with the same one line."""
    import accelerate.utils

    out = tmp_path / "run"
    run = RunDir(out, False, OneProcess())
    checkpoint(run, 2, tiny, marker=torch.tensor(7))
    run.close()
    sent = [("step-0000002", None)]
    monkeypatch.setattr(accelerate.utils, "broadcast_object_list", lambda objs, from_process=0: list(sent))
    run = RunDir(out, True, OtherRank())
    assert run.checkpoint == out / "checkpoints" / "step-0000002" and run.state()["marker"] == 7
    sent[0] = (None, ("config", "out: x was run with a different config: train.seed 0 → 1"))
    with pytest.raises(ConfigError, match=r"^out: x was run with a different config: train.seed 0 → 1$"):
        RunDir(out, True, OtherRank())


@pytest.mark.parametrize("mask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_checkpoints_and_final_get_the_mode_the_umask_gives(tmp_path, tiny, mask, file_mode, dir_mode):
    """safetensors writes its files 0600 whatever the umask: a team's shared run folder was unreadable to the
    group. Every file and folder of a checkpoint and of final/ now gets the umask's mode."""
    old = os.umask(mask)
    try:
        run = RunDir(tmp_path / "run", False, OneProcess())
        checkpoint(run, 1, tiny)
        run.save_final(*tiny, None)
        run.close()
    finally:
        os.umask(old)
    for root in (tmp_path / "run" / "checkpoints" / "step-0000001", tmp_path / "run" / "final"):
        assert root.stat().st_mode & 0o777 == dir_mode, root
        files = [p for p in root.rglob("*") if p.is_file()]
        assert any(p.suffix == ".safetensors" for p in files), files
        assert {p.name: oct(p.stat().st_mode & 0o777) for p in files} == {p.name: oct(file_mode) for p in files}


def test_log_rows_are_strict_json_even_holding_nan_or_infinity(tmp_path):
    """A non-finite metric (a diverged loss, an IS weight from a bad server) was written as NaN / Infinity:
    Python reads it back, jq and pandas do not. It is null in the log; the rest of the row is kept."""
    log = Log(tmp_path / "metrics.jsonl")
    log.write({"step": 1, "loss": float("nan"), "w": [1.0, float("inf")], "ok": 0.5},
              {"step": 2, "nested": {"x": float("-inf")}})
    log.close()

    def refuse(name):
        raise ValueError(f"{name} is not JSON")

    text = (tmp_path / "metrics.jsonl").read_text()
    rows = [json.loads(line, parse_constant=refuse) for line in text.splitlines()]
    assert rows == [{"step": 1, "loss": None, "w": [1.0, None], "ok": 0.5}, {"step": 2, "nested": {"x": None}}]


def test_resume_before_the_first_checkpoint_reopens_the_trackers_run(tmp_path):
    """Killed before its first checkpoint, a run resumed with --resume starts over at step 0: TensorBoard
    showed the killed run's steps beside the new ones and MLflow kept a second run. The trackers now reopen
    the run as a resume from step 0 (TensorBoard purges every earlier event)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from t1.stages.sft import SFTConfig

    cfg = C.from_dict(SFTConfig, {"report_to": ["tensorboard"]})
    for resume, values in ((False, [1.0, 2.0, 3.0]), (True, [1.5, 2.5, 3.5, 4.5])):
        run = RunDir(tmp_path / "run", resume, OneProcess())
        run.start_metrics(cfg, 0)
        for step, value in enumerate(values, 1):
            run.log({"step": step, "loss": value})
        run.close()
    acc = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("loss")] == [(1, 1.5), (2, 2.5), (3, 3.5), (4, 4.5)]


def test_the_same_model_spelled_another_way_is_no_change(tmp_path, monkeypatch):
    """config.yaml keeps `model` as typed: `m`, `./m` and its absolute path are one model (resuming with another
    spelling was refused); a different existing directory, or a name not here, is still a change."""
    (tmp_path / "m").mkdir()
    (tmp_path / "m2").mkdir()
    monkeypatch.chdir(tmp_path)
    old = {"model": "m", "data.paths": ["m"]}
    for spelling in ("./m", str(tmp_path / "m"), "m/"):
        assert resumelib.changes(old, {"model": spelling, "data.paths": [spelling]}) == ([], [])
    refused, _ = resumelib.changes(old, {"model": "m2", "data.paths": ["m"]})
    assert [c.field for c in refused] == ["model"]
    refused, _ = resumelib.changes({"model": "Qwen/Qwen2.5-7B"}, {"model": "qwen/qwen2.5-7b"})
    assert [c.field for c in refused] == ["model"]
