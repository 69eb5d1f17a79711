"""Fingerprint of every number a tiny pipeline produces, to check that a refactor changed no behaviour.

Runs, through the ``t1`` command only (so it works across any internal layout): the demo with tiny settings
(SFT, direct SFT, filter, RL on the fused packed path, eval, scale), then RL again from the same SFT model on
the fused padded path (``train.fast_forward=false``) and on the two-pass path (``train.fused_update=false``,
``algo.updates_per_batch=2``, which also exercises the PPO ratio) and asynchronously (``train.max_staleness=1``).
Writes one JSON object with every metric
that is not a wall-clock time, every sampled response and every evaluation row.

    python benchmarks/fingerprint.py /tmp/before.json      # on the old code
    python benchmarks/fingerprint.py /tmp/after.json       # on the new code
    python benchmarks/fingerprint.py --compare /tmp/before.json /tmp/after.json

``--compare`` prints the first differences and exits 1 when there are any (exact equality: same seeds, same
machine, same thread count — numbers from another machine differ in the last bits).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

TINY_DEMO = ["tiny.hidden=32", "tiny.layers=2", "tiny.heads=2", "tiny.kv_heads=2", "tiny.ffn=64",
             "sft_examples=400", "filter_prompts=16", "filter_samples=2", "rl_budget=32", "rl_steps=3",
             "rl_prompts=8", "rl_samples=4", "eval_problems=24", "budgets=[8,16,32,64]"]
RL_VARIANTS = {"padded": ["train.fast_forward=false"],
               "two_pass": ["train.fused_update=false", "algo.updates_per_batch=2"],
               "async": ["train.max_staleness=1"]}  # the sampler process, one version behind
TIMING = ("time", "per_s", "wall", "elapsed", "seconds", "minutes")  # and names ending in _s (not reward_std)


def _timing(key: str) -> bool:
    return key.endswith("_s") or any(t in key for t in TIMING)


def _t1(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "t1", *args], check=True, stdout=subprocess.DEVNULL)


def _numbers(row: dict) -> dict:
    return {k: v for k, v in row.items() if not _timing(k)}


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _run_numbers(run: Path) -> dict:
    return {"metrics": [_numbers(r) for r in _jsonl(run / "metrics.jsonl")],
            "rollouts": _jsonl(run / "rollouts.jsonl")}


def fingerprint(root: Path) -> dict:
    demo = root / "demo"
    _t1("demo", *TINY_DEMO, "--out", str(demo), "--quiet")
    out = {"sft": _run_numbers(demo / "sft"), "sft_direct": _run_numbers(demo / "sft_direct"),
           "rl": _run_numbers(demo / "rl"), "filter": _jsonl(demo / "filter" / "kept.jsonl")}
    summary = json.loads((demo / "summary.json").read_text())
    out["summary"] = {k: v for k, v in summary.items() if not _timing(k)}
    for path in sorted((demo / "eval").rglob("*.jsonl")):
        out[f"eval/{path.relative_to(demo / 'eval')}"] = _jsonl(path)
    for name, overrides in RL_VARIANTS.items():
        run = root / f"rl_{name}"
        _t1("rl", str(demo / "rl" / "config.yaml"), f"out={run}", *overrides, "--quiet")
        out[f"rl_{name}"] = _run_numbers(run)
    return out


def compare(a: object, b: object, where: str = "", found: list | None = None) -> list[str]:
    found = [] if found is None else found
    if len(found) >= 20:
        return found
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                found.append(f"{where}/{k}: only in {'after' if k not in a else 'before'}")
            else:
                compare(a[k], b[k], f"{where}/{k}", found)
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            compare(x, y, f"{where}[{i}]", found)
    elif a != b and not (a != a and b != b):  # NaN equals NaN here
        found.append(f"{where}: {str(a)[:80]} != {str(b)[:80]}")
    return found


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("paths", nargs="+", help="output JSON; with --compare, two fingerprints")
    p.add_argument("--compare", action="store_true")
    args = p.parse_args()
    if args.compare:
        before, after = (json.loads(Path(x).read_text()) for x in args.paths)
        diffs = compare(before, after)
        print("\n".join(diffs) if diffs else f"identical: {len(json.dumps(before)):,} characters of numbers")
        return 1 if diffs else 0
    with tempfile.TemporaryDirectory() as tmp:
        Path(args.paths[0]).write_text(json.dumps(fingerprint(Path(tmp)), sort_keys=True))
    print(f"wrote {args.paths[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
