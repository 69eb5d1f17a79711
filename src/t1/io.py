"""Files in and out: atomic, fsynced writes (mode ``0666 & ~umask``, as any other program's files); JSON Lines
reading whose errors name the file and line, with a size cap per record and no nesting limit to crash on; text
from outside (files, servers, models) made safe to write back (no lone surrogates); outputs checked before any
work (never an input, never a directory in place of a file or the reverse, writable, with room to write)."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class DataError(ValueError):
    """Bad input data; the message names the file and line."""


TOO_DEEP = "nested too deeply"
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


def umask() -> int:
    """The process's umask, read without changing it where Linux tells it (``/proc/self/status``); elsewhere
    set and restored at once (a thread creating a file in between would get 0o022; nothing here does)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def _as_output_error(e: OSError, path: Path) -> OSError:
    """``e`` naming ``path``: a write that fails (a full disk) says only ``No space left on device``, and the
    temporary it hit is not a name the user knows."""
    return OSError(e.errno, e.strerror, str(path)) if e.errno is not None else e


def _write_temp(path: Path, text: str) -> Path:
    """``text`` in a fsynced temporary beside ``path`` (same folder, so the rename into place cannot need
    space or cross devices), with the mode a plain ``open`` would give — ``mkstemp`` makes it 0600 whatever
    the umask. Nothing is left behind on failure, which is an OSError naming ``path``."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise _as_output_error(e, path) from None
    try:
        os.fchmod(fd, 0o666 & ~umask())
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(clean_text(text))
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise _as_output_error(e, path) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def atomic_write_text(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` so that readers see the old file or the whole new one, never a part. A
    failure (a full disk) is an OSError naming ``path``, with the old file untouched."""
    path = Path(path)
    tmp = _write_temp(path, text)
    try:
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise _as_output_error(e, path) from None
    return path


class Staged:
    """Files of one result written as a set (see :func:`all_or_nothing`)."""

    def __init__(self) -> None:
        self.files: list[tuple[Path, Path]] = []  # (temporary, destination)

    def write_text(self, path: str | Path, text: str) -> Path:
        """``text`` for ``path``, put in place when the set is."""
        path = Path(path)
        self.files.append((_write_temp(path, text), path))
        return path

    def path(self, path: str | Path) -> Path:
        """A temporary for ``path`` (same folder and suffix, the umask's mode) for a writer that wants a file
        name — ``savefig``; it is fsynced and put in place when the set is."""
        path = Path(path)
        tmp = _write_temp(path, "")
        try:
            named = tmp.rename(tmp.with_name(tmp.name + path.suffix))  # writers pick the format by the suffix
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise _as_output_error(e, path) from None
        self.files.append((named, path))
        return named


@contextmanager
def all_or_nothing():
    """Write the files of one result (``staged.write_text(path, text)`` or ``staged.path(path)`` inside the
    block) so that a failure anywhere — a full disk at the last file, an error between two — leaves the
    previous result as it was: each file goes to a temporary beside its destination, and only once the block
    has finished are they fsynced and renamed into place, in the order given (give the file that marks a
    result complete last). The renames need no space, so only a kill in the middle of them (or a destination
    turned into a folder meanwhile: outputs are checked before any work) mixes old and new files."""
    staged = Staged()
    try:
        yield staged
        for tmp, dest in staged.files:
            try:
                with open(tmp, "rb") as f:  # for what a writer like savefig wrote (write_text's are synced)
                    os.fsync(f.fileno())
                os.replace(tmp, dest)
            except OSError as e:
                raise _as_output_error(e, dest) from None
    finally:
        for tmp, _ in staged.files:
            tmp.unlink(missing_ok=True)


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
                data = parse_json(raw.decode("utf-8"))
                if not isinstance(data, dict):
                    raise ValueError(f"expected a JSON object, got {type(data).__name__}")
            except OverflowError:
                limit = f"{max_bytes >> 20} MB" if max_bytes >= 1 << 20 else f"{max_bytes} bytes"
                reason = f"record longer than {limit} (the limit for one line)"
            except UnicodeDecodeError as e:
                reason = f"not valid UTF-8 (byte {e.start})"
            except ValueError as e:  # json.JSONDecodeError is a ValueError, and so is a record nested too deeply
                reason = f"not a valid JSON object: {e}"
            else:
                yield Line(number, clean(data) if _SURROGATE_ESCAPE.search(raw) else data)
                continue
            if not skip_bad:
                raise DataError(f"{path}:{number}: {reason}")
            if bad is not None:
                bad.append((number, reason))


