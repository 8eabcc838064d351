"""Preflight: check a setup before a sync runs, and say what is wrong, why it matters and how to fix it.

A sync that starts with a missing privilege, a misspelt column or a purpose id that does not exist fails row by row
(or, worse, succeeds and writes nothing useful). The preflight asks both APIs once, up front, in about a second:
both connections, the application user's privileges (and the seed's rule that System Administrator is needed only
while the webhook is set up), every mapped contact attribute and its type, the alternate key on the contact key,
the bulk messages, and whether the mapped Didomi purposes, preferences and channels occur in the consent data.

``run_preflight`` returns a :class:`PreflightReport` (``ok`` means no check failed); the DAGs call it as their first
task with the run id, so retries and sibling tasks of one run reuse the result. ``main_preflight`` is the
``didomi-dynamics preflight`` command.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import hashlib
import json
import logging
import sys
import textwrap
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import requests

from airflow_provider_didomi_dynamics.core.config import FieldMapping, IntegrationConfig
from airflow_provider_didomi_dynamics.core.grammar import FieldKind, FieldRef, column_name
from airflow_provider_didomi_dynamics.exceptions import ApiError, ConfigError, DidomiDynamicsError, PreflightError

log = logging.getLogger(__name__)

Status = Literal["ok", "warn", "fail"]
OK: Status = "ok"
WARN: Status = "warn"
FAIL: Status = "fail"
_RANK = {OK: 0, WARN: 1, FAIL: 2}

DEFAULT_SCAN_PAGES = 10
SCAN_PAGE_SIZE = 100
WEBHOOK_NAME_PREFIX = "didomi-dynamics"
SYSTEM_ADMINISTRATOR = "System Administrator"
ENTITY_PATH = "EntityDefinitions(LogicalName='contact')"
BULK_MESSAGES = ("UpsertMultiple", "UpdateMultiple", "CreateMultiple")
ROLES_HOWTO = (
    "Power Platform admin center → Environments → your environment → Settings → Users + permissions → "
    "Application users → select the app → Edit security roles"
)
KEYS_HOWTO = "make.powerapps.com → Tables → Contact → Keys"
COLUMNS_HOWTO = "make.powerapps.com → Tables → Contact → Columns"
WEBHOOK_PRIVILEGES = (
    "prvCreateServiceEndpoint",
    "prvReadServiceEndpoint",
    "prvWriteServiceEndpoint",
    "prvCreateSdkMessageProcessingStep",
    "prvReadSdkMessageProcessingStep",
    "prvWriteSdkMessageProcessingStep",
    "prvReadSdkMessage",
)
# Why each privilege is needed, in the words of the report.
PRIVILEGE_PURPOSE = {
    "prvReadContact": "find contacts by their key and read their consent columns",
    "prvWriteContact": "update the consent columns of contacts",
    "prvCreateContact": "create contacts for Didomi users not yet in Dynamics (upsert_mode is true)",
    "prvReadSdkMessage": "see whether UpsertMultiple / UpdateMultiple / CreateMultiple exist (sdkmessagefilters)",
    "prvCreateServiceEndpoint": "register the webhook endpoint (serviceendpoints)",
    "prvReadServiceEndpoint": "find an existing webhook endpoint",
    "prvWriteServiceEndpoint": "update the webhook endpoint",
    "prvCreateSdkMessageProcessingStep": "register the Create / Update steps that call the webhook",
    "prvReadSdkMessageProcessingStep": "find the existing webhook steps",
    "prvWriteSdkMessageProcessingStep": "update the webhook steps (filtering attributes)",
}
# Dataverse's privilege depths as the role editor names them.
DEPTH_LABELS = {
    "Basic": "User",
    "Local": "Business Unit",
    "Deep": "Parent: Child Business Units",
    "Global": "Organization",
}
_TEXT_TYPES = ("String", "Memo")
_CHOICE_TYPES = ("Picklist", "State", "Status")
_INTEGER_TYPES = ("Integer", "BigInt")
_NUMBER_TYPES = ("Decimal", "Double", "Money")
_DATE_FIELDS = ("created_at", "updated_at")


# ---------------------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    """One finding: ``message`` says what is wrong, why it matters and how to fix it (or what was confirmed)."""

    name: str
    status: Status
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "status": self.status, "message": self.message}


@dataclass
class PreflightReport:
    """Every check of one preflight run, in a stable order."""

    checks: list[Check] = field(default_factory=list)
    seconds: float = 0.0
    cached: bool = False

    @property
    def ok(self) -> bool:
        """True when no check failed (warnings do not block a sync)."""
        return all(c.status != FAIL for c in self.checks)

    @property
    def status(self) -> Status:
        return max((c.status for c in self.checks), key=_RANK.__getitem__, default=OK)

    @property
    def counts(self) -> dict[str, int]:
        return {s: sum(1 for c in self.checks if c.status == s) for s in (OK, WARN, FAIL)}

    def by_status(self, status: Status) -> list[Check]:
        return [c for c in self.checks if c.status == status]

    def find(self, name: str) -> list[Check]:
        """Checks whose name starts with ``name`` (e.g. ``"Attribute "``)."""
        return [c for c in self.checks if c.name.startswith(name)]

    def summary(self) -> str:
        counts = self.counts
        verdict = "passed" if self.ok else "FAILED"
        return (
            f"preflight {verdict}: {counts[FAIL]} failed, {counts[WARN]} warning(s), {counts[OK]} ok "
            f"({self.seconds:.1f}s{', cached' if self.cached else ''})"
        )

    def as_dict(self) -> dict[str, Any]:
        """The XCom / JSON form."""
        return {
            "ok": self.ok,
            "status": self.status,
            "counts": self.counts,
            "seconds": round(self.seconds, 3),
            "cached": self.cached,
            "checks": [c.as_dict() for c in self.checks],
        }

    def render(self, width: int = 118) -> str:
        """A text table (status, check, what to do), messages wrapped to ``width``, then the summary line."""
        labels = {OK: "ok", WARN: "WARN", FAIL: "FAIL"}
        name_width = min(34, max([len("CHECK"), *(len(c.name) for c in self.checks)]))
        message_width = max(40, width - 6 - name_width - 4)
        lines = [f"{'STATUS':<6}  {'CHECK':<{name_width}}  WHAT WAS FOUND / WHAT TO DO"]
        lines.append(f"{'-' * 6}  {'-' * name_width}  {'-' * min(message_width, 60)}")
        for check in self.checks:
            wrapped = textwrap.wrap(check.message, message_width) or [""]
            names = textwrap.wrap(check.name, name_width) or [""]
            for i in range(max(len(wrapped), len(names))):
                status = labels[check.status] if i == 0 else ""
                name = names[i] if i < len(names) else ""
                text = wrapped[i] if i < len(wrapped) else ""
                lines.append(f"{status:<6}  {name:<{name_width}}  {text}".rstrip())
        lines.append("")
        lines.append(self.summary())
        return "\n".join(lines)

    def raise_if_failed(self) -> PreflightReport:
        """For a DAG's first task: fail it (with the whole report) when a check failed; return self otherwise."""
        if not self.ok:
            raise PreflightError(self)
        return self


