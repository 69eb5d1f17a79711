"""Checkpoints on disk: atomic, fsynced folders, what makes one whole, and the checksums that prove it.

A checkpoint ``checkpoints/step-NNNNNNN/`` is the model in HF format — a full model (``config.json`` +
``model.safetensors``, or shards listed in ``model.safetensors.index.json``) or, for a LoRA run, the adapter
(``adapter_config.json`` + ``adapter_model.safetensors``) — the tokenizer, ``trainer_state.pt`` (step,
optimizer, RNG, …) and ``checksums.json``. It is *whole* when its model files are there and their safetensors
headers cover them exactly, every file matches ``checksums.json`` and the trainer state loads.

Why checksums: a header check finds a torn or empty file, not bytes that changed under an intact header (a bad
disk, a copy that went wrong); loading such weights would go on silently from damaged numbers. ``checksums.json``
holds, for every file of the folder, its size and a SHA-256 over the SHA-256 digests of its 64 MiB blocks (a
two-level hash, so a file's blocks are hashed in parallel: hashlib releases the GIL). Cost
(`benchmarks/checkpoint.py`, BENCHMARKS.md): ~0.9 GB/s per core; on a 2-core machine with a fast local disk
about as long as the write itself, on a GPU node with 8 hashing threads and shared storage a fraction of
it. A checkpoint written before checksums existed (no
``checksums.json``) is accepted as it is: its header check and trainer state are all there is to go on.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import re
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from t1.config import ConfigError
from t1.io import DataError

CHECKPOINT_STATE = "trainer_state.pt"
CHECKSUMS = "checksums.json"
CHECKSUM_FORMAT = "t1-checksums/1"
BLOCK_BYTES = 64 << 20
_STEP = re.compile(r"step-(\d+)")
_STALE = re.compile(r"\.tmp-(old-)?(step-\d+|final)-\d+")  # what a killed save leaves


class RunError(ConfigError, RuntimeError):
    """A run that cannot go on (its training diverged, its output cannot be written), in one line: the ``t1``
    command prints it like a config error (exit 2); a RuntimeError too, for callers that catch those."""


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """Checkpoints that finished saving (renamed into place, with their trainer state), oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    done = [p for p in root.iterdir() if _STEP.fullmatch(p.name) and (p / CHECKPOINT_STATE).exists()]
    return sorted(done, key=lambda p: int(p.name.split("-")[1]))


def remove_stale(run_dir: Path) -> None:
    """Remove what a killed save left (``.tmp-step-*``, ``.tmp-final-*``); call it holding the run's lock."""
    for folder in (Path(run_dir), Path(run_dir) / "checkpoints"):
        if folder.is_dir():
            for p in folder.iterdir():
                if _STALE.fullmatch(p.name):
                    shutil.rmtree(p, ignore_errors=True)


# ---------------------------------------------------------------------------------------------- writing


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for folder, _, files in os.walk(root):
        for name in files:
            _fsync(Path(folder) / name)
        _fsync(Path(folder))


def _cause(e: BaseException, free: int | None) -> str:
    """Why a save failed, in words: a full disk is named as such (torch.save says only ``enforce fail``)."""
    if (isinstance(e, OSError) and e.errno == errno.ENOSPC) or (free is not None and free < 64 << 20):
        return "no space left on device" + (f" ({free >> 20} MiB free)" if free is not None else "")
    if isinstance(e, OSError):
        return f"{e.strerror or e}" + (f": {e.filename}" if e.filename else "")
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _apply_umask(root: Path) -> None:
    """Every file and folder under ``root`` gets the mode the user's umask gives (``0666`` / ``0777`` minus it),
    as any other program's output: safetensors writes its files 0600 whatever the umask."""
    from t1.io import umask

    mask = umask()
    for path in (root, *root.rglob("*")):
        if not path.is_symlink():
            path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)


