"""accelerate's FSDP on CPU processes, for the tests: ``torchrun … tests/cpu_fsdp.py rl …`` runs `t1 rl` (any
`t1` command), ``torchrun … tests/cpu_fsdp.py check-anchor MODEL_DIR MODE`` the sharded-anchor check below,
``check-loading MODEL_DIR`` the main-process-only loading check, ``check-kept MODEL_DIR`` the kept
weight walk; ``ACCELERATE_USE_FSDP=true`` (and accelerate's other ``FSDP_*`` variables) in the environment.

accelerate turns FSDP on only for accelerators (it leaves a CPU job MULTI_CPU, the FSDP plugin unused), while
torch's FSDP (versions 1 and 2) runs on CPU over gloo. The patch switches the state to FSDP (as accelerate
does for GPUs) and names the device "cpu" (FSDP1 refuses accelerate's "cpu:0" as a device_id); FSDP1's
sync_module_states is let through on CPU tensors (gloo can broadcast them). It changes nothing else and t1
never imports it."""

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
    import torch.distributed.fsdp._init_utils as fsdp1_init

    AcceleratorState.__init__ = _init_with_cpu_fsdp
    # FSDP1's sync_module_states refuses CPU tensors because NCCL broadcasts only GPU ones; gloo broadcasts CPU
    # tensors, which is all this check guards (torch 2.13: torch/distributed/fsdp/_init_utils.py)
    fsdp1_init._check_module_states_for_sync_module_states = lambda states: None


def _resident_bytes() -> int:
    """This process's resident memory now (not its peak): /proc/self/statm's second field, in pages."""
    import os

    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def check_loading(model_dir: str) -> None:
    """Under FSDP only the main process reads the weights (review D4): while loading, the other process's
    resident memory grows by a small fraction of the fp32 model and the main one's by about the whole model
    (the weights are bf16 on disk, so loading them in fp32 writes new memory: the measurement can see a
    load); after wrapping, every process's shards are the main process's weights."""
    import gc

    from t1.model.load import load, load_for_training, load_tokenizer, skeleton
    from t1.model.lora import LoraConfig
    from t1.rl import shard
    from t1.runtime import sharded_state
    from t1.runtime.device import make_accelerator
    from t1.runtime.optim import OptimConfig, make_optimizer

    acc = make_accelerator("fp32")
    how = shard.sharding(acc)
    skeleton(model_dir), load_tokenizer(model_dir)  # imports transformers' model code (~150 MiB) before measuring
    gc.collect()
    before = _resident_bytes()
    model, _ = load_for_training(model_dir, LoraConfig(), None, weights=sharded_state.loads_weights(acc, how))
    grown = _resident_bytes() - before
    size = sum(p.numel() * 4 for p in model.parameters())
    if acc.is_main_process:
        assert grown > 0.5 * size, (grown, size)
    else:
        assert grown < 0.1 * size, (grown, size)
    sharded_state.weights_from_main(acc, how)
    policy, _ = acc.prepare(model, make_optimizer(model, OptimConfig()))
    got = shard.full_state_dict(policy, True)
    want = load(model_dir, dtype="float32")[0].state_dict()
    for name, value in got.items():
        assert torch.equal(value, want[name]), name
    print(f"loading check ok: {how} rank {acc.process_index} grew {grown / 2**20:.1f} MiB loading a "
          f"{size / 2**20:.1f} MiB model", flush=True)


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


def check_kept(model_dir: str) -> None:
    """Review D15: a consumer that keeps every tensor the weight walk yields (the worst case of vLLM's layerwise
    reload, which keeps each until its layer is whole) gets the full weights, under FSDP1 too — whose tensors
    are views into a unit's gathered memory, freed when the walk leaves the unit (reading one then crashes)."""
    from t1.model.load import load
    from t1.rollout.weights import full_parameters
    from t1.runtime.device import make_accelerator
    from t1.runtime.optim import OptimConfig, make_optimizer

    acc = make_accelerator("fp32")
    model, _ = load(model_dir, dtype="float32")
    want = {k: v.clone() for k, v in model.state_dict().items()}
    policy, _ = acc.prepare(model, make_optimizer(model, OptimConfig()))
    kept = list(full_parameters(policy, kept=True))
    assert sorted(name for name, _ in kept) == sorted(want), sorted(name for name, _ in kept)
    for name, value in kept:
        assert torch.equal(value, want[name]), name
    print(f"kept weights ok: {len(kept)} tensors", flush=True)


if __name__ == "__main__":
    enable()
    if sys.argv[1] == "check-anchor":
        from t1.runtime.device import end_distributed

        check_anchor(sys.argv[2], sys.argv[3])
        end_distributed()
    elif sys.argv[1] in ("check-loading", "check-kept"):
        from t1.runtime.device import end_distributed

        (check_loading if sys.argv[1] == "check-loading" else check_kept)(sys.argv[2])
        end_distributed()
    else:
        from t1.cli import main

        raise SystemExit(main(sys.argv[1:]))
