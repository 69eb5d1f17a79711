"""An engine that samples from an OpenAI-compatible ``/v1/completions`` server (SGLang, vLLM, hosted APIs), and
the one HTTP client every server call in t1 goes through (:func:`post_json`, :func:`get_json`).

Each sample is one request (``n=1``) carrying its own ``seed``, so samples stay reproducible per seed where
the server honours seeds. Prompts go as token ids (SGLang and vLLM accept them), so the server sees exactly
what the trainer would. Token ids of the response come back where the server offers them (vLLM's
``return_tokens_as_token_ids``), checked (:func:`token_ids`); otherwise the text is re-tokenized.
``finish_reason == "stop"`` means the sample ended by itself; an end-of-sequence token is then appended so
training also learns to stop.

Requests run ``concurrency`` at a time; 429, 5xx, connection errors and time-outs are retried with
exponential backoff (honouring ``Retry-After``) up to ``max_retries`` times; a malformed reply raises
:class:`ServerError` naming the request. The client's guarantees:

* ``timeout`` bounds a whole attempt — connecting, sending, the headers and the body — not each socket read
  (a server sending a byte a second cannot stretch it);
* a reply is read in chunks and refused beyond what was asked (:func:`reply_limit`: n × max_tokens ×
  :data:`REPLY_BYTES_PER_TOKEN` + :data:`MIN_REPLY_BYTES`; a 16-token request takes ≤ 68 KB), or beyond
  :data:`MAX_REPLY_BYTES` for a call that asks for no tokens (model lists, weight routes);
* a completion's text may not re-tokenize to more than 2 × max_tokens + 16 tokens (:func:`check_text`):
  a server that ignores ``max_tokens`` is refused, not trusted (see there why not cut);
* every log-prob is checked (:func:`t1.rollout.base.check_logprobs`: finite, ≤ 0) and a deeply nested reply
  is a :class:`MalformedReply`, never a RecursionError;
* redirects are never followed (a redirect would carry the API key to another host): the error names the
  new address;
* the API key never appears in an error message (replaced by ``***``: :func:`scrubbed`);
* replies are cleaned at the boundary: a lone surrogate (``"\\ud800"``, valid JSON, not valid Unicode) becomes
  U+FFFD before anything caches, writes or tokenizes it.
"""

from __future__ import annotations

import http.client
import io
import json
import math
import random
import re
import time
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from t1.io import clean
from t1.rollout.base import EngineError, Sample, SamplingParams, check_logprobs, finish, shown
from t1.rollout.config import OpenAIConfig

MAX_REPLY_BYTES = 4 << 20  # a reply to a call that asks for no tokens (vLLM's /server_info: ~20 KB)
REPLY_BYTES_PER_TOKEN = 256  # a completion's reply per requested token (n samples × max_tokens): a token's text,
# its "token_id:N", its log-prob and top log-prob take ~100 bytes in JSON, \uXXXX escapes included
MIN_REPLY_BYTES = 64 << 10  # ...plus this (ids, usage, headers of the JSON): a 16-token request takes ≤ 68 KB
TEXT_TOKEN_SLACK = (2, 16)  # a completion's text may re-tokenize to 2 × max_tokens + 16 (tokenizers differ)
ERROR_BODY_BYTES = 1 << 16  # of an error reply, only this much is read (its first 200 bytes are shown)
_CHUNK = 1 << 16
LIMIT_SOURCE = "(t1.rollout.openai: MAX_REPLY_BYTES, or reply_limit for n × max_tokens requested)"
_TOKEN_ID = re.compile(r"token_id:(-?[0-9]{1,18})")