# ---------------------------------------------------------------------------------------------------------------
# Facts gathered from the two APIs (then judged by pure functions)
# ---------------------------------------------------------------------------------------------------------------


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
                ids = _value_ids(raw)
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
    connection_error: str | None = None
    connected_as: str = ""
    scan: ConsentScan | None = None
    scan_error: str | None = None


# ---------------------------------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------------------------------

_CACHE: OrderedDict[tuple[Any, ...], PreflightReport] = OrderedDict()
_CACHE_LOCK = threading.Lock()
_CACHE_SIZE = 64


def config_fingerprint(config: IntegrationConfig) -> str:
    """A digest of everything in the config that changes a preflight's verdict (the secret prints as ``***``)."""
    return hashlib.sha256(repr(config).encode("utf-8")).hexdigest()[:16]


def forget_preflight_cache() -> None:
    """Drop cached reports (tests; a person re-running after a fix goes through a new run id anyway)."""
    with _CACHE_LOCK:
        _CACHE.clear()


def run_preflight(
    config: IntegrationConfig,
    dataverse_hook: Any,
    didomi_hook: Any,
    *,
    check_webhook: bool = False,
    scan_pages: int = DEFAULT_SCAN_PAGES,
    run_id: str | None = None,
) -> PreflightReport:
    """Check the setup; with ``check_webhook`` also that the webhook can be registered.

    With a ``run_id`` a passing report is cached per (connections, config, run): a second preflight of the same
    DAG run returns at once; a failing one is checked again (someone may have fixed it). The Dataverse checks and
    the Didomi scan run side by side.
    """
    key = (
        getattr(dataverse_hook, "dataverse_conn_id", id(dataverse_hook)),
        getattr(didomi_hook, "didomi_conn_id", id(didomi_hook)),
        config_fingerprint(config),
        run_id,
        check_webhook,
        scan_pages,
    )
    if run_id is not None:
        with _CACHE_LOCK:
            cached = _CACHE.get(key)
            if cached is not None:
                _CACHE.move_to_end(key)
                return replace(cached, cached=True)
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="preflight-didomi") as pool:
        didomi_future = pool.submit(gather_didomi, didomi_hook, scan_pages)
        dataverse = gather_dataverse(dataverse_hook, config, check_webhook)
        didomi = didomi_future.result()
    report = PreflightReport(judge(config, dataverse, didomi, check_webhook=check_webhook))
    report.seconds = time.monotonic() - started
    if run_id is not None and report.ok:  # a failed report is never reused: the retry after a fix checks again
        with _CACHE_LOCK:
            _CACHE[key] = report
            while len(_CACHE) > _CACHE_SIZE:
                _CACHE.popitem(last=False)
    return report


def preflight_task(
    config_source: Any = None,
    *,
    dataverse_conn_id: str | None = "dataverse_default",
    didomi_conn_id: str = "didomi_default",
    run_id: str | None = None,
    check_webhook: bool = False,
    scan_pages: int = DEFAULT_SCAN_PAGES,
) -> dict[str, Any]:
    """The body of a DAG's first task: log the table, fail the task when a check failed, return the report's dict.

    ``config_source`` is what :func:`config.load_config` takes (None: the Variable). ``dataverse_conn_id`` None
    uses the config's ``authentication`` block, as the push operator does.
    """
    from airflow_provider_didomi_dynamics.core.config import load_config
    from airflow_provider_didomi_dynamics.hooks.dataverse import DataverseHook
    from airflow_provider_didomi_dynamics.hooks.didomi import DidomiHook

    config = load_config(config_source)
    dataverse = DataverseHook.for_config(dataverse_conn_id, config)
    try:
        report = run_preflight(
            config,
            dataverse,
            DidomiHook(didomi_conn_id),
            check_webhook=check_webhook,
            scan_pages=scan_pages,
            run_id=run_id,
        )
    finally:
        dataverse.close()
    log.info("Preflight:\n%s", report.render())
    report.raise_if_failed()
    return report.as_dict()


