"""`t1 sft` under FSDP (versions 1 and 2) on two CPU processes (tests/cpu_fsdp.py forces accelerate's FSDP on
over gloo): a run stopped at a checkpoint and resumed ends bit-identical to an uninterrupted one, because the
AdamW state is gathered whole into the checkpoint and split again on resume (t1.runtime.sharded_state). Before,
the checkpoint held rank 0's shard of it and every process resumed with rank 0's moments; FSDP2 crashed at once
(t1's fast forward on sharded weights) and FSDP1 at the first checkpoint (accelerate's state dict, on CPU)."""

import pytest
import torch
from safetensors.torch import load_file

from tests.rl.test_shard import metrics, torchrun
from tests.stages.test_sft import SMALL

TIMING = ("tokens_per_s", "elapsed_s")


def untimed(out) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in metrics(out)]


ARGS = ["sft", *SMALL, "train.save_every=2", "train.optim.warmup_steps=0", "--quiet"]


@pytest.mark.slow
@pytest.mark.parametrize("version", [1, 2])
def test_fsdp_sft_resume_equals_uninterrupted(tmp_path, version):
    full, cut = tmp_path / "full", tmp_path / "cut"
    err = torchrun([*ARGS, f"out={full}"], fsdp=version).stderr
    assert "2 process(es)" in err
    torchrun([*ARGS, f"out={cut}", "train.max_steps=3"], fsdp=version)
    saved = torch.load(cut / "checkpoints" / "step-0000003" / "trainer_state.pt", weights_only=False)["optimizer"]
    moments = saved["state"]["model.embed_tokens.weight"]["exp_avg"]  # full, keyed by name: not rank 0's shard
    assert moments.shape == load_file(str(cut / "checkpoints" / "step-0000003" / "model.safetensors"))[
        "model.embed_tokens.weight"].shape
    err = torchrun([*ARGS, f"out={cut}", "--resume"], fsdp=version).stderr
    assert "resuming at step 3" in err, err[-2000:]
    a, b = (load_file(str(o / "final" / "model.safetensors")) for o in (full, cut))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert untimed(cut) == untimed(full)
    assert [r["step"] for r in metrics(full)] == list(range(1, 7))
