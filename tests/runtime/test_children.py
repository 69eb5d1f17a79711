"""Child processes for `t1 sweep --jobs` and the demo's parallel SFT: order, threads, logs, failure stops all."""

import os
import sys

import pytest

from t1.runtime.checkpoint import RunError
from t1.runtime.children import Job, run_jobs


def _py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_commands_run_in_order_with_the_thread_count_and_a_log(tmp_path):
    trail, done = tmp_path / "trail.txt", []
    write = "import os, sys; open(sys.argv[1], 'a').write(sys.argv[2] + os.environ['OMP_NUM_THREADS'] + ' ')"
    jobs = [Job(name, [[*_py(write), str(trail), f"{name}{i}"] for i in (1, 2)], tmp_path / f"{name}.log",
                done=lambda name=name: done.append(name)) for name in ("a", "b", "c")]
    run_jobs(jobs, parallel=1, threads=3, poll_s=0.05)
    assert trail.read_text().split() == ["a13", "a23", "b13", "b23", "c13", "c23"] and done == ["a", "b", "c"]
    assert (tmp_path / "a.log").read_text().count("$ ") == 2  # each command is logged before it runs


def test_the_first_failure_stops_the_others_and_names_its_last_line(tmp_path):
    pid_file = tmp_path / "pid"
    slow = Job("slow", [_py(f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); "
                            "time.sleep(60)")], tmp_path / "slow.log")
    bad = Job("sweep: run x", [_py(f"import os, time\nwhile not os.path.exists({str(pid_file)!r}): "
                                   "time.sleep(0.01)\nprint('t1 rl: error: boom'); raise SystemExit(2)")],
              tmp_path / "bad.log")
    later = Job("later", [_py(f"open({str(tmp_path / 'ran')!r}, 'w')")], tmp_path / "later.log")
    with pytest.raises(RunError) as e:
        run_jobs([slow, bad, later], parallel=2, poll_s=0.05)
    assert str(e.value) == f"sweep: run x failed (t1 rl: error: boom); see {tmp_path / 'bad.log'}"
    with pytest.raises(ProcessLookupError):  # stopped and reaped, not left running
        os.kill(int(pid_file.read_text()), 0)
    assert not (tmp_path / "ran").exists()  # a job not started yet never starts


def test_each_running_job_holds_a_gpu_of_its_own(tmp_path):
    show = ("import os, sys, time; open(sys.argv[1], 'w').write(os.environ['CUDA_VISIBLE_DEVICES']); "
            "time.sleep(0.3)")
    jobs = [Job(f"j{i}", [[*_py(show), str(tmp_path / f"j{i}")]], None) for i in range(4)]
    run_jobs(jobs, parallel=2, poll_s=0.05, devices=["3", "5"])
    got = [(tmp_path / f"j{i}").read_text() for i in range(4)]
    assert set(got) == {"3", "5"} and got[0] != got[1]  # the first two run together, one GPU each


def test_a_child_killed_by_a_signal_is_named(tmp_path):
    die = _py("import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
    with pytest.raises(RunError, match=r"^run x failed \(killed by SIGKILL — out of memory\?\)$"):
        run_jobs([Job("run x", [die], None)], poll_s=0.05)
    with pytest.raises(RunError, match=r"failed \(killed by SIGKILL — out of memory\?\); see "):
        run_jobs([Job("run y", [die], tmp_path / "y.log")], poll_s=0.05)
