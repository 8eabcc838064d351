"""Rows a push could not write, kept until a later run writes them: the "no row is ever silently dropped" promise.

The queue lives in an Airflow Variable, not in the run's XCom: a run triggered by hand or through the REST API may
have no logical date, and XComs of earlier runs are only found by logical date. One queue per DAG, task (and map
index) and target system, so a connection pointed at another org never receives the rows meant for the first one.

A run reads the queue when it starts and replaces it with its own failures when it ends; a run that dies in between
leaves the queue as it was, so the next run retries everything again (both pushes are idempotent).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from typing import Any

from airflow_provider_didomi_dynamics.core.coerce import json_value
from airflow_provider_didomi_dynamics.core.report import LISTED_ROWS

log = logging.getLogger(__name__)

VARIABLE_PREFIX = "didomi_dynamics_retry"
FAILED_ROWS_XCOM_KEY = "failed_rows"


def queue_key(dag_id: str, task_id: str, target: str, map_index: int = -1) -> str:
    """The Variable that holds one task's pending rows for one target (an org URL, an organization id)."""
    digest = hashlib.sha256(target.encode()).hexdigest()[:12]
    mapped = f".{map_index}" if map_index is not None and map_index >= 0 else ""
    return f"{VARIABLE_PREFIX}.{dag_id}.{task_id}{mapped}.{digest}"


def plain_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows as JSON values only (what XCom and the queue hold): numpy scalars, timestamps and NaN converted."""
    return [json_value(dict(row)) for row in rows]


class RetryQueue:
    """The pending rows of one push task for one target, read at the start of a run and replaced at its end."""

    def __init__(self, key: str) -> None:
        self.key = key

    @classmethod
    def for_task(cls, ti: Any, target: str, *, mapped: bool = True, task_id: str | None = None) -> RetryQueue | None:
        """The queue of the task instance ``ti``; None when not running as an Airflow task (no Variables there).

        ``mapped`` False: one queue for every map index of the task (a push mapped over a run's chunks, whose
        number changes from run to run); ``task_id`` names the queue after another task (the run's report task,
        which a person knows), instead of ``ti``'s.
        """
        dag_id, task_id = getattr(ti, "dag_id", None), task_id or getattr(ti, "task_id", None)
        if not isinstance(dag_id, str) or not isinstance(task_id, str):
            return None
        map_index = getattr(ti, "map_index", -1) if mapped else -1
        return cls(queue_key(dag_id, task_id, target, map_index if isinstance(map_index, int) else -1))

    def read(self) -> list[dict[str, Any]]:
        """The rows earlier runs left; an unreadable queue is reported and treated as empty (never fatal)."""
        from airflow.sdk import Variable

        try:
            text = Variable.get(self.key, default=None)
        except Exception as err:  # the API server is down or the Variable vanished: the push itself can go on
            log.warning("could not read the retry queue %s (%s); earlier failures are not retried now", self.key, err)
            return []
        if not text:
            return []
        try:
            rows = json.loads(text)
        except ValueError:
            log.warning("the retry queue %s is not JSON; ignoring it", self.key)
            return []
        if not isinstance(rows, list):
            return []
        kept = [row for row in rows if isinstance(row, dict)]
        if kept:
            log.info("retrying %d row(s) that earlier runs could not write (Variable %s)", len(kept), self.key)
        return kept

    def replace(self, rows: Sequence[dict[str, Any]]) -> None:
        """Keep exactly ``rows`` for the next run (an empty list empties the queue)."""
        from airflow.sdk import Variable

        if not rows:
            if Variable.get(self.key, default=None) is not None:
                Variable.delete(self.key)
            return
        text = json.dumps(plain_rows(rows), ensure_ascii=False, separators=(",", ":"))
        Variable.set(
            self.key,
            text,
            description=f"{len(rows)} row(s) a push could not write; the next run of the task retries them",
        )
        log.info("%d row(s) kept for the next run in Variable %s", len(rows), self.key)


def forget_retry_queues() -> int:
    """Delete every retry queue from the metadata database; returns how many there were.

    For a fresh start against new systems (tests, the demo): from a task, use ``RetryQueue.replace([])``.
    """
    from airflow.models.variable import Variable as VariableModel
    from airflow.utils.session import create_session
    from sqlalchemy import delete

    with create_session() as session:
        result = session.execute(delete(VariableModel).where(VariableModel.key.like(f"{VARIABLE_PREFIX}.%")))
        return int(getattr(result, "rowcount", 0) or 0)


def hand_over(ti: Any, queue: RetryQueue | None, rows: Sequence[dict[str, Any]]) -> None:
    """The rows a run could not write: the queue for the next run (all of them), XCom ``failed_rows`` for people to
    read (the first ``LISTED_ROWS``: XCom stays small; the report's rows file lists every failed row)."""
    plain = plain_rows(rows)
    ti.xcom_push(key=FAILED_ROWS_XCOM_KEY, value=plain[:LISTED_ROWS])
    if queue is not None:
        queue.replace(plain)