def write_dir(dest: Path, write: Callable[[Path], None], intact: str = "earlier checkpoints are intact") -> Path:
    """Make the folder ``dest`` atomically and durably: ``write(tmp)`` fills a temporary sibling, its modes are
    set from the umask, every file and folder in it is fsynced, then it is renamed to ``dest`` (an old ``dest``
    set aside first and removed after) and the parent fsynced. A failure (OSError, or torch's and safetensors'
    RuntimeError-like errors) removes the partial copy and is a :class:`RunError` naming ``dest``, the cause and
    ``intact`` (what the user still has); ``dest`` as it was is untouched."""
    from safetensors import SafetensorError

    parent = dest.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = parent / f".tmp-{dest.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        write(tmp)
        _apply_umask(tmp)
        _fsync_tree(tmp)
    except (OSError, RuntimeError, SafetensorError) as e:
        try:
            free = shutil.disk_usage(parent).free
        except OSError:
            free = None
        shutil.rmtree(tmp, ignore_errors=True)
        raise RunError(f"{dest}: could not be written: {_cause(e, free)}; nothing was replaced "
                       f"({intact})") from None
    old = parent / f".tmp-old-{dest.name}-{os.getpid()}"
    if dest.exists():
        os.replace(dest, old)
    os.replace(tmp, dest)
    _fsync(parent)
    shutil.rmtree(old, ignore_errors=True)
    return dest


def check_finite(state_dict: dict, dest: Path) -> None:
    """Refuse to write weights that hold NaN or inf: they are a diverged run, never a result."""
    for name, t in state_dict.items():
        if torch.is_tensor(t) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise RunError(f"{dest}: not written: the weights hold NaN or inf (first in {name}); the training "
                           "diverged — lower train.optim.lr")