def parse_json(text: str) -> Any:
    """``json.loads``, a record nested past Python's recursion limit (``"[" * 200000`` fits in one 8 MB line;
    the decoder recurses per level) being a ValueError like any other."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError(TOO_DEEP) from None


def read_json(path: str | Path, what: str = "JSON file") -> Any:
    """A JSON file this tool wrote (``summary.json``, ``sweep.json``) read back from a folder the user names:
    missing, unreadable, damaged or absurdly nested, it is a :class:`DataError` naming it."""
    path = Path(path)
    with open_input(path, what) as handle:
        raw = handle.read()
    try:
        return parse_json(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not valid UTF-8 (byte {e.start})") from None
    except ValueError as e:
        raise DataError(f"{path}: not valid JSON: {e}") from None


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
            row = parse_json(raw.decode("utf-8"))
            if not isinstance(row, dict):
                raise ValueError("not a JSON object")
        except ValueError as e:
            if any(x.strip() for x in lines[number:]):
                raise DataError(f"{path}:{number}: not a valid JSON object: {e}") from None
            print(f"t1: warning: {path}:{number}: dropped a torn last line ({len(raw)} bytes)", file=sys.stderr)
            break
        rows.append(row)
    return rows


MIN_FREE_BYTES = 64 << 20  # below this an output is refused before any work: a result needs room to be written


def _same(a: Path, b: Path) -> bool:
    """Whether two paths name one file: resolved (``D/new/../in.jsonl`` is ``D/in.jsonl``, links followed),
    or the same inode (hard links, bind mounts)."""
    try:
        if a.resolve() == b.resolve():
            return True
    except (OSError, RuntimeError):  # a symbolic-link loop: compare as spelled
        if a.absolute() == b.absolute():
            return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist yet
        return False


def _writable(folder: Path, out: Path, what: str, min_free: int) -> None:
    """Make ``folder`` and prove it takes a file (a probe created and removed: ``os.access`` says yes to root
    on a read-only mount); refuse a disk with less than ``min_free`` bytes free, where that can be known."""
    where = "it" if folder == out else f"its folder {folder}"
    blocker = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:  # mkdir would say "File exists", which names the wrong problem
        raise DataError(f"{what} {out}: cannot create {where}: {blocker} is a file, not a directory")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"{what} {out}: cannot create {where}: {e.strerror or e}") from None
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".t1-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise DataError(f"{what} {out}: cannot write in {folder}: {e.strerror or e}") from None
    try:
        free = shutil.disk_usage(folder).free
    except OSError:  # not knowable here (some network file systems): the write itself will tell
        return
    if free < min_free:
        raise DataError(f"{what} {out}: no space left on {folder} ({free >> 20} MiB free)")


def _not_an_input(out: Path, inputs: tuple[str | Path, ...], what: str) -> None:
    """Refuse ``out`` when it names one of ``inputs`` (None and "" — an unset optional input — skipped)."""
    for src in inputs:
        if src is not None and str(src) and _same(out, Path(src)):
            raise DataError(f"{what} {out}: is also an input ({src}); writing it would overwrite that input")


def check_output(out: str | Path, *inputs: str | Path | None, what: str = "output",
                 min_free: int = MIN_FREE_BYTES) -> Path:
    """Before any work, so that nothing is computed only to be lost: the file ``out`` is not one of
    ``inputs`` (compared resolved; writing it would lose them), is not a directory, and can be written (its
    folder exists or can be made, takes a file, and has ``min_free`` bytes free). Each refusal is one
    :class:`DataError` naming ``out`` and the reason. Returns ``out`` as a Path."""
    out = Path(out)
    _not_an_input(out, inputs, what)
    if out.is_dir():
        raise DataError(f"{what} {out}: is a directory, expected a file path")
    _writable(out.parent, out, what, min_free)
    return out


def check_output_dir(out: str | Path, *inputs: str | Path | None, files: Iterable[str] = (),
                     what: str = "out", min_free: int = MIN_FREE_BYTES) -> Path:
    """:func:`check_output` for an output folder: ``out`` is not an existing file nor one of ``inputs``, none
    of the ``files`` it will write there is one of ``inputs``, and it can be made and written with
    ``min_free`` bytes free. Returns ``out`` as a Path."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DataError(f"{what} {out}: is a file, expected a directory")
    _not_an_input(out, inputs, what)
    for name in files:
        _not_an_input(out / name, inputs, what)
        if (out / name).is_dir():
            raise DataError(f"{what} {out}: {out / name} is a directory, expected a file path")
    _writable(out, out, what, min_free)
    return out


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    return [line.data for line in iter_jsonl(path)]


def fill(template: str, **values: str) -> str:
    """Replace ``{name}`` for each given name and nothing else, so templates may contain literal braces
    (``\\boxed{}``) — unlike ``str.format``."""
    for name, value in values.items():
        template = template.replace("{" + name + "}", str(value))
    return template
