"""The fault campaign of ``benchmarks/chaos.py`` in the test suite: a few seeded scenarios, each running both DAGs
through four phases on a fault-free pair and on a pair injecting faults, and checking every invariant.

``python benchmarks/chaos.py --scenarios 50`` runs the long campaign; ``--scenarios 1 --seed S`` replays one of
these. The seeds are chosen so that, together, they inject every kind of fault the engine knows.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Any

import pytest
from campaign_engine import engine

SEEDS = (202, 206, 209)
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
