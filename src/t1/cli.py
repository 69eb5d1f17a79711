"""The ``t1`` command. Each subcommand is a thin wrapper: parse arguments, load the config, call the library.

Stage commands take ``CONFIG.yaml`` (optional) followed by ``dotted.key=value`` overrides, e.g.
``t1 init out=runs/tiny model.layers=2``. ``--print-config`` shows the resolved config and exits;
``--help-config`` lists every field with its type, default and help text. Options may come anywhere after
the command (``t1 sft a=1 --quiet b=2``, ``t1 sweep sft --out D f=a,b``).

Exit codes: 0 done; 2 bad input — a config value, a data file, an output that cannot be written (every
OSError: one line naming the path and the system's reason); 3 a sampling engine failed; 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

from t1 import config as cfglib
from t1.io import DataError, atomic_write_text, check_output, check_output_dir
from t1.rollout.base import EngineError


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("args", nargs="*", metavar="[CONFIG.yaml] [key=value ...]",
                   help="a YAML config file and/or dotted overrides such as train.lr=3e-4")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--help-config", action="store_true", help="list every config field and exit")


def _load_config(cls, args: argparse.Namespace):
    """(config, printed_and_should_exit)."""
    if args.help_config:
        for name, tp, default, help_text in cfglib.describe(cls):
            print(f"{name:34s} {tp:22s} {default:>14s}  {help_text}")
        return None, True
    path, overrides = None, []
    for a in args.args:
        if path is None and cfglib.is_config_path(a):
            path = a
        elif "=" in a:
            overrides.append(a)
        else:
            raise cfglib.ConfigError(f"argument {a!r}: expected CONFIG.yaml or a dotted.key=value override")
    cfg = cfglib.load(cls, path, overrides)
    if args.print_config:
        print(cfglib.dump(cfg), end="")
        return cfg, True
    return cfg, False


def _config_path(args: argparse.Namespace) -> list[str]:
    """The CONFIG.yaml among a command's arguments, as an input its outputs must not overwrite."""
    return [a for a in args.args if cfglib.is_config_path(a)][:1]


# --------------------------------------------------------------------------------------------- commands

MAX_PROBLEMS = 1 << 20  # `t1 countdown --n`: as many as any data.num_prompts may ask for


def cmd_init(args: argparse.Namespace) -> int:
    from t1.model.load import InitConfig, build_init, chat_format_of, count_parameters, save

    cfg, done = _load_config(InitConfig, args)
    if done:
        return 0
    check_output_dir(cfg.out, *_config_path(args), what="out")
    from t1.runtime.device import quiet_libraries

    quiet_libraries()  # transformers' "Writing model shards" bar is not ours to show
    model, tok = build_init(cfg)
    out = save(model, tok, cfg.out, files={"t1_config.yaml": cfglib.dump(cfg)})  # the config is part of the model
    print(f"wrote a {count_parameters(model) / 1e6:.2f}M-parameter model and a {len(tok)}-token tokenizer "
          f"to {out}")
    print(chat_format_of(tok, out).describe())
    return 0


