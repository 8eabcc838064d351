"""Every row of a run report as JSON lines under object storage, so the XCom report stays small at any size.

The report in XCom lists a few rows per reason; the file holds each row with its outcome, reason and changes.
Where it goes: ``DIDOMI_DYNAMICS_REPORT_PATH`` (any ``ObjectStoragePath`` URL: ``s3://conn_id@bucket/reports``,
``gs://``, ``abfs://``, ``file://``), else ``file://$AIRFLOW_HOME/didomi_dynamics/reports``. One file per task try:
``<dag_id>/<run_id>/<task_id>[.<map_index>].try<n>.jsonl``, so a re-run never overwrites what a person is reading.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any

from airflow_provider_didomi_dynamics.core.report import RunReport

log = logging.getLogger(__name__)

REPORT_PATH_ENV = "DIDOMI_DYNAMICS_REPORT_PATH"
_UNSAFE = re.compile(r"[^A-Za-z0-9._=-]+")


def report_base() -> Any:
    """The folder every rows file goes under, as an ``ObjectStoragePath``."""
    from airflow.sdk import ObjectStoragePath

    configured = os.environ.get(REPORT_PATH_ENV, "").strip()
    if configured:
        return ObjectStoragePath(configured)
    home = os.path.expanduser(os.environ.get("AIRFLOW_HOME") or "~/airflow")
    return ObjectStoragePath(f"file://{os.path.abspath(home)}/didomi_dynamics/reports")


def _task_file(ti: Any) -> Any:
    """``<dag_id>/<run_id>/<task_id>[.<map_index>].try<n>.jsonl`` under the base, or None without a task instance."""
    dag_id, run_id, task_id = (getattr(ti, name, None) for name in ("dag_id", "run_id", "task_id"))
    if not (isinstance(dag_id, str) and isinstance(run_id, str) and isinstance(task_id, str)):
        return None
    map_index = getattr(ti, "map_index", -1)
    mapped = f".{map_index}" if isinstance(map_index, int) and map_index >= 0 else ""
    name = f"{task_id}{mapped}.try{getattr(ti, 'try_number', 1)}.jsonl"
    return report_base() / _UNSAFE.sub("_", dag_id) / _UNSAFE.sub("_", run_id) / name


def join_rows_files(sources: list[str], ti: Any) -> str | None:
    """One rows file for a run pushed in chunks: the chunks' files one after another, streamed line by line."""
    from airflow.sdk import ObjectStoragePath

    if not sources:
        return None
    try:
        path = _task_file(ti)
        if path is None:
            return None
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8") as out:
            for source in sources:
                with ObjectStoragePath(source).open("r", encoding="utf-8") as lines:
                    for line in lines:
                        out.write(line)
    except Exception as err:  # the chunk files stay where the chunk reports name them
        log.warning("could not join the chunks' rows files (%s): %s", ", ".join(sources), err)
        return None
    log.info("every row of the run, with its outcome and reason: %s", path)
    return str(path)


def write_rows_file(report: RunReport, ti: Any) -> str | None:
    """Write every row of ``report`` for task instance ``ti``; the file's URL, or None without a task instance.

    A storage failure is logged, not raised: the rows were written to Dataverse or Didomi already and the XCom
    report still counts each of them.
    """
    if not report.rows:
        return None
    try:
        path = _task_file(ti)
        if path is None:
            return None
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8") as stream:
            stream.writelines(report.rows_lines())
    except Exception as err:  # the sync is done; a missing file must not undo it
        log.warning("could not write the report's rows file under %s: %s", os.environ.get(REPORT_PATH_ENV), err)
        return None
    log.info("every row of the report, with its outcome and reason: %s", path)
    return str(path)
