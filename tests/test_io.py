"""t1.io: lone surrogates made writable, the per-record size cap, directories and torn log lines, outputs that
would overwrite an input or cannot be written — each a one-line DataError or a warning, never a traceback."""

import json
import os

import pytest

from t1.io import DataError, atomic_write_text, check_output, clean, iter_jsonl, read_log


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
