"""Entra ID identities of the org: application users (client id + secret), system users, bearer tokens, callers.

The token endpoint issues JWT-shaped tokens for the client-credentials grant; a Web API request then runs as the
token's application user, or as the user it impersonates (``CallerObjectId`` / ``MSCRMCallerID``).
"""

from __future__ import annotations

import base64
import json
import secrets
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from airflow_provider_didomi_dynamics.emulators.dataverse import errors as E
from airflow_provider_didomi_dynamics.emulators.dataverse.errors import AuthError, DataverseError
from airflow_provider_didomi_dynamics.emulators.dataverse.models.security import SYSTEM_ADMINISTRATOR, SecurityLayer


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


class Identity(SecurityLayer):
    """The model's identity API: register apps and users, issue and check tokens, resolve the caller."""

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


def _same_resource(audience: str, instance_url: str) -> bool:
    """Token audience vs this instance: same scheme and port; localhost and 127.0.0.1 are the same host."""

    def norm(url: str) -> str:
        return url.lower().rstrip("/").replace("://127.0.0.1:", "://localhost:")

    return norm(audience) == norm(instance_url)