def add_preflight_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of ``didomi-dynamics preflight`` (the CLI wires them to :func:`main_preflight`)."""
    parser.add_argument("--config", required=True, help="the integration config JSON (the seed's shape)")
    parser.add_argument("--dataverse-conn-id", default="dataverse_default", help="Airflow connection of Dataverse")
    parser.add_argument("--didomi-conn-id", default="didomi_default", help="Airflow connection of Didomi")
    parser.add_argument("--webhook", action="store_true", help="also check that the Dynamics webhook can be registered")
    parser.add_argument(
        "--scan-pages",
        type=int,
        default=DEFAULT_SCAN_PAGES,
        help=f"pages of {SCAN_PAGE_SIZE} Didomi users to scan for purpose/preference/channel ids",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    return parser


def main_preflight(args: argparse.Namespace) -> int:
    """``didomi-dynamics preflight``: 0 when no check failed, 1 when one did, 2 for an invalid config."""
    from airflow_provider_didomi_dynamics.hooks.dataverse import DataverseHook
    from airflow_provider_didomi_dynamics.hooks.didomi import DidomiHook
    from airflow_provider_didomi_dynamics.transport.retry import RetryPolicy

    path = str(args.config)
    try:
        config = IntegrationConfig.from_file(path)
    except ConfigError as err:
        print(f"{path}: invalid, {len(err.problems)} problem(s):", file=sys.stderr)
        for problem in err.problems:
            print(f"  {problem}", file=sys.stderr)
        return 2
    # A person is waiting: two quick attempts per request, not a task's long backoff.
    quick = RetryPolicy(max_attempts=2, max_total_wait_s=10.0, backoff_initial_s=0.2, backoff_max_s=2.0)
    dataverse = DataverseHook(getattr(args, "dataverse_conn_id", None) or "dataverse_default", retry_policy=quick)
    didomi = DidomiHook(getattr(args, "didomi_conn_id", None) or "didomi_default", retry_policy=quick)
    # Log lines of the hooks ("got an access token") go to stderr: stdout carries only the report (or its JSON).
    try:
        with contextlib.redirect_stdout(sys.stderr):
            report = run_preflight(
                config,
                dataverse,
                didomi,
                check_webhook=bool(getattr(args, "webhook", False)),
                scan_pages=int(getattr(args, "scan_pages", DEFAULT_SCAN_PAGES) or DEFAULT_SCAN_PAGES),
            )
    finally:
        dataverse.close()
    if getattr(args, "json", False):
        print(json.dumps(report.as_dict(), indent=2))
    else:
        print(f"Preflight of {path}")
        print(report.render())
    return 0 if report.ok else 1


# ---------------------------------------------------------------------------------------------------------------
# Gathering
# ---------------------------------------------------------------------------------------------------------------


def _describe(err: BaseException) -> str:
    """An error in one line, without the request path noise of a whole traceback."""
    if isinstance(err, ApiError):
        code = f" [{err.code}]" if err.code else ""
        return f"HTTP {err.status_code}{code}: {err.api_message}"
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _is_forbidden(err: BaseException) -> bool:
    return isinstance(err, ApiError) and err.status_code == 403


def _didomi_connection_problem(conn_id: str, err: BaseException) -> str:
    """What a failed Didomi session or first page means: an outage is not a credentials problem."""
    detail = str(err) if isinstance(err, DidomiDynamicsError) and not isinstance(err, ApiError) else _describe(err)
    skipped = "the Didomi checks were skipped"
    if isinstance(err, ApiError) and (err.status_code == 429 or err.status_code >= 500):
        return (
            f"Didomi is unavailable ({detail}) and stayed so through every retry: the credentials of connection "
            f"{conn_id!r} were not checked. Re-run the task later or check status.didomi.io; {skipped}."
        )
    if isinstance(err, requests.exceptions.SSLError):
        return f"Didomi connection {conn_id!r} failed: {detail}. For a private CA set extra ca_bundle; {skipped}."
    if isinstance(err, requests.RequestException):
        return (
            f"Cannot reach Didomi with connection {conn_id!r} ({detail}). Check its host and the network route from "
            f"the Airflow workers; {skipped}."
        )
    return (
        f"Didomi connection {conn_id!r} failed: {detail}. Check the API key (login), secret (password) and "
        f"extra organization_id (Didomi console → Settings → API keys); {skipped}."
    )


def _dataverse_connection_problem(hook: Any, err: BaseException) -> str:
    """What a failed token or WhoAmI means and what to do about it."""
    conn_id = getattr(hook, "dataverse_conn_id", "dataverse_default")
    detail = _describe(err)
    name = type(err).__name__
    if name in ("AirflowNotFoundException", "ConnectionNotFound") or "isn't defined" in str(err):
        return (
            f"Airflow connection {conn_id!r} does not exist. Create it (Admin → Connections, type Dataverse) or set "
            f"AIRFLOW_CONN_{conn_id.upper()}; without it nothing can be synced. ({detail})"
        )
    if isinstance(err, ValueError):
        return f"Airflow connection {conn_id!r} is incomplete: {err}. Fill in the missing fields and run again."
    if name == "DataverseAuthError" and getattr(err, "unreachable", False):
        return (
            f"{err}. The token service is out of reach: check extra authority_host of connection {conn_id!r} "
            "(sovereign clouds use another host), extra ca_bundle for a private CA, and the network or proxy route "
            "from the Airflow workers."
        )
    if name == "DataverseAuthError":
        return (
            f"Entra ID refused the client credentials of connection {conn_id!r}: {err}. Check the client ID "
            "(login), the secret value (password, not the secret ID; expired secrets are refused) and tenant_id "
            "in Entra admin center → App registrations → your app → Certificates & secrets."
        )
    if isinstance(err, ApiError) and err.status_code == 401:
        return (
            "Entra ID issued a token but Dataverse refused it (HTTP 401): the app is not an application user of "
            "this environment, or the instance URL is another environment. Add it in Power Platform admin center → "
            "Environments → your environment → Settings → Users + permissions → Application users → New app user, "
            f"and check the host of connection {conn_id!r}."
        )
    if isinstance(err, ApiError) and err.status_code == 403:
        return (
            f"Dataverse knows the application user but refused WhoAmI ({detail}): the user is disabled or has no "
            f"security role. Assign one ({ROLES_HOWTO})."
        )
    if isinstance(err, requests.exceptions.SSLError):
        return (
            f"TLS verification failed for the Dataverse instance ({detail}). For a private CA set extra ca_bundle "
            f"on connection {conn_id!r}."
        )
    if isinstance(err, requests.RequestException):
        return (
            f"Cannot reach the Dataverse instance ({detail}). Check the host of connection {conn_id!r} "
            "(e.g. https://yourorg.crm.dynamics.com) and the network route from the Airflow workers."
        )
    return f"Dataverse connection {conn_id!r} failed: {detail}."


def gather_dataverse(hook: Any, config: IntegrationConfig, check_webhook: bool) -> DataverseFacts:
    """Every Dataverse answer the checks need; one failed read never hides the others."""
    facts = DataverseFacts()
    try:
        connected_as = hook.connect()
        user_id = hook.user_id  # who_am_i (in connect) cached it, lower-cased
    except Exception as err:  # any failure here is reported, in words, as the connection check
        facts.connection_error = _dataverse_connection_problem(hook, err)
        return facts
    facts.user_id = user_id
    facts.connected_as = connected_as

    def attempt(what: str, fetch: Callable[[], None]) -> None:
        try:
            fetch()
        except Exception as err:  # recorded per fact; the check that needs it says what it means
            setattr(
                facts, f"{what}_error", _describe(err) if not _is_forbidden(err) else f"forbidden: {_describe(err)}"
            )

    def privileges() -> None:
        body = hook.get_json(f"systemusers({facts.user_id})/Microsoft.Dynamics.CRM.RetrieveUserPrivileges()")
        held: dict[str, str] = {}
        for item in body.get("RolePrivileges") or []:
            name = item.get("PrivilegeName")
            if isinstance(name, str):
                depth = str(item.get("Depth") or "Global")
                if name not in held or _depth_rank(depth) > _depth_rank(held[name]):
                    held[name] = depth
        facts.privileges = held

    def roles() -> None:
        body = hook.get_json(
            f"systemusers({facts.user_id})",
            {"$select": "systemuserid", "$expand": "systemuserroles_association($select=name,roleid)"},
        )
        facts.roles = [str(r.get("name")) for r in body.get("systemuserroles_association") or []]

    def webhooks() -> None:
        body = hook.get_json(
            "serviceendpoints",
            {"$select": "serviceendpointid,name", "$filter": f"startswith(name,'{WEBHOOK_NAME_PREFIX}')"},
        )
        facts.webhooks = [str(r.get("name")) for r in body.get("value") or []]

    def attributes() -> None:
        facts.attributes = _attribute_infos(hook, config)

    def keys() -> None:
        facts.keys = list(hook.get_alternate_keys("contact"))

    def bulk() -> None:
        names = " or ".join(f"sdkmessageid/name eq '{m}'" for m in BULK_MESSAGES)
        body = hook.get_json(
            "sdkmessagefilters",
            {
                "$select": "sdkmessagefilterid",
                "$filter": f"primaryobjecttypecode eq 'contact' and ({names})",
                "$expand": "sdkmessageid($select=name)",
            },
        )
        found = set()
        for row in body.get("value") or []:
            message = row.get("sdkmessageid")
            if isinstance(message, Mapping) and message.get("name") in BULK_MESSAGES:
                found.add(str(message["name"]))
        facts.bulk_messages = found

    attempt("privileges", privileges)
    attempt("roles", roles)
    if check_webhook or (facts.roles is not None and SYSTEM_ADMINISTRATOR in facts.roles):
        attempt("webhooks", webhooks)
    attempt("attributes", attributes)
    attempt("keys", keys)
    attempt("bulk", bulk)
    return facts


def _attribute_infos(hook: Any, config: IntegrationConfig) -> dict[str, AttributeInfo]:
    """Columns of contact; MaxLength and options only for the types the mapped attributes have (one call each)."""
    body = hook.get_json(
        f"{ENTITY_PATH}/Attributes",
        {"$select": "LogicalName,AttributeType,IsValidForCreate,IsValidForUpdate"},
    )
    infos: dict[str, AttributeInfo] = {}
    for row in body.get("value") or []:
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
    for attribute_type in sorted(types & {*_TEXT_TYPES}):
        cast = f"{ENTITY_PATH}/Attributes/Microsoft.Dynamics.CRM.{attribute_type}AttributeMetadata"
        for row in hook.get_json(cast, {"$select": "LogicalName,MaxLength"}).get("value") or []:
            info = infos.get(str(row.get("LogicalName")))
            if info is not None and isinstance(row.get("MaxLength"), int):
                info.max_length = row["MaxLength"]
    for attribute_type in sorted(types & {*_CHOICE_TYPES}):
        cast = f"{ENTITY_PATH}/Attributes/Microsoft.Dynamics.CRM.{attribute_type}AttributeMetadata"
        rows = hook.get_json(cast, {"$select": "LogicalName", "$expand": "OptionSet($select=Options)"}).get("value")
        for row in rows or []:
            info = infos.get(str(row.get("LogicalName")))
            if info is None:
                continue
            options: dict[int, str] = {}
            for option in (row.get("OptionSet") or {}).get("Options") or []:
                if isinstance(option.get("Value"), int):
                    options[option["Value"]] = _label(option.get("Label"))
            info.options = options
    return infos


def _label(value: Any) -> str:
    if isinstance(value, Mapping):
        user = value.get("UserLocalizedLabel")
        if isinstance(user, Mapping) and user.get("Label"):
            return str(user["Label"])
        for localized in value.get("LocalizedLabels") or []:
            if isinstance(localized, Mapping) and localized.get("Label"):
                return str(localized["Label"])
    return ""


def gather_didomi(hook: Any, scan_pages: int) -> DidomiFacts:
    """Token and first page (the hook's own connection test), then up to ``scan_pages`` pages of users."""
    facts = DidomiFacts()
    conn_id = getattr(hook, "didomi_conn_id", "didomi_default")
    try:
        facts.connected_as = hook.connect()
    except Exception as err:  # any failure is the connection check, worded by what it means
        facts.connection_error = _didomi_connection_problem(conn_id, err)
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
        facts.scan_error = _describe(err)
    facts.scan = scan
    return facts


# ---------------------------------------------------------------------------------------------------------------
# Judging
# ---------------------------------------------------------------------------------------------------------------


def judge(
    config: IntegrationConfig, dataverse: DataverseFacts, didomi: DidomiFacts, *, check_webhook: bool = False
) -> list[Check]:
    """Turn the gathered facts into checks, in the order a person fixes things."""
    checks: list[Check] = []
    if dataverse.connection_error:
        checks.append(
            Check("Dataverse connection", FAIL, dataverse.connection_error + " Other Dataverse checks skipped.")
        )
    else:
        checks.append(Check("Dataverse connection", OK, dataverse.connected_as + " (token and WhoAmI work)."))
    if didomi.connection_error:
        checks.append(Check("Didomi connection", FAIL, didomi.connection_error))
    else:
        checks.append(Check("Didomi connection", OK, f"{didomi.connected_as} (token and first page of users work)."))
    scan = didomi.scan if not didomi.scan_error else None
    if not dataverse.connection_error:
        checks.extend(privilege_checks(config, dataverse, check_webhook))
        checks.extend(attribute_checks(config, dataverse, scan))
        checks.append(alternate_key_check(config, dataverse))
        checks.append(bulk_message_check(config, dataverse))
    if not didomi.connection_error:
        checks.extend(consent_id_checks(config, didomi))
    return checks


def _depth_rank(depth: str) -> int:
    return list(DEPTH_LABELS).index(depth) if depth in DEPTH_LABELS else len(DEPTH_LABELS)


def required_sync_privileges(config: IntegrationConfig) -> list[str]:
    """What the sync DAGs need: read always; write and the bulk lookup when anything flows to Dynamics."""
    needed = ["prvReadContact"]
    if config.forward_mappings:
        needed += ["prvWriteContact", "prvReadSdkMessage"]
        if config.upsert_mode:
            needed.append("prvCreateContact")
    return needed


def _purposes(privileges: Iterable[str]) -> str:
    """``prvX (what it allows), prvY (...)``."""
    return ", ".join(f"{p} ({PRIVILEGE_PURPOSE[p]})" if p in PRIVILEGE_PURPOSE else p for p in privileges)


def privilege_checks(config: IntegrationConfig, facts: DataverseFacts, check_webhook: bool) -> list[Check]:
    """Sync privileges, webhook-setup privileges, and the seed's System Administrator rule."""
    checks: list[Check] = []
    needed = required_sync_privileges(config)
    held = facts.privileges
    if held is None:
        checks.append(
            Check(
                "Sync privileges",
                WARN,
                f"Could not read the application user's privileges ({facts.privileges_error}), so they are not "
                f"checked. The sync needs {', '.join(needed)}; to let the preflight verify them, give the "
                f"application user read access to Users (prvReadUser) in one of its roles ({ROLES_HOWTO}).",
            )
        )
    else:
        missing = [p for p in needed if p not in held]
        shallow = [p for p in needed if p in held and p.endswith("Contact") and held[p] != "Global"]
        if missing:
            checks.append(
                Check(
                    "Sync privileges",
                    FAIL,
                    f"The application user lacks {_purposes(missing)}. Without "
                    f"{'it' if len(missing) == 1 else 'them'} the sync fails with 'Principal user ... is missing "
                    "... privilege'. Add a "
                    "security role that grants them at Organization level to the application user "
                    f"({ROLES_HOWTO}), e.g. a copy of Basic User with Contact Read/Write/Create set to Organization.",
                )
            )
        elif shallow:
            levels = ", ".join(f"{p} at {DEPTH_LABELS.get(held[p], held[p])} level" for p in shallow)
            checks.append(
                Check(
                    "Sync privileges",
                    WARN,
                    f"The application user holds {levels}: it can only reach contacts it (or its business unit) "
                    "owns, so other contacts look missing or fail to update. Set Contact access to Organization "
                    f"in its security role ({ROLES_HOWTO}).",
                )
            )
        else:
            checks.append(
                Check("Sync privileges", OK, f"The application user holds what the sync needs: {', '.join(needed)}.")
            )
        if check_webhook:
            checks.append(_webhook_privileges_check(held, facts))
    if check_webhook and held is None:
        checks.append(
            Check(
                "Webhook setup privileges",
                WARN,
                "Could not read the application user's privileges, so webhook setup is not checked. Registering the "
                f"webhook needs {', '.join(WEBHOOK_PRIVILEGES[:2])} and more: as the seed says, assign System "
                f"Administrator to the application user while dynamics_webhook_setup runs ({ROLES_HOWTO}).",
            )
        )
    sa = _system_administrator_check(config, facts, check_webhook)
    if sa is not None:
        checks.append(sa)
    return checks


def _webhook_privileges_check(held: Mapping[str, str], facts: DataverseFacts) -> Check:
    missing = [p for p in WEBHOOK_PRIVILEGES if p not in held]
    if missing:
        return Check(
            "Webhook setup privileges",
            FAIL,
            f"Registering the webhook needs {_purposes(missing)}, which the application user lacks. As the seed "
            "says: assign System Administrator to the application user "
            f"({ROLES_HOWTO}), run dynamics_webhook_setup, then remove System Administrator again.",
        )
    registered = f" The webhook {', '.join(facts.webhooks)} is already registered." if facts.webhooks else ""
    return Check(
        "Webhook setup privileges",
        OK,
        f"The application user can register the webhook (it holds {', '.join(WEBHOOK_PRIVILEGES)}).{registered}",
    )


def _system_administrator_check(config: IntegrationConfig, facts: DataverseFacts, check_webhook: bool) -> Check | None:
    """The seed: System Administrator only while the webhook is set up, removed once the integration is configured."""
    if facts.roles is None:
        if facts.privileges is None:
            return None
        return Check(
            "System Administrator role",
            WARN,
            f"Could not read the application user's roles ({facts.roles_error}), so whether System Administrator "
            "can be removed is not checked. Give it read access to Users and Security Roles (prvReadUser, "
            "prvReadRole) to let the preflight tell.",
        )
    roles = ", ".join(facts.roles) or "none"
    if SYSTEM_ADMINISTRATOR not in facts.roles:
        return Check(
            "System Administrator role",
            OK,
            f"Not assigned (roles: {roles}): least privilege, as the seed asks once the webhook is set up.",
        )
    needed = ", ".join(required_sync_privileges(config))
    if facts.webhooks:
        if check_webhook:
            return Check(
                "System Administrator role",
                OK,
                f"Assigned, as webhook setup needs; the webhook {', '.join(facts.webhooks)} is already registered, "
                "so remove System Administrator right after this setup run.",
            )
        return Check(
            "System Administrator role",
            WARN,
            f"Still assigned, but the webhook {', '.join(facts.webhooks)} is already registered, so System "
            "Administrator can now be removed (the seed: it is needed only while the webhook is set up; remove it "
            f"now). The sync needs only {needed}: make sure another role grants those (e.g. a custom 'Didomi "
            f"Integration' role), then remove System Administrator ({ROLES_HOWTO}).",
        )
    if facts.webhooks is None:
        return Check(
            "System Administrator role",
            OK,
            f"Assigned (roles: {roles}); whether the webhook is registered could not be read "
            f"({facts.webhooks_error}). It is needed only while the webhook is set up: remove it afterwards.",
        )
    return Check(
        "System Administrator role",
        OK,
        f"Assigned (roles: {roles}) and no {WEBHOOK_NAME_PREFIX}* webhook is registered yet: it is needed only "
        "while dynamics_webhook_setup runs. Remove it afterwards, or now if you do not use the webhook; the sync "
        f"needs only {needed}.",
    )


def attribute_checks(config: IntegrationConfig, facts: DataverseFacts, scan: ConsentScan | None) -> list[Check]:
    """Every mapped attribute exists on contact with a type its mapping can fill; the key attribute is text."""
    if facts.attributes is None:
        return [
            Check(
                "Contact attributes",
                FAIL if not (facts.attributes_error or "").startswith("forbidden") else WARN,
                f"Could not read the contact table's columns ({facts.attributes_error}); the sync checks them "
                "first and would stop there too.",
            )
        ]
    attributes = facts.attributes
    checks: list[Check] = []
    key = config.contact_key_attribute
    key_info = attributes.get(key)
    if key_info is None:
        checks.append(
            Check(
                f"Key attribute {key}",
                FAIL,
                f"properties.contact_key_attribute: contact has no column {key!r}{_did_you_mean(key, attributes)}. "
                "Contacts are matched to Didomi users by it (organization_user_id); fix the name (logical names are "
                f"lowercase) or create the column ({COLUMNS_HOWTO}).",
            )
        )
    elif key_info.attribute_type not in _TEXT_TYPES:
        checks.append(
            Check(
                f"Key attribute {key}",
                FAIL,
                f"properties.contact_key_attribute: {key} is a {key_info.attribute_type} column, but it must hold "
                "Didomi's organization_user_id (text). Pick a Single line of text column such as emailaddress1.",
            )
        )
    for index, mapping in enumerate(config.mappings):
        problem = _mapping_problem(index, mapping, attributes.get(mapping.attribute), attributes, config, scan)
        if problem is not None:
            checks.append(problem)
    if not checks:
        checks.append(
            Check(
                "Contact attributes",
                OK,
                f"All {len(config.mapped_attributes)} mapped attributes exist on contact with compatible types "
                f"({', '.join(f'{a} {attributes[a].attribute_type}' for a in config.mapped_attributes)}); "
                f"key {key} is text.",
            )
        )
    return checks


def _did_you_mean(name: str, attributes: Mapping[str, AttributeInfo]) -> str:
    close = difflib.get_close_matches(name, list(attributes), n=2, cutoff=0.75)
    return f" (did you mean {' or '.join(close)}?)" if close else ""


def _mapping_problem(
    index: int,
    mapping: FieldMapping,
    info: AttributeInfo | None,
    attributes: Mapping[str, AttributeInfo],
    config: IntegrationConfig,
    scan: ConsentScan | None,
) -> Check | None:
    """The first problem of one mapping, or None when its attribute can hold what flows through it."""
    attr = mapping.attribute
    name = f"Attribute {attr}"
    path = f"mappings[{index}]"
    if info is None:
        return Check(
            name,
            FAIL,
            f"{path}.id: contact has no attribute {attr!r}{_did_you_mean(attr, attributes)}, so {mapping.value} has "
            f"nowhere to go and the sync stops before writing. Fix the id (the column's logical name, lowercase, "
            f"with its publisher prefix such as new_) or create the column ({COLUMNS_HOWTO}).",
        )
    if mapping.direction.forward and not info.valid_for_update:
        return Check(
            name,
            FAIL,
            f"{path}.id: {attr} is read-only in Dataverse (IsValidForUpdate is false), so the sync cannot write "
            f'{mapping.value} into it. Map another column, or set "direction": "to_didomi".',
        )
    type_problem = _type_problem(mapping, info, scan)
    if type_problem is not None:
        status, text = type_problem
        return Check(name, status, f"{path}: {text}")
    if mapping.direction.forward and config.upsert_mode and not info.valid_for_create:
        return Check(
            name,
            WARN,
            f"{path}.id: {attr} cannot be set when a contact is created (IsValidForCreate is false): contacts "
            "created by upsert_mode start without it.",
        )
    return None


def _type_problem(mapping: FieldMapping, info: AttributeInfo, scan: ConsentScan | None) -> tuple[Status, str] | None:
    ref = mapping.field
    attr = mapping.attribute
    kind = info.attribute_type
    value_map = mapping.transform.value_map
    if value_map:
        return _value_map_problem(mapping, info)
    if ref.is_boolean:
        if kind == "Boolean":
            return None
        return FAIL, (
            f"{attr} is a {kind} column but {mapping.value} is true/false. Map it to a Yes/No (Boolean) column, or "
            f'add a value map that turns true/false into {kind} values, e.g. "transform": {{"true": ..., '
            '"false": ...}.'
        )
    if ref.kind is FieldKind.USER_FIELD and ref.name in _DATE_FIELDS:
        if kind == "DateTime":
            return None
        if kind in _TEXT_TYPES:
            return WARN, f"{attr} is {kind}; {mapping.value} is a date and will be stored as ISO 8601 text."
        return FAIL, f"{attr} is a {kind} column but {mapping.value} is a date: map it to a Date and time column."
    # value lists, metadata and the other user fields are text
    if kind not in _TEXT_TYPES:
        what = "a comma-separated list of value ids" if ref.kind is FieldKind.PREFERENCE_VALUES else "text"
        return FAIL, (
            f"{attr} is a {kind} column but {mapping.value} is {what}. Map it to a text column (Single line of text "
            "or Multiple lines of text), or add a value map from the Didomi texts to this column's values."
        )
    return _length_problem(mapping, info, scan)


def _length_problem(mapping: FieldMapping, info: AttributeInfo, scan: ConsentScan | None) -> tuple[Status, str] | None:
    """Dataverse refuses a text longer than MaxLength (the row fails): compare with what Didomi holds."""
    if info.max_length is None or scan is None:
        return None
    ref = mapping.field
    column = column_name(ref)
    observed = scan.longest.get(column, 0)
    if observed > info.max_length:
        return WARN, (
            f"{mapping.attribute} holds at most {info.max_length} characters, but {mapping.value} reaches {observed} "
            f"in {scan.describe()}: those contacts would fail with a validation error. Raise the column's maximum "
            f"length ({COLUMNS_HOWTO} → {mapping.attribute} → Advanced options)."
        )
    if ref.kind is FieldKind.PREFERENCE_VALUES:
        values = sorted(scan.purposes.get(str(ref.purpose), {}).get(str(ref.preference), set()))
        worst = len(",".join(values))
        if worst > info.max_length:
            return WARN, (
                f"{mapping.attribute} holds at most {info.max_length} characters, but a user who picks all "
                f"{len(values)} values seen for {ref.preference} ({','.join(values)}) needs {worst}: such a contact "
                f"would fail with a validation error. Raise the column's maximum length ({COLUMNS_HOWTO})."
            )
    return None


def _value_map_problem(mapping: FieldMapping, info: AttributeInfo) -> tuple[Status, str] | None:
    """A value map's target values must be values the column accepts."""
    attr = mapping.attribute
    kind = info.attribute_type
    targets = [v for _, v in mapping.transform.value_map if v is not None]
    path_hint = "its transform"
    ints = all(isinstance(v, int) and not isinstance(v, bool) for v in targets)
    if kind in _CHOICE_TYPES:
        if not ints:
            bad = [v for v in targets if not (isinstance(v, int) and not isinstance(v, bool))]
            return FAIL, (
                f"{attr} is a choice ({kind}) column: {path_hint} must map to its option numbers "
                f"(e.g. 100000000), got {json.dumps(bad[:3])}."
            )
        options = info.options or {}
        unknown = sorted({v for v in targets if v not in options})
        if unknown and options:
            listing = ", ".join(f"{v} ({t})" if t else str(v) for v, t in options.items())
            return FAIL, (
                f"{path_hint} maps to {', '.join(map(str, unknown))}, which {attr} does not offer; its options are "
                f"{listing}. Use those numbers, or add the options to the column ({COLUMNS_HOWTO})."
            )
        return None
    if kind == "Boolean":
        if all(isinstance(v, bool) for v in targets):
            return None
        return FAIL, f"{attr} is Yes/No (Boolean): {path_hint} must map to true/false, got {json.dumps(targets[:3])}."
    if kind in _INTEGER_TYPES:
        if ints:
            return None
        return FAIL, f"{attr} is a whole number ({kind}) column: {path_hint} must map to integers."
    if kind in _NUMBER_TYPES:
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in targets):
            return None
        return FAIL, f"{attr} is a number ({kind}) column: {path_hint} must map to numbers."
    if kind in _TEXT_TYPES:
        texts = [v if isinstance(v, str) else json.dumps(v) for v in targets]
        longest = max((len(t) for t in texts), default=0)
        if info.max_length is not None and longest > info.max_length:
            return FAIL, (
                f"{path_hint} writes values of up to {longest} characters into {attr}, which holds "
                f"{info.max_length}: those writes would fail. Shorten the values or raise the column's maximum length."
            )
        if not all(isinstance(v, str) for v in targets):
            return WARN, f"{attr} is text; {path_hint} maps to non-text values, which are written as JSON text."
        return None
    return FAIL, (
        f"{attr} is a {kind} column, which a value map cannot fill; map to a choice, Yes/No, whole number or text "
        "column."
    )


