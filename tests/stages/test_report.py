import json

from t1.cli import main
from t1.stages.report import write_report
from t1.stages.scale import plot


def test_report_renders_a_run(tmp_path):
    run = tmp_path / "run"
    (run / "rl").mkdir(parents=True)
    (run / "sft").mkdir()
    (run / "eval" / "sft").mkdir(parents=True)
    rl_rows = [{"step": i, "reward": 0.1 * i, "accuracy": 0.05 * i, "entropy": 1 / i, "kl": 0.01 * i,
                "response_length": 50 - i, "penalty_truncated": 0.1, "penalty_repetitive": 0.0,
                "penalty_garbage": 0.0, "time_sample": 1.0, "time_score": 0.1, "time_train": 2.0,
                "tokens_per_s": 1000.0} for i in range(1, 11)]
    (run / "rl" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rl_rows))
    sft_rows = [{"step": i, "loss": 3 / i} for i in range(1, 6)]
    (run / "sft" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in sft_rows))
    (run / "rl" / "rollouts.jsonl").write_text(json.dumps({
        "step": 10, "prompt": "use 1 2 to make 3 :", "response": "try 1 + 2 = 3 <script>", "reward": 1.0,
        "correct": True, "tokens": 8}) + "\n")
    curves = {"sft": [{"budget": b, "accuracy": a, "stderr": 0.02} for b, a in ((16, 0.1), (64, 0.3))],
              "rl": [{"budget": b, "accuracy": a, "stderr": 0.02} for b, a in ((16, 0.2), (64, 0.5))]}
    (run / "eval" / "scaling.json").write_text(json.dumps({"curves": curves}))
    plot(curves, run / "eval" / "scaling.png")
    (run / "eval" / "sft" / "summary.json").write_text(json.dumps({"benchmarks": {"countdown": {
        "problems": 500, "samples_per_problem": 1, "pass@1": 0.4, "pass@1_stderr": 0.02, "maj@1": 0.4,
        "mean_tokens": 80, "truncated_rate": 0.1}}}))
    page = write_report(run).read_text()
    for section in ("Inference scaling", "SFT", "RL training", "Evaluation", "Sampled rollouts"):
        assert f"<h2>{section}" in page
    assert page.count("data:image/png;base64,") == 3
    assert "&lt;script&gt;" in page and "<script>" not in page  # model output is escaped
    assert main(["report", str(run)]) == 0


