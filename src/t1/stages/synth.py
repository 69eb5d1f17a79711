"""`t1 synth`: trial-and-error, self-verifying SFT data from problems with gold answers, as T1 builds it.

Per problem: N attempts from each teacher model; each graded against the gold answer (math-verify, time
bounded); a critic model critiques each attempt (wrong: where and why; right: a verification); a writer
model merges problem, attempts and critiques into one solution Attempt → Reflect → … → Answer →
Self-verify, then rewrites it in one natural voice. Kept only when its final answer grades correct and,
whenever a wrong attempt existed, it contains a reflection (a word such as "wait", "mistake", "wrong",
"incorrect", "error", "re-check", "reconsider" or "let me"); every rejection is counted by reason.

Models are OpenAI-compatible chat endpoints (SGLang, vLLM, hosted APIs); prompts are the editable files in
``t1/data/synth_prompts/`` (or ``prompts_dir``). Calls run ``concurrency`` problems at a time, retry on
429 / 5xx / time-outs / malformed replies with backoff, and go through an append-only cache keyed by the
exact request, so an interrupted run resumes without paying for any call twice (and identical requests —
say, critiques of two identical attempts — are made once). Output rows have
``prompt`` and ``response`` and feed ``t1 sft data.source=jsonl`` directly.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from t1.config import option, require
from t1.data import DATA_DIR
from t1.io import DataError, atomic_write_text, check_output, clean_text, fill, iter_jsonl
from t1.rollout.base import check_tokens
from t1.rollout.config import ServerAddress, check_client
from t1.rollout.openai import MalformedReply, ServerError, post_json, reply_limit
from t1.tasks.math import MathGrader

PROMPTS = DATA_DIR / "synth_prompts"
MAX_ATTEMPTS = 64  # attempts per teacher: all of them, with critiques, go into one merge prompt
CHARS_PER_TOKEN = 32  # a reply's text may hold this many characters per max_tokens (+ 256): English averages ~4,
# whitespace-heavy code ~8; more is a server that ignores max_tokens (its reply would go into the SFT data)
REFLECTION = re.compile(r"\b(wait|mistake|wrong|incorrect|error|re-?check|reconsider|let me)\b", re.I)


@dataclass(frozen=True)
class Endpoint(ServerAddress):
    """A chat model: where it is served (:class:`t1.rollout.config.ServerAddress`) and how to sample it."""

    temperature: float = option(0.7, "sampling temperature")
    max_tokens: int = option(4096, "longest reply (≤ 1,048,576); a reply far longer is refused (t1.stages.synth)")

    def validate(self) -> None:
        super().validate()
        require(self.temperature >= 0, "temperature", "must be ≥ 0", self.temperature)
        check_tokens(self.max_tokens, "max_tokens")


@dataclass(frozen=True)
class SynthConfig:
    inputs: tuple[str, ...] = option((), "JSON Lines with problems and gold answers")
    out: str = option("runs/synth/sft.jsonl", "output JSON Lines (prompt, response, answer, …)")
    problem_field: str = option("problem", "field with the problem")
    answer_field: str = option("answer", "field with the gold answer")
    teachers: tuple[Endpoint, ...] = option(help="models that attempt the problems", factory=lambda: (Endpoint(),))
    attempts_per_teacher: int = option(2, f"attempts sampled from each teacher (≤ {MAX_ATTEMPTS})")
    critic: Endpoint = option(help="the model that critiques attempts", factory=lambda: Endpoint(temperature=0.0))
    writer: Endpoint = option(help="the model that merges and rewrites", factory=lambda: Endpoint(temperature=0.0))
    prompts_dir: str | None = option(None, "directory overriding attempt/critique/merge/rewrite .txt prompts")
    concurrency: int = option(8, "problems in flight")
    max_retries: int = option(5, "retries per call on 429 / 5xx / time-outs / malformed replies")
    timeout: float = option(300.0, "seconds per call, all of it (connecting, waiting, reading the reply)")
    cache: str | None = option(None, "request cache (default: next to out, .cache.jsonl)")
    grader_timeout: float = option(5.0, "seconds per answer check")
    limit: int = option(0, "only the first N problems (0 = all)")

    def validate(self) -> None:
        require(len(self.inputs) > 0, "inputs", "give at least one file", self.inputs)
        require(len(self.teachers) > 0, "teachers", "give at least one teacher", self.teachers)
        require(1 <= self.attempts_per_teacher <= MAX_ATTEMPTS, "attempts_per_teacher",
                f"must be ≥ 1 and ≤ {MAX_ATTEMPTS} (the writer reads every attempt in one prompt)",
                self.attempts_per_teacher)
        check_client(self.timeout, self.max_retries, self.concurrency)
        require(math.isfinite(self.grader_timeout) and self.grader_timeout > 0, "grader_timeout",
                "must be a finite number of seconds > 0", self.grader_timeout)
        require(self.limit >= 0, "limit", "must be ≥ 0 (0 = all)", self.limit)


class Cache:
    """Append-only JSON Lines of {key, reply}. Read tolerantly: a torn line (killed mid-write) is ignored, and
    so is anything else that is not a {key, reply} record; replies are cleaned (a cache written before replies
    were cleaned may hold lone surrogates). An append after a torn last line starts on a line of its own."""

    def __init__(self, path: Path):
        self.path, self.lock, self.data = path, threading.Lock(), {}
        raw = path.read_bytes() if path.is_file() else b""
        for line in raw.decode("utf-8", errors="replace").splitlines():
            try:
                row = json.loads(line)
                key, reply = row["key"], row["reply"]
            except (ValueError, KeyError, TypeError, IndexError, RecursionError):
                continue
            if isinstance(key, str) and isinstance(reply, str):
                self.data[key] = clean_text(reply)
        self.torn = bool(raw) and not raw.endswith(b"\n")
        path.parent.mkdir(parents=True, exist_ok=True)

    def get(self, key: str) -> str | None:
        return self.data.get(key)

    def put(self, key: str, reply: str) -> None:
        with self.lock:
            self.data[key] = reply
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(("\n" if self.torn else "") + json.dumps({"key": key, "reply": reply}) + "\n")
            self.torn = False


class Client:
    def __init__(self, cfg: SynthConfig, cache: Cache):
        self.cfg, self.cache = cfg, cache
        self.calls = Counter()

    def chat(self, ep: Endpoint, content: str, sample: int = 0) -> str:
        payload = {"model": ep.model, "messages": [{"role": "user", "content": content}],
                   "temperature": ep.temperature, "max_tokens": ep.max_tokens}
        key = hashlib.sha256(json.dumps([ep.base_url, payload, sample], sort_keys=True).encode()).hexdigest()
        hit = self.cache.get(key)
        if hit is not None and fits(hit, ep.max_tokens):  # a reply cached before replies were bounded: asked again
            self.calls["cached"] += 1
            return hit
        url = ep.base_url.rstrip("/") + "/chat/completions"
        last = ""
        for attempt in range(self.cfg.max_retries + 1):
            try:
                reply = post_json(url, {**payload, "seed": sample}, api_key=ep.api_key(), timeout=self.cfg.timeout,
                                  max_retries=self.cfg.max_retries, max_bytes=reply_limit(ep.max_tokens))
                text = reply["choices"][0]["message"]["content"]  # cleaned by post_json
                if not isinstance(text, str):
                    raise TypeError("content is not a string")
                if not fits(text, ep.max_tokens):  # not retried: such a server does it again
                    raise ServerError(f"{url}: reply of {len(text):,} characters for max_tokens={ep.max_tokens:,} "
                                      f"(more than {text_chars(ep.max_tokens):,}): the server ignores max_tokens")
            except (KeyError, IndexError, TypeError) as e:
                last = f"malformed reply ({type(e).__name__})"
            except MalformedReply:  # not a JSON object: retried here (post_json retries only the network)
                last = "reply is not a JSON object"
            else:
                self.calls["made"] += 1
                self.cache.put(key, text)
                return text
            time.sleep(min(30.0, 0.2 * 2 ** attempt))
        raise ServerError(f"{url}: {last} after {self.cfg.max_retries + 1} attempts")


def text_chars(max_tokens: int) -> int:
    """The most characters a reply to ``max_tokens`` may hold (no tokenizer here: :data:`CHARS_PER_TOKEN`)."""
    return CHARS_PER_TOKEN * max_tokens + 256


def fits(text: str, max_tokens: int) -> bool:
    return len(text) <= text_chars(max_tokens)


def load_prompts(prompts_dir: str | None) -> dict[str, str]:
    out = {}
    for name in ("attempt", "critique", "merge", "rewrite"):
        custom = Path(prompts_dir) / f"{name}.txt" if prompts_dir else None
        out[name] = (custom if custom and custom.exists() else PROMPTS / f"{name}.txt").read_text(encoding="utf-8")
    return out


def synthesize_one(problem: str, answer: str, cfg: SynthConfig, client: Client, prompts: dict,
                   grade) -> tuple[dict | None, str]:
    """(row, "kept") or (None, rejection reason)."""
    attempts = []
    for t, teacher in enumerate(cfg.teachers):
        for k in range(cfg.attempts_per_teacher):
            text = client.chat(teacher, fill(prompts["attempt"], problem=problem), sample=t * 1000 + k)
            attempts.append(text)
    verdicts = grade(attempts, [answer] * len(attempts))
    critiques = [client.chat(cfg.critic, fill(prompts["critique"],
        problem=problem, answer=answer, attempt=a, verdict="correct" if ok else "incorrect"))
        for a, ok in zip(attempts, verdicts)]
    blocks = "\n\n".join(f"Attempt {i + 1} ({'correct' if ok else 'incorrect'}):\n{a}\n\nCritique {i + 1}:\n{c}"
                         for i, (a, ok, c) in enumerate(zip(attempts, verdicts, critiques)))
    merged = client.chat(cfg.writer, fill(prompts["merge"], problem=problem, answer=answer,
                                                              attempts_and_critiques=blocks))
    final = client.chat(cfg.writer, fill(prompts["rewrite"], solution=merged))
    if not grade([final], [answer])[0]:
        return None, "final answer wrong"
    wrong = sum(not ok for ok in verdicts)
    if wrong and not REFLECTION.search(final):
        return None, "no reflection despite a wrong attempt"
    return {"prompt": problem, "response": final, "answer": answer, "attempts": len(attempts),
            "wrong_attempts": wrong}, "kept"


def run_synth(cfg: SynthConfig, dry_run: bool = False, progress: bool = True) -> dict:
    problems = []
    for path in cfg.inputs:
        for line in iter_jsonl(path):
            for name in (cfg.problem_field, cfg.answer_field):
                if name not in line.data:
                    raise DataError(f"{path}:{line.number}: missing field '{name}'")
            problems.append((str(line.data.get("id", f"{path}:{line.number}")), str(line.data[cfg.problem_field]),
                             str(line.data[cfg.answer_field])))
    if cfg.limit:
        problems = problems[: cfg.limit]
    prompts = load_prompts(cfg.prompts_dir)
    if dry_run:
        if not problems:
            raise DataError(f"{', '.join(cfg.inputs)}: no problems to show")
        pid, problem, answer = problems[0]
        demo_blocks = "Attempt 1 (incorrect):\n<attempt text>\n\nCritique 1:\n<critique text>"
        for name, text in (("attempt", fill(prompts["attempt"], problem=problem)),
                           ("critique", fill(prompts["critique"], problem=problem, answer=answer,
                                                                   attempt="<attempt text>", verdict="incorrect")),
                           ("merge", fill(prompts["merge"], problem=problem, answer=answer,
                                                             attempts_and_critiques=demo_blocks)),
                           ("rewrite", fill(prompts["rewrite"], solution="<merged solution>"))):
            print(f"──── {name} prompt ({pid}) ────\n{text}")
        return {"dry_run": True, "problems": len(problems)}


    out = check_output(cfg.out, *cfg.inputs)  # before any call: never an input, writable
    cache_path = check_output(cfg.cache or out.with_suffix(".cache.jsonl"), out, *cfg.inputs, what="cache")
    check_output(out.with_suffix(".report.json"), out, cache_path, *cfg.inputs, what="report")
    cache = Cache(cache_path)
    client = Client(cfg, cache)
    grader, grade_lock = MathGrader(timeout=cfg.grader_timeout), threading.Lock()

    def grade(responses, golds):
        with grade_lock:  # one pool, many threads
            return [g.correct for g in grader.grade(responses, golds)]

    results: dict[int, dict] = {}
    reasons = Counter()
    bar = tqdm(total=len(problems), desc="synth", unit="problem", file=sys.stderr, disable=not progress)
    try:
        with ThreadPoolExecutor(max_workers=cfg.concurrency) as pool:
            futures = {pool.submit(synthesize_one, p, a, cfg, client, prompts, grade): i
                       for i, (_, p, a) in enumerate(problems)}
            for fut in as_completed(futures):
                i = futures[fut]
                try:
                    row, why = fut.result()
                except ServerError as e:
                    row, why = None, f"api error: {str(e)[:80]}"
                reasons[why] += 1
                if row is not None:
                    results[i] = {"id": problems[i][0], **row}
                bar.update()
                bar.set_postfix(kept=reasons["kept"], rejected=sum(reasons.values()) - reasons["kept"])
    finally:
        bar.close()
        grader.close()
    rows = [results[i] for i in sorted(results)]
    atomic_write_text(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    report = {"problems": len(problems), "kept": reasons.pop("kept", 0), "rejected": dict(reasons),
              "calls_made": client.calls["made"], "calls_from_cache": client.calls["cached"]}
    atomic_write_text(out.with_suffix(".report.json"), json.dumps(report, indent=2))
    print(f"synth: kept {report['kept']} of {len(problems)} | rejected {dict(reasons)} | calls made "
          f"{report['calls_made']}, from cache {report['calls_from_cache']} | wrote {out}", file=sys.stderr)
    return report
