"""accelerate's FSDP on CPU processes, for the tests: ``torchrun … tests/cpu_fsdp.py rl …`` runs `t1 rl` (any
`t1` command), ``torchrun … tests/cpu_fsdp.py check-anchor MODEL_DIR MODE`` the sharded-anchor check below;
``ACCELERATE_USE_FSDP=true`` (and accelerate's other ``FSDP_*`` variables) in the environment.

accelerate turns FSDP on only for accelerators (it leaves a CPU job MULTI_CPU, the FSDP plugin unused), while
torch's FSDP (versions 1 and 2) runs on CPU over gloo. The patch switches the state to FSDP (as accelerate
does for GPUs) and names the device "cpu" (FSDP1 refuses accelerate's "cpu:0" as a device_id). It changes
nothing else and t1 never imports it."""

import copy
import sys

import torch
from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType

_init = AcceleratorState.__init__


def _init_with_cpu_fsdp(self, *args, fsdp_plugin=None, **kwargs):
    _init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
    if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
        self.distributed_type = PartialState._shared_state["distributed_type"] = DistributedType.FSDP
        if self._mixed_precision != "no":
            fsdp_plugin.set_mixed_precision(self._mixed_precision)
        self.fsdp_plugin = fsdp_plugin
        self.device = PartialState._shared_state["device"] = torch.device("cpu")


def enable() -> None:
    AcceleratorState.__init__ = _init_with_cpu_fsdp


def check_anchor(model_dir: str, mode: str) -> None:
    """A sharded anchor against an unsharded one fed the same policies: after each of 5 optimizer steps of an
    FSDP policy, the unsharded anchor updates from the gathered policy; the sharded one shard against shard.
    Their forwards (FSDP1's root unit released) and finally their full states must agree, and a full state
    loaded before sharding must come back whole (resume)."""
    from t1.model.load import load
    from t1.rl import shard
    from t1.rl.anchor import Anchor
    from t1.runtime.device import make_accelerator
    from t1.runtime.optim import OptimConfig, make_optimizer

    acc = make_accelerator("fp32")
    how = shard.sharding(acc)
    assert how in ("fsdp1", "fsdp2"), how
    model, _ = load(model_dir, dtype="float32")
    holder = copy.deepcopy(model)  # takes the gathered policy after each step
    reference = Anchor(copy.deepcopy(model), mode, ema_decay=0.8, reset_every=2)
    anchor = Anchor(model, mode, ema_decay=0.8, reset_every=2, sharded=True)
    assert anchor.meta  # no full copy of the weights before sharding (host RAM, D4)
    policy, opt = acc.prepare(model, make_optimizer(model, OptimConfig(lr=0.05, warmup_steps=0)))
    anchor.distribute(acc, policy)
    assert anchor.sharded and not anchor.meta
    n_local = sum(shard.local(p).numel() for p in anchor.model.parameters())
    n_full = sum(p.numel() for p in reference.model.parameters())
    assert n_local < 0.75 * n_full, (n_local, n_full)  # each process holds about half
    ids = torch.randint(3, 100, (2, 12), generator=torch.Generator().manual_seed(1 + acc.process_index))
    for step in range(1, 6):
        acc.backward(policy(input_ids=ids).logits.float().logsumexp(-1).mean())
        opt.step()
        opt.zero_grad()
        anchor.update(policy, step)
        holder.load_state_dict(shard.full_state_dict(policy, True), strict=False)
        reference.update(holder, step)
        with torch.no_grad():
            got, want = anchor.model(input_ids=ids).logits, reference.model(input_ids=ids).logits
        anchor.release()
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    full, ref = anchor.state_dict(keep=True), reference.model.state_dict()
    assert full.keys() == ref.keys(), (sorted(full), sorted(ref))
    for k in ref:
        torch.testing.assert_close(full[k], ref[k], rtol=0, atol=1e-7, msg=k)
    moved = max(float((full[k] - holder.state_dict()[k]).abs().max()) for k in ref)
    assert moved > 1e-3, moved  # the anchor lags the policy: the comparison is not trivial
    start = load(model_dir, dtype="float32")[0]  # a resume: a fresh policy, the anchor from the checkpoint
    fresh = Anchor(start, mode, ema_decay=0.8, reset_every=2, sharded=True)
    fresh.load_state_dict(full)
    fresh.distribute(acc, acc.prepare(start, make_optimizer(start, OptimConfig()))[0])
    back = fresh.state_dict(keep=True)
    assert all(torch.equal(back[k], full[k]) for k in full)
    print(f"anchor check ok: {how} {mode}, {n_local} of {n_full} parameters here, anchor-policy gap {moved:.3g}")


if __name__ == "__main__":
    enable()
    if sys.argv[1] == "check-anchor":
        from t1.runtime.device import end_distributed

        check_anchor(sys.argv[2], sys.argv[3])
        end_distributed()
    else:
        from t1.cli import main

        raise SystemExit(main(sys.argv[1:]))
