"""Fixtures of the bad-input tests: one emulator pair and both sync DAGs per test process."""

from __future__ import annotations

from campaign_engine import pair_fixtures

sync_pair, dags, use = pair_fixtures("bad-input")