class ServerError(EngineError):
    """The server failed after all retries, or replied with something that is not a completion. ``status``:
    the HTTP status that ended it, when one did."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class MalformedReply(ServerError):
    """The server answered 2xx with something that is not a JSON object."""


def reply_limit(tokens: int) -> int:
    """The largest reply accepted for a request of ``tokens`` new tokens in all (n × max_tokens): proportional
    to what was asked, so a server cannot fill memory with a 20 MB answer to a 16-token question."""
    return MIN_REPLY_BYTES + tokens * REPLY_BYTES_PER_TOKEN


def text_limit(max_tokens: int) -> int:
    """The most tokens a completion's text may re-tokenize to for ``max_tokens`` asked: ids from another
    tokenization of the same text differ a little (merges at the edges, normalisation), never by 2×."""
    factor, extra = TEXT_TOKEN_SLACK
    return factor * max_tokens + extra


# ------------------------------------------------------------------------------------------------ HTTP


def post_json(url: str, payload: dict, *, api_key: str | None, timeout: float, max_retries: int,
              backoff: float = 0.5, max_bytes: int = MAX_REPLY_BYTES) -> dict:
    """POST JSON with retries on 429 / 5xx / connection errors / time-outs; returns the parsed, cleaned reply
    (a JSON object). ``timeout`` bounds each attempt as a whole. Everything else (4xx, a redirect, a reply
    over ``max_bytes``, a reply that is not a JSON object) raises :class:`ServerError` at once."""
    return scrubbed(api_key, _call, "POST", url, json.dumps(payload).encode(), api_key, timeout, max_retries,
                    backoff, max_bytes)


def get_json(url: str, *, api_key: str | None, timeout: float, max_bytes: int = MAX_REPLY_BYTES) -> dict:
    """GET a JSON object in one attempt (a dead server fails at once), with :func:`post_json`'s guarantees."""
    return scrubbed(api_key, _call, "GET", url, None, api_key, timeout, 0, 0.0, max_bytes)


def scrubbed(api_key: str | None, fn, *args):
    """``fn(*args)``, its :class:`ServerError` re-raised with the key replaced by ``***``: every error of the
    client passes here (bodies echoing the key, a ``Location`` holding it, a rejected header), and so does
    the engines' reading of a reply. Replies themselves are never altered."""
    try:
        return fn(*args)
    except ServerError as e:
        text = str(e).replace(api_key, "***") if api_key else str(e)
        raise type(e)(text, e.status) from None


def _call(method: str, url: str, data: bytes | None, api_key: str | None, timeout: float, max_retries: int,
          backoff: float, max_bytes: int) -> dict:
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    last = ""
    for attempt in range(max_retries + 1):
        wait = backoff * (2 ** attempt) * (0.5 + random.random())
        try:
            status, reply_headers, body = _attempt(method, url, data, headers, timeout, max_bytes)
        except (OSError, http.client.HTTPException) as e:  # time-outs, refused or reset connections, TLS
            last = f"{type(e).__name__}: {e}"
        except ValueError as e:  # http.client refuses the URL or a header (e.g. a key holding a newline)
            raise ServerError(f"{url}: cannot send the request: {e}") from None
        else:  # what messages show of the body: the key replaced before the body is cut short
            shown = body.replace(api_key.encode("utf-8", "replace"), b"***") if api_key else body
            if 200 <= status < 300:
                return _parse(url, body, shown)
            last = f"HTTP {status}: {shown[:200]!r}"
            if 300 <= status < 400:
                raise ServerError(f"{url}: redirected (HTTP {status}) to {reply_headers.get('Location')}; "
                                  "redirects are not followed (they would carry the API key): set the URL to "
                                  "the final address", status)
            if status != 429 and status < 500:
                raise ServerError(f"{url}: {last}", status)
            wait = max(wait, _retry_after(reply_headers.get("Retry-After")))
        if attempt < max_retries:
            time.sleep(min(wait, 60.0))
    raise ServerError(f"{url}: gave up after {max_retries + 1} attempts ({last})")


def _retry_after(value: str | None) -> float:
    try:
        seconds = float(value) if value else 0.0
    except ValueError:  # an HTTP date: ignored
        return 0.0
    return seconds if math.isfinite(seconds) and seconds > 0 else 0.0


def _parse(url: str, body: bytes, shown: bytes) -> dict:
    try:  # bytes that are not UTF-8 become U+FFFD, lone surrogates too (clean)
        reply = clean(json.loads(body.decode("utf-8", errors="replace")))
    except RecursionError:  # nested deeper than the parser (or clean) can follow
        raise MalformedReply(f"{url}: reply is not JSON this client can read (nested too deeply): "
                             f"{shown[:200]!r}") from None
    except ValueError:  # not JSON, or a number too long to convert
        raise MalformedReply(f"{url}: reply is not JSON: {shown[:200]!r}") from None
    if not isinstance(reply, dict):
        raise MalformedReply(f"{url}: reply is not a JSON object: {shown[:200]!r}")
    return reply