def save_checkpoint(run_dir: Path, step: int, write_model, state: dict, keep: int) -> Path:
    """Write a checkpoint atomically: ``write_model(dir)`` saves the model and tokenizer (HF format), ``state``
    (optimizer, RNG, counters) goes to ``trainer_state.pt``, and ``checksums.json`` covers them all (inside the
    temporary folder, so it is fsynced and renamed with them); keep the newest ``keep``."""
    def write(path: Path) -> None:
        write_model(path)
        torch.save(state, path / CHECKPOINT_STATE)
        write_checksums(path)

    final = write_dir(Path(run_dir) / "checkpoints" / f"step-{step:07d}", write)
    for old in checkpoint_dirs(run_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


# ---------------------------------------------------------------------------------------------- checksums


def _block_digest(path: Path, offset: int, size: int) -> bytes:
    """SHA-256 of ``size`` bytes of ``path`` from ``offset``, read 1 MiB at a time (a short file: of what is
    there, so its digest differs)."""
    h, buf = hashlib.sha256(), bytearray(1 << 20)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        f.seek(offset)
        while size > 0:
            n = f.readinto(view[:min(len(buf), size)])
            if not n:
                break
            h.update(view[:n])
            size -= n
    return h.digest()


def file_digests(root: Path, names: list[str]) -> dict[str, dict]:
    """{name: {"bytes": size, "sha256": hex}} for the files ``names`` under ``root``: each file's 64 MiB blocks
    hashed by a pool of threads (up to 8, one a core), the block digests hashed in order."""
    sizes = {name: (root / name).stat().st_size for name in names}
    jobs = [(name, off, min(BLOCK_BYTES, sizes[name] - off))
            for name in names for off in range(0, max(1, sizes[name]), BLOCK_BYTES)]
    workers = max(1, min(8, os.cpu_count() or 1, len(jobs)))
    with ThreadPoolExecutor(workers) as pool:
        digests = list(pool.map(lambda job: _block_digest(root / job[0], job[1], job[2]), jobs))
    out: dict[str, dict] = {}
    for (name, _, _), digest in zip(jobs, digests):
        out.setdefault(name, {"bytes": sizes[name], "parts": []})["parts"].append(digest)
    return {name: {"bytes": v["bytes"], "sha256": hashlib.sha256(b"".join(v["parts"])).hexdigest()}
            for name, v in out.items()}


def _files(root: Path) -> list[str]:
    """Every file under ``root`` but the manifest, as sorted relative POSIX paths."""
    names = [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()]
    return sorted(n for n in names if n != CHECKSUMS)


def write_checksums(root: Path) -> Path:
    """``root/checksums.json``: the size and block-wise SHA-256 of every other file in the folder."""
    manifest = {"format": CHECKSUM_FORMAT, "algorithm": "sha256 over the sha256 of each 64 MiB block",
                "block_bytes": BLOCK_BYTES, "files": file_digests(root, _files(root))}
    path = root / CHECKSUMS
    path.write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return path


def checksum_problem(root: Path) -> str | None:
    """What in folder ``root`` does not match its ``checksums.json``, or None (also when there is none: a
    checkpoint from before checksums). Sizes are compared first, so a cut file costs no hashing."""
    path = root / CHECKSUMS
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        files = manifest["files"]
        assert manifest["format"] == CHECKSUM_FORMAT and manifest["block_bytes"] == BLOCK_BYTES
        expected = {str(name): (int(v["bytes"]), str(v["sha256"])) for name, v in files.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError, AssertionError):
        return f"{CHECKSUMS} is unreadable"
    for name, (size, _) in expected.items():
        if not (root / name).is_file():
            return f"{name} is missing (listed in {CHECKSUMS})"
        if (root / name).stat().st_size != size:
            return f"{name}: {(root / name).stat().st_size} bytes, {CHECKSUMS} says {size}"
    actual = file_digests(root, list(expected))
    for name, (_, digest) in expected.items():
        if actual[name]["sha256"] != digest:
            return f"{name}: its bytes do not match {CHECKSUMS} (damaged on disk)"
    return None


# ---------------------------------------------------------------------------------------------- reading


def load_checkpoint_state(path: Path) -> dict:
    """``trainer_state.pt`` of the checkpoint ``path``, loaded with ``weights_only=True``; a file holding pickled
    Python objects is refused (:class:`t1.io.DataError`): loading it could run code.

    Memory-mapped (``mmap=True``): the tensors (AdamW moments 8N, the anchor 4N) are pages of the file, read
    when touched and shared through the page cache, not a private copy per process — every process of a resumed
    run loads the state and keeps it until the trainer is set up, which unmapped was 12N bytes per process
    (a 7B run on 8 GPUs: 0.7 TB of host RAM). Checking a checkpoint reads its tensors' headers, not their bytes
    (the bytes are checked by ``checksums.json``). The mapping is copy-on-write: the file is never changed."""
    file = Path(path) / CHECKPOINT_STATE
    try:
        return torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as e:
        if "weights only" not in str(e).lower():
            raise
        raise DataError(f"{file}: refused: it holds pickled Python objects, not only tensors and plain data "
                        "(loading it could run code); t1 never writes such a file") from None


def _weight_files(path: Path) -> list[str] | str:
    """The safetensors files checkpoint ``path`` must hold, or why it cannot say: a LoRA adapter
    (``adapter_config.json``: ``adapter_model.safetensors``), else a full model (``config.json``:
    ``model.safetensors`` or the shards its ``model.safetensors.index.json`` lists)."""
    if (path / "adapter_config.json").is_file():
        return ["adapter_model.safetensors"]
    if not (path / "config.json").is_file():
        return "no config.json (a model) or adapter_config.json (a LoRA adapter)"
    index = path / "model.safetensors.index.json"
    if not index.exists():
        return ["model.safetensors"]
    try:
        return sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        return f"{index.name}: unreadable ({type(e).__name__})"


def _model_problem(path: Path) -> str | None:
    """Why the model files of checkpoint ``path`` are not whole, or None: the weight files its config calls for
    are there and safetensors' own header check passes (it refuses a file its header does not cover exactly,
    e.g. a torn or zero-length one)."""
    from safetensors import SafetensorError, safe_open

    needed = _weight_files(path)
    if isinstance(needed, str):
        return needed
    missing = [name for name in needed if not (path / name).is_file()]
    if missing:
        return f"no {missing[0]}"
    for name in needed:
        try:
            with safe_open(str(path / name), framework="pt"):
                pass
        except (SafetensorError, OSError) as e:
            return f"{name}: {e}"
    return None


def check_checkpoint(path: Path) -> tuple[dict | None, str | None]:
    """(trainer state, None) for a whole checkpoint, else (None, what is wrong): its model files, its checksums
    (every byte read once: the cost of the docstring above), its trainer state."""
    problem = _model_problem(path) or checksum_problem(path)
    if problem is not None:
        return None, problem
    try:
        return load_checkpoint_state(path), None
    except DataError:
        raise
    except Exception as e:  # a torn zip archive, an empty file, …
        text = str(e).strip()
        return None, f"{CHECKPOINT_STATE} does not load ({text.splitlines()[0] if text else type(e).__name__})"


def newest_whole(ckpts: list[Path]) -> tuple[Path | None, dict | None, list[tuple[Path, str]]]:
    """(the newest whole checkpoint, its trainer state, [(newer broken checkpoint, why)])."""
    broken = []
    for ckpt in reversed(ckpts):
        state, problem = check_checkpoint(ckpt)
        if problem is None:
            return ckpt, state, broken
        broken.append((ckpt, problem))
    return None, None, broken
