"""Benchmark and prompt data shipped with the package (provenance in SOURCES.md)."""

from pathlib import Path

DATA_DIR = Path(__file__).parent
