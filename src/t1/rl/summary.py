"""`t1 rl`'s metrics: one row per step (sums over every process, then means) and the closing table."""

from __future__ import annotations

import torch

ROW_SUMS = ("kl", "entropy", "tokens", "selected", "logp_diff_sum", "logp_diff_n", "nucleus_mismatch",
            "logp_tokens", "is_weight_sum", "is_clipped")
EXTREMES = ("length_max", "length_min", "terminated_max", "terminated_min")  # reduced with max (min: negated)


def batch_stats(reward: torch.Tensor, correct: torch.Tensor, bad: dict, lengths: torch.Tensor,
                finished: torch.Tensor, k: int) -> dict:
    """One process's sums (and extremes) over its groups of ``k`` samples, for :func:`step_row`."""
    groups = reward.view(-1, k)
    spread = groups.std(dim=1, unbiased=False)
    done = lengths[finished]
    return {"reward": reward.sum(), "accuracy": correct.sum(), "response_tokens": lengths.sum(),
            "truncated": (~finished).float().sum(), "penalty_truncated": bad["truncated"].float().sum(),
            "penalty_repetitive": bad["repetitive"].float().sum(), "penalty_garbage": bad["garbage"].float().sum(),
            "samples": torch.tensor(float(len(reward))), "reward_sq": (reward.double() ** 2).sum(),
            "groups": torch.tensor(float(len(groups))), "group_spread": spread.sum(),
            "zero_std_groups": torch.isclose(spread, torch.zeros_like(spread)).float().sum(),
            "terminated": finished.float().sum(), "terminated_tokens": done.sum(),
            "length_max": lengths.max(), "length_min": -lengths.min(),
            "terminated_max": done.max() if len(done) else torch.tensor(0.0),
            "terminated_min": -done.min() if len(done) else torch.tensor(-float("inf"))}


def reward_sums(named) -> dict:
    """A user reward's (:class:`t1.rl.rewards.Named`) sums for :func:`step_row`: per name its sum and sum of
    squares, and the failed calls."""
    out = {"rewards_failed": torch.tensor(float(named.n_failed))}
    for name, v in named.values.items():
        out[f"rewards/{name}/sum"], out[f"rewards/{name}/sq"] = v.double().sum(), (v.double() ** 2).sum()
    return out


def _std(total: float, sq: float, n: float) -> float:
    """The standard deviation with Bessel's correction (TRL's nanstd) from a sum and a sum of squares."""
    return max(0.0, (sq - total ** 2 / n) / max(1.0, n - 1)) ** 0.5


def _named_rewards(s: dict, n: float) -> dict:
    """``rewards/<name>/mean`` and ``/std`` (TRL's names; std with Bessel's correction) and ``rewards/failed``
    from the step's sums over every process."""
    out = {"rewards/failed": s["rewards_failed"] / n}
    for key in s:
        if key.startswith("rewards/") and key.endswith("/sum"):
            name = key[len("rewards/"): -len("/sum")]
            total, sq = s[key], s[f"rewards/{name}/sq"]
            out[f"rewards/{name}/mean"] = total / n
            out[f"rewards/{name}/std"] = _std(total, sq, n)
    return out


def trl_names(row: dict, s: dict) -> dict:
    """The same quantities under TRL GRPOTrainer's metric names (and the ones t1 adds), so a TRL run and a t1
    run chart side by side; ``s``: the step's sums over every process."""
    n = max(1.0, s["samples"])
    groups = max(1.0, s["groups"])
    out = {"reward_std": _std(s["reward"], s["reward_sq"], n),  # unbiased, as TRL's nanstd
           "frac_reward_zero_std": s["zero_std_groups"] / groups, "reward_group_std": s["group_spread"] / groups,
           "completions/mean_length": row["response_length"], "completions/min_length": -s["length_min"],
           "completions/max_length": s["length_max"], "completions/clipped_ratio": row["truncation_rate"],
           "completions/mean_terminated_length": s["terminated_tokens"] / max(1.0, s["terminated"]),
           "completions/min_terminated_length": -s["terminated_min"] if s["terminated"] else 0.0,
           "completions/max_terminated_length": s["terminated_max"] if s["terminated"] else 0.0,
           "learning_rate": row["lr"], "clip_ratio/region_mean": row["clip_fraction"]}
    for ours, theirs in (("sampling/logp_diff_mean", "sampling/sampling_logp_difference/mean"),
                         ("sampling/logp_diff_max", "sampling/sampling_logp_difference/max"),
                         ("sampling/is_weight_mean", "sampling/importance_sampling_ratio/mean")):
        if ours in row:
            out[theirs] = row[ours]
    return out


