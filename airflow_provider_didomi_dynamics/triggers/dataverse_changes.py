"""DataverseChangesTrigger: a person's change in Dataverse wakes the live reverse DAG within seconds.

Why a trigger: it runs in Airflow's triggerer with read access on the synced table only (no webhook, no System
Administrator, no relay to host) and asks Dataverse's change tracking what changed since a delta token, one cheap
request per poll while nothing changes. Delivery is at least once: the token moves on only after the triggerer took
the event, so a restart in between fires the same ids again, which the reverse engine's deterministic event ids make
harmless.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
from airflow.triggers.base import BaseEventTrigger, TriggerEvent

from airflow_provider_didomi_dynamics.core.config import IntegrationConfig, Target, load_config
from airflow_provider_didomi_dynamics.exceptions import RETRYABLE_STATUSES, DidomiDynamicsError
from airflow_provider_didomi_dynamics.hooks.dataverse import CONTACT, DataverseHook, Table, odata_datetime
from airflow_provider_didomi_dynamics.hooks.dataverse.hook import BASE_HEADERS
from airflow_provider_didomi_dynamics.hooks.dataverse.odata import quote_value
from airflow_provider_didomi_dynamics.hooks.dataverse.tables import CONTACT_POINT_CONSENT
from airflow_provider_didomi_dynamics.sync.consent_plan import DIDOMI_REASON
from airflow_provider_didomi_dynamics.transport.retry import RetryPolicy

STATE_KEY = "dataverse_changes"
DEFAULT_POLL_INTERVAL_S = 15.0
MAX_IDS_PER_EVENT = 5000
PAGE_SIZE = 5000
# A window read after an expired token starts this long before the last good poll: clocks and commit order differ.
WINDOW_MARGIN = dt.timedelta(minutes=5)
# An idle poll's fresh token is stored at most this often (each store is a call to Airflow's API, not to Dataverse).
IDLE_SAVE_EVERY_S = 3600.0
ENABLE_CHANGE_TRACKING = (
    "enable it in Power Apps (Tables > {table} > Properties > Advanced options > Track changes) or set "
    "ChangeTrackingEnabled on EntityDefinitions(LogicalName='{table}')"
)


class ChangeTrackingUnavailable(DidomiDynamicsError):
    """The table has no change tracking: only ``modifiedon`` windows can tell what changed (and no deletes)."""


class DeltaTokenExpired(DidomiDynamicsError):
    """Dataverse no longer knows the token (kept 7 days by default): a full window read must bridge the gap."""


class PollFailed(DidomiDynamicsError):
    """A poll that failed after the shared retry policy's attempts; the next poll tries again."""

    retryable = True


class DataverseRefused(DidomiDynamicsError):
    """An answer no retry fixes (a missing read privilege, a bad request): the trigger stops and says why."""


@dataclass
class Changes:
    """What one poll found: ids changed by others (first seen first), ids deleted, and how many rows were ours."""

    ids: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    ours: int = 0
    source: str = "delta"

    def add(self, row_id: str) -> None:
        if row_id not in self.ids:
            self.ids.append(row_id)

    def remove_deleted(self) -> None:
        gone = set(self.deleted)
        self.ids = [i for i in self.ids if i not in gone]


@dataclass(frozen=True)
class _Source:
    """The synced table and how to reach it, resolved once in a thread (connection, config, WhoAmI)."""

    hook: DataverseHook
    table: Table
    target: Target
    own_user: str
    columns: tuple[str, ...]
    marker: str | None


def table_of(target: Target) -> Table:
    return CONTACT_POINT_CONSENT if target is Target.CONTACT_POINT_CONSENT else CONTACT


def token_of(link: str) -> str:
    """The ``$deltatoken`` of a deltaLink (the host is rebuilt from the connection, so a moved instance works)."""
    values = parse_qs(urlsplit(link).query).get("$deltatoken")
    if not values:
        raise PollFailed(f"Dataverse answered a deltaLink without $deltatoken: {link.split('?', 1)[0]}")
    return values[0]


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _parse_time(value: Any) -> dt.datetime | None:
    if not value:
        return None
    try:
        parsed = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)


