"""The demo's starting point: Didomi users over three purposes, 60% of them already contacts in Dynamics."""

from __future__ import annotations

from typing import Any

DEMO_USERS = 5000
CONTACT_SHARE_PERCENT = 60
CUSTOM_ATTRIBUTES = (("new_newsletterfrequency", 100), ("new_consentsource", 50))


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
    return {"didomi_users": users, "dataverse_contacts": contacts}
