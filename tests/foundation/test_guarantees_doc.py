"""The Guarantees document names the tests that hold each promise: every test it names must exist, so a renamed or
deleted test cannot leave a promise that nothing checks any more."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GUARANTEES = ROOT / "docs" / "guarantees.md"
REFERENCE = re.compile(r"`(tests/[\w/]+\.py)(?:::(\w+))?`")


def test_every_test_the_guarantees_name_exists() -> None:
    references = REFERENCE.findall(GUARANTEES.read_text())
    assert len(references) >= 40, "the Guarantees lost their table of tests"
    missing = []
    for path, name in references:
        source = ROOT / path
        if not source.exists():
            missing.append(path)
        elif name and not re.search(rf"^def {name}\(", source.read_text(), re.MULTILINE):
            missing.append(f"{path}::{name}")
    assert missing == [], f"docs/guarantees.md names tests that do not exist: {missing}"


def test_the_readme_states_the_guarantees_and_points_to_the_tests() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Guarantees") :]
    for promise in ("Re-runs are idempotent", "No silent drops", "Ordering and conflicts", "Partial failure"):
        assert promise in section
    assert "docs/guarantees.md" in section and "benchmarks/chaos.py" in section
