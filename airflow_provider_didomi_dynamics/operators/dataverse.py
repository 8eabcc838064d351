"""Push contacts into Dataverse and pull the ones people changed there.

The push resolves contacts by the key attribute, writes only what changed through bulk requests sized and
parallelised for Dataverse's service-protection limits, isolates bad rows by splitting failed all-or-nothing
requests, and hands failed rows to the next run. The pull reads a ``modifiedon`` window and leaves out our own writes.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Literal

import pandas as pd
import requests
from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException

from airflow_provider_didomi_dynamics.core.coerce import flag, guid_list
from airflow_provider_didomi_dynamics.core.config import IntegrationConfig, load_config
from airflow_provider_didomi_dynamics.core.report import Outcome, RunReport, enforce_failure_threshold
from airflow_provider_didomi_dynamics.core.windows import DEFAULT_LOOKBACK, SyncWindow, resolve_window
from airflow_provider_didomi_dynamics.exceptions import AmbiguousWriteError, ApiError, DidomiDynamicsError
from airflow_provider_didomi_dynamics.hooks.dataverse import DataverseHook, in_filter, key_path_is_safe, odata_string
from airflow_provider_didomi_dynamics.hooks.didomi import DidomiHook
from airflow_provider_didomi_dynamics.sync.conflicts import columns_the_contact_keeps
from airflow_provider_didomi_dynamics.sync.contact_plan import (
    InputRow,
    PlannedWrite,
    PushPlan,
    changes_for,
    merge_inputs,
    native,
    plan_push,
    rows_from_input,
)
from airflow_provider_didomi_dynamics.sync.retry_queue import RetryQueue, hand_over

log = logging.getLogger(__name__)

ENTITY = "contact"
ENTITY_SET = "contacts"
BYPASS_BUSINESS_LOGIC_HEADERS = {"MSCRM.BypassBusinessLogicExecution": "CustomSync,CustomAsync"}
BYPASS_FLOWS_HEADERS = {"MSCRM.SuppressCallbackRegistrationExpanderJob": "true"}
DUPLICATE_KEY_CODE = "0x80040237"
# Errors that say nothing about the rows (auth, privileges, throttling): splitting would only multiply requests.
_NOT_ROW_ERRORS = frozenset({401, 403, 405, 429})
_MAX_CREATE_ATTEMPTS = 4

TaskKind = Literal["lookup", "update", "create", "upsert"]
EventHistory = Callable[[Sequence[str]], Mapping[str, "list[dict[str, Any]] | Exception"]]


@dataclass(frozen=True)
class PushOptions:
    """Tuning and safety switches of a push; defaults follow Microsoft's bulk-operation guidance."""

    batch_size: int = 1000
    max_parallelism: int | None = None
    bypass_business_logic: bool = False
    bypass_flows: bool = False
    dry_run: bool = False
    use_alternate_key: bool | None = None  # None: use one when an Active key exists on the key attribute
    sample_size: int = 20
    lookup_parallelism: int = 1  # lookups run in their own lane(s) beside the writers

    def headers(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        if self.bypass_business_logic:
            headers.update(BYPASS_BUSINESS_LOGIC_HEADERS)
        if self.bypass_flows:
            headers.update(BYPASS_FLOWS_HEADERS)
        return headers


@dataclass
class _Task:
    """One request to make: a lookup of a chunk of keys, or one bulk write.

    ``verified`` means the rows of a create are known not to exist (no re-lookup needed).
    """

    kind: TaskKind
    writes: list[PlannedWrite] = field(default_factory=list)
    rows: list[InputRow] = field(default_factory=list)
    verified: bool = False
    attempt: int = 1
    after_lost_answer: bool = False  # an earlier create of these rows may have landed unanswered


@dataclass
class _TaskResult:
    done: list[tuple[PlannedWrite, Outcome, str]] = field(default_factory=list)
    unchanged: list[InputRow] = field(default_factory=list)
    follow_ups: list[_Task] = field(default_factory=list)
    plan: PushPlan | None = None
    ok: bool = True


class ContactPusher:
    """Runs one push with one hook: lookups, plan, parallel bulk writes, bad-row isolation, the report.

    Lookups and writes overlap: as soon as a chunk of keys is resolved its changes join the write batches, so
    request count and server time are spread evenly instead of coming in two bursts.
    """

    def __init__(
        self,
        hook: DataverseHook,
        config: IntegrationConfig,
        options: PushOptions | None = None,
        event_history: EventHistory | None = None,
    ) -> None:
        self.hook = hook
        # Didomi's consent events per key, for rows a person changed before Didomi's latest update (see _contested)
        self.event_history = event_history
        self.field_of_column = {m.attribute: m.value for m in config.forward_mappings if m.direction.reverse}
        self.config = config
        self.options = options or PushOptions()
        if self.options.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.options.batch_size}")
        self.key_attribute = config.contact_key_attribute
        self.attributes = [m.attribute for m in config.forward_mappings]
        self.failed_inputs: list[dict[str, Any]] = []
        self.deferred_inputs: list[dict[str, Any]] = []  # skipped now, retried by the next run
        self.unavailable: list[str] = []
        self._headers = self.options.headers()
        self._by_key = False
        # Contacts created by our own user after this moment, found when re-reading after a lost create answer,
        # are this run's creates (the clock margin covers skew between the worker and Dataverse).
        self._created_after = dt.datetime.now(dt.timezone.utc) - _CLOCK_SKEW

    # ---- the run -------------------------------------------------------------------------------------------------

    def run(self, data: Any, retry_rows: Any = None) -> RunReport:
        """Push ``data`` (plus earlier failures) and return a report in which every input row has one outcome."""
        started = time.monotonic()
        requests_before = self.hook.stats.requests
        throttled_before = self.hook.stats.throttled_429
        report = RunReport("push_contacts", dry_run=self.options.dry_run)
        # The metadata questions travel while the input is converted: neither waits for the other.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="dataverse-metadata") as side:
            metadata = side.submit(self.prepare)
            fresh = rows_from_input(data, self.attributes)
            retry = rows_from_input(retry_rows, self.attributes)
            rows, superseded = merge_inputs(fresh, retry)
            for row in [*fresh, *retry]:
                if not row.key:
                    report.add("", Outcome.SKIPPED, "no organization_user_id")
            for row, reason in superseded:
                report.add(row.key, Outcome.SKIPPED, reason)
            report.note_retried([row.key for row in retry])
            metadata.result()
        plan = self.execute(rows, report)
        log.info("Push plan: %s", plan.counts())
        report.extra["plan"] = plan.counts()
        if self.options.dry_run:
            for write in plan.updates:
                report.add(write.row.key, Outcome.UPDATED, "dry run: not written", dict(write.changes))
            for write in plan.creates:
                report.add(write.row.key, Outcome.CREATED, "dry run: not written", dict(write.changes))
            report.extra["sample"] = plan.sample(self.options.sample_size)
        report.http_requests = self.hook.stats.requests - requests_before
        report.throttled_429 = self.hook.stats.throttled_429 - throttled_before
        report.seconds = time.monotonic() - started
        log.info("%s", report.summary())
        return report

    @property
    def parallelism(self) -> int:
        cap = self.options.max_parallelism or self.hook.parallelism
        return max(1, min(cap, self.hook.parallelism))

    def select_columns(self) -> list[str]:
        return list(
            dict.fromkeys(["contactid", self.key_attribute, *self.attributes, "modifiedon", "_modifiedby_value"])
        )

    def check_attributes(self) -> None:
        """Fail before any write when a mapped column does not exist: otherwise every row would fail one by one."""
        known = {str(a.get("LogicalName")) for a in self.hook.get_attributes(ENTITY)}
        missing = [a for a in [self.key_attribute, *self.attributes] if a not in known]
        if missing:
            raise ValueError(
                f"the contact table has no column {', '.join(missing)}; fix the mapping ids or "
                "properties.contact_key_attribute (logical names are lowercase, e.g. donotbulkemail)"
            )

    def prepare(self) -> None:
        """Check the columns, decide how creates are keyed, and learn which bulk messages the org offers."""
        self.check_attributes()
        if self.options.dry_run:
            return
        messages = ["UpdateMultiple"]
        if self.config.upsert_mode:
            self._by_key = self.use_alternate_key()
            messages.append("UpsertMultiple" if self._by_key else "CreateMultiple")
        for message in messages:
            self.hook.has_bulk_message(message, ENTITY)

    def use_alternate_key(self) -> bool:
        if self.options.use_alternate_key is not None:
            return self.options.use_alternate_key
        return self.hook.active_key_on(self.key_attribute, ENTITY)

    # ---- scheduling ----------------------------------------------------------------------------------------------

    def execute(self, rows: Sequence[InputRow], report: RunReport) -> PushPlan:
        """Run lookups and writes side by side until every row has an outcome.

        Writers follow the org's parallelism (``x-ms-dop-hint``, capped), ramping up from two; lookups run in
        their own lane(s) so resolving the next keys never takes a writer's turn, and they pause while enough
        planned rows wait to be written (memory stays bounded). A dry run only looks up, on every lane.
        """
        by_key = {row.key: row for row in rows}
        chunks = self.hook.in_filter_chunks(ENTITY_SET, self.key_attribute, list(by_key), self.select_columns())
        lookups: deque[_Task] = deque(_Task("lookup", rows=[by_key[k] for k in chunk]) for chunk in chunks)
        writes: deque[_Task] = deque()
        pending: dict[TaskKind, list[PlannedWrite]] = {"update": [], "create": [], "upsert": []}
        plan = PushPlan()
        writers = self.parallelism
        readers = writers if self.options.dry_run else max(1, self.options.lookup_parallelism)
        backlog_limit = (writers + 1) * self.options.batch_size
        write_limit = min(2, writers)
        running: dict[TaskKind, int] = {"lookup": 0, "update": 0, "create": 0, "upsert": 0}
        in_flight: dict[Future[_TaskResult], _Task] = {}

        def submit(task: _Task) -> None:
            running[task.kind] += 1
            in_flight[pool.submit(self.run_task, task)] = task

        with ThreadPoolExecutor(max_workers=writers + readers, thread_name_prefix="dataverse-push") as pool:
            while lookups or writes or in_flight:
                while writes and len(in_flight) - running["lookup"] < write_limit:
                    submit(writes.popleft())
                backlog = sum(map(len, pending.values())) + sum(len(t.writes) for t in writes)
                while lookups and (backlog < backlog_limit or not in_flight):
                    writing = len(in_flight) - running["lookup"]
                    # A writer slot nobody can use yet (nothing to write) may look up too.
                    spare = 0 if writes else writers - writing
                    if running["lookup"] >= readers + spare:
                        break
                    submit(lookups.popleft())
                if not in_flight:
                    break
                finished, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                for future in finished:
                    task = in_flight.pop(future)
                    running[task.kind] -= 1
                    result = future.result()
                    self.record(result, report, plan, pending)
                    writes.extend(result.follow_ups)
                    if result.ok:  # every clean answer, a lookup's too, lets one more writer in
                        write_limit = min(writers, write_limit + 1)
                done_looking = not lookups and not running["lookup"]
                for kind, buffer in pending.items():
                    size = self.options.batch_size
                    if done_looking and buffer:
                        size = _final_batch_size(len(buffer), size, writers)
                    while len(buffer) >= size or (buffer and done_looking):
                        writes.append(_Task(kind, buffer[:size]))
                        del buffer[:size]
        return plan

    def record(
        self, result: _TaskResult, report: RunReport, plan: PushPlan, pending: dict[TaskKind, list[PlannedWrite]]
    ) -> None:
        """Book a finished task into the report; a lookup's plan feeds the write batches (not in a dry run)."""
        for write, outcome, reason in result.done:
            report.add(write.row.key, outcome, reason, dict(write.changes))
            if outcome is Outcome.FAILED:
                self.failed_inputs.append(write.row.as_retry_row(reason))
        for row in result.unchanged:
            report.add(row.key, Outcome.UNCHANGED)
        part = result.plan
        if part is None:
            return
        plan.updates += part.updates
        plan.creates += part.creates
        plan.unchanged += part.unchanged
        plan.skipped += part.skipped
        for row in part.unchanged:
            report.add(row.key, Outcome.UNCHANGED)
        for row, reason in part.skipped:
            report.add(row.key, Outcome.SKIPPED, reason)
        if self.options.dry_run:
            return
        pending["update"] += part.updates
        for write in part.creates:
            pending["upsert" if self._by_key and key_path_is_safe(write.row.key) else "create"].append(write)

    # ---- tasks ---------------------------------------------------------------------------------------------------

    def run_task(self, task: _Task) -> _TaskResult:
        """Make one request; on a row-level failure of a bulk write hand back its two halves to find the bad rows."""
        try:
            if task.kind == "lookup":
                return self._lookup(task)
            if task.kind == "create" and not task.verified:
                return self._create_after_lookup(task)
            return self._send(task)
        except ApiError as err:
            return self._on_error(task, err)
        except AmbiguousWriteError as err:
            if task.attempt >= _MAX_CREATE_ATTEMPTS:
                return _failed(task, f"gave up after {task.attempt} attempts: {err}")
            log.warning("%s; re-reading %d row(s) before trying again", err, len(task.writes))
            retry = _Task("create", task.writes, attempt=task.attempt + 1, after_lost_answer=True)
            return _TaskResult(follow_ups=[retry], ok=False)
        except (DidomiDynamicsError, requests.RequestException) as err:
            self.unavailable.append(f"{type(err).__name__}: {err}")
            return _failed(task, f"{type(err).__name__}: {err}")

    def _lookup(self, task: _Task) -> _TaskResult:
        found = self.hook.lookup_by_keys(
            self.key_attribute, [r.key for r in task.rows], self.select_columns(), parallelism=1
        )
        plan = plan_push(
            task.rows,
            found,
            key_attribute=self.key_attribute,
            null_values=self.config.null_values,
            upsert_mode=self.config.upsert_mode,
            own_user_id=self.hook.user_id or None,
        )
        return _TaskResult(plan=plan, done=self._contested(plan))

    def _contested(self, plan: PushPlan) -> list[tuple[PlannedWrite, Outcome, str]]:
        """Per-field conflict rule for updates of contacts a person changed before Didomi's latest update.

        When a two-way column the person changed is newer than Didomi's last change of its field, the whole row
        waits: writing any column would make the integration the contact's last modifier and hide the person's
        change from the reverse sync, which sends it first. Didomi's newer fields are written by a later run (the
        row is kept in the retry queue). Returns the rows whose history could not be read (failed, retried)."""
        if self.event_history is None or not self.field_of_column:
            return []
        contested = [w for w in plan.updates if w.contested_since is not None]
        if not contested:
            return []
        histories = self.event_history([w.row.key for w in contested])
        waiting: set[int] = set()
        failed: list[tuple[PlannedWrite, Outcome, str]] = []
        for write in contested:
            events = histories.get(write.row.key, [])
            if isinstance(events, Exception):
                failed.append((write, Outcome.FAILED, f"could not read Didomi's event history: {events}"))
                waiting.add(id(write))
                continue
            assert write.contested_since is not None
            kept = columns_the_contact_keeps(write.changes, self.field_of_column, events, write.contested_since)
            if not kept:
                continue
            waiting.add(id(write))
            didomi_later = sorted(set(write.changes) - set(kept))
            reason = (
                f"Dynamics changed later for {', '.join(sorted(kept))} (modifiedon "
                f"{write.contested_since.isoformat()}, after Didomi last changed those fields); the reverse sync "
                "sends the contact's values first"
            )
            if didomi_later:
                reason += f", then a later run writes Didomi's newer {', '.join(didomi_later)}"
                self.deferred_inputs.append(write.row.as_retry_row(reason))
            plan.skipped.append((write.row, reason))
        if waiting:
            plan.updates = [w for w in plan.updates if id(w) not in waiting]
        return failed

    def _send(self, task: _Task) -> _TaskResult:
        if task.kind == "update":
            targets = [{"contactid": w.contactid, **w.changes} for w in task.writes]
            self.hook.update_multiple(ENTITY, targets, headers=self._headers)
            return _TaskResult(done=[(w, Outcome.UPDATED, "") for w in task.writes])
        if task.kind == "upsert":
            targets = [
                {"@odata.id": f"{ENTITY_SET}({self.key_attribute}={odata_string(w.row.key)})", **w.changes}
                for w in task.writes
            ]
            self.hook.upsert_multiple(ENTITY, targets, headers=self._headers)
            return _TaskResult(done=[(w, Outcome.CREATED, "") for w in task.writes])
        targets = [{self.key_attribute: w.row.key, **w.changes} for w in task.writes]
        ids = self.hook.create_multiple(ENTITY, targets, headers=self._headers)
        return _TaskResult(
            done=[
                (PlannedWrite(w.row, w.changes, ids[i] if i < len(ids) else None), Outcome.CREATED, "")
                for i, w in enumerate(task.writes)
            ]
        )

    def _create_after_lookup(self, task: _Task) -> _TaskResult:
        """Re-read the keys right before creating: a row that appeared since (a crashed attempt, a person) is
        updated instead, so no duplicate contact is ever created."""
        columns = [*self.select_columns(), "createdon", "_createdby_value"]
        found = self.hook.lookup_by_keys(self.key_attribute, [w.row.key for w in task.writes], columns, parallelism=1)
        result = _TaskResult()
        missing: list[PlannedWrite] = []
        updates: list[PlannedWrite] = []
        for write in task.writes:
            contact = found.get(write.row.key)
            if contact is None:
                missing.append(write)
                continue
            changes = changes_for(contact, write.row.values, self.config.null_values)
            if changes:
                updates.append(PlannedWrite(write.row, changes, str(contact["contactid"])))
            elif task.after_lost_answer and self._created_by_this_run(contact):
                # Our create landed but its answer was lost: the report is the record of what the sync wrote.
                landed = PlannedWrite(write.row, write.changes, str(contact["contactid"]))
                result.done.append((landed, Outcome.CREATED, "created; the answer was lost, confirmed by re-reading"))
            else:
                result.unchanged.append(write.row)
        if updates:
            result.follow_ups.append(_Task("update", updates))
        if missing:
            sent = self.run_task(_Task("create", missing, verified=True, attempt=task.attempt))
            result.done += sent.done
            result.unchanged += sent.unchanged
            result.follow_ups += sent.follow_ups
            result.ok = sent.ok
        return result

    def _created_by_this_run(self, contact: Mapping[str, Any]) -> bool:
        own = (self.hook.user_id or "").lower()
        creator = str(contact.get("_createdby_value") or "").lower()
        createdon = contact.get("createdon")
        if not own or creator != own or not isinstance(createdon, str):
            return False
        created = pd.to_datetime(createdon, utc=True, errors="coerce")
        return not pd.isna(created) and created >= self._created_after

    def _on_error(self, task: _Task, err: ApiError) -> _TaskResult:
        if err.status_code >= 500 or err.status_code == 429:
            self.unavailable.append(err.api_message or str(err))
        if task.kind == "lookup":
            # Without the current values nothing can be diffed: these rows fail and the next run retries them.
            reason = f"lookup failed: {err.api_message or err}"
            return _TaskResult(done=[(PlannedWrite(row, {}), Outcome.FAILED, reason) for row in task.rows], ok=False)
        if err.status_code in _NOT_ROW_ERRORS or err.status_code >= 500:
            return _failed(task, err.api_message or str(err))
        if len(task.writes) > 1:
            middle = len(task.writes) // 2
            # A 4xx means the all-or-nothing request changed nothing: the halves need no re-lookup.
            return _TaskResult(
                follow_ups=[
                    _Task(task.kind, task.writes[:middle], verified=True, attempt=task.attempt),
                    _Task(task.kind, task.writes[middle:], verified=True, attempt=task.attempt),
                ],
                ok=False,
            )
        if task.kind == "create" and err.code == DUPLICATE_KEY_CODE and task.attempt < _MAX_CREATE_ATTEMPTS:
            # Someone created the contact since our lookup: read it and update it instead.
            return _TaskResult(follow_ups=[_Task("create", task.writes, attempt=task.attempt + 1)], ok=False)
        return _failed(task, err.api_message or str(err))


