"""Didomi operators: pull consent users into a flattened frame, push consent changes from Dynamics back as events.

Thin: arguments -> hook -> one call of ``sync.pull_consents`` / ``sync.push_consents`` -> XCom, return or raise.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
from airflow.sdk import BaseOperator, Context

from airflow_provider_didomi_dynamics.core.coerce import flag, guid_list, id_list
from airflow_provider_didomi_dynamics.core.config import load_config
from airflow_provider_didomi_dynamics.core.report import RunReport, enforce_failure_threshold
from airflow_provider_didomi_dynamics.core.windows import DEFAULT_LOOKBACK, SyncWindow, resolve_window
from airflow_provider_didomi_dynamics.hooks.didomi import DidomiHook
from airflow_provider_didomi_dynamics.operators.fail_fast import fails_fast
from airflow_provider_didomi_dynamics.sync.chunks import chunk_rows_setting, run_folder
from airflow_provider_didomi_dynamics.sync.pull_consents import (
    pull_consents,
    pull_consents_to_chunks,
    pull_export_to_chunks,
)
from airflow_provider_didomi_dynamics.sync.push_consents import ConsentPushOptions, push_consents
from airflow_provider_didomi_dynamics.sync.retry_queue import RetryQueue, hand_over
from airflow_provider_didomi_dynamics.sync.rows_file import write_rows_file
from airflow_provider_didomi_dynamics.transport.retry import RetryPolicy

__all__ = ["DidomiPullConsentsOperator", "DidomiPushConsentsOperator"]


class DidomiPullConsentsOperator(BaseOperator):
    """Pull Didomi consent users changed in a window and return them flattened (one row per user).

    Window, first match wins (``windows.resolve_window``, shared with the Dataverse pull): ``full_sync``
    (everything); templated ``since`` / ``until`` (either may be open); the run's data interval [start, end);
    when the interval is empty or missing (a manual run, a trigger timetable), from the previous successful run's
    interval end; otherwise the last ``lookback`` (``lookback=None``: everything, a first full sync).
    ``organization_user_ids`` pulls just those users (a targeted re-sync, window ignored).
    Users with no readable ``updated_at`` are kept (a needless re-sync costs less than a consent never synced).

    :param didomi_conn_id: a ``didomi`` connection.
    :param page_size: users per request (the API's maximum is 100).
    :param http_retry_policy: the HTTP retry policy of the hook (default: the shared one); Airflow's own
        ``retry_policy`` for task retries is left to BaseOperator.
    :param chunked: write the users as Parquet chunks under object storage (``sync/chunks.py``) and return a list
        of chunk refs, for mapping and push tasks mapped over them (``.expand``); memory and XCom hold one chunk at
        most. Default False: return the whole frame.
    :param chunk_rows: users per chunk (default ``DIDOMI_DYNAMICS_CHUNK_ROWS``, else 50,000).
    :param export_path: Didomi's daily batch export (an ``ObjectStoragePath`` URL down to ``export-id=<id>``): a
        full sync (``full_sync``, chunked) reads its newest complete date instead of paging the API; windowed and
        targeted runs still use the API. Empty: the API always.
    """

    template_fields: Sequence[str] = (
        "since",
        "until",
        "full_sync",
        "organization_user_ids",
        "didomi_conn_id",
        "chunk_rows",
        "export_path",
    )
    ui_color = "#fde9d9"

    def __init__(
        self,
        *,
        didomi_conn_id: str = DidomiHook.default_conn_name,
        since: Any = None,
        until: Any = None,
        full_sync: Any = False,
        organization_user_ids: Any = None,
        page_size: int = 100,
        lookback: dt.timedelta | None = DEFAULT_LOOKBACK,
        http_retry_policy: RetryPolicy | None = None,
        chunked: bool = False,
        chunk_rows: int | str | None = None,
        export_path: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.export_path = export_path
        self.chunked = chunked
        self.chunk_rows = chunk_rows
        self.didomi_conn_id = didomi_conn_id
        self.lookback = lookback
        self.http_retry_policy = http_retry_policy
        self.since = since
        self.until = until
        self.full_sync = full_sync
        self.organization_user_ids = organization_user_ids
        self.page_size = page_size

    def make_hook(self) -> DidomiHook:
        return DidomiHook(self.didomi_conn_id, retry_policy=self.http_retry_policy)

    def resolve_window(self, context: Mapping[str, Any]) -> SyncWindow:
        """The [start, end) window of ``updated_at`` to keep (shared rules of ``windows.resolve_window``)."""
        window = resolve_window(
            context,
            since=self.since,
            until=self.until,
            full_sync=flag(self.full_sync, "full_sync"),
            lookback=self.lookback or DEFAULT_LOOKBACK,
        )
        if self.lookback is None and window.source.startswith("lookback"):
            return SyncWindow(None, None, "no data interval and no previous successful run: full scan")
        return window

    @fails_fast
    def execute(self, context: Context) -> pd.DataFrame | list[dict[str, Any]]:
        targeted = id_list(self.organization_user_ids)
        window = None if targeted else self.resolve_window(context)
        ti = context.get("ti")
        hook = self.make_hook()
        try:
            if self.chunked:
                folder = run_folder(ti.dag_id, ti.run_id, "chunks") if ti is not None else run_folder("-", "-", "-")
                rows = chunk_rows_setting(self.chunk_rows)
                from_export = bool(self.export_path) and not targeted and window is not None and window.is_full
                refs, stats = (
                    pull_export_to_chunks(str(self.export_path), folder, chunk_rows=rows)
                    if from_export
                    else pull_consents_to_chunks(
                        hook, window, folder, chunk_rows=rows, organization_user_ids=targeted, page_size=self.page_size
                    )
                )
                result: pd.DataFrame | list[dict[str, Any]] = [ref.to_xcom() for ref in refs]
            else:
                result, stats = pull_consents(hook, window, organization_user_ids=targeted, page_size=self.page_size)
        finally:
            hook.close()
        if ti is not None:
            ti.xcom_push(key="pull_report", value=stats)
        return result


class DidomiPushConsentsOperator(BaseOperator):
    """Send consent changes that came from Dynamics to Didomi as consent events; return the run report.

    For each row of the reverse-mapped frame (``events``): read the user's current Didomi state, keep only the
    fields that differ (``changed_fields``), and send one event with a deterministic id (a re-run never
    duplicates) and ``$disable_integrations=true`` (Didomi does not echo the change back to Dynamics).

    Conflict rule (``sync/conflicts.py``): when the Didomi user's ``updated_at`` is later than the contact's
    ``modifiedon``, the user's event history says which fields Didomi changed after the contact; those keep
    Didomi's value (the forward sync carries it to Dynamics) and the other changed fields are sent. A row left with
    nothing to send is skipped with reason "Didomi changed later". Failed rows wait in the task's retry queue
    (``sync/retry_queue.py``) and the next run resends them. Rows without ``organization_user_id`` are skipped; when two
    rows share an ``organization_user_id`` the one with the newest ``modifiedon`` is sent and the other skipped.

    After everything that can be sent was sent, the task fails when more than ``failure_threshold_rows`` rows or
    more than ``failure_threshold_percent`` % of rows failed (the report is pushed to XCom ``report`` first).
    ``dry_run`` plans and reports without sending anything.

    :param config: optional integration config; its mappings name preference ids that contain ``_``.
    :param deleted_ids: rows deleted in Dynamics (the live trigger reports them): each is reported skipped,
        "deleted in Dynamics", and never turned into a Didomi opt-out (a deleted contact withdrew nothing).
    """

    template_fields: Sequence[str] = (
        "events",
        "deleted_ids",
        "is_dry_run",
        "failure_threshold_rows",
        "failure_threshold_percent",
        "didomi_conn_id",
    )
    ui_color = "#fde9d9"

    def __init__(
        self,
        *,
        events: Any,
        didomi_conn_id: str = DidomiHook.default_conn_name,
        config: Any = None,
        dry_run: Any = False,
        failure_threshold_rows: int | None = None,
        failure_threshold_percent: float | None = None,
        disable_integrations: bool = True,
        http_retry_policy: RetryPolicy | None = None,
        deleted_ids: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.deleted_ids = deleted_ids
        self.http_retry_policy = http_retry_policy
        self.events = events
        self.didomi_conn_id = didomi_conn_id
        self.config = config
        self.is_dry_run = dry_run  # BaseOperator.dry_run is a method: keep the flag under another name
        self.failure_threshold_rows = failure_threshold_rows
        self.failure_threshold_percent = failure_threshold_percent
        self.disable_integrations = disable_integrations

    def make_hook(self) -> DidomiHook:
        return DidomiHook(self.didomi_conn_id, retry_policy=self.http_retry_policy)

    @fails_fast
    def execute(self, context: Context) -> dict[str, Any]:
        options = ConsentPushOptions(
            dry_run=flag(self.is_dry_run, "dry_run"), disable_integrations=self.disable_integrations
        )
        config = load_config(self.config) if self.config is not None else None
        hook = self.make_hook()
        ti = context.get("ti")
        queue = None
        if ti is not None:
            organization = hook.organization_id  # reads the connection, which also sets base_url
            queue = RetryQueue.for_task(ti, f"{hook.base_url}/{organization}")
        try:
            queued = queue.read() if queue is not None else []
            deleted = guid_list(self.deleted_ids, "deleted_ids")
            report = push_consents(hook, self.events, config, options, retry_rows=queued, deleted_ids=deleted)
        finally:
            hook.close()
        if ti is not None and not options.dry_run:
            hand_over(ti, queue, report.retry_rows)
        result = report.as_dict(rows_file=write_rows_file(report, ti))
        if ti is not None:  # the XCom list shows a string as it is: the one line a person reads first
            ti.xcom_push(key="summary", value=result["summary"])
        self.check_threshold(report, result, ti)
        return result

    def check_threshold(self, report: RunReport, result: dict[str, Any], ti: Any) -> None:
        enforce_failure_threshold(
            report,
            result,
            ti,
            self.failure_threshold_rows,
            self.failure_threshold_percent,
            "every other event was sent",
        )
