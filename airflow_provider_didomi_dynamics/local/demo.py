"""``make demo``: both emulators, both DAGs end to end, and what happened, in tables a person reads.

1. start the emulators with demo data (5,000 Didomi users, 60% of them already contacts in Dynamics);
2. run ``didomi_to_dynamics`` with ``upsert_mode`` false (unknown users are skipped), then true (they are created);
3. edit some contacts in Dynamics as a person would (a second application user, through the Web API);
4. run ``dynamics_to_didomi``: those edits become Didomi consent events, and nothing echoes back;
5. run both again: the second cycle writes nothing;
   live: a person edits 3 contacts, DataverseChangesTrigger (what the triggerer runs; here on an event loop) fires
   with their ids within a poll, and ``dynamics_to_didomi_live`` sends exactly those;
6. the same with target ``contact_point_consent`` (Customer Insights - Journeys' consent table), after some new
   sign-ups in Didomi: forward with ``upsert_mode`` false (new users skipped) then true (their contacts created first),
   a preference-centre change in Dynamics reaching Didomi, and a second cycle writing nothing.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from airflow_provider_didomi_dynamics.emulators.runner import RunningEmulators
from airflow_provider_didomi_dynamics.local import DEMO_CONFIG, DEMO_CPC_CONFIG
from airflow_provider_didomi_dynamics.local.testing import prepare_airflow_home, set_config_variable, set_connections

EDITED_CONTACTS = 40
LIVE_EDITS = 3
LIVE_POLL_S = 0.5
EDITED_CONSENTS = 20
PREFERENCE_CENTRE = 534120004  # msdynmkt_source "Preference Center"
OPTED_IN, OPTED_OUT = 534120001, 534120002
OUTCOMES = ("created", "updated", "sent", "unchanged", "skipped", "failed")


def print_table(title: str, rows: list[dict[str, Any]], columns: list[str]) -> None:
    print(f"\n{title}")
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) if rows else len(c) for c in columns}
    print("  " + "  ".join(c.ljust(widths[c]) for c in columns))
    print("  " + "  ".join("-" * widths[c] for c in columns))
    for row in rows:
        print("  " + "  ".join(str(row.get(c, "")).ljust(widths[c]) for c in columns))


def report_row(name: str, report: dict[str, Any], seconds: float) -> dict[str, Any]:
    counts = report.get("counts", {})
    row: dict[str, Any] = {"run": name, "rows": report.get("total", 0)}
    row.update({o: counts.get(o, 0) for o in OUTCOMES})
    row["requests"] = report.get("http_requests", "")
    row["seconds"] = f"{seconds:.1f}"
    return row


def emulator_hook(endpoints: dict[str, Any], app_user: str = "") -> Any:
    """A Dataverse hook signed in as one of the emulator's application users: ``""`` the sync's own, ``"editor"``
    someone else (``<app_user>_client_id`` / ``_client_secret`` in endpoints.json)."""
    from airflow_provider_didomi_dynamics.core.config import Authentication, Secret
    from airflow_provider_didomi_dynamics.hooks.dataverse import DataverseHook

    prefix = f"{app_user}_" if app_user else ""
    return DataverseHook.from_config(
        Authentication(
            client_id=endpoints[f"{prefix}client_id"],
            client_secret=Secret(endpoints[f"{prefix}client_secret"]),
            tenant_id=endpoints["tenant_id"],
            instance=endpoints["dataverse_url"],
        ),
        authority_host=endpoints["authority_host"],
        ca_bundle=endpoints["ca_file"],
    )


def editor_hook(endpoints: dict[str, Any]) -> Any:
    """A Dataverse hook signed in as the emulator's 'editor' application user: someone other than the sync."""
    return emulator_hook(endpoints, "editor")


def edit_contacts_as_a_person(endpoints: dict[str, Any], count: int) -> list[dict[str, Any]]:
    """Change consent columns of some contacts through the Web API, as the emulator's 'editor' application user.

    The reverse DAG then sees a person's change: modified by someone other than the sync's own application user.
    """
    editor = editor_hook(endpoints)
    rows = [r for page in editor.iter_rows("contacts", ["contactid", "emailaddress1", "donotbulkemail"]) for r in page]
    rows.sort(key=lambda r: r["emailaddress1"] or "")
    changed = []
    for row in rows[:count]:
        new_value = not bool(row["donotbulkemail"])
        editor.update_multiple("contact", [{"contactid": row["contactid"], "donotbulkemail": new_value}])
        changed.append({"contact": row["emailaddress1"], "donotbulkemail": f"{row['donotbulkemail']} -> {new_value}"})
    return changed


