"""`t1 scale`: accuracy as a function of the thinking budget of a single generation (the paper's Figure 1).

For each sample, one generation at the largest budget B is drawn. At a budget b ≤ B the sample is its first
b tokens — exact, not an approximation: the engine seeds every token's draw by (sample seed, position), so a
generation capped at b reproduces that prefix. A sample that ended by itself within b tokens is graded as
is; a truncated one is completed into an answer either by appending an answer cue and letting the same
model write up to ``answer_tokens`` more (greedy), or by handing the partial thinking to a summariser model.
A truncated sample whose kept prefix already states a complete final answer (the task's extractor finds
one) is graded on that answer — the cut removed only what came after it (for T1 traces, the self-check).
Forcing a second answer there measured as an artefact: on the demo's RL model at 32 tokens, 95 prefixes
held a correct answer, and forcing replaced most of them by a malformed second one (26 graded correct),
which made accuracy dip at that budget. Likewise a prefix cut inside its own ``\boxed{`` goes on writing
that answer instead of getting a second cue. ``force_answer=True`` (``--force-answer``) restores
always-forcing.

With ``extend`` (s1's budget forcing), a sample that ends before its budget has its end-of-sequence replaced
by the cue word ("Wait") up to ``max_extensions`` times, so it thinks longer; prefixes are then no longer
shared between budgets, and each budget is generated on its own.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from t1.chat import ChatFormat, chat_format
from t1.config import option, require
from t1.eval.benchmarks import load_bench
from t1.eval.metrics import mean_stderr
from t1.eval.page import draw_accuracy, pyplot
from t1.eval.protocols import SamplingProtocol, describe, samples_for
from t1.io import all_or_nothing, check_output_dir, fill
from t1.model.load import chat_format_of
from t1.rollout import close_engine, open_engine
from t1.rollout.base import Sample, SamplingParams, check_sampling, check_tokens, sample_seed
from t1.rollout.config import EngineConfig
from t1.runtime.device import quiet_libraries
from t1.runtime.trackers import Trackers, Tracking, open_trackers
from t1.tasks import get_task
from t1.tasks.base import Item, Task


@dataclass(frozen=True)
class ScaleSettings:
    budgets: tuple[int, ...] = (16, 32, 64, 128, 256)
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    answer_tokens: int = 24
    cue: str | None = None  # default: the task's answer_cue
    extend: str | None = None
    max_extensions: int = 0
    use_chat_template: bool = True
    force_answer: bool = False  # force an answer even when the truncated prefix already states one

    def __post_init__(self):
        check_sampling(self.n, self.temperature, self.top_p)
        require(len(self.budgets) > 0 and all(b >= 1 for b in self.budgets), "budgets",
                "must be one or more token budgets ≥ 1", self.budgets)
        for b in self.budgets:  # the model's context is checked once its config is read (t1.rollout.bounds)
            check_tokens(b, "budgets")
        check_tokens(self.answer_tokens, "answer_tokens")
        # each extension spends at least one token of the largest budget: more can never happen
        require(0 <= self.max_extensions <= max(self.budgets), "max_extensions",
                f"must be ≥ 0 and ≤ {max(self.budgets)} (the largest budget)", self.max_extensions)


def _decode(tok, ids: list[int]) -> str:
    return tok.decode(ids, skip_special_tokens=True)


def _overlap(toks: list[int], cue_ids: list[int]) -> int:
    """The length of the longest end of ``toks`` that is a beginning of ``cue_ids``."""
    for k in range(min(len(toks), len(cue_ids) - 1), 0, -1):
        if toks[-k:] == cue_ids[:k]:
            return k
    return 0


def _open_box(text: str) -> bool:
    """Whether ``text`` ends inside an unclosed ``\boxed{…}`` (its last one)."""
    i = text.rfind("\\boxed{")
    if i < 0:
        return False
    depth = 0
    for ch in text[i + len("\\boxed"):]:
        depth += (ch == "{") - (ch == "}")
        if depth == 0:
            return False
    return True


def _word_level(tok) -> bool:
    """Word-level tokenizers (like the tiny Countdown one) need spaces between joined text pieces."""
    try:
        return json.loads(tok.backend_tokenizer.to_str())["model"]["type"] == "WordLevel"
    except Exception:  # noqa: BLE001 - any tokenizer without that structure is not word-level
        return False


def _generate_with_extensions(engine, tok, prompts, seeds, s: ScaleSettings, budget: int, fmt: ChatFormat
                              ) -> list[Sample]:
    """Budget forcing: replace an early turn end (any stop id) by the ``extend`` cue, at most ``max_extensions``
    times — the cue goes where the model closed its turn, never after a closed turn."""
    ext_ids = tok(s.extend, add_special_tokens=False)["input_ids"]
    stops = set(fmt.stop_ids)
    done: list[list[int]] = [[] for _ in prompts]
    finished = [False] * len(prompts)
    active = list(range(len(prompts)))
    for round_ in range(s.max_extensions + 1):
        if not active:
            break
        reqs = [prompts[i] + done[i] for i in active]
        room = [budget - len(done[i]) for i in active]
        outs = engine.generate(reqs, [seeds[i] + 7919 * round_ for i in active],
                               SamplingParams(s.temperature, s.top_p, max(1, max(room)), fmt.stop_ids))
        nxt = []
        for i, r, o in zip(active, room, outs):
            toks = o.token_ids[:r]
            ended = bool(toks) and toks[-1] in stops
            if ended and round_ < s.max_extensions and len(done[i]) + len(toks) - 1 + len(ext_ids) < budget:
                done[i] += toks[:-1] + ext_ids
                nxt.append(i)
            else:
                done[i] += toks
                finished[i] = ended
        active = nxt
    return [Sample(d, _decode(tok, d[:-1] if f else d), f) for d, f in zip(done, finished)]


def scaling_points(engine, tok, task: Task, items: list[Item], s: ScaleSettings, summarizer=None,
                   progress: bool = True, fmt: ChatFormat | None = None) -> list[dict]:
    """[{budget, accuracy, stderr, finished_rate, mean_tokens}] for one model; ``task`` grades the answers;
    ``fmt``: the model's chat format (default: the tokenizer's alone, see :func:`t1.chat.chat_format`)."""
    fmt = fmt or chat_format(tok, (), s.use_chat_template)
    cue = s.cue if s.cue is not None else task.answer_cue
    cue_ids = tok(cue, add_special_tokens=False)["input_ids"]
    sep = " " if _word_level(tok) else ""
    base = [fmt.prompt_ids(tok, it.prompt) for it in items for _ in range(s.n)]
    seeds = [sample_seed(s.seed, 0, i, k) for i in range(len(items)) for k in range(s.n)]
    its = [it for it in items for _ in range(s.n)]
    budgets = sorted(s.budgets)
    long = None if s.extend else engine.generate(base, seeds, SamplingParams(s.temperature, s.top_p, budgets[-1],
                                                                             fmt.stop_ids))
    points = []
    bar = tqdm(budgets, desc="budgets", file=sys.stderr, disable=not progress, dynamic_ncols=True)
    for b in bar:
        samples = long if long is not None else _generate_with_extensions(engine, tok, base, seeds, s, b, fmt)
        texts, need = [], []
        for j, smp in enumerate(samples):
            toks = smp.token_ids[:b]
            if smp.finished and len(smp.token_ids) <= b:
                texts.append(smp.text)
            else:
                texts.append(None)
                need.append((j, toks))
        grades = [None] * len(samples)
        if need and not s.force_answer:  # prefixes that already state an answer are graded as they are
            prefixes = [_decode(tok, toks) for _, toks in need]
            for (j, _), text, g in zip(need, prefixes, task.score(prefixes, [its[j] for j, _ in need])):
                if g.extracted is not None:
                    texts[j], grades[j] = text, g
            need = [(j, toks) for j, toks in need if grades[j] is None]
        if need:
            if summarizer is None:
                # a prefix cut inside its own \boxed{…} finishes writing that answer; the others get the cue
                # and one that stopped part-way through writing the cue itself gets only the rest of it
                opened = [not s.force_answer and _open_box(_decode(tok, toks)) for _, toks in need]
                rest = [[] if o else cue_ids[_overlap(toks, cue_ids):] for (_, toks), o in zip(need, opened)]
                reqs = [base[j] + toks + r for (j, toks), r in zip(need, rest)]
                outs = engine.generate(reqs, [seeds[j] for j, _ in need],
                                       SamplingParams(0.0, 1.0, s.answer_tokens, fmt.stop_ids))
            else:
                outs = summarizer.complete([(its[j], _decode(tok, toks)) for j, toks in need], cue,
                                           s.answer_tokens)
                rest = [cue_ids] * len(need)
            for (j, toks), o, r in zip(need, outs, rest):
                texts[j] = sep.join(p for p in (_decode(tok, toks), _decode(tok, r), o.text) if p)
        todo = [j for j, g in enumerate(grades) if g is None]
        for j, g in zip(todo, task.score([texts[j] for j in todo], [its[j] for j in todo])):
            grades[j] = g
        per_problem = [sum(g.correct for g in grades[i * s.n:(i + 1) * s.n]) / s.n for i in range(len(items))]
        acc, se = mean_stderr(per_problem)
        finished = sum(smp.finished and len(smp.token_ids) <= b for smp in samples)
        points.append({"budget": b, "accuracy": acc, "stderr": se, "finished_rate": finished / len(samples),
                       "mean_tokens": sum(min(len(smp.token_ids), b) for smp in samples) / len(samples)})
        bar.set_postfix(budget=b, acc=f"{acc:.3f}", finished=f"{finished / len(samples):.2f}")
    return points


class Summarizer:
    """Completes truncated thinking with a second model: it reads the problem and the partial solution."""

    TEMPLATE = ("{problem}\n\nHere is an unfinished solution:\n{partial}\n\nBased on it, state the final answer.")

    def __init__(self, path: str, engine="auto"):
        self.engine, self.tok, _ = open_engine(engine, path)
        self.fmt = chat_format_of(self.tok, path)

    def complete(self, pairs: list[tuple[Item, str]], cue: str, max_tokens: int) -> list[Sample]:
        cue_ids = self.tok(cue, add_special_tokens=False)["input_ids"]
        prompts = [self.fmt.prompt_ids(self.tok, fill(self.TEMPLATE, problem=it.problem or it.prompt,
                                                      partial=partial)) + cue_ids for it, partial in pairs]
        return self.engine.generate(prompts, list(range(len(prompts))),
                                    SamplingParams(0.0, 1.0, max_tokens, self.fmt.stop_ids))


def plot(curves: dict[str, list[dict]], path: Path, title: str = "") -> Path:
    """scaling.png: accuracy ± one standard error against the budget, one line per model
    (:func:`t1.eval.page.draw_accuracy`)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    draw_accuracy(ax, curves)
    ax.set_title(title or "Accuracy vs thinking budget")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def run_scale(models: list[tuple[str, str]], bench: str, out: str | Path, s: ScaleSettings, summarizer_path=None,
              engine="auto", limit: int = 0, gpqa_csv=None, data_dir=None, countdown_cfg=None,
              progress: bool = True, protocol: dict | None = None) -> dict[str, list[dict]]:
    """``models``: (label, path) pairs. Writes scaling.json and scaling.png to ``out``, both or neither (see
    :func:`t1.io.all_or_nothing`); ``out`` is checked before any model is loaded (:func:`check_scale_output`)."""
    out = check_scale_output(out, [p for _, p in models], bench, summarizer_path, gpqa_csv)
    quiet_libraries()
    task_name, items = load_bench(bench, data_dir, gpqa_csv, countdown_cfg, task=(protocol or {}).get("task"))
    if limit:
        items = items[:limit]
    summarizer = Summarizer(summarizer_path, engine) if summarizer_path else None
    curves = {}
    grader = (protocol or {}).get("grader", "default")
    with get_task(task_name, countdown=countdown_cfg, grader=grader) as task:
        for label, path in models:
            eng, tok, _ = open_engine(engine, path, batch=len(items) * s.n,
                                      budget=max(s.budgets) + s.answer_tokens,
                                      field=f"budgets (+ answer_tokens {s.answer_tokens})")
            try:
                fmt = chat_format_of(tok, path, s.use_chat_template)
                print(f"scale: {label}: {fmt.describe()}", file=sys.stderr)
                curves[label] = scaling_points(eng, tok, task, items, s, summarizer, progress, fmt)
            finally:
                close_engine(eng)
    settings = {**s.__dict__, **(protocol or {})}
    with all_or_nothing() as staged:
        plot(curves, staged.path(out / "scaling.png"), f"{bench}: accuracy vs thinking budget")
        staged.write_text(out / "scaling.json", json.dumps({"bench": bench, "settings": settings,
                                                            "curves": curves}, indent=2))
    print(scaling_table(curves), file=sys.stderr)
    return curves


