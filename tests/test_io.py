"""t1.io: lone surrogates made writable, the per-record size cap, directories and torn log lines, outputs that
would overwrite an input or cannot be written — each a one-line DataError or a warning, never a traceback."""

import json
import os

import pytest

from t1.io import DataError, atomic_write_text, check_output, clean, iter_jsonl, read_log
from tests.hostile.conftest import fail_writes_to


def test_lone_surrogates_are_replaced_on_read_and_on_write(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text('{"response": "a\\ud800b", "ok": "\\u00e9\\ud83d\\ude00"}\n')  # lone, then a valid pair
    row = next(iter_jsonl(src)).data
    assert row == {"response": "a\ufffdb", "ok": "é😀"}
    out = atomic_write_text(tmp_path / "out.txt", "x\ud800y")  # a string built in memory: still writable
    assert out.read_text(encoding="utf-8") == "x\ufffdy"
    assert clean({"k\udfff": ["\ud800", 3]}) == {"k\ufffd": ["\ufffd", 3]}


def test_an_over_long_record_is_refused_before_it_is_parsed(tmp_path):
    src = tmp_path / "big.jsonl"
    src.write_text('{"a": 1}\n{"a": "' + "x" * 5000 + '"}\n{"a": 3}\n')
    with pytest.raises(DataError, match=r"big.jsonl:2: record longer than 1000 bytes"):
        list(iter_jsonl(src, max_bytes=1000))
    bad = []
    assert [x.data["a"] for x in iter_jsonl(src, max_bytes=1000, skip_bad=True, bad=bad)] == [1, 3]
    assert [b[0] for b in bad] == [2]


def test_a_directory_or_a_missing_file_is_named(tmp_path):
    with pytest.raises(DataError, match="is a directory, expected a JSON Lines file"):
        list(iter_jsonl(tmp_path))
    with pytest.raises(DataError, match="file not found"):
        list(iter_jsonl(tmp_path / "nope.jsonl"))


def test_a_torn_last_log_line_is_dropped_with_a_warning(tmp_path, capsys):
    log = tmp_path / "metrics.jsonl"
    log.write_text(json.dumps({"step": 1}) + "\n" + json.dumps({"step": 2}) + "\n" + '{"step": 3, "lo')
    assert read_log(log) == [{"step": 1}, {"step": 2}]
    assert "dropped a torn last line" in capsys.readouterr().err
    log.write_text('{"step": 1}\n{"ste\n{"step": 3}\n')  # damage before the last line is not a torn write
    with pytest.raises(DataError, match="metrics.jsonl:2"):
        read_log(log)
    assert read_log(tmp_path / "none.jsonl") == []


def test_an_output_is_never_an_input_and_must_be_writable(tmp_path):
    src = tmp_path / "data.jsonl"
    src.write_text("{}\n")
    with pytest.raises(DataError, match="is also an input"):
        check_output(src, src)
    with pytest.raises(DataError, match="is also an input"):
        check_output(tmp_path / "." / "data.jsonl", src)  # the same file by another spelling
    with pytest.raises(DataError, match="is a directory"):
        check_output(tmp_path, src)
    assert check_output(tmp_path / "new" / "out.jsonl", src).parent.is_dir()
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        with pytest.raises(DataError, match="not writable"):
            check_output(locked / "out.jsonl", src)


def test_outputs_are_compared_resolved_and_checked_as_files_or_folders(tmp_path):
    """``D/new/../data.jsonl`` is ``D/data.jsonl``: compared before resolving it got past the input guard."""
    from t1.io import check_output_dir

    src = tmp_path / "data.jsonl"
    src.write_text("{}\n")
    with pytest.raises(DataError, match="is also an input"):
        check_output(tmp_path / "new" / ".." / "data.jsonl", src)
    with pytest.raises(DataError, match="is also an input"):  # a folder whose file would be an input
        check_output_dir(tmp_path / "x" / "..", src, files=["data.jsonl"])
    with pytest.raises(DataError, match="is a file, expected a directory"):
        check_output_dir(src)
    (tmp_path / "afile").write_text("")
    with pytest.raises(DataError, match=r"cannot create its folder .*afile/out: .*afile is a file, not a direc"):
        check_output(tmp_path / "afile" / "out" / "x.jsonl")
    with pytest.raises(DataError, match=r"cannot create it: .*afile is a file, not a directory"):
        check_output_dir(tmp_path / "afile" / "out")
    assert check_output_dir(tmp_path / "made", src, files=["summary.json"]).is_dir()
    assert os.listdir(tmp_path / "made") == []  # the write probe is gone


def test_an_output_on_a_nearly_full_disk_is_refused(tmp_path, monkeypatch):
    import shutil

    from t1.io import check_output_dir

    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10 << 30, 10 << 30, 5 << 20))
    with pytest.raises(DataError, match=r"no space left on .* \(5 MiB free\)"):
        check_output(tmp_path / "out.jsonl")
    with pytest.raises(DataError, match=r"no space left on .* \(5 MiB free\)"):
        check_output_dir(tmp_path / "out")


