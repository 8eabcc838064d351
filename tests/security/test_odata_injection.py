"""Key values that try to rewrite an OData query match nothing and change nothing.

A Didomi ``organization_user_id`` becomes a Dataverse key in lookups (``$filter``) and upserts (``@odata.id``); run
conf values name contacts and users. None of them may widen a query to other rows.
"""

from __future__ import annotations

from typing import Any

import pytest
from security_support import engine

INJECTIONS = [
    "x' or 1 eq 1 or 'a' eq 'a",
    "x') or (1 eq 1",
    'x" or 1 eq 1 or "a" eq "a',
    "x' or contains(emailaddress1,'@') or 'a' eq 'a",
]
VICTIMS = [f"victim-{i}@example.com" for i in range(3)]


def _snapshot(pair: Any) -> dict[str, tuple[Any, ...]]:
    return {
        str(r["emailaddress1"]): (r["modifiedon"], r["followemail"], r["donotbulkemail"], r["new_consentsource"])
        for r in pair.dataverse.contacts_rows()
    }


@pytest.mark.parametrize("upsert_mode", [False, True], ids=["update-only", "upsert"])
def test_injected_keys_match_no_contact_and_change_no_other_row(
    use: Any, dags: dict[str, Any], upsert_mode: bool
) -> None:
    users = [engine.consent_user(k, marketing=False, source="injected") for k in INJECTIONS]
    contacts = [{"emailaddress1": v, "followemail": True, "donotbulkemail": False} for v in VICTIMS]
    pair = use(engine.hand_world(users, contacts, upsert_mode=upsert_mode))
    before = _snapshot(pair)

    run = engine.run_once(dags[engine.FORWARD], {"full_sync": True})

    assert run.state == "success", run.task_states
    after = _snapshot(pair)
    assert {k: after[k] for k in VICTIMS} == {k: before[k] for k in VICTIMS}, "a victim contact was changed"
    report = run.value("push_contacts")
    assert report["counts"]["updated"] == 0 and report["counts"]["failed"] == 0
    if upsert_mode:
        # Each injected value is just an unusual key: one new contact holding exactly that text, nothing else.
        assert report["counts"]["created"] == len(INJECTIONS)
        assert sorted(set(after) - set(VICTIMS)) == sorted(INJECTIONS)
    else:
        assert report["counts"]["skipped"] == len(INJECTIONS)
        assert sorted(after) == sorted(VICTIMS)


def test_an_injected_targeted_resync_id_pulls_nobody(use: Any, dags: dict[str, Any]) -> None:
    users = [engine.consent_user(v, marketing=False) for v in VICTIMS]
    pair = use(engine.hand_world(users, [{"emailaddress1": v, "followemail": True} for v in VICTIMS]))
    before = _snapshot(pair)

    run = engine.run_once(dags[engine.FORWARD], {"organization_user_ids": INJECTIONS})

    assert run.state == "success", run.task_states
    assert run.value("pull_consents", "pull_report")["kept"] == 0
    assert run.value("push_contacts")["total"] == 0
    assert _snapshot(pair) == before


def test_an_injected_contact_id_is_refused_before_any_query(use: Any, dags: dict[str, Any]) -> None:
    pair = use(engine.hand_world([engine.consent_user(VICTIMS[0])], [{"emailaddress1": VICTIMS[0]}]))
    events_before = len(pair.didomi.events())
    requests_before = pair.dataverse.requests.total(route_contains="contacts")

    run = engine.run_once(dags[engine.REVERSE], {"contact_ids": [INJECTIONS[0]]})

    assert run.state == "failed"
    assert run.task_states["targeted_contacts"] == "failed"
    assert pair.dataverse.requests.total(route_contains="contacts") == requests_before
    assert len(pair.didomi.events()) == events_before


def test_the_targeted_contact_error_names_the_param_and_says_what_a_contact_id_is() -> None:
    from airflow_provider_didomi_dynamics.exceptions import WebhookPayloadError
    from airflow_provider_didomi_dynamics.sync.webhook_payload import targeted_contact_ids

    with pytest.raises(WebhookPayloadError) as error:
        targeted_contact_ids([INJECTIONS[0]])
    assert str(error.value) == f"contact_ids[0]: {INJECTIONS[0]!r} is not a contact GUID"