def check_scale_output(out: str | Path, models: list[str], bench: str, summarizer: str | None = None,
                       gpqa_csv: str | None = None) -> Path:
    """Before any model is loaded: ``out`` can take scaling.json and scaling.png, and neither it nor they is an
    input (a model, the summariser, the benchmark's file, the GPQA CSV)."""
    inputs = [*models, summarizer, gpqa_csv, bench if bench.endswith(".jsonl") else None]
    return check_output_dir(out, *inputs, files=["scaling.json", "scaling.png"])


@dataclass(frozen=True)
class ScaleConfig(SamplingProtocol, Tracking):
    """`t1 scale`: ``t1 scale [CONFIG.yaml] models=[A,B] labels=[sft,rl] bench=aime24 budgets=[…] [preset=r1]``;
    the protocol fields (preset, n, temperature, …) are :class:`t1.eval.protocols.SamplingProtocol`'s."""

    models: tuple[str, ...] = option((), "checkpoints (paths or hub names) to sweep (required)")
    labels: tuple[str, ...] = option((), "a name per model, in order (default model1, model2, …)")
    bench: str = option("math500", "one benchmark (as for t1 eval)")
    budgets: tuple[int, ...] = option((16, 32, 64, 128, 256), "thinking budgets in tokens (each ≤ 1,048,576, and "
                                                               "below the model's context)")
    out: str = option("runs/scale", "output directory: scaling.json and scaling.png")
    answer_tokens: int = option(24, "tokens allowed after the answer cue (≤ 1,048,576)")
    cue: str | None = option(None, "answer cue appended to truncated thinking (null = the task's)")
    summarizer: str | None = option(None, "a model that turns truncated thinking into an answer")
    force_answer: bool = option(False, "force an answer after every truncated sample, even one that already "
                                       "states an answer")
    extend: str | None = option(None, "s1 budget forcing: replace an early stop by this word")
    max_extensions: int = option(0, "s1 budget forcing: how many times (≤ the largest budget)")
    rollout: EngineConfig = option(help="the sampling engine and its settings", factory=EngineConfig)

    def validate(self) -> None:
        super().validate()
        require(len(self.models) > 0, "models", "give at least one checkpoint", self.models)
        require(len(self.labels) <= len(self.models), "labels", "at most one per model", self.labels)
        self.settings()  # the sampling values' own checks

    def settings(self) -> ScaleSettings:
        return ScaleSettings(budgets=self.budgets, n=samples_for(self.n, self.bench),
                             temperature=self.temperature, top_p=self.top_p, seed=self.seed,
                             answer_tokens=self.answer_tokens, cue=self.cue, extend=self.extend,
                             max_extensions=self.max_extensions, force_answer=self.force_answer)


