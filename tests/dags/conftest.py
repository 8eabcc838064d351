"""End-to-end DAG tests: both sync DAGs run with ``dag.test()`` against fresh emulators (one pair per test).

Airflow's task retries are turned off (``DIDOMI_DYNAMICS_RETRIES=0``) so a failing task fails its run at once
instead of waiting minutes for a retry; everything else is the DAG files as shipped.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from dag_e2e_support import FAST_RETRIES, FORWARD, LIVE, REVERSE, Sync

from airflow_provider_didomi_dynamics.emulators.runner import RunningEmulators
from airflow_provider_didomi_dynamics.hooks import didomi as didomi_hooks
from airflow_provider_didomi_dynamics.hooks.dataverse import hook as dataverse_hooks
from airflow_provider_didomi_dynamics.preflight.run import forget_preflight_cache
from airflow_provider_didomi_dynamics.sync.retry_queue import forget_retry_queues
from airflow_provider_didomi_dynamics.transport.retry import RetryPolicy


def forget_sync_runs() -> None:
    """Delete every run of both sync DAGs (task instances and XComs go with them) from the metadata database.

    Each test is a new deployment against new emulators: a run of an earlier test must not be "the previous run"
    whose failed rows the next push retries, nor leave rows in a retry queue.
    """
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        for run in session.scalars(select(DagRun).where(DagRun.dag_id.in_([FORWARD, REVERSE, LIVE]))):
            session.delete(run)
    forget_retry_queues()


@pytest.fixture
def make_sync(tmp_path: Path, airflow_db: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[], Sync]]:
    """Start a pair of emulators and point Airflow at it (the last one made is the active one)."""
    monkeypatch.setenv("DIDOMI_DYNAMICS_RETRIES", "0")
    forget_preflight_cache()
    forget_sync_runs()
    with ExitStack() as stack:
        made: list[Sync] = []

        def make() -> Sync:
            running = stack.enter_context(RunningEmulators(tmp_path / f"emulators-{len(made)}"))
            sync = Sync(running, monkeypatch)
            sync.activate()
            made.append(sync)
            return sync

        yield make
    forget_preflight_cache()


@pytest.fixture
def sync(make_sync: Callable[[], Sync]) -> Sync:
    """Empty emulators wired to Airflow; tests seed what they need."""
    return make_sync()


@pytest.fixture
def fast_http_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hooks give up after 2 quick attempts, so an injected outage fails a request in well under a second."""
    fast = functools.partial(RetryPolicy, **FAST_RETRIES)
    monkeypatch.setattr(dataverse_hooks, "RetryPolicy", fast)
    monkeypatch.setattr(didomi_hooks, "RetryPolicy", fast)
