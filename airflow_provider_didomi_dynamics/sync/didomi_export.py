"""Didomi's daily batch export as the source of a full sync: every user without paging the API.

Didomi writes ``<base>/export-id=<id>/date=<YYYY-MM-DD>/users/*.json.gz`` (newline-delimited JSON, gzip; any number
of files, names subject to change) to S3 or GCS and a ``_SUCCESS`` marker when a date is complete. ``base`` is an
``ObjectStoragePath`` URL down to the export id (``s3://aws_default@bucket/data/export-id=abc``), so the usual
Airflow connections give access. Files are read line by line: memory holds one batch, never a file.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from airflow_provider_didomi_dynamics.exceptions import DidomiDynamicsError

log = logging.getLogger(__name__)

_DATE = re.compile(r"^date=(\d{4}-\d{2}-\d{2})$")
SUCCESS_MARKER = "_SUCCESS"


class ExportError(DidomiDynamicsError, ValueError):
    """The export cannot be read as it is: a missing or incomplete date, a line that is not a user."""

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self._retryable = retryable

    @property
    def retryable(self) -> bool:  # type: ignore[override]
        return self._retryable


@dataclass
class ExportStats:
    """What a read covered, for the pull report."""

    path: str
    date: str
    files: int = 0
    lines: int = 0


def storage_path(url: str) -> Any:
    from airflow.sdk import ObjectStoragePath

    return ObjectStoragePath(url)


def complete_dates(base: str) -> list[str]:
    """Dates under ``base`` whose ``_SUCCESS`` marker exists, oldest first."""
    root = storage_path(base)
    if not root.exists():
        raise ExportError(
            f"Didomi export {base}: no such folder; set the export path to the folder that holds the date=YYYY-MM-DD "
            "partitions (…/data/export-id=<your export id>)"
        )
    dates = []
    for child in root.iterdir():
        match = _DATE.match(child.name)
        if match and (child / SUCCESS_MARKER).exists():
            dates.append(match.group(1))
    return sorted(dates)


def resolve_date(base: str, date: str | None = None) -> str:
    """``date`` when it is complete, else the newest complete date; a clear error when there is none."""
    if date:
        if not (storage_path(base) / f"date={date}" / SUCCESS_MARKER).exists():
            raise ExportError(
                f"Didomi export {base}/date={date} has no {SUCCESS_MARKER} marker: Didomi has not finished writing "
                "it (wait, or leave the date empty to read the newest complete one)",
                retryable=True,
            )
        return date
    dates = complete_dates(base)
    if not dates:
        raise ExportError(
            f"Didomi export {base}: no date=YYYY-MM-DD partition with a {SUCCESS_MARKER} marker yet; the first "
            "daily export may still be running (retry later), or the path names the wrong export id",
            retryable=True,
        )
    return dates[-1]


def iter_export_users(
    base: str, date: str | None = None, batch_size: int = 1000, stats: ExportStats | None = None
) -> Iterator[list[dict[str, Any]]]:
    """The users of one complete export date, in batches of ``batch_size`` (the API pull's page shape).

    Each line's ``events`` are dropped (the sync reads the latest state). A line that is not a JSON user object
    stops the read with the file and line number: skipping it would drop a person without a trace.
    """
    chosen = resolve_date(base, date)
    users_dir = storage_path(base) / f"date={chosen}" / "users"
    files = sorted((p for p in users_dir.iterdir() if p.name.endswith(".json.gz")), key=lambda p: p.name)
    if stats is not None:
        stats.path, stats.date = f"{base}/date={chosen}", chosen
    log.info("reading Didomi's batch export %s/date=%s: %d file(s)", base, chosen, len(files))
    batch: list[dict[str, Any]] = []
    for path in files:
        if stats is not None:
            stats.files += 1
        with path.open("rb") as raw, gzip.open(raw) as unzipped:
            for number, line in enumerate(io.TextIOWrapper(unzipped, encoding="utf-8"), start=1):
                if not line.strip():
                    continue
                try:
                    user = json.loads(line)
                except ValueError as err:
                    raise ExportError(f"Didomi export {path}, line {number}: not JSON ({err})") from None
                if not isinstance(user, dict) or "id" not in user:
                    raise ExportError(f"Didomi export {path}, line {number}: not a user object (no id)")
                user.pop("events", None)
                batch.append(user)
                if stats is not None:
                    stats.lines += 1
                if len(batch) >= batch_size:
                    yield batch
                    batch = []
    if batch:
        yield batch


__all__ = ["ExportError", "ExportStats", "complete_dates", "iter_export_users", "resolve_date"]