def cmd_countdown(args: argparse.Namespace) -> int:
    from t1.tasks.countdown import CountdownConfig, generate, sample_failed, write_trace

    cfg, done = _load_config(CountdownConfig, args)
    if done:
        return 0
    if not 1 <= args.n <= MAX_PROBLEMS:  # the rows are built in memory: ~1 KB each
        raise cfglib.ConfigError(f"--n must be ≥ 1 and ≤ {MAX_PROBLEMS:,} (got {args.n})")
    if args.failed is not None and args.failed < 0:
        raise cfglib.ConfigError(f"--failed must be ≥ 0 (got {args.failed})")
    if args.out:
        check_output(args.out, *_config_path(args), what="--out")
    rng = random.Random(args.seed + 1)
    rows = []
    for p in generate(cfg, args.n, args.seed):
        failed = sample_failed(cfg, rng) if args.failed is None else args.failed
        rows.append({"prompt": p.prompt(), "response": write_trace(p, cfg, failed, rng), "failed": failed,
                     **p.to_dict()})
    text = "".join(json.dumps(r) + "\n" for r in rows)
    if args.out:
        atomic_write_text(Path(args.out), text)
        print(f"wrote {len(rows)} problems with traces to {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def _stage(config_ref: str, runner_ref: str, flags: tuple[str, ...] = ()):
    """A config-driven stage command: load CONFIG + overrides into ``config_ref``'s class, call the runner
    with ``progress`` and the named command-line ``flags`` (``resume``, ``dry_run``) as keyword arguments."""

    def run(args: argparse.Namespace) -> int:
        import importlib

        def obj(ref: str):
            module, name = ref.rsplit(".", 1)
            return getattr(importlib.import_module(module), name)

        cfg, done = _load_config(obj(config_ref), args)
        if done:
            return 0
        kwargs = {flag: getattr(args, flag) for flag in flags}
        obj(runner_ref)(cfg, progress=not args.quiet, **kwargs)
        return 0

    return run


cmd_sft = _stage("t1.stages.sft.SFTConfig", "t1.stages.sft.train_sft", ("resume",))
cmd_rl = _stage("t1.rl.config.RLConfig", "t1.stages.rl.train_rl", ("resume",))
cmd_filter = _stage("t1.stages.filter.FilterConfig", "t1.stages.filter.run_filter")
cmd_synth = _stage("t1.stages.synth.SynthConfig", "t1.stages.synth.run_synth", ("dry_run",))
cmd_eval = _stage("t1.stages.evaluate.EvalConfig", "t1.stages.evaluate.evaluate")
cmd_scale = _stage("t1.stages.scale.ScaleConfig", "t1.stages.scale.scale")


def cmd_prepare(args: argparse.Namespace) -> int:
    from t1.stages.prepare import PrepareConfig, prepare

    cfg, done = _load_config(PrepareConfig, args)
    if not done:
        prepare(cfg)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    if (Path(args.run_dir) / "sweep.json").exists():  # a `t1 sweep` directory
        from t1.pipelines.sweep_report import write_sweep_report

        print(f"wrote {write_sweep_report(args.run_dir)}")
        return 0
    if (Path(args.run_dir) / "summary.json").exists():
        from t1.pipelines.demo.report import write_demo_report  # a demo directory: its result and checks first

        print(f"wrote {write_demo_report(args.run_dir)}")
        return 0
    from t1.stages.report import write_report

    print(f"wrote {write_report(args.run_dir)}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from t1.pipelines.sweep import run_sweep
    from t1.pipelines.sweep_report import write_sweep_report

    result = run_sweep(args.stage, args.args, args.out, args.seeds, args.scale, progress=not args.quiet,
                       jobs=args.jobs)
    print(f"wrote {Path(result['out']) / 'sweep.json'} and {write_sweep_report(result['out'])}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from t1.pipelines.demo import DemoConfig, run_demo

    cfg, done = _load_config(DemoConfig, args)
    if done:
        return 0
    if args.out or args.seeds is not None:
        cfg = cfglib.from_dict(DemoConfig, {**cfglib.to_dict(cfg), **({"out": args.out} if args.out else {}),
                                            **({"seeds": args.seeds} if args.seeds is not None else {})})
    run_demo(cfg, progress=not args.quiet)
    return 0


def cmd_grade(args: argparse.Namespace) -> int:
    from t1.stages.grade import grade_file

    summary = grade_file(args.input, args.output, task=args.task, skip_bad=args.skip_bad, grader=args.grader,
                         workers=args.workers, timeout=args.timeout, progress=not args.quiet)
    print(summary.text(), file=sys.stderr if args.output is None else sys.stdout)
    return 0


# ------------------------------------------------------------------------------------------------- main


# (command, help, handler, extra flags) of the commands configured by CONFIG.yaml + key=value overrides
CONFIG_COMMANDS = [
    ("demo", "the whole T1 pipeline on Countdown with a tiny model, CPU, < 10 minutes", "cmd_demo",
     ("out", "quiet", "seeds")),
    ("init", "build a tiny tokenizer and model locally and save them (HF format)", "cmd_init", ()),
    ("countdown", "write Countdown problems with T1-style traces as JSON Lines", "cmd_countdown", ("countdown",)),
    ("sft", "supervised fine-tuning on (prompt, response) data; loss on responses only", "cmd_sft",
     ("resume", "quiet")),
    ("rl", "RL with the T1 recipe (oversampling, entropy bonus, dynamic-anchor KL, penalties)", "cmd_rl",
     ("resume", "quiet")),
    ("synth", "trial-and-error, self-verifying SFT data from teacher/critic/writer models", "cmd_synth",
     ("dry_run", "quiet")),
    ("prepare", "raw math sources -> gradable, de-duplicated, decontaminated RL prompts", "cmd_prepare", ()),
    ("filter", "keep prompts whose pass rate under a model lies in an interval", "cmd_filter", ("quiet",)),
    ("eval", "pass@1 ± s.e., pass@k and majority vote on benchmarks (preset=r1 | greedy: published protocols)",
     "cmd_eval", ("quiet",)),
    ("scale", "accuracy vs thinking budget for one or more models, with a plot", "cmd_scale", ("quiet",)),
]


def _add_flag(p: argparse.ArgumentParser, flag: str) -> None:
    if flag == "out":
        p.add_argument("--out", default=None,
                       help="run directory (default: runs/demo under the current directory)")
    elif flag == "seeds":
        p.add_argument("--seeds", type=int, default=None,
                       help="RL runs from the one SFT model, seeds seed..seed+N-1; checks judged on their mean "
                            "(the `seeds` field; each extra seed costs one more RL stage)")
    elif flag == "quiet":
        p.add_argument("--quiet", action="store_true", help="no progress bar")
    elif flag == "resume":
        p.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint")
    elif flag == "dry_run":
        p.add_argument("--dry-run", action="store_true",
                       help="print the prompts for the first problem; call nothing")
    elif flag == "countdown":
        p.add_argument("--n", type=int, default=5, help="how many problems")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--failed", type=int, default=None,
                       help="failed attempts per trace (default: geometric, see stop_prob)")
        p.add_argument("--out", default=None, help="output file (default: standard output)")


def _add_tool_commands(sub) -> None:
    p = sub.add_parser("report", help="a self-contained HTML report of a run (training curves, evals, scaling)")
    p.add_argument("run_dir", help="a demo, SFT or RL run directory, or a `t1 sweep` directory")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("grade", help="grade a JSON Lines file of responses against gold answers")
    p.add_argument("input", help="JSON Lines with response + answer (math) or response + numbers + target")
    p.add_argument("-o", "--output", default=None, help="write graded rows here (default: standard output)")
    p.add_argument("--task", default="math", help="math | countdown | choice, or your Task subclass as "
                                                  "package.module:Class")
    p.add_argument("--grader", choices=["default", "strict"], default="default",
                   help="math: default reads the final boxes, an answer phrase or a final expression (as "
                        "math-verify and open-r1 do); strict reads boxed answers only")
    p.add_argument("--skip-bad", action="store_true", help="skip and count bad lines instead of stopping")
    p.add_argument("--workers", type=int, default=None, help="grader processes (default: all cores)")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds allowed per answer")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_grade)


def _add_sweep_command(sub) -> None:
    from t1.pipelines.sweep import STAGES

    p = sub.add_parser("sweep", help="run a stage over the values of config fields (and seeds); compare the runs")
    p.add_argument("stage", choices=list(STAGES), metavar="STAGE", help=" | ".join(STAGES))
    p.add_argument("args", nargs="*", metavar="[CONFIG.yaml] FIELD=v1,v2[,...] [key=value ...]",
                   help="a value with top-level commas is swept (the grid is the product of swept fields); "
                        "any other, like budgets=[64,128], is a plain override")
    p.add_argument("--seeds", type=int, default=1, help="runs per value, with 0..N-1 added to the config's seed")
    p.add_argument("--out", default=None, help="sweep directory (default: runs/sweep_STAGE_FIELD)")
    p.add_argument("--scale", default=None, metavar="SCALE.yaml",
                   help="rl/sft: `t1 scale` with this config on each run's final/ (models and out replaced)")
    p.add_argument("--jobs", type=int, default=1,
                   help="runs at once, each in its own process with cores/N threads and a log file (default 1)")
    p.add_argument("--quiet", action="store_true", help="no progress bars (the per-run lines remain)")
    p.set_defaults(func=cmd_sweep)


def build_parser() -> argparse.ArgumentParser:
    """The ``t1`` parser; its commands' parsers are also in ``parser.t1_commands`` (see :func:`parse_args`)."""
    parser = argparse.ArgumentParser(
        prog="t1",
        description="Train language models to reason with RL (the T1 recipe); measure inference scaling."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    handlers = globals()
    for name, help_text, handler, flags in CONFIG_COMMANDS:
        _config_command(sub, name, help_text, handlers[handler], flags)
    _add_tool_commands(sub)
    _add_sweep_command(sub)
    parser.t1_commands = sub.choices
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """``argv`` parsed with options allowed anywhere after the command: a plain parse hands everything after
    the first positional run to the overrides, so ``t1 sft a=1 --quiet b=2`` was refused as "unrecognized
    arguments: b=2", blaming the fields when the option's place was the problem. argparse's intermixed
    parsing does not support subparsers, so the command's own parser does it on the words after the
    command; anything else (no command, ``-h``, an unknown command) goes to the top parser for its usual
    message."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in parser.t1_commands:
        return parser.parse_args(argv)
    args = parser.t1_commands[argv[0]].parse_intermixed_args(argv[1:])
    args.command = argv[0]
    return args


def _os_error(e: OSError) -> str:
    """An OSError as ``path: reason`` (``str(e)`` would be ``[Errno 28] No space left on device``, no path)."""
    if e.filename is not None and e.strerror:
        return f"{e.filename}: {e.strerror}" + (f" (to {e.filename2})" if e.filename2 is not None else "")
    return str(e) or type(e).__name__


def _config_command(sub, name: str, help_text: str, func, flags: tuple[str, ...]) -> None:
    p = sub.add_parser(name, help=help_text)
    _add_config_args(p)
    for flag in flags:
        _add_flag(p, flag)
    p.set_defaults(func=func)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        code = args.func(args)
        if "torch" in sys.modules:  # under torchrun: leave the process group before exiting (see there)
            from t1.runtime.device import end_distributed

            end_distributed(code)
        return code
    except (cfglib.ConfigError, DataError) as e:
        print(f"t1 {args.command}: error: {e}", file=sys.stderr)
        return 2
    except EngineError as e:  # a sampling server died, an engine holds stale weights: checkpoints are intact
        print(f"t1 {args.command}: error: sampling engine: {e}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print(f"t1 {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `t1 ... | head`: the reader left; not an error
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as e:  # a file that cannot be read or written (a full disk, a missing path): one line
        print(f"t1 {args.command}: error: {_os_error(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
