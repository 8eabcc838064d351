"""Push Didomi consent into Customer Insights - Journeys' Contact Point Consent table, usable from any task.

Steps: resolve the mapped Purpose and Topic records (by name or GUID, once per run), match users to contacts by the
key attribute (creating the missing ones first under ``upsert_mode``), read the consent rows those contact points
already have (In filters, URL-length chunks), plan (``consent_plan``), then CreateMultiple / UpdateMultiple in
batches. A batch Dataverse refuses is split until the refused rows stand alone; a create whose answer was lost is
settled by reading the rows back, so a re-run or a retry never duplicates a consent row.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from airflow_provider_didomi_dynamics.core.config import ConsentKind, ConsentMapping, IntegrationConfig, NullValues
from airflow_provider_didomi_dynamics.core.report import Outcome, RunReport
from airflow_provider_didomi_dynamics.exceptions import AmbiguousWriteError, ApiError, ConsentRecordError
from airflow_provider_didomi_dynamics.hooks.dataverse import CONTACT, DataverseHook, in_filter
from airflow_provider_didomi_dynamics.hooks.dataverse.tables import CONTACT_POINT_CONSENT, PURPOSE, TOPIC
from airflow_provider_didomi_dynamics.sync.consent_plan import (
    DIDOMI_REASON,
    ConsentPlan,
    ConsentTarget,
    PlannedConsent,
    existing_key,
    plan_consents,
)

log = logging.getLogger(__name__)

REASON_COLUMN = "reason"  # why a queued row failed, for people reading XCom ``failed_rows``; not an input column

CONSENT_COLUMNS = [
    "msdynmkt_contactpointconsent4id",
    "msdynmkt_contactpointvalue",
    "msdynmkt_contactpointtype",
    "msdynmkt_value",
    "_msdynmkt_purposeid_value",
    "_msdynmkt_topicid_value",
]


@dataclass(frozen=True)
class ConsentRecord:
    """A mapping's record as the config names it: a Purpose, or a Topic under the purpose it belongs to."""

    path: str  # the mapping's JSON path, for errors a person fixes
    column: str  # the flat Didomi column the frame carries
    record: str  # msdynmkt_name or GUID
    purpose_record: str | None = None  # for a topic: its purpose's name or GUID
    contact_point_type: str = "email"


@dataclass(frozen=True)
class ConsentPushOptions:
    batch_size: int = 500
    upsert_mode: bool = False
    null_values: NullValues = NullValues.SKIP
    dry_run: bool = False
    reason: str = DIDOMI_REASON
    plan_chunk_users: int = 5_000  # users read and planned at a time, while earlier chunks are written
    first_chunk_users: int = 1_000  # the first chunk, smaller so writing starts soon; chunks double up to the above


def consent_records(config: IntegrationConfig, mappings: Sequence[ConsentMapping] | None = None) -> list[ConsentRecord]:
    """Consent mappings (default: the forward ones) as the records to resolve; a topic carries its purpose's record."""
    records: list[ConsentRecord] = []
    for mapping in config.forward_consent_mappings if mappings is None else mappings:
        topic = mapping.kind is ConsentKind.TOPIC
        records.append(
            ConsentRecord(
                path=mapping.path,
                column=mapping.value,
                record=_ref_text(mapping.record),
                purpose_record=_ref_text(mapping.purpose_record) if topic else None,
                contact_point_type=mapping.contact_point_type.value,
            )
        )
    return records


def _ref_text(ref: Any) -> str:
    return str(ref.guid or ref.name)


def resolve_targets(hook: DataverseHook, records: Sequence[ConsentRecord]) -> list[ConsentTarget]:
    """Purpose and Topic ids for the mapped records; an unknown or ambiguous name fails with its mapping's path."""
    purposes = _find(hook, PURPOSE, {r.purpose_record or r.record for r in records})
    topics = _find(hook, TOPIC, {r.record for r in records if r.purpose_record is not None})
    targets: list[ConsentTarget] = []
    problems: list[str] = []
    for record in records:
        purpose_name = record.purpose_record or record.record
        purpose = purposes.get(purpose_name)
        if not isinstance(purpose, str):
            problems.append(f"{record.path}: {_why(purpose, 'Purpose', purpose_name)}")
            continue
        topic_id: str | None = None
        if record.purpose_record is not None:
            topic = topics.get(record.record)
            if not isinstance(topic, str):
                problems.append(f"{record.path}: {_why(topic, 'Topic', record.record)}")
                continue
            topic_id = topic
        targets.append(ConsentTarget(record.column, record.record, purpose, topic_id, record.contact_point_type))
    if problems:
        raise ConsentRecordError(problems)
    return targets