@pytest.mark.parametrize("record", ["[" * 200_000, '{"a":' * 200_000])
def test_a_record_nested_too_deeply_is_a_data_error(tmp_path, record):
    """json's decoder recurses per level: 200,000 levels was a RecursionError (a traceback) wherever JSON Lines
    are read."""
    from t1.io import read_json

    src = tmp_path / "deep.jsonl"
    src.write_text('{"a": 1}\n' + record + "\n")
    with pytest.raises(DataError, match=r"deep.jsonl:2: not a valid JSON object: nested too deeply"):
        list(iter_jsonl(src))
    bad = []
    assert [x.data for x in iter_jsonl(src, skip_bad=True, bad=bad)] == [{"a": 1}] and bad[0][0] == 2
    src.write_text(record + '\n{"a": 1}\n')  # a log: damage before the last line
    with pytest.raises(DataError, match=r"deep.jsonl:1: not a valid JSON object: nested too deeply"):
        read_log(src)
    src.write_text(record)
    with pytest.raises(DataError, match=r"deep.jsonl: not valid JSON: nested too deeply"):
        read_json(src)


def test_a_failed_write_names_the_path_and_leaves_no_trace(tmp_path, monkeypatch):
    out = atomic_write_text(tmp_path / "out.txt", "old")
    fail_writes_to(monkeypatch, "out.txt")
    with pytest.raises(OSError, match="No space left on device") as info:
        atomic_write_text(out, "new")
    assert info.value.filename == str(out)  # the user's name, not the temporary's
    assert out.read_text() == "old" and os.listdir(tmp_path) == ["out.txt"]


def test_all_or_nothing_leaves_the_old_result_when_its_last_file_fails(tmp_path, monkeypatch):
    from t1.io import all_or_nothing

    for name in ("a.jsonl", "summary.json"):
        (tmp_path / name).write_text("old")
    fail_writes_to(monkeypatch, "summary.json")
    with pytest.raises(OSError, match="No space left on device"):
        with all_or_nothing() as staged:
            staged.write_text(tmp_path / "a.jsonl", "new")
            staged.write_text(tmp_path / "summary.json", "new")
    assert sorted(os.listdir(tmp_path)) == ["a.jsonl", "summary.json"]
    assert {p.read_text() for p in tmp_path.iterdir()} == {"old"}
    monkeypatch.undo()
    with all_or_nothing() as staged:
        staged.write_text(tmp_path / "a.jsonl", "new")
        staged.path(tmp_path / "b.png").write_bytes(b"png")
    assert (tmp_path / "a.jsonl").read_text() == "new" and (tmp_path / "b.png").read_bytes() == b"png"
    assert sorted(os.listdir(tmp_path)) == ["a.jsonl", "b.png", "summary.json"]


@pytest.fixture
def umask():
    """``umask(value)`` for the rest of the test; the old one restored after."""
    old = os.umask(0o022)
    yield os.umask
    os.umask(old)


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_files_get_the_mode_the_umask_gives(tmp_path, umask, mask, mode):
    """mkstemp makes its files 0600 whatever the umask: results were unreadable to the user's group."""
    from t1.io import all_or_nothing, write_jsonl

    umask(mask)
    a = atomic_write_text(tmp_path / "a.txt", "x")
    b = write_jsonl(tmp_path / "b.jsonl", [{"a": 1}])
    with all_or_nothing() as staged:
        c = staged.write_text(tmp_path / "c.json", "{}")
        staged.path(tmp_path / "d.png").write_bytes(b"")
    for path in (a, b, c, tmp_path / "d.png"):
        assert path.stat().st_mode & 0o777 == mode, path
