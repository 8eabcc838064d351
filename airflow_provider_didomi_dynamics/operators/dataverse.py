"""Dataverse operators: push contacts, pull the ones people changed. Thin: arguments -> hook -> one sync call.

The engines are ``sync.push_contacts`` and ``sync.pull_contacts``; here live the template fields, the retry queue
hand-over, XCom and what makes the task fail.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException

from airflow_provider_didomi_dynamics.core.coerce import flag, guid_list
from airflow_provider_didomi_dynamics.core.config import IntegrationConfig, Target, load_config
from airflow_provider_didomi_dynamics.core.report import RunReport, enforce_failure_threshold
from airflow_provider_didomi_dynamics.core.windows import DEFAULT_LOOKBACK, SyncWindow, resolve_window
from airflow_provider_didomi_dynamics.hooks.dataverse import DataverseHook
from airflow_provider_didomi_dynamics.hooks.didomi import DidomiHook
from airflow_provider_didomi_dynamics.operators.fail_fast import fails_fast
from airflow_provider_didomi_dynamics.sync.pull_contact_point_consent import pull_consent_changes
from airflow_provider_didomi_dynamics.sync.pull_contacts import pull_contacts
from airflow_provider_didomi_dynamics.sync.push_contact_point_consent import push_contact_point_consents_for
from airflow_provider_didomi_dynamics.sync.push_contacts import PushOptions, push_contacts
from airflow_provider_didomi_dynamics.sync.retry_queue import RetryQueue, hand_over
from airflow_provider_didomi_dynamics.sync.rows_file import write_rows_file


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
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
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
        hook = self.make_hook(config)
        queue = None
        if retry_rows is None and self.retry_previous_failures and ti is not None:
            queue = RetryQueue.for_task(ti, hook.settings.instance_url)
            retry_rows = queue.read() if queue is not None else None
        if config.target is Target.CONTACT_POINT_CONSENT:
            try:
                report = push_contact_point_consents_for(hook, self.contacts, config, options, retry_rows=retry_rows)
            finally:
                hook.close()
            return self.finish(report, options, ti, queue)
        didomi = DidomiHook(self.didomi_conn_id) if self.didomi_conn_id else None
        try:
            history = didomi.event_histories if didomi is not None else None
            report = push_contacts(hook, self.contacts, config, options, retry_rows=retry_rows, event_history=history)
        finally:
            hook.close()
            if didomi is not None:
                didomi.close()
        return self.finish(report, options, ti, queue)

    def finish(self, report: RunReport, options: PushOptions, ti: Any, queue: Any) -> dict[str, Any]:
        """Hand failed rows over, push the report, enforce the thresholds: the same for both targets."""
        if ti is not None and not options.dry_run:
            hand_over(ti, queue, report.retry_rows)
        result = report.as_dict(rows_file=write_rows_file(report, ti))
        if ti is not None:  # the XCom list shows a string as it is: the one line a person reads first
            ti.xcom_push(key="summary", value=result["summary"])
        self.check_threshold(report, result, ti)
        if report.unavailable and not options.dry_run:
            if ti is not None:
                ti.xcom_push(key="report", value=result)
            raise AirflowException(
                f"Dataverse did not answer for {report.counts['failed']} row(s) ({report.unavailable[0]}); "
                "every other row was written, the failed ones are retried"
            )
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
    """

    template_fields: Sequence[str] = ("config", "since", "until", "full_sync", "contact_ids", "dataverse_conn_id")
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
        targeted = guid_list(self.contact_ids)
        window = None if targeted else self.window(context if isinstance(context, Mapping) else {})
        hook = DataverseHook.for_config(self.dataverse_conn_id, config)
        pull = pull_consent_changes if config.target is Target.CONTACT_POINT_CONSENT else pull_contacts
        try:
            return pull(
                hook,
                config,
                window,
                contact_ids=targeted,
                page_size=self.page_size,
                include_own_writes=self.include_own_writes,
            )
        finally:
            hook.close()
