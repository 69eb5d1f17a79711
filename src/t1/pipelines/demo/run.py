"""`t1 demo`: the whole T1 pipeline on Countdown with a tiny model, on a laptop CPU, in under ten minutes.

Stages (each writes under the run directory and is skipped when its output already exists, so an
interrupted demo resumes where it stopped; SFT and RL continue from their newest checkpoint):

1. SFT on trial-and-error traces (``sft/``) and, at equal compute (the same number of training tokens), SFT
   on direct solutions with no failed attempts (``sft_direct/``) — the paper's reason for its SFT data. The
   two run side by side as single-threaded ``t1 sft`` processes: a 1M-parameter model's matrices are too
   small for two threads to help one run much (measured: 11.4k tokens/s on one thread, 15.5k on two), so two
   runs at once train ~1.5× more tokens in the same time;
2. filter RL prompts by the SFT model's pass rate (``filter/``);
3. RL with the T1 recipe scaled down (``rl/``);
4. evaluate SFT, direct SFT and RL on the 500 held-out problems (sampled pass@1 at temperature 1.0) and
   sweep thinking budgets (``eval/``);
5. write ``summary.json`` and the report (``report.html``): accuracy and truncation per model and budget,
   RL − SFT at the training budget and at the *free budget* (the smallest budget at which SFT and RL truncate
   at most 2 % of their responses, so that the gap is not RL merely finishing inside the budget), and every
   check as a number judged against its threshold (:mod:`t1.pipelines.demo.checks`).

``seeds=N`` (``t1 demo --seeds N``): after the one SFT and filter stage, RL runs N times from the same SFT model
with seeds ``seed``, ``seed + 1``, … (``rl/``, ``rl_seed1/``, ``rl_seed2/``, …; each resumes and is skipped
when done, like every stage); each RL model is evaluated and swept (labels ``rl``, ``rl_seed1``, …) with the
evaluation's problems and sampling seeds unchanged, so only the RL seed differs. summary.json then holds each
seed's check numbers (``seeds``) and their mean, standard deviation, min and max (``check_mean`` …), and the
checks are judged on the means. Each extra seed costs one more RL stage (~300 s on a 2-core EPYC, more
without bf16 units; see BENCHMARKS.md) plus its evaluation; the default is one seed, which fits the 10-minute
target. SFT is not re-seeded: it is deterministic here, and each SFT seed would cost the two parallel SFT runs
again.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

from t1 import config as cfglib
from t1.config import option, require
from t1.data.prompts import PromptDataConfig
from t1.data.sft import SFTDataConfig, countdown_pairs
from t1.eval.metrics import finished_length_growth
from t1.eval.sample import EvalSettings
from t1.io import atomic_write_text, check_output_dir, read_log
from t1.model.load import ModelConfig
from t1.pipelines.demo.checks import FREE_TRUNCATION, at, rule, show, summarize
from t1.pipelines.demo.report import write_demo_report
from t1.rl.config import AlgoConfig, AnchorConfig, RLConfig, RLTrainConfig, RolloutConfig
from t1.rl.penalties import PenaltyConfig
from t1.runtime.children import die_with_parent, stop, t1_command, thread_env
from t1.runtime.optim import OptimConfig
from t1.runtime.run import RunError
from t1.runtime.trackers import Tracking, open_trackers
from t1.stages.evaluate import report_eval, run_eval
from t1.stages.filter import FilterConfig, run_filter
from t1.stages.rl import train_rl
from t1.stages.scale import ScaleSettings, report_scale, run_scale
from t1.stages.sft import SFTConfig, SFTTrainConfig
from t1.tasks.countdown import CountdownConfig


@dataclass(frozen=True)
class DemoConfig(Tracking):
    out: str = option("runs/demo", "run directory")
    tiny: ModelConfig = option(help="the model", factory=ModelConfig)
    countdown: CountdownConfig = option(
        help="the task; stop_prob 0.5 (one failed attempt on average) fits more problems into the SFT compute; "
             "give_up 0.01 (1 % of traces conclude after max_failed wrong attempts) makes the SFT model stop "
             "instead of trying until the budget runs out, so a budget exists where nothing truncates",
        factory=lambda: CountdownConfig(stop_prob=0.5, give_up=0.01))
    sft_examples: int = option(40000, "trial-and-error traces for SFT")
    sft_epochs: float = option(1.0, "SFT epochs")
    sft_lr: float = option(3e-3, "SFT peak learning rate (cosine)")
    filter_prompts: int = option(896, "candidate RL prompts scored by the SFT model")
    filter_samples: int = option(6, "samples per candidate prompt")
    filter_max_pass: float = option(0.75, "keep prompts with pass rate in (0, max] at the RL budget (paper: 0.3)")
    rl_budget: int = option(256, "RL generation budget (tokens), room above the SFT model's ~110-token "
                            "responses; also where RL is compared with SFT")
    rl_steps: int = option(80, "RL steps")
    rl_prompts: int = option(48, "RL prompts per step")
    rl_samples: int = option(8, "RL samples per prompt")
    rl_temperature: float = option(1.0, "RL sampling temperature")
    rl_lr: float = option(1.5e-4, "RL learning rate (peak)")
    rl_schedule: str = option("cosine", "RL learning-rate schedule after 3 warm-up steps: constant | cosine | "
                                          "linear (the last two decay to a tenth of the peak)")
    rl_beta: float = option(1e-3, "KL weight β")
    rl_entropy: float = option(1e-3, "entropy bonus α")
    rl_max_staleness: int = option(0, "asynchronous RL: sample step t's batch from step t − N's weights in a "
                                      "sampler process on one core while the update runs on the other (0 = "
                                      "synchronous; see BENCHMARKS.md, asynchronous RL)")
    eval_problems: int = option(500, "held-out problems")
    budgets: tuple[int, ...] = option(
        (24, 48, 96, 128, 256, 512, 960), "thinking budgets for the scaling sweep, from ~one attempt (below "
        "that a forced answer completes a half-written first attempt — see BENCHMARKS.md) up to where SFT and RL "
        "finish nearly every response (the free budget)")
    seed: int = option(0, "seed")
    seeds: int = option(1, "RL runs from the one SFT model (seeds seed, seed+1, …); the checks are judged on "
                           "their mean; each extra seed costs one more RL stage")

    def validate(self) -> None:
        for name in ("sft_examples", "filter_prompts", "filter_samples", "rl_budget", "rl_steps", "rl_prompts",
                     "eval_problems", "seeds"):
            require(getattr(self, name) >= 1, name, "must be ≥ 1", getattr(self, name))
        require(self.rl_samples >= 2, "rl_samples", "must be ≥ 2 (RLOO needs a group)", self.rl_samples)
        require(self.sft_epochs > 0, "sft_epochs", "must be > 0", self.sft_epochs)
        for name in ("sft_lr", "rl_lr"):
            require(0 < getattr(self, name) <= 1, name, "must be in (0, 1]", getattr(self, name))
        require(0 < self.filter_max_pass <= 1, "filter_max_pass", "must be in (0, 1]", self.filter_max_pass)
        require(self.rl_temperature >= 0, "rl_temperature", "must be ≥ 0", self.rl_temperature)
        require(self.rl_beta >= 0 and self.rl_entropy >= 0, "rl_beta", "rl_beta and rl_entropy must be ≥ 0",
                (self.rl_beta, self.rl_entropy))
        require(len(self.budgets) > 0 and min(self.budgets) >= 1, "budgets", "must be token budgets ≥ 1",
                self.budgets)


def _sft_config(cfg: DemoConfig, out: Path, direct: bool, examples: int) -> SFTConfig:
    data = SFTDataConfig(source="countdown", num_examples=examples, seed=cfg.seed, countdown=cfg.countdown,
                         failed_attempts=0 if direct else None, max_length=cfg.tiny.max_positions)
    train = SFTTrainConfig(epochs=cfg.sft_epochs, batch_size=64, seed=cfg.seed, log_every=20, save_every=100,
                           optim=OptimConfig(lr=cfg.sft_lr, schedule="cosine", warmup_ratio=0.03,
                                             weight_decay=0.0))
    return SFTConfig(out=str(out), model=None, tiny=cfg.tiny, data=data, train=train, report_to=cfg.report_to,
                     run_group=cfg.run_group)


def _rl_config(cfg: DemoConfig, out: Path, sft_model: Path, prompts: Path) -> RLConfig:
    return RLConfig(
        report_to=cfg.report_to, run_group=cfg.run_group, out=str(out), model=str(sft_model),
        data=PromptDataConfig(task="countdown", source="jsonl", paths=(str(prompts),), num_prompts=0,
                              countdown=cfg.countdown),
        rollout=RolloutConfig(prompts_per_step=cfg.rl_prompts, samples_per_prompt=cfg.rl_samples,
                              temperature=cfg.rl_temperature, top_p=1.0, max_new_tokens=cfg.rl_budget),
        algo=AlgoConfig(kl_beta=cfg.rl_beta, entropy_coef=cfg.rl_entropy),
        anchor=AnchorConfig(mode="ema", ema_decay=0.99),
        penalties=PenaltyConfig(),  # the T1 values; Countdown traces repeat short phrases legitimately
        # the whole step's batch (~50k tokens) in one token budget, so the update runs fused (one forward fewer)
        train=RLTrainConfig(steps=cfg.rl_steps, seed=cfg.seed, save_every=15, rollouts_every=5,
                            max_staleness=cfg.rl_max_staleness,
                            micro_batch_tokens=1 << 17,
                            optim=OptimConfig(lr=cfg.rl_lr, schedule=cfg.rl_schedule, warmup_steps=3,
                                              warmup_ratio=0.0, min_lr_ratio=0.1,
                                              weight_decay=0.0, beta1=0.9, beta2=0.95, grad_clip=1.0)),
    )


def _watch(procs: list, epochs: dict[Path, float], progress: bool) -> None:
    """One progress bar over the runs (from their metrics rows) until all end or one fails."""
    from tqdm import tqdm

    bar = tqdm(total=100, desc="sft (both)", unit="%", file=sys.stderr, disable=not progress, dynamic_ncols=True)
    while any(p.poll() is None for _, p in procs) and not any(p.poll() for _, p in procs):
        time.sleep(2)
        done, live = [], {}
        for d, _ in procs:  # each metrics row says how far through its epochs the run is, its loss and speed
            rows = (d / "metrics.jsonl").read_text().splitlines() if (d / "metrics.jsonl").exists() else []
            try:
                row = json.loads(rows[-1]) if rows else {}
                done.append(min(1.0, row["epoch"] / epochs[d]) if rows else 0.0)
                if row:
                    live[f"loss_{d.name}"] = f"{row['loss']:.3f}"
                    live[f"tok_s_{d.name}"] = f"{row['tokens_per_s']:,.0f}"
            except (ValueError, KeyError):  # a row being written
                done.append(0.0)
        bar.n = int(100 * min(done))
        bar.set_postfix(live, refresh=False)
        bar.refresh()
    bar.n = 100
    bar.close()


def parallel_sft(runs: list[tuple[Path, SFTConfig]], out: Path, progress: bool) -> None:
    """Run ``t1 sft --resume`` for each config as a single-threaded subprocess, all at once, with one progress
    bar; ``--resume``: a run the demo left unfinished continues from its newest checkpoint (none: from the
    start). The children never outlive the demo: they are stopped when it returns or raises (one failing stops
    the others), and the kernel kills them if the demo is killed."""
    procs: list[tuple[Path, subprocess.Popen]] = []
    try:
        for run_dir, c in runs:
            path = cfglib.save(c, out / f"{run_dir.name}.yaml")
            env = thread_env(1)
            with open(out / f"{run_dir.name}.log", "w") as log:
                procs.append((run_dir, subprocess.Popen(
                    t1_command("sft", path, "--resume", "--quiet"), env=env, stdout=log,
                    stderr=subprocess.STDOUT, preexec_fn=die_with_parent())))
        _watch(procs, {d: c.train.epochs for d, c in runs}, progress)
    finally:
        stopped = stop([p for _, p in procs])
    for run_dir, p in procs:
        lines = (out / f"{run_dir.name}.log").read_text(errors="replace").strip().splitlines() or [""]
        if p.returncode != 0 and p not in stopped:  # the one that failed, not the one stopped because of it
            raise RunError(f"demo: SFT for {run_dir} failed ({lines[-1].strip() or f'exit {p.returncode}'}); "
                           f"see {out / (run_dir.name + '.log')}")
        if p.returncode == 0:
            print(lines[-1], file=sys.stderr)


def rl_prompts(filter_dir: Path, need: int) -> Path:
    """The kept prompts; if fewer than one step needs, topped up with the highest pass rates (with a warning)."""
    kept = [json.loads(line) for line in (filter_dir / "kept.jsonl").read_text().splitlines()]
    if len(kept) < need:
        rates = [json.loads(line) for line in (filter_dir / "pass_rates.jsonl").read_text().splitlines()]
        ids = {r["id"] for r in kept}
        extra = sorted((r for r in rates if r["id"] not in ids), key=lambda r: -r["pass_rate"])[: need - len(kept)]
        print(f"demo: warning: only {len(kept)} prompts passed the filter; adding the {len(extra)} next best",
              file=sys.stderr)
        kept += extra
    path = filter_dir / "rl_prompts.jsonl"
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
    return path


class _Stages:
    """Runs the demo's stages, skipping those whose output exists. Each stage's seconds are kept in
    ``stage_seconds.json``, so a resumed or re-summarised demo still reports what every stage cost."""

    def __init__(self, out: Path):
        self.out, self.path = out, out / "stage_seconds.json"
        try:
            self.times: dict[str, float] = json.loads(self.path.read_text()) if self.path.exists() else {}
        except ValueError:  # a torn file: the times are lost, not the run
            self.times = {}
        self.ran = 0.0  # seconds spent in stages by this invocation

    def run(self, name: str, done: Path, fn) -> None:
        if done.exists():
            print(f"demo: {name}: already done ({done}), skipping", file=sys.stderr)
            return
        print(f"\n── demo: {name} " + "─" * max(0, 60 - len(name)), file=sys.stderr)
        start = time.perf_counter()
        fn()
        self.times[name] = time.perf_counter() - start
        self.ran += self.times[name]
        atomic_write_text(self.path, json.dumps(self.times, indent=1))

    def wall(self, elapsed: float) -> float:
        """The demo's wall time: every stage's recorded seconds, plus what this invocation spent outside them."""
        return sum(self.times.values()) + max(0.0, elapsed - self.ran)


def _evaluate(cfg: DemoConfig, out: Path, st: _Stages, models: list[tuple[str, Path]], progress: bool) -> None:
    """Each model's sampled pass@1 on the held-out problems (``eval/<label>/``), then the scaling sweep over the
    budgets (``eval/scaling.json``); each also goes to the trackers, in the demo's group. The evaluation's
    problems and sampling seeds do not depend on the RL seeds: every RL model meets the same draws."""
    ev = EvalSettings(n=1, temperature=1.0, top_p=1.0, max_new_tokens=max(cfg.budgets), seed=cfg.seed + 7)

    def evaluate(label: str, path: Path) -> None:
        with open_trackers(cfg, out / "eval" / label, "eval") as trackers:
            summaries = run_eval(str(path), ["countdown"], out / "eval" / label, ev, limit=cfg.eval_problems,
                                 progress=progress, countdown_cfg=cfg.countdown)
            report_eval(trackers, summaries, out / "eval" / label)

    for label, path in models:
        st.run(f"evaluate {label}", out / "eval" / label / "summary.json",
               lambda p=path, lab=label: evaluate(lab, p))
    sc = ScaleSettings(budgets=tuple(cfg.budgets), n=1, temperature=1.0, top_p=1.0, seed=cfg.seed + 11)

    def scaling() -> None:
        with open_trackers(cfg, out / "eval", "scale") as trackers:
            report_scale(trackers, run_scale([(lab, str(p)) for lab, p in models], "countdown", out / "eval", sc,
                                             limit=cfg.eval_problems, countdown_cfg=cfg.countdown,
                                             progress=progress))

    done = out / "eval" / "scaling.json"
    if done.exists():
        curves = json.loads(done.read_text())["curves"]
        budgets = {p["budget"] for pts in curves.values() for p in pts}
        if not {lab for lab, _ in models} <= set(curves) or budgets != set(cfg.budgets):
            print(f"demo: {done} lacks some of the models or budgets (more seeds than before? other budgets?): "
                  "sweeping again", file=sys.stderr)
            done.unlink()
    st.run("inference-scaling sweep", done, scaling)


def rl_runs(cfg: DemoConfig, out: Path) -> list[tuple[str, int, Path]]:
    """(label, seed, directory) of each RL run: ``rl`` with ``cfg.seed``, then ``rl_seed1`` with seed + 1, …"""
    return [(lab, cfg.seed + i, out / lab) for i, lab in enumerate(["rl"] + [f"rl_seed{i}"
                                                                           for i in range(1, cfg.seeds)])]


def _rl_stage(cfg: DemoConfig, seed: int) -> str:
    return "RL with the T1 recipe" + ("" if seed == cfg.seed else f" (seed {seed})")


def _seed_seconds(cfg: DemoConfig, st: _Stages, wall: float, runs: list[tuple[str, int, Path]]) -> list[float]:
    """Each seed's share of the wall time: all of it but the other seeds' RL and evaluation stages and their
    share of the scaling sweep (one seed: the wall time)."""
    own = [st.times.get(_rl_stage(cfg, seed), 0.0) + st.times.get(f"evaluate {lab}", 0.0) for lab, seed, _ in runs]
    sweep = st.times.get("inference-scaling sweep", 0.0) / (len(runs) + 2)
    return [wall - (sum(own) - own[i]) - sweep * (len(runs) - 1) for i in range(len(runs))]


def _summary(cfg: DemoConfig, out: Path, st: _Stages, runs: list[tuple[str, int, Path]], wall: float) -> dict:
    curves = json.loads((out / "eval" / "scaling.json").read_text())["curves"]
    labels = ["sft", *(lab for lab, _, _ in runs), "direct_sft"]
    evals = {lab: json.loads((out / "eval" / lab / "summary.json").read_text())["benchmarks"]["countdown"]
             for lab in labels}
    growth = [finished_length_growth(read_log(d / "metrics.jsonl")) for _, _, d in runs]
    checks = summarize({lab: curves[lab] for lab in labels}, [lab for lab, _, _ in runs],
                       [seed for _, seed, _ in runs], cfg.rl_budget, _seed_seconds(cfg, st, wall, runs), growth)
    rl = [s["rl_accuracy"] for s in checks["seeds"]]
    return {
        "sft_accuracy": at(curves["sft"], cfg.rl_budget),
        "rl_accuracy": None if None in rl else statistics.fmean(rl),  # the mean over seeds; each in "seeds"
        "direct_sft_accuracy": at(curves["direct_sft"], cfg.rl_budget),
        "accuracy_budget": cfg.rl_budget,
        "full_budget_pass@1": {lab: e["pass@1"] for lab, e in evals.items()},
        "full_budget_pass@1_stderr": {lab: e["pass@1_stderr"] for lab, e in evals.items()},
        "eval_problems": cfg.eval_problems, "stage_seconds": st.times, "wall_seconds": wall,
        **checks,
    }


def run_demo(cfg: DemoConfig, progress: bool = True) -> dict:
    t0 = time.perf_counter()
    out = check_output_dir(cfg.out)  # before any stage: not a file, a folder that takes files, with room left
    cfglib.save(cfg, out / "demo_config.yaml")
    cfg = replace(cfg, run_group=cfg.run_group or str(out))  # the trackers show the demo's stages as one group
    st = _Stages(out)
    sft_dir, direct_dir, runs = out / "sft", out / "sft_direct", rl_runs(cfg, out)

    def both_sft():
        # equal compute: the direct run gets as many training tokens as the trial-and-error run
        probe = SFTDataConfig(num_examples=2000, seed=cfg.seed, countdown=cfg.countdown)
        te = sum(len(p.response.split()) + len(p.prompt.split()) for p in countdown_pairs(probe))
        di = sum(len(p.response.split()) + len(p.prompt.split())
                 for p in countdown_pairs(replace(probe, failed_attempts=0)))
        runs = [(sft_dir, _sft_config(cfg, sft_dir, False, cfg.sft_examples)),
                (direct_dir, _sft_config(cfg, direct_dir, True, int(cfg.sft_examples * te / di)))]
        parallel_sft([(d, c) for d, c in runs if not (d / "final").exists()], out, progress)

    st.run("SFT: trial-and-error and direct traces, equal compute, in parallel", direct_dir / "final"
           if (sft_dir / "final").exists() else sft_dir / "final", both_sft)
    st.run("filter RL prompts by pass rate", out / "filter" / "kept.jsonl", lambda: run_filter(FilterConfig(
        report_to=cfg.report_to, run_group=cfg.run_group, model=str(sft_dir / "final"), out=str(out / "filter"),
        data=PromptDataConfig(task="countdown", num_prompts=cfg.filter_prompts, seed=cfg.seed + 1,
                              countdown=cfg.countdown),
        samples=cfg.filter_samples, max_pass=cfg.filter_max_pass, max_new_tokens=cfg.rl_budget, seed=cfg.seed),
        progress=progress))
    for _, seed, rl_dir in runs:  # each seed's RL from the same SFT model; a killed RL run continues
        st.run(_rl_stage(cfg, seed), rl_dir / "final", lambda d=rl_dir, s=seed: train_rl(
            _rl_config(replace(cfg, seed=s), d, sft_dir / "final", rl_prompts(out / "filter", cfg.rl_prompts)),
            resume=True, progress=progress))
    models = [("sft", sft_dir / "final"), *((lab, d / "final") for lab, _, d in runs),
              ("direct_sft", direct_dir / "final")]
    _evaluate(cfg, out, st, models, progress)

    summary = _summary(cfg, out, st, runs, st.wall(time.perf_counter() - t0))
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))
    with open_trackers(cfg, out, "demo") as trackers:  # the demo's own run in the group: its numbers and checks
        trackers.summary({k: v for k, v in summary.items() if k not in ("scaling", "stage_seconds", "seeds")})
    write_demo_report(out)
    print(demo_table(summary), file=sys.stderr)
    return summary


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def _gap_line(s: dict) -> str:
    """RL − SFT at the training budget and at the free budget, with the truncation that picked the latter."""
    seeds, fb, cut = len(s["seeds"]), s["free_budget"], s["free_budget_truncation"]
    where = ("the smallest at which SFT and RL truncate ≤ " if s["free_budget_truncation_ok"] else
             "none has SFT and RL truncating ≤ ") + f"{100 * FREE_TRUNCATION:.0f}%"
    return (f"RL − SFT{f' (mean over {seeds} seeds)' if seeds > 1 else ''}: "
            f"{show('rl_beats_sft_by_10_points', s['rl_minus_sft_at_training_budget'])} points at the training "
            f"budget ({s['accuracy_budget']} tokens), "
            f"{show('rl_beats_sft_by_10_points', s['rl_minus_sft_at_free_budget'])} at the free budget "
            f"({fb} tokens: {where}; truncated "
            + ", ".join(f"{k} {_pct(cut[k])}" for k in ["sft", *s["rl_labels"]]) + ")"
            + ("" if s["free_budget_truncation_ok"] else " — free_budget_truncation_ok: false")
            + ("" if s.get("rl_minus_sft_length_at_free_budget") is None else
               f"; there RL's responses are {s['rl_minus_sft_length_at_free_budget']:+.1f} tokens longer than "
               "SFT's"))


def _check_lines(s: dict) -> list[str]:
    """One line per check: ✓/✗, its number (mean ± std over seeds), its threshold, then each seed's number."""
    seeds = len(s["seeds"])
    lines = ["checks" + (f" (judged on the mean over {seeds} seeds; ± std, then each seed)" if seeds > 1 else "")]
    for k, ok in s["checks"].items():
        value = show(k, s["check_mean"][k])
        if seeds > 1 and s["check_std"][k] is not None:
            value += f" ± {show(k, s['check_std'][k], signed=False)}"
        each = "  " + " ".join(show(k, x["check_values"][k]) for x in s["seeds"]) if seeds > 1 else ""
        lines.append(f"  {'✓' if ok else '✗'} {k:48s}{value:>16s}  {rule(k):10s}{each}")
    return lines


