"""The emulated Dataverse organisation: identity, the contact table, metadata, webhooks, limits and faults.

Pure Python and HTTP-free (moto style): the HTTP layer in ``responses.py`` translates requests into calls on
:class:`DataverseModel`, and tests or the demo can drive the same model directly. One re-entrant lock guards the
state; the ASGI server calls in from its event-loop thread and tests from theirs.

Rows are plain dicts keyed by Web API property name (lookups as ``_x_value``), DateTime columns hold integer
microseconds since the epoch (formatted on output), and every write replaces the row dict (copy-on-write), which
makes transactions (changesets, all-or-nothing bulk messages) a journal of previous row references.
"""

from __future__ import annotations

import base64
import bisect
import json
import random
import re
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

from airflow_provider_didomi_dynamics.emulators.common.faults import FaultPlan, RequestLog
from airflow_provider_didomi_dynamics.emulators.dataverse import errors as E
from airflow_provider_didomi_dynamics.emulators.dataverse.errors import DataverseError
from airflow_provider_didomi_dynamics.emulators.dataverse.metadata import (
    CREATE_DEFAULTS,
    ENTITY,
    PRIMARY_ID,
    AttributeMeta,
    entity_json,
    label,
    stable_id,
    standard_contact_attributes,
)
from airflow_provider_didomi_dynamics.emulators.dataverse.odata import (
    ODataError,
    Resolver,
    format_us,
    key_from_json,
    key_to_json,
    parse_datetime_us,
    parse_key_segment,
    sort_key_function,
)
from airflow_provider_didomi_dynamics.emulators.dataverse.security import SYSTEM_ADMINISTRATOR, SecurityModel
from airflow_provider_didomi_dynamics.emulators.dataverse.throttling import (
    ServiceProtection,
    Throttle,
    theoretical_max_records_per_s,
)
from airflow_provider_didomi_dynamics.emulators.dataverse.webhooks import WebhookDispatcher, WebhookEvent

MAX_PAGE_SIZE = 5000
MAX_COUNT = 5000
MAX_KEYS = 10
MAX_KEY_ATTRIBUTES = 16
BULK_MESSAGES = ("CreateMultiple", "UpdateMultiple", "UpsertMultiple")
SDK_MESSAGES = (
    "Create",
    "Update",
    "Delete",
    "Retrieve",
    "RetrieveMultiple",
    "Upsert",
    "CreateMultiple",
    "UpdateMultiple",
    "UpsertMultiple",
    "Associate",
    "Disassociate",
)
# Which privilege family guards each table: prv<Create|Read|Write|Delete><family>.
TABLE_PRIVILEGES = {
    "contacts": "Contact",
    "serviceendpoints": "ServiceEndpoint",
    "sdkmessageprocessingsteps": "SdkMessageProcessingStep",
    "sdkmessages": "SdkMessage",
    "sdkmessagefilters": "SdkMessage",
    "systemusers": "User",
    "roles": "Role",
}
_SIMPLE_KEY = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)='([^']*)'")
_BIND_RE = re.compile(r"^/?(?:.*/)?([A-Za-z_]+)\(([0-9a-fA-F-]{36})\)$")


# ---------------------------------------------------------------------------------------------------------------
# Identity
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class SystemUser:
    """A Dataverse ``systemuser``: a person, or the user record behind an application (S2S) user."""

    systemuserid: str
    fullname: str
    azureactivedirectoryobjectid: str
    applicationid: str | None = None
    isdisabled: bool = False

    def as_row(self) -> dict[str, Any]:
        return {
            "systemuserid": self.systemuserid,
            "fullname": self.fullname,
            "azureactivedirectoryobjectid": self.azureactivedirectoryobjectid,
            "applicationid": self.applicationid,
            "isdisabled": self.isdisabled,
            "accessmode": 4 if self.applicationid else 0,
        }


@dataclass
class ApplicationUser:
    """An Entra app registration (client id + secret) bound to its own system user in the org."""

    name: str
    client_id: str
    client_secret: str
    user: SystemUser
    can_impersonate: bool = True  # prvActOnBehalfOfAnotherUser


@dataclass
class Caller:
    """Who a request runs as: the authenticated app, and the effective user (impersonated or the app's own)."""

    app: ApplicationUser
    user: SystemUser

    @property
    def impersonating(self) -> bool:
        return self.user.systemuserid != self.app.user.systemuserid


@dataclass
class Token:
    value: str
    app: ApplicationUser
    audience: str
    expires_at: float


class AuthError(Exception):
    """An Entra ID token endpoint error (AADSTS code, OAuth error name, HTTP status)."""

    def __init__(self, status: int, error: str, code: int, description: str) -> None:
        super().__init__(f"{error}: AADSTS{code}: {description}")
        self.status = status
        self.error = error
        self.code = code
        self.description = description