def scale(cfg: ScaleConfig, progress: bool = True) -> dict[str, list[dict]]:
    """`t1 scale` on a loaded config."""
    if cfg.preset != "none" or cfg.n == 0:
        print(f"scale: {describe(cfg, [cfg.bench])}", file=sys.stderr)
    models = [(cfg.labels[i] if i < len(cfg.labels) else f"model{i + 1}", m) for i, m in enumerate(cfg.models)]
    check_scale_output(cfg.out, list(cfg.models), cfg.bench, cfg.summarizer, cfg.gpqa_csv)  # before the trackers
    with open_trackers(cfg, cfg.out, "scale") as trackers:
        curves = run_scale(models, cfg.bench, cfg.out, cfg.settings(), cfg.summarizer, cfg.rollout, cfg.limit,
                           cfg.gpqa_csv, cfg.data_dir, progress=progress,
                           protocol={"preset": cfg.preset, "grader": cfg.grader, "task": cfg.task})
        report_scale(trackers, curves)
    return curves


def report_scale(trackers: Trackers, curves: dict[str, list[dict]]) -> None:
    """Send scaling curves to the trackers: each point's numbers as ``scale/<number>/<label>`` at step = its
    budget (the x axis is the thinking budget), and all points as the table ``scaling``."""
    for label, pts in curves.items():
        for p in pts:
            trackers.log({f"scale/{k}/{label}": v for k, v in p.items() if k != "budget"}, p["budget"])
    trackers.table("scaling", [{"model": label, **p} for label, pts in curves.items() for p in pts], 0)


def scaling_table(curves: dict[str, list[dict]]) -> str:
    budgets = [p["budget"] for p in next(iter(curves.values()))]
    lines = [f"{'model':14s}" + "".join(f"{b:>9d}" for b in budgets)]
    for label, pts in curves.items():
        lines.append(f"{label:14s}" + "".join(f"{100 * p['accuracy']:8.1f}%" for p in pts))
    return "\n".join(lines)
