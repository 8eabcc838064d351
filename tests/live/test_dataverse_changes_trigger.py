"""DataverseChangesTrigger's run() against the Dataverse emulator over HTTPS: what fires, what does not, and that
an expired token, a dropped answer or a restart loses nothing."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from live_support import DrivenTrigger, MemoryStateStore

from airflow_provider_didomi_dynamics.emulators.runner import RunningEmulators
from airflow_provider_didomi_dynamics.hooks.dataverse import DataverseHook
from airflow_provider_didomi_dynamics.hooks.dataverse.tables import CONTACT_POINT_CONSENT
from airflow_provider_didomi_dynamics.local.demo import editor_hook
from airflow_provider_didomi_dynamics.sync.consent_plan import DIDOMI_REASON, OPTED_IN, OPTED_OUT
from airflow_provider_didomi_dynamics.triggers.dataverse_changes import DataverseChangesTrigger

KEY = CONTACT_POINT_CONSENT.id_attribute
POLL_S = 0.3
QUIET_S = 1.5  # five polls: long enough for a change that should fire to have fired


def contact_ids(emulators: RunningEmulators) -> list[str]:
    return sorted(str(r["contactid"]) for r in emulators.dataverse.model.contacts_rows())


def flip(hook: DataverseHook, contact_id: str, emulators: RunningEmulators) -> None:
    """Change one consent column of a contact through the Web API as ``hook``'s application user."""
    current = next(r for r in emulators.dataverse.model.contacts_rows() if r["contactid"] == contact_id)
    hook.update_multiple("contact", [{"contactid": contact_id, "donotbulkemail": not current["donotbulkemail"]}])


def trigger(**kwargs: Any) -> DataverseChangesTrigger:
    kwargs.setdefault("target", "contact")
    kwargs.setdefault("poll_interval", POLL_S)
    return DataverseChangesTrigger(**kwargs)


def test_serializes_to_what_it_was_built_from() -> None:
    """The triggerer rebuilds the trigger from serialize(): the same class path and the same arguments."""
    built = DataverseChangesTrigger(dataverse_conn_id="dv", target="contact_point_consent", poll_interval=5)
    path, kwargs = built.serialize()
    assert path == "airflow_provider_didomi_dynamics.triggers.dataverse_changes.DataverseChangesTrigger"
    assert DataverseChangesTrigger(**kwargs).serialize() == (path, kwargs)
    assert kwargs["target"] == "contact_point_consent" and kwargs["poll_interval"] == 5.0


def test_own_write_fires_nothing_and_a_persons_edit_fires_once(emulators: RunningEmulators) -> None:
    ids = contact_ids(emulators)
    ours = DataverseHook("dataverse_default")
    person = editor_hook(emulators.endpoints)

    async def scenario() -> None:
        store = MemoryStateStore()
        driven = DrivenTrigger(trigger(), store)
        await driven.started()
        await asyncio.to_thread(flip, ours, ids[0], emulators)
        assert await driven.next_event(QUIET_S) is None, "our own write fired"
        before = driven.trigger.requests
        await asyncio.to_thread(flip, person, ids[1], emulators)
        event = await driven.next_event(10)
        assert event is not None
        assert event["ids"] == [ids[1]] and event["deleted"] == [] and event["target"] == "contact"
        assert event["table"] == "contacts" and event["source"] == "delta"
        assert await driven.next_event(QUIET_S) is None, "the same change fired twice"
        polls = driven.trigger.requests - before
        await driven.stop()
        # one request per poll: no other call while nothing changes (the token comes from msal's cache)
        assert polls >= 3
        token_version = int(str(store.state["token"]).split("!")[0])  # type: ignore[index]
        assert token_version == emulators.dataverse.model.current_version()

    asyncio.run(scenario())


def test_idle_polls_cost_one_request_each(emulators: RunningEmulators) -> None:
    """While nothing changes each poll is one GET of the delta link: the emulator's request log says so."""
    model = emulators.dataverse.model

    async def scenario() -> None:
        driven = DrivenTrigger(trigger(), MemoryStateStore())
        await driven.started()
        model.requests.clear()
        await asyncio.sleep(3.0)
        sent = driven.trigger.requests
        await driven.stop()
        logged = model.requests.total()
        assert logged == model.requests.total(method="GET", route_contains="contacts")
        assert 3.0 / POLL_S * 0.5 <= logged <= 3.0 / POLL_S + 2
        assert sent >= logged

    asyncio.run(scenario())


def test_a_delete_is_carried_apart_from_the_changed_ids(emulators: RunningEmulators) -> None:
    ids = contact_ids(emulators)
    person = editor_hook(emulators.endpoints)

    async def scenario() -> None:
        driven = DrivenTrigger(trigger(), MemoryStateStore())
        await driven.started()
        await asyncio.to_thread(flip, person, ids[2], emulators)
        await asyncio.to_thread(person.request, "DELETE", f"contacts({ids[3]})")
        events = [await driven.next_event(10)]
        while (more := await driven.next_event(QUIET_S)) is not None:
            events.append(more)
        await driven.stop()
        assert sorted(i for e in events if e for i in e["ids"]) == [ids[2]]
        assert [i for e in events if e for i in e["deleted"]] == [ids[3]]

    asyncio.run(scenario())


