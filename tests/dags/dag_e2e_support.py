"""Helpers of the end-to-end DAG tests: both emulators, the demo config, runs of both sync DAGs, expected values.

Everything is read back the way a person would check it: contacts from the Dataverse emulator, users and events from
the Didomi emulator, counts from the run reports in XCom, request counts from the emulators' request logs.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest

from airflow_provider_didomi_dynamics.emulators.runner import RunningEmulators
from airflow_provider_didomi_dynamics.local import DEMO_CONFIG
from airflow_provider_didomi_dynamics.local.testing import DagRunResult, load_dag, run_dag

FORWARD = "didomi_to_dynamics"
REVERSE = "dynamics_to_didomi"
LIVE = "dynamics_to_didomi_live"
CONFIG_VARIABLE_ENV = "AIRFLOW_VAR_DIDOMI_DYNAMICS_CONFIG"

# Contact columns the demo config maps from Didomi (in mapping order), and the ones mapped back to Didomi.
MAPPED = ("donotbulkemail", "followemail", "donotemail", "donotphone", "new_newsletterfrequency", "new_consentsource")
REVERSE_MAPPED = MAPPED[:5]
# What Dataverse gives a new contact for a column the create does not set (a Didomi "no choice" is not written).
CREATE_DEFAULTS: dict[str, Any] = {
    "donotbulkemail": False,
    "followemail": True,
    "donotemail": False,
    "donotphone": False,
    "new_newsletterfrequency": None,
    "new_consentsource": None,
}
# HTTP retries of the hooks, made fast for tests that inject faults (the default policy waits up to a minute).
FAST_RETRIES: dict[str, Any] = {
    "max_attempts": 2,
    "max_total_wait_s": 2.0,
    "backoff_initial_s": 0.05,
    "backoff_max_s": 0.1,
}


@dataclass
class Sync:
    """One pair of emulators wired to Airflow (connections and the config Variable through the environment).

    Each run parses its DAG file afresh, as a deployment does for every task: a DAG object that ``dag.test()`` ran
    once keeps that run's conf as its param defaults (see ``test_run_dag_keeps_each_runs_conf_to_itself``).
    ``dag.test()`` deletes an earlier run with the same logical date (also "none") before it starts, so running a
    DAG again is clearing and re-running that run; runs with distinct ``logical_date`` are consecutive scheduled runs.
    """

    emulators: RunningEmulators
    monkeypatch: pytest.MonkeyPatch
    config: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.config:
            raw: dict[str, Any] = json.loads(DEMO_CONFIG.read_text())
            endpoints = self.emulators.endpoints
            raw["authentication"] = {
                "client_id": endpoints["client_id"],
                "client_secret": endpoints["client_secret"],
                "tenant_id": endpoints["tenant_id"],
                "instance": endpoints["dataverse_url"],
            }
            self.config = raw

    # ---- wiring -------------------------------------------------------------------------------------------------

    @property
    def dataverse(self) -> Any:
        """The Dataverse emulator's model."""
        return self.emulators.dataverse.model

    @property
    def didomi(self) -> Any:
        """The Didomi emulator's model."""
        return self.emulators.didomi.model

    def activate(self) -> None:
        """Point both connections and the Variable at these emulators (restored by monkeypatch after the test)."""
        for name, value in self.emulators.airflow_connections().items():
            self.monkeypatch.setenv(name, value)
        self.monkeypatch.setenv(CONFIG_VARIABLE_ENV, json.dumps(self.config))

    def set_config(self, **top: Any) -> None:
        self.config = {**copy.deepcopy(self.config), **top}
        self.monkeypatch.setenv(CONFIG_VARIABLE_ENV, json.dumps(self.config))

    # ---- runs ---------------------------------------------------------------------------------------------------

    def forward(self, logical_date: dt.datetime | None = None, **conf: Any) -> DagRunResult:
        """One run of didomi_to_dynamics with this run conf (what a person sets when triggering from the UI).

        ``logical_date`` makes it a run with a logical date and data interval, as the scheduler creates them.
        """
        return run_dag(load_dag(FORWARD), run_conf=conf, logical_date=logical_date)

    def reverse(self, logical_date: dt.datetime | None = None, **conf: Any) -> DagRunResult:
        """One run of dynamics_to_didomi with this run conf."""
        return run_dag(load_dag(REVERSE), run_conf=conf, logical_date=logical_date)

    def live(self, **conf: Any) -> DagRunResult:
        """One run of dynamics_to_didomi_live as a person triggers it (``row_ids``: the rows to sync)."""
        return run_dag(load_dag(LIVE), run_conf=conf)

    # ---- data -----------------------------------------------------------------------------------------------------

    def seed(self, users: int = 300, contact_share_percent: int = 60) -> list[str]:
        """Didomi demo users (3 purposes, preferences, channels; every 100th anonymous) and contacts for a share.

        Contacts start with varied consent columns (not Dataverse's defaults), so a Didomi "no choice" that wrongly
        overwrote them would show. Returns the organization user ids in Didomi.
        """
        keys = [k for k in self.didomi.seed_demo(users) if k]
        self.dataverse.add_attribute("new_newsletterfrequency", "String", max_length=100)
        self.dataverse.add_attribute("new_consentsource", "String", max_length=50)
        self.dataverse.define_alternate_key("new_emailkey", ["emailaddress1"])
        rows = [
            {
                "emailaddress1": key,
                "firstname": f"Seed{index}",
                "lastname": "Contact",
                "donotbulkemail": index % 2 == 0,
                "followemail": index % 3 != 0,
                "donotemail": index % 4 == 0,
                "donotphone": index % 5 == 0,
                "new_newsletterfrequency": "monthly" if index % 6 == 0 else None,
                "new_consentsource": "crm" if index % 7 == 0 else None,
            }
            for index, key in enumerate(keys)
            if index % 100 < contact_share_percent
        ]
        self.dataverse.add_contacts(rows)
        return keys

    def contact_rows(self) -> list[dict[str, Any]]:
        return list(self.dataverse.contacts_rows())

    def contacts(self) -> dict[str, dict[str, Any]]:
        """Contacts by emailaddress1 (see :meth:`duplicate_emails` for keys held by more than one contact)."""
        return {str(row["emailaddress1"]): row for row in self.contact_rows() if row.get("emailaddress1")}

    def duplicate_emails(self) -> list[str]:
        counts = Counter(str(row["emailaddress1"]).lower() for row in self.contact_rows())
        return sorted(email for email, n in counts.items() if n > 1)

    def users(self) -> dict[str, dict[str, Any]]:
        """Didomi users by organization_user_id (anonymous users left out)."""
        return {u["organization_user_id"]: u for u in self.didomi.users() if u.get("organization_user_id")}

    def anonymous_users(self) -> int:
        return sum(1 for u in self.didomi.users() if not u.get("organization_user_id"))

    def events_by_user(self) -> Counter[str]:
        return Counter(str(e["user"]["organization_user_id"]) for e in self.didomi.events())

    def dataverse_writes(self) -> int:
        """Write requests (anything but GET, token requests left out) the Dataverse emulator has answered."""
        return sum(
            row["count"]
            for row in self.dataverse.requests.as_rows()
            if row["method"] != "GET" and not str(row["route"]).startswith("entra:")
        )

    def didomi_writes(self) -> int:
        """Consent writes (events posted, users patched or created) the Didomi emulator has answered."""
        return sum(
            row["count"]
            for row in self.didomi.requests.as_rows()
            if row["method"] in ("POST", "PATCH", "PUT", "DELETE") and "/consents/" in str(row["route"])
        )

    def edit_as_person(self, contact_id: str, changes: dict[str, Any]) -> dict[str, Any]:
        """A change made in Dynamics by someone else (the emulator's 'editor' application user)."""
        editor = self.emulators.endpoints["editor_client_id"]
        row: dict[str, Any] = self.dataverse.edit_contact(contact_id, changes, client_id=editor)
        time.sleep(0.002)  # distinct modifiedon per edit, as people do not edit within the same millisecond
        return row


