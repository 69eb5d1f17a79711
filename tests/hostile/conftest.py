"""Hostile-input tables (issue "Hardening, round 2"): each case runs the ``t1`` command in this process
(:func:`t1.cli.main`) and expects an exit code and one line on stderr — never a traceback, a hang or a silent
wrong result. The tests run as root in CI, so "read-only" outputs are paths that no user can write (a path
under a regular file) and a full disk is simulated by patching the write that hits it."""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass

import pytest

from t1.cli import main


@dataclass
class Outcome:
    code: int
    out: str
    err: str

    def one_line(self, *needles: str) -> str:
        """The single error line (asserting there is exactly one non-warning line on stderr, no traceback,
        and that it holds every needle); returns it."""
        lines = [x for x in self.err.splitlines() if x.strip() and "warning" not in x.lower()]
        assert "Traceback" not in self.err, self.err[-3000:]
        assert len(lines) == 1, self.err[-3000:]
        for needle in needles:
            assert needle in lines[0], (needle, lines[0])
        return lines[0]


@pytest.fixture
def t1(capsys):
    """``t1(*argv)`` → :class:`Outcome` (exit code, stdout, stderr) of ``t1 argv…`` run in this process."""

    def run(*argv: str) -> Outcome:
        capsys.readouterr()
        code = main([str(a) for a in argv])
        cap = capsys.readouterr()
        return Outcome(code, cap.out, cap.err)

    return run


def fail_writes_to(monkeypatch, name: str) -> None:
    """Every write through :mod:`t1.io` to a temporary of ``name`` (``.NAME.…``) fails as on a full disk."""
    import t1.io

    real = os.fdopen

    def fdopen(fd, *args, **kwargs):
        f = real(fd, *args, **kwargs)
        if f".{name}." in os.readlink(f"/proc/self/fd/{fd}"):
            def write(_):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

            f.write = write
        return f

    monkeypatch.setattr(t1.io.os, "fdopen", fdopen)