def test_report_drops_a_torn_last_line_and_names_damage_before_it(tmp_path, capsys):
    """A run killed mid-write leaves half a row at the end of metrics.jsonl: the report drops it with a
    warning; a bad line before the last is one error naming the file and line."""
    run = tmp_path / "sft"
    run.mkdir()
    rows = "".join(json.dumps({"step": i, "loss": 3 / i}) + "\n" for i in range(1, 6))
    (run / "metrics.jsonl").write_text(rows + '{"step": 6, "lo')
    assert main(["report", str(run)]) == 0
    assert "<h2>SFT" in (run / "report.html").read_text()
    assert "metrics.jsonl:6: dropped a torn last line" in capsys.readouterr().err
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "lo\n' + rows)
    assert main(["report", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("t1 report: error: ") and "metrics.jsonl:2: not a valid JSON object" in err
    assert len(err.strip().splitlines()) == 1


def test_report_shows_completions_from_early_middle_and_late_steps(tmp_path):
    from t1.runtime.run import write_completions

    run = tmp_path / "rl"
    for step in range(5, 55, 5):  # steps 5 … 50
        write_completions(run, step, [{"step": step, "prompt": f"p{step}-{i}", "response": f"r{step}-{i}",
                                       "reward": -1.0 if i == 0 else 1.0, "correct": i > 0, "tokens": 7 + i,
                                       "penalty": "truncated" if i == 0 else "", "advantage": 0.25 - i}
                                      for i in range(5)])
    page = write_report(run).read_text()
    assert "Sampled rollouts (RL steps 5, 25, 50)" in page  # first, middle, last of the sampled steps
    for step in (5, 25, 50):
        assert f"<h3>Step {step}</h3>" in page and f"p{step}-2" in page and f"p{step}-3" not in page
    assert "p10-0" not in page
    assert "reward -1 (truncated) · advantage +0.250 · 7 tokens" in page


def test_report_shows_each_check_with_its_number_and_the_seeds(tmp_path):
    """A demo summary with two RL seeds: the checks table has each check's mean ± std, threshold and each seed's
    number; RL − SFT at the free budget and the truncation table are there."""
    from t1.pipelines.demo.checks import summarize
    from t1.pipelines.demo.report import write_demo_report

    def curve(acc, finished):
        return [{"budget": b, "accuracy": a, "stderr": 0.02, "finished_rate": f}
                for b, a, f in zip((64, 128, 256), acc, finished)]

    curves = {"sft": curve([0.3, 0.4, 0.48], [0.5, 0.7, 0.99]), "rl": curve([0.4, 0.52, 0.53], [0.6, 0.7, 1.0]),
              "rl_seed1": curve([0.4, 0.47, 0.56], [0.6, 0.7, 1.0]), "direct_sft": curve([0.37] * 3, [1.0] * 3)}
    summary = {"sft_accuracy": 0.4, "rl_accuracy": 0.495, "direct_sft_accuracy": 0.37, "accuracy_budget": 128,
               "full_budget_pass@1": dict.fromkeys(curves, 0.5),
               "full_budget_pass@1_stderr": dict.fromkeys(curves, 0.02),
               "eval_problems": 500, "stage_seconds": {"RL": 200.0}, "wall_seconds": 500.0,
               **summarize(curves, ["rl", "rl_seed1"], [0, 1], 128, [400.0, 380.0])}
    (tmp_path / "eval").mkdir()
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    (tmp_path / "eval" / "scaling.json").write_text(json.dumps({"curves": curves}))
    plot(curves, tmp_path / "eval" / "scaling.png")
    page = write_demo_report(tmp_path).read_text()
    assert "<th>seed 0</th><th>seed 1</th>" in page and "mean ± std, 2 seeds" in page
    assert "<td>✗ rl beats sft by 10 points</td><td>+9.5 ± 3.5</td><td>≥ +10.0</td>" in page
    assert "<td>+12.0</td><td>+7.0</td>" in page
    assert "<b>+6.5</b> points at the free budget, 256 tokens" in page  # (+5 and +8) / 2
    assert "<td>RL, seed 1</td><td>49.5%</td>" not in page and "<td>RL, seed 1</td><td>47.0%</td>" in page
    assert "<td>rl</td><td>40.0%</td><td>30.0%</td><td>0.0%</td>" in page  # truncated per budget


def test_damaged_result_files_are_named_and_a_full_disk_keeps_the_old_page(tmp_path, capsys, monkeypatch):
    """A summary.json or scaling.json cut short (a run killed while copying it) was a JSONDecodeError
    traceback; a disk that fills while the page is written leaves the old page whole, in one line."""
    import errno
    import os

    import t1.io

    run = tmp_path / "demo"
    (run / "eval").mkdir(parents=True)
    (run / "summary.json").write_text('{"accuracy_budget": 64, "se')
    assert main(["report", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"t1 report: error: {run / 'summary.json'}: not valid JSON: " \
                          "Unterminated string starting at: line 1 column 25 (char 24)"
    (run / "summary.json").unlink()
    (run / "eval" / "scaling.png").write_bytes(b"")
    (run / "eval" / "scaling.json").write_text("[" * 200_000)
    assert main(["report", str(run)]) == 2
    assert "scaling.json: not valid JSON: nested too deeply" in capsys.readouterr().err
    for name in ("scaling.json", "scaling.png"):
        (run / "eval" / name).unlink()
    (run / "report.html").write_text("old")

    def full(fd, *args, **kwargs):
        os.close(fd)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(t1.io.os, "fdopen", full)
    assert main(["report", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"t1 report: error: {run / 'report.html'}: No space left on device"
    assert (run / "report.html").read_text() == "old" and sorted(os.listdir(run)) == ["eval", "report.html"]


def test_report_draws_a_run_whose_log_holds_null_numbers(tmp_path):
    """A NaN or infinite metric is logged as null (strict JSON): the page still renders, with a gap."""
    from t1.runtime.run import Log

    run = tmp_path / "run"
    log = Log(run / "metrics.jsonl")
    log.write(*({"step": i, "reward": float("nan") if i == 1 else 0.1 * i, "accuracy": 0.1, "entropy": 1.0,
                 "kl": float("inf") if i == 3 else 0.0, "response_length": 9, "penalty_truncated": 0.0,
                 "penalty_repetitive": 0.0, "penalty_garbage": 0.0, "time_sample": 1.0, "time_score": 0.1,
                 "time_train": 1.0, "tokens_per_s": 9.0} for i in range(1, 6)))
    log.close()
    assert '"reward": null' in (run / "metrics.jsonl").read_text()
    page = write_report(run).read_text()
    assert "<h2>RL training" in page and "nan" in page  # the summary table's mean over a gap
