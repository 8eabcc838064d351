"""What the preflight tells a person: where to click in the admin centres, why each privilege is needed, and what a
failed connection means (an outage is not a credentials problem). The checks write their own findings with these."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

import requests

from airflow_provider_didomi_dynamics.exceptions import ApiError, DataverseAuthError, DidomiDynamicsError

ROLES_HOWTO = (
    "Power Platform admin center → Environments → your environment → Settings → Users + permissions → "
    "Application users → select the app → Edit security roles"
)
KEYS_HOWTO = "make.powerapps.com → Tables → Contact → Keys"
COLUMNS_HOWTO = "make.powerapps.com → Tables → Contact → Columns"
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


def describe_error(err: BaseException) -> str:
    """An error in one line, without the request path noise of a whole traceback."""
    if isinstance(err, ApiError):
        code = f" [{err.code}]" if err.code else ""
        return f"HTTP {err.status_code}{code}: {err.api_message}"
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def is_forbidden(err: BaseException) -> bool:
    return isinstance(err, ApiError) and err.status_code == 403


def didomi_connection_problem(conn_id: str, err: BaseException) -> str:
    """What a failed Didomi session or first page means: an outage is not a credentials problem."""
    detail = str(err) if isinstance(err, DidomiDynamicsError) and not isinstance(err, ApiError) else describe_error(err)
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


def dataverse_connection_problem(hook: Any, err: BaseException) -> str:
    """What a failed token or WhoAmI means and what to do about it."""
    conn_id = getattr(hook, "dataverse_conn_id", "dataverse_default")
    from airflow.exceptions import AirflowNotFoundException  # here: the CLI must not configure Airflow at import

    detail = describe_error(err)
    if isinstance(err, AirflowNotFoundException):
        return (
            f"Airflow connection {conn_id!r} does not exist. Create it (Admin → Connections, type Dataverse) or set "
            f"AIRFLOW_CONN_{conn_id.upper()}; without it nothing can be synced. ({detail})"
        )
    if isinstance(err, ValueError):
        return f"Airflow connection {conn_id!r} is incomplete: {err}. Fill in the missing fields and run again."
    if isinstance(err, DataverseAuthError) and err.unreachable:
        return (
            f"{err}. The token service is out of reach: check extra authority_host of connection {conn_id!r} "
            "(sovereign clouds use another host), extra ca_bundle for a private CA, and the network or proxy route "
            "from the Airflow workers."
        )
    if isinstance(err, DataverseAuthError):
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


def privilege_purposes(privileges: Iterable[str]) -> str:
    """``prvX (what it allows), prvY (...)``."""
    return ", ".join(f"{p} ({PRIVILEGE_PURPOSE[p]})" if p in PRIVILEGE_PURPOSE else p for p in privileges)


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """`` (did you mean a or b?)`` when close names exist, else an empty string."""
    close = difflib.get_close_matches(name, list(candidates), n=2, cutoff=0.75)
    return f" (did you mean {' or '.join(close)}?)" if close else ""


def known_ids(values: Iterable[str]) -> str:
    """The ids seen, sorted, at most twelve."""
    listed = sorted(values)
    if not listed:
        return "none"
    return ", ".join(listed[:12]) + (", ..." if len(listed) > 12 else "")


__all__ = [
    "COLUMNS_HOWTO",
    "DEPTH_LABELS",
    "KEYS_HOWTO",
    "PRIVILEGE_PURPOSE",
    "ROLES_HOWTO",
    "dataverse_connection_problem",
    "describe_error",
    "did_you_mean",
    "didomi_connection_problem",
    "is_forbidden",
    "known_ids",
    "privilege_purposes",
]
