"""The demo's starting point: Didomi users over three purposes, 60% of them already contacts in Dynamics."""

from __future__ import annotations

from typing import Any

DEMO_USERS = 5000
CONTACT_SHARE_PERCENT = 60
CUSTOM_ATTRIBUTES = (("new_newsletterfrequency", 100), ("new_consentsource", 50))
# The Didomi demo catalogue (purpose -> preference -> values), as the Didomi emulator's seed_demo declares it; used
# when only Dataverse is seeded. Customer Insights - Journeys gets one Purpose per Didomi purpose (named like the
# purpose id) and one Topic per preference value, named ``<purpose>_<preference>_<value>``.
DEMO_CATALOGUE: dict[str, dict[str, list[str]]] = {
    "newsletter": {"frequency": ["daily", "weekly", "monthly"], "topics": ["news", "offers", "events"]},
    "marketing": {"channels_pref": ["email", "sms", "post"]},
    "analytics": {},
}


def topic_name(purpose_id: str, preference_id: str, value_id: str) -> str:
    """The demo's Topic name for one Didomi preference value."""
    return f"{purpose_id}_{preference_id}_{value_id}"


def seed_consent_catalogue(dataverse: Any, catalogue: dict[str, dict[str, list[str]]]) -> dict[str, int]:
    """Purposes and topics matching a Didomi catalogue in the Contact Point Consent tables; returns the counts."""
    topics = 0
    for purpose_id, preferences in catalogue.items():
        pid = dataverse.add_purpose(purpose_id)
        for preference_id, values in preferences.items():
            for value_id in values:
                dataverse.add_topic(topic_name(purpose_id, preference_id, value_id), pid)
                topics += 1
    return {"purposes": len(catalogue), "topics": topics}


def seed_demo(didomi: Any | None, dataverse: Any | None, users: int = DEMO_USERS) -> dict[str, int]:
    """Seed both emulator models consistently; returns how many users and contacts were added."""
    org_user_ids: list[str] = []
    if didomi is not None:
        org_user_ids = [uid for uid in didomi.seed_demo(users) if uid]
    else:
        org_user_ids = [f"user{i:06d}@example.com" for i in range(users)]
    contacts = 0
    if dataverse is not None:
        for name, length in CUSTOM_ATTRIBUTES:
            dataverse.add_attribute(name, "String", max_length=length)
        dataverse.define_alternate_key("new_emailkey", ["emailaddress1"])
        rows = [
            {
                "emailaddress1": uid,
                "firstname": f"Demo{index}",
                "lastname": "Contact",
                "donotbulkemail": False,
                "followemail": True,
            }
            for index, uid in enumerate(org_user_ids)
            if index % 100 < CONTACT_SHARE_PERCENT
        ]
        dataverse.add_contacts(rows)
        contacts = len(rows)
        catalogue = getattr(didomi, "catalogue", None) if didomi is not None else None
        seed_consent_catalogue(dataverse, catalogue or DEMO_CATALOGUE)
    return {"didomi_users": users, "dataverse_contacts": contacts}
