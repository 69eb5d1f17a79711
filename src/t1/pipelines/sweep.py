"""`t1 sweep`: one stage run over the values of config fields (and seeds); the runs collected and compared.

``t1 sweep rl runs/demo/rl/config.yaml rollout.samples_per_prompt=4,8,16 --seeds 3 --scale SCALE.yaml``

* A ``key=value`` whose value has commas at its top level (outside brackets, braces and quotes) is swept; the
  grid is the product of the swept fields. ``budgets=[64,128]`` (a YAML flow list) is a plain override.
* ``--seeds N``: each grid point runs N times, with 0 … N−1 added to the config's seed (``train.seed`` for
  ``rl`` and ``sft``, ``seed`` for ``scale`` and ``eval``).
* Every run's config (and, with ``--scale``, its scaling config) is loaded and validated before the first run
  starts, so a bad value is one error naming the field and nothing has run.
* Runs go to ``OUT/<field>=<value>[,<field2>=<value2>]/seed<s>/``. A finished run (``final/`` for training
  stages, ``scaling.json`` / ``summary.json`` for scale / eval) is skipped, an unfinished training run resumes
  from its newest checkpoint: a killed sweep continues where it stopped.
* Running a sweep again with a different override: every run that has done anything is compared with the
  config it recorded (a training run's ``config.yaml``; the sweep writes one for scale / eval runs and for
  ``--scale``'s ``<run>/scale/``), by the rules of ``--resume`` (:mod:`t1.runtime.resume`). A changed field
  that shapes the run is refused in one line naming the run and every such field, old → new, before any run
  starts: skipping the run would report the old run's numbers under the new config, and re-running it would
  replace results — neither silently. A longer training run (``train.steps`` …, where allowed) is no longer
  finished: it resumes from its last checkpoint and runs the extra steps; other allowed changes (logging,
  trackers) leave a finished run skipped.
* Each run is its own ``python -m t1 STAGE`` process (:mod:`t1.runtime.children`), ``--jobs N`` at once with
  cores ÷ N threads each (see :func:`execute`).
* ``--scale SCALE.yaml`` (training stages): after each run, `t1 scale` on its ``final/`` with that config, its
  ``models``, ``labels`` and ``out`` replaced (``<run>/scale/``); the scaling protocol, its seed included, is
  the same for every run, so only the trained models differ.
* ``OUT/sweep.json``: per grid point, each seed's run (its numbers: the mean of reward, accuracy, response
  length and entropy — loss for SFT — over the last 10 % of logged steps, an RL run's finished-length growth
  (:func:`t1.eval.metrics.finished_length_growth`), its largest gradient norm and skipped updates (stability),
  and accuracy at each budget) and, for every
  number, the mean, the standard deviation over seeds and the min–max. A table goes to stderr; the command
  then writes ``OUT/sweep.html`` (:mod:`t1.pipelines.sweep_report`).
"""

from __future__ import annotations

import hashlib
import json
import re
import statistics
import sys
from dataclasses import dataclass
from itertools import product
from pathlib import Path
from typing import Any

from t1 import config as cfglib
from t1.config import ConfigError
from t1.eval.metrics import finished_length_growth, truncated
from t1.io import atomic_write_text, check_output_dir, read_json, read_log
from t1.runtime import resume
from t1.runtime.checkpoint import checkpoint_dirs
from t1.runtime.children import Job, run_jobs, t1_command, usable_cores


@dataclass(frozen=True)
class StageSpec:
    seed: str  # the dotted seed field
    done: str  # what a finished run has in its directory
    training: bool


STAGES = {
    "rl": StageSpec("train.seed", "final", True),
    "sft": StageSpec("train.seed", "final", True),
    "scale": StageSpec("seed", "scaling.json", False),
    "eval": StageSpec("seed", "summary.json", False),
}
# last-10 % means (loss: SFT runs only; entropy: RL only), then RL's finished-length growth (first → last 10 %)
TRAIN_METRICS = ("reward", "accuracy", "response_length", "entropy", "loss")
GROWTH = "finished_length_growth"