def _attempt(method: str, url: str, data: bytes | None, headers: dict, timeout: float,
             max_bytes: int) -> tuple[int, http.client.HTTPMessage, bytes]:
    """One request, over by ``timeout`` seconds from now whatever the server does: (status, headers, body).
    A 2xx body over ``max_bytes`` is refused; of another, the first :data:`ERROR_BODY_BYTES` are kept."""
    deadline = time.monotonic() + timeout
    conn, target = _connection(url, timeout)
    try:
        conn.connect()  # bounded by the connection's time-out (a TLS handshake and a proxy tunnel too)
        raw = conn.sock
        conn.sock = _Deadline(raw, deadline)
        try:
            conn.request(method, target, body=data, headers=headers)
            resp = conn.getresponse()
            ok = 200 <= resp.status < 300
            limit = max_bytes if ok else ERROR_BODY_BYTES
            length = resp.getheader("Content-Length", "")
            if ok and length.isdigit() and int(length) > max_bytes:
                raise ServerError(f"{url}: reply of {length} bytes refused: over the limit of {max_bytes} bytes "
                                  f"{LIMIT_SOURCE}")
            body = bytearray()
            while chunk := resp.read(min(_CHUNK, limit + 1 - len(body))):
                body += chunk
                if len(body) > limit:
                    if ok:
                        raise ServerError(f"{url}: reply refused: over the limit of {max_bytes} bytes "
                                          f"{LIMIT_SOURCE}")
                    del body[limit:]
                    break
            return resp.status, resp.headers, bytes(body)
        finally:
            raw.close()
    finally:
        conn.close()


def _connection(url: str, timeout: float) -> tuple[http.client.HTTPConnection, str]:
    """(an unconnected connection, the request target) for ``url``, through the environment's proxy if any."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ServerError(f"{url}: not an http:// or https:// URL")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    https = parts.scheme == "https"
    cls = http.client.HTTPSConnection if https else http.client.HTTPConnection
    proxy = urllib.request.getproxies().get(parts.scheme)
    if not proxy or urllib.request.proxy_bypass(parts.hostname):
        return cls(parts.hostname, parts.port, timeout=timeout), target
    p = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    if https:  # a CONNECT tunnel through the proxy, TLS to the server
        conn = cls(p.hostname, p.port or 80, timeout=timeout)
        conn.set_tunnel(parts.hostname, parts.port or 443)
        return conn, target
    return cls(p.hostname, p.port or 80, timeout=timeout), url  # a plain proxy takes the absolute URL


class _Deadline:
    """A connected socket as http.client uses it (``sendall``, ``makefile``, ``close``) whose every read and
    write ends by ``deadline``: the socket's time-out is set to the time left before each one."""

    def __init__(self, sock, deadline: float):
        self.sock, self.deadline = sock, deadline

    def _arm(self) -> None:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("timed out (the request's time-out is for the whole reply)")
        self.sock.settimeout(left)

    def sendall(self, data) -> None:
        self._arm()
        self.sock.sendall(data)

    def recv_into(self, buffer, nbytes: int = 0) -> int:
        self._arm()
        return self.sock.recv_into(buffer, nbytes)

    def makefile(self, mode: str = "rb", *args, **kwargs):
        return io.BufferedReader(_Reader(self))

    def close(self) -> None:  # the socket is closed by _attempt, once the reply has been read
        pass


class _Reader(io.RawIOBase):
    def __init__(self, sock: _Deadline):
        super().__init__()
        self.sock = sock

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        return self.sock.recv_into(buffer)


# ---------------------------------------------------------------------------------------------- tokens


def token_ids(url: str, tokens, vocab_size: int, max_tokens: int) -> list[int]:
    """The ids of vLLM's ``token_id:N`` strings, each checked: an integer in [0, ``vocab_size``), at most
    ``max_tokens`` of them; else a :class:`ServerError` naming ``url`` and the bad token (an id the trainer
    cannot index would fail much later, far from its cause)."""
    if not isinstance(tokens, list):
        raise ServerError(f"{url}: logprobs.tokens is not a list: {shown(tokens)}")
    if len(tokens) > max_tokens:
        raise ServerError(f"{url}: returned {len(tokens)} tokens, more than max_tokens={max_tokens}")
    ids = []
    for t in tokens:
        m = _TOKEN_ID.fullmatch(t) if isinstance(t, str) else None
        if m is None:
            raise ServerError(f"{url}: token {shown(t, 100)!r} is not token_id:<integer>")
        i = int(m.group(1))
        if not 0 <= i < vocab_size:
            raise ServerError(f"{url}: token id {i} is outside the vocabulary (0..{vocab_size - 1})")
        ids.append(i)
    return ids