def _find(hook: DataverseHook, table: Any, names: Iterable[str]) -> dict[str, str | int | None]:
    """name or GUID -> id (str), or the number of rows that carry that name (int, when not exactly one)."""
    wanted = sorted(set(names))
    if not wanted:
        return {}
    rows: list[dict[str, Any]] = []
    for page in hook.iter_rows(table, [table.id_attribute, "msdynmkt_name"], filter=in_filter("msdynmkt_name", wanted)):
        rows.extend(page)
    guids = [n for n in wanted if _is_guid(n)]
    if guids:
        for page in hook.iter_rows(
            table, [table.id_attribute, "msdynmkt_name"], filter=in_filter(table.id_attribute, guids)
        ):
            rows.extend(page)
    found: dict[str, str | int | None] = {}
    for name in wanted:
        ids = {
            str(r[table.id_attribute]).lower()
            for r in rows
            if str(r.get("msdynmkt_name") or "").casefold() == name.casefold()
            or str(r[table.id_attribute]).lower() == name.lower()
        }
        found[name] = next(iter(ids)) if len(ids) == 1 else len(ids)
    return found


def _why(found: str | int | None, kind: str, name: str) -> str:
    if not found:
        return f"no {kind} record named {name!r} in Dataverse; create it in Customer Insights - Journeys or fix the id"
    return f"{found} {kind} records are named {name!r}; use the record's GUID as the mapping's id"


def _is_guid(text: str) -> bool:
    import uuid

    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


def contact_points_for(
    hook: DataverseHook,
    user_ids: Sequence[str],
    key_attribute: str,
    attributes: Mapping[str, str],
    options: ConsentPushOptions,
    report: RunReport,
    parallelism: int | None = None,
) -> dict[str, dict[str, str | None]]:
    """organization_user_id -> contact point type -> value, from the matched (or, under upsert_mode, new) contacts."""
    select = list(dict.fromkeys([CONTACT.id_attribute, key_attribute, *attributes.values()]))
    matched = hook.lookup_by_keys(key_attribute, user_ids, select, parallelism=parallelism)
    missing = [uid for uid in user_ids if uid not in matched]
    if missing and options.upsert_mode and not options.dry_run:
        bodies = [{key_attribute: uid} for uid in missing]
        for start in range(0, len(bodies), options.batch_size):
            hook.create_multiple(CONTACT, bodies[start : start + options.batch_size])
        report.extra["contacts_created"] = len(missing)
        matched.update(hook.lookup_by_keys(key_attribute, missing, select))
    elif missing and options.upsert_mode:
        report.extra["contacts_to_create"] = len(missing)
        matched.update({uid: {key_attribute: uid} for uid in missing})
    return {uid: {kind: row.get(attribute) for kind, attribute in attributes.items()} for uid, row in matched.items()}


def existing_rows(
    hook: DataverseHook, addresses: Iterable[str], parallelism: int | None = None
) -> list[dict[str, Any]]:
    """The consent rows Dataverse holds for these contact point values (addresses, numbers)."""
    values = sorted(set(addresses))
    if not values:
        return []
    column = "msdynmkt_contactpointvalue"
    chunks = hook.in_filter_chunks(CONTACT_POINT_CONSENT, column, values, CONSENT_COLUMNS)

    def fetch(chunk: list[str]) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        for page in hook.iter_rows(CONTACT_POINT_CONSENT, CONSENT_COLUMNS, filter=in_filter(column, chunk)):
            found.extend(page)
        return found

    with ThreadPoolExecutor(
        max_workers=max(1, min(parallelism or hook.parallelism, len(chunks))), thread_name_prefix="cpc-read"
    ) as pool:
        return [row for rows in pool.map(fetch, chunks) for row in rows]