def alternate_key_check(config: IntegrationConfig, facts: DataverseFacts) -> Check:
    """An Active alternate key on the contact key lets creates be upserts, which never duplicate on a re-run."""
    key = config.contact_key_attribute
    name = f"Alternate key on {key}"
    if facts.keys is None:
        return Check(name, WARN, f"Could not read the contact table's alternate keys ({facts.keys_error}).")
    matching = [k for k in facts.keys if [str(a).lower() for a in k.get("KeyAttributes") or []] == [key]]
    active = [k for k in matching if k.get("EntityKeyIndexStatus") == "Active"]
    if active:
        schema = active[0].get("SchemaName") or active[0].get("LogicalName")
        effect = "creates are" if config.upsert_mode else "once upsert_mode is on, creates will be"
        return Check(
            name,
            OK,
            f"Active alternate key {schema} on {key}: {effect} upserts by {key}, so a re-run never duplicates a "
            "contact.",
        )
    if matching:
        status = str(matching[0].get("EntityKeyIndexStatus"))
        if status == "Failed":
            why = (
                f"its index build Failed, usually because existing contacts share a {key} value. Remove the "
                f"duplicates, then reactivate the key ({KEYS_HOWTO})"
            )
        else:
            why = f"it is still being built (status {status}); it turns Active on its own, usually within minutes"
        impact = "until then creates can duplicate on a re-run" if config.upsert_mode else "no creates yet"
        return Check(
            name, WARN if config.upsert_mode else OK, f"The alternate key on {key} is not Active: {why}; {impact}."
        )
    if not config.upsert_mode:
        return Check(
            name,
            OK,
            f"No alternate key on {key}; fine while upsert_mode is false (contacts are only updated, never "
            f"created). Before turning upsert_mode on, define one on {key} in {KEYS_HOWTO}.",
        )
    return Check(
        name,
        WARN,
        f"No Active alternate key on {key}: creates can duplicate on a re-run (a retried create is not recognised "
        f"as the same contact). Define an alternate key on {key} in {KEYS_HOWTO}.",
    )


