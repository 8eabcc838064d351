"""Facts about the setup, gathered through the hooks' own methods: what Dataverse says about the application user,
the contact table and the org's bulk messages, and what the first pages of Didomi users contain.

One failed read never hides the others: each fact records why it is missing (``*_error``) and whether that failure
may pass later (``transient``); the pure checks then say what it means.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import requests

from airflow_provider_didomi_dynamics.core.config import IntegrationConfig, Target
from airflow_provider_didomi_dynamics.exceptions import ApiError, ConsentRecordError, DidomiDynamicsError, is_retryable
from airflow_provider_didomi_dynamics.preflight.wording import (
    dataverse_connection_problem,
    describe_error,
    didomi_connection_problem,
    is_forbidden,
)

DEFAULT_SCAN_PAGES = 10
SCAN_PAGE_SIZE = 100
WEBHOOK_NAME_PREFIX = "didomi-dynamics"
SYSTEM_ADMINISTRATOR = "System Administrator"
BULK_MESSAGES = ("UpsertMultiple", "UpdateMultiple", "CreateMultiple")
TEXT_TYPES = ("String", "Memo")
CHOICE_TYPES = ("Picklist", "State", "Status")


def is_transient(err: BaseException) -> bool:
    """Whether a failed read may pass later: an API that did not answer, a 5xx, a 429, a timeout, a body a proxy
    garbled. A refused secret, a missing connection, a 403 or an untrusted certificate need a person."""
    if isinstance(err, DidomiDynamicsError):
        return bool(err.retryable)
    if isinstance(err, requests.RequestException):
        return is_retryable(err)
    return False


@dataclass
class AttributeInfo:
    """What the preflight needs to know of one contact column."""

    logical_name: str
    attribute_type: str
    max_length: int | None = None
    options: dict[int, str] | None = None
    valid_for_create: bool = True
    valid_for_update: bool = True


@dataclass
class DataverseFacts:
    """Answers from Dataverse; an ``*_error`` says why a fact is missing."""

    connection_error: str | None = None
    connected_as: str = ""
    credentials: str = ""  # where the hook's credentials came from: a connection or the config's block
    user_id: str = ""
    privileges: dict[str, str] | None = None
    privileges_error: str | None = None
    roles: list[str] | None = None
    roles_error: str | None = None
    webhooks: list[str] | None = None
    webhooks_error: str | None = None
    attributes: dict[str, AttributeInfo] | None = None
    attributes_error: str | None = None
    keys: list[dict[str, Any]] | None = None
    keys_error: str | None = None
    bulk_messages: set[str] | None = None
    bulk_error: str | None = None
    # target contact_point_consent: the Journeys table, the mapped records, its bulk messages
    consent_table: bool | None = None
    consent_table_error: str | None = None
    consent_records: dict[str, int] | None = None  # {"purposes": n, "topics": m} resolved
    consent_problems: list[str] | None = None  # mappings whose record is missing or ambiguous
    consent_records_error: str | None = None
    consent_bulk: set[str] | None = None
    consent_bulk_error: str | None = None
    # the live reverse sync: does the synced table keep change tracking?
    change_tracking: bool | None = None
    change_tracking_error: str | None = None
    # Facts ("connection", "attributes", ...) whose read failed in a way that may pass later.
    transient: set[str] = field(default_factory=set)


@dataclass
class ConsentScan:
    """What the first pages of Didomi users contain: ids in use and the longest texts per flat column."""

    users: int = 0
    pages: int = 0
    complete: bool = False
    purposes: dict[str, dict[str, set[str]]] = field(default_factory=dict)
    channels: set[str] = field(default_factory=set)
    longest: dict[str, int] = field(default_factory=dict)

    def add_user(self, user: Mapping[str, Any]) -> None:
        self.users += 1
        for name in ("organization_user_id", "country"):
            value = user.get(name)
            if isinstance(value, str):
                self._longest(name, value)
        metadata = user.get("metadata")
        if isinstance(metadata, Mapping):
            for key, value in metadata.items():
                text = value if isinstance(value, str) else json.dumps(value)
                self._longest(f"metadata_{key}", text)
        consents = user.get("consents")
        if not isinstance(consents, Mapping):
            return
        for channel in consents.get("channels") or []:
            if isinstance(channel, Mapping) and isinstance(channel.get("id"), str):
                self.channels.add(channel["id"])
        for purpose in consents.get("purposes") or []:
            if not isinstance(purpose, Mapping) or not isinstance(purpose.get("id"), str):
                continue
            preferences = self.purposes.setdefault(purpose["id"], {})
            values = purpose.get("values")
            if not isinstance(values, Mapping):
                continue
            for preference, choice in values.items():
                raw = choice.get("value") if isinstance(choice, Mapping) else choice
                ids = value_ids(raw)
                preferences.setdefault(str(preference), set()).update(ids)
                self._longest(f"consents_purposes_{purpose['id']}_values_{preference}", ",".join(ids))

    def _longest(self, column: str, text: str) -> None:
        if len(text) > self.longest.get(column, 0):
            self.longest[column] = len(text)

    def describe(self) -> str:
        scope = "all" if self.complete else "the first"
        return f"{scope} {self.users} Didomi user(s) ({self.pages} page(s))"


@dataclass
class DidomiFacts:
    """Answers from Didomi: the connection, then a scan of the first pages of users."""

    connection_error: str | None = None
    connection_transient: bool = False
    connected_as: str = ""
    scan: ConsentScan | None = None
    scan_error: str | None = None


def gather_dataverse(
    hook: Any, config: IntegrationConfig, check_webhook: bool, check_change_tracking: bool = False
) -> DataverseFacts:
    """Every Dataverse answer the checks need; one failed read never hides the others."""
    facts = DataverseFacts(credentials=getattr(hook, "credential_source", ""))
    try:
        connected_as = hook.connect()
        user_id = hook.user_id  # who_am_i (in connect) cached it, lower-cased
    except Exception as err:  # any failure here is reported, in words, as the connection check
        facts.connection_error = dataverse_connection_problem(hook, err)
        if is_transient(err):
            facts.transient.add("connection")
        return facts
    facts.user_id = user_id
    facts.connected_as = connected_as

    def attempt(what: str, fetch: Callable[[], None]) -> None:
        try:
            fetch()
        except Exception as err:  # recorded per fact; the check that needs it says what it means
            described = describe_error(err)
            setattr(facts, f"{what}_error", described if not is_forbidden(err) else f"forbidden: {described}")
            if is_transient(err):
                facts.transient.add(what)

    def privileges() -> None:
        facts.privileges = hook.user_privileges(facts.user_id)

    def roles() -> None:
        facts.roles = hook.user_roles(facts.user_id)

    def webhooks() -> None:
        facts.webhooks = hook.service_endpoint_names(WEBHOOK_NAME_PREFIX)

    def attributes() -> None:
        facts.attributes = attribute_infos(hook, config)

    def keys() -> None:
        facts.keys = list(hook.get_alternate_keys("contact"))

    def bulk() -> None:
        facts.bulk_messages = hook.bulk_messages(BULK_MESSAGES, "contact")

    def change_tracking() -> None:
        from airflow_provider_didomi_dynamics.hooks.dataverse.tables import CONTACT_POINT_CONSENT

        synced = CONTACT_POINT_CONSENT if config.target is Target.CONTACT_POINT_CONSENT else "contact"
        facts.change_tracking = hook.change_tracking_enabled(synced)

    if check_change_tracking:
        attempt("change_tracking", change_tracking)
    if config.target is Target.CONTACT_POINT_CONSENT:
        attempt("privileges", privileges)
        attempt("roles", roles)
        gather_consent(hook, config, facts, attempt)
        return facts
    attempt("privileges", privileges)
    attempt("roles", roles)
    if check_webhook or (facts.roles is not None and SYSTEM_ADMINISTRATOR in facts.roles):
        attempt("webhooks", webhooks)
    attempt("attributes", attributes)
    attempt("keys", keys)
    attempt("bulk", bulk)
    return facts


def gather_consent(
    hook: Any, config: IntegrationConfig, facts: DataverseFacts, attempt: Callable[[str, Callable[[], None]], None]
) -> None:
    """Does the org have the Journeys consent table, do the mapped Purposes and Topics exist, bulk messages?"""
    from airflow_provider_didomi_dynamics.hooks.dataverse.tables import CONTACT_POINT_CONSENT
    from airflow_provider_didomi_dynamics.sync.push_contact_point_consent import consent_records, resolve_targets

    def table() -> None:
        try:
            hook.get_attributes(CONTACT_POINT_CONSENT)
        except ApiError as err:
            if err.status_code != 404:
                raise
            facts.consent_table = False
            return
        facts.consent_table = True

    def records() -> None:
        try:
            targets = resolve_targets(hook, consent_records(config, config.consent_mappings))
        except ConsentRecordError as err:
            facts.consent_problems = err.problems
            return
        facts.consent_records = {
            "purposes": len({t.purpose_id for t in targets if t.topic_id is None}),
            "topics": len({t.topic_id for t in targets if t.topic_id is not None}),
        }

    def bulk() -> None:
        facts.consent_bulk = hook.bulk_messages(("CreateMultiple", "UpdateMultiple"), CONTACT_POINT_CONSENT)

    attempt("consent_table", table)
    if facts.consent_table:
        attempt("consent_records", records)
        attempt("consent_bulk", bulk)


def attribute_infos(hook: Any, config: IntegrationConfig) -> dict[str, AttributeInfo]:
    """Columns of contact; MaxLength and options only for the types the mapped attributes have (one call each)."""
    infos: dict[str, AttributeInfo] = {}
    for row in hook.attribute_definitions("contact"):
        name = row.get("LogicalName")
        if not isinstance(name, str):
            continue
        infos[name] = AttributeInfo(
            name,
            str(row.get("AttributeType") or ""),
            valid_for_create=row.get("IsValidForCreate") is not False,
            valid_for_update=row.get("IsValidForUpdate") is not False,
        )
    wanted = {config.contact_key_attribute, *config.mapped_attributes}
    types = {infos[a].attribute_type for a in wanted if a in infos}
    for attribute_type in sorted(types & {*TEXT_TYPES}):
        for name, max_length in hook.attribute_max_lengths(attribute_type, "contact").items():
            info = infos.get(name)
            if info is not None:
                info.max_length = max_length
    for attribute_type in sorted(types & {*CHOICE_TYPES}):
        for name, options in hook.attribute_options(attribute_type, "contact").items():
            info = infos.get(name)
            if info is not None:
                info.options = options
    return infos


def gather_didomi(hook: Any, scan_pages: int) -> DidomiFacts:
    """Token and first page (the hook's own connection test), then up to ``scan_pages`` pages of users."""
    facts = DidomiFacts()
    conn_id = getattr(hook, "didomi_conn_id", "didomi_default")
    try:
        facts.connected_as = hook.connect()
    except Exception as err:  # any failure is the connection check, worded by what it means
        facts.connection_error = didomi_connection_problem(conn_id, err)
        facts.connection_transient = is_transient(err)
        return facts
    scan = ConsentScan()
    try:
        pages = hook.iter_users(SCAN_PAGE_SIZE, prefetch=False)
        for users in pages:
            scan.pages += 1
            for user in users:
                if isinstance(user, Mapping):
                    scan.add_user(user)
            if len(users) < SCAN_PAGE_SIZE:
                scan.complete = True
            if scan.pages >= max(1, scan_pages):
                break
        else:
            scan.complete = True
        close = getattr(pages, "close", None)
        if close is not None:
            close()
    except Exception as err:  # a scan failure only weakens the id check; it is reported there
        facts.scan_error = describe_error(err)
    facts.scan = scan
    return facts


def value_ids(raw: Any) -> list[str]:
    """Preference value ids from ``"a,b"`` or ``["a", "b"]``."""
    if isinstance(raw, str):
        return [v.strip() for v in raw.split(",") if v.strip()]
    if isinstance(raw, Sequence):
        return [str(v) for v in raw if v is not None and str(v)]
    return []


__all__ = [
    "BULK_MESSAGES",
    "CHOICE_TYPES",
    "DEFAULT_SCAN_PAGES",
    "SCAN_PAGE_SIZE",
    "SYSTEM_ADMINISTRATOR",
    "TEXT_TYPES",
    "WEBHOOK_NAME_PREFIX",
    "AttributeInfo",
    "ConsentScan",
    "DataverseFacts",
    "DidomiFacts",
    "attribute_infos",
    "gather_dataverse",
    "gather_didomi",
    "is_transient",
    "value_ids",
]