def test_expired_token_falls_back_to_a_window_read_and_recovers(
    emulators: RunningEmulators, capsys: pytest.CaptureFixture[str]
) -> None:
    """A token Dataverse forgot (kept 7 days; here 0 s): the changes since the last poll still fire, the log says
    why, and the next change fires from a new token."""
    ids = contact_ids(emulators)
    model = emulators.dataverse.model
    person = editor_hook(emulators.endpoints)
    store = MemoryStateStore()

    async def scenario() -> None:
        first = DrivenTrigger(trigger(), store)
        await first.started()
        await first.stop()  # the triggerer is down while ...
        await asyncio.to_thread(flip, person, ids[4], emulators)  # ... a person edits, and the token expires
        model.delta_token_ttl_s = 0
        second = DrivenTrigger(trigger(), store)
        event = await second.next_event(10)
        assert event is not None and event["ids"] == [ids[4]] and event["source"] == "window"
        model.delta_token_ttl_s = 7 * 24 * 3600
        assert await second.next_event(QUIET_S) is None
        await asyncio.to_thread(flip, person, ids[5], emulators)
        again = await second.next_event(10)
        await second.stop()
        assert again is not None and again["ids"] == [ids[5]] and again["source"] == "delta"

    asyncio.run(scenario())
    logged = capsys.readouterr().out  # the trigger logs through Airflow's structlog, to stdout
    assert "delta token of contacts expired" in logged and "falling back to a full read" in logged


def test_a_dropped_delta_answer_loses_nothing(emulators: RunningEmulators) -> None:
    """The delta response is lost on the wire (the emulator handles the request, then cuts the connection): the
    trigger asks again from the same token and the edit fires once."""
    ids = contact_ids(emulators)
    model = emulators.dataverse.model
    person = editor_hook(emulators.endpoints)

    async def scenario() -> None:
        driven = DrivenTrigger(trigger(poll_interval=1.0), MemoryStateStore())
        await driven.started()
        await driven.polls(1)  # just polled: the next poll is a second away
        await asyncio.to_thread(flip, person, ids[6], emulators)
        model.faults.arm("lost_response", 1, path_contains="/contacts", method="GET")
        events = [await driven.next_event(15)]
        while (more := await driven.next_event(QUIET_S * 2)) is not None:
            events.append(more)
        await driven.stop()
        assert model.faults.fired["lost_response"] == 1
        assert [i for e in events if e for i in e["ids"]] == [ids[6]]

    asyncio.run(scenario())


def test_a_restart_resumes_from_the_stored_token(emulators: RunningEmulators) -> None:
    """Edits made while no trigger runs fire when the next one starts from the stored token: nothing lost."""
    ids = contact_ids(emulators)
    person = editor_hook(emulators.endpoints)
    store = MemoryStateStore()

    async def scenario() -> None:
        first = DrivenTrigger(trigger(), store)
        await first.started()
        await first.stop()
        for contact_id in ids[7:10]:
            await asyncio.to_thread(flip, person, contact_id, emulators)
        second = DrivenTrigger(trigger(), store)
        event = await second.next_event(10)
        assert await second.next_event(QUIET_S) is None
        await second.stop()
        assert event is not None and sorted(event["ids"]) == ids[7:10]

    asyncio.run(scenario())


def test_without_change_tracking_it_polls_windows_and_says_how_to_enable_it(
    emulators: RunningEmulators, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = contact_ids(emulators)
    model = emulators.dataverse.model
    person = editor_hook(emulators.endpoints)
    ours = DataverseHook("dataverse_default")
    model.change_tracking_enabled = False

    async def scenario() -> None:
        driven = DrivenTrigger(trigger(), MemoryStateStore())
        await driven.started()
        await asyncio.sleep(0.05)  # modifiedon has millisecond precision: the edit comes after the window start
        await asyncio.to_thread(flip, ours, ids[10], emulators)
        await asyncio.to_thread(flip, person, ids[11], emulators)
        event = await driven.next_event(10)
        assert await driven.next_event(QUIET_S) is None, "a row at the window's edge fired again"
        await driven.stop()
        assert event is not None and event["ids"] == [ids[11]] and event["source"] == "window"

    asyncio.run(scenario())
    logged = capsys.readouterr().out
    assert "change tracking is not enabled on contact" in logged and "Track changes" in logged


def test_consent_rows_fire_unless_they_carry_our_marker(emulators: RunningEmulators) -> None:
    """Target contact_point_consent: a preference centre's change fires with the row id; a row someone else wrote
    with our msdynmkt_reason marker (what our push writes) does not."""
    model = emulators.dataverse.model
    purpose = model.add_purpose("live-newsletter")
    rows = model.add_consent_rows(
        [
            {"msdynmkt_contactpointvalue": f"live{i}@example.com", "purpose_id": purpose, "msdynmkt_value": OPTED_IN}
            for i in range(2)
        ],
        client_id=emulators.endpoints["editor_client_id"],
    )
    person = editor_hook(emulators.endpoints)

    async def scenario() -> None:
        driven = DrivenTrigger(trigger(target="contact_point_consent"), MemoryStateStore())
        await driven.started()
        marked = {CONTACT_POINT_CONSENT.id_attribute: rows[0], "msdynmkt_value": OPTED_OUT}
        await asyncio.to_thread(
            person.update_multiple, CONTACT_POINT_CONSENT, [{**marked, "msdynmkt_reason": DIDOMI_REASON}]
        )
        assert await driven.next_event(QUIET_S) is None, "a row carrying our marker fired"
        changed = {CONTACT_POINT_CONSENT.id_attribute: rows[1], "msdynmkt_value": OPTED_OUT}
        await asyncio.to_thread(
            person.update_multiple, CONTACT_POINT_CONSENT, [{**changed, "msdynmkt_reason": "Preference centre"}]
        )
        event = await driven.next_event(10)
        await driven.stop()
        assert event is not None and event["ids"] == [rows[1]]
        assert event["table"] == CONTACT_POINT_CONSENT.entity_set and event["target"] == "contact_point_consent"

    asyncio.run(scenario())
