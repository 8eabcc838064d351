"""The scenario engine of the fault campaign: ``benchmarks/chaos.py``, imported from there (one copy only)."""

from __future__ import annotations

import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))

import chaos as engine  # noqa: E402

if Path(engine.__file__).resolve().parent != BENCHMARKS:  # another module called chaos came first
    raise ImportError(f"expected the campaign engine in {BENCHMARKS}, imported {engine.__file__}")
engine.isolate_airflow_database()

__all__ = ["engine"]
