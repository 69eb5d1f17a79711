"""Evaluation: benchmarks, pass@k, inference-scaling sweeps, plots and the HTML report."""
