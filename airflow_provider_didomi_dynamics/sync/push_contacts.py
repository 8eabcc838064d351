"""Push contacts into Dataverse: the scheduler behind ``DataversePushContactsOperator``, usable from any task.

The push resolves contacts by the key attribute, writes only what changed through bulk requests sized and
parallelised for Dataverse's service-protection limits, isolates bad rows by splitting failed all-or-nothing
requests, re-reads after a lost create answer, and hands failed rows to the next run (``RunReport.retry_rows``).
"""

from __future__ import annotations

import contextlib
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

from airflow_provider_didomi_dynamics.core.collector import frozen_heap
from airflow_provider_didomi_dynamics.core.config import IntegrationConfig
from airflow_provider_didomi_dynamics.core.progress import Progress
from airflow_provider_didomi_dynamics.core.report import Outcome, RunReport
from airflow_provider_didomi_dynamics.exceptions import (
    AmbiguousWriteError,
    ApiError,
    DidomiDynamicsError,
    MissingColumnError,
    ParamError,
)
from airflow_provider_didomi_dynamics.hooks.dataverse import DataverseHook, key_path_is_safe, odata_string
from airflow_provider_didomi_dynamics.hooks.dataverse.writer_budget import SharedWriterBudget, WriterWindow
from airflow_provider_didomi_dynamics.sync.conflicts import columns_the_contact_keeps
from airflow_provider_didomi_dynamics.sync.contact_plan import (
    ENTITY,
    ENTITY_SET,
    InputRow,
    PlannedWrite,
    PushPlan,
    changes_for,
    merge_inputs,
    plan_push,
    rows_from_input,
)

log = logging.getLogger(__name__)

