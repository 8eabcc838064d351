"""Pull Didomi consent users changed in a window, flattened into one row per user.

The API cannot filter users by ``updated_at``, so the scan walks the whole cursor and keeps the window client-side,
building the frame page by page (memory stays bounded). Users with no readable ``updated_at`` are kept: a needless
re-sync costs less than a consent never synced.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import pandas as pd

from airflow_provider_didomi_dynamics.core.coerce import utc_or_none
from airflow_provider_didomi_dynamics.core.progress import Progress
from airflow_provider_didomi_dynamics.core.windows import SyncWindow
from airflow_provider_didomi_dynamics.hooks.didomi import DidomiHook
from airflow_provider_didomi_dynamics.mapping.flatten import UserFrameBuilder
from airflow_provider_didomi_dynamics.sync.chunks import ChunkedUsers, ChunkRef
from airflow_provider_didomi_dynamics.sync.didomi_export import ExportStats, iter_export_users

log = logging.getLogger(__name__)


def pull_consents(
    hook: DidomiHook,
    window: SyncWindow | None,
    *,
    organization_user_ids: Sequence[str] = (),
    page_size: int = 100,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The flattened users of ``window`` (or just ``organization_user_ids``, window ignored) and the pull report.

    The report (XCom ``pull_report``) counts what was scanned and kept, and names the window and why it was chosen.
    """
    builder = UserFrameBuilder()
    stats = _scan(hook, window, organization_user_ids, page_size, builder)
    frame = builder.to_frame()
    missing_key = int(frame["organization_user_id"].isna().sum()) if len(frame) else 0
    return frame, _finish(hook, stats, len(frame), missing_key)


def pull_consents_to_chunks(
    hook: DidomiHook,
    window: SyncWindow | None,
    folder: str,
    *,
    chunk_rows: int,
    organization_user_ids: Sequence[str] = (),
    page_size: int = 100,
) -> tuple[list[ChunkRef], dict[str, Any]]:
    """The same pull, streamed into Parquet chunk files under ``folder``: memory holds one chunk, XCom the refs."""
    sink = ChunkedUsers(folder, chunk_rows)
    stats = _scan(hook, window, organization_user_ids, page_size, sink)
    refs = sink.finish()
    stats.update(chunks=len(refs), chunk_rows=chunk_rows, duplicates_across_chunks=sink.duplicates_across_chunks)
    return refs, _finish(hook, stats, sink.rows_written, sink.without_key)


def pull_export_to_chunks(
    base: str, folder: str, *, chunk_rows: int, date: str | None = None
) -> tuple[list[ChunkRef], dict[str, Any]]:
    """A full sync read from Didomi's daily batch export instead of the API (``sync/didomi_export.py``): the same
    chunks and the same report shape, no API request."""
    started = time.monotonic()
    sink = ChunkedUsers(folder, chunk_rows)
    read = ExportStats(base, date or "")
    progress = Progress("pull_consents", log, unit="users read from the export")
    for batch in iter_export_users(base, date, stats=read):
        sink.add_users(batch)
        progress.set(read.lines)
    refs = sink.finish()
    stats: dict[str, Any] = {
        "source": "didomi_export",
        "export": {"path": read.path, "date": read.date, "files": read.files},
        "window": {"why": f"full sync from Didomi's batch export of {read.date}"},
        "scanned": read.lines,
        "kept": read.lines,
        "pages": 0,
        "no_updated_at": 0,
        "rows": sink.rows_written,
        "without_organization_user_id": sink.without_key,
        "chunks": len(refs),
        "chunk_rows": chunk_rows,
        "duplicates_across_chunks": sink.duplicates_across_chunks,
        "http_requests": 0,
        "throttled_429": 0,
        "seconds": round(time.monotonic() - started, 3),
    }
    log.info(
        "read %d Didomi user(s) from the export of %s (%d file(s)) into %d chunk(s), %.1fs",
        read.lines,
        read.date,
        read.files,
        len(refs),
        stats["seconds"],
    )
    return refs, stats


def _scan(
    hook: DidomiHook, window: SyncWindow | None, organization_user_ids: Sequence[str], page_size: int, sink: Any
) -> dict[str, Any]:
    """Feed the users of the window (or the targeted ones) into ``sink`` page by page; the counts."""
    started = time.monotonic()
    stats: dict[str, Any] = {"scanned": 0, "kept": 0, "pages": 0, "no_updated_at": 0, "started": started}
    if organization_user_ids:
        targeted = list(organization_user_ids)
        found = hook.get_users(targeted)
        sink.add_users(found[i] for i in targeted if i in found)
        stats.update(scanned=len(found), kept=len(found), missing=[i for i in targeted if i not in found])
        stats["window"] = {"why": f"targeted re-sync of {len(targeted)} organization user id(s)"}
        if stats["missing"]:
            log.warning("%d organization user id(s) have no Didomi user", len(stats["missing"]))
        return stats
    window = window or SyncWindow(None, None, "everything")
    since, until = window.start, window.end
    stats["window"] = {
        "since": since.isoformat() if since else None,
        "until": until.isoformat() if until else None,
        "why": window.source,
    }
    if window.is_full:
        log.info("pulling every Didomi user (%s)", window.source)
    else:
        log.info("pulling Didomi users with updated_at in %s", window.describe())
    progress = Progress("pull_consents", log, unit="users scanned", throttled=lambda: hook.throttled_429)
    for page in hook.iter_users(page_size):
        stats["pages"] += 1
        stats["scanned"] += len(page)
        kept = page if window.is_full else _in_window(page, window, stats)
        sink.add_users(kept)
        stats["kept"] += len(kept)
        progress.set(stats["scanned"], f"{stats['kept']:,} kept")
    return stats


def _finish(hook: DidomiHook, stats: dict[str, Any], rows: int, missing_key: int) -> dict[str, Any]:
    started = stats.pop("started")
    stats.update(
        rows=rows,
        without_organization_user_id=missing_key,
        http_requests=hook.http_requests,
        throttled_429=hook.throttled_429,
        seconds=round(time.monotonic() - started, 3),
    )
    log.info(
        "pulled %d of %d scanned Didomi user(s) in %d page(s), %d without organization_user_id, %.1fs",
        stats["kept"],
        stats["scanned"],
        stats["pages"],
        stats["without_organization_user_id"],
        stats["seconds"],
    )
    return stats


def _in_window(page: list[Any], window: SyncWindow, stats: dict[str, Any]) -> list[Any]:
    """The users of one page inside ``window``; those without a readable ``updated_at`` are kept and counted."""
    kept = []
    for user in page:
        updated = utc_or_none(user.get("updated_at")) if isinstance(user, dict) else None
        if updated is None:
            stats["no_updated_at"] += 1
            kept.append(user)
        elif window.contains(updated):
            kept.append(user)
    return kept