def stage_parts(stage: str):
    """(config class, runner) of a stage; imported on demand (the training stages bring torch)."""
    if stage == "rl":
        from t1.rl.config import RLConfig
        from t1.stages.rl import train_rl

        return RLConfig, train_rl
    if stage == "sft":
        from t1.stages.sft import SFTConfig, train_sft

        return SFTConfig, train_sft
    if stage == "scale":
        from t1.stages.scale import ScaleConfig, scale

        return ScaleConfig, scale
    if stage == "eval":
        from t1.stages.evaluate import EvalConfig, evaluate

        return EvalConfig, evaluate
    raise ConfigError(f"stage {stage!r}: use one of {', '.join(STAGES)}")


# ------------------------------------------------------------------------------------------------ the grid


def split_values(raw: str) -> list[str]:
    """``"4,8,16"`` -> ["4", "8", "16"]; commas inside ``[]``, ``{}``, ``()`` or a quoted scalar do not split:
    ``"[64,128]"`` is one value, ``"[1,2],[3]"`` two."""
    parts, cur, depth, quote = [], "", 0, None
    for ch in raw:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"" and (not cur.strip() or cur.rstrip()[-1] in "[{(,:"):
            quote = ch  # a quote opens a scalar only where a YAML scalar can start
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth = max(0, depth - 1)
        elif ch == "," and depth == 0:
            parts.append(cur.strip())
            cur = ""
            continue
        cur += ch
    return [*parts, cur.strip()]


@dataclass(frozen=True)
class Grid:
    swept: tuple[tuple[str, tuple[str, ...]], ...]  # (dotted field, its values as given)
    overrides: tuple[str, ...]  # plain key=value overrides
    config: str | None

    def points(self) -> list[tuple[tuple[str, str], ...]]:
        """Every combination of the swept values, in the order given: ((field, value), …) each."""
        fields = [f for f, _ in self.swept]
        return [tuple(zip(fields, combo)) for combo in product(*(vals for _, vals in self.swept))]


def parse_grid(args: list[str]) -> Grid:
    """``[CONFIG.yaml] FIELD=v1,v2 … key=value …`` -> a :class:`Grid`; mistakes are one-line ConfigErrors."""
    config, swept, overrides = None, [], []
    for a in args:
        if config is None and cfglib.is_config_path(a):
            config = a
            continue
        if "=" not in a:
            raise ConfigError(f"argument {a!r}: expected CONFIG.yaml, FIELD=v1,v2 or a dotted.key=value override")
        key, raw = a.split("=", 1)
        key = key.strip()
        if key == "out":
            raise ConfigError("out: the sweep sets each run's out; give the sweep's directory with --out")
        if any(k == key for k, _ in swept) or any(o.split("=", 1)[0].strip() == key for o in overrides):
            raise ConfigError(f"{key}: given twice")
        values = split_values(raw)
        if len(values) == 1:
            overrides.append(a)
            continue
        if any(not v for v in values):
            raise ConfigError(f"{a!r}: an empty value in the sweep (values are split at top-level commas)")
        if len(set(values)) < len(values):
            raise ConfigError(f"{a!r}: a value repeats")
        swept.append((key, tuple(values)))
    return Grid(tuple(swept), tuple(overrides), config)


def point_label(point) -> str:
    return ",".join(f"{k}={v}" for k, v in point) or "base"


def point_dir(point) -> str:
    """The folder of a grid point: its label with every character outside ``A-Za-z0-9._=,+-`` made ``_``,
    shortened (with a hash of the label) past 100 characters."""
    label = point_label(point)
    name = re.sub(r"[^A-Za-z0-9._=,+-]", "_", label)
    if len(name) > 100:
        name = f"{name[:88]}-{hashlib.sha1(label.encode()).hexdigest()[:10]}"
    return name


def _q(text: str | Path) -> str:
    """A string as an override value that YAML reads back unchanged (JSON strings are YAML scalars)."""
    return json.dumps(str(text))