def bulk_message_check(config: IntegrationConfig, facts: DataverseFacts) -> Check:
    """Bulk messages make a write one request per batch; without them the hook falls back to ``$batch``."""
    name = "Bulk messages"
    if not config.forward_mappings:
        return Check(name, OK, "Only to_didomi mappings: the sync never writes to Dynamics.")
    if facts.bulk_messages is None:
        forbidden = (facts.bulk_error or "").startswith("forbidden")
        return Check(
            name,
            FAIL if forbidden else WARN,
            f"Could not read sdkmessagefilters ({facts.bulk_error}). "
            + (
                "The sync reads them before its first write and would fail there: grant prvReadSdkMessage "
                f"({ROLES_HOWTO})."
                if forbidden
                else "The sync will ask again and fall back to $batch if they are missing."
            ),
        )
    needed = ["UpdateMultiple", *(["UpsertMultiple", "CreateMultiple"] if config.upsert_mode else [])]
    missing = [m for m in needed if m not in facts.bulk_messages]
    if missing:
        return Check(
            name,
            WARN,
            f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not available for contact in this org: "
            "those writes use the $batch fallback (atomic changesets of up to 1,000 requests). Results are the "
            "same, but each row then counts against the service limit of 6,000 requests per 5 minutes, so large "
            "runs are slower. Nothing to fix; it goes away when the org offers the messages.",
        )
    return Check(
        name,
        OK,
        f"{', '.join(needed)} available for contact: writes go in bulk requests (one request per batch).",
    )


