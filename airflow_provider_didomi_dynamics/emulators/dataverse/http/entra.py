"""Entra ID routes: instance discovery, the tenant's OpenID configuration and the client-credentials token endpoint."""

from __future__ import annotations

import base64
import time
import uuid
from urllib.parse import parse_qsl, unquote

from airflow_provider_didomi_dynamics.emulators.dataverse.errors import AuthError
from airflow_provider_didomi_dynamics.emulators.dataverse.http.wire import Response
from airflow_provider_didomi_dynamics.emulators.dataverse.models import DataverseModel


class EntraRoutes:
    """Everything outside ``/api/data/`` and ``/_emulator/``: the Entra ID endpoints msal calls."""

    def __init__(self, model: DataverseModel) -> None:
        self.model = model

    def __call__(self, method: str, path: str, query: str, headers: dict[str, str], body: bytes) -> Response:
        host = f"https://{headers.get('host', 'localhost')}"
        parts = [p for p in path.split("/") if p]
        model = self.model
        if parts == ["common", "discovery", "instance"]:
            params = dict(parse_qsl(query))
            authorize = params.get("authorization_endpoint", "")
            tenant = authorize.split("/")[3] if authorize.count("/") >= 3 else model.tenant_id
            return Response.json(
                200,
                {
                    "tenant_discovery_endpoint": f"{host}/{tenant}/v2.0/.well-known/openid-configuration",
                    "api-version": "1.1",
                    "metadata": [
                        {
                            "preferred_network": host.split("//", 1)[1],
                            "preferred_cache": host.split("//", 1)[1],
                            "aliases": [host.split("//", 1)[1]],
                        }
                    ],
                },
            )
        if len(parts) == 4 and parts[1:] == ["v2.0", ".well-known", "openid-configuration"] and method == "GET":
            tenant = parts[0]
            if tenant.lower() not in (model.tenant_id, "common", "organizations"):
                return self._aad_error(AuthError(400, "invalid_tenant", 90002, f"Tenant '{tenant}' not found."))
            return Response.json(
                200,
                {
                    "token_endpoint": f"{host}/{tenant}/oauth2/v2.0/token",
                    "token_endpoint_auth_methods_supported": [
                        "client_secret_post",
                        "private_key_jwt",
                        "client_secret_basic",
                    ],
                    "jwks_uri": f"{host}/{tenant}/discovery/v2.0/keys",
                    "response_modes_supported": ["query", "fragment", "form_post"],
                    "subject_types_supported": ["pairwise"],
                    "id_token_signing_alg_values_supported": ["RS256"],
                    "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
                    "scopes_supported": ["openid", "profile", "email", "offline_access"],
                    "issuer": f"{host}/{model.tenant_id}/v2.0",
                    "request_uri_parameter_supported": False,
                    "authorization_endpoint": f"{host}/{tenant}/oauth2/v2.0/authorize",
                    "device_authorization_endpoint": f"{host}/{tenant}/oauth2/v2.0/devicecode",
                    "end_session_endpoint": f"{host}/{tenant}/oauth2/v2.0/logout",
                    "tenant_region_scope": "EU",
                    "cloud_instance_name": "microsoftonline.com",
                },
            )
        if len(parts) == 4 and parts[1:] == ["oauth2", "v2.0", "token"]:
            if method != "POST":
                return Response.json(405, {"error": "invalid_request", "error_description": "POST required"})
            form = dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
            auth = headers.get("authorization", "")
            if auth.lower().startswith("basic ") and "client_id" not in form:
                decoded = base64.b64decode(auth[6:]).decode()
                cid, _, secret = decoded.partition(":")
                form["client_id"], form["client_secret"] = unquote(cid), unquote(secret)
            try:
                return Response.json(200, model.issue_token(parts[0], form), [("Cache-Control", "no-store")])
            except AuthError as exc:
                return self._aad_error(exc)
        return Response.json(404, {"error": "not_found", "error_description": f"No route for {path}"})

    @staticmethod
    def _aad_error(exc: AuthError) -> Response:
        trace = str(uuid.uuid4())
        correlation = str(uuid.uuid4())
        stamp = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime())
        return Response.json(
            exc.status,
            {
                "error": exc.error,
                "error_description": f"AADSTS{exc.code}: {exc.description} Trace ID: {trace} Correlation ID: "
                f"{correlation} Timestamp: {stamp}",
                "error_codes": [exc.code],
                "timestamp": stamp,
                "trace_id": trace,
                "correlation_id": correlation,
                "error_uri": f"https://login.microsoftonline.com/error?code={exc.code}",
            },
        )
