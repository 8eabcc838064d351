"""Builders for Didomi consent users and integration configs, shared by the mapping tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from airflow_provider_didomi_dynamics.core.config import IntegrationConfig

UserFactory = Callable[..., dict[str, Any]]
ConfigFactory = Callable[..., IntegrationConfig]


def build_user(
    organization_user_id: str | None = "jane@example.com",
    *,
    purposes: dict[str, Any] | None = None,
    channels: dict[str, Any] | None = None,
    updated_at: str = "2026-01-05T10:00:00.000Z",
    metadata: dict[str, Any] | None = None,
    vendors: dict[str, list[str]] | None = None,
) -> dict[str, Any]:
    """A user shaped like GET /v1/consents/users returns it.

    ``purposes`` maps an id to ``enabled`` (True / False / None) or to a dict of purpose keys, e.g.
    ``{"enabled": True, "values": {"frequency": "weekly,monthly"}}`` (value lists are wrapped as the API does).
    """
    purpose_list = []
    for pid, spec in (purposes or {}).items():
        entry: dict[str, Any] = {"id": pid, "enabled": None, "enabled_li": None, "metadata": {}, "values": {}}
        if isinstance(spec, dict):
            for key, value in spec.items():
                if key == "values":
                    entry["values"] = {pref: {"value": text} for pref, text in value.items()}
                else:
                    entry[key] = value
        else:
            entry["enabled"] = spec
        purpose_list.append(entry)
    user: dict[str, Any] = {
        "id": f"didomi-{organization_user_id}",
        "organization_id": "org",
        "version": 1,
        "created_at": "2026-01-02T10:00:00.000Z",
        "updated_at": updated_at,
        "metadata": metadata or {},
        "country": "FR",
        "last_seen_country": "FR",
        "consents": {
            "purposes": purpose_list,
            "channels": [{"id": cid, "enabled": on, "metadata": {}} for cid, on in (channels or {}).items()],
            "vendors": {"enabled": [], "disabled": [], "enabled_li": [], "disabled_li": [], **(vendors or {})},
            "tcfcs": "",
        },
    }
    if organization_user_id is not None:
        user["organization_user_id"] = organization_user_id
    return user


def build_config(mappings: list[dict[str, Any]], **properties: Any) -> IntegrationConfig:
    return IntegrationConfig.from_dict(
        {
            "type_id": "microsoft-dynamics",
            "authentication": {
                "client_id": "client",
                "client_secret": "s3cret",
                "tenant_id": "tenant",
                "instance": "https://org.crm4.dynamics.com",
            },
            "properties": properties,
            "mappings": mappings,
        }
    )


@pytest.fixture
def make_user() -> UserFactory:
    return build_user


@pytest.fixture
def make_config() -> ConfigFactory:
    return build_config