def consent_id_checks(config: IntegrationConfig, didomi: DidomiFacts) -> list[Check]:
    """Mapped purposes, preferences, values and channels should occur in the organization's consent data."""
    refs = [
        (i, m)
        for i, m in enumerate(config.mappings)
        if m.field.kind
        in (
            FieldKind.PURPOSE_ENABLED,
            FieldKind.PURPOSE_ENABLED_LI,
            FieldKind.PREFERENCE_VALUES,
            FieldKind.PREFERENCE_VALUE_ENABLED,
            FieldKind.CHANNEL_ENABLED,
        )
    ]
    name = "Didomi consent ids"
    if not refs:
        return [Check(name, OK, "No mapping refers to a purpose, preference or channel.")]
    scan = didomi.scan
    if didomi.scan_error or scan is None:
        return [Check(name, WARN, f"Could not scan the Didomi users ({didomi.scan_error}); ids are not checked.")]
    if scan.users == 0:
        return [
            Check(
                name,
                WARN,
                "The organization has no consent users yet, so the mapped purpose/preference/channel ids cannot be "
                "confirmed. Check them against the Didomi console (Preference management) before the first sync.",
            )
        ]
    checks: list[Check] = []
    seen: dict[str, list[str]] = {"purposes": [], "preferences": [], "channels": []}
    for index, mapping in refs:
        problem = _unknown_id(mapping.field, scan)
        path = f"mappings[{index}].value"
        if problem is None:
            _note(seen, mapping.field)
            continue
        checks.append(
            Check(
                path,
                WARN,
                f"{path} ({mapping.value}): {problem} in the consent data of {scan.describe()}. If the id is "
                f"misspelt, {mapping.attribute} is never filled (and values written back are refused by Didomi); "
                "if it is simply new, ignore this. Compare with the ids in the Didomi console (Preference "
                "management).",
            )
        )
    if not checks:
        parts = [f"{k} {', '.join(dict.fromkeys(v))}" for k, v in seen.items() if v]
        checks.append(Check(name, OK, f"Mapped {'; '.join(parts)} all occur in {scan.describe()}."))
    return checks


