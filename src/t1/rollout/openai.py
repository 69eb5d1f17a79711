"""An engine that samples from an OpenAI-compatible ``/v1/completions`` server (SGLang, vLLM, hosted APIs).

Each sample is one request (``n=1``) carrying its own ``seed``, so samples stay reproducible per seed where
the server honours seeds. Prompts go as token ids (SGLang and vLLM accept them), so the server sees exactly
what the trainer would. Token ids of the response come back where the server offers them (vLLM's
``return_tokens_as_token_ids``); otherwise the text is re-tokenized. ``finish_reason == "stop"`` means the
sample ended by itself; an end-of-sequence token is then appended so training also learns to stop.

Requests run ``concurrency`` at a time; 429, 5xx, connection errors and time-outs are retried with
exponential backoff (honouring ``Retry-After``) up to ``max_retries`` times; a malformed reply raises
:class:`ServerError` naming the request.
"""

from __future__ import annotations

import json
import random
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from t1.rollout.base import EngineError, Sample, SamplingParams
from t1.rollout.config import OpenAIConfig


class ServerError(EngineError):
    """The server failed after all retries, or replied with something that is not a completion."""


def post_json(url: str, payload: dict, *, api_key: str | None, timeout: float, max_retries: int,
              backoff: float = 0.5) -> dict:
    """POST JSON with retries on 429 / 5xx / connection errors / time-outs; returns the parsed reply."""
    data = json.dumps(payload).encode()
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    last = ""
    for attempt in range(max_retries + 1):
        wait = backoff * (2 ** attempt) * (0.5 + random.random())
        try:
            req = urllib.request.Request(url, data=data, headers=headers, method="POST")
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                body = resp.read()
            try:
                return json.loads(body)
            except ValueError:
                raise ServerError(f"{url}: reply is not JSON: {body[:200]!r}") from None
        except urllib.error.HTTPError as e:
            last = f"HTTP {e.code}: {e.read()[:200]!r}"
            if e.code != 429 and e.code < 500:
                raise ServerError(f"{url}: {last}") from None
            retry_after = e.headers.get("Retry-After") if e.headers else None
            if retry_after:
                try:
                    wait = max(wait, float(retry_after))
                except ValueError:
                    pass
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
            last = f"{type(e).__name__}: {e}"
        if attempt < max_retries:
            time.sleep(min(wait, 60.0))
    raise ServerError(f"{url}: gave up after {max_retries + 1} attempts ({last})")


class OpenAIEngine:
    shares_weights = False  # and no push_weights: never for RL (RolloutConfig refuses it)

    def __init__(self, tokenizer, cfg=None, base_url: str | None = None, model: str | None = None):
        self.cfg = cfg or OpenAIConfig()
        self.url = (base_url or self.cfg.base_url).rstrip("/") + "/completions"
        self.model_name = model or self.cfg.model
        self.api_key = self.cfg.api_key()
        self.tokenizer = tokenizer
        self.eos = tokenizer.eos_token_id

    def _one(self, prompt: list[int], seed: int, params: SamplingParams) -> Sample:
        payload = {"model": self.model_name, "prompt": prompt, "n": 1, "max_tokens": params.max_new_tokens,
                   "temperature": params.temperature, "top_p": params.top_p, "seed": seed % (1 << 31),
                   "logprobs": 1, "return_tokens_as_token_ids": True}
        reply = post_json(self.url, payload, api_key=self.api_key, timeout=self.cfg.timeout,
                          max_retries=self.cfg.max_retries)
        try:
            choice = reply["choices"][0]
            text = choice["text"]
            finished = choice.get("finish_reason") == "stop"
            lp = choice.get("logprobs") or {}
        except (KeyError, IndexError, TypeError):
            raise ServerError(f"{self.url}: malformed completion reply: {str(reply)[:200]}") from None
        if not isinstance(text, str):
            raise ServerError(f"{self.url}: completion text is not a string: {str(reply)[:200]}")
        tokens = lp.get("tokens") if isinstance(lp, dict) else None
        if tokens and all(isinstance(t, str) and t.startswith("token_id:") for t in tokens):
            ids = [int(t.split(":", 1)[1]) for t in tokens]
            logprobs = lp.get("token_logprobs")
        else:
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            logprobs = None
        if finished and (not ids or ids[-1] != self.eos):
            ids = ids + [self.eos]
            logprobs = None if logprobs is None else list(logprobs) + [0.0]
        return Sample(ids, text, finished, logprobs)

    def generate(self, prompts: list[list[int]], seeds: list[int], params: SamplingParams) -> list[Sample]:
        with ThreadPoolExecutor(max_workers=self.cfg.concurrency) as pool:
            return list(pool.map(lambda a: self._one(a[0], a[1], params), zip(prompts, seeds)))