def step_row(acc, step: int, stats: dict, upd: dict, wall: float, times: dict, version: int,
             is_cap: float, sampled: int | None = None) -> dict:
    """The step's metrics row from the batch's ``stats`` and the update's ``upd`` (both summed over every
    process here; a collective), phase ``times``, the weight ``version`` after the update and the version
    ``sampled`` the batch was drawn from (default: the step's own; ``sampling/staleness`` = step − it)."""
    sums = {**{k: v for k, v in stats.items() if k not in EXTREMES}, **{k: upd.get(k, 0.0) for k in ROW_SUMS}}
    names = list(sums)
    stacked = torch.stack([torch.as_tensor(sums[k], dtype=torch.float32) for k in names])
    tot = acc.reduce(stacked.to(acc.device), "sum")
    s = dict(zip(names, tot.tolist()))
    if all(k in stats for k in EXTREMES):
        ext = torch.stack([torch.as_tensor(stats[k], dtype=torch.float32) for k in EXTREMES])
        s.update(zip(EXTREMES, acc.reduce(ext.to(acc.device), "max").tolist()))
    diff_max = float(acc.reduce(torch.tensor(upd["logp_diff_max"], device=acc.device), "max"))
    n, n_tok = max(1.0, s["samples"]), max(1.0, s["logp_tokens"])
    row = {"step": step + 1, "reward": s["reward"] / n, "accuracy": s["accuracy"] / n,
           "penalty_truncated": s["penalty_truncated"] / n, "penalty_repetitive": s["penalty_repetitive"] / n,
           "penalty_garbage": s["penalty_garbage"] / n, "truncation_rate": s["truncated"] / n,
           "response_length": s["response_tokens"] / n, "entropy": s["entropy"] / max(1.0, s["tokens"]),
           "kl": s["kl"] / n, "loss": upd["loss"], "grad_norm": upd["grad_norm"], "lr": upd["lr"],
           "clip_fraction": upd["clip_fraction"], "selected": s["selected"] / n, "skipped": upd["skipped"],
           "time_sample": times.get("sample", 0.0), "time_score": times.get("score", 0.0),
           "time_train": times.get("train", 0.0), "time_push": times.get("push", 0.0), "time_step": wall,
           "tokens_per_s": s["response_tokens"] / wall, "weight_version": version,
           "step_tokens": s.get("step_tokens", 0.0)}
    sampled = step if sampled is None else sampled
    row.update({"sampling/version": sampled, "sampling/staleness": step - sampled})
    if "wait" in times:  # asynchronous RL: seconds the update waited for its batch (t1.rl.overlap)
        row["time_wait"] = times["wait"]
    if "dynamic_rounds" in s:  # dynamic sampling (t1.rl.dynamic): per process, averaged over processes
        procs = acc.num_processes
        row.update({"dynamic/rounds": s["dynamic_rounds"] / procs,
                    "dynamic/groups_dropped": s["dynamic_dropped"] / procs,
                    "dynamic/groups_filled": s["dynamic_filled"] / procs})
    if "rewards_failed" in s:  # data.reward: each named reward before the penalties
        row.update(_named_rewards(s, n))
    if "overlong_soft" in s:  # DAPO's soft overlong punishment (t1.rl.algo.soft_overlong), mean per sample
        row["penalty_overlong_soft"] = s["overlong_soft"] / n
    if s["logp_tokens"]:  # engines that return log-probs: how far the sampler is from the trainer (t1.rl.batch)
        row.update({"sampling/logp_diff_mean": s["logp_diff_sum"] / max(1.0, s["logp_diff_n"]),
                    "sampling/logp_diff_max": diff_max,
                    "sampling/nucleus_mismatch": s["nucleus_mismatch"] / n_tok,
                    "sampling/nucleus_mismatch_count": s["nucleus_mismatch"]})
    if is_cap and s["logp_tokens"]:
        row.update({"sampling/is_weight_mean": s["is_weight_sum"] / n_tok,
                    "sampling/is_clipped_fraction": s["is_clipped"] / n_tok})
    if "groups" in s and "length_max" in s:
        row.update(trl_names(row, s))
    return row


def summary(history: list[dict]) -> str:
    """A short before/after table of the run (first and last tenth of the steps)."""
    if not history:
        return "rl: no steps run"
    w = max(1, len(history) // 10)
    first, last = history[:w], history[-w:]

    def avg(rows, k):
        return sum(r[k] for r in rows) / len(rows)

    lines = [f"rl done: {len(history)} steps | mean step {avg(history, 'time_step'):.2f}s "
             f"(sample {avg(history, 'time_sample'):.2f} / score {avg(history, 'time_score'):.2f} / "
             f"train {avg(history, 'time_train'):.2f}) | {avg(history, 'tokens_per_s'):,.0f} completion tokens/s",
             f"{'':22s}{'first ' + str(w):>12s}{'last ' + str(w):>12s}"]
    for k in ("reward", "accuracy", "response_length", "entropy", "kl", "penalty_truncated", "penalty_repetitive",
              "penalty_garbage"):
        lines.append(f"{k:22s}{avg(first, k):12.4f}{avg(last, k):12.4f}")
    return "\n".join(lines)
