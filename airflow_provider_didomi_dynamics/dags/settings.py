"""Conventions both sync DAGs share: schedule, retries, pools, params, where the config comes from.

Each knob reads an environment variable so a team changes it without editing the DAG files.
"""

from __future__ import annotations

import datetime as dt
import os
from typing import Any

from airflow.sdk import Param

DIDOMI_POOL = os.environ.get("DIDOMI_DYNAMICS_DIDOMI_POOL", "didomi_api")
DATAVERSE_POOL = os.environ.get("DIDOMI_DYNAMICS_DATAVERSE_POOL", "dataverse_api")
START_DATE = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
LOOKBACK_HOURS = float(os.environ.get("DIDOMI_DYNAMICS_LOOKBACK_HOURS", "24"))


def schedule_cron(direction: str, default: str = "0 * * * *") -> str:
    """Cron of one direction, e.g. ``DIDOMI_DYNAMICS_SCHEDULE_DIDOMI_TO_DYNAMICS="*/15 * * * *"``."""
    return os.environ.get(f"DIDOMI_DYNAMICS_SCHEDULE_{direction.upper()}", default)


def live_poll_seconds() -> float:
    """How often the live DAG's trigger asks Dataverse what changed (``DIDOMI_DYNAMICS_LIVE_POLL_SECONDS``, 15)."""
    return float(os.environ.get("DIDOMI_DYNAMICS_LIVE_POLL_SECONDS", "15"))


def export_path() -> str | None:
    """Didomi's batch export for full syncs (``DIDOMI_DYNAMICS_EXPORT_PATH``: ``s3://conn@bucket/data/export-id=..``)."""
    return os.environ.get("DIDOMI_DYNAMICS_EXPORT_PATH") or None


def config_source() -> str | None:
    """A config file path from ``DIDOMI_DYNAMICS_CONFIG_PATH``, else None: the Variable ``didomi_dynamics_config``."""
    return os.environ.get("DIDOMI_DYNAMICS_CONFIG_PATH") or None


def default_args() -> dict[str, Any]:
    return {
        "owner": "data-platform",
        "retries": int(os.environ.get("DIDOMI_DYNAMICS_RETRIES", "3")),
        "retry_delay": dt.timedelta(minutes=1),
        "retry_exponential_backoff": True,
        "max_retry_delay": dt.timedelta(minutes=30),
    }


def sync_params() -> dict[str, Param]:
    """Params a person sets when triggering a run from the UI."""
    return {
        # "null" in each type: the trigger form marks a typed param without it as required (a red star), although
        # every one has a default.
        "full_sync": Param(False, type=["boolean", "null"], description="Sync everything, ignoring the time window."),
        "since": Param(
            None,
            type=["null", "string"],
            format="date-time",
            description="Window start (UTC, inclusive). Empty: a scheduled run takes its data interval; a manual run "
            "starts where the previous successful run ended (else the last 24 h) and goes up to now.",
        ),
        "until": Param(None, type=["null", "string"], format="date-time", description="Window end (UTC, exclusive)."),
        "dry_run": Param(
            False, type=["boolean", "null"], description="Plan only: count and sample the changes, write nothing."
        ),
    }