_CLOCK_SKEW = dt.timedelta(minutes=2)


def _final_batch_size(rows: int, batch_size: int, writers: int) -> int:
    """Size of the last batches: whole rounds for every writer, so they finish together instead of one by one."""
    batches = math.ceil(rows / batch_size)
    if batches > writers:  # several rounds: make every round full
        batches = math.ceil(batches / writers) * writers
    return max(1, min(batch_size, math.ceil(rows / batches)))


def _failed(task: _Task, reason: str) -> _TaskResult:
    writes = task.writes or [PlannedWrite(row, {}) for row in task.rows]
    return _TaskResult(done=[(w, Outcome.FAILED, reason) for w in writes], ok=False)


class DataversePushContactsOperator(BaseOperator):
    """Write Didomi consent to Dataverse contacts: changed rows and changed columns only, at bulk speed.

    ``contacts`` is the forward-mapped frame (``organization_user_id``, ``updated_at``, one column per contact
    attribute), usually an upstream task's output. Failed rows go to XCom ``failed_rows`` and to the task's retry
    queue (an Airflow Variable, see ``retry_queue.py``); the next run, scheduled or triggered by hand, merges them
    back in (``retry_previous_failures``, on by default), or takes them through ``retry_rows`` instead. A fresh row
    for the same key wins over an older failed one. Returns the run report (``RunReport("push_contacts").as_dict()``).

    Options: ``batch_size`` (records per bulk request), ``max_parallelism`` (cap on the writers; the org's
    ``x-ms-dop-hint`` decides below it), ``bypass_business_logic`` / ``bypass_flows`` (the documented headers; the
    application user needs the privilege), ``dry_run`` (plan only: counts and a sample of the changes),
    ``failure_threshold_rows`` / ``failure_threshold_percent`` (after writing everything, fail the task when more
    rows failed), ``use_alternate_key`` (None: UpsertMultiple by key when an Active alternate key exists on the key
    attribute, else CreateMultiple after a re-lookup), ``didomi_conn_id`` (turns on the per-field conflict rule:
    Didomi's event history decides, for a contact a person changed before Didomi's latest update, which side changed
    each two-way field last; see ``conflicts.py``).
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
        didomi = DidomiHook(self.didomi_conn_id) if self.didomi_conn_id else None
        try:
            history = didomi.event_histories if didomi is not None else None
            pusher = ContactPusher(hook, config, options, event_history=history)
            report = pusher.run(self.contacts, retry_rows)
        finally:
            hook.close()
            if didomi is not None:
                didomi.close()
        if ti is not None and not options.dry_run:
            hand_over(ti, queue, [*pusher.failed_inputs, *pusher.deferred_inputs])
        result = report.as_dict()
        self.check_threshold(report, result, ti)
        if pusher.unavailable and not options.dry_run:
            if ti is not None:
                ti.xcom_push(key="report", value=result)
            raise AirflowException(
                f"Dataverse did not answer for {report.counts['failed']} row(s) ({pusher.unavailable[0]}); "
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

    def execute(self, context: Any) -> pd.DataFrame:
        config = load_config(self.config)
        targeted = guid_list(self.contact_ids)
        window = None if targeted else self.window(context if isinstance(context, Mapping) else {})
        hook = DataverseHook.for_config(self.dataverse_conn_id, config)
        try:
            return pull_contacts(
                hook,
                config,
                window,
                contact_ids=targeted,
                page_size=self.page_size,
                include_own_writes=self.include_own_writes,
            )
        finally:
            hook.close()


def pull_contacts(
    hook: DataverseHook,
    config: IntegrationConfig,
    window: SyncWindow | None,
    *,
    contact_ids: Sequence[str] = (),
    page_size: int = 5000,
    include_own_writes: bool = False,
) -> pd.DataFrame:
    """Read the window ordered by (modifiedon, contactid) so paging neither repeats nor skips a row.

    ``window`` None with ``contact_ids``: just those contacts. Our own writes are filtered by the server
    (``_modifiedby_value ne <WhoAmI>``) and checked again here.
    """
    key = config.contact_key_attribute
    attributes = list(dict.fromkeys(m.attribute for m in config.reverse_mappings))
    columns = list(dict.fromkeys(["contactid", key, *attributes, "modifiedon", "_modifiedby_value"]))
    own = "" if include_own_writes else hook.user_id.lower()
    common = [f"_modifiedby_value ne {own}"] if own else []
    filters: list[str] = []
    if contact_ids:
        for chunk in hook.in_filter_chunks(ENTITY_SET, "contactid", list(contact_ids), columns):
            filters.append(" and ".join([in_filter("contactid", chunk), *common]))
        described = f"{len(contact_ids)} targeted contact(s)"
    else:
        clauses = list(common)
        if window is not None and window.start is not None:
            clauses.append(f"modifiedon ge {_odata_datetime(window.start)}")
        if window is not None and window.end is not None:
            clauses.append(f"modifiedon lt {_odata_datetime(window.end)}")
        filters.append(" and ".join(clauses))
        described = window.describe() if window is not None else "everything"
    records: list[dict[str, Any]] = []
    own_rows = no_key = 0
    for flt in filters:
        for page in hook.iter_rows(ENTITY_SET, columns, flt or None, "modifiedon,contactid", page_size):
            for row in page:
                if own and str(row.get("_modifiedby_value") or "").lower() == own:
                    own_rows += 1
                    continue
                if not row.get(key):
                    no_key += 1
                    continue
                records.append({c: row.get(c) for c in columns if c != "_modifiedby_value"})
    if own_rows or no_key:
        log.info("left out %d row(s) we wrote ourselves and %d without %s", own_rows, no_key, key)
    log.info("pulled %d contact(s) changed by others: %s", len(records), described)
    return contacts_frame(records, ["contactid", key, *attributes])


def contacts_frame(records: list[dict[str, Any]], columns: list[str]) -> pd.DataFrame:
    """Nullable dtypes that survive the Parquet round trip of XCom; ``modifiedon`` as UTC timestamps."""
    frame = pd.DataFrame.from_records(records, columns=[*columns, "modifiedon"])
    for column in columns:
        frame[column] = frame[column].map(native).convert_dtypes() if len(frame) else frame[column].astype("string")
    frame["contactid"] = frame["contactid"].astype("string")
    frame[columns[1]] = frame[columns[1]].astype("string")
    frame["modifiedon"] = pd.to_datetime(frame["modifiedon"], utc=True)
    return frame


def _odata_datetime(value: dt.datetime) -> str:
    value = value.astimezone(dt.timezone.utc)
    text = value.strftime("%Y-%m-%dT%H:%M:%S")
    if value.microsecond:
        text += f".{value.microsecond // 1000:03d}"
    return text + "Z"
