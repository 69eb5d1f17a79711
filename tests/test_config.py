import re
from dataclasses import dataclass

import pytest

from t1 import config as C
from t1.model.load import InitConfig, ModelConfig
from t1.tasks.countdown import CountdownConfig


@dataclass(frozen=True)
class Inner:
    lr: float = C.option(1e-3, "learning rate")
    budgets: tuple[int, ...] = C.option((16, 32), "budgets")
    mode: str = C.option("a", "mode")

    def validate(self):
        C.require(self.lr > 0, "lr", "must be > 0", self.lr)


@dataclass(frozen=True)
class Outer:
    name: str = C.option("x", "a name")
    steps: int = C.option(3, "steps")
    flag: bool = C.option(False, "a flag")
    inner: Inner = C.option(help="inner", factory=Inner)


def test_defaults_overrides_and_types():
    cfg = C.load(Outer, None, ["steps=7", "inner.lr=2e-5", "inner.budgets=[1, 2, 3]", "flag=true"])
    assert cfg.steps == 7 and cfg.flag is True
    assert cfg.inner.lr == pytest.approx(2e-5) and isinstance(cfg.inner.lr, float)
    assert cfg.inner.budgets == (1, 2, 3)
    assert C.load(Outer, None, ["inner.budgets=64"]).inner.budgets == (64,)
    assert C.load(Outer, None, ["inner.lr=1"]).inner.lr == 1.0  # an int where a float is expected


@pytest.mark.parametrize("override, message", [
    (["inner.lrr=1"], "inner.lrr: unknown field; did you mean 'inner.lr'?"),
    (["steps=abc"], "steps: expected an integer (got 'abc')"),
    (["flag=3"], "flag: expected true or false (got 3)"),
    (["inner.lr=-1"], "inner.lr: must be > 0 (got -1.0)"),
    (["inner.budgets=[1, x]"], "inner.budgets[1]: expected an integer (got 'x')"),
    (["noequals"], "expected dotted.key=value"),
])
def test_errors_name_the_field(override, message):
    with pytest.raises(C.ConfigError) as e:
        C.load(Outer, None, override)
    assert message in str(e.value)


def test_yaml_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: 3\ninner:\n  lr: [unclosed\n")
    with pytest.raises(C.ConfigError, match=r"bad\.yaml:\d+: invalid YAML"):
        C.load(Outer, bad)
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("inner:\n  mode: 5\n  lr: fast\n")
    with pytest.raises(C.ConfigError, match=r"wrong\.yaml: inner\.lr: expected a number \(got 'fast'\)"):
        C.load(Outer, wrong)
    with pytest.raises(C.ConfigError, match="config file not found"):
        C.load(Outer, tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(C.ConfigError, match="top level must be a mapping"):
        C.load(Outer, tmp_path / "list.yaml")


def test_save_and_reload_roundtrip(tmp_path):
    cfg = C.load(InitConfig, None, ["model.layers=2", "task.max_number=8"])
    path = C.save(cfg, tmp_path / "run" / "config.yaml")
    again = C.load(InitConfig, path)
    assert again == cfg
    assert "layers: 2" in path.read_text()


def test_frozen_and_validated_sections():
    cfg = ModelConfig()
    with pytest.raises(Exception):
        cfg.layers = 3  # type: ignore[misc]
    with pytest.raises(C.ConfigError, match="task.max_target: must be ≤ max_value"):
        C.load(InitConfig, None, ["task.max_target=500"])
    with pytest.raises(C.ConfigError, match="num_numbers: must be between 2 and 6"):
        C.from_dict(CountdownConfig, {"num_numbers": 9})


def test_describe_lists_every_leaf_with_help():
    rows = C.describe(InitConfig)
    names = [r[0] for r in rows]
    assert "model.hidden" in names and "task.stop_prob" in names and "out" in names
    assert all(r[3] for r in rows), "every field has help text"


def test_partial_section_keeps_the_sections_own_defaults():
    from t1.rl.config import RLConfig
    from t1.stages.sft import SFTConfig

    rl = C.load(RLConfig, None, ["model=x", "train.optim.lr=0.01"])
    assert rl.train.optim.lr == 0.01 and rl.train.optim.schedule == "constant"
    assert rl.train.optim.warmup_steps == 10
    sft = C.load(SFTConfig, None, ["train.optim.lr=0.003"])
    assert sft.train.optim.weight_decay == 0.0 and sft.train.optim.lr == 0.003


@pytest.mark.parametrize("override, message", [
    ("train.optim.lr=inf", "train.optim.lr: must be a finite number"),
    ("train.optim.lr=nan", "train.optim.lr: must be a finite number"),
    ("train.optim.lr=1e30", "train.optim.lr: must be in (0, 1]"),
    ("train.optim.beta2=1.0", "train.optim.beta2: must be in [0, 1)"),
    ("train.grader_timeout=-1", "train.grader_timeout: must be > 0 seconds"),
    ("train.save_every=0", "train.save_every: must be ≥ 1"),
    ("algo.kl_clamp=-0.5", "algo.kl_clamp: must be ≥ 0"),
    ("data.exclude_heldout=-3", "data.exclude_heldout: must be ≥ 0"),
])
def test_every_numeric_field_is_checked_at_load_time(override, message):
    """Out-of-range and non-finite numbers are refused before anything runs, naming the field (lr=inf and
    lr=1e30 once trained to a 100 % NaN final model)."""
    from t1.rl.config import RLConfig

    with pytest.raises(C.ConfigError, match=re.escape(message)):
        C.load(RLConfig, None, ["model=x", override])


def test_a_config_path_that_is_a_directory_or_huge_is_one_line(tmp_path):
    with pytest.raises(C.ConfigError, match="is a directory, expected a YAML config file"):
        C.read_yaml(tmp_path)
    big = tmp_path / "big.yaml"
    big.write_text("a: " + "x" * (C.MAX_CONFIG_BYTES + 1))
    with pytest.raises(C.ConfigError, match="is not a config file"):
        C.read_yaml(big)


def test_a_config_path_with_an_equals_sign_is_a_path_not_an_override(tmp_path):
    """A sweep run's folder is named FIELD=VALUE: its config.yaml must load as a config."""
    run = tmp_path / "rollout.samples_per_prompt=4" / "seed0"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("a: 1\n")
    assert C.is_config_path(str(run / "config.yaml")) and C.is_config_path("configs/demo.yaml")
    assert not C.is_config_path("data.path=train.jsonl") and not C.is_config_path("data.extra=other.yaml")
    assert C.is_config_path("rollout.samples_per_prompt=4/seed0/config.yaml") is False  # no such file: override