def demo_table(s: dict) -> str:
    b = s["accuracy_budget"]
    lines = ["", "t1 demo — Countdown, tiny model, sampled pass@1 (temperature 1.0) on "
             f"{s['eval_problems']} held-out problems", "",
             f"{'model':16s}{'@' + str(b) + ' tokens':>14s}{'full budget':>14s}"]
    names = {"sft": "SFT (T&E)", "direct_sft": "SFT (direct)", "rl": "RL",
             **{x["label"]: f"RL (seed {x['seed']})" for x in s["seeds"][1:]}}
    for key, pts in s["scaling"].items():
        lines.append(f"{names.get(key, key):16s}{_pct(at(pts, b)):>14s}{_pct(s['full_budget_pass@1'][key]):>14s}")
    budgets = [p["budget"] for p in s["scaling"]["sft"]]
    lines += ["", "accuracy and truncated share (responses cut at the budget) vs thinking budget",
              f"{'model':14s}{'':10s}" + "".join(f"{x:>8d}" for x in budgets)]
    for key, pts in s["scaling"].items():
        lines.append(f"{key:14s}{'accuracy':10s}" + "".join(f"{_pct(p['accuracy']):>8s}" for p in pts))
        lines.append(f"{'':14s}{'truncated':10s}" + "".join(f"{_pct(p['truncated_rate']):>8s}" for p in pts))
    stage_times = " | ".join(f"{k} {v:.0f}s" for k, v in s["stage_seconds"].items())
    lines += ["", _gap_line(s), "", *_check_lines(s), "", f"wall time {s['wall_seconds']:.0f}s | " + stage_times]
    return "\n".join(lines)