def push_contact_point_consents(
    hook: DataverseHook,
    users: Sequence[Mapping[str, Any]],
    records: Sequence[ConsentRecord],
    key_attribute: str,
    attributes: Mapping[str, str],
    options: ConsentPushOptions,
    retry_rows: Sequence[Mapping[str, Any]] = (),
) -> RunReport:
    """One push; every (user, mapped record) pair ends created / updated / unchanged / skipped / failed.

    ``retry_rows``: input rows earlier runs could not write (the task's retry queue), merged in behind ``users``;
    ``report.retry_rows`` are the input rows of the users with at least one failed write, for the next run.
    """
    started = time.monotonic()
    report = RunReport("push_contact_point_consent", dry_run=options.dry_run)
    users = merge_retry_rows(users, retry_rows, report)
    phases: dict[str, float] = {}
    mark = time.monotonic()

    def phase(name: str) -> None:
        nonlocal mark
        now = time.monotonic()
        phases[name] = round(now - mark, 3)
        mark = now

    # Which bulk messages the org offers is asked beside the reads, not by the first writers while they wait.
    side = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cpc-metadata")
    messages = None if options.dry_run else side.submit(_ask_bulk_messages, hook)
    side.shutdown(wait=False)
    targets = resolve_targets(hook, records)
    phase("resolve")
    user_ids = list(dict.fromkeys(str(u["organization_user_id"]) for u in users if u.get("organization_user_id")))
    types = {t.contact_point_type for t in targets}
    planned: set[Any] = set()
    counts: Counter[str] = Counter()
    writer = _Writer(hook, options) if not options.dry_run else None
    try:
        # Users in chunks: while earlier chunks' batches are written, the next chunk's contacts and rows are read.
        for number, (chunk_ids, chunk) in enumerate(_chunks(users, user_ids, options)):
            # The first chunk reads on every lane (nothing is written yet); later ones in one lane beside the
            # writers, so reading never spends the execution-time budget the writers need (a 429 stops them all).
            lanes = None if number == 0 or writer is None else 1
            points = contact_points_for(hook, chunk_ids, key_attribute, attributes, options, report, lanes)
            addresses = (v for by_type in points.values() for t, v in by_type.items() if t in types and v)
            rows = existing_rows(hook, addresses, lanes)
            plan = plan_consents(chunk, points, targets, rows, options.null_values, options.reason, planned)
            counts.update(plan.counts)
            for key in plan.unchanged:
                report.add(key, Outcome.UNCHANGED)
            for key, reason in plan.skipped:
                report.add(key, Outcome.SKIPPED, reason)
            if plan.warnings:
                warnings = report.extra.setdefault("warnings", [])
                warnings.extend(f"{key}: {why}" for key, why in plan.warnings[: max(0, 40 - len(warnings))])
            if writer is None:
                for write in plan.creates:
                    report.add(write.key, Outcome.CREATED, changes={"msdynmkt_value": write.value})
                for write in plan.updates:
                    report.add(write.key, Outcome.UPDATED, changes={"msdynmkt_value": write.value})
            else:
                if messages is not None:
                    wait([messages])  # an error stays there: the writers ask again and report it per batch
                writer.submit(plan)
        phase("read_and_plan")
    finally:
        if messages is not None:
            wait([messages])
        if writer is not None:
            report.rows.extend(writer.finish())
            report.retry_rows = writer.failed_inputs(users)
    phase("write")
    report.extra["plan"] = {name: counts.get(name, 0) for name in ("create", "update", "unchanged", "skipped")}
    report.extra["seconds_by_phase"] = phases  # where a slow run spent its time
    report.seconds = time.monotonic() - started
    report.http_requests, report.throttled_429 = hook.stats.requests, hook.stats.throttled_429
    log.info("%s", report.summary())
    return report


def _ask_bulk_messages(hook: DataverseHook) -> None:
    """Ask early (the answer is cached); a failure here is left to the writers, whose batches then report it."""
    for message in ("CreateMultiple", "UpdateMultiple"):
        hook.has_bulk_message(message, CONTACT_POINT_CONSENT)


