"""Helpers the Dataverse tests share: the emulated org wrapper, push input frames, a recording TaskInstance."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import pandas as pd

from airflow_provider_didomi_dynamics.core.config import IntegrationConfig
from airflow_provider_didomi_dynamics.emulators.dataverse import DataverseEmulator
from airflow_provider_didomi_dynamics.hooks.dataverse import DataverseHook
from airflow_provider_didomi_dynamics.transport.retry import RetryPolicy

MAPPINGS = [
    {"id": "donotbulkemail", "value": "consents_purposes_newsletter_enabled", "transform": "invert"},
    {"id": "followemail", "value": "consents_channels_email_enabled"},
    {"id": "donotphone", "value": "consents_channels_phone_enabled", "transform": "invert"},
    {"id": "new_frequency", "value": "consents_purposes_newsletter_values_frequency"},
]
ATTRIBUTES = [m["id"] for m in MAPPINGS]
BOOLEAN_ATTRIBUTES = ATTRIBUTES[:3]
FREQUENCY_MAX_LENGTH = 20
# Retries in tests: quick backoff, still bounded.
FAST_RETRY = RetryPolicy(max_attempts=8, max_total_wait_s=60, backoff_initial_s=0.05, backoff_max_s=0.2)


@dataclass
class Org:
    """The emulator plus helpers the tests share."""

    dv: DataverseEmulator

    @property
    def model(self) -> Any:
        return self.dv.model

    def connection(self, **extra: Any) -> str:
        return json.dumps(
            {
                "conn_type": "dataverse",
                "host": self.dv.url,
                "login": self.dv.client_id,
                "password": self.dv.client_secret,
                "extra": {
                    "tenant_id": self.dv.tenant_id,
                    "authority_host": self.dv.authority_host,
                    "ca_bundle": str(self.dv.ca_file),
                    **extra,
                },
            }
        )

    def hook(self, **kwargs: Any) -> DataverseHook:
        kwargs.setdefault("retry_policy", FAST_RETRY)
        return DataverseHook(**kwargs)

    def config(self, **overrides: Any) -> IntegrationConfig:
        raw: dict[str, Any] = {
            "type_id": "microsoft-dynamics",
            "authentication": {
                "client_id": self.dv.client_id,
                "client_secret": self.dv.client_secret,
                "tenant_id": self.dv.tenant_id,
                "instance": self.dv.url,
            },
            "properties": {},
            "mappings": MAPPINGS,
            "upsert_mode": True,
        }
        properties = overrides.pop("properties", None)
        if properties:
            raw["properties"] = properties
        raw.update(overrides)
        return IntegrationConfig.from_dict(raw)

    def add(self, rows: list[dict[str, Any]]) -> list[str]:
        return list(self.model.add_contacts(rows))

    def by_email(self) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {}
        for row in self.model.contacts_rows():
            out.setdefault(str(row.get("emailaddress1")), []).append(row)
        return out

    def total(self, expected: int | None = None, **filters: Any) -> int:
        """A request-log count. The emulator records a request after its response has gone out, so a count is
        read again until it settles (or reaches ``expected``)."""
        deadline = time.monotonic() + 2.0
        last = self.model.requests.total(**filters)
        while time.monotonic() < deadline:
            time.sleep(0.02)
            now = self.model.requests.total(**filters)
            if now == last and (expected is None or now == expected):
                break
            last = now
        return last

    def writes(self) -> int:
        log = self.model.requests
        return sum(log.total(method=m) for m in ("POST", "PATCH", "DELETE")) - log.total(route_contains="entra")


def contacts_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """A push input in the mapping engine's shape and dtypes."""
    frame = pd.DataFrame(rows, columns=["organization_user_id", "updated_at", *ATTRIBUTES])
    frame["organization_user_id"] = frame["organization_user_id"].astype("string")
    frame["updated_at"] = pd.to_datetime(frame["updated_at"], utc=True)
    for attribute in BOOLEAN_ATTRIBUTES:
        frame[attribute] = frame[attribute].astype("boolean")
    frame["new_frequency"] = frame["new_frequency"].astype("string")
    return frame


class FakeTI:
    """Records what the push hands to XCom when its ``execute`` is called outside Airflow (no retry queue there)."""

    map_index = -1  # an unmapped task, as Airflow gives it

    def __init__(self) -> None:
        self.pushed: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.pushed[key] = value
