"""Dataverse operators: push contacts, pull the ones people changed. Thin: arguments -> hook -> one sync call.

The engines are ``sync.push_contacts`` and ``sync.pull_contacts``; here live the template fields, the retry queue
hand-over, XCom and what makes the task fail.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
from airflow.sdk import BaseOperator, TriggerRule
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from airflow_provider_didomi_dynamics.core.coerce import flag, guid_list
from airflow_provider_didomi_dynamics.core.config import IntegrationConfig, Target, load_config
from airflow_provider_didomi_dynamics.core.report import Outcome, RunReport, enforce_failure_threshold
from airflow_provider_didomi_dynamics.core.windows import DEFAULT_LOOKBACK, SyncWindow, resolve_window
from airflow_provider_didomi_dynamics.hooks.dataverse import DataverseHook
from airflow_provider_didomi_dynamics.hooks.didomi import DidomiHook
from airflow_provider_didomi_dynamics.operators.fail_fast import fails_fast
from airflow_provider_didomi_dynamics.sync.chunk_reports import (
    failed_name,
    forget_chunk_outcome,
    report_name,
    settle_run,
)
from airflow_provider_didomi_dynamics.sync.chunks import (
    SUPERSEDED_BY_OTHER_CHUNK,
    SUPERSEDED_IN_OTHER_CHUNK,
    ChunkRef,
    is_chunk_ref,
    read_frame,
    superseded_by_other_chunks,
    write_json,
)
from airflow_provider_didomi_dynamics.sync.pull_contact_point_consent import pull_consent_changes
from airflow_provider_didomi_dynamics.sync.pull_contacts import pull_contacts
from airflow_provider_didomi_dynamics.sync.push_contact_point_consent import push_contact_point_consents_for
from airflow_provider_didomi_dynamics.sync.push_contacts import PushOptions, push_contacts
from airflow_provider_didomi_dynamics.sync.retry_queue import FAILED_ROWS_XCOM_KEY, RetryQueue, hand_over, plain_rows
from airflow_provider_didomi_dynamics.sync.rows_file import join_rows_files, write_rows_file


class DataversePushContactsOperator(BaseOperator):
    """Write Didomi consent to Dataverse contacts: changed rows and changed columns only, at bulk speed.

    ``contacts`` is the forward-mapped frame (``organization_user_id``, ``updated_at``, one column per contact
    attribute), usually an upstream task's output. Failed rows go to XCom ``failed_rows`` and to the task's retry
    queue (an Airflow Variable, see ``sync/retry_queue.py``); the next run, scheduled or triggered by hand, merges them
    back in (``retry_previous_failures``, on by default), or takes them through ``retry_rows`` instead. A fresh row
    for the same key wins over an older failed one. Returns the run report (``RunReport("push_contacts").as_dict()``).

    Options: ``batch_size`` (records per bulk request), ``max_parallelism`` (cap on the writers; the org's
    ``x-ms-dop-hint`` decides below it), ``bypass_business_logic`` / ``bypass_flows`` (the documented headers; the
    application user needs the privilege), ``dry_run`` (plan only: counts and a sample of the changes),
    ``failure_threshold_rows`` / ``failure_threshold_percent`` (after writing everything, fail the task when more
    rows failed), ``use_alternate_key`` (None: UpsertMultiple by key when an Active alternate key exists on the key
    attribute, else CreateMultiple after a re-lookup), ``didomi_conn_id`` (turns on the per-field conflict rule:
    Didomi's event history decides, for a contact a person changed before Didomi's latest update, which side changed
    each two-way field last; see ``sync/conflicts.py``).
    """

    template_fields: Sequence[str] = (
        "contacts",
        "retry_rows",
        "config",
        "dataverse_conn_id",
        "is_dry_run",
        "batch_size",
        "max_parallelism",
        "failure_threshold_rows",
        "failure_threshold_percent",
        "bypass_business_logic",
        "bypass_flows",
        "didomi_conn_id",
    )
    ui_color = "#e3f2fd"

    def __init__(
        self,
        *,
        contacts: Any,
        config: Any = None,
        dataverse_conn_id: str | None = DataverseHook.default_conn_name,
        retry_rows: Any = None,
        retry_previous_failures: bool = True,
        batch_size: int | str = 1000,
        max_parallelism: int | str | None = None,
        bypass_business_logic: bool | str = False,
        bypass_flows: bool | str = False,
        dry_run: bool | str = False,
        failure_threshold_rows: int | str | None = None,
        failure_threshold_percent: float | str | None = None,
        use_alternate_key: bool | None = None,
        didomi_conn_id: str | None = None,
        settled_by: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.settled_by = settled_by
        self.didomi_conn_id = didomi_conn_id
        self.contacts = contacts
        self.config = config
        self.dataverse_conn_id = dataverse_conn_id
        self.retry_rows = retry_rows
        self.retry_previous_failures = retry_previous_failures
        self.batch_size = batch_size
        self.max_parallelism = max_parallelism
        self.bypass_business_logic = bypass_business_logic
        self.bypass_flows = bypass_flows
        self.is_dry_run = dry_run  # BaseOperator.dry_run is a method: keep the flag under another name
        self.failure_threshold_rows = failure_threshold_rows
        self.failure_threshold_percent = failure_threshold_percent
        self.use_alternate_key = use_alternate_key

    def make_hook(self, config: IntegrationConfig) -> DataverseHook:
        parallelism = int(self.max_parallelism) if self.max_parallelism else None
        return DataverseHook.for_config(self.dataverse_conn_id, config, max_parallelism=parallelism)

    @fails_fast
    def execute(self, context: Any) -> dict[str, Any]:
        config = load_config(self.config)
        options = PushOptions(
            batch_size=int(self.batch_size),
            max_parallelism=int(self.max_parallelism) if self.max_parallelism else None,
            bypass_business_logic=flag(self.bypass_business_logic, "bypass_business_logic"),
            bypass_flows=flag(self.bypass_flows, "bypass_flows"),
            dry_run=flag(self.is_dry_run, "dry_run"),
            use_alternate_key=self.use_alternate_key,
        )
        retry_rows = self.retry_rows
        ti = context.get("ti") if isinstance(context, Mapping) else None
        chunk = ChunkRef.from_xcom(self.contacts) if is_chunk_ref(self.contacts) else None
        if chunk is not None:
            forget_chunk_outcome(chunk)  # a cleared chunk that dies now must not look finished by its last try
        contacts = read_frame(chunk.path()) if chunk is not None else self.contacts
        hook = self.make_hook(config)
        queue = None
        superseded: list[str] = []
        if retry_rows is None and self.retry_previous_failures and ti is not None:
            # chunked: one queue for the whole mapped task, named after the report task that settles the run; the
            # first chunk takes it and the report task refills it
            queue = RetryQueue.for_task(
                ti, hook.settings.instance_url, mapped=chunk is None, task_id=self.settled_by if chunk else None
            )
            if queue is not None and (chunk is None or chunk.index == 0):
                retry_rows = queue.read()
                if chunk is not None and chunk.count > 1 and retry_rows:
                    retry_rows, superseded = superseded_by_other_chunks(retry_rows, chunk, contacts)
        if config.target is Target.CONTACT_POINT_CONSENT:
            try:
                report = push_contact_point_consents_for(hook, contacts, config, options, retry_rows=retry_rows)
            finally:
                hook.close()
        else:
            didomi = DidomiHook(self.didomi_conn_id) if self.didomi_conn_id else None
            try:
                history = didomi.event_histories if didomi is not None else None
                report = push_contacts(hook, contacts, config, options, retry_rows=retry_rows, event_history=history)
            finally:
                hook.close()
                if didomi is not None:
                    didomi.close()
        if superseded:  # queued rows this chunk took and settled: retried too, as the report counts them
            report.note_retried([*report.extra.get("retried_keys", []), *superseded])
        for key in superseded:
            report.add(key, Outcome.SKIPPED, SUPERSEDED_BY_OTHER_CHUNK)
        for key in chunk.exclude if chunk is not None else ():  # the mapping left them out: reported here, once
            report.add(key, Outcome.SKIPPED, SUPERSEDED_IN_OTHER_CHUNK)
        return self.finish(report, options, ti, queue, chunk)

    def finish(
        self, report: RunReport, options: PushOptions, ti: Any, queue: Any, chunk: ChunkRef | None = None
    ) -> dict[str, Any]:
        """Hand failed rows over, push the report, enforce the thresholds: the same for both targets.

        A chunk of a mapped push leaves its report and failed rows in the run's chunk folder instead: the run's
        last task merges them and writes the retry queue once (``sync/chunk_reports.py``).
        """
        if ti is not None and not options.dry_run:
            if chunk is None:
                hand_over(ti, queue, report.retry_rows)
            else:
                hand_over(ti, None, report.retry_rows)  # XCom failed_rows only
                write_json(plain_rows(report.retry_rows), chunk.path(failed_name(chunk.index)))
        result = report.as_dict(rows_file=write_rows_file(report, ti))
        if chunk is not None:
            result["chunk"] = chunk.index
            result["retry_queue"] = queue.key if queue is not None and not options.dry_run else None
            write_json(result, chunk.path(report_name(chunk.index)))
        if ti is not None:  # the XCom list shows a string as it is: the one line a person reads first
            ti.xcom_push(key="summary", value=result["summary"])
        try:
            self.check_threshold(report, result, ti)
            if report.unavailable and not options.dry_run:
                if ti is not None:
                    ti.xcom_push(key="report", value=result)
                raise AirflowException(
                    f"Dataverse did not answer for {report.counts['failed']} row(s) ({report.unavailable[0]}); "
                    "every other row was written, the failed ones are retried"
                )
        except AirflowException as err:
            if chunk is not None:  # the run's last task must know this chunk's task failed
                write_json({**result, "raised": str(err)}, chunk.path(report_name(chunk.index)))
            raise
        return result

    def check_threshold(self, report: RunReport, result: dict[str, Any], ti: Any) -> None:
        enforce_failure_threshold(
            report,
            result,
            ti,
            self.failure_threshold_rows,
            self.failure_threshold_percent,
            "every other row was written",
        )


class DataversePushReportOperator(BaseOperator):
    """The last task of a chunked forward run: one run report from every chunk's push, the retry queue written once.

    Runs when every chunk push is done, succeeded or not (``all_done``): it adds the chunk reports up (with the
    mapping reports of ``mapping_task_id``), replaces the retry queue with the failed rows of every chunk, removes the
    run's chunk files when all went well, and fails (without retries: a retry cannot change what the chunks did)
    when a chunk push failed, after its rows were handed over. Returns the run report, as an unchunked push does.
    """

    ui_color = "#e3f2fd"

    def __init__(
        self, *, chunks_task_id: str = "pull_consents", mapping_task_id: str = "apply_mapping", **kwargs: Any
    ) -> None:
        kwargs.setdefault("trigger_rule", TriggerRule.ALL_DONE)
        super().__init__(**kwargs)
        self.chunks_task_id = chunks_task_id
        self.mapping_task_id = mapping_task_id

    def execute(self, context: Any) -> dict[str, Any]:
        ti = context["ti"]
        chunks = ti.xcom_pull(task_ids=self.chunks_task_id)
        if not chunks:  # failing (not skipping) keeps the run failed: this task is its only leaf
            raise AirflowFailException(
                f"nothing was pushed: {self.chunks_task_id} left no chunks (it or a task before it failed; its log "
                "says why)"
            )
        merged, unfinished = settle_run(list(chunks))
        ti.xcom_push(key=FAILED_ROWS_XCOM_KEY, value=merged.pop("failed_rows_sample"))
        rows_file = join_rows_files(list(merged.pop("rows_files", [])), ti)
        if rows_file:
            merged["rows_file"] = rows_file
        mapping = mapped_values(ti.xcom_pull(task_ids=self.mapping_task_id, key="mapping_report"))
        if mapping:
            merged["mapping"] = {k: sum(int(m.get(k) or 0) for m in mapping) for k in mapping[0]}
        ti.xcom_push(key="summary", value=merged["summary"])
        raised = list(merged.get("raised_by_chunk") or [])
        if unfinished or raised:
            ti.xcom_push(key="report", value=merged)
            what = [f"chunk {i} did not finish" for i in unfinished] + raised
            raise AirflowFailException(
                f"{len(what)} chunk push(es) failed ({'; '.join(what)[:500]}); the other chunks were written, failed "
                "rows wait in the retry queue and the chunk files are kept, so clearing the failed task re-reads them"
            )
        self.log.info("%s", merged["summary"])
        return merged


def mapped_values(value: Any) -> list[dict[str, Any]]:
    """XCom of a mapped task as a list of dicts (Airflow hands back one value, a list, or a lazy sequence)."""
    if value is None:
        return []
    if isinstance(value, Mapping):
        return [dict(value)]
    return [dict(v) for v in value if isinstance(v, Mapping)]


class DataversePullContactsOperator(BaseOperator):
    """Contacts modified in a window by anyone but us, as a frame for the reverse mapping.

    Window, first match wins (``windows.resolve_window``, shared with the Didomi pull): ``full_sync`` (every
    contact); templated ``since`` / ``until`` (either may be open); the run's data interval [start, end); when the
    interval is empty or missing (a manual run, a trigger timetable), from the previous successful run's interval
    end; otherwise the last ``lookback``. ``contact_ids`` pulls just those contacts (a targeted re-sync, e.g. from
    the Dynamics webhook; window ignored). Rows last modified by our own application user (WhoAmI) are always left
    out unless ``include_own_writes``, so what the push wrote never comes back to Didomi.

    With ``properties.target: contact_point_consent`` it reads Contact Point Consent rows instead (same window rules;
    rows carrying our ``msdynmkt_reason`` marker are left out too), each tied to its Didomi user through the contact
    holding the contact point (``sync/pull_contact_point_consent.py``); ``contact_ids`` then means those contacts'
    contact points.

    ``row_ids`` (the live DAG: the ids ``DataverseChangesTrigger`` reported) reads exactly those rows of the synced
    table, contacts or Contact Point Consent rows, and nothing when the list is empty; window and ``contact_ids``
    are ignored then.
    """

    template_fields: Sequence[str] = (
        "config",
        "since",
        "until",
        "full_sync",
        "contact_ids",
        "row_ids",
        "dataverse_conn_id",
    )
    ui_color = "#e8f5e9"

    def __init__(
        self,
        *,
        config: Any = None,
        dataverse_conn_id: str | None = DataverseHook.default_conn_name,
        since: Any = None,
        until: Any = None,
        full_sync: Any = False,
        contact_ids: Any = None,
        row_ids: Any = None,
        lookback: dt.timedelta = DEFAULT_LOOKBACK,
        page_size: int = 5000,
        include_own_writes: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.config = config
        self.dataverse_conn_id = dataverse_conn_id
        self.since = since
        self.until = until
        self.full_sync = full_sync
        self.contact_ids = contact_ids
        self.row_ids = row_ids
        self.lookback = lookback
        self.page_size = page_size
        self.include_own_writes = include_own_writes

    def window(self, context: Mapping[str, Any]) -> SyncWindow:
        """The [start, end) window of ``modifiedon`` to read (shared rules of ``windows.resolve_window``)."""
        return resolve_window(
            context,
            since=self.since,
            until=self.until,
            full_sync=flag(self.full_sync, "full_sync"),
            lookback=self.lookback,
        )

    @fails_fast
    def execute(self, context: Any) -> pd.DataFrame:
        config = load_config(self.config)
        row_ids = None if self.row_ids is None else guid_list(self.row_ids, "row_ids")
        targeted = guid_list(self.contact_ids)
        live = row_ids is not None
        window = None if targeted or live else self.window(context if isinstance(context, Mapping) else {})
        hook = DataverseHook.for_config(self.dataverse_conn_id, config)
        pull = pull_consent_changes if config.target is Target.CONTACT_POINT_CONSENT else pull_contacts
        try:
            return pull(
                hook,
                config,
                window,
                contact_ids=targeted,
                row_ids=row_ids,
                page_size=self.page_size,
                include_own_writes=self.include_own_writes,
            )
        finally:
            hook.close()
