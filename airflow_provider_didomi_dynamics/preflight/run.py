"""Run the preflight: gather both sides' facts side by side, judge them, and keep a passing report per DAG run so
retries and sibling tasks of one run reuse it. ``preflight_task`` is the body of a DAG's first task."""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

from airflow_provider_didomi_dynamics.core.config import IntegrationConfig
from airflow_provider_didomi_dynamics.preflight.checks import judge
from airflow_provider_didomi_dynamics.preflight.facts import DEFAULT_SCAN_PAGES, gather_dataverse, gather_didomi
from airflow_provider_didomi_dynamics.preflight.report import PreflightReport

log = logging.getLogger(__name__)

_CACHE: OrderedDict[tuple[Any, ...], PreflightReport] = OrderedDict()
_CACHE_LOCK = threading.Lock()
_CACHE_SIZE = 64


def config_fingerprint(config: IntegrationConfig) -> str:
    """A digest of everything in the config that changes a preflight's verdict (the secret prints as ``***``)."""
    return hashlib.sha256(repr(config).encode("utf-8")).hexdigest()[:16]


def forget_preflight_cache() -> None:
    """Drop cached reports (tests; a person re-running after a fix goes through a new run id anyway)."""
    with _CACHE_LOCK:
        _CACHE.clear()


def run_preflight(
    config: IntegrationConfig,
    dataverse_hook: Any,
    didomi_hook: Any,
    *,
    check_webhook: bool = False,
    check_change_tracking: bool = False,
    scan_pages: int = DEFAULT_SCAN_PAGES,
    run_id: str | None = None,
) -> PreflightReport:
    """Check the setup; with ``check_webhook`` also that the webhook can be registered.

    With a ``run_id`` a passing report is cached per (connections, config, run): a second preflight of the same
    DAG run returns at once; a failing one is checked again (someone may have fixed it). The Dataverse checks and
    the Didomi scan run side by side.
    """
    key = (
        getattr(dataverse_hook, "dataverse_conn_id", id(dataverse_hook)),
        getattr(didomi_hook, "didomi_conn_id", id(didomi_hook)),
        config_fingerprint(config),
        run_id,
        check_webhook,
        check_change_tracking,
        scan_pages,
    )
    if run_id is not None:
        with _CACHE_LOCK:
            cached = _CACHE.get(key)
            if cached is not None:
                _CACHE.move_to_end(key)
                return replace(cached, cached=True)
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="preflight-didomi") as pool:
        didomi_future = pool.submit(gather_didomi, didomi_hook, scan_pages)
        dataverse = gather_dataverse(dataverse_hook, config, check_webhook, check_change_tracking)
        didomi = didomi_future.result()
    report = PreflightReport(
        judge(config, dataverse, didomi, check_webhook=check_webhook, check_change_tracking=check_change_tracking)
    )
    report.seconds = time.monotonic() - started
    if run_id is not None and report.ok:  # a failed report is never reused: the retry after a fix checks again
        with _CACHE_LOCK:
            _CACHE[key] = report
            while len(_CACHE) > _CACHE_SIZE:
                _CACHE.popitem(last=False)
    return report


def preflight_task(
    config_source: Any = None,
    *,
    dataverse_conn_id: str | None = "dataverse_default",
    didomi_conn_id: str = "didomi_default",
    run_id: str | None = None,
    check_webhook: bool = False,
    check_change_tracking: bool = False,
    scan_pages: int = DEFAULT_SCAN_PAGES,
) -> dict[str, Any]:
    """The body of a DAG's first task: log the table, fail the task when a check failed, return the report's dict.

    ``config_source`` is what :func:`config.load_config` takes (None: the Variable). ``dataverse_conn_id`` None
    uses the config's ``authentication`` block, as the push operator does.
    """
    from airflow_provider_didomi_dynamics.core.config import load_config
    from airflow_provider_didomi_dynamics.hooks.dataverse import DataverseHook
    from airflow_provider_didomi_dynamics.hooks.didomi import DidomiHook

    config = load_config(config_source)
    dataverse = DataverseHook.for_config(dataverse_conn_id, config)
    try:
        report = run_preflight(
            config,
            dataverse,
            DidomiHook(didomi_conn_id),
            check_webhook=check_webhook,
            check_change_tracking=check_change_tracking,
            scan_pages=scan_pages,
            run_id=run_id,
        )
    finally:
        dataverse.close()
    log.info("Preflight:\n%s", report.render())
    report.raise_if_failed()
    return report.as_dict()


__all__ = ["config_fingerprint", "forget_preflight_cache", "preflight_task", "run_preflight"]
