"""The mapping benchmark runs end to end on a small sample and ends with its JSON line of figures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "mapping.py"


def test_benchmark_prints_its_figures() -> None:
    done = subprocess.run(
        [sys.executable, str(BENCHMARK), "--users", "3000", "--repeat", "1"],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert any(line.startswith("outputs equal:") for line in lines)
    figures = json.loads(lines[-1])
    assert set(figures) == {"users_per_s", "baseline_users_per_s", "ratio", "peak_rss_mb"}
    assert figures["users_per_s"] > 0 and figures["baseline_users_per_s"] > 0 and figures["peak_rss_mb"] > 0