def change_consents_in_the_preference_centre(endpoints: dict[str, Any], count: int) -> list[dict[str, Any]]:
    """Flip some newsletter consent rows through the Web API, as Journeys' preference centre writes them."""
    from airflow_provider_didomi_dynamics.hooks.dataverse.tables import CONTACT_POINT_CONSENT, PURPOSE

    editor = editor_hook(endpoints)
    purposes = {
        r["msdynmkt_name"]: r["msdynmkt_purposeid"]
        for page in editor.iter_rows(PURPOSE, ["msdynmkt_purposeid", "msdynmkt_name"])
        for r in page
    }
    columns = ["msdynmkt_contactpointconsent4id", "msdynmkt_contactpointvalue", "msdynmkt_value"]
    newsletter = f"_msdynmkt_purposeid_value eq {purposes['newsletter']} and _msdynmkt_topicid_value eq null"
    rows = [r for page in editor.iter_rows(CONTACT_POINT_CONSENT, columns, newsletter) for r in page]
    rows.sort(key=lambda r: r["msdynmkt_contactpointvalue"] or "")
    names = {OPTED_IN: "Opted In", OPTED_OUT: "Opted Out"}
    changed = []
    for row in rows[:count]:
        value = OPTED_OUT if row["msdynmkt_value"] == OPTED_IN else OPTED_IN
        body = {
            "msdynmkt_contactpointconsent4id": row["msdynmkt_contactpointconsent4id"],
            "msdynmkt_value": value,
            "msdynmkt_source": PREFERENCE_CENTRE,
            "msdynmkt_reason": "Preference centre",
        }
        editor.update_multiple(CONTACT_POINT_CONSENT, [body])
        was = names.get(row["msdynmkt_value"], row["msdynmkt_value"])
        changed.append({"contact point": row["msdynmkt_contactpointvalue"], "newsletter": f"{was} -> {names[value]}"})
    return changed


def new_signups(count: int) -> list[dict[str, Any]]:
    """People who signed up in Didomi since the first cycle: no contact in Dynamics yet."""
    return [
        {
            "organization_user_id": f"signup{index:04d}@example.com",
            "consents": {
                "purposes": [
                    {"id": "newsletter", "enabled": index % 3 != 0, "values": {"frequency": {"value": "weekly"}}},
                    {"id": "marketing", "enabled": index % 2 == 0},
                ]
            },
        }
        for index in range(count)
    ]


