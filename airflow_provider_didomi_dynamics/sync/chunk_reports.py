"""One run report from the reports of a run's mapped chunk pushes, and the run's retry queue written once.

Each chunk push leaves ``report-<n>.json`` (its XCom report) and ``failed-<n>.json`` (every row it could not write)
in the run's chunk folder. The last task of the run adds the counts up, merges the reasons, lists the first failed
and skipped rows of all chunks, and replaces the retry queue with every chunk's failed rows, once; a chunk that never
finished leaves its rows in its chunk file (kept for a cleared task) and, if it was the chunk that took the queue,
the queue's rows stay queued.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

from airflow_provider_didomi_dynamics.core.report import LISTED_ROWS, REASON_GROUPS, Outcome
from airflow_provider_didomi_dynamics.sync.chunks import ChunkRef, read_json, remove_folder
from airflow_provider_didomi_dynamics.sync.retry_queue import RetryQueue

log = logging.getLogger(__name__)

KEEP_CHUNKS_ENV = "DIDOMI_DYNAMICS_KEEP_CHUNKS"
_PER_CHUNK = ("rows_file", "rows_listed", "chunk", "retry_queue", "raised")
_SUMMED = ("total", "http_requests", "throttled_429", "retried_from_earlier_runs", "contacts_created")


def report_name(index: int) -> str:
    return f"report-{index:05d}.json"


def failed_name(index: int) -> str:
    return f"failed-{index:05d}.json"


def forget_chunk_outcome(chunk: ChunkRef) -> None:
    """Remove what an earlier try of this chunk's push left: the report task must see this try's outcome only."""
    for name in (report_name(chunk.index), failed_name(chunk.index)):
        path = chunk.path(name)
        if path.exists():
            path.unlink()


def merge_reports(reports: Sequence[Mapping[str, Any]], operation: str = "push_contacts") -> dict[str, Any]:
    """The run's report: counts and reasons added up across chunks, the first rows of each list, every rows file."""
    counts = {o.value: sum(int(r.get("counts", {}).get(o.value, 0)) for r in reports) for o in Outcome}
    total = sum(int(r.get("total", 0)) for r in reports)
    parts = ", ".join(f"{n} {name}" for name, n in counts.items() if n)
    dry_run = any(bool(r.get("dry_run")) for r in reports)
    merged: dict[str, Any] = {
        "summary": f"{operation}: {total} row(s): {parts or 'nothing to do'}"
        + (" (dry run)" if dry_run else "")
        + (f" in {len(reports)} chunks" if len(reports) > 1 else ""),
        "operation": operation,
        "dry_run": dry_run,
        "chunks": len(reports),
        "counts": counts,
        "seconds": max((float(r.get("seconds", 0)) for r in reports), default=0.0),
        "failed_by_reason": _merge_groups([g for r in reports for g in r.get("failed_by_reason", [])]),
        "skipped_by_reason": _merge_groups([g for r in reports for g in r.get("skipped_by_reason", [])]),
        "failed": [row for r in reports for row in r.get("failed", [])][:LISTED_ROWS],
        "skipped": [row for r in reports for row in r.get("skipped", [])][:LISTED_ROWS],
        "sample_changes": [row for r in reports for row in r.get("sample_changes", [])][:20],
    }
    for name in _SUMMED:
        if any(name in r for r in reports):
            merged[name] = sum(int(r.get(name) or 0) for r in reports)
    plans = [r["plan"] for r in reports if isinstance(r.get("plan"), Mapping)]
    if plans:
        merged["plan"] = {k: sum(int(p.get(k) or 0) for p in plans) for k in dict.fromkeys(k for p in plans for k in p)}
    warnings = [w for r in reports for w in r.get("warnings", [])]
    if warnings:
        merged["warnings"] = warnings[:LISTED_ROWS]
    for name in dict.fromkeys(k for r in reports for k in r):  # the engine's extras (retried_keys, window, ...)
        if name in merged or name in _PER_CHUNK:
            continue
        values = [r[name] for r in reports if name in r]
        if all(isinstance(v, list) for v in values):
            merged[name] = [item for v in values for item in v][:LISTED_ROWS]
        elif all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            merged[name] = sum(values)
        else:
            merged[name] = values[0]  # the same for every chunk of a run
    files = [r["rows_file"] for r in reports if r.get("rows_file")]
    if files:
        merged["rows_files"] = files
    listed = [r for r in reports if r.get("rows_listed")]
    if listed or (len(reports) > 1 and files):
        merged["rows_listed"] = f"the first {LISTED_ROWS} failed and skipped rows; every row is in rows_file"
    return merged