def _note(seen: dict[str, list[str]], ref: FieldRef) -> None:
    if ref.kind is FieldKind.CHANNEL_ENABLED:
        seen["channels"].append(str(ref.channel))
        return
    seen["purposes"].append(str(ref.purpose))
    if ref.preference:
        seen["preferences"].append(f"{ref.purpose}/{ref.preference}")


def _known(values: Iterable[str]) -> str:
    listed = sorted(values)
    if not listed:
        return "none"
    return ", ".join(listed[:12]) + (", ..." if len(listed) > 12 else "")


def _unknown_id(ref: FieldRef, scan: ConsentScan) -> str | None:
    if ref.kind is FieldKind.CHANNEL_ENABLED:
        if ref.channel in scan.channels:
            return None
        return f"channel {ref.channel!r} was never seen (channels seen: {_known(scan.channels)})"
    purpose = str(ref.purpose)
    preferences = scan.purposes.get(purpose)
    if preferences is None:
        return f"purpose {purpose!r} was never seen (purposes seen: {_known(scan.purposes)})"
    if ref.kind in (FieldKind.PURPOSE_ENABLED, FieldKind.PURPOSE_ENABLED_LI):
        return None
    preference = str(ref.preference)
    values = preferences.get(preference)
    if values is None:
        return (
            f"preference {preference!r} of purpose {purpose!r} was never seen "
            f"(its preferences seen: {_known(preferences)})"
        )
    if ref.kind is FieldKind.PREFERENCE_VALUE_ENABLED and ref.value not in values:
        return (
            f"value {ref.value!r} of preference {preference!r} (purpose {purpose!r}) was never seen "
            f"(values seen: {_known(values)})"
        )
    return None


def _value_ids(raw: Any) -> list[str]:
    """Preference value ids from ``"a,b"`` or ``["a", "b"]``."""
    if isinstance(raw, str):
        return [v.strip() for v in raw.split(",") if v.strip()]
    if isinstance(raw, Sequence):
        return [str(v) for v in raw if v is not None and str(v)]
    return []


__all__ = [
    "DEFAULT_SCAN_PAGES",
    "FAIL",
    "OK",
    "WARN",
    "WEBHOOK_PRIVILEGES",
    "AttributeInfo",
    "Check",
    "ConsentScan",
    "DataverseFacts",
    "DidomiFacts",
    "PreflightError",
    "PreflightReport",
    "add_preflight_arguments",
    "config_fingerprint",
    "forget_preflight_cache",
    "gather_dataverse",
    "gather_didomi",
    "judge",
    "main_preflight",
    "preflight_task",
    "required_sync_privileges",
    "run_preflight",
]