class _StateStore:
    """The asset state store's two async calls, in memory: outside a triggerer there is none to inject."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}

    async def aget(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)

    async def aset(self, key: str, value: Any) -> None:
        self.values[key] = value


def watch_a_persons_edits(endpoints: dict[str, Any], count: int) -> tuple[dict[str, Any], float]:
    """Run DataverseChangesTrigger as the triggerer would until it fires once for ``count`` edits a person makes
    after its first poll; its event payload, and the seconds from the last edit to the event."""
    import asyncio

    from airflow_provider_didomi_dynamics.triggers.dataverse_changes import DataverseChangesTrigger

    async def watch() -> tuple[dict[str, Any], float]:
        trigger = DataverseChangesTrigger(poll_interval=LIVE_POLL_S)
        trigger.asset_state_store = _StateStore()  # type: ignore[assignment]  # the same two calls
        events: Any = trigger.run()  # an async generator: aclose() ends it
        first = asyncio.ensure_future(events.__anext__())
        while trigger.requests < 2 and not first.done():  # the baseline token, then one idle poll
            await asyncio.sleep(0.05)
        await asyncio.to_thread(edit_contacts_as_a_person, endpoints, count)
        edited_at = time.monotonic()
        try:
            event = await asyncio.wait_for(first, timeout=60)
        finally:
            await events.aclose()
        return event.payload, time.monotonic() - edited_at

    return asyncio.run(watch())


def main(workdir: Path = Path(".demo"), users: int = 5000, quiet_airflow: bool = True) -> int:
    started = time.monotonic()
    if quiet_airflow:  # the tables are the demo's output; Airflow's own info lines would bury them
        os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")
    prepare_airflow_home(workdir / "airflow")
    config = json.loads(DEMO_CONFIG.read_text())
    with RunningEmulators(workdir / "emulators", seed="demo", demo_users=users) as running:
        from airflow_provider_didomi_dynamics.local.testing import load_dag, run_dag

        endpoints = running.endpoints
        print(f"emulators: Dataverse {endpoints['dataverse_url']}, Didomi {endpoints['didomi_url']}")
        print(
            f"seeded: {len(running.didomi.model.users())} Didomi users, "
            f"{len(running.dataverse.model.contacts_rows())} Dataverse contacts"
        )
        set_connections(running.airflow_connections())
        config["authentication"] = {
            "client_id": endpoints["client_id"],
            "client_secret": endpoints["client_secret"],
            "tenant_id": endpoints["tenant_id"],
            "instance": endpoints["dataverse_url"],
        }
        forward, reverse = load_dag("didomi_to_dynamics"), load_dag("dynamics_to_didomi")
        runs: list[dict[str, Any]] = []
        details: dict[str, Any] = {}

        def run(name: str, dag: Any, push_task: str, conf: dict[str, Any]) -> dict[str, Any]:
            t0 = time.monotonic()
            result = run_dag(dag, run_conf=conf)
            report = result.value(push_task) or {}
            if result.state != "success":
                raise SystemExit(f"{name}: run ended {result.state}: {result.task_states}")
            row = report_row(name, report, time.monotonic() - t0)
            mapping = report.get("mapping") or (  # a chunked run's report adds its chunks' mapping reports up
                result.value(
                    push_task.replace("push_contacts", "apply_mapping").replace("push_consents", "reverse_mapping"),
                    "mapping_report",
                )
                or {}
            )
            row["no key"] = mapping.get("skipped_missing_organization_user_id", mapping.get("skipped_missing_key", 0))
            runs.append(row)
            details[name] = report
            return report

        config["upsert_mode"] = False
        set_config_variable(config)
        run("1. Didomi -> Dynamics, upsert_mode=false", forward, "push_contacts", {"full_sync": True})
        config["upsert_mode"] = True
        set_config_variable(config)
        run("2. Didomi -> Dynamics, upsert_mode=true", forward, "push_contacts", {"full_sync": True})
        edits = edit_contacts_as_a_person(running.endpoints, EDITED_CONTACTS)
        run("3. Dynamics -> Didomi", reverse, "push_consents", {"full_sync": True})
        run("4. Didomi -> Dynamics again", forward, "push_contacts", {"full_sync": True})
        run("5. Dynamics -> Didomi again", reverse, "push_consents", {"full_sync": True})
        payload, live_latency = watch_a_persons_edits(running.endpoints, LIVE_EDITS)
        live = load_dag("dynamics_to_didomi_live")
        run("L. live: 3 edits -> trigger -> Didomi", live, "push_consents", {"row_ids": payload["ids"]})

        cpc = json.loads(DEMO_CPC_CONFIG.read_text())
        cpc["authentication"] = config["authentication"]
        running.didomi.model.add_users(new_signups(max(5, users // 50)))
        set_config_variable(cpc)
        run("6. Didomi -> consent rows, upsert_mode=false", forward, "push_contacts", {"full_sync": True})
        cpc["upsert_mode"] = True
        set_config_variable(cpc)
        run("7. Didomi -> consent rows, upsert_mode=true", forward, "push_contacts", {"full_sync": True})
        consents = change_consents_in_the_preference_centre(running.endpoints, EDITED_CONSENTS)
        run("8. consent rows -> Didomi", reverse, "push_consents", {"full_sync": True})
        run("9. Didomi -> consent rows again", forward, "push_contacts", {"full_sync": True})
        run("10. consent rows -> Didomi again", reverse, "push_consents", {"full_sync": True})

        print_table(
            "Runs: every input row lands in exactly one outcome ('no key': left out, no organization_user_id)",
            runs,
            ["run", "rows", *OUTCOMES, "no key", "requests", "seconds"],
        )
        skipped = details["1. Didomi -> Dynamics, upsert_mode=false"].get("skipped", [])[:5]
        print_table("Run 1: a sample of the skipped rows", skipped, ["key", "reason"])
        created = details["2. Didomi -> Dynamics, upsert_mode=true"].get("sample_changes", [])[:5]
        print_table("Run 2: a sample of the created / updated contacts", created, ["key", "outcome", "changes"])
        print_table(
            f"Step 3: {len(edits)} contacts edited in Dynamics by a person (first 5)",
            edits[:5],
            ["contact", "donotbulkemail"],
        )
        sent = details["3. Dynamics -> Didomi"].get("sample_changes", [])[:5]
        print_table("Run 3: a sample of the consent events sent to Didomi", sent, ["key", "outcome", "changes"])
        print(
            f"\nRun L: DataverseChangesTrigger fired {live_latency:.1f} s after {LIVE_EDITS} edits (poll "
            f"{LIVE_POLL_S:g} s; 15 s by default) with {len(payload['ids'])} changed contact id(s), read from the "
            "contacts' delta link; dynamics_to_didomi_live sent exactly those (make airflow runs it in the triggerer)"
        )
        print(
            "\nRuns 6-10: target contact_point_consent, one row per (contact point, purpose or topic) in "
            "msdynmkt_contactpointconsent4; a row counts one (user, purpose or topic) pair"
        )
        seventh = details["7. Didomi -> consent rows, upsert_mode=true"]
        print(f"  run 7 created {seventh.get('contacts_created', 0)} contact(s) first, then their consent rows")
        print_table(
            f"Step 8: {len(consents)} consents changed in the preference centre (first 5)",
            consents[:5],
            ["contact point", "newsletter"],
        )
        sent = details["8. consent rows -> Didomi"].get("sample_changes", [])[:5]
        print_table("Run 8: a sample of the consent events sent to Didomi", sent, ["key", "outcome", "changes"])
        print(f"\ndemo finished in {time.monotonic() - started:.0f}s; the emulators are stopped.")
    return 0
