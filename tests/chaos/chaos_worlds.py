"""Small hand-built worlds for the targeted fault and conflict tests (the campaign draws its own from a seed)."""

from __future__ import annotations

import time
from typing import Any

from campaign_engine import engine

user = engine.consent_user
world = engine.hand_world


def forward(campaign: Any, conf: dict[str, Any] | None = None) -> Any:
    return engine.run_once(campaign.dags[engine.FORWARD], conf or {"full_sync": True})


def reverse(campaign: Any, conf: dict[str, Any] | None = None) -> Any:
    return engine.run_once(campaign.dags[engine.REVERSE], conf or {"full_sync": True})


def contact_row(pair: Any, key: str) -> dict[str, Any]:
    return pair.contact(key)


def edit(pair: Any, key: str, **changes: Any) -> None:
    """A person changes the contact in Dynamics (another application user than the integration)."""
    pair.dataverse.edit_contact(contact_row(pair, key)["contactid"], changes)
    time.sleep(0.02)  # Didomi's clock has milliseconds: keep "later" unambiguous


def didomi_change(pair: Any, key: str, consents: dict[str, Any]) -> None:
    """The person changes their consent in Didomi (a consent notice), as Didomi stores it."""
    pair.didomi_changes([(key, consents)])
    time.sleep(0.02)


def didomi_user(pair: Any, key: str) -> dict[str, Any]:
    return dict(pair.didomi.get_user(key, by_organization_user_id=True))


def purpose(user: dict[str, Any], purpose_id: str) -> dict[str, Any]:
    return next(p for p in user["consents"]["purposes"] if p["id"] == purpose_id)


def channel(user: dict[str, Any], channel_id: str) -> dict[str, Any]:
    return next(c for c in user["consents"]["channels"] if c["id"] == channel_id)