# ---- expected values --------------------------------------------------------------------------------------------


def _invert(value: bool | None) -> bool | None:
    return None if value is None else not value


def consent_choices(user: Mapping[str, Any]) -> dict[str, Any]:
    """What the demo mapping asks of each contact column for this Didomi user; None is "no choice"."""
    purposes = {p["id"]: p for p in user["consents"].get("purposes") or []}
    channels = {c["id"]: c for c in user["consents"].get("channels") or []}
    newsletter = purposes.get("newsletter") or {}
    frequency = (newsletter.get("values") or {}).get("frequency") or {}
    return {
        "donotbulkemail": _invert(newsletter.get("enabled")),
        "followemail": (purposes.get("marketing") or {}).get("enabled"),
        "donotemail": _invert((channels.get("email") or {}).get("enabled")),
        "donotphone": _invert((channels.get("phone") or {}).get("enabled")),
        "new_newsletterfrequency": frequency.get("value"),
        "new_consentsource": (user.get("metadata") or {}).get("source"),
    }


def expected_contact(user: Mapping[str, Any], before: Mapping[str, Any] | None) -> dict[str, Any]:
    """The mapped columns a contact must hold after a forward sync: Didomi's choices, else what it held before."""
    start = mapped(before) if before is not None else dict(CREATE_DEFAULTS)
    choices = consent_choices(user)
    return {column: start[column] if choices[column] is None else choices[column] for column in MAPPED}


