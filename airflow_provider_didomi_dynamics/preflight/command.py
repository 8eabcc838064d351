"""``didomi-dynamics preflight``: its options, and the command that prints the report (or its JSON)."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys

from airflow_provider_didomi_dynamics.core.config import IntegrationConfig
from airflow_provider_didomi_dynamics.exceptions import ConfigError
from airflow_provider_didomi_dynamics.preflight.facts import DEFAULT_SCAN_PAGES, SCAN_PAGE_SIZE
from airflow_provider_didomi_dynamics.preflight.run import run_preflight


def add_preflight_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of ``didomi-dynamics preflight`` (the CLI wires them to :func:`main_preflight`)."""
    parser.add_argument("--config", required=True, help="the integration config JSON (the seed's shape)")
    parser.add_argument("--dataverse-conn-id", default="dataverse_default", help="Airflow connection of Dataverse")
    parser.add_argument("--didomi-conn-id", default="didomi_default", help="Airflow connection of Didomi")
    parser.add_argument("--webhook", action="store_true", help="also check that the Dynamics webhook can be registered")
    parser.add_argument(
        "--scan-pages",
        type=int,
        default=DEFAULT_SCAN_PAGES,
        help=f"pages of {SCAN_PAGE_SIZE} Didomi users to scan for purpose/preference/channel ids",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    return parser


def main_preflight(args: argparse.Namespace) -> int:
    """``didomi-dynamics preflight``: 0 when no check failed, 1 when one did, 2 for an invalid config."""
    from airflow_provider_didomi_dynamics.hooks.dataverse import DataverseHook
    from airflow_provider_didomi_dynamics.hooks.didomi import DidomiHook
    from airflow_provider_didomi_dynamics.transport.retry import RetryPolicy

    path = str(args.config)
    try:
        config = IntegrationConfig.from_file(path)
    except ConfigError as err:
        print(f"{path}: invalid, {len(err.problems)} problem(s):", file=sys.stderr)
        for problem in err.problems:
            print(f"  {problem}", file=sys.stderr)
        return 2
    # A person is waiting: two quick attempts per request, not a task's long backoff.
    quick = RetryPolicy(max_attempts=2, max_total_wait_s=10.0, backoff_initial_s=0.2, backoff_max_s=2.0)
    dataverse = DataverseHook(getattr(args, "dataverse_conn_id", None) or "dataverse_default", retry_policy=quick)
    didomi = DidomiHook(getattr(args, "didomi_conn_id", None) or "didomi_default", retry_policy=quick)
    # Log lines of the hooks ("got an access token") go to stderr: stdout carries only the report (or its JSON).
    try:
        with contextlib.redirect_stdout(sys.stderr):
            report = run_preflight(
                config,
                dataverse,
                didomi,
                check_webhook=bool(getattr(args, "webhook", False)),
                scan_pages=int(getattr(args, "scan_pages", DEFAULT_SCAN_PAGES) or DEFAULT_SCAN_PAGES),
            )
    finally:
        dataverse.close()
    if getattr(args, "json", False):
        print(json.dumps(report.as_dict(), indent=2))
    else:
        print(f"Preflight of {path}")
        print(report.render())
    return 0 if report.ok else 1


__all__ = ["add_preflight_arguments", "main_preflight"]
