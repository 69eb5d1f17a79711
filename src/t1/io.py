"""Files in and out: atomic, fsynced writes; JSON Lines reading whose errors name the file and line, with a size
cap per record; text from outside (files, servers, models) made safe to write back (no lone surrogates);
outputs checked before any work (never an input, always writable)."""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class DataError(ValueError):
    """Bad input data; the message names the file and line."""


MAX_RECORD_BYTES = 8 << 20  # one JSON Lines record (a 16k-token response is ~64 KB); longer is refused unparsed
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def clean_text(text: str) -> str:
    """``text`` with every lone UTF-16 surrogate (``\\ud800`` from a JSON escape: valid JSON, not valid
    Unicode, and not writable as UTF-8) replaced by U+FFFD; anything else unchanged."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:  # a Python str holds a surrogate only unpaired: JSON pairs decode to one char
        return _SURROGATE.sub("\ufffd", text)


def clean(value: Any) -> Any:
    """:func:`clean_text` through a parsed JSON value (dicts, lists, strings)."""
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, list):
        return [clean(v) for v in value]
    if isinstance(value, dict):
        return {clean_text(k): clean(v) for k, v in value.items()}
    return value


def atomic_write_text(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` so that readers see the old file or the whole new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(clean_text(text))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_jsonl(path: Path, rows: Iterable[dict]) -> Path:
    return atomic_write_text(Path(path), "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


@dataclass(frozen=True)
class Line:
    """One parsed JSON Lines record and where it came from."""

    number: int  # 1-based line number
    data: dict


def open_input(path: str | Path, what: str = "file"):
    """``path`` opened for binary reading, or a :class:`DataError` saying why not (missing, a directory,
    unreadable) in one line."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected a {what}")
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e.strerror or e}") from None


def _records(handle, max_bytes: int):
    """(line number, raw bytes or None when the line is over ``max_bytes``) without holding a long line."""
    number = 0
    while True:
        raw = handle.readline(max_bytes + 1)
        if not raw:
            return
        number += 1
        if len(raw) > max_bytes and not raw.endswith(b"\n"):
            while raw and not raw.endswith(b"\n"):  # skip the rest of the over-long line in bounded pieces
                raw = handle.readline(1 << 20)
            yield number, None
        else:
            yield number, raw


def iter_jsonl(path: str | Path, *, skip_bad: bool = False, bad: list | None = None,
               max_bytes: int = MAX_RECORD_BYTES) -> Iterator[Line]:
    """Yield each non-blank line of a JSON Lines file as a dict (lone surrogates in its strings replaced, see
    :func:`clean_text`).

    A line that is not valid UTF-8, not JSON, not a JSON object, or longer than ``max_bytes`` raises
    :class:`DataError` naming ``path:line``; with ``skip_bad`` it is appended to ``bad`` (as
    ``(line, reason)``) and skipped instead.
    """
    path = Path(path)
    with open_input(path, "JSON Lines file") as handle:
        for number, raw in _records(handle, max_bytes):
            if raw is not None and not raw.strip():
                continue
            try:
                if raw is None:
                    raise OverflowError
                data = json.loads(raw.decode("utf-8"))
                if not isinstance(data, dict):
                    raise ValueError(f"expected a JSON object, got {type(data).__name__}")
            except OverflowError:
                limit = f"{max_bytes >> 20} MB" if max_bytes >= 1 << 20 else f"{max_bytes} bytes"
                reason = f"record longer than {limit} (the limit for one line)"
            except UnicodeDecodeError as e:
                reason = f"not valid UTF-8 (byte {e.start})"
            except ValueError as e:  # json.JSONDecodeError is a ValueError
                reason = f"not a valid JSON object: {e}"
            else:
                yield Line(number, clean(data) if _SURROGATE_ESCAPE.search(raw) else data)
                continue
            if not skip_bad:
                raise DataError(f"{path}:{number}: {reason}")
            if bad is not None:
                bad.append((number, reason))


def read_log(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a log this tool appends to (``metrics.jsonl``, ``rollouts.jsonl``): a torn last line — what a
    kill or a full disk in the middle of a write leaves — is dropped with a warning; a bad line before the last
    is an error naming it. A missing file has no rows."""
    path = Path(path)
    if not path.exists():
        return []
    lines = path.read_bytes().split(b"\n")
    rows = []
    for number, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw.decode("utf-8"))
            if not isinstance(row, dict):
                raise ValueError("not a JSON object")
        except ValueError as e:
            if any(x.strip() for x in lines[number:]):
                raise DataError(f"{path}:{number}: not a valid JSON object: {e}") from None
            print(f"t1: warning: {path}:{number}: dropped a torn last line ({len(raw)} bytes)", file=sys.stderr)
            break
        rows.append(row)
    return rows


def check_output(out: str | Path, *inputs: str | Path, what: str = "output") -> Path:
    """Before any work: ``out`` is not one of ``inputs`` (writing it would lose them) and can be written (its
    folder exists or can be made, is writable, and ``out`` is not a directory). Returns ``out`` as a Path."""
    out = Path(out)
    for src in map(Path, inputs):
        same = out.exists() and src.exists() and os.path.samefile(out, src)  # links and other spellings too
        if same or out.absolute() == src.absolute():
            raise DataError(f"{what} {out}: is also an input; writing it would overwrite that input")
    if out.is_dir():
        raise DataError(f"{what} {out}: is a directory, expected a file path")
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"{what} {out}: cannot create its folder: {e.strerror or e}") from None
    if not os.access(parent, os.W_OK):
        raise DataError(f"{what} {out}: folder {parent} is not writable")
    return out


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    return [line.data for line in iter_jsonl(path)]


def fill(template: str, **values: str) -> str:
    """Replace ``{name}`` for each given name and nothing else, so templates may contain literal braces
    (``\\boxed{}``) — unlike ``str.format``."""
    for name, value in values.items():
        template = template.replace("{" + name + "}", str(value))
    return template
