"""Every shipped config loads and validates, and the paper configs carry the paper's numbers."""

from pathlib import Path

import pytest

from t1 import config as C
from t1.pipelines.demo import DemoConfig
from t1.rl.config import RLConfig
from t1.stages.scale import ScaleConfig
from t1.stages.sft import SFTConfig

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_config_loads(path):
    cls = RLConfig if path.name.startswith("rl_") else DemoConfig if path.name == "demo.yaml" else \
        ScaleConfig if path.name.endswith("_scale.yaml") else SFTConfig
    cfg = C.load(cls, path)
    assert cfg.out.startswith("runs/")


@pytest.mark.parametrize("size, length", [("7b", 10240), ("14b", 10240), ("32b", 16384)])
def test_paper_rl_values(size, length):
    cfg = C.load(RLConfig, CONFIGS / f"rl_qwen2.5_{size}.yaml")
    assert (cfg.rollout.prompts_per_step, cfg.rollout.samples_per_prompt) == (32, 64)
    assert (cfg.rollout.temperature, cfg.rollout.top_p, cfg.rollout.max_new_tokens) == (1.2, 0.95, length)
    assert (cfg.algo.kl_beta, cfg.algo.kl_clamp, cfg.anchor.mode) == (2e-4, 0.5, "ema")
    assert (cfg.penalties.repetition_span, cfg.penalties.repetition_times, cfg.penalties.value) == (80, 20, -1.0)
    o = cfg.train.optim
    assert ((o.lr, o.beta1, o.beta2, o.weight_decay, o.grad_clip, o.schedule)
            == (1.5e-6, 0.9, 0.95, 0.1, 1.0, "constant"))
    sft = C.load(SFTConfig, CONFIGS / f"sft_qwen2.5_{size}.yaml")
    assert (sft.train.epochs, sft.train.optim.lr, sft.train.optim.schedule) == (3, 1e-5, "cosine")
    assert sft.data.hub_name == "THUDM/T1"
