"""`t1 rl`'s engine lifecycle with an engine that holds a copy of the weights (vLLM): asleep from its start,
woken only by a push, asleep again whenever a checkpoint or final/ is written (their FSDP gathers do not fit
beside an awake vLLM on a GPU), and a resumed run's first push goes through the wake path. The recording engine
samples with the fast engine (on the policy's own tensors) and checks what vLLM would refuse."""

import pytest

from t1 import config as C
from t1.rl.config import RLConfig
from t1.rollout.fast import FastEngine
from t1.stages import rl as rl_stage
from t1.stages.rl import RLTrainer, train_rl


class RecordingEngine:
    """Samples like the fast engine; records every lifecycle call and refuses what vLLM would refuse."""

    shares_weights = False

    def __init__(self, model, tok, log: list):
        self.inner, self.log = FastEngine(model, tok), log
        self.asleep, self.version = False, -1

    def sleep(self):
        self.log.append("sleep")
        self.asleep = True

    def push_weights(self, weights, version):
        assert sum(1 for _ in weights) > 0
        self.log.append(f"push {version}" + (" (woken)" if self.asleep else " (awake)"))
        self.asleep, self.version = False, version

    def generate(self, prompts, seeds, params, version=None):
        assert not self.asleep and version == self.version, (self.asleep, version, self.version)
        self.log.append("generate")
        return self.inner.generate(prompts, seeds, params)

    def close(self):
        self.log.append("close")


class RecordingTask:
    """The real task, its grader's start and close recorded."""

    def __init__(self, task, log: list):
        self.task, self.log = task, log

    def start(self):
        self.log.append("graders start")

    def score(self, *a, **kw):
        return self.task.score(*a, **kw)

    def close(self):
        self.log.append("graders close")
        self.task.close()


@pytest.fixture
def recorded(monkeypatch):
    """Every `t1 rl` in the test gets a RecordingEngine and a RecordingTask; the log also shows the accelerator
    (with its timeout), checkpoints and final/ and whether the engine was asleep then; ``made``: the keywords
    make_engine got."""
    log, made, engines = [], [], []
    real_get_task, real_accelerator = rl_stage.get_task, rl_stage.make_accelerator
    real_ckpt, real_final = RLTrainer._checkpoint, rl_stage.RunDir.save_final

    def make(cfg, model, tok, **kw):
        made.append(kw)
        engines.append(RecordingEngine(model, tok, log))
        return engines[-1]

    def asleep() -> str:
        return "asleep" if engines[-1].asleep else "AWAKE"

    def accelerator(precision, timeout):
        log.append(f"accelerator {timeout:.0f}")
        return real_accelerator(precision, timeout)

    def ckpt(self, step):
        log.append(f"checkpoint {step} {asleep()}")
        return real_ckpt(self, step)

    def save_final(self, *a, **kw):
        log.append(f"final {asleep()}")
        return real_final(self, *a, **kw)

    monkeypatch.setattr(rl_stage, "make_engine", make)
    monkeypatch.setattr(rl_stage, "get_task", lambda *a, **kw: RecordingTask(real_get_task(*a, **kw), log))
    monkeypatch.setattr(rl_stage, "make_accelerator", accelerator)
    monkeypatch.setattr(RLTrainer, "_checkpoint", ckpt)
    monkeypatch.setattr(rl_stage.RunDir, "save_final", save_final)
    return log, made


def cfg(model_dir, out, *extra):
    return C.load(RLConfig, None, [
        f"model={model_dir}", f"out={out}", "rollout.prompts_per_step=4", "rollout.samples_per_prompt=4",
        "rollout.max_new_tokens=6", "data.num_prompts=16", "train.save_every=2", "train.rollouts_every=0",
        "train.nccl_timeout=1234", *extra])


def test_checkpoints_and_final_are_written_while_the_engine_sleeps(tiny_model_dir, tmp_path, recorded):
    """Also: the graders fork before the accelerator (CUDA, NCCL) and the engine start, and
    train.nccl_timeout reaches the accelerator (and from there the process group: tests/runtime/test_device)."""
    log, made = recorded
    train_rl(cfg(tiny_model_dir, tmp_path / "run", "train.steps=3"), progress=False)
    assert made[0]["training"] is True  # t1 rl's engine: dummy weights and sleep mode (test_vllm_engine)
    assert log == ["graders start", "accelerator 1234",
                   "sleep",  # right after the engine's start: the first push wakes it
                   "push 0 (woken)", "generate", "sleep",
                   "push 1 (woken)", "generate", "sleep", "checkpoint 2 asleep",
                   "push 2 (woken)", "generate", "sleep", "checkpoint 3 asleep", "final asleep",
                   "graders close", "close"]


def test_a_resumed_runs_first_push_wakes_a_sleeping_engine(tiny_model_dir, tmp_path, recorded):
    log, _ = recorded
    out = tmp_path / "run"
    train_rl(cfg(tiny_model_dir, out, "train.steps=2"), progress=False)
    log.clear()
    train_rl(cfg(tiny_model_dir, out, "train.steps=3"), resume=True, progress=False)
    assert log[:5] == ["graders start", "accelerator 1234", "sleep", "push 2 (woken)", "generate"]
    assert "AWAKE" not in " ".join(log)


def test_a_failed_setup_closes_the_graders_and_the_engine(tiny_model_dir, tmp_path, recorded, monkeypatch):
    """A setup that fails after the engine started releases the graders and the engine (and the run's lock)."""
    log, _ = recorded

    def fail(self):
        raise RuntimeError("boom")

    monkeypatch.setattr(RLTrainer, "_sleep_engine", fail)
    with pytest.raises(RuntimeError, match="boom"):
        RLTrainer(cfg(tiny_model_dir, tmp_path / "run", "train.steps=1"), progress=False)
    assert log == ["graders start", "accelerator 1234", "graders close", "close"]
