"""Files in and out: atomic writes and JSON Lines reading whose errors name the file and line."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class DataError(ValueError):
    """Bad input data; the message names the file and line."""


def atomic_write_text(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` so that readers see the old file or the whole new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
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


def iter_jsonl(path: str | Path, *, skip_bad: bool = False, bad: list | None = None) -> Iterator[Line]:
    """Yield each non-blank line of a JSON Lines file as a dict.

    A line that is not valid UTF-8, not JSON, or not a JSON object raises :class:`DataError` naming
    ``path:line``; with ``skip_bad`` it is appended to ``bad`` (as ``(line, reason)``) and skipped instead.
    """
    path = Path(path)
    try:
        handle = open(path, "rb")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    with handle:
        for number, raw in enumerate(handle, 1):
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8")
                data = json.loads(text)
                if not isinstance(data, dict):
                    raise ValueError(f"expected a JSON object, got {type(data).__name__}")
            except UnicodeDecodeError as e:
                reason = f"not valid UTF-8 (byte {e.start})"
            except ValueError as e:  # json.JSONDecodeError is a ValueError
                reason = f"not a valid JSON object: {e}"
            else:
                yield Line(number, data)
                continue
            if not skip_bad:
                raise DataError(f"{path}:{number}: {reason}")
            if bad is not None:
                bad.append((number, reason))


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    return [line.data for line in iter_jsonl(path)]


def fill(template: str, **values: str) -> str:
    """Replace ``{name}`` for each given name and nothing else, so templates may contain literal braces
    (``\\boxed{}``) — unlike ``str.format``."""
    for name, value in values.items():
        template = template.replace("{" + name + "}", str(value))
    return template