def token_logprobs(url: str, values, n: int) -> list[float]:
    """``n`` log-probs, each finite and ≤ 0 (:func:`t1.rollout.base.check_logprobs`); else a :class:`ServerError`
    naming ``url`` and the value."""
    return check_logprobs(url, values, n, ServerError)


def check_text(url: str, n_tokens: int, max_tokens: int) -> None:
    """Refuse a completion whose text re-tokenizes to more than :func:`text_limit` tokens. Refused, not cut to
    ``max_tokens``: a server that ignores ``max_tokens`` is not sampling what was asked (its finish_reason and
    its text cannot be trusted either), and a cut would grade or train on text the model did not end there."""
    if n_tokens > text_limit(max_tokens):
        raise ServerError(f"{url}: completion text of {n_tokens:,} tokens for max_tokens={max_tokens:,} (more "
                          f"than {text_limit(max_tokens):,} = 2 × max_tokens + 16): the server ignores max_tokens")


# ---------------------------------------------------------------------------------------------- engine


class OpenAIEngine:
    shares_weights = False  # and no push_weights: never for RL (RolloutConfig refuses it)

    def __init__(self, tokenizer, cfg=None, base_url: str | None = None, model: str | None = None,
                 vocab_size: int = 0):
        self.cfg = cfg or OpenAIConfig()
        self.url = (base_url or self.cfg.base_url).rstrip("/") + "/completions"
        self.model_name = model or self.cfg.model
        self.api_key = self.cfg.api_key()
        self.tokenizer = tokenizer
        self.eos = tokenizer.eos_token_id
        self.vocab_size = vocab_size or len(tokenizer)  # ids a reply may hold: the model's embedding rows

    def _one(self, prompt: list[int], seed: int, params: SamplingParams) -> Sample:
        payload = {"model": self.model_name, "prompt": prompt, "n": 1, "max_tokens": params.max_new_tokens,
                   "temperature": params.temperature, "top_p": params.top_p, "seed": seed % (1 << 31),
                   "logprobs": 1, "return_tokens_as_token_ids": True,
                   "stop_token_ids": list(params.stops(self.eos))}
        reply = post_json(self.url, payload, api_key=self.api_key, timeout=self.cfg.timeout,
                          max_retries=self.cfg.max_retries, max_bytes=reply_limit(params.max_new_tokens))
        return scrubbed(self.api_key, self._sample, reply, params)

    def _sample(self, reply: dict, params: SamplingParams) -> Sample:
        try:
            choice = reply["choices"][0]
            text = choice["text"]
            finished = choice.get("finish_reason") == "stop"
            lp = choice.get("logprobs") or {}
        except (KeyError, IndexError, TypeError, AttributeError, RecursionError):
            raise ServerError(f"{self.url}: malformed completion reply: {shown(reply)}") from None
        if not isinstance(text, str):
            raise ServerError(f"{self.url}: completion text is not a string: {shown(reply)}")
        retokenized = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        check_text(self.url, len(retokenized), params.max_new_tokens)  # the text is graded even beside ids
        tokens = lp.get("tokens") if isinstance(lp, dict) else None
        if tokens and isinstance(tokens, list) and all(isinstance(t, str) and t.startswith("token_id:")
                                                       for t in tokens):
            ids = token_ids(self.url, tokens, self.vocab_size, params.max_new_tokens)
            values = lp.get("token_logprobs")
            logprobs = None if values is None else token_logprobs(self.url, values, len(ids))
        else:
            ids, logprobs = retokenized, None
        stops = params.stops(self.eos)
        cut = any(t in stops for t in ids)  # the server ran past a stop id: its turn ends there
        ids, logprobs, finished = finish(ids, logprobs, finished, stops)
        if cut:
            text = self.tokenizer.decode(ids[:-1], skip_special_tokens=True)
        return Sample(ids, text, finished, logprobs)

    def generate(self, prompts: list[list[int]], seeds: list[int], params: SamplingParams) -> list[Sample]:
        with ThreadPoolExecutor(max_workers=self.cfg.concurrency) as pool:
            return list(pool.map(lambda a: self._one(a[0], a[1], params), zip(prompts, seeds)))
