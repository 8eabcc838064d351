"""The fault campaign of ``benchmarks/chaos.py`` in the test suite: a few seeded scenarios, each running both DAGs
through four phases on a fault-free pair and on a pair injecting faults, and checking every invariant.

``python benchmarks/chaos.py --scenarios 50`` runs the long campaign; ``--scenarios 1 --seed S`` replays one of
these. The seeds are chosen so that, together, they inject every kind of fault the engine knows; ``CPC_SEEDS`` are
Contact Point Consent worlds (``properties.target: "contact_point_consent"``, forward only), checked against
Didomi's own state.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Any

import pytest
from campaign_engine import engine

SEEDS = (202, 206, 209)
# upsert_mode false, null_values clear, no bulk messages ($batch), batches of 16: faults on the consent table's
# writes and queries in every phase (``--scenarios 1 --seed 219 --verbose`` lists them).
CPC_SEEDS = (219,)
# Every kind of fault, as the scenarios report them (server-side statuses by code, client-side ones by name).
EXPECTED_KINDS = {
    "status_429",
    "reset",
    "delay",
    "token_expiry",
    "status_401",
    "bad_row",
    "lost_response",
    "kill",
} | {"status_500", "status_502", "status_503", "status_504"}
_fired: dict[int, Counter[str]] = {}


def _scenario(campaign: Any, seed: int) -> Any:
    result = campaign.run_scenario(seed)
    _fired[seed] = Counter(result.faults)
    return result


@pytest.mark.parametrize("seed", SEEDS)
def test_scenario_keeps_every_invariant_under_faults(campaign: Any, seed: int) -> None:
    result = _scenario(campaign, seed)
    assert sum(result.faults.values()) >= 5, f"scenario {seed} injected almost nothing: {dict(result.faults)}"
    assert result.violations == [], "\n".join(result.violations)


def test_the_scenarios_together_inject_every_kind_of_fault(campaign: Any) -> None:
    for seed in SEEDS:
        if seed not in _fired:  # run alone (-k): replay the scenarios this check is about
            _scenario(campaign, seed)
    fired = set().union(*(set(_fired[s]) for s in SEEDS))
    assert EXPECTED_KINDS - fired == set(), f"never injected: {sorted(EXPECTED_KINDS - fired)}"


def test_the_invariant_checks_catch_a_lost_a_duplicated_and_an_invented_write(campaign: Any) -> None:
    """The checks themselves: a chaos pair that differs from the reference by one lost contact, one contact held
    twice and one event stored twice is reported, each in words."""
    world = dataclasses.replace(engine.make_world(7, 30), alternate_key=False)  # a key could not be held twice
    reference, chaos = campaign.reference, campaign.chaos
    reference.load(world)
    chaos.load(world)
    lost = world.contacts[0]["emailaddress1"].casefold()
    chaos.dataverse.add_contacts([{"emailaddress1": "invented@example.com"}])
    chaos.dataverse.add_contacts([{"emailaddress1": world.contacts[1]["emailaddress1"]}])
    key = next(u["organization_user_id"] for u in world.users if u["organization_user_id"])
    event = {"user": {"organization_user_id": key}, "consents": {"purposes": [{"id": "marketing", "enabled": True}]}}
    reference.didomi.post_events(dict(event), organization_id=reference.didomi.organization_id)
    for _ in range(2):
        chaos.didomi.post_events(dict(event), organization_id=chaos.didomi.organization_id)
    chaos.dataverse.delete_contact(chaos.contact(lost)["contactid"], chaos.dataverse.caller_for())

    problems = engine.check_same_state(reference, chaos, "check") + engine.check_no_duplicates(chaos, "check")

    text = "\n".join(problems)
    assert f"contact {lost} is missing (lost write)" in text
    assert "contact invented@example.com should not exist (invented write)" in text
    assert "held by more than one contact" in text
    assert f"events of {key} differ: 0 lost, 1 duplicated or invented" in text
    assert f"Didomi user {key} differs" in text


@pytest.mark.parametrize("seed", CPC_SEEDS)
def test_contact_point_consent_world_keeps_every_invariant_under_faults(campaign: Any, seed: int) -> None:
    result = campaign.run_scenario(seed)

    assert result.settings["target"] == engine.CPC, result.settings
    assert sum(result.faults.values()) >= 5, f"scenario {seed} injected almost nothing: {dict(result.faults)}"
    assert result.violations == [], "\n".join(result.violations)
    assert result.stats["created"] and result.stats["updated"] and result.stats["unchanged"], dict(result.stats)


def _consent_body(key: engine.CpcKey, value: int) -> dict[str, Any]:
    return {
        "msdynmkt_contactpointvalue": key[0],
        "msdynmkt_contactpointtype": key[1],
        "msdynmkt_value": value,
        "msdynmkt_source": engine.CPC_OUR_SOURCE,
        "msdynmkt_reason": "Didomi consent sync (airflow-provider-didomi-dynamics)",
        "purpose_id": key[2],
        "topic_id": key[3] or None,
    }


def test_the_contact_point_consent_checks_catch_a_lost_a_wrong_a_duplicated_and_an_invented_row(campaign: Any) -> None:
    """The CPC checks themselves: rows written as the sync would, but one left out, one with the wrong value, one
    twice and one for a user who has no contact (upsert_mode false) are each reported, in words."""
    world = dataclasses.replace(engine.make_world(219, 40), upsert_mode=False, consent_rows=[])
    pair = campaign.chaos
    pair.load(world)
    want, decided = engine.CpcState.read(pair, world).expected()
    held = {engine.cpc_row_key(r) for r in pair.dataverse.consent_rows()}
    to_write = sorted(k for k in decided if k not in held)
    lost, wrong, twice = to_write[:3]
    flipped = engine.OPTED_OUT if want[wrong] == engine.OPTED_IN else engine.OPTED_IN
    contacts = {str(c["emailaddress1"]).casefold() for c in world.contacts}
    stranger = next(
        str(u["organization_user_id"])
        for u in world.users
        if u["organization_user_id"] and str(u["organization_user_id"]).casefold() not in contacts
    )
    invented = (stranger.casefold(), 534120000, pair.cpc_records["marketing"], "")
    bodies = [_consent_body(k, flipped if k == wrong else want[k]) for k in to_write if k != lost]
    bodies += [_consent_body(twice, want[twice]), _consent_body(invented, engine.OPTED_IN)]
    pair.dataverse.add_consent_rows(bodies)

    state = engine.CpcState.read(pair, world)
    problems = [problem for check in engine.CPC_FORWARD_CHECKS for problem in check(state, "check")]

    text = "\n".join(problems)
    assert f"consent row of {decided[lost]} is missing (lost write" in text
    assert f"consent row of {decided[wrong]} holds [{flipped}], Didomi says {want[wrong]}" in text
    assert "1 consent row key(s) held more than once" in text
    assert f"consent row {stranger.casefold()} marketing should not exist (invented write" in text
    assert f"1 row(s) written for users without a contact: {stranger.casefold()}" in text
    assert len(problems) == 5, text
