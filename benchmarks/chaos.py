"""Fault campaign: seeded scenarios run both sync DAGs against the emulators while they inject random faults.

Each scenario seeds a small world (Didomi consent users, Dataverse contacts, some of them the same people) from its
seed, twice: on a *reference* emulator pair where nothing goes wrong, and on a *chaos* pair. Both go through the
same phases, each a real ``dag.test()`` run of a sync DAG (the reference pair stops after phase 3 and skips the
preflight task, which writes nothing: after phase 4 the chaos pair must still hold the state of phase 3):

1. ``didomi_to_dynamics`` (full sync);
2. a person edits some contacts in Dynamics and some people change their consent in Didomi (some of them the same
   people, later: the conflict rule), then ``dynamics_to_didomi``;
3. ``didomi_to_dynamics`` again (it carries Didomi's newer changes over);
4. ``dynamics_to_didomi`` again (nothing of ours may echo back).

On the chaos pair every phase runs while the emulators inject faults drawn from the seed: 429 storms with a growing
``Retry-After``, 500/502/503/504, dropped connections, responses slower than the client timeout, expired tokens
(before and during the run), a 401, a row Dataverse refuses inside a bulk request, a response lost after the write
landed, and a push task killed mid-way. A run that fails is cleared and re-run (Airflow's "Clear" on the failed
tasks of the same DAG run); a run that leaves failed rows is followed by the next run, as the schedule would. Then
the invariants are checked (``check_*`` below): after each phase both pairs hold the same state; no contact key and
no event appears twice; every row a task received is accounted for exactly once in its report and the counts add up.

Every fourth seed (``seed % 4 == 3``) is a Contact Point Consent world instead (``properties.target:
"contact_point_consent"``, forward direction only, on the chaos pair alone, checked against Didomi's own state:
see "Contact Point Consent worlds" below); ``--target`` makes every world one kind.

    python benchmarks/chaos.py [--scenarios 50] [--seed 1] [--users 150] [--workers 4] [--verbose] \
        [--target mixed|contact|contact_point_consent]

Prints one line per scenario, the faults injected by kind, every invariant violation, and ends with one JSON line
``{"scenarios": ..., "by_target": ..., "faults": ..., "violations": ...}``. ``tests/chaos`` runs a few scenarios of
this engine as part of the test suite; ``--scenarios 1 --seed S`` replays scenario ``S`` alone.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import datetime as dt
import json
import os
import random
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from airflow_provider_didomi_dynamics.local import DEMO_CONFIG

CONFIG_TEMPLATE_TEXT = DEMO_CONFIG.read_text()  # read once; parsed afresh for every environment
FORWARD = "didomi_to_dynamics"
REVERSE = "dynamics_to_didomi"
IN_OTHER_CHUNK = "superseded: another chunk"  # the start of SUPERSEDED_IN_OTHER_CHUNK (sync/chunks.py)
FORWARD_PUSH = "push_chunks"  # the forward push, mapped over the run's chunks; "push_contacts" holds the run report
CONTACT, CPC = "contact", "contact_point_consent"  # properties.target of a world
PURPOSES: dict[str, dict[str, list[str]]] = {
    "newsletter": {"frequency": ["daily", "weekly", "monthly"]},
    "marketing": {},
    "analytics": {},
}
CHANNELS = ["email", "sms", "phone"]
FREQUENCIES = ["daily", "weekly", "monthly", "daily,weekly", "weekly,monthly", "daily,weekly,monthly"]
SOURCES = ["web", "app", "store"]
CUSTOM_COLUMNS = (("new_newsletterfrequency", 100), ("new_consentsource", 50))
COMPARED_COLUMNS = (
    "emailaddress1",
    "firstname",
    "lastname",
    "donotbulkemail",
    "followemail",
    "donotemail",
    "donotphone",
    "new_newsletterfrequency",
    "new_consentsource",
)
BASE_TIME = dt.datetime(2026, 10, 1, tzinfo=dt.timezone.utc).timestamp()
CLIENT_TIMEOUT_S = 1.5  # connection extra ``timeout`` of the chaos pair; "slow" faults answer later than this
MAX_CLEAR_AND_RERUN = 2  # re-runs of a failed DAG run's failed tasks while faults may still be armed
MAX_FOLLOW_UP_RUNS = 3  # later runs while the last one left failed rows
FAULT_KINDS = (
    "throttle_storm",
    "server_error",
    "reset",
    "slow",
    "token_expiry",
    "unauthorized",
    "bad_row",
    "lost_response",
    "kill",
)


def isolate_airflow_database() -> None:
    """Keep the Airflow metadata database inside this process's ``AIRFLOW_HOME``, before Airflow is imported.

    Under pytest-xdist every worker gets its own ``AIRFLOW_HOME`` from ``tests/conftest.py`` but inherits the
    controller's ``AIRFLOW__DATABASE__SQL_ALCHEMY_CONN`` (set there with ``setdefault``): all workers would migrate
    and write one SQLite file at once. Called by the test folders' support modules at import.
    """
    home = os.environ.get("AIRFLOW_HOME")
    if not home or "airflow.configuration" in sys.modules:
        return
    wanted = f"sqlite:///{Path(home) / 'airflow.db'}"
    current = os.environ.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", wanted)
    if current.startswith("sqlite:") and current != wanted:
        os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = wanted


# ---------------------------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class ScenarioResult:
    """What one scenario did: faults that fired (by kind), DAG runs made, invariant violations."""

    seed: int
    faults: Counter[str] = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)
    runs: int = 0
    seconds: float = 0.0
    settings: dict[str, Any] = field(default_factory=dict)
    stats: Counter[str] = field(default_factory=Counter)  # CPC worlds: report outcomes over every run, rows held

    def as_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "faults": dict(self.faults),
            "violations": list(self.violations),
            "runs": self.runs,
            "seconds": round(self.seconds, 2),
            "settings": self.settings,
            "stats": dict(self.stats),
        }


@dataclass
class RunRecord:
    """One DAG run as the invariants read it: its final states and XComs, and how it got there."""

    phase: str
    dag_id: str
    run_id: str
    state: str
    task_states: dict[str, str]
    xcoms: dict[tuple[str, str], Any]
    cleared: int = 0  # how many times failed tasks were cleared and re-run inside this DAG run
    mapped_xcoms: dict[tuple[str, str], dict[int, Any]] = field(default_factory=dict)

    def value(self, task_id: str, key: str = "return_value") -> Any:
        return self.xcoms.get((task_id, key))

    def values(self, task_id: str, key: str = "return_value") -> list[Any]:
        """Every map index's value of a mapped task (an unmapped one: its value), in map-index order."""
        if (task_id, key) in self.mapped_xcoms:
            return [v for _, v in sorted(self.mapped_xcoms[(task_id, key)].items())]
        return [self.xcoms[(task_id, key)]] if (task_id, key) in self.xcoms else []

    @classmethod
    def of(cls, phase: str, dag_id: str, outcome: Any, cleared: int = 0) -> RunRecord:
        return cls(
            phase,
            dag_id,
            outcome.run_id,
            outcome.state,
            outcome.task_states,
            outcome.xcoms,
            cleared,
            outcome.mapped_xcoms,
        )

    def forward_chunks(self) -> tuple[int | None, dict[str, int], pd.DataFrame | None]:
        """A forward run as its mapped tasks saw it: users pulled, the chunks' mapping counts added up, and the
        contacts frame every chunk's push received (from the kept chunk files); None where a task left nothing.
        Rows a chunk left out because another chunk writes a newer row for the key are in the frame too, as the
        push reports them (skipped, superseded)."""
        from airflow_provider_didomi_dynamics.sync.chunks import ChunkRef, is_chunk_ref, read_frame

        refs = self.value("pull_consents")
        pulled = sum(int(r["rows"]) for r in refs) if isinstance(refs, list) else None
        mapping: dict[str, int] = {}
        for report in self.values("apply_mapping", "mapping_report"):
            for name, n in report.items():
                mapping[name] = mapping.get(name, 0) + int(n)
        mapped = [v for v in self.values("apply_mapping") if is_chunk_ref(v)]
        expected = refs if isinstance(refs, list) else []
        if not expected or len(mapped) != len(expected):
            return pulled, mapping, None
        frames = [read_frame(ChunkRef.from_xcom(v).path()) for v in mapped]
        left_out = [k for v in mapped for k in v.get("exclude", [])]
        if left_out:
            frames.append(pd.DataFrame({"organization_user_id": left_out}))
        return pulled, mapping, pd.concat(frames, ignore_index=True) if frames else None


# ---------------------------------------------------------------------------------------------------------------
# The seeded world
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class WorldData:
    """Everything a scenario writes into a fresh emulator pair, derived from the seed alone."""

    users: list[dict[str, Any]]
    contacts: list[dict[str, Any]]
    upsert_mode: bool
    alternate_key: bool
    bulk_messages: bool
    batch_size: int
    edits: list[tuple[str, dict[str, Any]]]  # (contact key, changes) made by a person in Dynamics
    didomi_changes: list[tuple[str, dict[str, Any]]]  # (organization_user_id, consents) made later in Didomi
    unique_sources: list[str]  # metadata sources carried by one user each (targets of bad-row faults)
    target: str = "contact"  # properties.target: CONTACT or CPC (Contact Point Consent rows)
    null_values: str = "skip"
    consent_rows: list[SeededConsent] = field(default_factory=list)  # CPC: rows Dataverse holds before the runs
    chunk_rows: int | None = None  # users per chunk of the forward run (None: the default, one chunk here)