BYPASS_BUSINESS_LOGIC_HEADERS = {"MSCRM.BypassBusinessLogicExecution": "CustomSync,CustomAsync"}
BYPASS_FLOWS_HEADERS = {"MSCRM.SuppressCallbackRegistrationExpanderJob": "true"}
DUPLICATE_KEY_CODE = "0x80040237"
# Errors that say nothing about the rows (auth, privileges, throttling): splitting would only multiply requests.
_NOT_ROW_ERRORS = frozenset({401, 403, 405, 429})
_MAX_CREATE_ATTEMPTS = 4
_SMALLEST_CUT = 4  # the last writes of a push are cut down to a quarter of a batch at the smallest
_LEASE_POLL_S = 0.01  # how often a push whose writers all wait for the shared window asks again

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
    share_writer_budget: bool = True  # one window and 429 pause with the other pushes of this user on this host

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
            raise ParamError(f"batch_size must be at least 1, got {self.options.batch_size}")
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
        with frozen_heap():  # no full collection walks the task's heap while the writers wait on Dataverse
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
        report.retry_rows = [*self.failed_inputs, *self.deferred_inputs]
        report.unavailable = list(self.unavailable)
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
            raise MissingColumnError(
                f"the contact table has no column {', '.join(missing)}; fix the mapping ids or "
                "properties.contact_key_attribute (logical names are lowercase, e.g. donotbulkemail)"
            )

    def prepare(self) -> None:
        """Check the columns, decide how creates are keyed, learn the bulk messages and our own user id.

        The questions are independent, so they travel side by side: a short push should not spend a fifth of its
        time on round trips one after the other before the first write.
        """
        with ThreadPoolExecutor(max_workers=4, thread_name_prefix="dataverse-prepare") as side:
            asked: list[Future[Any]] = [side.submit(self.check_attributes), side.submit(lambda: self.hook.user_id)]
            if not self.options.dry_run:
                messages = [
                    "UpdateMultiple",
                    *(["UpsertMultiple", "CreateMultiple"] if self.config.upsert_mode else []),
                ]
                asked.append(side.submit(self.hook.learn_bulk_messages, messages, ENTITY))
                if self.config.upsert_mode:
                    asked.append(side.submit(self._choose_create_message))
            for future in asked:
                future.result()

    def _choose_create_message(self) -> None:
        self._by_key = self.use_alternate_key()

    def use_alternate_key(self) -> bool:
        if self.options.use_alternate_key is not None:
            return self.options.use_alternate_key
        return self.hook.active_key_on(self.key_attribute, ENTITY)

    # ---- scheduling ----------------------------------------------------------------------------------------------

    def execute(self, rows: Sequence[InputRow], report: RunReport) -> PushPlan:
        """Run lookups and writes side by side until every row has an outcome.

        Writers follow the org's parallelism (``x-ms-dop-hint``, capped), which the answers to ``prepare`` already
        carried: Dataverse recommends that many parallel requests, so the push starts there instead of ramping up
        to it. Lookups run in their own lane(s) so resolving the next keys never takes a writer's turn, and they
        pause while enough planned rows wait to be written (memory stays bounded). Planned rows wait in ``pending``
        until a writer is free: once every key is resolved, the rest is cut into whole rounds, so the writers
        finish together. A dry run only looks up, on every lane.
        """
        by_key = {row.key: row for row in rows}
        chunks = self.hook.in_filter_chunks(ENTITY_SET, self.key_attribute, list(by_key), self.select_columns())
        if chunks and len(chunks[0]) > self.options.batch_size:  # the first write waits for one batch, no more
            chunks[:1] = [chunks[0][: self.options.batch_size], chunks[0][self.options.batch_size :]]
        lookups: deque[_Task] = deque(_Task("lookup", rows=[by_key[k] for k in chunk]) for chunk in chunks)
        writes: deque[_Task] = deque()
        pending: dict[TaskKind, list[PlannedWrite]] = {"update": [], "create": [], "upsert": []}
        plan = PushPlan()
        writers = self.parallelism
        readers = writers if self.options.dry_run else max(1, self.options.lookup_parallelism)
        backlog_limit = (writers + 1) * self.options.batch_size
        budget = None if self.options.dry_run else self._writer_budget(writers)
        own_window = WriterWindow(writers, writers)
        throttled_seen = self.hook.stats.throttled_429
        running: dict[TaskKind, int] = {"lookup": 0, "update": 0, "create": 0, "upsert": 0}
        in_flight: dict[Future[_TaskResult], _Task] = {}
        leases: dict[Future[_TaskResult], str] = {}
        sent_at: dict[Future[_TaskResult], float] = {}
        seconds_per_row = 0.0  # how long a write takes per row, smoothed: says when the writers in flight free up
        resolved_any = False  # whether a lookup has answered yet

        progress = Progress("push_contacts", log, total=len(rows), throttled=lambda: self.hook.stats.throttled_429)

        def submit(task: _Task) -> Future[_TaskResult]:
            running[task.kind] += 1
            future = pool.submit(self.run_task, task)
            in_flight[future] = task
            sent_at[future] = time.monotonic()
            return future

        def rows_left_in_flight() -> float:
            """The rows the writes on their way still have to write, by how long a write of their size takes."""
            now, left = time.monotonic(), 0.0
            for future, task in in_flight.items():
                if task.kind == "lookup" or not task.writes:
                    continue
                expected = seconds_per_row * len(task.writes)
                done = (now - sent_at[future]) / expected if expected > 0 else 0.0
                left += len(task.writes) * max(0.0, 1.0 - done)
            return left

        with contextlib.ExitStack() as stack:
            if budget is not None:
                stack.enter_context(budget)
                stack.enter_context(self.hook.gated_by(budget.gate))
            pool = stack.enter_context(
                ThreadPoolExecutor(max_workers=writers + readers, thread_name_prefix="dataverse-push")
            )
            while lookups or writes or in_flight or any(pending.values()):
                done_looking = not lookups and not running["lookup"]
                blocked = False  # the shared window is full: poll for a lease instead of waiting on our own answers
                while len(in_flight) - running["lookup"] < (writers if budget else own_window.limit):
                    share = min(writers, budget.share) if budget else own_window.limit
                    in_flight_rows = rows_left_in_flight() if done_looking else 0.0
                    if not writes and not self._cut_batch(pending, writes, share, done_looking, in_flight_rows):
                        break
                    lease = budget.try_acquire() if budget else None
                    if budget is not None and lease is None:
                        blocked = True
                        break
                    future = submit(writes.popleft())
                    if lease is not None:
                        leases[future] = lease
                backlog = sum(map(len, pending.values())) + sum(len(t.writes) for t in writes)
                while lookups and (backlog < backlog_limit or not in_flight):
                    writing = len(in_flight) - running["lookup"]
                    # A writer slot nobody can use yet (nothing to write) may look up too; not while other pushes
                    # share the budget (their writes need the request count more than our early lookups), and not
                    # before the first lookup answers: sent beside three more, it would wait for their answers on the
                    # server, and the first write with it.
                    no_spare = bool(writes) or not resolved_any or (budget is not None and budget.crowded)
                    spare = 0 if no_spare else writers - writing
                    if running["lookup"] >= readers + spare:
                        break
                    submit(lookups.popleft())
                if not in_flight:
                    if blocked:
                        time.sleep(_LEASE_POLL_S)
                        continue
                    break
                finished, _ = wait(in_flight, timeout=_LEASE_POLL_S if blocked else None, return_when=FIRST_COMPLETED)
                for future in finished:
                    task = in_flight.pop(future)
                    running[task.kind] -= 1
                    result = future.result()
                    took = time.monotonic() - sent_at.pop(future)
                    if task.kind != "lookup" and task.writes and result.ok:
                        rate = took / len(task.writes)
                        seconds_per_row = rate if not seconds_per_row else 0.7 * seconds_per_row + 0.3 * rate
                    resolved_any = resolved_any or task.kind == "lookup"
                    self.record(result, report, plan, pending)
                    progress.set(len(report.rows))
                    writes.extend(result.follow_ups)
                    throttled = self.hook.stats.throttled_429 > throttled_seen
                    throttled_seen = max(throttled_seen, self.hook.stats.throttled_429)
                    # a 429 or a nearly spent budget takes one writer out; clean answers bring it back (WriterWindow)
                    headroom = self.hook.pacer.headroom()
                    lease = leases.pop(future, None)
                    if lease is not None and budget is not None:
                        budget.release(lease, result.ok, throttled, headroom)
                    elif budget is None:
                        own_window.answer(result.ok, throttled, headroom)
        return plan

    def _writer_budget(self, writers: int) -> SharedWriterBudget | None:
        """This push's seat at the window it shares with the other pushes of its user on this host; None (each push
        steers alone) when switched off or when the shared folder cannot be used."""
        if not self.options.share_writer_budget:
            return None
        try:
            return SharedWriterBudget.for_user(self.hook.web_api, self.hook.settings.client_id, writers)
        except OSError as error:
            log.warning("Writer budget not shared with other pushes (%s): this push steers alone", error)
            return None

    def _cut_batch(
        self,
        pending: dict[TaskKind, list[PlannedWrite]],
        writes: deque[_Task],
        writers: int,
        done_looking: bool,
        in_flight_rows: float = 0.0,
    ) -> bool:
        """Queue one bulk write from the fullest buffer: a full batch, or (every key resolved) this writer's share
        of what is left, counting the rows the writes on their way still have to write, so the writers finish
        together instead of one trailing behind. False when nothing can be cut yet."""
        kind, buffer = max(pending.items(), key=lambda item: len(item[1]))
        size = self.options.batch_size
        if not buffer or (len(buffer) < size and not done_looking):
            return False
        if done_looking:
            total = sum(map(len, pending.values()))
            smallest = math.ceil(size / _SMALLEST_CUT)  # below that a request costs more than the wait it saves
            share = max(smallest, math.ceil((total + in_flight_rows) / max(1, writers)))
            if len(buffer) - share < smallest:  # no crumb left behind for one more request
                share = len(buffer)
            size = max(1, min(size, share))
        writes.append(_Task(kind, buffer[:size]))
        del buffer[:size]
        return True

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


def _failed(task: _Task, reason: str) -> _TaskResult:
    writes = task.writes or [PlannedWrite(row, {}) for row in task.rows]
    return _TaskResult(done=[(w, Outcome.FAILED, reason) for w in writes], ok=False)


def push_contacts(
    hook: DataverseHook,
    contacts: Any,
    config: IntegrationConfig,
    options: PushOptions | None = None,
    *,
    retry_rows: Any = None,
    event_history: EventHistory | None = None,
) -> RunReport:
    """Push the forward-mapped ``contacts`` (plus ``retry_rows`` of earlier runs) with ``hook``.

    Every input row ends in one outcome of the report; ``report.retry_rows`` are the rows a later run must write
    (failed, or waiting for the reverse sync), ``report.unavailable`` what Dataverse said when it did not answer.
    ``event_history`` (e.g. ``DidomiHook.event_histories``) turns on the per-field conflict rule.
    """
    return ContactPusher(hook, config, options, event_history=event_history).run(contacts, retry_rows)
