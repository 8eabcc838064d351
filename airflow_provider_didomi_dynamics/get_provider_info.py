"""Provider metadata read by Airflow through the ``apache_airflow_provider`` entry point."""

from __future__ import annotations

from typing import Any

from airflow_provider_didomi_dynamics import __version__

PACKAGE = "airflow_provider_didomi_dynamics"


def get_provider_info() -> dict[str, Any]:
    """Connection forms (``conn-fields`` + ``ui-field-behaviour``, Airflow >= 3.2), hooks, operators, triggers."""
    return {
        "package-name": "airflow-provider-didomi-dynamics",
        "name": "Didomi and Microsoft Dynamics 365",
        "description": "Keep consent in sync between Didomi PMP and Microsoft Dynamics 365 (Dataverse) contacts.",
        "versions": [__version__],
        "integrations": [
            {"integration-name": "Didomi", "external-doc-url": "https://developers.didomi.io/", "tags": ["service"]},
            {
                "integration-name": "Microsoft Dynamics 365 (Dataverse)",
                "external-doc-url": "https://learn.microsoft.com/power-apps/developer/data-platform/webapi/overview",
                "tags": ["service"],
            },
        ],
        "hooks": [
            {"integration-name": "Didomi", "python-modules": [f"{PACKAGE}.hooks.didomi"]},
            {
                "integration-name": "Microsoft Dynamics 365 (Dataverse)",
                "python-modules": [f"{PACKAGE}.hooks.dataverse"],
            },
        ],
        "operators": [
            {
                "integration-name": "Didomi",
                "python-modules": [
                    f"{PACKAGE}.operators.didomi",
                    f"{PACKAGE}.operators.mapping",
                    f"{PACKAGE}.operators.preflight",
                ],
            },
            {
                "integration-name": "Microsoft Dynamics 365 (Dataverse)",
                "python-modules": [f"{PACKAGE}.operators.dataverse"],
            },
        ],
        "triggers": [
            {
                "integration-name": "Microsoft Dynamics 365 (Dataverse)",
                "python-modules": [f"{PACKAGE}.triggers.dataverse_changes"],
            },
        ],
        "connection-types": [
            {
                "connection-type": "didomi",
                "hook-class-name": f"{PACKAGE}.hooks.didomi.DidomiHook",
                "hook-name": "Didomi",
                "conn-fields": {
                    "organization_id": {
                        "label": "Organization ID",
                        "description": (
                            "Your Didomi organization ID (e.g. my-organization), "
                            "sent as ?organization_id= on every call."
                        ),
                        "schema": {"type": ["string", "null"]},
                    },
                    "ca_bundle": {
                        "label": "CA bundle path",
                        "description": "PEM file of a private CA (TLS-inspecting proxy, local emulator).",
                        "schema": {"type": ["string", "null"]},
                    },
                },
                "ui-field-behaviour": {
                    "hidden-fields": ["schema", "port", "extra"],
                    "relabeling": {"host": "API URL", "login": "API key", "password": "API secret"},
                    "placeholders": {
                        "host": "https://api.didomi.io",
                        "login": "Didomi API key",
                        "password": "Didomi API secret",
                        "organization_id": "my-organization",
                    },
                },
            },
            {
                "connection-type": "dataverse",
                "hook-class-name": f"{PACKAGE}.hooks.dataverse.DataverseHook",
                "hook-name": "Microsoft Dynamics 365 (Dataverse)",
                "conn-fields": {
                    "tenant_id": {
                        "label": "Tenant ID",
                        "description": (
                            "Microsoft Entra ID (Azure AD) tenant of the app registration: the Directory (tenant) ID, "
                            "a GUID such as 00000000-0000-0000-0000-000000000000."
                        ),
                        "schema": {"type": ["string", "null"]},
                    },
                    "authority_host": {
                        "label": "Authority host",
                        "description": "Entra ID host; sovereign clouds use e.g. https://login.microsoftonline.us.",
                        "schema": {"type": ["string", "null"], "default": "https://login.microsoftonline.com"},
                    },
                    "api_version": {
                        "label": "Web API version",
                        "description": "Dataverse Web API version used in /api/data/v<version>/; keep 9.2.",
                        "schema": {"type": ["string", "null"], "default": "9.2"},
                    },
                    "ca_bundle": {
                        "label": "CA bundle path",
                        "description": "PEM file of a private CA (TLS-inspecting proxy, local emulator).",
                        "schema": {"type": ["string", "null"]},
                    },
                },
                "ui-field-behaviour": {
                    "hidden-fields": ["schema", "port", "extra"],
                    "relabeling": {"host": "Instance URL", "login": "Client ID", "password": "Client secret"},
                    "placeholders": {
                        "host": "https://yourorg.crm.dynamics.com",
                        "login": "Application (client) ID of the app registration",
                        "password": "Client secret of the app registration",
                        "tenant_id": "00000000-0000-0000-0000-000000000000",
                        "authority_host": "https://login.microsoftonline.com",
                        "api_version": "9.2",
                    },
                },
            },
        ],
    }