class _StateStore:
    """Where the token survives a triggerer restart: the watched asset's state store (Airflow 3.3), else a Variable."""

    def __init__(self, accessors: Any, variable_key: str) -> None:
        self.accessors = accessors
        self.variable_key = variable_key

    @property
    def where(self) -> str:
        return "the asset state store" if self.accessors is not None else f"Variable {self.variable_key}"

    async def load(self) -> dict[str, Any] | None:
        if self.accessors is not None:
            value = await self.accessors.aget(STATE_KEY)
        else:
            value = await asyncio.to_thread(self._variable_get)
        return dict(value) if isinstance(value, Mapping) else None

    async def save(self, state: Mapping[str, Any]) -> None:
        if self.accessors is not None:
            await self.accessors.aset(STATE_KEY, dict(state))
        else:
            await asyncio.to_thread(self._variable_set, dict(state))

    def _variable_get(self) -> Any:
        from airflow.sdk import Variable

        return Variable.get(self.variable_key, default=None, deserialize_json=True)

    def _variable_set(self, state: dict[str, Any]) -> None:
        from airflow.sdk import Variable

        Variable.set(self.variable_key, state, serialize_json=True)


class DataverseChangesTrigger(BaseEventTrigger):
    """Fire one event with the ids of the rows other people changed in the synced table (and those deleted).

    Polls the table's delta link every ``poll_interval`` seconds; rows last modified by our own application user
    (WhoAmI), or carrying our ``msdynmkt_reason`` marker on Contact Point Consent, do not fire. ``target`` is
    ``contact`` or ``contact_point_consent``; None reads ``properties.target`` from the config (``config_path``,
    else the Variable ``didomi_dynamics_config``). The token lives in the watched asset's state store (a Variable
    ``state_key`` where Airflow has none) and moves on only once the event was taken. An expired token, or a table
    without change tracking, falls back to reading ``modifiedon`` windows, and the log says so. 429 waits for
    ``Retry-After``; 5xx and dropped connections back off under the shared retry policy.

    Event payload: ``{"target", "table", "ids", "deleted", "source": "delta" | "window", "polled_at"}``; more than
    5,000 ids go in several events.
    """

    def __init__(
        self,
        *,
        dataverse_conn_id: str = DataverseHook.default_conn_name,
        target: str | None = None,
        config_path: str | None = None,
        poll_interval: float = DEFAULT_POLL_INTERVAL_S,
        state_key: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.dataverse_conn_id = dataverse_conn_id
        self.target = Target(target).value if target else None
        self.config_path = config_path
        self.poll_interval = float(poll_interval)
        self.state_key = state_key
        self.retry_policy = RetryPolicy()
        self.requests = 0
        self.throttled = 0
        self._source: _Source | None = None

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "dataverse_conn_id": self.dataverse_conn_id,
                "target": self.target,
                "config_path": self.config_path,
                "poll_interval": self.poll_interval,
                "state_key": self.state_key,
            },
        )

    # ---- setup -----------------------------------------------------------------------------------------------------

    def _prepare(self) -> _Source:
        """Blocking: the config (when the target or the credentials come from it), the hook, our user id."""
        config: IntegrationConfig | None = None
        if self.target is None or not DataverseHook.connection_exists(self.dataverse_conn_id):
            config = load_config(self.config_path)
        target = Target(self.target) if self.target else config.target  # type: ignore[union-attr]
        hook = (
            DataverseHook.for_config(self.dataverse_conn_id, config)
            if config is not None
            else DataverseHook(self.dataverse_conn_id)
        )
        table = table_of(target)
        marker = DIDOMI_REASON if target is Target.CONTACT_POINT_CONSENT else None
        columns = [table.id_attribute, "modifiedon", "_modifiedby_value"]
        if marker:
            columns.append("msdynmkt_reason")
        return _Source(hook, table, target, hook.user_id.lower(), tuple(columns), marker)

    def _store(self, source: _Source) -> _StateStore:
        key = self.state_key or f"didomi_dynamics_delta.{self.dataverse_conn_id}.{source.table.entity_set}"
        return _StateStore(getattr(self, "asset_state_store", None), key)

    @property
    def source(self) -> _Source:
        if self._source is None:
            raise RuntimeError("the trigger has not started")
        return self._source

    # ---- the loop --------------------------------------------------------------------------------------------------

    async def run(self) -> AsyncIterator[TriggerEvent]:
        self._source = source = await asyncio.to_thread(self._prepare)
        store = self._store(source)
        settings = source.hook.settings
        try:
            async with httpx.AsyncClient(verify=_ssl_context(settings.verify), timeout=settings.timeout_s) as client:
                state = await store.load()
                if state and state.get("table") != source.table.entity_set:
                    self.log.info("stored state is for table %s: starting afresh", state.get("table"))
                    state = None
                if state:
                    self.log.info(
                        "watching %s for changes by others: resuming from the %s state in %s (last poll %s)",
                        source.table.entity_set,
                        state.get("mode"),
                        store.where,
                        state.get("polled_at"),
                    )
                else:
                    state = await self._start(client, utc_now())
                    await store.save(state)
                saved_at = time.monotonic()
                pending: dict[str, Any] | None = None
                while True:
                    if pending is not None:  # the triggerer took the event: the next poll starts after it
                        state, pending = pending, None
                        await store.save(state)
                        saved_at = time.monotonic()
                    try:
                        changes, after = await self._poll(client, state)
                    except PollFailed as err:
                        self.log.warning("%s; polling again in %.0f s", err, self.poll_interval)
                        await asyncio.sleep(self.poll_interval)
                        continue
                    if changes.ids or changes.deleted:
                        self.log.info(
                            "%s: %d row(s) changed by others, %d deleted, %d of our own writes left out",
                            source.table.entity_set,
                            len(changes.ids),
                            len(changes.deleted),
                            changes.ours,
                        )
                        for payload in self._payloads(changes, after):
                            yield TriggerEvent(payload)
                        pending = after
                    else:
                        if changes.ours:
                            self.log.info("%d row(s) changed, all by us: nothing fires", changes.ours)
                        moved = _version(after) != _version(state) or after.get("mode") != state.get("mode")
                        state = after
                        if moved or time.monotonic() - saved_at > IDLE_SAVE_EVERY_S:
                            await store.save(state)
                            saved_at = time.monotonic()
                    await asyncio.sleep(self.poll_interval)
        finally:
            source.hook.close()

    def _payloads(self, changes: Changes, after: Mapping[str, Any]) -> list[dict[str, Any]]:
        source = self.source
        common = {
            "target": source.target.value,
            "table": source.table.entity_set,
            "source": changes.source,
            "polled_at": after.get("polled_at"),
        }
        parts = [changes.ids[i : i + MAX_IDS_PER_EVENT] for i in range(0, len(changes.ids), MAX_IDS_PER_EVENT)] or [[]]
        return [
            {**common, "ids": ids, "deleted": changes.deleted if index == 0 else []} for index, ids in enumerate(parts)
        ]

    async def _start(self, client: httpx.AsyncClient, now: dt.datetime) -> dict[str, Any]:
        """The first state: a fresh delta token, or window mode from now when the table has no change tracking."""
        table = self.source.table
        try:
            token = await self._baseline(client)
        except ChangeTrackingUnavailable:
            self.log.warning(
                "change tracking is not enabled on %s: polling modifiedon windows instead (deletes go unseen); %s",
                table.logical_name,
                ENABLE_CHANGE_TRACKING.format(table=table.logical_name),
            )
            return self._window_state(now, [])
        self.log.info("watching %s for changes by others from a new delta token", table.entity_set)
        return {"table": table.entity_set, "mode": "delta", "token": token, "polled_at": now.isoformat()}

    def _window_state(self, since: dt.datetime, seen: Sequence[str]) -> dict[str, Any]:
        return {
            "table": self.source.table.entity_set,
            "mode": "window",
            "since": since.isoformat(),
            "seen": list(seen),
            "polled_at": utc_now().isoformat(),
        }

    async def _poll(self, client: httpx.AsyncClient, state: Mapping[str, Any]) -> tuple[Changes, dict[str, Any]]:
        """One poll from ``state``: what changed and the state the next poll starts from."""
        started = utc_now()
        table = self.source.table
        last = _parse_time(state.get("polled_at")) or started
        if state.get("mode") == "window":
            since = _parse_time(state.get("since")) or last
            changes, since, seen = await self._window(client, since, set(state.get("seen") or []))
            return changes, self._window_state(since, seen)
        try:
            changes, token = await self._delta(client, str(state["token"]))
        except DeltaTokenExpired:
            since = last - WINDOW_MARGIN
            self.log.warning(
                "the delta token of %s expired (Dataverse keeps them 7 days by default): falling back to a full "
                "read of every row modified since %s, then a new token",
                table.entity_set,
                since.isoformat(),
            )
            token = await self._baseline(client)
            changes, _, _ = await self._window(client, since, set())
            self.log.info("window read after the expired token: %d row(s) changed by others", len(changes.ids))
        except ChangeTrackingUnavailable:
            since = last - WINDOW_MARGIN
            self.log.warning(
                "change tracking was turned off on %s: falling back to modifiedon windows from %s (deletes go "
                "unseen); %s",
                table.logical_name,
                since.isoformat(),
                ENABLE_CHANGE_TRACKING.format(table=table.logical_name),
            )
            changes, since, seen = await self._window(client, since, set())
            return changes, self._window_state(since, seen)
        return changes, {"table": table.entity_set, "mode": "delta", "token": token, "polled_at": started.isoformat()}

    # ---- reads -----------------------------------------------------------------------------------------------------

    def _url(self, query: Mapping[str, str]) -> str:
        base = self.source.hook.web_api + self.source.table.entity_set
        return base + "?" + "&".join(f"{name}={quote_value(value)}" for name, value in query.items())

    async def _baseline(self, client: httpx.AsyncClient) -> str:
        """A fresh delta token: the tracked read of the table (ids only), paged up to its deltaLink."""
        table = self.source.table
        url: str | None = self._url({"$select": table.id_attribute})
        prefer = f"odata.track-changes,odata.maxpagesize={PAGE_SIZE}"
        while url:
            body = await self._get(client, url, prefer)
            if "@odata.deltaLink" in body:
                return token_of(str(body["@odata.deltaLink"]))
            url = body.get("@odata.nextLink")
        raise PollFailed(f"the tracked read of {table.entity_set} ended without a deltaLink")

    async def _delta(self, client: httpx.AsyncClient, token: str) -> tuple[Changes, str]:
        """Rows changed and deleted since ``token``, and the token to continue from."""
        url: str | None = self._url({"$select": ",".join(self.source.columns), "$deltatoken": token})
        changes = Changes()
        while url:
            body = await self._get(client, url, "odata.track-changes")
            for row in body.get("value") or []:
                self._classify(row, changes)
            if "@odata.deltaLink" in body:
                changes.remove_deleted()
                return changes, token_of(str(body["@odata.deltaLink"]))
            url = body.get("@odata.nextLink")
        raise PollFailed(f"the delta read of {self.source.table.entity_set} ended without a deltaLink")

    async def _window(
        self, client: httpx.AsyncClient, since: dt.datetime, seen: set[str]
    ) -> tuple[Changes, dt.datetime, list[str]]:
        """Rows others modified at or after ``since`` (those in ``seen`` already fired); the next ``since`` and the
        ids modified exactly then, so a row at the boundary fires once, not on every poll."""
        source = self.source
        primary = source.table.id_attribute
        clauses = [f"modifiedon ge {odata_datetime(since)}"]
        if source.own_user:
            clauses.append(f"_modifiedby_value ne {source.own_user}")
        url: str | None = self._url(
            {
                "$select": ",".join(source.columns),
                "$filter": " and ".join(clauses),
                "$orderby": f"modifiedon,{primary}",
            }
        )
        changes = Changes(source="window")
        newest, at_newest = since, set(seen)
        while url:
            body = await self._get(client, url, f"odata.maxpagesize={PAGE_SIZE}")
            for row in body.get("value") or []:
                row_id = str(row.get(primary) or "").lower()
                modified = _parse_time(row.get("modifiedon")) or since
                if modified > newest:
                    newest, at_newest = modified, set()
                if modified == newest:
                    at_newest.add(row_id)
                if row_id in seen:
                    continue
                self._classify(row, changes)
            url = body.get("@odata.nextLink")
        return changes, newest, sorted(at_newest)

    def _classify(self, row: Mapping[str, Any], changes: Changes) -> None:
        source = self.source
        if str(row.get("@odata.context") or "").endswith("$deletedEntity") or (
            row.get("reason") == "deleted" and source.table.id_attribute not in row
        ):
            changes.deleted.append(str(row.get("id") or "").lower())
            return
        row_id = str(row.get(source.table.id_attribute) or "").lower()
        if not row_id:
            return
        modified_by = str(row.get("_modifiedby_value") or "").lower()
        if (source.own_user and modified_by == source.own_user) or (
            source.marker and row.get("msdynmkt_reason") == source.marker
        ):
            changes.ours += 1
            return
        changes.add(row_id)

    async def _get(self, client: httpx.AsyncClient, url: str, prefer: str | None) -> dict[str, Any]:
        """GET under the shared retry policy: 429 waits ``Retry-After``, 5xx and dropped connections back off,
        401 renews the token once; anything else over 400 is an answer no retry fixes."""
        policy = self.retry_policy
        hook = self.source.hook
        path = url.split("?", 1)[0].removeprefix(hook.web_api)
        waited, renewed = 0.0, False
        problem = "no attempt"
        for attempt in range(1, policy.max_attempts + 1):
            token = await asyncio.to_thread(hook.access_token)
            headers = {**BASE_HEADERS, "Authorization": f"Bearer {token}"}
            if prefer:
                headers["Prefer"] = prefer
            try:
                self.requests += 1
                response = await client.get(url, headers=headers)
                body = response.json() if response.status_code < 400 else None
            except (httpx.TransportError, ValueError) as err:  # a dropped answer, a truncated body
                problem, delay = f"{type(err).__name__}: {err}", policy.backoff_s(attempt)
            else:
                status = response.status_code
                if status < 400 and isinstance(body, dict):
                    return body
                if status == 401 and not renewed:
                    renewed = True
                    await asyncio.to_thread(hook.renew_token, token)
                    continue
                if status == 429:
                    self.throttled += 1
                    delay = _retry_after(response, policy.default_retry_after_s)
                    problem = f"429 Too Many Requests (Retry-After {delay:g} s)"
                elif status in RETRYABLE_STATUSES:
                    problem, delay = f"HTTP {status}", policy.backoff_s(attempt)
                else:
                    raise self._refusal(response, path)
            if attempt == policy.max_attempts or waited + delay > policy.max_total_wait_s:
                break
            self.log.warning(
                "Dataverse GET %s: %s; trying again in %.1f s (attempt %d of %d)",
                path,
                problem,
                delay,
                attempt,
                policy.max_attempts,
            )
            await asyncio.sleep(delay)
            waited += delay
        raise PollFailed(f"Dataverse GET {path}: {problem}")

    def _refusal(self, response: httpx.Response, path: str) -> DidomiDynamicsError:
        try:
            message = str(response.json().get("error", {}).get("message") or "")
        except (ValueError, AttributeError):
            message = response.text[:200]
        lowered = message.lower()
        if "change tracking is not enabled" in lowered:
            return ChangeTrackingUnavailable(message)
        if "$deltatoken" in response.request.url.query.decode() and (
            "expired" in lowered or "version stamp" in lowered
        ):
            return DeltaTokenExpired(message)
        return DataverseRefused(f"Dataverse refused GET {path}: {response.status_code} {message}".strip())


def _ssl_context(verify: bool | str) -> ssl.SSLContext | bool:
    """httpx wants an SSL context for a private CA file (a path is deprecated there)."""
    return ssl.create_default_context(cafile=verify) if isinstance(verify, str) else verify


def _retry_after(response: httpx.Response, default: float) -> float:
    value = response.headers.get("Retry-After")
    try:
        return max(float(value), 0.0) if value is not None else default
    except ValueError:
        return default


def _version(state: Mapping[str, Any]) -> str:
    """The part of a state that says where the table was (a token's version, a window's start), not when we asked."""
    if state.get("mode") == "window":
        return f"{state.get('since')}|{len(state.get('seen') or [])}"
    return str(state.get("token") or "").split("!", 1)[0]


__all__ = ["DEFAULT_POLL_INTERVAL_S", "STATE_KEY", "Changes", "DataverseChangesTrigger"]