def _merge_groups(groups: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Reason groups of several chunks as one list, the largest first (at most ``REASON_GROUPS``)."""
    by_reason: dict[str, dict[str, Any]] = {}
    for group in groups:
        reason = str(group.get("reason"))
        into = by_reason.setdefault(reason, {"reason": reason, "rows": 0, "sample": []})
        into["rows"] += int(group.get("rows", 0))
        into["sample"] = [*into["sample"], *group.get("sample", [])][:5]
    ordered = sorted(by_reason.values(), key=lambda g: -g["rows"])
    if len(ordered) <= REASON_GROUPS:
        return ordered
    rest = ordered[REASON_GROUPS:]
    others = {"reason": f"{len(rest)} other reason(s)", "rows": sum(g["rows"] for g in rest), "sample": []}
    return [*ordered[:REASON_GROUPS], others]


def settle_run(
    chunks: Sequence[Mapping[str, Any]], operation: str = "push_contacts"
) -> tuple[dict[str, Any], list[int]]:
    """Merge the chunk reports, write the retry queue once, remove the chunk folder when every chunk finished.

    Returns the merged report and the indexes of the chunks that never finished (their task failed).
    """
    refs = [ChunkRef.from_xcom(c) for c in chunks]
    reports: list[dict[str, Any]] = []
    unfinished: list[int] = []
    failed_rows: list[dict[str, Any]] = []
    queue_keys: set[str] = set()
    for ref in refs:
        report = _read(ref, report_name(ref.index))
        if report is None:
            unfinished.append(ref.index)
            continue
        reports.append(report)
        failed_rows.extend(_read(ref, failed_name(ref.index)) or [])
        if report.get("retry_queue"):
            queue_keys.add(str(report["retry_queue"]))
    merged = merge_reports(reports, operation)
    merged["chunks"] = len(refs)
    raised = [f"chunk {r.get('chunk')}: {r['raised']}" for r in reports if r.get("raised")]
    if raised:
        merged["raised_by_chunk"] = raised
    if unfinished:
        merged["unfinished_chunks"] = unfinished
    for key in queue_keys:  # one queue per (DAG, task, target); every finished chunk names the same one
        queue = RetryQueue(key)
        kept = queue.read() if 0 in unfinished else []  # chunk 0 took the queue: without it, nothing was retried
        queue.replace([*kept, *failed_rows])
    merged["failed_rows_sample"] = failed_rows[:LISTED_ROWS]  # the operator moves it to XCom failed_rows
    if refs and not unfinished and not raised and not keep_chunks():
        remove_folder(refs[0].folder)
    return merged, unfinished


def keep_chunks() -> bool:
    """``DIDOMI_DYNAMICS_KEEP_CHUNKS=1`` keeps a successful run's chunk files too, to look at what each task saw."""
    return os.environ.get(KEEP_CHUNKS_ENV, "").strip().lower() in ("1", "true", "yes")


def _read(ref: ChunkRef, name: str) -> Any:
    path = ref.path(name)
    try:
        if not path.exists():
            return None
        return read_json(path)
    except (OSError, ValueError) as err:
        log.warning("could not read %s: %s", path, err)
        return None


__all__ = [
    "KEEP_CHUNKS_ENV",
    "failed_name",
    "forget_chunk_outcome",
    "keep_chunks",
    "merge_reports",
    "report_name",
    "settle_run",
]