def _attr(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


# ------------------------------------------------------------------------------------------------ the plan


@dataclass(frozen=True)
class Run:
    point: tuple[tuple[str, str], ...]
    seed: int
    dir: Path
    cfg: Any
    scale_cfg: Any  # the ScaleConfig run on its final/ (training stages with --scale), else None

    @property
    def label(self) -> str:
        return point_label(self.point)


def plan(stage: str, grid: Grid, out: Path, seeds: int = 1, scale_config: str | None = None) -> list[Run]:
    """Every run's config loaded and validated (a bad value: one ConfigError naming it, before any run)."""
    spec = STAGES.get(stage)
    if spec is None:
        raise ConfigError(f"stage {stage!r}: use one of {', '.join(STAGES)}")
    if seeds < 1:
        raise ConfigError(f"--seeds: must be ≥ 1 (got {seeds})")
    if not grid.swept and seeds < 2:
        raise ConfigError("nothing to sweep: give FIELD=v1,v2[,…] (values split at top-level commas) or --seeds N")
    if scale_config is not None and not spec.training:
        raise ConfigError(f"--scale: only after a training stage (rl, sft), not {stage}")
    cls, _ = stage_parts(stage)
    points = grid.points()
    dirs = [point_dir(p) for p in points]
    if len(set(dirs)) < len(dirs):
        raise ConfigError("two sweep values give the same folder name once sanitised: " +
                          ", ".join(sorted({d for d in dirs if dirs.count(d) > 1})))
    runs = []
    for point, folder in zip(points, dirs):
        assigned = [f"{k}={v}" for k, v in point]
        try:
            base = _attr(cfglib.load(cls, grid.config, [*grid.overrides, *assigned]), spec.seed)
            for offset in range(seeds):
                run_dir = out / folder / f"seed{base + offset}"
                cfg = cfglib.load(cls, grid.config, [*grid.overrides, *assigned, f"{spec.seed}={base + offset}",
                                                     f"out={_q(run_dir)}"])
                scale_cfg = _scale_cfg(scale_config, run_dir, f"{point_label(point)} seed{base + offset}")
                runs.append(Run(point, base + offset, run_dir, cfg, scale_cfg))
        except ConfigError as e:
            raise ConfigError(f"sweep {point_label(point)}: {e}") from None
    return runs


def _scale_cfg(path: str | None, run_dir: Path, label: str):
    if path is None:
        return None
    from t1.stages.scale import ScaleConfig

    try:
        return cfglib.load(ScaleConfig, path, [f"models=[{_q(run_dir / 'final')}]",
                                               f"labels=[{_q(label)}]", f"out={_q(run_dir / 'scale')}"])
    except ConfigError as e:
        raise ConfigError(f"--scale {e}") from None


# ------------------------------------------------------------------------------------------------- running


def _done(stage: str, run: Run) -> bool:
    if not (run.dir / STAGES[stage].done).exists() or _extended(stage, run):
        return False
    return run.scale_cfg is None or (run.dir / "scale" / "scaling.json").exists()


def _resolved(stage: str, cfg: Any) -> Any:
    """The config as the stage records it in its ``config.yaml`` (`t1 rl` resolves its anchor first)."""
    if stage == "rl":
        from t1.rl.config import resolve_anchor

        return resolve_anchor(cfg)[0]
    return cfg


def _records(stage: str, run: Run) -> list[tuple[str, Any, Path, int | None]]:
    """(what, config, its record, the checkpoint step) for the parts of ``run`` that did something: its stage
    run (a checkpoint, ``final/`` or its result) and its ``--scale`` run (``scale/scaling.json``)."""
    name = f"sweep: run {run.label} seed {run.seed} ({run.dir})"
    ckpts = checkpoint_dirs(run.dir)
    step = int(ckpts[-1].name.split("-")[1]) if ckpts else None
    out = []
    if ckpts or (run.dir / STAGES[stage].done).exists():
        out.append((name, _resolved(stage, run.cfg), run.dir / "config.yaml", step))
    if run.scale_cfg is not None and (run.dir / "scale" / "scaling.json").exists():
        out.append((f"{name} --scale", run.scale_cfg, run.dir / "scale" / "config.yaml", None))
    return out


def check_reruns(stage: str, runs: list[Run]) -> None:
    """Refuse, before any run starts, a run that did something under a config that differs from its own in a
    field that shapes it (see the module doc): one ConfigError naming the run and the fields."""
    for run in runs:
        for name, cfg, record, step in _records(stage, run):
            refused, _ = resume.compare(cfg, record, step)
            if refused:
                raise ConfigError(resume.refusal(name, refused, "use another --out or drop the override",
                                                 "re-running it would mix two runs, skipping it would report "
                                                 "the old one's numbers"))


def _extended(stage: str, run: Run) -> bool:
    """Whether a finished training run's recorded config is shorter than ``run.cfg``'s (an allowed change of
    ``train.steps`` …): it resumes to run the extra steps."""
    if not STAGES[stage].training:
        return False
    _, accepted = resume.compare(_resolved(stage, run.cfg), run.dir / "config.yaml")
    return any(c.field in resume.LENGTH for c in accepted)


def _job(stage: str, run: Run, head: str, quiet: bool, log: Path | None) -> Job:
    """The commands that finish ``run``: its stage (a training run with ``--resume``: from its newest checkpoint,
    or from the start if none), then ``--scale``'s `t1 scale`; each config written when the run starts (a run
    that never starts leaves nothing), where the run's record is checked on a re-run (a training stage writes
    its own ``config.yaml``)."""
    spec, flags = STAGES[stage], ["--quiet"] if quiet else []
    commands, configs = [], []
    if not (run.dir / spec.done).exists() or _extended(stage, run):
        path = run.dir.parent / f"{run.dir.name}.yaml" if spec.training else run.dir / "config.yaml"
        configs.append((run.cfg, path))
        commands.append(t1_command(stage, path, *(["--resume"] if spec.training else []), *flags))
    if run.scale_cfg is not None:
        configs.append((run.scale_cfg, run.dir / "scale" / "config.yaml"))
        commands.append(t1_command("scale", configs[-1][1], *flags))

    def started() -> None:
        for cfg, path in configs:
            cfglib.save(cfg, path)
        print(f"\n{head} → {run.dir}", file=sys.stderr)

    return Job(f"sweep: run {run.label} seed {run.seed} ({run.dir})", commands, log, started=started,
               done=None if log is None else lambda: print(f"{head}: finished", file=sys.stderr))


def execute(stage: str, runs: list[Run], progress: bool = True, jobs: int = 1) -> None:
    """Every run not finished, each in its own `t1` process (a stage run in-process keeps memory it never
    returns: a long sweep would grow until it is killed), ``jobs`` at a time: with one, its output and progress
    bar here; with more, each with cores ÷ jobs threads and its output in ``OUT/<point>/seed<s>.log`` (a small
    model uses one core better than two: two single-threaded runs at once do more per minute; on a GPU machine
    each run takes a GPU of its own). A finished run
    is skipped, an unfinished or extended training run resumed, once :func:`check_reruns` found no run done
    under another config; the first run that fails stops the others (their checkpoints stay: run the sweep
    again to resume)."""
    check_reruns(stage, runs)
    todo = []
    for i, run in enumerate(runs, 1):
        head = f"sweep: run {i}/{len(runs)}: {run.label} seed {run.seed}"
        if _done(stage, run):
            print(f"{head}: done, skipped ({run.dir})", file=sys.stderr)
            continue
        log = None if jobs == 1 else run.dir.parent / f"{run.dir.name}.log"
        todo.append(_job(stage, run, head, quiet=not progress or jobs > 1, log=log))
    threads = None if jobs == 1 else max(1, usable_cores() // jobs)
    devices = _gpus(jobs)
    if jobs > 1 and todo:
        where = f"GPU {', '.join(devices)} (one each)" if devices else f"{threads} thread(s) each"
        print(f"sweep: {min(jobs, len(todo))} runs at a time, {where}; logs beside each run's folder "
              "(seed<s>.log)", file=sys.stderr)
    run_jobs(todo, parallel=jobs, threads=None if devices else threads, devices=devices)


def _gpus(jobs: int) -> list[str] | None:
    """With ``--jobs`` > 1 on a GPU machine, the GPU ids the runs take one each (a run per GPU at most)."""
    import os

    import torch

    if jobs == 1 or not torch.cuda.is_available():
        return None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [d.strip() for d in visible.split(",") if d.strip()] if visible else \
        [str(i) for i in range(torch.cuda.device_count())]
    if jobs > len(ids):
        raise ConfigError(f"--jobs {jobs}: more runs at once than this machine's {len(ids)} GPU(s) (each run "
                          "takes one)")
    return ids


# ---------------------------------------------------------------------------------------------- collecting


def _curve_numbers(path: Path, prefix_labels: bool) -> tuple[dict[str, float], list[int]]:
    """``accuracy@B`` and ``truncated@B`` (share of samples cut at B) for each budget of a scaling.json
    (``LABEL accuracy@B`` … with several models)."""
    data = read_json(path)
    numbers, budgets = {}, []
    for label, pts in data["curves"].items():
        for p in pts:
            pre = f"{label} " if prefix_labels else ""
            numbers[f"{pre}accuracy@{p['budget']}"] = p["accuracy"]
            if truncated(p) is not None:
                numbers[f"{pre}truncated@{p['budget']}"] = truncated(p)
            budgets.append(p["budget"])
    return numbers, sorted(set(budgets))


def run_numbers(stage: str, run_dir: Path) -> tuple[dict[str, float], list[int]]:
    """(numbers, budgets) of one finished run: the last-10 % means of its training metrics, its accuracy per
    budget (scale: its own curves; a training stage: ``scale/scaling.json`` if there), eval's pass@1."""
    numbers: dict[str, float] = {}
    budgets: list[int] = []
    if STAGES[stage].training:
        rows = read_log(run_dir / "metrics.jsonl")
        tail = rows[-max(1, round(len(rows) / 10)):] if rows else []
        rl = bool(tail) and "reward" in tail[-1]  # an RL run's loss is its policy-gradient objective: left out
        for key in [k for k in TRAIN_METRICS if (k != "loss") == rl]:
            vals = [r[key] for r in tail if isinstance(r.get(key), (int, float))]
            if vals and len(vals) == len(tail):
                numbers[key] = sum(vals) / len(vals)
        if rl and (growth := finished_length_growth(rows)) is not None:
            numbers[GROWTH] = growth
        norms = [r["grad_norm"] for r in rows if isinstance(r.get("grad_norm"), (int, float))]
        if rl and norms:  # stability over the whole run: the largest gradient norm, the updates skipped
            numbers["grad_norm_max"] = max(norms)
            numbers["skipped_steps"] = float(sum(bool(r.get("skipped")) for r in rows))
        if (run_dir / "scale" / "scaling.json").exists():
            more, budgets = _curve_numbers(run_dir / "scale" / "scaling.json", False)
            numbers.update(more)
    elif stage == "scale":
        curves = read_json(run_dir / "scaling.json")["curves"]
        numbers, budgets = _curve_numbers(run_dir / "scaling.json", len(curves) > 1)
    else:
        for bench, s in read_json(run_dir / "summary.json")["benchmarks"].items():
            for key in ("pass@1", "mean_tokens", "truncated_rate"):
                numbers[f"{bench} {key}"] = s[key]
    return numbers, budgets


def spread(values: list[float]) -> dict[str, float]:
    """mean, std over seeds (sample standard deviation; 0 with one seed), min, max and n."""
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "n": len(values)}


def collect(stage: str, runs: list[Run], out: Path, meta: dict) -> dict:
    """``OUT/sweep.json``: per grid point its seeds' runs and, for every number, mean / std / min / max."""
    points: dict[str, dict] = {}
    for run in runs:
        p = points.setdefault(run.label, {"label": run.label, "values": dict(run.point),
                                          "dir": run.dir.parent.name, "runs": [], "budgets": []})
        numbers, budgets = run_numbers(stage, run.dir) if _done(stage, run) else ({}, [])
        p["runs"].append({"seed": run.seed, "dir": str(run.dir.relative_to(out)), "numbers": numbers})
        p["budgets"] = sorted(set(p["budgets"]) | set(budgets))
    for p in points.values():
        keys = list(dict.fromkeys(k for r in p["runs"] for k in r["numbers"]))
        p["summary"] = {k: spread([r["numbers"][k] for r in p["runs"] if k in r["numbers"]]) for k in keys}
    result = {**meta, "stage": stage, "points": list(points.values())}
    atomic_write_text(out / "sweep.json", json.dumps(result, indent=2))
    return result


def _fmt(key: str, s: dict | None) -> str:
    if s is None:
        return "—"
    if "accuracy" in key or "pass@" in key or key.endswith("_rate"):
        return f"{100 * s['mean']:.1f} ± {100 * s['std']:.1f}%"
    if abs(s["mean"]) >= 100:
        return f"{s['mean']:.0f} ± {s['std']:.0f}"
    return f"{s['mean']:.3f} ± {s['std']:.3f}"


def columns(result: dict) -> list[str]:
    """The numbers worth a column, in a fixed order: training metrics, then accuracy per budget, then the rest."""
    keys = list(dict.fromkeys(k for p in result["points"] for k in p["summary"]))
    first = [k for k in (*TRAIN_METRICS, GROWTH) if k in keys]
    return first + [k for k in keys if k not in first]


def table(result: dict) -> str:
    """The comparison: one row per grid point, mean ± std over seeds of every number (truncation rates per
    budget stay in sweep.json: the table would be too wide)."""
    cols = [c for c in columns(result) if "truncated@" not in c]
    heads = ["value"] + [c.replace("_", " ") for c in cols]
    rows = [[p["label"]] + [_fmt(c, p["summary"].get(c)) for c in cols] for p in result["points"]]
    widths = [max(len(r[i]) for r in [heads, *rows]) for i in range(len(heads))]
    seeds = max((len(p["runs"]) for p in result["points"]), default=0)
    lines = [f"t1 sweep {result['stage']}: mean ± std over {seeds} seed(s); "
             f"training metrics over the last 10% of steps"]
    for r in [heads, *rows]:
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    return "\n".join(lines)


def default_out(stage: str, grid: Grid) -> Path:
    return Path("runs") / "_".join(["sweep", stage, *(k.split(".")[-1] for k, _ in grid.swept)])


def run_sweep(stage: str, args: list[str], out: str | Path | None = None, seeds: int = 1,
              scale_config: str | None = None, progress: bool = True, jobs: int = 1) -> dict:
    """Plan (validating every run's config), run, collect ``sweep.json`` and print the table; the result."""
    if jobs < 1:
        raise ConfigError(f"--jobs: must be ≥ 1 (got {jobs})")
    grid = parse_grid(args)
    out = Path(out) if out is not None else default_out(stage, grid)
    runs = plan(stage, grid, out, seeds, scale_config)
    check_output_dir(out, grid.config, scale_config, files=["sweep.json", "sweep.html"])
    check_reruns(stage, runs)  # a refusal is the command's only line
    print(f"sweep: {len(runs)} runs of t1 {stage} ({len({r.label for r in runs})} values × {seeds} seed(s)) "
          f"→ {out}", file=sys.stderr)
    execute(stage, runs, progress, jobs)
    meta = {"out": str(out), "config": grid.config, "fields": [k for k, _ in grid.swept],
            "overrides": list(grid.overrides), "seeds": seeds, "scale_config": scale_config}
    result = collect(stage, runs, out, meta)
    print(table(result), file=sys.stderr)
    return result