def mapped(contact: Mapping[str, Any]) -> dict[str, Any]:
    return {column: contact.get(column) for column in MAPPED}


def didomi_state(user: Mapping[str, Any]) -> dict[str, Any]:
    """A Didomi user's consent in contact terms (the reverse-mapped columns)."""
    choices = consent_choices(user)
    return {column: choices[column] for column in REVERSE_MAPPED}


# ---- reports ----------------------------------------------------------------------------------------------------


def push_report(result: DagRunResult, task_id: str) -> dict[str, Any]:
    """The push task's run report: its return value, or the ``report`` XCom a task that failed its threshold left."""
    report = result.value(task_id) or result.value(task_id, "report")
    assert isinstance(report, dict), f"{task_id} left no report; task states: {result.task_states}"
    return report


def rows_of(report: Mapping[str, Any], outcome: str) -> list[dict[str, Any]]:
    """Every row of one outcome, as a person finds them: in the report when it lists them all, else in the report's
    rows file (object storage), which the report names."""
    listed = list(report[outcome])
    if "rows_listed" not in report:
        return listed
    from airflow.sdk import ObjectStoragePath

    with ObjectStoragePath(report["rows_file"]).open("r") as stream:
        rows = [json.loads(line) for line in stream]
    every = [row for row in rows if row["outcome"] == outcome]
    assert every[: len(listed)] == listed, "the report lists the first rows of its file"
    return every


def counts(report: Mapping[str, Any]) -> dict[str, int]:
    """The non-zero outcome counts of a report."""
    return nonzero(report["counts"])


def nonzero(outcomes: Mapping[str, int]) -> dict[str, int]:
    return {name: n for name, n in outcomes.items() if n}


def assert_accounted(report: Mapping[str, Any], rows: int) -> None:
    """Every input row has exactly one outcome: the counts add up to the total, listed rows are listed once.

    ``rows`` is how many rows the push had to account for: the rows from upstream plus rows re-read from an earlier
    run's failures; a re-read row that a fresher upstream row superseded is reported skipped "superseded" on top.
    """
    assert sum(report["counts"].values()) == report["total"]
    superseded = [r for r in rows_of(report, "skipped") if "superseded" in r.get("reason", "")]
    assert report["total"] - len(superseded) == rows
    for listed in ("failed", "skipped"):
        keys = [r["key"] for r in rows_of(report, listed) if "superseded" not in r.get("reason", "")]
        assert len(keys) == len(set(keys)), f"a row is {listed} twice: {sorted(k for k in keys if keys.count(k) > 1)}"


def iso_z(moment: dt.datetime) -> str:
    return moment.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_z(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def changed_keys(before: Mapping[str, Mapping[str, Any]], after: Mapping[str, Mapping[str, Any]]) -> set[str]:
    """Keys whose row differs (any column, system columns included) between two snapshots."""
    return {key for key in set(before) | set(after) if before.get(key) != after.get(key)}


def pick(rows: Iterable[str], count: int) -> list[str]:
    return sorted(rows)[:count]


def decided(
    users: Mapping[str, Mapping[str, Any]], contacts: Iterable[str], columns: Iterable[str] = REVERSE_MAPPED[:4]
) -> list[str]:
    """Keys of contacts whose Didomi user has a yes/no choice for each of these columns, sorted.

    A person's edit to such a contact always reaches Didomi; a contact column at its Dataverse default never turns
    a Didomi "no choice" into a choice (it is no evidence that anyone chose), so tests that check every field
    edit contacts of these users.
    """
    wanted = tuple(columns)
    return sorted(k for k in contacts if all(consent_choices(users[k])[c] is not None for c in wanted))