# ---------------------------------------------------------------------------------------------------------------
# Alternate keys
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class AlternateKey:
    """An entity key; Dataverse builds its unique index asynchronously (Pending -> Active, or Failed)."""

    logical_name: str
    schema_name: str
    attributes: tuple[str, ...]
    metadata_id: str
    status: str = "Pending"
    ready_at: float = 0.0
    index: dict[tuple[Any, ...], str] = field(default_factory=dict)
    getter: Callable[[dict[str, Any]], tuple[Any, ...]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        attrs = self.attributes
        if len(attrs) == 1:
            only = attrs[0]

            def one(row: dict[str, Any]) -> tuple[Any, ...]:
                return (row.get(only),)

            self.getter = one
        else:
            self.getter = lambda row: tuple(row.get(a) for a in attrs)

    def key_of(self, row: dict[str, Any] | None) -> tuple[Any, ...] | None:
        """Normalised index key (strings compare case-insensitively); None when a key column is empty."""
        if row is None:
            return None
        if len(self.attributes) == 1:
            v = row.get(self.attributes[0])
            if v is None or v == "":
                return None
            return (v.lower() if isinstance(v, str) else v,)
        out = []
        for v in self.getter(row):
            if v is None or v == "":
                return None
            out.append(v.lower() if isinstance(v, str) else v)
        return tuple(out)

    def to_json(self) -> dict[str, Any]:
        return {
            "@odata.type": "#Microsoft.Dynamics.CRM.EntityKeyMetadata",
            "MetadataId": self.metadata_id,
            "LogicalName": self.logical_name,
            "SchemaName": self.schema_name,
            "EntityLogicalName": ENTITY,
            "KeyAttributes": list(self.attributes),
            "EntityKeyIndexStatus": self.status,
            "DisplayName": label(self.schema_name),
            "IsCustomizable": {"Value": True, "CanBeChanged": True},
            "IsManaged": False,
            "AsyncJob": None,
        }


# ---------------------------------------------------------------------------------------------------------------
# Generic system tables (webhook registration, SDK messages, users)
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class SystemTable:
    """A loosely typed table: rows of JSON values; dict values are navigation properties (hidden unless expanded)."""

    entity_set: str
    logical_name: str
    primary_key: str
    writable: bool = False
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class QueryPage:
    """One page of query results and what is needed to build ``@odata.nextLink`` / ``@odata.deltaLink``."""

    rows: list[dict[str, Any]]
    next_state: dict[str, Any] | None
    count: int | None
    count_limited: bool = False
    delta_version: int | None = None


def run_query(
    rows: Iterable[dict[str, Any]],
    *,
    predicate: Callable[[dict[str, Any]], bool] | None,
    order: list[tuple[Callable[[dict[str, Any]], Any], str, bool]],
    page_size: int,
    after: tuple[Any, ...] | None,
    with_count: bool,
) -> tuple[list[dict[str, Any]], tuple[Any, ...] | None, int | None]:
    """Filter, sort (order + a unique tie-breaker already in ``order``), and cut one keyset page.

    Returns (page, key of the last row if more rows follow, total matched count if asked).
    """
    matched = [r for r in rows if predicate(r)] if predicate is not None else list(rows)
    keyfn = sort_key_function(order)
    keyed = sorted(((keyfn(r), r) for r in matched), key=itemgetter(0))
    start = bisect.bisect_right(keyed, after, key=itemgetter(0)) if after is not None else 0
    end = start + page_size
    page = [r for _, r in keyed[start:end]]
    last_key = keyed[end - 1][0] if end < len(keyed) else None
    return page, last_key, (len(matched) if with_count else None)


def _generic_getter(path: str) -> Callable[[dict[str, Any]], Any]:
    parts = path.split("/")
    if len(parts) == 1:
        name = parts[0]
        return lambda row: row.get(name)

    def nested(row: dict[str, Any]) -> Any:
        value: Any = row
        for p in parts:
            if not isinstance(value, dict):
                return None
            value = value.get(p)
        return value

    return nested


def generic_resolver(known: Callable[[str], bool] | None = None, entity: str = "entity") -> Resolver:
    """Resolver for untyped tables: values compare by their Python type, strings case-insensitively."""

    def resolve(path: str) -> tuple[Callable[[dict[str, Any]], Any], str]:
        if known is not None and not known(path.split("/")[0]):
            raise ODataError(f"Could not find a property named '{path}' on type 'Microsoft.Dynamics.CRM.{entity}'.")
        return _generic_getter(path), "any"

    return resolve


# ---------------------------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------------------------

SeedHook = Callable[["DataverseModel"], None]
SEEDS: dict[str, SeedHook] = {
    "empty": lambda model: None,
    # The demo data set is registered by the demo module (it calls SEEDS["demo"] = ...); until then: empty.
    "demo": lambda model: None,
}


class DataverseModel:
    """State of one emulated org. Thread-safe; every public method takes the model lock."""

    def __init__(
        self,
        *,
        service_protection: ServiceProtection | None = None,
        token_lifetime_s: int = 3600,
        bulk_messages_enabled: bool = True,
        latency_ms: float = 0.0,
        key_activation_delay_s: float = 0.0,
        organization_name: str = "emulator",
    ) -> None:
        self._lock = threading.RLock()
        self.tenant_id = str(uuid.uuid4())
        self.organization_id = str(uuid.uuid4())
        self.organization_name = organization_name
        self.business_unit_id = str(uuid.uuid4())
        self.token_lifetime_s = token_lifetime_s
        self.latency_s = latency_ms / 1000.0
        self.key_activation_delay_s = key_activation_delay_s
        self.delta_token_ttl_s = 7 * 24 * 3600
        self.change_tracking_enabled = True
        self.instance_url: str | None = None
        self.faults = FaultPlan()
        self.requests = RequestLog()
        self.webhooks = WebhookDispatcher(organization_host=f"{organization_name}.crm.dynamics.com")
        self.service_protection = service_protection
        self.throttle: Throttle | None = Throttle(service_protection) if service_protection else None
        self.dop_hint = service_protection.dop_hint if service_protection else 4

        self.apps: dict[str, ApplicationUser] = {}
        self.users: dict[str, SystemUser] = {}
        self.tokens: dict[str, Token] = {}
        self.security = SecurityModel(self.business_unit_id)
        self._bypass_security = False
        self.integration = self.add_application_user("Didomi sync integration")
        self.editor = self.add_application_user("Dynamics editor (stands for a person)")
        self.human_editor = self.add_system_user("Dana Editor")

        self._bulk_enabled = bulk_messages_enabled
        self._sdkmessages = SystemTable("sdkmessages", "sdkmessage", "sdkmessageid")
        self._filters = SystemTable("sdkmessagefilters", "sdkmessagefilter", "sdkmessagefilterid")
        self._endpoints = SystemTable(
            "serviceendpoints",
            "serviceendpoint",
            "serviceendpointid",
            writable=True,
        )
        self._steps = SystemTable(
            "sdkmessageprocessingsteps", "sdkmessageprocessingstep", "sdkmessageprocessingstepid", writable=True
        )
        for name in SDK_MESSAGES:
            mid = stable_id("sdkmessage", name)
            self._sdkmessages.rows[mid] = {"sdkmessageid": mid, "name": name, "isprivate": False}
        self._rebuild_filters()

        self._validation_failures: set[tuple[str, Any]] = set()
        self._init_data()

    # -- data initialisation ------------------------------------------------------------------------------------

    def _init_data(self) -> None:
        self.attributes: dict[str, AttributeMeta] = {}
        self._by_web: dict[str, AttributeMeta] = {}
        for meta in standard_contact_attributes():
            self._register_attribute(meta)
        self.rows: dict[str, dict[str, Any]] = {}
        self.keys: dict[str, AlternateKey] = {}
        self._pending_keys = False
        self._active_keys: list[AlternateKey] = []
        self._key_by_attributes: dict[frozenset[str], AlternateKey] = {}
        self.tombstones: list[tuple[int, str, int]] = []
        self._version = 0
        self._last_us = 0
        self._journal: list[tuple[Any, ...]] | None = None
        self._suppress_events = False
        self._pending_events: list[tuple[str, dict[str, Any], dict[str, Any], Caller]] = []

    def _register_attribute(self, meta: AttributeMeta) -> None:
        self.schema_version = getattr(self, "schema_version", 0) + 1  # invalidates rendered-row caches
        self.attributes[meta.logical_name] = meta
        self._by_web[meta.web_name] = meta
        self._columns = [m.web_name for m in self.attributes.values()]
        self._datetime_columns = frozenset(m.web_name for m in self.attributes.values() if m.kind == "datetime")
        self._lookup_columns = {
            m.web_name: m.logical_name for m in self.attributes.values() if m.attribute_type in ("Lookup", "Owner")
        }
        self._blank = dict.fromkeys(self._columns)
        self._new_row = {**self._blank, **CREATE_DEFAULTS}
        # Hot-path tables: web name -> converter for columns writable on create / on update. Lookups map to a
        # function that raises (they are set with @odata.bind); read-only system columns are absent (ignored).
        self._create_conv: dict[str, Callable[[Any], Any]] = {}
        self._update_conv: dict[str, Callable[[Any], Any]] = {}
        for m in self.attributes.values():
            if m.attribute_type in ("Lookup", "Owner"):
                self._create_conv[m.web_name] = self._update_conv[m.web_name] = _read_only_lookup(m)
                continue
            if m.valid_for_create:
                self._create_conv[m.web_name] = m.converter
            if m.valid_for_update:
                self._update_conv[m.web_name] = m.converter

    # -- identity -----------------------------------------------------------------------------------------------

    def add_system_user(
        self, fullname: str, azure_object_id: str | None = None, roles: Iterable[str] | None = None
    ) -> SystemUser:
        """A person in the org (impersonation target via ``CallerObjectId``); default role: System Administrator."""
        with self._lock:
            user = SystemUser(str(uuid.uuid4()), fullname, azure_object_id or str(uuid.uuid4()))
            self.users[user.systemuserid] = user
            self.security.register_user(user.systemuserid, (SYSTEM_ADMINISTRATOR,) if roles is None else roles)
            return user

    def add_application_user(
        self,
        name: str,
        client_id: str | None = None,
        client_secret: str | None = None,
        can_impersonate: bool = True,
        roles: Iterable[str] | None = None,
    ) -> ApplicationUser:
        """Register an app (client id + secret) with its own application user in the org.

        ``roles`` are the security roles of that user; by default System Administrator, so every operation works
        until a test narrows them (:meth:`remove_role`, :meth:`assign_role`).
        """
        with self._lock:
            client_id = client_id or str(uuid.uuid4())
            user = SystemUser(str(uuid.uuid4()), f"# {name}", str(uuid.uuid4()), applicationid=client_id)
            app = ApplicationUser(name, client_id, client_secret or secrets.token_urlsafe(24), user, can_impersonate)
            self.users[user.systemuserid] = user
            self.apps[client_id] = app
            self.security.register_user(user.systemuserid, (SYSTEM_ADMINISTRATOR,) if roles is None else roles)
            return app

    # -- security roles -----------------------------------------------------------------------------------------

    def system_user(self, client_id_or_user_id: str) -> SystemUser:
        """The system user behind an application (client id) or with this ``systemuserid``."""
        key = client_id_or_user_id.strip().lower()
        with self._lock:
            app = self.apps.get(client_id_or_user_id) or self.apps.get(key)
            if app is not None:
                return app.user
            user = self.users.get(key)
            if user is None:
                raise E.not_found("systemuser", client_id_or_user_id)
            return user

    def assign_role(self, client_id_or_user_id: str, role_name: str) -> list[str]:
        """Give a user (or the application user of a client id) a security role; returns its role names."""
        user = self.system_user(client_id_or_user_id)
        self.security.assign(user.systemuserid, role_name)
        return self.user_roles(user.systemuserid)

    def remove_role(self, client_id_or_user_id: str, role_name: str) -> list[str]:
        """Take a security role away (e.g. System Administrator once the webhook is set up); returns what is left."""
        user = self.system_user(client_id_or_user_id)
        self.security.remove(user.systemuserid, role_name)
        return self.user_roles(user.systemuserid)

    def user_roles(self, client_id_or_user_id: str) -> list[str]:
        user = self.system_user(client_id_or_user_id)
        return [r.name for r in self.security.roles_of(user.systemuserid)]

    def add_role(self, name: str, privileges: Iterable[str] | dict[str, str]) -> dict[str, Any]:
        """Define a custom security role (privilege names at Global depth, or name -> depth)."""
        role = self.security.add_role(name, privileges)
        return role.as_row(self.business_unit_id)

    def user_privileges(self, client_id_or_user_id: str) -> list[dict[str, Any]]:
        """What ``RetrieveUserPrivileges`` returns for this user."""
        user = self.system_user(client_id_or_user_id)
        return self.security.role_privileges(user.systemuserid)

    def check_privilege(self, caller: Caller, privilege: str) -> None:
        """403 ``0x80040220`` unless the effective user holds ``privilege``."""
        if self._bypass_security:
            return
        user = caller.user
        self.security.require(user.systemuserid, privilege, 4 if user.applicationid else 0)

    def check_table_privilege(self, caller: Caller, action: str, entity_set: str) -> None:
        """``action`` Create/Read/Write/Delete on a table (no-op for tables without privileges)."""
        family = TABLE_PRIVILEGES.get(entity_set)
        if family is not None:
            self.check_privilege(caller, f"prv{action}{family}")

    @contextmanager
    def _security_bypassed(self) -> Iterator[None]:
        """Seeding and other Python-side setup act as the platform itself, not as a user."""
        previous = self._bypass_security
        self._bypass_security = True
        try:
            yield
        finally:
            self._bypass_security = previous

    def issue_token(self, tenant: str, form: dict[str, str]) -> dict[str, Any]:
        """Client-credentials grant. Returns the token response JSON or raises :class:`AuthError`."""
        with self._lock:
            if tenant.lower() not in (self.tenant_id, "organizations", "common") and tenant.lower() != "":
                raise AuthError(400, "invalid_request", 90002, f"Tenant '{tenant}' not found.")
            grant = form.get("grant_type", "")
            if grant != "client_credentials":
                raise AuthError(
                    400, "unsupported_grant_type", 70003, f"The app requested an unsupported grant type '{grant}'."
                )
            client_id = form.get("client_id", "")
            app = self.apps.get(client_id)
            if app is None:
                raise AuthError(
                    400,
                    "unauthorized_client",
                    700016,
                    f"Application with identifier '{client_id}' was not found in the directory '{self.tenant_id}'.",
                )
            if not secrets.compare_digest(form.get("client_secret", ""), app.client_secret):
                raise AuthError(
                    401,
                    "invalid_client",
                    7000215,
                    "Invalid client secret provided. Ensure the secret being sent in the request is the client "
                    f"secret value, not the client secret ID, for a secret added to app '{client_id}'.",
                )
            scope = form.get("scope", "").strip()
            scopes = scope.split()
            if len(scopes) != 1 or not scopes[0].endswith("/.default"):
                raise AuthError(
                    400,
                    "invalid_scope",
                    1002012,
                    f"The provided value for scope {scope} is not valid. Client credential flows must have a "
                    "scope value with /.default suffixed to the resource identifier (application ID URI).",
                )
            audience = scopes[0][: -len("/.default")].rstrip("/")
            now = time.time()
            value = self._make_jwt(app, audience, now)
            self.tokens[value] = Token(value, app, audience, now + self.token_lifetime_s)
            return {
                "token_type": "Bearer",
                "expires_in": self.token_lifetime_s,
                "ext_expires_in": self.token_lifetime_s,
                "access_token": value,
            }

    def _make_jwt(self, app: ApplicationUser, audience: str, now: float) -> str:
        """A JWT-shaped bearer token (unsigned in substance; Dataverse clients never validate it)."""

        def b64(data: dict[str, Any]) -> str:
            return base64.urlsafe_b64encode(json.dumps(data, separators=(",", ":")).encode()).decode().rstrip("=")

        header = {"typ": "JWT", "alg": "RS256", "kid": "emulator"}
        claims = {
            "aud": audience,
            "iss": f"https://sts.windows.net/{self.tenant_id}/",
            "iat": int(now),
            "nbf": int(now),
            "exp": int(now + self.token_lifetime_s),
            "appid": app.client_id,
            "oid": app.user.azureactivedirectoryobjectid,
            "tid": self.tenant_id,
            "ver": "1.0",
            "jti": secrets.token_hex(8),
        }
        return f"{b64(header)}.{b64(claims)}.{secrets.token_urlsafe(32)}"

    def authenticate(self, authorization: str | None) -> ApplicationUser | None:
        """The app behind a ``Bearer`` header, or None if missing, unknown, expired or for another resource."""
        if not authorization or authorization[:7].lower() != "bearer ":
            return None
        token = self.tokens.get(authorization[7:].strip())
        if token is None or token.expires_at <= time.time():
            return None
        if self.instance_url is not None and not _same_resource(token.audience, self.instance_url):
            return None
        return token.app

    def expire_tokens(self) -> int:
        """Make every issued token expired server-side (clients holding cached tokens then get 401)."""
        with self._lock:
            for token in self.tokens.values():
                token.expires_at = 0.0
            return len(self.tokens)

    def resolve_caller(self, app: ApplicationUser, caller_object_id: str | None, caller_user_id: str | None) -> Caller:
        """Apply ``CallerObjectId`` (Entra object id) or ``MSCRMCallerID`` (systemuserid) impersonation."""
        if not caller_object_id and not caller_user_id:
            return Caller(app, app.user)
        if not app.can_impersonate:
            raise self.security.missing(app.user.systemuserid, "prvActOnBehalfOfAnotherUser", 4)
        self.security.require(app.user.systemuserid, "prvActOnBehalfOfAnotherUser", 4)
        with self._lock:
            if caller_object_id:
                wanted = caller_object_id.strip().lower()
                for user in self.users.values():
                    if user.azureactivedirectoryobjectid == wanted:
                        return Caller(app, user)
                raise DataverseError(
                    404, E.NOT_FOUND, f"systemuser With azureactivedirectoryobjectid = {wanted} Does Not Exist"
                )
            by_id = self.users.get((caller_user_id or "").strip().lower())
            if by_id is None:
                raise E.not_found("systemuser", caller_user_id or "")
            return Caller(app, by_id)

    def caller_for(self, client_id: str | None = None) -> Caller:
        """A caller for Python-side writes (default: the editor app, i.e. 'someone else')."""
        app = self.apps[client_id] if client_id else self.editor
        return Caller(app, app.user)

    # -- faults and settings ------------------------------------------------------------------------------------

    def fail_validation_for(self, attribute: str, value: Any) -> None:
        """Make any write that sets ``attribute`` to ``value`` fail with 0x80044331 (like a validation plug-in)."""
        with self._lock:
            self._validation_failures.add((attribute, value.lower() if isinstance(value, str) else value))

    def clear_validation_failures(self) -> None:
        with self._lock:
            self._validation_failures.clear()

    def set_bulk_messages_enabled(self, enabled: bool) -> None:
        """Whether CreateMultiple/UpdateMultiple/UpsertMultiple exist for contact (visible in sdkmessagefilters)."""
        with self._lock:
            self._bulk_enabled = enabled
            self._rebuild_filters()

    @property
    def bulk_messages_enabled(self) -> bool:
        return self._bulk_enabled

    def set_service_protection(self, settings: ServiceProtection | None) -> None:
        """Turn limits on (with these settings) or off (None)."""
        with self._lock:
            self.service_protection = settings
            self.throttle = Throttle(settings) if settings else None
            self.dop_hint = settings.dop_hint if settings else 4

    def set_latency_ms(self, latency_ms: float) -> None:
        self.latency_s = latency_ms / 1000.0

    def theoretical_max_records_per_s(
        self, records_per_request: int = 1, concurrency: int = 1, latency_s: float | None = None
    ) -> float:
        """Upper bound on records/s under the current limits (see :func:`throttling.theoretical_max_records_per_s`)."""
        return theoretical_max_records_per_s(
            self.service_protection,
            records_per_request=records_per_request,
            concurrency=concurrency,
            latency_s=self.latency_s if latency_s is None else latency_s,
        )

    def reset(self, schema: bool = True) -> None:
        """Empty the table; with ``schema`` also drop custom columns, keys and webhook registrations.

        Identity (apps, users, tokens) survives so connected clients keep working; with ``schema`` custom roles go
        and every user gets its initial roles back.
        """
        with self._lock:
            if schema:
                self._init_data()
                self.change_tracking_enabled = True
                self._endpoints.rows.clear()
                self._steps.rows.clear()
                self.security.reset()
            else:
                self.rows.clear()
                self.tombstones.clear()
                for key in self.keys.values():
                    key.index.clear()
            self._validation_failures.clear()
            self.faults.clear()
            self.requests.clear()
            if self.throttle is not None:
                self.throttle.reset()

    def seed(self, name: str) -> None:
        """Apply a registered seed (``empty``, ``demo``)."""
        hook = SEEDS.get(name)
        if hook is None:
            raise ValueError(f"unknown seed {name!r}; known: {sorted(SEEDS)}")
        hook(self)

    def route_name(self, method: str, path: str) -> str:
        """Stable route label for the request log (ids and keys replaced by placeholders)."""
        return route_name(path)

    # -- metadata -----------------------------------------------------------------------------------------------

    def add_attribute(
        self,
        logical_name: str,
        attribute_type: str,
        max_length: int | None = None,
        options: dict[int, str] | list[str] | None = None,
    ) -> AttributeMeta:
        """Add a custom column (logical name needs a publisher prefix such as ``new_``)."""
        if isinstance(options, list):
            options = {100000000 + i: text for i, text in enumerate(options)}
        meta = AttributeMeta(
            logical_name.lower(),
            attribute_type,
            schema_name=logical_name,
            display_name=logical_name,
            max_length=max_length,
            options=options,
            is_custom=True,
        )
        return self.create_attribute(meta)

    def create_attribute(self, meta: AttributeMeta) -> AttributeMeta:
        with self._lock:
            if "_" not in meta.logical_name.strip("_"):
                raise DataverseError(
                    400,
                    E.INVALID_ARGUMENT,
                    f"The schema name {meta.schema_name} for type Attribute is not unique or does not start with a "
                    "valid customization prefix.",
                )
            if meta.logical_name in self.attributes:
                raise DataverseError(
                    400,
                    "0x80044363",
                    f"An attribute with the specified name {meta.schema_name} already exists. Specify a unique name.",
                )
            self._register_attribute(meta)
            for cid, row in self.rows.items():
                if meta.web_name not in row:
                    self.rows[cid] = {**row, meta.web_name: None}
            return meta

    def attribute_list(self) -> list[AttributeMeta]:
        with self._lock:
            return list(self.attributes.values())

    def entity_metadata(self) -> dict[str, Any]:
        return entity_json(self.attribute_list(), self.change_tracking_enabled)

    def define_alternate_key(
        self, name: str, attributes: list[str] | tuple[str, ...], display_name: str | None = None
    ) -> AlternateKey:
        """Define an alternate key; it turns Active after ``key_activation_delay_s`` (0: at once) or Failed."""
        with self._lock:
            self._refresh_keys()
            logical = name.lower()
            attrs = tuple(a.lower() for a in attributes)
            if logical in self.keys:
                raise DataverseError(
                    400, "0x80048d23", f"An entity key with the name {name} already exists on entity contact."
                )
            if len(self.keys) >= MAX_KEYS:
                raise DataverseError(
                    400, "0x80048d1a", f"The maximum number of keys ({MAX_KEYS}) for entity contact has been reached."
                )
            if not attrs or len(attrs) > MAX_KEY_ATTRIBUTES:
                raise DataverseError(
                    400, E.INVALID_ARGUMENT, f"An entity key must have between 1 and {MAX_KEY_ATTRIBUTES} attributes."
                )
            size = 0
            for a in attrs:
                meta = self.attributes.get(a)
                if meta is None:
                    raise E.unknown_property(a)
                if meta.attribute_type not in ("String", "Integer", "Decimal", "DateTime", "Lookup", "Picklist"):
                    raise DataverseError(
                        400,
                        E.INVALID_ARGUMENT,
                        f"Attribute {a} of type {meta.attribute_type} cannot be part of an entity key.",
                    )
                size += (meta.max_length or 8) * 2 if meta.attribute_type == "String" else 16
            if size > 900:
                raise DataverseError(
                    400, E.INVALID_ARGUMENT, "The key size exceeds the maximum of 900 bytes for an entity key."
                )
            key = AlternateKey(
                logical,
                display_name or name,
                attrs,
                stable_id(ENTITY, "key", logical),
                status="Pending",
                ready_at=time.monotonic() + self.key_activation_delay_s,
            )
            self.keys[logical] = key
            self._pending_keys = True
            self._refresh_keys()
            return key

    def delete_alternate_key(self, name: str) -> None:
        with self._lock:
            key = self.keys.pop(name.lower(), None)
            if key is None:
                for k in list(self.keys.values()):
                    if k.metadata_id == name.lower():
                        key = self.keys.pop(k.logical_name)
            if key is None:
                raise E.not_found("EntityKeyMetadata", name)
            self._active_keys = [k for k in self.keys.values() if k.status == "Active"]
            self._key_by_attributes.clear()

    def key_list(self) -> list[AlternateKey]:
        with self._lock:
            self._refresh_keys()
            return list(self.keys.values())

    def _refresh_keys(self) -> None:
        """Build the index of keys whose (simulated) asynchronous index job has finished."""
        if not self._pending_keys:
            return
        now = time.monotonic()
        still_pending = False
        for key in self.keys.values():
            if key.status != "Pending":
                continue
            if key.ready_at > now:
                still_pending = True
                continue
            index: dict[tuple[Any, ...], str] = {}
            failed = False
            for cid, row in self.rows.items():
                k = key.key_of(row)
                if k is None:
                    continue
                if k in index:
                    failed = True
                    break
                index[k] = cid
            key.status = "Failed" if failed else "Active"
            key.index = {} if failed else index
        self._pending_keys = still_pending
        self._active_keys = [k for k in self.keys.values() if k.status == "Active"]

    # -- contact resolution -------------------------------------------------------------------------------------

    def resolver(self) -> Resolver:
        """Typed property resolver for $filter/$orderby over contacts."""
        by_web = self._by_web

        def resolve(path: str) -> tuple[Callable[[dict[str, Any]], Any], str]:
            meta = by_web.get(path)
            if meta is None:
                raise ODataError(f"Could not find a property named '{path}' on type 'Microsoft.Dynamics.CRM.contact'.")
            name = meta.web_name
            return (lambda row: row.get(name)), meta.kind

        return resolve

    def check_columns(self, names: list[str]) -> None:
        for name in names:
            if name not in self._by_web:
                raise E.unknown_property(name)

    def find_contact_id(self, address: str | dict[str, Any]) -> str | None:
        """Primary key for a GUID or an alternate-key dict; None if no row matches. Raises for an unknown key."""
        with self._lock:
            self._refresh_keys()
            return self._find(address)

    def _find(self, address: str | dict[str, Any]) -> str | None:
        if isinstance(address, str):
            cid = address.lower()
            return cid if cid in self.rows else None
        if PRIMARY_ID in address and len(address) == 1:
            cid = str(address[PRIMARY_ID]).lower()
            return cid if cid in self.rows else None
        key = self._key_for(address)
        return key.index.get(self._key_value(key, address))

    def _key_for(self, values: dict[str, Any]) -> AlternateKey:
        wanted = frozenset(values)
        cached = self._key_by_attributes.get(wanted)
        if cached is not None and cached.status == "Active":
            return cached
        for key in self._active_keys:
            if set(key.attributes) == wanted:
                self._key_by_attributes[wanted] = key
                return key
        for key in self.keys.values():
            if set(key.attributes) == wanted:
                raise DataverseError(
                    400,
                    E.INVALID_ARGUMENT,
                    f"The entity key {key.schema_name} is not active (EntityKeyIndexStatus: {key.status}); it "
                    "cannot be used to address records yet.",
                )
        raise DataverseError(
            400,
            E.INVALID_ARGUMENT,
            f"Invalid alternate key: no entity key on 'contact' is made of the attributes {', '.join(sorted(wanted))}.",
        )

    def _key_value(self, key: AlternateKey, values: dict[str, Any]) -> tuple[Any, ...]:
        if len(key.attributes) == 1:
            name = key.attributes[0]
            meta = self._by_web.get(name)
            v = meta.converter(values[name]) if meta is not None else values[name]
            return (v.lower() if isinstance(v, str) else v,)
        out = []
        for a in key.attributes:
            v = self._by_web[a].converter(values[a]) if a in self._by_web else values[a]
            out.append(v.lower() if isinstance(v, str) else v)
        return tuple(out)

    def get_contact(self, address: str | dict[str, Any]) -> dict[str, Any]:
        """The stored row (do not mutate it) or a 404 error."""
        with self._lock:
            cid = self.find_contact_id(address)
            if cid is None:
                raise E.not_found(ENTITY, _address_text(address))
            return self.rows[cid]

    # -- writes -------------------------------------------------------------------------------------------------

    def _stamp(self) -> tuple[int, int]:
        """Strictly increasing modifiedon (microseconds; bumped on ties) and a new row version."""
        now = time.time_ns() // 1000
        if now <= self._last_us:
            now = self._last_us + 1
        self._last_us = now
        self._version += 1
        return now, self._version

    def _convert(self, body: dict[str, Any], creating: bool) -> dict[str, Any]:
        """Validate a Web API body into stored values; unknown columns and bad values raise Dataverse errors."""
        out: dict[str, Any] = {}
        table = self._create_conv if creating else self._update_conv
        for k, v in body.items():
            conv = table.get(k)
            if conv is not None:
                out[k] = conv(v)
            elif k in self._by_web:
                continue  # Dataverse ignores system columns it computes itself
            elif "@" in k:
                if k.endswith("@odata.bind"):
                    self._apply_bind(k[: -len("@odata.bind")], v, out)
            else:
                raise E.unknown_property(k)
        return out

    def _apply_bind(self, nav: str, value: Any, out: dict[str, Any]) -> None:
        meta = self.attributes.get(nav.lower())
        if meta is None or meta.attribute_type not in ("Lookup", "Owner") or nav.lower() != "ownerid":
            raise DataverseError(
                400,
                E.PROPERTY_NOT_FOUND,
                f"An undeclared property '{nav}' which only has property annotations in the payload but no "
                "property value was found in the payload.",
            )
        m = _BIND_RE.match(str(value or ""))
        if not m or m.group(2).lower() not in self.users:
            raise E.not_found("systemuser", str(value))
        out[meta.web_name] = m.group(2).lower()

    def _check_injected(self, row: dict[str, Any], touched: Iterable[str]) -> None:
        if not self._validation_failures:
            return
        for attribute, value in self._validation_failures:
            if attribute in touched:
                v = row.get(attribute)
                if (v.lower() if isinstance(v, str) else v) == value:
                    raise DataverseError(
                        400,
                        E.VALIDATION,
                        f"A validation error occurred. The value '{row.get(attribute)}' of '{attribute}' on record "
                        "of type 'contact' failed validation.",
                    )

    def _put(
        self, cid: str, new: dict[str, Any], old: dict[str, Any] | None, touched: Iterable[str] | None = None
    ) -> None:
        """Store a row, keeping alternate-key indexes unique; journal it inside a transaction.

        ``touched`` (the columns an update wrote) lets keys over untouched columns skip index maintenance.
        """
        if self._active_keys:
            changes = []
            for key in self._active_keys:
                if touched is not None and old is not None and not any(a in touched for a in key.attributes):
                    continue
                nk = key.key_of(new)
                ok = key.key_of(old)
                if nk == ok:
                    continue
                if nk is not None:
                    holder = key.index.get(nk)
                    if holder is not None and holder != cid:
                        raise DataverseError(
                            412,
                            E.DUPLICATE_KEY,
                            f"A record that has the attribute values {', '.join(key.attributes)} already exists. "
                            f"The entity key {key.schema_name} requires that this set of attributes contains unique "
                            "values. Select unique values and try again.",
                        )
                changes.append((key, ok, nk))
            for key, ok, nk in changes:
                if ok is not None and key.index.get(ok) == cid:
                    del key.index[ok]
                if nk is not None:
                    key.index[nk] = cid
        self.rows[cid] = new
        if self._journal is not None:
            self._journal.append(("put", cid, old))

    def _unindex(self, cid: str, row: dict[str, Any]) -> None:
        for key in self._active_keys:
            k = key.key_of(row)
            if k is not None and key.index.get(k) == cid:
                del key.index[k]

    def _index(self, cid: str, row: dict[str, Any]) -> None:
        for key in self._active_keys:
            k = key.key_of(row)
            if k is not None:
                key.index[k] = cid

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """All-or-nothing scope (changesets, bulk messages); nested scopes join the outer one."""
        with self._lock:
            if self._journal is not None:
                yield
                return
            self._journal = []
            self._pending_events = []
            try:
                yield
            except BaseException:
                self._rollback()
                self._journal = None
                self._pending_events = []
                raise
            journal_events = self._pending_events
            self._journal = None
            self._pending_events = []
            for event in journal_events:
                self._emit(*event)

    def _rollback(self) -> None:
        assert self._journal is not None
        for entry in reversed(self._journal):
            kind, cid, old = entry[0], entry[1], entry[2]
            current = self.rows.get(cid)
            if current is not None:
                self._unindex(cid, current)
            if old is None:
                self.rows.pop(cid, None)
            else:
                self.rows[cid] = old
                self._index(cid, old)
            if kind == "del":
                self.tombstones.pop()

    def _event(self, message: str, row: dict[str, Any], target: dict[str, Any], caller: Caller) -> None:
        if not self._steps.rows or self._suppress_events:
            return
        if self._journal is not None:
            self._pending_events.append((message, row, target, caller))
        else:
            self._emit(message, row, target, caller)

    def create_contact(
        self,
        body: dict[str, Any],
        caller: Caller,
        *,
        key_values: dict[str, Any] | None = None,
        primary_id: str | None = None,
    ) -> dict[str, Any]:
        """Create one contact from a Web API body; returns the stored row."""
        with self._lock:
            self.check_privilege(caller, "prvCreateContact")
            self._refresh_keys()
            values = self._convert(body, creating=True)
            if key_values:
                for name, value in key_values.items():
                    meta = self._by_web.get(name)
                    if meta is None:
                        raise E.unknown_property(name)
                    values[name] = meta.converter(value)
            cid = primary_id or values.pop(PRIMARY_ID, None) or new_guid()
            values.pop(PRIMARY_ID, None)
            if cid in self.rows:
                raise DataverseError(412, E.DUPLICATE_KEY, "Cannot insert duplicate key.")
            now, version = self._stamp()
            user = caller.user.systemuserid
            behalf = caller.app.user.systemuserid if caller.impersonating else None
            row = dict(self._new_row)
            row.update(values)
            row[PRIMARY_ID] = cid
            row["fullname"] = _fullname(row)
            row["createdon"] = now
            row["modifiedon"] = now
            row["versionnumber"] = version
            row["_createdby_value"] = user
            row["_modifiedby_value"] = user
            row["_createdonbehalfby_value"] = behalf
            row["_modifiedonbehalfby_value"] = behalf
            if row.get("_ownerid_value") is None:
                row["_ownerid_value"] = user
            self._check_injected(row, values)
            self._put(cid, row, None)
            if self._steps.rows:
                self._event("Create", row, row, caller)
            return row

    def update_contact(
        self,
        address: str | dict[str, Any],
        body: dict[str, Any],
        caller: Caller,
        *,
        if_match: str | None = None,
    ) -> dict[str, Any]:
        """Update an existing contact (404 if missing; 412 if ``if_match`` is an ETag that no longer matches)."""
        with self._lock:
            self._refresh_keys()
            cid = self.find_contact_id(address)
            if cid is None:
                raise E.not_found(ENTITY, _address_text(address))
            old = self.rows[cid]
            _check_etag(old, if_match)
            values = self._convert(body, creating=False)
            return self._apply_update(cid, old, values, caller)

    def _apply_update(self, cid: str, old: dict[str, Any], values: dict[str, Any], caller: Caller) -> dict[str, Any]:
        self.check_privilege(caller, "prvWriteContact")
        now, version = self._stamp()
        new = dict(old)
        new.update(values)
        if "firstname" in values or "lastname" in values:
            new["fullname"] = _fullname(new)
        if "statecode" in values and "statuscode" not in values:
            new["statuscode"] = 2 if new["statecode"] == 1 else 1
        user = caller.user.systemuserid
        new["modifiedon"] = now
        new["versionnumber"] = version
        new["_modifiedby_value"] = user
        new["_modifiedonbehalfby_value"] = caller.app.user.systemuserid if caller.impersonating else None
        self._check_injected(new, values)
        self._put(cid, new, old, values)
        if self._steps.rows:
            target = {k: new[k] for k in values}
            target[PRIMARY_ID] = cid
            for k in ("modifiedon", "_modifiedby_value", "_modifiedonbehalfby_value", "versionnumber"):
                target[k] = new[k]
            self._event("Update", new, {"__requested__": list(values), **target}, caller)
        return new

    def upsert_contact(
        self,
        address: str | dict[str, Any],
        body: dict[str, Any],
        caller: Caller,
        *,
        if_match: str | None = None,
        if_none_match: str | None = None,
        reject_key_columns_on_create: bool = False,
    ) -> tuple[dict[str, Any], bool]:
        """PATCH semantics: update if the row exists, else create; ``If-Match: *`` / ``If-None-Match: *`` narrow it.

        Returns (row, created).
        """
        with self._lock:
            self._refresh_keys()
            return self._upsert_one(address, body, caller, if_match, if_none_match, reject_key_columns_on_create)

    def _upsert_one(
        self,
        address: str | dict[str, Any],
        body: dict[str, Any],
        caller: Caller,
        if_match: str | None = None,
        if_none_match: str | None = None,
        reject_key_columns_on_create: bool = False,
    ) -> tuple[dict[str, Any], bool]:
        cid = self._find(address)
        if cid is not None:
            if if_none_match is not None and if_none_match.strip() == "*":
                raise DataverseError(412, E.DUPLICATE_KEY, "A record with matching key values already exists.")
            old = self.rows[cid]
            if if_match is not None:
                _check_etag(old, if_match)
            values = self._convert(body, creating=False)
            if isinstance(address, dict):
                for name, value in address.items():
                    if name in values and _norm(values[name]) != _norm(value):
                        raise DataverseError(
                            400,
                            E.INVALID_ARGUMENT,
                            f"The value of '{name}' in the request body does not match the alternate key value "
                            "in the URL.",
                        )
            return self._apply_update(cid, old, values, caller), False
        if if_match is not None and if_match.strip():
            raise E.not_found(ENTITY, _address_text(address))
        if isinstance(address, str):
            return self.create_contact(body, caller, primary_id=address.lower()), True
        if reject_key_columns_on_create:
            duplicated = [name for name in address if name in body]
            if duplicated:
                raise DataverseError(
                    400,
                    E.INVALID_ARGUMENT,
                    f"An item with the same key has already been added. Key: {duplicated[0]}. Do not repeat "
                    "alternate key columns in the target attributes when the key is set in @odata.id.",
                )
        key_values = dict(address)
        primary = key_values.pop(PRIMARY_ID, None)
        body_without_keys = {k: v for k, v in body.items() if k not in key_values}
        for name, value in key_values.items():
            if name in body and _norm(body[name]) != _norm(value):
                raise DataverseError(
                    400,
                    E.INVALID_ARGUMENT,
                    f"The value of '{name}' in the request body does not match the alternate key value in the URL.",
                )
        return (
            self.create_contact(body_without_keys, caller, key_values=key_values, primary_id=primary),
            True,
        )

    def delete_contact(self, address: str | dict[str, Any], caller: Caller, *, if_match: str | None = None) -> None:
        with self._lock:
            self.check_privilege(caller, "prvDeleteContact")
            self._refresh_keys()
            cid = self.find_contact_id(address)
            if cid is None:
                raise E.not_found(ENTITY, _address_text(address))
            old = self.rows[cid]
            _check_etag(old, if_match)
            now, version = self._stamp()
            self._unindex(cid, old)
            del self.rows[cid]
            self.tombstones.append((version, cid, now))
            if self._journal is not None:
                self._journal.append(("del", cid, old))

    # -- bulk messages ------------------------------------------------------------------------------------------

    def _require_bulk(self, message: str) -> None:
        if not self._bulk_enabled:
            raise DataverseError(
                400,
                E.INVALID_ARGUMENT,
                f"The message {message} is not available for the entity contact in this organization.",
            )

    @staticmethod
    def _check_targets(targets: Any, message: str) -> list[dict[str, Any]]:
        if not isinstance(targets, list) or not targets:
            raise DataverseError(400, E.INVALID_ARGUMENT, f"{message} requires a non-empty 'Targets' collection.")
        for t in targets:
            if not isinstance(t, dict):
                raise DataverseError(400, E.PAYLOAD, "Each target must be a JSON object.")
            odata_type = t.get("@odata.type")
            if odata_type is None:
                raise DataverseError(
                    400,
                    E.PAYLOAD,
                    "Error identified in Payload provided by the user for Entity :'', For more information on this "
                    "error please follow this help link https://go.microsoft.com/fwlink/?linkid=2195293  ----> "
                    "InnerException : Microsoft.OData.ODataException: An entry without a type name was found, but "
                    "no expected type was specified. To allow entries without type information, the expected type "
                    "must also be specified when the model is specified.",
                )
            if str(odata_type).lstrip("#") != "Microsoft.Dynamics.CRM.contact":
                raise DataverseError(
                    400,
                    E.PAYLOAD,
                    f"The entity type '{odata_type}' of a target does not match the entity set 'contacts' of the "
                    "request.",
                )
        return targets

    def create_multiple(self, targets: Any, caller: Caller) -> list[str]:
        """CreateMultiple on contact: all-or-nothing (a standard table); returns the new ids."""
        with self._lock:
            self._require_bulk("CreateMultiple")
            items = self._check_targets(targets, "CreateMultiple")
            with self.transaction():
                return [self.create_contact(t, caller)[PRIMARY_ID] for t in items]

    def update_multiple(self, targets: Any, caller: Caller) -> int:
        """UpdateMultiple: every target carries ``contactid``; any failure rolls back the whole request."""
        with self._lock:
            self._require_bulk("UpdateMultiple")
            items = self._check_targets(targets, "UpdateMultiple")
            with self.transaction():
                for t in items:
                    address = _target_address(t)
                    if address is None:
                        raise DataverseError(
                            400, E.INVALID_ARGUMENT, "Each UpdateMultiple target must contain contactid."
                        )
                    body = {k: v for k, v in t.items() if k != PRIMARY_ID and k != "@odata.id"}
                    self.update_contact(address, body, caller)
            return len(items)

    def upsert_multiple(self, targets: Any, caller: Caller) -> list[tuple[str, bool]]:
        """UpsertMultiple: targets addressed by ``@odata.id`` (alternate key or id) or ``contactid``; atomic."""
        with self._lock:
            self._require_bulk("UpsertMultiple")
            items = self._check_targets(targets, "UpsertMultiple")
            self._refresh_keys()
            results: list[tuple[str, bool]] = []
            with self.transaction():
                for t in items:
                    address = _target_address(t)
                    if address is None:
                        row = self.create_contact(t, caller)
                        results.append((row[PRIMARY_ID], True))
                        continue
                    row, created = self._upsert_one(address, t, caller, reject_key_columns_on_create=True)
                    results.append((row[PRIMARY_ID], created))
            return results

    # -- Python-side data API -----------------------------------------------------------------------------------

    def add_contacts(self, rows: list[dict[str, Any]]) -> list[str]:
        """Seed rows directly (no webhooks, no limits). System columns (createdon, modifiedon, ...) may be given.

        Values use Web API shapes: ISO strings for DateTime columns, ``_x_value`` GUIDs for lookups.
        """
        ids: list[str] = []
        with self._lock, self.transaction(), self._events_suppressed(), self._security_bypassed():
            caller = Caller(self.integration, self.integration.user)
            for source in rows:
                system = {k: source[k] for k in _SEEDABLE_SYSTEM if k in source}
                body = {k: v for k, v in source.items() if k not in _SEEDABLE_SYSTEM}
                row = self.create_contact(body, caller)
                if system:
                    cid = row[PRIMARY_ID]
                    patched = dict(row)
                    for k, v in system.items():
                        meta = self._by_web[k]
                        patched[k] = parse_datetime_us(v) if meta.kind == "datetime" and isinstance(v, str) else v
                    if "modifiedon" in system and "createdon" not in system:
                        patched["createdon"] = patched["modifiedon"]
                    self.rows[cid] = patched
                ids.append(row[PRIMARY_ID])
        return ids

    @contextmanager
    def _events_suppressed(self) -> Iterator[None]:
        previous = self._suppress_events
        self._suppress_events = True
        try:
            yield
        finally:
            self._suppress_events = previous

    def edit_contact(self, contact_id: str, changes: dict[str, Any], *, client_id: str | None = None) -> dict[str, Any]:
        """An edit made 'in Dynamics' (default: by the editor app user); fires webhooks like any Web API write."""
        row = self.update_contact(contact_id, changes, self.caller_for(client_id))
        return self.render_row(row)

    def contacts_rows(self) -> list[dict[str, Any]]:
        """Dump every contact in Web API JSON shape (ISO timestamps), ordered by createdon."""
        with self._lock:
            rows = sorted(self.rows.values(), key=lambda r: (r.get("createdon") or 0, r[PRIMARY_ID]))
            return [self.render_row(r, etag=False) for r in rows]

    def contact_count(self) -> int:
        return len(self.rows)

    # -- rendering and queries ----------------------------------------------------------------------------------

    def render_row(
        self,
        row: dict[str, Any],
        select: list[str] | None = None,
        annotations: bool = False,
        etag: bool = True,
    ) -> dict[str, Any]:
        """A row as Web API JSON: ``@odata.etag``, selected columns, formatted values when asked."""
        columns = select or self._columns
        dt_cols = self._datetime_columns
        out: dict[str, Any] = {"@odata.etag": f'W/"{row["versionnumber"]}"'} if etag else {}
        for name in columns:
            v = row.get(name)
            if v is not None and name in dt_cols:
                v = format_us(v)
            out[name] = v
        if select and PRIMARY_ID not in select:
            out[PRIMARY_ID] = row[PRIMARY_ID]
        if annotations:
            self._annotate(row, columns, out)
        return out

    def _annotate(self, row: dict[str, Any], columns: list[str], out: dict[str, Any]) -> None:
        for name in columns:
            meta = self._by_web.get(name)
            v = row.get(name)
            if meta is None or v is None:
                continue
            fv = "@OData.Community.Display.V1.FormattedValue"
            if meta.attribute_type in ("Picklist", "State", "Status") and meta.options:
                out[name + fv] = meta.options.get(v, str(v))
            elif meta.attribute_type == "Boolean":
                out[name + fv] = (meta.options or {}).get(int(v), "Yes" if v else "No")
            elif meta.kind == "datetime":
                t = time.gmtime(v // 1_000_000)
                hour = t.tm_hour % 12 or 12
                ampm = "AM" if t.tm_hour < 12 else "PM"
                out[name + fv] = f"{t.tm_mon}/{t.tm_mday}/{t.tm_year} {hour}:{t.tm_min:02d} {ampm}"
            elif meta.attribute_type in ("Lookup", "Owner"):
                user = self.users.get(v)
                out[name + fv] = user.fullname if user else None
                out[name + "@Microsoft.Dynamics.CRM.lookuplogicalname"] = "systemuser"
                out[name + "@Microsoft.Dynamics.CRM.associatednavigationproperty"] = meta.logical_name

    def query_contacts(
        self,
        *,
        predicate: Callable[[dict[str, Any]], bool] | None,
        orderby: list[tuple[str, bool]],
        page_size: int,
        state: dict[str, Any] | None,
        with_count: bool,
        tracking: bool = False,
    ) -> QueryPage:
        """One page of a contact query; ``state`` is the decoded paging cookie of the previous page."""
        with self._lock:
            by_web = self._by_web
            order: list[tuple[Callable[[dict[str, Any]], Any], str, bool]] = []
            for name, desc in orderby:
                meta = by_web.get(name)
                if meta is None:
                    raise E.unknown_property(name)
                order.append((itemgetter_or_none(meta.web_name), meta.kind, desc))
            if not any(name == PRIMARY_ID for name, _ in orderby):
                order.append((itemgetter_or_none(PRIMARY_ID), "guid", False))
            after = None
            delta_version = self._version if tracking else None
            if state is not None:
                after = key_from_json(state["k"])
                if tracking:
                    delta_version = state.get("v", delta_version)
            page, last_key, count = run_query(
                self.rows.values(),
                predicate=predicate,
                order=order,
                page_size=page_size,
                after=after,
                with_count=with_count,
            )
            next_state: dict[str, Any] | None = None
            if last_key is not None:
                next_state = {"k": key_to_json(last_key)}
                if tracking:
                    next_state["v"] = delta_version
            limited = count is not None and count > MAX_COUNT
            return QueryPage(
                page,
                next_state,
                min(count, MAX_COUNT) if count is not None else None,
                limited,
                delta_version if (tracking and next_state is None) else None,
            )

    def changes_since(self, version: int, issued_us: int) -> tuple[list[dict[str, Any]], list[str], int]:
        """Rows changed and ids deleted after ``version`` (change tracking), and the version to continue from."""
        with self._lock:
            if not self.change_tracking_enabled:
                raise DataverseError(
                    400, E.INVALID_ARGUMENT, "Change tracking is not enabled for the entity 'contact'."
                )
            if time.time_ns() // 1000 - issued_us > self.delta_token_ttl_s * 1_000_000:
                raise DataverseError(
                    400,
                    E.INVALID_ARGUMENT,
                    "Version stamp associated with the client has expired. Please perform a full sync.",
                )
            changed = sorted(
                (r for r in self.rows.values() if r["versionnumber"] > version), key=itemgetter("versionnumber")
            )
            deleted = [cid for v, cid, _ in self.tombstones if v > version and cid not in self.rows]
            return changed, deleted, self._version

    def current_version(self) -> int:
        return self._version

    # -- system tables ------------------------------------------------------------------------------------------

    def system_table(self, entity_set: str) -> SystemTable | None:
        if entity_set == "systemusers":
            table = SystemTable("systemusers", "systemuser", "systemuserid")
            table.rows = {u.systemuserid: self._user_row(u) for u in self.users.values()}
            return table
        if entity_set == "roles":
            table = SystemTable("roles", "role", "roleid")
            table.rows = self.security.role_rows()
            return table
        return {
            "sdkmessages": self._sdkmessages,
            "sdkmessagefilters": self._filters,
            "serviceendpoints": self._endpoints,
            "sdkmessageprocessingsteps": self._steps,
        }.get(entity_set)

    def _user_row(self, user: SystemUser) -> dict[str, Any]:
        """A systemuser row with its roles as the ``systemuserroles_association`` collection (shown when expanded)."""
        row = user.as_row()
        row["_businessunitid_value"] = self.business_unit_id
        row["systemuserroles_association"] = [
            r.as_row(self.business_unit_id) for r in self.security.roles_of(user.systemuserid)
        ]
        return row

    def _rebuild_filters(self) -> None:
        self._filters.rows.clear()
        for mid, message in self._sdkmessages.rows.items():
            name = message["name"]
            if name in BULK_MESSAGES and not self._bulk_enabled:
                continue
            fid = stable_id("sdkmessagefilter", name, ENTITY)
            self._filters.rows[fid] = {
                "sdkmessagefilterid": fid,
                "primaryobjecttypecode": ENTITY,
                "secondaryobjecttypecode": "none",
                "iscustomprocessingstepallowed": True,
                "isvisible": True,
                "_sdkmessageid_value": mid,
                "sdkmessageid": {"sdkmessageid": mid, "name": name},
            }

    def create_system_row(self, entity_set: str, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
        """Create a service endpoint or a processing step (validating the documented fields)."""
        with self._lock:
            table = self.system_table(entity_set)
            if table is None or not table.writable:
                raise DataverseError(405, "", f"The entity set '{entity_set}' does not support creating records.")
            self.check_table_privilege(caller, "Create", entity_set)
            row: dict[str, Any] = {}
            for k, v in body.items():
                if k.endswith("@odata.bind"):
                    nav = k[: -len("@odata.bind")]
                    m = _BIND_RE.match(str(v or ""))
                    if not m:
                        raise DataverseError(400, E.PAYLOAD, f"The @odata.bind value '{v}' is not a valid reference.")
                    target = self.system_table(m.group(1))
                    if target is None or m.group(2).lower() not in target.rows:
                        raise E.not_found(m.group(1).rstrip("s"), m.group(2))
                    row[f"_{nav}_value"] = m.group(2).lower()
                elif k.startswith("@"):
                    continue
                else:
                    row[k] = v
            if entity_set == "serviceendpoints":
                if int(row.get("contract", 8)) == 8 and not row.get("url"):
                    raise DataverseError(400, E.INVALID_ARGUMENT, "A webhook service endpoint requires a url.")
                row["_authvalue"] = row.pop("authvalue", None)
                row.setdefault("messageformat", 2)
                row.setdefault("authtype", 5)
            else:
                for required in ("_eventhandler_serviceendpoint_value", "_sdkmessageid_value"):
                    if required not in row:
                        raise DataverseError(
                            400, E.INVALID_ARGUMENT, f"Missing required binding {required[1:-6]}@odata.bind."
                        )
                row.setdefault("stage", 40)
                row.setdefault("mode", 1)
                row.setdefault("rank", 1)
                row.setdefault("filteringattributes", None)
                row.setdefault("statecode", 0)
                row["_eventhandler_value"] = row["_eventhandler_serviceendpoint_value"]
            rid = str(uuid.uuid4())
            row[table.primary_key] = rid
            row["createdon"] = format_us(time.time_ns() // 1000)
            row["_createdby_value"] = caller.user.systemuserid
            table.rows[rid] = row
            return row

    def update_system_row(
        self, entity_set: str, rid: str, body: dict[str, Any], caller: Caller | None = None
    ) -> dict[str, Any]:
        """Update a registration row; with a ``caller`` its Write privilege is checked."""
        with self._lock:
            table = self.system_table(entity_set)
            if table is None or not table.writable:
                raise DataverseError(405, "", f"The entity set '{entity_set}' does not support updates.")
            if caller is not None:
                self.check_table_privilege(caller, "Write", entity_set)
            row = table.rows.get(rid.lower())
            if row is None:
                raise E.not_found(table.logical_name, rid)
            for k, v in body.items():
                if k.startswith("@"):
                    continue
                if k == "authvalue":
                    row["_authvalue"] = v
                elif k != table.primary_key:
                    row[k] = v
            return row

    def delete_system_row(self, entity_set: str, rid: str, caller: Caller | None = None) -> None:
        """Delete a registration row; with a ``caller`` its Delete privilege is checked."""
        with self._lock:
            table = self.system_table(entity_set)
            if table is None or not table.writable:
                raise DataverseError(405, "", f"The entity set '{entity_set}' does not support deletes.")
            if caller is not None:
                self.check_table_privilege(caller, "Delete", entity_set)
            if table.rows.pop(rid.lower(), None) is None:
                raise E.not_found(table.logical_name, rid)
            if entity_set == "serviceendpoints":
                for sid in [s for s, r in self._steps.rows.items() if r.get("_eventhandler_value") == rid.lower()]:
                    del self._steps.rows[sid]

    # -- webhooks -----------------------------------------------------------------------------------------------

    def _emit(self, message: str, row: dict[str, Any], target: dict[str, Any], caller: Caller) -> None:
        requested = set(target.pop("__requested__", None) or target)
        matches = []
        for step in self._steps.rows.values():
            if step.get("statecode", 0) != 0:
                continue
            msg = self._sdkmessages.rows.get(step.get("_sdkmessageid_value", ""))
            if msg is None or msg["name"] != message:
                continue
            fid = step.get("_sdkmessagefilterid_value")
            if fid is not None:
                flt = self._filters.rows.get(fid)
                if flt is None or flt["primaryobjecttypecode"] != ENTITY:
                    continue
            filtering = step.get("filteringattributes")
            if message == "Update" and filtering:
                wanted = {a.strip().lower() for a in str(filtering).split(",") if a.strip()}
                if not wanted & {self._lookup_columns.get(k, k) for k in requested}:
                    continue
            endpoint = self._endpoints.rows.get(step.get("_eventhandler_value", ""))
            if endpoint is None:
                continue
            matches.append((step, endpoint))
        if not matches:
            return
        types = {m.logical_name: m.attribute_type for m in self.attributes.values()}
        logical_target = {self._lookup_columns.get(k, k): v for k, v in target.items()}
        post_image = {self._lookup_columns.get(k, k): v for k, v in row.items()}
        event = WebhookEvent(
            message=message,
            entity_id=row[PRIMARY_ID],
            target=logical_target,
            post_image=post_image,
            attribute_types=types,
            user_id=caller.user.systemuserid,
            initiating_user_id=caller.user.systemuserid,
            user_aad_object_id=caller.user.azureactivedirectoryobjectid,
            organization_id=self.organization_id,
            organization_name=self.organization_name,
            business_unit_id=self.business_unit_id,
            correlation_id=str(uuid.uuid4()),
            at_us=row["modifiedon"],
        )
        for step, endpoint in matches:
            self.webhooks.enqueue(step, endpoint, event)

    def webhook_deliveries(self) -> list[dict[str, Any]]:
        return [d.as_dict() for d in list(self.webhooks.deliveries)]

    def wait_for_webhooks(self, timeout_s: float = 10.0) -> bool:
        return self.webhooks.wait_idle(timeout_s)

    def close(self) -> None:
        self.webhooks.stop()


# ---------------------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------------------

_guid_random = random.Random()


def new_guid() -> str:
    """A random (version 4) GUID string; cheaper than ``str(uuid.uuid4())`` on the bulk-create path."""
    h = "%032x" % _guid_random.getrandbits(128)  # noqa: UP031 - fastest formatting
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[int(h[16], 16) & 3]}{h[17:20]}-{h[20:]}"


_SEEDABLE_SYSTEM = ("createdon", "modifiedon", "_createdby_value", "_modifiedby_value", "_ownerid_value")


def itemgetter_or_none(name: str) -> Callable[[dict[str, Any]], Any]:
    return lambda row: row.get(name)


def _fullname(row: dict[str, Any]) -> str | None:
    first = row.get("firstname")
    last = row.get("lastname")
    if first and last:
        return f"{first} {last}"
    return first or last or None


def _read_only_lookup(meta: AttributeMeta) -> Callable[[Any], Any]:
    def refuse(value: Any) -> Any:
        raise DataverseError(
            400,
            E.PROPERTY_NOT_FOUND,
            f"The property '{meta.web_name}' is read-only; set lookups with '{meta.logical_name}@odata.bind'.",
        )

    return refuse


def _norm(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


def _check_etag(row: dict[str, Any], if_match: str | None) -> None:
    """``If-Match: W/"<version>"`` must equal the row's version (412 0x80060882); ``*`` matches any row."""
    if if_match is None:
        return
    tag = if_match.strip()
    if not tag or tag == "*":
        return
    version = tag.removeprefix("W/").strip('"')
    if version != str(row["versionnumber"]):
        raise DataverseError(
            412,
            E.VERSION_MISMATCH,
            "The version of the existing record doesn't match the RowVersion property provided.",
        )


def _address_text(address: str | dict[str, Any]) -> str:
    if isinstance(address, str):
        return address
    return ",".join(f"{k}={v}" for k, v in address.items())


def _target_address(target: dict[str, Any]) -> str | dict[str, Any] | None:
    """Where a bulk target points: ``@odata.id`` (key or id), else ``contactid``, else None (create)."""
    odata_id = target.get("@odata.id")
    if odata_id:
        text = str(odata_id)
        start = text.find("contacts(")
        if start < 0 or not text.endswith(")"):
            raise DataverseError(400, E.PAYLOAD, f"The @odata.id value '{odata_id}' does not address a contact.")
        inner = text[start + 9 : -1]
        simple = _SIMPLE_KEY.fullmatch(inner)  # the common case: one string key without quotes inside
        if simple is not None:
            return {simple.group(1).lower(): simple.group(2)}
        try:
            return parse_key_segment(inner)
        except ODataError as exc:
            raise DataverseError(400, exc.code, exc.message) from exc
    cid = target.get(PRIMARY_ID)
    if cid:
        return str(cid).lower()
    return None


def _same_resource(audience: str, instance_url: str) -> bool:
    """Token audience vs this instance: same scheme and port; localhost and 127.0.0.1 are the same host."""

    def norm(url: str) -> str:
        return url.lower().rstrip("/").replace("://127.0.0.1:", "://localhost:")

    return norm(audience) == norm(instance_url)


_ROUTE_PATTERNS = [
    (re.compile(r"^/[^/]+/oauth2/v2\.0/token$"), "entra:token"),
    (re.compile(r"^/[^/]+/v2\.0/\.well-known/openid-configuration$"), "entra:openid-configuration"),
    (re.compile(r"^/common/discovery/instance$"), "entra:instance-discovery"),
]
_API_RE = re.compile(r"^/api/data/v9\.\d/(.*)$")
_PAREN_RE = re.compile(r"\([^)]*\)")


def route_name(path: str) -> str:
    """``/api/data/v9.2/contacts(abc)`` -> ``contacts(key)``; Entra routes as ``entra:*``."""
    m = _API_RE.match(path)
    if m:
        rest = m.group(1)
        rest = _PAREN_RE.sub("(key)", rest)
        return rest.replace("Microsoft.Dynamics.CRM.", "") or "service-document"
    if path.startswith("/_emulator"):
        return "admin"
    for pattern, name in _ROUTE_PATTERNS:
        if pattern.match(path):
            return name
    return "other"


__all__ = [
    "SEEDS",
    "AlternateKey",
    "ApplicationUser",
    "AuthError",
    "Caller",
    "DataverseModel",
    "QueryPage",
    "ServiceProtection",
    "SystemUser",
    "route_name",
]