def _chunks(
    users: Sequence[Mapping[str, Any]], user_ids: Sequence[str], options: ConsentPushOptions
) -> Iterator[tuple[list[str], list[Mapping[str, Any]]]]:
    """(user ids, their input rows) in chunks: a small first one so the writers start soon, then doubling up to
    ``plan_chunk_users`` (each chunk is read while the ones before it are written)."""
    rows_of: dict[str, list[Mapping[str, Any]]] = {}
    for user in users:
        uid = str(user.get("organization_user_id") or "")
        if uid:
            rows_of.setdefault(uid, []).append(user)
    limit = max(1, options.plan_chunk_users)
    size = max(1, min(options.first_chunk_users, limit))
    start = 0
    while start < len(user_ids):
        chunk_ids = list(user_ids[start : start + size])
        yield chunk_ids, [row for uid in chunk_ids for row in rows_of[uid]]
        start += size
        size = min(limit, size * 2)


class _Writer:
    """Batches of every chunk's plan, written in parallel (the hook's parallelism: Dataverse's recommended degree,
    capped); the pacer and the 429 gate keep them within the service-protection budget.

    Rows a chunk leaves short of a full batch wait for the next chunk's, so every batch but the last few is full;
    the last ones are sized so the writers finish together instead of one writing alone at the end.
    """

    def __init__(self, hook: DataverseHook, options: ConsentPushOptions) -> None:
        self.hook, self.options = hook, options
        self.writers = max(1, hook.parallelism)
        self.pool = ThreadPoolExecutor(max_workers=self.writers, thread_name_prefix="cpc")
        self.futures: list[Any] = []
        self.owners: dict[str, str] = {}  # a write's report key -> the organization_user_id of its input row
        self.results: list[Any] = []
        self.pending: dict[Outcome, list[PlannedConsent]] = {Outcome.CREATED: [], Outcome.UPDATED: []}

    def submit(self, plan: ConsentPlan) -> None:
        for write in (*plan.creates, *plan.updates):
            self.owners[write.key] = write.user_id
        size = max(1, self.options.batch_size)
        self.pending[Outcome.CREATED].extend(plan.creates)
        self.pending[Outcome.UPDATED].extend(plan.updates)
        for outcome, buffer in self.pending.items():
            # Keep up to one batch back: the last batches are sized together in ``flush``.
            while len(buffer) > size:
                self._send(outcome, buffer[:size])
                del buffer[:size]

    def _send(self, outcome: Outcome, batch: list[PlannedConsent]) -> None:
        send = _create(self.hook) if outcome is Outcome.CREATED else _update(self.hook)
        self.futures.append(self.pool.submit(_settled, self.hook, batch, outcome, send))

    def flush(self) -> None:
        """The rows left, in as many batches as make whole rounds for every writer."""
        size = max(1, self.options.batch_size)
        left = {outcome: buffer for outcome, buffer in self.pending.items() if buffer}
        if not left:
            return
        rows = sum(map(len, left.values()))
        total = sum(-(-len(buffer) // size) for buffer in left.values())
        while (len(self.futures) + total) % self.writers and total < rows:
            total += 1
        for outcome, buffer in left.items():  # about the same size for every last batch, whatever its kind
            count = max(1, min(len(buffer), round(total * len(buffer) / rows)))
            step = min(size, -(-len(buffer) // count))
            for start in range(0, len(buffer), step):
                self._send(outcome, buffer[start : start + step])
            buffer.clear()

    def finish(self) -> list[Any]:
        """Every written row's result, in the order the batches were sent, once all are done."""
        try:
            self.flush()
            self.results = [row for future in self.futures for row in future.result().rows]
            return self.results
        finally:
            self.pool.shutdown(wait=True)

    def failed_inputs(self, users: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """The input rows of the users with a failed write, with the first failure's reason: the next run's retry."""
        reasons: dict[str, str] = {}
        for row in self.results:
            if row.outcome is Outcome.FAILED and row.key in self.owners:
                reasons.setdefault(self.owners[row.key], row.reason)
        if not reasons:
            return []
        return [
            {**user, REASON_COLUMN: reasons[uid]}
            for user in users
            if (uid := str(user.get("organization_user_id") or "")) in reasons
        ]


def merge_retry_rows(
    users: Sequence[Mapping[str, Any]], retry_rows: Sequence[Mapping[str, Any]], report: RunReport
) -> list[Mapping[str, Any]]:
    """The fresh rows, then the queued rows of users the fresh input lacks (ids compared case-insensitively, like
    Dataverse): a fresh row is Didomi's latest state, so it wins; a queued row it supersedes is reported skipped."""
    if not retry_rows:
        return list(users)
    fresh = {str(u.get("organization_user_id") or "").casefold() for u in users}
    merged: list[Mapping[str, Any]] = list(users)
    queued: list[str] = []
    for row in retry_rows:
        uid = str(row.get("organization_user_id") or "")
        if not uid:
            continue
        queued.append(uid)
        if uid.casefold() in fresh:
            report.add(uid, Outcome.SKIPPED, f"superseded by a newer row for {uid}")
            continue
        fresh.add(uid.casefold())
        merged.append({k: v for k, v in row.items() if k != REASON_COLUMN})
    report.note_retried(queued)
    return merged


def _settled(
    hook: DataverseHook, batch: list[PlannedConsent], outcome: Outcome, send: Callable[[list[PlannedConsent]], None]
) -> RunReport:
    part = RunReport("batch")
    _settle(hook, batch, outcome, part, send)
    return part


def _create(hook: DataverseHook) -> Callable[[list[PlannedConsent]], None]:
    def send(batch: list[PlannedConsent]) -> None:
        try:
            hook.create_multiple(CONTACT_POINT_CONSENT, [w.body for w in batch])
        except AmbiguousWriteError:
            _settle_lost_creates(hook, batch)

    return send


def _update(hook: DataverseHook) -> Callable[[list[PlannedConsent]], None]:
    def send(batch: list[PlannedConsent]) -> None:
        hook.update_multiple(CONTACT_POINT_CONSENT, [w.body for w in batch])

    return send


def _settle_lost_creates(hook: DataverseHook, batch: list[PlannedConsent]) -> None:
    """A create whose answer never came: read the rows back; create only those that really are missing."""
    held = {existing_key(r) for r in existing_rows(hook, (w.body["msdynmkt_contactpointvalue"] for w in batch))}
    missing = [w for w in batch if w.row_key not in held]
    if missing:
        hook.create_multiple(CONTACT_POINT_CONSENT, [w.body for w in missing])


def _settle(
    hook: DataverseHook,
    batch: list[PlannedConsent],
    outcome: Outcome,
    report: RunReport,
    send: Callable[[list[PlannedConsent]], None],
) -> None:
    """Send one all-or-nothing batch; a refused batch is halved until each refused row stands alone."""
    try:
        send(batch)
    except ApiError as err:
        if len(batch) == 1 or err.status_code in (401, 403, 429):
            for write in batch:
                report.add(write.key, Outcome.FAILED, str(err))
            return
        middle = len(batch) // 2
        _settle(hook, batch[:middle], outcome, report, send)
        _settle(hook, batch[middle:], outcome, report, send)
        return
    for write in batch:
        report.add(write.key, outcome, changes={"msdynmkt_value": write.value})


def push_contact_point_consents_for(
    hook: DataverseHook, contacts: Any, config: IntegrationConfig, options: Any, retry_rows: Any = None
) -> RunReport:
    """The forward push for target ``contact_point_consent``: the mapped frame and the config, as the operator has them.

    ``options`` is the contact push's ``PushOptions`` (batch size, dry run); the rest comes from the config.
    ``retry_rows``: the rows of earlier runs' failed users (the task's retry queue), a frame or a list of rows.
    """
    users = _records(contacts)
    attributes = {kind.value: config.contact_point_attribute(kind) for kind in config.contact_point_types}
    consent_options = ConsentPushOptions(
        batch_size=options.batch_size,
        upsert_mode=config.upsert_mode,
        null_values=config.null_values,
        dry_run=options.dry_run,
    )
    return push_contact_point_consents(
        hook,
        users,
        consent_records(config),
        config.contact_key_attribute,
        attributes,
        consent_options,
        retry_rows=_records(retry_rows),
    )


def _records(data: Any) -> list[dict[str, Any]]:
    """A frame or a list of rows as plain dicts, missing values as None."""
    import pandas as pd

    frame = data if isinstance(data, pd.DataFrame) else pd.DataFrame(list(data or []))
    if not len(frame):
        return []
    # Column by column: several times faster than converting the whole frame, and it runs before the first request.
    names = [str(name) for name in frame.columns]
    columns = [column.astype(object).where(column.notna(), None).tolist() for _, column in frame.items()]
    return [dict(zip(names, values, strict=True)) for values in zip(*columns, strict=True)]