def make_world(seed: int, users: int, target: str | None = None) -> WorldData:
    """Didomi users, Dataverse contacts (some the same people, some case-shifted keys) and later edits.

    ``target`` None: every fourth seed (``seed % 4 == 3``) is a Contact Point Consent world (``make_cpc_world``).
    """
    rng = random.Random(f"world-{seed}")
    choices = (True, False, None)
    made: list[dict[str, Any]] = []
    unique_sources: list[str] = []
    for index in range(users):
        key: str | None = f"s{seed}-u{index:04d}@example.com"
        if index % 47 == 46:
            key = None  # an anonymous user: left out of the forward sync, and said so
        source = rng.choice(SOURCES)
        if index % 31 == 5 and key is not None:
            source = f"partner-{seed}-{index}"
            unique_sources.append(source)
        values: dict[str, dict[str, str]] = {}
        if rng.random() < 0.7:
            values["frequency"] = {"value": rng.choice(FREQUENCIES)}
        made.append(
            {
                "id": f"didomi-{seed}-{index:04d}",
                "organization_user_id": key,
                "version": rng.randint(1, 4),
                "created_at": _iso(BASE_TIME - 86400 * 60 + index),
                "updated_at": _iso(BASE_TIME - rng.random() * 86400 * 30),
                "metadata": {"source": source},
                "consents": {
                    "purposes": [
                        {"id": "newsletter", "enabled": rng.choice(choices), "enabled_li": None, "values": values},
                        {"id": "marketing", "enabled": rng.choice(choices), "enabled_li": None, "values": {}},
                        {"id": "analytics", "enabled": rng.choice(choices), "enabled_li": None, "values": {}},
                    ],
                    "channels": [
                        {"id": c, "enabled": rng.choice(choices), "metadata": {}}
                        for c in CHANNELS
                        if rng.random() < 0.8
                    ],
                    "vendors": {"enabled": [], "disabled": [], "enabled_li": [], "disabled_li": []},
                    "tcfcs": None,
                },
            }
        )
    share = rng.uniform(0.4, 0.8)
    contacts: list[dict[str, Any]] = []
    for index, user in enumerate(made):
        key = user["organization_user_id"]
        if key is None or rng.random() >= share:
            continue
        stored_key = key.upper() if index % 13 == 3 else key  # Dataverse matches keys case-insensitively
        contacts.append(
            {
                "emailaddress1": stored_key,
                "firstname": f"First{index}",
                "lastname": f"Seed{seed}",
                "donotbulkemail": rng.random() < 0.5,
                "followemail": rng.random() < 0.5,
                "donotemail": rng.random() < 0.3,
                "new_newsletterfrequency": rng.choice([None, *FREQUENCIES]),
            }
        )
    for index in range(max(2, users // 25)):  # contacts Didomi does not know
        contacts.append(
            {
                "emailaddress1": f"s{seed}-crm-only-{index}@example.com",
                "firstname": f"Crm{index}",
                "lastname": f"Seed{seed}",
                "donotbulkemail": rng.random() < 0.5,
            }
        )
    upsert_mode = rng.random() < 0.6
    keyed = [u["organization_user_id"] for u in made if u["organization_user_id"]]
    existing = {c["emailaddress1"].casefold() for c in contacts}
    editable = sorted(existing) if not upsert_mode else sorted(existing | {k.casefold() for k in keyed})
    edits: list[tuple[str, dict[str, Any]]] = []
    for key in rng.sample(editable, k=min(len(editable), max(3, users // 10))):
        change: dict[str, Any] = {}
        for column in rng.sample(["donotbulkemail", "followemail", "donotemail", "donotphone"], k=rng.randint(1, 2)):
            change[column] = rng.random() < 0.5
        if rng.random() < 0.4:
            change["new_newsletterfrequency"] = rng.choice(FREQUENCIES)
        edits.append((key, change))
    edited = [k for k, _ in edits]
    later: list[tuple[str, dict[str, Any]]] = []
    by_folded = {k.casefold(): k for k in keyed}
    known_edited = [k for k in edited if k in by_folded]
    candidates = sorted(set(by_folded) - set(edited))
    targets = rng.sample(known_edited, k=len(known_edited) // 3)
    targets += rng.sample(candidates, k=min(len(candidates), users // 15))
    for key in targets:
        original = by_folded[key]
        consents: dict[str, Any] = {"purposes": [], "channels": []}
        if rng.random() < 0.6:
            consents["purposes"].append({"id": "newsletter", "enabled": rng.random() < 0.5})
        if rng.random() < 0.5:
            consents["channels"].append({"id": "email", "enabled": rng.random() < 0.5})
        if not consents["purposes"] and not consents["channels"]:
            consents["purposes"].append({"id": "marketing", "enabled": rng.random() < 0.5})
        later.append((original, consents))
    world = WorldData(
        users=made,
        contacts=contacts,
        upsert_mode=upsert_mode,
        alternate_key=rng.random() < 0.6,
        bulk_messages=rng.random() < 0.75,
        batch_size=rng.choice([7, 16, 25, 50, 1000]),
        edits=edits,
        didomi_changes=later,
        unique_sources=unique_sources,
    )
    # Half the worlds split the forward run into chunks pushed by mapped tasks (own generator: the seeds' other
    # draws, which tests name by seed, stay what they were).
    world.chunk_rows = random.Random(f"chunks-{seed}").choice([None, None, 16, 37])
    if (target or (CPC if seed % 4 == 3 else CONTACT)) == CPC:
        return make_cpc_world(seed, world)
    return world


def consent_user(
    key: str | None,
    *,
    newsletter: bool | None = True,
    marketing: bool | None = True,
    email: bool | None = True,
    frequency: str | None = "weekly",
    source: str = "web",
    updated_at: str = "2026-09-01T00:00:00.000Z",
) -> dict[str, Any]:
    """One Didomi consent user as the API returns it, for hand-built worlds (tests)."""
    values = {"frequency": {"value": frequency}} if frequency is not None else {}
    return {
        "id": f"didomi-{key}",
        "organization_user_id": key,
        "version": 1,
        "created_at": "2026-08-01T00:00:00.000Z",
        "updated_at": updated_at,
        "metadata": {"source": source},
        "consents": {
            "purposes": [
                {"id": "newsletter", "enabled": newsletter, "enabled_li": None, "values": values},
                {"id": "marketing", "enabled": marketing, "enabled_li": None, "values": {}},
            ],
            "channels": [{"id": "email", "enabled": email, "metadata": {}}],
            "vendors": {"enabled": [], "disabled": [], "enabled_li": [], "disabled_li": []},
            "tcfcs": None,
        },
    }


def hand_world(
    users: list[dict[str, Any]],
    contacts: list[dict[str, Any]],
    *,
    upsert_mode: bool = True,
    alternate_key: bool = True,
    bulk_messages: bool = True,
    batch_size: int = 1000,
) -> WorldData:
    """A world given row by row (tests), rather than drawn from a seed."""
    return WorldData(
        users=users,
        contacts=contacts,
        upsert_mode=upsert_mode,
        alternate_key=alternate_key,
        bulk_messages=bulk_messages,
        batch_size=batch_size,
        edits=[],
        didomi_changes=[],
        unique_sources=[],
    )


def _iso(timestamp: float) -> str:
    moment = dt.datetime.fromtimestamp(timestamp, tz=dt.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


class Pair:
    """One Dataverse + Didomi emulator pair, the connections and config that point at it, and its state."""

    def __init__(self, name: str, state_dir: Path, *, client_timeout_s: float | None = None) -> None:
        from airflow_provider_didomi_dynamics.emulators.runner import RunningEmulators

        self.name = name
        self.running = RunningEmulators(state_dir / name).start()
        self.client_timeout_s = client_timeout_s
        self.cpc_records: dict[str, str] = {}  # Purpose / Topic name -> id, in a CPC world

    @property
    def dataverse(self) -> Any:
        return self.running.dataverse.model

    @property
    def didomi(self) -> Any:
        return self.running.didomi.model

    def stop(self) -> None:
        self.running.stop()

    def load(self, world: WorldData) -> None:
        """Reset both emulators and write the scenario's starting data."""
        from airflow_provider_didomi_dynamics.hooks.dataverse import forget_bulk_support
        from airflow_provider_didomi_dynamics.sync.retry_queue import forget_retry_queues

        dataverse, didomi = self.dataverse, self.didomi
        dataverse.reset(schema=True)
        dataverse.faults.fired.clear()
        dataverse.set_bulk_messages_enabled(world.bulk_messages)
        for name, length in CUSTOM_COLUMNS:
            dataverse.add_attribute(name, "String", max_length=length)
        if world.alternate_key:
            dataverse.define_alternate_key("new_emailkey", ["emailaddress1"])
        dataverse.add_contacts([dict(c) for c in world.contacts])
        didomi.reset()
        didomi.set_catalogue(PURPOSES, CHANNELS)
        didomi.add_users(world.users)
        self.cpc_records = load_cpc_catalogue(self, world) if world.target == CPC else {}
        forget_bulk_support()
        forget_retry_queues()  # rows an earlier world's runs could not write are not this world's

    def environment(self, world: WorldData) -> dict[str, str]:
        """``AIRFLOW_CONN_*`` and the config Variable for this pair."""
        endpoints = self.running.endpoints
        dataverse_extra: dict[str, Any] = {
            "tenant_id": endpoints["tenant_id"],
            "authority_host": endpoints["authority_host"],
            "ca_bundle": endpoints["ca_file"],
        }
        didomi_extra: dict[str, Any] = {
            "organization_id": endpoints["organization_id"],
            "ca_bundle": endpoints["ca_file"],
        }
        if self.client_timeout_s is not None:
            dataverse_extra["timeout"] = self.client_timeout_s
            didomi_extra["timeout"] = self.client_timeout_s
        config = cpc_config(world) if world.target == CPC else json.loads(CONFIG_TEMPLATE_TEXT)
        config["authentication"] = {
            "client_id": endpoints["client_id"],
            "client_secret": endpoints["client_secret"],
            "tenant_id": endpoints["tenant_id"],
            "instance": endpoints["dataverse_url"],
        }
        config["upsert_mode"] = world.upsert_mode
        return {
            "AIRFLOW_CONN_DATAVERSE_DEFAULT": json.dumps(
                {
                    "conn_type": "dataverse",
                    "host": endpoints["dataverse_url"],
                    "login": endpoints["client_id"],
                    "password": endpoints["client_secret"],
                    "extra": dataverse_extra,
                }
            ),
            "AIRFLOW_CONN_DIDOMI_DEFAULT": json.dumps(
                {
                    "conn_type": "didomi",
                    "host": endpoints["didomi_url"],
                    "login": endpoints["didomi_key"],
                    "password": endpoints["didomi_secret"],
                    "extra": didomi_extra,
                }
            ),
            "AIRFLOW_VAR_DIDOMI_DYNAMICS_CONFIG": json.dumps(config),
            # the invariants read what each chunk's tasks saw: keep the chunk files of successful runs too
            "DIDOMI_DYNAMICS_KEEP_CHUNKS": "1",
            **({"DIDOMI_DYNAMICS_CHUNK_ROWS": str(world.chunk_rows)} if world.chunk_rows else {}),
        }

    # -- what people do between the runs ---------------------------------------------------------------------

    def person_edits(self, edits: list[tuple[str, dict[str, Any]]]) -> None:
        """Contacts changed in Dynamics by someone else than the integration (the editor application user)."""
        ids = {str(r["emailaddress1"] or "").casefold(): r["contactid"] for r in self.dataverse.contacts_rows()}
        for key, change in edits:
            contact_id = ids.get(key)
            if contact_id is not None:
                self.dataverse.edit_contact(contact_id, dict(change))

    def didomi_changes(self, changes: list[tuple[str, dict[str, Any]]]) -> None:
        """People changing their consent in Didomi (a consent notice or preference centre), after the edits."""
        model = self.didomi
        for key, consents in changes:
            event = {"user": {"organization_user_id": key}, "consents": json.loads(json.dumps(consents))}
            model.post_events(event, organization_id=model.organization_id)

    # -- state -----------------------------------------------------------------------------------------------

    def contacts(self) -> tuple[dict[str, dict[str, Any]], list[str]]:
        """Contacts by case-folded key (the compared columns, and who wrote last) and keys held more than once."""
        integration = self.dataverse.integration.user.systemuserid
        rows = self.dataverse.contacts_rows()
        counts = Counter(str(r.get("emailaddress1") or "").casefold() for r in rows)
        state: dict[str, dict[str, Any]] = {}
        for row in rows:
            key = str(row.get("emailaddress1") or "").casefold()
            values = {c: row.get(c) for c in COMPARED_COLUMNS}
            writer = str(row.get("_modifiedby_value") or "")
            values["last_written_by"] = "integration" if writer == integration else "someone else"
            state[key] = values
        return state, sorted(k for k, n in counts.items() if n > 1)

    def contact(self, key: str) -> dict[str, Any]:
        """The one contact holding ``key`` (compared case-insensitively, as Dataverse does), every column."""
        rows = [
            r for r in self.dataverse.contacts_rows() if str(r.get("emailaddress1") or "").casefold() == key.casefold()
        ]
        if len(rows) != 1:
            raise AssertionError(f"{len(rows)} contacts hold {key}")
        return rows[0]

    def consent_users(self) -> dict[str, dict[str, Any]]:
        """Didomi users by organization_user_id (or id): consents, metadata, and how many events built them."""
        state: dict[str, dict[str, Any]] = {}
        for user in self.didomi.users():
            key = user.get("organization_user_id") or f"id:{user['id']}"
            state[key] = {
                "consents": _canonical_consents(user.get("consents")),
                "metadata": user.get("metadata"),
                "version": user.get("version"),
            }
        return state

    def consent_events(self) -> tuple[dict[str, Counter[str]], list[str]]:
        """Stored events by user (their consents, canonical JSON) and event ids stored more than once."""
        by_user: dict[str, Counter[str]] = {}
        ids: Counter[str] = Counter()
        for event in self.didomi.events():
            ids[str(event["id"])] += 1
            user = event.get("user") or {}
            key = user.get("organization_user_id") or f"id:{user.get('id')}"
            content = json.dumps(_canonical_consents(event.get("consents")), sort_keys=True)
            by_user.setdefault(key, Counter())[content] += 1
        return by_user, sorted(i for i, n in ids.items() if n > 1)

    def fired(self) -> Counter[str]:
        return Counter(self.dataverse.faults.fired) + Counter(self.didomi.faults.fired)

    def disarm(self) -> None:
        self.dataverse.faults.clear()
        self.didomi.faults.clear()
        self.dataverse.clear_validation_failures()


def _canonical_consents(consents: Any) -> Any:
    """Consents with lists sorted by id and value lists compared as sets: what a person's consent *is*."""
    if not isinstance(consents, dict):
        return consents
    purposes = []
    for purpose in sorted(consents.get("purposes") or [], key=lambda p: str(p.get("id"))):
        values = {
            pref: sorted(v for v in str((choice or {}).get("value") or "").split(",") if v)
            for pref, choice in sorted((purpose.get("values") or {}).items())
        }
        purposes.append(
            {
                "id": purpose.get("id"),
                "enabled": purpose.get("enabled"),
                "enabled_li": purpose.get("enabled_li"),
                "values": values,
            }
        )
    channels = [
        {"id": c.get("id"), "enabled": c.get("enabled")}
        for c in sorted(consents.get("channels") or [], key=lambda c: str(c.get("id")))
    ]
    return {"purposes": purposes, "channels": channels}


# ---------------------------------------------------------------------------------------------------------------
# Running DAGs: dag.test(), and Airflow's "Clear" of a failed run's failed tasks
# ---------------------------------------------------------------------------------------------------------------


def load_dags(retry_policy: Any = None) -> dict[str, Any]:
    """Both sync DAGs, with task retries off (the campaign re-runs by itself) and a short HTTP backoff for Didomi."""
    os.environ["DIDOMI_DYNAMICS_RETRIES"] = "0"
    from airflow_provider_didomi_dynamics.local.testing import load_dag
    from airflow_provider_didomi_dynamics.transport.retry import RetryPolicy

    policy = retry_policy or RetryPolicy(
        max_attempts=8, max_total_wait_s=30.0, backoff_initial_s=0.05, backoff_max_s=0.5
    )
    dags = {FORWARD: load_dag(FORWARD), REVERSE: load_dag(REVERSE)}
    for dag in dags.values():
        for task in dag.tasks:
            _PRISTINE_PARAMS[(id(dag), task.task_id)] = copy.deepcopy(task.params)
            task.retries = 0
            if hasattr(task, "http_retry_policy"):
                task.http_retry_policy = policy
    return dags


_PRISTINE_PARAMS: dict[tuple[int, str], Any] = {}


def _reset_params(dag: Any) -> None:
    """Give every task of ``dag`` the params it was loaded with (see ``run_once``)."""
    for task in dag.tasks:
        pristine = _PRISTINE_PARAMS.setdefault((id(dag), task.task_id), copy.deepcopy(task.params))
        task.params = copy.deepcopy(pristine)


def run_once(
    dag: Any, conf: dict[str, Any], *, skip_preflight: bool = False, logical_date: dt.datetime | None = None
) -> Any:
    """One ``dag.test()`` run; ``skip_preflight`` marks the preflight task successful without running it;
    ``logical_date`` makes it look like a scheduled run of that date (default: none, like a run triggered by hand).

    ``dag.test()`` runs tasks in this process on the DAG's own operator objects, and the task runner merges the run
    conf into ``task.params`` in place: without a reset, one run's conf (a targeted re-sync's ids, ``full_sync``)
    would leak into the next run of the same DAG object. ``testing.run_dag`` restores the params it found, and
    ``clear_and_rerun`` below runs tasks outside it: each run starts from the params the DAG was loaded with.
    """
    from airflow_provider_didomi_dynamics.local.testing import run_dag

    _reset_params(dag)
    return run_dag(
        dag,
        run_conf=conf,
        logical_date=logical_date,
        mark_success_pattern="preflight" if skip_preflight else None,
    )


def clear_and_rerun(dag: Any, run_id: str) -> Any:
    """Clear the failed (and upstream-failed) tasks of a DAG run and run them again, in the same DAG run.

    What a person does with "Clear" in the UI: upstream tasks keep their results (their XComs), the cleared ones
    run again with a new try number. The loop is ``dag.test()``'s own, resumed on the existing run.
    """
    from airflow import settings
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import clear_task_instances
    from airflow.sdk import timezone
    from airflow.sdk.definitions.dag import _run_task
    from airflow.serialization.serialized_objects import DagSerialization
    from airflow.utils.state import DagRunState, TaskInstanceState
    from sqlalchemy import select

    from airflow_provider_didomi_dynamics.local.testing import collect

    if settings.Session is None:
        raise RuntimeError("Airflow's ORM is not configured")
    session = settings.Session()
    try:
        query = select(DagRun).where(DagRun.dag_id == dag.dag_id, DagRun.run_id == run_id)
        dag_run = session.scalars(query).one()
        instances = dag_run.get_task_instances(session=session)
        failed_ids = {ti.task_id for ti in instances if ti.state == TaskInstanceState.FAILED}
        # as the UI's Clear with "Downstream" ticked: the failed tasks and everything after them, whatever its state
        after = {d for t in failed_ids for d in dag.get_task(t).get_flat_relative_ids(upstream=False)}
        failed = [
            ti for ti in instances if ti.task_id in failed_ids | after or ti.state == TaskInstanceState.UPSTREAM_FAILED
        ]
        clear_task_instances(failed, session, dag_run_state=DagRunState.RUNNING)
        session.commit()
        dag_run = session.scalars(query).one()
        dag_run.dag = DagSerialization.deserialize_dag(DagSerialization.serialize_dag(dag))
        idle = 0
        while dag_run.state == DagRunState.RUNNING:
            session.expire_all()
            schedulable, _ = dag_run.update_state(session=session)
            for ti in schedulable:
                ti.try_number += 1
                ti.state = TaskInstanceState.SCHEDULED
                ti.scheduled_dttm = timezone.utcnow()
            session.commit()
            scheduled = [
                ti for ti in dag_run.get_task_instances(session=session) if ti.state == TaskInstanceState.SCHEDULED
            ]
            if not scheduled:
                # After a failure the next state update marks the downstream tasks upstream_failed (as in dag.test)
                idle += 1
                if idle > 200:
                    raise RuntimeError(f"cleared run {run_id} has nothing to schedule but is still running")
                time.sleep(0.01)
                continue
            idle = 0
            for ti in scheduled:
                with contextlib.suppress(Exception):  # dag.test() logs and goes on; the state says it failed
                    _run_task(ti=ti, task=dag.task_dict[ti.task_id])
    finally:
        session.close()
        _reset_params(dag)
    return collect(dag.dag_id, run_id)


# ---------------------------------------------------------------------------------------------------------------
# Faults
# ---------------------------------------------------------------------------------------------------------------


class ChaosKill(RuntimeError):
    """Raised in a push worker after a write landed: the task dies as if its worker was killed."""


@dataclass
class FaultPlanForRun:
    """The faults of one chaos run: armed on the emulators, plus the ones injected from the client side."""

    kill_after_writes: int | None = None
    lose_response_after_writes: int | None = None
    expire_tokens_after_s: float | None = None
    kinds: Counter[str] = field(default_factory=Counter)  # client-side faults that fired


DATAVERSE_ROUTES = ("/api/data/v9.2/contacts", "Multiple", "$batch", "EntityDefinitions", "WhoAmI", "/api/data/")
DIDOMI_ROUTES = ("/v1/consents/events", "/v1/consents/users", "/v1/consents/", "/v1/sessions")


def arm_faults(rng: random.Random, pair: Pair, world: WorldData, phase: str, plan: FaultPlanForRun) -> list[str]:
    """Draw and arm 1-4 faults for one run; returns their descriptions."""
    if world.target == CPC:
        return arm_cpc_faults(rng, pair, plan)
    armed: list[str] = []
    forward = phase.startswith("forward")
    for _ in range(rng.randint(1, 4)):
        kind = rng.choices(FAULT_KINDS, weights=(3, 3, 2, 1, 1, 1, 2 if forward else 0, 1, 1))[0]
        side = rng.choice(("dataverse", "didomi"))
        model = pair.dataverse if side == "dataverse" else pair.didomi
        route = rng.choice(DATAVERSE_ROUTES if side == "dataverse" else DIDOMI_ROUTES)
        if kind == "throttle_storm":
            storm = rng.randint(2, 4)
            for i in range(storm):  # armed in order: each 429 of the storm asks for a longer wait
                model.faults.arm("status", 1, status=429, retry_after=round(0.05 * 2**i, 2), path_contains=route)
            armed.append(f"429 storm x{storm} on {side} {route}")
        elif kind == "server_error":
            status = rng.choice((500, 502, 503, 504))
            count = rng.randint(1, 3)
            model.faults.arm("status", count, status=status, path_contains=route)
            armed.append(f"{status} x{count} on {side} {route}")
        elif kind == "reset":
            count = rng.randint(1, 2)
            model.faults.arm("reset", count, path_contains=route)
            armed.append(f"connection reset x{count} on {side} {route}")
        elif kind == "slow":
            model.faults.arm("delay", 1, delay_s=CLIENT_TIMEOUT_S + 0.5, path_contains=route)
            armed.append(f"response slower than the client timeout on {side} {route}")
        elif kind == "token_expiry":
            model.expire_tokens()
            plan.kinds["token_expiry"] += 1
            plan.expire_tokens_after_s = rng.uniform(0.1, 1.5)
            armed.append(
                f"{side} tokens expired before the run, all tokens again after {plan.expire_tokens_after_s:.2f}s"
            )
        elif kind == "unauthorized":
            model.faults.arm("status", 1, status=401, path_contains=route)
            armed.append(f"401 on {side} {route}")
        elif kind == "bad_row" and world.unique_sources:
            source = rng.choice(world.unique_sources)
            pair.dataverse.fail_validation_for("new_consentsource", source)
            armed.append(f"Dataverse refuses the row whose new_consentsource is {source}")
        elif kind == "lost_response":
            plan.lose_response_after_writes = rng.randint(1, 3)
            armed.append(f"response of write #{plan.lose_response_after_writes} lost after it landed")
        elif kind == "kill":
            plan.kill_after_writes = rng.randint(1, 3)
            armed.append(f"push task killed after write #{plan.kill_after_writes}")
    return armed


WRITE_MARKERS = ("Multiple", "$batch", "/v1/consents/events")


def set_push_batch_size(dag: Any, size: int) -> None:
    """The forward push's batch size for a world: the mapped push (one task per chunk) keeps it in its partial."""
    dag.get_task(FORWARD_PUSH).partial_kwargs["batch_size"] = size


def _threads_of_the_same_pool(thread: threading.Thread) -> set[threading.Thread]:
    """The killed task's other writer threads (``<prefix>_<n>`` of one ThreadPoolExecutor): they die with it.

    A later task's pool has new threads, so it runs normally; a kill on the main thread needs nothing: its
    exception already stops that task.
    """
    if thread is threading.main_thread():
        return set()
    prefix = thread.name.rsplit("_", 1)[0]
    return {other for other in threading.enumerate() if other.name.rsplit("_", 1)[0] == prefix}


@contextlib.contextmanager
def client_side_faults(pair: Pair, plan: FaultPlanForRun) -> Iterator[None]:
    """Faults the emulators cannot make: a write lands and then its response is lost, or the worker dies.

    Both wrap ``requests.Session.request`` for the chaos pair's hosts only: the request really reaches the
    emulator and is applied, then a ``ConnectionError`` (lost response) or ``ChaosKill`` (task killed) is raised.
    A token-expiry timer expires every token of both emulators while the run is under way.
    """
    import requests

    hosts = (pair.running.endpoints["dataverse_url"], pair.running.endpoints["didomi_url"])
    real = requests.Session.request
    lock = threading.Lock()
    writes = [0]
    dead: set[threading.Thread] = set()

    def request(session: Any, method: Any, url: Any, *args: Any, **kwargs: Any) -> Any:
        text = str(url)
        if str(method).upper() != "POST" or not text.startswith(hosts) or not any(m in text for m in WRITE_MARKERS):
            return real(session, method, url, *args, **kwargs)
        with lock:
            if threading.current_thread() in dead:  # a dead task sends nothing more; writes on the wire still land
                raise ChaosKill("chaos: the push task's worker is dead")
            writes[0] += 1
            number = writes[0]
        response = real(session, method, url, *args, **kwargs)
        if response.status_code < 300:
            if plan.lose_response_after_writes == number:
                plan.kinds["lost_response"] += 1
                raise requests.ConnectionError("chaos: connection reset after the request was sent")
            if plan.kill_after_writes == number:
                plan.kinds["kill"] += 1
                with lock:
                    dead.update(_threads_of_the_same_pool(threading.current_thread()))
                raise ChaosKill("chaos: the push task's worker was killed mid-push")
        return response

    timer: threading.Timer | None = None
    if plan.expire_tokens_after_s is not None:

        def expire() -> None:
            pair.dataverse.expire_tokens()
            pair.didomi.expire_tokens()
            plan.kinds["token_expiry"] += 1

        timer = threading.Timer(plan.expire_tokens_after_s, expire)
        timer.daemon = True
        timer.start()
    requests.Session.request = request  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        requests.Session.request = real  # type: ignore[method-assign]
        if timer is not None:
            timer.cancel()


# ---------------------------------------------------------------------------------------------------------------
# Invariants
# ---------------------------------------------------------------------------------------------------------------


def note_chunks(result: Any, record: RunRecord) -> None:
    """The most chunks a forward run of the scenario was split into (the campaign says how many worlds had >1)."""
    refs = record.value("pull_consents") if record.dag_id == FORWARD else None
    if isinstance(refs, list):
        result.stats["max_chunks"] = max(result.stats.get("max_chunks", 0), len(refs))


def check_report_accounting(record: RunRecord, upsert_mode: bool) -> list[str]:
    """Every row a push task received has exactly one outcome in its report, and the counts add up."""
    where = f"{record.phase} {record.dag_id} {record.run_id}"
    problems: list[str] = []
    if record.dag_id == FORWARD:
        push, source, upstream = "push_contacts", "apply_mapping", "pull_consents"
    else:
        push, source, upstream = "push_consents", "reverse_mapping", "pull_contacts"
    # A push that wrote what it could and then failed its task (an API that stopped answering) leaves its report
    # under the XCom key "report"; it must account for every row all the same.
    report = record.value(push) or record.value(push, "report")
    if record.dag_id == FORWARD:
        rows, mapping, frame = record.forward_chunks()
    else:
        frame = record.value(source)
        pulled = record.value(upstream)
        rows = None if pulled is None else len(pulled)
        mapping = record.value(source, "mapping_report") or {}
    if rows is not None and mapping:
        if record.dag_id == FORWARD:
            accounted = (
                mapping.get("contacts", 0)
                + mapping.get("skipped_missing_organization_user_id", 0)
                + mapping.get("duplicates_dropped", 0)
                + mapping.get("superseded_in_other_chunk", 0)
            )
            if mapping.get("users") != rows or accounted != rows:
                problems.append(f"{where}: apply_mapping accounts for {accounted} of {rows} pulled users ({mapping})")
        else:
            accounted = mapping.get("events", 0) + mapping.get("skipped_missing_key", 0)
            if mapping.get("contacts") != rows or accounted != rows:
                problems.append(f"{where}: reverse_mapping accounts for {accounted} of {rows} pulled contacts")
    if report is None:
        if record.state == "success":
            problems.append(f"{where}: the run succeeded without a {push} report")
        return problems
    counts: dict[str, int] = report.get("counts", {})
    total = report.get("total", -1)
    if sum(counts.values()) != total:
        problems.append(f"{where}: {push} counts {counts} add up to {sum(counts.values())}, not total {total}")
    keys = [] if frame is None else [str(k) for k in frame["organization_user_id"].tolist() if k is not None]
    # Rows earlier runs could not write come back through the task's retry queue and are reported too.
    retried = [str(k) for k in report.get("retried_keys", [])]
    if len(retried) != report.get("retried_from_earlier_runs", 0):
        problems.append(f"{where}: {push} retried {report.get('retried_from_earlier_runs')} rows but lists {retried}")
    if frame is not None and total != len(frame) + len(retried):
        problems.append(
            f"{where}: {push} reports {total} row(s) for {len(frame)} input row(s) and {len(retried)} retried"
        )
    folded = {k.casefold() for k in [*keys, *retried]}
    every_row = report_rows(report)  # the XCom lists the first rows only (LISTED_ROWS); the rows file has them all
    for outcome in ("failed", "skipped"):
        listed = [str(r.get("key", "")) for r in report.get(outcome, [])]
        if every_row is not None:
            listed = [str(r.get("key", "")) for r in every_row if r.get("outcome") == outcome]
        repeated = sorted(k for k, n in Counter(listed).items() if n > 1 and k)
        if repeated:
            problems.append(f"{where}: {push} lists {repeated[:3]} more than once as {outcome}")
        if len(listed) != counts.get(outcome, 0):
            problems.append(f"{where}: {push} counts {counts.get(outcome)} {outcome} but lists {len(listed)}")
        strangers = sorted(k for k in listed if k and k.casefold() not in folded and not k.startswith("row "))
        if frame is not None and strangers:
            problems.append(f"{where}: {push} reports {outcome} rows it was never given: {strangers[:3]}")
    for wrong in ("sent",) if push == "push_contacts" else ("created", "updated"):
        if counts.get(wrong):
            problems.append(f"{where}: {push} reports {counts[wrong]} row(s) as {wrong}")
    if push == "push_contacts" and counts.get("created") and not upsert_mode:
        problems.append(f"{where}: push_contacts created contacts with upsert_mode false")
    return problems


def report_rows(report: dict[str, Any]) -> list[dict[str, Any]] | None:
    """Every row of a push report (its rows file: key, outcome, reason), or None when it has no rows file."""
    if not report.get("rows_file"):
        return None
    with open(str(report["rows_file"]).removeprefix("file://"), encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()]


def check_no_duplicates(pair: Pair, phase: str) -> list[str]:
    problems: list[str] = []
    _, repeated = pair.contacts()
    if repeated:
        problems.append(f"{phase}: {len(repeated)} contact key(s) held by more than one contact: {repeated[:3]}")
    _, repeated_ids = pair.consent_events()
    if repeated_ids:
        problems.append(f"{phase}: event id(s) stored more than once: {repeated_ids[:3]}")
    return problems


def check_same_state(reference: Pair, chaos: Pair, phase: str) -> list[str]:
    """The chaos pair holds what the fault-free pair holds: contacts, consent users, and events per user."""
    problems: list[str] = []
    expected, _ = reference.contacts()
    actual, _ = chaos.contacts()
    for key in sorted(set(expected) | set(actual)):
        if key not in actual:
            problems.append(f"{phase}: contact {key} is missing (lost write)")
        elif key not in expected:
            problems.append(f"{phase}: contact {key} should not exist (invented write)")
        elif expected[key] != actual[key]:
            diff = {c: (expected[key][c], actual[key][c]) for c in expected[key] if expected[key][c] != actual[key][c]}
            problems.append(f"{phase}: contact {key} differs (expected, actual): {diff}")
    users_expected, users_actual = reference.consent_users(), chaos.consent_users()
    for key in sorted(set(users_expected) | set(users_actual)):
        if key not in users_actual:
            problems.append(f"{phase}: Didomi user {key} is missing")
        elif key not in users_expected:
            problems.append(f"{phase}: Didomi user {key} should not exist")
        elif users_expected[key] != users_actual[key]:
            diff = {
                c: (users_expected[key][c], users_actual[key][c])
                for c in users_expected[key]
                if users_expected[key][c] != users_actual[key][c]
            }
            problems.append(f"{phase}: Didomi user {key} differs (expected, actual): {diff}")
    events_expected, _ = reference.consent_events()
    events_actual, _ = chaos.consent_events()
    for key in sorted(set(events_expected) | set(events_actual)):
        want, got = events_expected.get(key, Counter()), events_actual.get(key, Counter())
        if want != got:
            lost, extra = want - got, got - want
            problems.append(
                f"{phase}: events of {key} differ: {sum(lost.values())} lost, {sum(extra.values())} duplicated "
                f"or invented ({list(extra)[:1] or list(lost)[:1]})"
            )
    return problems


# ---------------------------------------------------------------------------------------------------------------
# Contact Point Consent worlds (properties.target "contact_point_consent"), forward direction
# ---------------------------------------------------------------------------------------------------------------
#
# A CPC world is the same Didomi users and contacts (some with a mobile phone), a Journeys consent catalogue
# (Purposes, Topics), and consent rows Dataverse already holds: some agreeing with Didomi, some not, some on a
# case-shifted address, some for people the sync has no contact for, some written by another app. It runs on the
# chaos pair alone, three forward runs with faults on the consent table's bulk writes and queries among others:
# CPC-1 (full sync), people change their consent in Didomi, CPC-2, then CPC-3 (nothing changed: nothing written).
# After each phase has settled the invariants are checked against Didomi's own state (an oracle independent of
# the provider's mapping code). Each invariant is one ``check_cpc_*`` function listed in ``CPC_FORWARD_CHECKS``;
# the reverse direction's checks go in a list of their own beside it.

OPTED_IN, OPTED_OUT, NOT_SET = 534120001, 534120002, 534120000  # msdynmkt_value
CONTACT_POINT_TYPE_CODES = {"email": 534120000, "text": 534120001}
CONTACT_POINT_ATTRIBUTES = {"email": "emailaddress1", "text": "mobilephone"}
CPC_OUR_SOURCE = 534120003  # msdynmkt_source "Loaded"
CPC_SEEDED_SOURCE = 534120004  # "Preference Center": the rows a world starts with
CPC_OUR_REASON = "Didomi consent sync"
CPC_TABLE = "msdynmkt_contactpointconsent4s"


@dataclass(frozen=True)
class CpcTarget:
    """One mapping of a CPC world and how to read its Didomi choice from a user, independently of the provider."""

    record: str  # the mapping's id: a Purpose name, or a Topic name
    column: str  # the mapping's value (Didomi column grammar)
    purpose: str  # the Purpose record the row points to (its name as seeded)
    topic: str | None = None
    contact_point: str = "email"

    def mapping(self) -> dict[str, Any]:
        mapping: dict[str, Any] = {"id": self.record, "value": self.column}
        if self.contact_point != "email":
            mapping["contact_point"] = self.contact_point
        return mapping

    def label(self) -> str:
        """How the push's report names a (user, mapping) pair: ``<organization_user_id> <label>``."""
        return f"{self.record} ({self.contact_point})"

    def choice(self, user: dict[str, Any]) -> bool | None:
        """The user's Didomi choice for this column: true / false, or None when there is none."""
        consents = user.get("consents") or {}
        parts = self.column.split("_")
        if self.column.startswith("consents_channels_"):
            entry = _by_id(consents.get("channels"), parts[2])
            flag = (entry or {}).get("enabled")
            return flag if isinstance(flag, bool) else None
        entry = _by_id(consents.get("purposes"), parts[2]) or {}
        if "_values_" not in self.column:
            flag = entry.get("enabled")
            return flag if isinstance(flag, bool) else None
        preference, value = parts[4], parts[5]
        chosen = (entry.get("values") or {}).get(preference)
        if not isinstance(chosen, dict) or not isinstance(chosen.get("value"), str):
            return None  # no list for that preference: no choice
        return value in chosen["value"].split(",")


def _by_id(entries: Any, wanted: str) -> dict[str, Any] | None:
    return next((e for e in entries or [] if isinstance(e, dict) and e.get("id") == wanted), None)


CPC_TARGETS = (
    CpcTarget("newsletter", "consents_purposes_newsletter_enabled", "newsletter"),
    # Names resolve case-insensitively, as Dataverse compares them: the config says Marketing, the record marketing.
    CpcTarget("Marketing", "consents_purposes_marketing_enabled", "marketing"),
    CpcTarget(
        "newsletter_frequency_weekly",
        "consents_purposes_newsletter_values_frequency_weekly_enabled",
        "newsletter",
        "newsletter_frequency_weekly",
    ),
    CpcTarget(
        "newsletter_frequency_daily",
        "consents_purposes_newsletter_values_frequency_daily_enabled",
        "newsletter",
        "newsletter_frequency_daily",
    ),
    CpcTarget("email_updates", "consents_channels_email_enabled", "email_updates"),
    CpcTarget("sms_offers", "consents_channels_sms_enabled", "sms_offers", contact_point="text"),
)
CPC_CATALOGUE: dict[str, list[str]] = {  # Purpose -> its Topics, as Customer Insights - Journeys holds them
    "newsletter": ["newsletter_frequency_daily", "newsletter_frequency_weekly", "newsletter_frequency_monthly"],
    "marketing": [],
    "analytics": [],
    "email_updates": [],
    "sms_offers": [],
}


@dataclass(frozen=True)
class SeededConsent:
    """A consent row Dataverse holds before the first run (records named, resolved to ids when loaded)."""

    address: str
    contact_point: str
    purpose: str
    topic: str | None
    value: int
    by_someone_else: bool  # written by another app (a preference centre), not by the sync


def make_cpc_world(seed: int, base: WorldData) -> WorldData:
    """``base``'s users and contacts as a Contact Point Consent world: mobile phones, consent rows already held,
    and later Didomi changes that touch every kind of mapped field."""
    rng = random.Random(f"cpc-{seed}")
    contacts = [dict(c) for c in base.contacts]
    for index, contact in enumerate(contacts):
        if rng.random() < 0.5:
            contact["mobilephone"] = f"+33 6 {seed % 100:02d} {index // 100:02d} {index % 100:02d} 00"
    keyed = [str(u["organization_user_id"]) for u in base.users if u["organization_user_id"]]
    held = {str(c["emailaddress1"]).casefold(): c for c in contacts}
    seeded: list[SeededConsent] = []
    addresses = [str(c["emailaddress1"]) for c in contacts] + [k for k in keyed if k.casefold() not in held]
    for address in rng.sample(addresses, k=len(addresses) // 4):
        contact = held.get(address.casefold(), {})
        for target in rng.sample(CPC_TARGETS, k=rng.randint(1, 3)):
            point = address if target.contact_point == "email" else contact.get("mobilephone")
            if not point:
                continue
            if target.contact_point == "email" and rng.random() < 0.2:
                point = point.swapcase()  # Dataverse compares contact point values case-insensitively
            value = rng.choice((OPTED_IN, OPTED_OUT, NOT_SET))
            seeded.append(
                SeededConsent(point, target.contact_point, target.purpose, target.topic, value, rng.random() < 0.3)
            )
    later: list[tuple[str, dict[str, Any]]] = []
    for key in rng.sample(keyed, k=max(3, len(keyed) // 6)):
        consents: dict[str, Any] = {"purposes": [], "channels": []}
        if rng.random() < 0.6:
            purpose: dict[str, Any] = {"id": "newsletter", "enabled": rng.random() < 0.5}
            if rng.random() < 0.5:
                purpose["values"] = {"frequency": {"value": rng.choice(FREQUENCIES)}}
            consents["purposes"].append(purpose)
        if rng.random() < 0.4:
            consents["purposes"].append({"id": "marketing", "enabled": rng.random() < 0.5})
        for channel in ("email", "sms"):
            if rng.random() < 0.4:
                consents["channels"].append({"id": channel, "enabled": rng.random() < 0.5})
        if not consents["purposes"] and not consents["channels"]:
            consents["channels"].append({"id": "email", "enabled": rng.random() < 0.5})
        later.append((key, consents))
    return dataclasses.replace(
        base,
        contacts=contacts,
        edits=[],
        didomi_changes=later,
        unique_sources=[],
        target=CPC,
        null_values=rng.choice(("skip", "clear")),
        consent_rows=seeded,
    )


def load_cpc_catalogue(pair: Pair, world: WorldData) -> dict[str, str]:
    """Purposes, Topics and the seeded consent rows in the pair's Dataverse; returns record name -> id."""
    dataverse = pair.dataverse
    ids: dict[str, str] = {}
    for purpose, topics in CPC_CATALOGUE.items():
        ids[purpose] = dataverse.add_purpose(purpose)
        for topic in topics:
            ids[topic] = dataverse.add_topic(topic, ids[purpose])
    for someone_else in (False, True):
        rows = [
            {
                "msdynmkt_contactpointvalue": row.address,
                "msdynmkt_contactpointtype": CONTACT_POINT_TYPE_CODES[row.contact_point],
                "msdynmkt_value": row.value,
                "msdynmkt_source": CPC_SEEDED_SOURCE,
                "purpose_id": ids[row.purpose],
                "topic_id": ids[row.topic] if row.topic else None,
            }
            for row in world.consent_rows
            if row.by_someone_else == someone_else
        ]
        if rows:
            dataverse.add_consent_rows(rows, client_id=dataverse.editor.client_id if someone_else else None)
    return ids


def cpc_config(world: WorldData) -> dict[str, Any]:
    """The integration config of a CPC world (the authentication block is added by ``Pair.environment``)."""
    return {
        "type_id": "microsoft-dynamics",
        "properties": {"target": CPC, "contact_key_attribute": "emailaddress1", "null_values": world.null_values},
        "mappings": [t.mapping() for t in CPC_TARGETS],
        "upsert_mode": world.upsert_mode,
    }


CpcKey = tuple[str, int, str, str]  # (contact point value casefolded, type, purpose id, topic id or "")


def _cpc_key(value: str, contact_point: str | int, purpose_id: str, topic_id: str | None) -> CpcKey:
    code = CONTACT_POINT_TYPE_CODES[contact_point] if isinstance(contact_point, str) else contact_point
    return (value.casefold(), int(code), purpose_id.lower(), (topic_id or "").lower())


def cpc_row_key(row: dict[str, Any]) -> CpcKey:
    return _cpc_key(
        str(row.get("msdynmkt_contactpointvalue") or ""),
        int(row.get("msdynmkt_contactpointtype") or 0),
        str(row.get("_msdynmkt_purposeid_value") or ""),
        row.get("_msdynmkt_topicid_value"),
    )


@dataclass
class CpcState:
    """What the invariants read: the world, the pair's records, contacts and consent rows, and Didomi's users."""

    world: WorldData
    records: dict[str, str]
    contacts: dict[str, dict[str, Any]]  # by case-folded key
    rows: list[dict[str, Any]]
    users: list[dict[str, Any]]
    integration_user: str

    @classmethod
    def read(cls, pair: Pair, world: WorldData) -> CpcState:
        return cls(
            world=world,
            records=dict(pair.cpc_records),
            contacts={str(c.get("emailaddress1") or "").casefold(): c for c in pair.dataverse.contacts_rows()},
            rows=list(pair.dataverse.consent_rows()),
            users=list(pair.didomi.users()),
            integration_user=str(pair.dataverse.integration.user.systemuserid),
        )

    def initial_contacts(self) -> set[str]:
        return {str(c["emailaddress1"]).casefold() for c in self.world.contacts}

    def expected(self) -> tuple[dict[CpcKey, int], dict[CpcKey, str]]:
        """The rows Dataverse must hold (key -> msdynmkt_value), and for the sync's decisions the user they are for.

        Seeded rows stay as they are unless a decided Didomi choice (or NotSet under ``clear``) of a user with a
        contact (any keyed user under upsert_mode) says otherwise.
        """
        want: dict[CpcKey, int] = {}
        for row in self.world.consent_rows:
            topic = self.records[row.topic] if row.topic else None
            want[_cpc_key(row.address, row.contact_point, self.records[row.purpose], topic)] = row.value
        decided: dict[CpcKey, str] = {}
        initial = self.initial_contacts()
        for user in self.users:
            key = user.get("organization_user_id")
            if not key or (not self.world.upsert_mode and str(key).casefold() not in initial):
                continue
            contact = self.contacts.get(str(key).casefold())
            if contact is None:
                continue  # check_cpc_contacts says so
            for target in CPC_TARGETS:
                point = contact.get(CONTACT_POINT_ATTRIBUTES[target.contact_point])
                choice = target.choice(user)
                if not point or (choice is None and self.world.null_values == "skip"):
                    continue
                value = NOT_SET if choice is None else OPTED_IN if choice else OPTED_OUT
                topic = self.records[target.topic] if target.topic else None
                row_key = _cpc_key(str(point), target.contact_point, self.records[target.purpose], topic)
                want[row_key] = value
                decided[row_key] = f"{key} {target.label()}"
        return want, decided


def check_cpc_rows_match_didomi(state: CpcState, phase: str) -> list[str]:
    """Every decided choice is exactly one row with the right value; no row is lost or invented."""
    want, decided = state.expected()
    names = {v: k for k, v in state.records.items()}
    held: dict[CpcKey, list[int]] = {}
    for row in state.rows:
        held.setdefault(cpc_row_key(row), []).append(int(row.get("msdynmkt_value") or -1))
    problems: list[str] = []

    def say(key: CpcKey) -> str:
        record = names.get(key[3] or key[2], key[3] or key[2])
        return decided.get(key, f"{key[0]} {record}")

    for key, value in sorted(want.items()):
        if key not in held:
            problems.append(f"{phase}: consent row of {say(key)} is missing (lost write; want {value})")
        elif value not in held[key]:
            problems.append(f"{phase}: consent row of {say(key)} holds {held[key]}, Didomi says {value}")
    for key in sorted(set(held) - set(want)):
        problems.append(f"{phase}: consent row {say(key)} should not exist (invented write, {held[key]})")
    return problems


def check_cpc_no_duplicate_rows(state: CpcState, phase: str) -> list[str]:
    """One row per (contact point value casefolded, type, purpose, topic)."""
    counts = Counter(cpc_row_key(row) for row in state.rows)
    repeated = sorted(k for k, n in counts.items() if n > 1)
    if not repeated:
        return []
    return [f"{phase}: {len(repeated)} consent row key(s) held more than once, e.g. {repeated[:3]}"]


def check_cpc_contacts(state: CpcState, phase: str) -> list[str]:
    """Without upsert_mode no contact is created; with it every keyed Didomi user has one (and only one)."""
    keys = {str(u["organization_user_id"]).casefold() for u in state.users if u.get("organization_user_id")}
    have, initial = set(state.contacts), state.initial_contacts()
    if not state.world.upsert_mode:
        extra = sorted(have - initial)
        return [f"{phase}: contacts created with upsert_mode false: {extra[:3]}"] if extra else []
    missing = sorted(keys - have)
    if not missing:
        return []
    return [f"{phase}: {len(missing)} Didomi user(s) still without a contact under upsert_mode: {missing[:3]}"]


def check_cpc_nothing_for_users_without_contact(state: CpcState, phase: str) -> list[str]:
    """With upsert_mode false the sync writes no row for a Didomi user that has no contact."""
    if state.world.upsert_mode:
        return []
    keys = {str(u["organization_user_id"]).casefold() for u in state.users if u.get("organization_user_id")}
    strangers = keys - state.initial_contacts()
    ours = [
        r
        for r in state.rows
        if str(r.get("msdynmkt_contactpointvalue") or "").casefold() in strangers
        and str(r.get("_modifiedby_value") or "") == state.integration_user
        and str(r.get("msdynmkt_reason") or "").startswith(CPC_OUR_REASON)
    ]
    if not ours:
        return []
    return [f"{phase}: {len(ours)} row(s) written for users without a contact: {ours[0]['msdynmkt_contactpointvalue']}"]


def check_cpc_written_rows_say_where_from(state: CpcState, phase: str) -> list[str]:
    """A row the sync created carries source Loaded, its reason and the consent level of its record; a row it
    changed says why (the seeded rows, source Preference Center, are someone else's until the sync writes them)."""
    problems: list[str] = []
    for row in state.rows:
        address = row.get("msdynmkt_contactpointvalue")
        seeded = row.get("msdynmkt_source") == CPC_SEEDED_SOURCE
        if str(row.get("_createdby_value") or "") == state.integration_user and not seeded:
            level = 534120001 if row.get("_msdynmkt_topicid_value") else 534120000
            if row.get("msdynmkt_source") != CPC_OUR_SOURCE or row.get("msdynmkt_contactpointconsenttype") != level:
                problems.append(
                    f"{phase}: row {address} created with source {row.get('msdynmkt_source')}, level "
                    f"{row.get('msdynmkt_contactpointconsenttype')}"
                )
        written = str(row.get("_modifiedby_value") or "") == state.integration_user and not (
            seeded and row.get("createdon") == row.get("modifiedon")
        )
        if written and not str(row.get("msdynmkt_reason") or "").startswith(CPC_OUR_REASON):
            problems.append(f"{phase}: row {address} written by the sync without its reason")
    return problems[:5]


# The state invariants of the forward direction, each a function (CpcState, phase) -> problems. The reverse
# direction of the target gets its own list (events Didomi stores, no echo), checked after its runs.
CPC_FORWARD_CHECKS: tuple[Callable[[CpcState, str], list[str]], ...] = (
    check_cpc_rows_match_didomi,
    check_cpc_no_duplicate_rows,
    check_cpc_contacts,
    check_cpc_nothing_for_users_without_contact,
    check_cpc_written_rows_say_where_from,
)
CPC_OUTCOMES = ("created", "updated", "unchanged", "skipped", "failed")


def check_cpc_report_accounting(record: RunRecord, world: WorldData) -> list[str]:
    """Every (user, mapping) pair the push received ends in exactly one outcome of its report (every row of the
    rows file), the counts add up, and no contact is created without upsert_mode."""
    where = f"{record.phase} {record.dag_id} {record.run_id}"
    report = record.value("push_contacts") or record.value("push_contacts", "report")
    _, _, frame = record.forward_chunks()
    if report is None:
        return [f"{where}: the run succeeded without a push_contacts report"] if record.state == "success" else []
    problems: list[str] = []
    counts: dict[str, int] = {k: v for k, v in report.get("counts", {}).items() if v}
    if sum(counts.values()) != report.get("total"):
        problems.append(f"{where}: counts {counts} add up to {sum(counts.values())}, not total {report.get('total')}")
    if set(counts) - set(CPC_OUTCOMES):
        problems.append(f"{where}: outcomes other than {CPC_OUTCOMES}: {counts}")
    if not world.upsert_mode and report.get("contacts_created"):
        problems.append(f"{where}: {report.get('contacts_created')} contact(s) created with upsert_mode false")
    rows = report_rows(report) or []
    if not report.get("rows_file") and report.get("total"):
        problems.append(f"{where}: a report of {report.get('total')} row(s) without its rows file")
    if rows and Counter(r["outcome"] for r in rows) != Counter(counts):
        problems.append(f"{where}: the rows file's outcomes {Counter(r['outcome'] for r in rows)} are not {counts}")
    if frame is not None and (rows or not report.get("total")):
        # a user another chunk writes a newer row for is reported once, by its key alone
        elsewhere = Counter(str(r["key"]) for r in rows if str(r.get("reason", "")).startswith(IN_OTHER_CHUNK))
        users = [str(k) for k in frame["organization_user_id"].tolist() if k is not None]
        for key in elsewhere.elements():
            if key in users:
                users.remove(key)
        wanted = Counter(f"{u} {t.label()}" for u in users for t in CPC_TARGETS)
        listed = Counter(str(r["key"]) for r in rows) - elsewhere
        twice = sorted(k for k, n in (listed - wanted).items() if k in wanted)
        lost, strangers = sorted(set(wanted) - set(listed)), sorted(set(listed) - set(wanted))
        if lost:
            problems.append(f"{where}: {len(lost)} (user, mapping) pair(s) missing from the report: {lost[:3]}")
        if strangers:
            problems.append(f"{where}: the report has rows it was never given: {strangers[:3]}")
        if twice:
            problems.append(f"{where}: pair(s) reported more than once: {twice[:3]}")
    return problems


def check_cpc_phase_wrote_nothing(records: list[RunRecord], phase: str) -> list[str]:
    """Runs after which nothing changed in Didomi write nothing (a re-run is idempotent, even under faults)."""
    written: Counter[str] = Counter()
    for record in records:
        report = record.value("push_contacts") or record.value("push_contacts", "report") or {}
        written.update({k: v for k, v in report.get("counts", {}).items() if k in ("created", "updated") and v})
        written["contacts created"] += int(report.get("contacts_created") or 0)
    written = +written
    return [f"{phase}: nothing changed in Didomi, yet the runs wrote {dict(written)}"] if written else []


CPC_PHASES = ("cpc-forward-1", "cpc-forward-2", "cpc-forward-3")
CPC_ROUTES: tuple[tuple[str, str | None], ...] = (  # (path part, method) of the faults a CPC world draws
    (f"{CPC_TABLE}/Microsoft.Dynamics.CRM.CreateMultiple", "POST"),
    (f"{CPC_TABLE}/Microsoft.Dynamics.CRM.UpdateMultiple", "POST"),
    (CPC_TABLE, "GET"),
    (CPC_TABLE, None),
    ("$batch", "POST"),
    ("msdynmkt_purposes", "GET"),
    ("msdynmkt_topics", "GET"),
    ("/api/data/v9.2/contacts", None),
)
CPC_FAULT_KINDS = ("throttle_storm", "server_error", "lost_response", "slow", "reset", "token_expiry", "kill")


def arm_cpc_faults(rng: random.Random, pair: Pair, plan: FaultPlanForRun) -> list[str]:
    """Draw and arm 1-4 faults for one run of a CPC world, most of them on the consent table's routes."""
    armed: list[str] = []
    dataverse = pair.dataverse
    for _ in range(rng.randint(1, 4)):
        kind = rng.choices(CPC_FAULT_KINDS, weights=(3, 3, 3, 2, 1, 1, 1))[0]
        on_didomi = kind in ("server_error", "reset", "slow") and rng.random() < 0.15
        route, method = ("/v1/consents/users", "GET") if on_didomi else rng.choice(CPC_ROUTES)
        model, side = (pair.didomi, "didomi") if on_didomi else (dataverse, "dataverse")
        where = f"{side} {method or 'any'} {route}"
        if kind == "throttle_storm":
            storm = rng.randint(2, 4)
            for i in range(storm):
                model.faults.arm(
                    "status", 1, status=429, retry_after=round(0.05 * 2**i, 2), path_contains=route, method=method
                )
            armed.append(f"429 storm x{storm} on {where}")
        elif kind == "server_error":
            status = rng.choice((503, 503, 500, 502, 504))
            count = rng.randint(1, 3)
            model.faults.arm("status", count, status=status, path_contains=route, method=method)
            armed.append(f"{status} x{count} on {where}")
        elif kind == "lost_response":
            if rng.random() < 0.5:  # the emulator applies the write, then drops the connection
                write = rng.choice((*CPC_ROUTES[:2], ("$batch", "POST")))[0]
                dataverse.faults.arm("lost_response", 1, path_contains=write, method="POST")
                armed.append(f"answer of the next POST {write} lost after it landed")
            else:
                plan.lose_response_after_writes = rng.randint(1, 3)
                armed.append(f"response of write #{plan.lose_response_after_writes} lost after it landed")
        elif kind == "slow":
            model.faults.arm("delay", 1, delay_s=CLIENT_TIMEOUT_S + 0.5, path_contains=route, method=method)
            armed.append(f"response slower than the client timeout on {where}")
        elif kind == "reset":
            model.faults.arm("reset", rng.randint(1, 2), path_contains=route, method=method)
            armed.append(f"connection reset on {where}")
        elif kind == "token_expiry":
            dataverse.expire_tokens()
            plan.kinds["token_expiry"] += 1
            plan.expire_tokens_after_s = rng.uniform(0.1, 1.5)
            armed.append(f"tokens expired before the run, and again after {plan.expire_tokens_after_s:.2f}s")
        elif kind == "kill":
            plan.kill_after_writes = rng.randint(1, 3)
            armed.append(f"push task killed after write #{plan.kill_after_writes}")
    return armed


# ---------------------------------------------------------------------------------------------------------------
# The campaign
# ---------------------------------------------------------------------------------------------------------------


PHASES = (("forward-1", FORWARD), ("reverse-2", REVERSE), ("forward-3", FORWARD), ("reverse-4", REVERSE))


class Campaign:
    """Two emulator pairs (reference and chaos) and both DAGs, reused by every scenario of a process."""

    def __init__(self, state_dir: Path, users: int = 150, target: str | None = None) -> None:
        self.users = users
        self.target = target  # None: the seed decides (make_world), else every world has this target
        self.reference = Pair("reference", state_dir)
        self.chaos = Pair("chaos", state_dir, client_timeout_s=CLIENT_TIMEOUT_S)
        self.dags = load_dags()

    def close(self) -> None:
        self.reference.stop()
        self.chaos.stop()

    @contextlib.contextmanager
    def use(self, pair: Pair, world: WorldData, *, load: bool = True) -> Iterator[Pair]:
        """Load ``world`` into ``pair`` (unless ``load`` is false) and point the DAGs at it; the environment is
        restored afterwards and every fault disarmed. For tests that drive the DAGs step by step."""
        saved = dict(os.environ)
        if load:
            pair.load(world)
        try:
            self._configure(pair, world)
            yield pair
        finally:
            os.environ.clear()
            os.environ.update(saved)
            pair.disarm()

    def run_scenario(self, seed: int, *, verbose: bool = False, log: Callable[[str], None] = print) -> ScenarioResult:
        started = time.monotonic()
        result = ScenarioResult(seed)
        try:
            world = make_world(seed, self.users, self.target)
        except Exception as err:
            result.violations.append(f"scenario crashed building its data: {type(err).__name__}: {err}")
            return result
        result.settings = {
            "target": world.target,
            "users": self.users,
            "upsert_mode": world.upsert_mode,
            "alternate_key": world.alternate_key,
            "bulk_messages": world.bulk_messages,
            "batch_size": world.batch_size,
            **({"chunk_rows": world.chunk_rows} if world.chunk_rows else {}),
        }
        rng = random.Random(f"faults-{seed}")
        if world.target == CPC:
            result.settings["null_values"] = world.null_values
            return self.run_cpc_scenario(world, rng, result, started, verbose=verbose, log=log)
        for pair in (self.reference, self.chaos):
            pair.load(world)
        saved = dict(os.environ)
        try:
            for phase, dag_id in PHASES:
                if phase == "reverse-2":
                    for pair in (self.reference, self.chaos):
                        pair.person_edits(world.edits)
                    time.sleep(0.02)  # Didomi's clock has milliseconds: keep "later" unambiguous
                    for pair in (self.reference, self.chaos):
                        pair.didomi_changes(world.didomi_changes)
                    time.sleep(0.02)
                if phase != "reverse-4":
                    # The fault-free pair runs phases 1-3; after phase 4 the chaos pair must still equal its state
                    # after phase 3 (our own writes never come back), which is what its phase 4 would leave.
                    self._configure(self.reference, world)
                    reference_runs = self._run_phase(
                        self.reference, world, phase, dag_id, None, result, verbose=verbose, log=log
                    )
                    for record in reference_runs:
                        if record.state != "success":
                            result.violations.append(
                                f"{phase}: fault-free run ended {record.state} ({record.task_states})"
                            )
                self._configure(self.chaos, world)
                runs = self._run_phase(self.chaos, world, phase, dag_id, rng, result, verbose=verbose, log=log)
                for record in runs:
                    result.violations += check_report_accounting(record, world.upsert_mode)
                    note_chunks(result, record)
                result.violations += check_no_duplicates(self.chaos, phase)
                result.violations += check_same_state(self.reference, self.chaos, phase)
                last = runs[-1].value("push_contacts" if dag_id == FORWARD else "push_consents") or {}
                if phase == "reverse-4" and last.get("counts", {}).get("sent"):
                    result.violations.append(f"{phase}: {last['counts']['sent']} event(s) echoed back to Didomi")
        except Exception as err:  # a crash of the campaign itself is a violation too: never a silent pass
            result.violations.append(f"scenario crashed: {type(err).__name__}: {err}\n{traceback.format_exc()}")
        finally:
            os.environ.clear()
            os.environ.update(saved)
            self.chaos.disarm()
        result.faults += self.chaos.fired()
        result.seconds = time.monotonic() - started
        return result

    def run_cpc_scenario(
        self,
        world: WorldData,
        rng: random.Random,
        result: ScenarioResult,
        started: float,
        *,
        verbose: bool = False,
        log: Callable[[str], None] = print,
    ) -> ScenarioResult:
        """A Contact Point Consent world on the chaos pair: three forward runs under faults, each phase settled
        (clears and re-runs, follow-up runs) and then checked against Didomi's state (``CPC_FORWARD_CHECKS``)."""
        pair = self.chaos
        saved = dict(os.environ)
        try:
            pair.load(world)
            for phase in CPC_PHASES:
                if phase == "cpc-forward-2":
                    pair.didomi_changes(world.didomi_changes)
                    time.sleep(0.02)
                self._configure(pair, world)
                runs = self._run_phase(pair, world, phase, FORWARD, rng, result, verbose=verbose, log=log)
                for record in runs:
                    result.violations += check_cpc_report_accounting(record, world)
                    note_chunks(result, record)
                    report = record.value("push_contacts") or record.value("push_contacts", "report") or {}
                    result.stats.update({k: v for k, v in report.get("counts", {}).items() if v})
                if phase == "cpc-forward-3":
                    result.violations += check_cpc_phase_wrote_nothing(runs, phase)
                state = CpcState.read(pair, world)
                for check in CPC_FORWARD_CHECKS:
                    result.violations += check(state, phase)
            result.stats["consent_rows"] = len(pair.dataverse.consent_rows())
        except Exception as err:  # a crash of the campaign itself is a violation too: never a silent pass
            result.violations.append(f"scenario crashed: {type(err).__name__}: {err}\n{traceback.format_exc()}")
        finally:
            os.environ.clear()
            os.environ.update(saved)
            pair.disarm()
        result.faults += pair.fired()
        result.seconds = time.monotonic() - started
        return result

    def _configure(self, pair: Pair, world: WorldData) -> None:
        os.environ.update(pair.environment(world))
        from airflow_provider_didomi_dynamics.hooks.dataverse import forget_bulk_support

        forget_bulk_support()
        set_push_batch_size(self.dags[FORWARD], world.batch_size)

    def _run_phase(
        self,
        pair: Pair,
        world: WorldData,
        phase: str,
        dag_id: str,
        rng: random.Random | None,
        result: ScenarioResult,
        *,
        verbose: bool = False,
        log: Callable[[str], None] = print,
    ) -> list[RunRecord]:
        """One scheduled run (with faults when ``rng``), its clears and re-runs, and follow-up runs if rows failed."""
        dag = self.dags[dag_id]
        conf = {"full_sync": True}
        records: list[RunRecord] = []
        for attempt in range(1 + MAX_FOLLOW_UP_RUNS):
            plan = FaultPlanForRun()
            if rng is not None and attempt == 0:
                armed = arm_faults(rng, pair, world, phase, plan)
                if verbose:
                    log(f"  seed {result.seed} {phase}: {'; '.join(armed)}")
            elif rng is not None and attempt == MAX_FOLLOW_UP_RUNS:
                pair.disarm()  # the last follow-up runs on a healthy system: everything must converge
            run_started = time.monotonic()
            with client_side_faults(pair, plan):
                # The fault-free pair skips preflight (it checks the setup and writes nothing): less CPU per scenario.
                outcome = run_once(dag, conf, skip_preflight=rng is None)
            if verbose:
                log(f"    {pair.name} {phase} run {attempt}: {outcome.state} in {time.monotonic() - run_started:.1f}s")
            result.runs += 1
            record = RunRecord.of(phase, dag_id, outcome)
            result.faults += plan.kinds
            for clear in range(MAX_CLEAR_AND_RERUN + 1):
                if record.state == "success":
                    break
                if clear == MAX_CLEAR_AND_RERUN:
                    pair.disarm()
                run_started = time.monotonic()
                outcome = clear_and_rerun(dag, record.run_id)
                if verbose:
                    log(f"    {pair.name} {phase} cleared: {outcome.state} in {time.monotonic() - run_started:.1f}s")
                result.runs += 1
                record = RunRecord.of(phase, dag_id, outcome, clear + 1)
            records.append(record)
            push = record.value("push_contacts" if dag_id == FORWARD else "push_consents") or {}
            if any("failed validation" in str(row.get("reason")) for row in push.get("failed", [])):
                result.faults["bad_row"] += 1
            if record.state == "success" and not push.get("counts", {}).get("failed"):
                break
            if rng is not None and attempt == 0:
                pair.dataverse.clear_validation_failures()  # someone fixed the refused value
        else:
            pair.disarm()
            last = records[-1]
            push = last.value("push_contacts" if dag_id == FORWARD else "push_consents") or {}
            result.violations.append(
                f"{phase}: still not converged after {MAX_FOLLOW_UP_RUNS} follow-up runs on a healthy system: run "
                f"{last.state} ({last.task_states}), failed rows {push.get('failed')}"
            )
        pair.disarm()  # faults that never found their route do not leak into the next phase
        return records


# ---------------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def quiet(path: Path) -> Iterator[None]:
    """Send everything Airflow prints (file descriptors 1 and 2) to ``path`` while the scenarios run."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with path.open("ab") as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def _worker(seeds: list[int], users: int, workdir: str, verbose: bool, target: str | None) -> list[dict[str, Any]]:
    """Run some scenarios in this process: its own AIRFLOW_HOME, emulator pairs and DAGs."""
    from airflow_provider_didomi_dynamics.local.testing import prepare_airflow_home

    base = Path(workdir)
    prepare_airflow_home(base / "airflow")
    results = []
    messages: list[str] = []
    with quiet(base / "airflow-output.log"):
        campaign = Campaign(base / "emulators", users=users, target=target)
        try:
            for seed in seeds:
                outcome = campaign.run_scenario(seed, verbose=verbose, log=messages.append)
                entry = outcome.as_dict()
                entry["log"] = list(messages)
                messages.clear()
                results.append(entry)
        finally:
            campaign.close()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenarios", type=int, default=50, help="how many scenarios (default 50)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the first scenario; scenario i uses seed+i")
    parser.add_argument("--users", type=int, default=150, help="Didomi users per scenario (default 150)")
    parser.add_argument("--workers", type=int, default=4, help="processes running scenarios side by side")
    parser.add_argument("--verbose", action="store_true", help="print the faults armed for every run")
    parser.add_argument(
        "--target",
        choices=("mixed", CONTACT, CPC),
        default="mixed",
        help="properties.target of the worlds: mixed (default; every fourth seed, seed %% 4 == 3, is a Contact "
        "Point Consent world), or every world the same",
    )
    args = parser.parse_args(argv)
    target = None if args.target == "mixed" else args.target
    started = time.monotonic()
    seeds = [args.seed + i for i in range(args.scenarios)]
    workers = max(1, min(args.workers, len(seeds)))
    shares = [seeds[i::workers] for i in range(workers)]
    print(
        f"chaos campaign: {len(seeds)} scenario(s) from seed {args.seed}, {args.users} users each, {workers} worker(s)"
    )
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="chaos-") as tmp:
        if workers == 1:
            results = _worker(shares[0], args.users, str(Path(tmp) / "w0"), args.verbose, target)
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                futures = [
                    pool.submit(_worker, share, args.users, str(Path(tmp) / f"w{i}"), args.verbose, target)
                    for i, share in enumerate(shares)
                ]
                for future in futures:
                    results.extend(future.result())
    results.sort(key=lambda r: r["seed"])
    faults: Counter[str] = Counter()
    violations = 0
    by_target: Counter[str] = Counter()
    for entry in results:
        faults.update(entry["faults"])
        violations += len(entry["violations"])
        settings = entry["settings"]
        by_target[settings.get("target", CONTACT)] += 1
        fired = sum(entry["faults"].values())
        kinds = " ".join(f"{kind}x{count}" for kind, count in sorted(entry["faults"].items()))
        cpc = ""
        if settings.get("target") == CPC:
            stats = " ".join(f"{k}={v}" for k, v in sorted(entry.get("stats", {}).items()))
            cpc = f"target={CPC}, null_values={settings['null_values']}, {stats}, "
        print(
            f"scenario {entry['seed']:>5}: {fired:>3} fault(s), {entry['runs']:>2} DAG run(s), "
            f"{len(entry['violations'])} violation(s), {entry['seconds']:5.1f}s  "
            f"({cpc}upsert_mode={settings.get('upsert_mode')}, alternate_key={settings.get('alternate_key')}, "
            f"bulk_messages={settings.get('bulk_messages')}, batch_size={settings.get('batch_size')}, "
            f"chunks={entry.get('stats', {}).get('max_chunks', 1)})  {kinds}"
        )
        for line in entry.get("log", []):
            print(line)
        for violation in entry["violations"]:
            print(f"    VIOLATION {violation}")
    print(f"\nscenarios run: {len(results)} ({', '.join(f'{n} {t}' for t, n in sorted(by_target.items()))})")
    print("faults injected by kind:")
    for kind, count in sorted(faults.items()):
        print(f"  {kind:<16} {count}")
    print(f"invariant violations: {violations}")
    print(f"seconds: {time.monotonic() - started:.0f}")
    print(
        json.dumps(
            {
                "scenarios": len(results),
                "by_target": dict(by_target),
                "chunked": sum(1 for e in results if e.get("stats", {}).get("max_chunks", 1) > 1),
                "faults": sum(faults.values()),
                "violations": violations,
            }
        )
    )
    return 0 if violations == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
