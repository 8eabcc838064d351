"""Benchmark: a forward full sync of many Didomi users through the real, chunked and mapped ``didomi_to_dynamics`` DAG.

Each measured run is a real deployment in miniature, so that every task runs in its own process and its memory can
be read: ``airflow standalone`` (scheduler, API server, DAG processor, triggerer; LocalExecutor, SQLite) started in
its own process group, the run triggered through the REST API with ``full_sync``, and every process of Airflow's tree
sampled with psutil every ``--poll-s`` (RSS, and the kernel's high-water mark ``VmHWM``, which also catches a peak
between two samples). A task's process is named by its title (``airflow worker -- <task instance id>``) and the task
instance table of the metadata database.

Both emulators run in processes of their own (not in Airflow's tree; their RSS is shown apart: they are not the
product, but they bound the size this machine reaches). The Didomi emulator holds ``--users`` demo users (``seed_demo``:
every 100th one has no organization_user_id); the Dataverse emulator runs with ``benchmarks/push.py``'s latency and
service-protection model (imported from there, so the capacity fraction is comparable), half of the users with an
organization_user_id already contacts (seeded by our application user, last modified in 2020), ``upsert_mode``
true and the demo mapping (``local/config/demo.json``).

Figures: wall seconds (trigger to run end), users/s, per-task peak RSS, the sum over Airflow's tree (max over
samples), XCom bytes the run stored (the ``xcom`` table), the capacity fraction over the push phase (rows written /
(modelled capacity x seconds from the first ``push_chunks`` start to the last end)) and, read back from the emulator,
lost rows (a Didomi user with an organization_user_id without its contact, or with a value other than the mapping's)
and duplicated ones (one organization_user_id, case-folded, in two contacts).

The baseline, in the same process: the same DAG with ONE chunk (``DIDOMI_DYNAMICS_CHUNK_ROWS`` >= users) for
``--baseline-users``; its peak task RSS against the chunked run's shows whether memory grows with users.

    python benchmarks/scale.py [--users 100000] [--baseline-users 50000] [--chunk-rows 50000] [--pool-slots 2]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

# push.py's emulator settings, imported rather than copied so both benchmarks model the same Dataverse. (Importing
# it sets AIRFLOW_HOME only when unset: set ours first.)
_HOME = Path(tempfile.mkdtemp(prefix="bench-scale-"))
os.environ["AIRFLOW_HOME"] = str(_HOME / "airflow")

import psutil  # noqa: E402
import requests  # noqa: E402
from push import BATCH_SIZE, LATENCY_MS, PROTECTION, SCALE, Admin  # noqa: E402
from push import start_emulator as start_dataverse  # noqa: E402

from airflow_provider_didomi_dynamics.emulators.dataverse.models.throttling import (  # noqa: E402
    theoretical_max_records_per_s,
)

DAG_ID = "didomi_to_dynamics"
DOP_HINT = PROTECTION.dop_hint  # writers per push task (the org's x-ms-dop-hint)
TASK_TITLE = re.compile(r"airflow worker -- ([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\b")
STARTUP_TIMEOUT_S = 300.0
SEEDED_AT = "2020-01-01T00:00:00Z"  # existing contacts: last changed long before any Didomi change
MB = 1024 * 1024


# -- emulators -------------------------------------------------------------------------------------------------------


def start_didomi(state_dir: Path, users: int) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    """The Didomi emulator in its own process with ``users`` demo users; returns once it serves."""
    command = [
        sys.executable,
        "-m",
        "airflow_provider_didomi_dynamics.emulators.didomi",
        "--state-dir",
        str(state_dir),
        "--demo-users",
        str(users),
    ]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL)
    endpoints_file = state_dir / "endpoints.json"
    deadline = time.monotonic() + 900
    while not endpoints_file.exists():
        if process.poll() is not None:
            raise RuntimeError(f"the Didomi emulator exited with {process.returncode}")
        if time.monotonic() > deadline:
            process.kill()
            raise RuntimeError("the Didomi emulator did not start within 900 s")
        time.sleep(0.2)
    return process, json.loads(endpoints_file.read_text())


def organization_user_ids(users: int) -> list[str]:
    """The ids ``seed_demo`` gives (every 100th user has none)."""
    return [f"user{i:06d}@example.com" for i in range(users) if i % 100 != 99]


def seed_dataverse(admin: Admin, ids: list[str]) -> int:
    """The demo's custom attributes and key, and every other user as an existing contact; returns how many."""
    admin.call("POST", "/attributes", {"logical_name": "new_newsletterfrequency", "attribute_type": "String"})
    admin.call("POST", "/attributes", {"logical_name": "new_consentsource", "attribute_type": "String"})
    admin.call("POST", "/keys", {"name": "new_emailkey", "attributes": ["emailaddress1"]})
    existing = [
        {"emailaddress1": key, "firstname": "Existing", "modifiedon": SEEDED_AT, "createdon": SEEDED_AT}
        for key in ids[::2]
    ]
    admin.add_contacts(existing)
    return len(existing)


def demo_config(dataverse: dict[str, Any]) -> dict[str, Any]:
    from airflow_provider_didomi_dynamics.local import DEMO_CONFIG

    config: dict[str, Any] = json.loads(DEMO_CONFIG.read_text())
    config["authentication"] = {
        "client_id": dataverse["client_id"],
        "client_secret": dataverse["client_secret"],
        "tenant_id": dataverse["tenant_id"],
        "instance": dataverse["dataverse_url"],
    }
    config["upsert_mode"] = True
    return config


# -- what the run should have written, from Didomi's own API (not through the provider) ----------------------------


def didomi_users(didomi: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every Didomi user, page by page, from Didomi's own API (not through the provider)."""
    verify = didomi["ca_file"]
    token = requests.post(
        f"{didomi['didomi_url']}/v1/sessions",
        json={"type": "api-key", "key": didomi["didomi_key"], "secret": didomi["didomi_secret"]},
        verify=verify,
        timeout=60,
    ).json()["access_token"]
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token}"
    cursor = None
    while True:
        params = {"organization_id": didomi["organization_id"], "$limit": "100"}
        if cursor:
            params["$cursor"] = cursor
        answer = session.get(f"{didomi['didomi_url']}/v1/consents/users", params=params, verify=verify, timeout=60)
        answer.raise_for_status()
        body = answer.json()
        yield from body["data"]
        cursor = body.get("cursor")
        if not cursor:
            return


def _negate(value: Any) -> Any:
    return None if value is None else not value


def mapped(user: dict[str, Any]) -> dict[str, Any]:
    """``local/config/demo.json``, written out by hand: invert, plain copies, ``null_values`` skip."""
    consents = user.get("consents") or {}
    purposes = {p["id"]: p for p in consents.get("purposes") or []}
    channels = {c["id"]: c.get("enabled") for c in consents.get("channels") or []}
    newsletter = purposes.get("newsletter") or {}
    frequency = ((newsletter.get("values") or {}).get("frequency") or {}).get("value")
    return {
        "donotbulkemail": _negate(newsletter.get("enabled")),
        "followemail": (purposes.get("marketing") or {}).get("enabled"),
        "donotemail": _negate(channels.get("email")),
        "donotphone": _negate(channels.get("phone")),
        "new_newsletterfrequency": frequency or None,
        "new_consentsource": (user.get("metadata") or {}).get("source"),
    }


MAPPED = (
    "donotbulkemail",
    "followemail",
    "donotemail",
    "donotphone",
    "new_newsletterfrequency",
    "new_consentsource",
)


def dataverse_contacts(dataverse: dict[str, Any]) -> list[tuple[Any, ...]]:
    """Every contact's key and mapped columns, read page by page through the Web API; a 429 waits its Retry-After.

    Not the admin dump: a million full rows in one answer take gigabytes on both sides, and the connection broke
    120 MB into a 860 MB dump. The emulator sorts every contact for each page, so at 1M users this read takes
    longer than the sync (tens of minutes): the emulator's limit, not the provider's.
    """
    verify = dataverse["ca_file"]
    token = requests.post(
        f"{dataverse['authority_host']}/{dataverse['tenant_id']}/oauth2/v2.0/token",
        data={
            "grant_type": "client_credentials",
            "client_id": dataverse["client_id"],
            "client_secret": dataverse["client_secret"],
            "scope": f"{dataverse['dataverse_url']}/.default",
        },
        verify=verify,
        timeout=60,
    ).json()["access_token"]
    session = requests.Session()
    session.headers.update({"Authorization": f"Bearer {token}", "Prefer": "odata.maxpagesize=5000"})
    url: str | None = f"{dataverse['dataverse_url']}/api/data/v9.2/contacts?$select=emailaddress1,{','.join(MAPPED)}"
    rows: list[tuple[Any, ...]] = []
    while url:
        answer = session.get(url, verify=verify, timeout=120)
        if answer.status_code == 429:
            time.sleep(float(answer.headers.get("Retry-After", "1")))
            continue
        answer.raise_for_status()
        body = answer.json()
        rows.extend((r.get("emailaddress1"), *(r.get(a) for a in MAPPED)) for r in body["value"])
        url = body.get("@odata.nextLink")
    return rows


def read_back(dataverse: dict[str, Any], didomi: dict[str, Any]) -> dict[str, Any]:
    """Lost (missing, or a value other than the mapping's) and duplicated contacts, over every Didomi user with an
    organization_user_id; the contacts are held as tuples, the users streamed, so a million fit in little memory."""
    rows = dataverse_contacts(dataverse)
    per_key = Counter(str(r[0] or "").casefold() for r in rows)
    by_key = {str(r[0] or "").casefold(): r[1:] for r in rows}
    del rows
    missing = wrong = expected = duplicated = 0
    examples: list[str] = []
    for user in didomi_users(didomi):
        key = str(user.get("organization_user_id") or "").casefold()
        if not key:
            continue
        expected += 1
        duplicated += max(0, per_key.get(key, 0) - 1)
        found = by_key.get(key)
        if found is None:
            missing += 1
            continue
        row = dict(zip(MAPPED, found, strict=True))
        bad = {a: (row.get(a), v) for a, v in mapped(user).items() if v is not None and row.get(a) != v}
        if bad:
            wrong += 1
            if len(examples) < 3:
                examples.append(f"{key}: {bad}")
    return {
        "expected": expected,
        "contacts": len(by_key),
        "missing": missing,
        "wrong_values": wrong,
        "lost": missing + wrong,
        "duplicated": duplicated,
        "examples": examples,
    }


# -- Airflow ---------------------------------------------------------------------------------------------------------


def free_port() -> int:
    """A free port away from airflow standalone's own log servers (8793, 8794)."""
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if port not in (8793, 8794):
            return port


@dataclass
class Sampled:
    """One process seen while sampling: its title and the most memory it held."""

    pid: int
    title: str
    first: float
    last: float
    peak_rss: int = 0


@dataclass
class Sampler:
    """Every ``interval`` seconds: RSS and VmHWM of each process under ``root``, their sum, and the emulators'."""

    root: int
    emulators: dict[str, int]
    interval: float = 0.2
    seen: dict[tuple[int, float], Sampled] = field(default_factory=dict)
    peak_tree: int = 0
    peak_tasks: int = 0
    emulator_peak: dict[str, int] = field(default_factory=dict)
    samples: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Sampler:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        try:
            root = psutil.Process(self.root)
            processes = [root, *root.children(recursive=True)]
        except psutil.Error:
            return
        total = tasks = 0
        now = time.monotonic()
        for process in processes:
            try:
                with process.oneshot():
                    rss = process.memory_info().rss
                    created = process.create_time()
                    title = " ".join(process.cmdline())
                peak = max(rss, high_water_mark(process.pid))
            except psutil.Error:
                continue
            total += rss
            entry = self.seen.get((process.pid, created))
            if entry is None:
                entry = self.seen[(process.pid, created)] = Sampled(process.pid, title, now, now)
            entry.title, entry.last, entry.peak_rss = title, now, max(entry.peak_rss, peak)
            if TASK_TITLE.search(title):
                tasks += rss
        self.peak_tree = max(self.peak_tree, total)
        self.peak_tasks = max(self.peak_tasks, tasks)
        for name, pid in self.emulators.items():
            with contextlib.suppress(psutil.Error):
                rss = max(psutil.Process(pid).memory_info().rss, high_water_mark(pid))
                self.emulator_peak[name] = max(self.emulator_peak.get(name, 0), rss)
        self.samples += 1


def high_water_mark(pid: int) -> int:
    """The kernel's peak RSS of a process (``VmHWM``), in bytes; 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class Standalone:
    """``airflow standalone`` for one measured run: started in its own process group, reached through the REST API."""

    def __init__(self, home: Path, port: int, env: dict[str, str], log_path: Path) -> None:
        self.home, self.port, self.base = home, port, f"http://localhost:{port}"
        self.session = requests.Session()
        self.log = open(log_path, "ab")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "airflow", "standalone"],
            env=env,
            cwd=home.parent,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self) -> None:
        from airflow_provider_didomi_dynamics.local.standalone import admin_password, wait_until_ready

        problem = wait_until_ready(self.process, self.port, self.home, threading.Event(), STARTUP_TIMEOUT_S)  # type: ignore[arg-type]
        if problem:
            raise RuntimeError(problem)
        answer = self.session.post(
            f"{self.base}/auth/token", json={"username": "admin", "password": admin_password(self.home)}, timeout=30
        )
        answer.raise_for_status()
        self.session.headers["Authorization"] = f"Bearer {answer.json()['access_token']}"
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while self.session.get(f"{self.base}/api/v2/dags/{DAG_ID}", timeout=30).status_code != 200:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{DAG_ID} never appeared in the API")
            time.sleep(1)

    def api(self, method: str, path: str, **kwargs: Any) -> Any:
        answer = self.session.request(method, f"{self.base}/api/v2{path}", timeout=60, **kwargs)
        if not answer.ok:
            raise RuntimeError(f"{method} {path}: {answer.status_code} {answer.text[:500]}")
        return answer.json() if answer.content else None

    def trigger(self) -> str:
        now = dt.datetime.now(dt.timezone.utc).isoformat()
        body = {"logical_date": now, "conf": {"full_sync": True}}
        return str(self.api("POST", f"/dags/{DAG_ID}/dagRuns", json=body)["dag_run_id"])

    def wait_for_run(self, run_id: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = str(self.api("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}")["state"])
            if state in ("success", "failed"):
                return state
            time.sleep(0.5)
        raise RuntimeError(f"run {run_id} did not finish within {timeout:.0f} s")

    def xcom(self, run_id: str, task_id: str) -> Any:
        path = f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/return_value"
        value = self.api("GET", path, params={"deserialize": "true"})["value"]
        return json.loads(value) if isinstance(value, str) else value

    def stop(self) -> None:
        from airflow_provider_didomi_dynamics.local.standalone import stop_process_group

        stop_process_group(self.process)  # type: ignore[arg-type]
        self.log.close()


def task_instances(db: Path, run_id: str) -> list[dict[str, Any]]:
    with contextlib.closing(sqlite3.connect(db)) as connection:
        connection.row_factory = sqlite3.Row
        rows = connection.execute(
            "SELECT id, task_id, map_index, state, start_date, end_date, try_number FROM task_instance "
            "WHERE dag_id = ? AND run_id = ?",
            (DAG_ID, run_id),
        ).fetchall()
    return [dict(r) for r in rows]


def xcom_bytes(db: Path, run_id: str) -> tuple[int, dict[str, int]]:
    """Bytes of every XCom value the run stored, in all and per task."""
    with contextlib.closing(sqlite3.connect(db)) as connection:
        rows = connection.execute(
            "SELECT task_id, SUM(LENGTH(CAST(value AS BLOB))) FROM xcom WHERE dag_id = ? AND run_id = ? "
            "GROUP BY task_id",
            (DAG_ID, run_id),
        ).fetchall()
    per_task = {str(task): int(size or 0) for task, size in rows}
    return sum(per_task.values()), per_task


def parse_time(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)


# -- one measured run ------------------------------------------------------------------------------------------------


def measure(users: int, chunk_rows: int, pool_slots: int, workdir: Path, label: str) -> dict[str, Any]:
    """Emulators, Airflow, one full-sync run, the figures; everything stopped before it returns."""
    print(f"\n== {label}: {users:,} users, chunks of {chunk_rows:,} rows, {pool_slots} pool slots", flush=True)
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    didomi_process, didomi = start_didomi(workdir / "didomi", users)
    dataverse_process, dataverse = start_dataverse(workdir / "dataverse")
    standalone: Standalone | None = None
    try:
        ids = organization_user_ids(users)
        admin = Admin(dataverse)
        existing = seed_dataverse(admin, ids)
        print(
            f"emulators: Didomi {users:,} users, Dataverse {existing:,} existing contacts "
            f"({time.monotonic() - started:.0f} s)",
            flush=True,
        )
        bundle = workdir / "ca-bundle.pem"  # one trust file for both connections: each emulator has its own CA
        bundle.write_text(Path(didomi["ca_file"]).read_text() + Path(dataverse["ca_file"]).read_text())
        endpoints = {**didomi, **dataverse, "ca_file": str(bundle)}

        home = Path(os.environ["AIRFLOW_HOME"])
        from airflow_provider_didomi_dynamics.local.standalone import standalone_env, write_metadata
        from airflow_provider_didomi_dynamics.local.testing import prepare_airflow_home

        prepare_airflow_home(home)
        write_metadata(endpoints, demo_config(dataverse), pool_slots=pool_slots)
        port = free_port()
        env = standalone_env(port)
        env.update(
            {
                "DIDOMI_DYNAMICS_CHUNK_ROWS": str(chunk_rows),
                "DIDOMI_DYNAMICS_RETRIES": "0",  # a failure shows in the figures instead of hiding in a retry
                # no scheduled run beside the measured one (unpausing would start the last hour's at once)
                "DIDOMI_DYNAMICS_SCHEDULE_DIDOMI_TO_DYNAMICS": "0 0 1 1 *",
                "AIRFLOW__CORE__PARALLELISM": str(max(4, pool_slots + 2)),
            }
        )
        standalone = Standalone(home, port, env, workdir / "airflow-standalone.log")
        standalone.wait_ready()
        standalone.api("PATCH", f"/dags/{DAG_ID}", json={"is_paused": False})
        print(f"airflow standalone ready on port {port} ({time.monotonic() - started:.0f} s)", flush=True)

        sampler = Sampler(
            standalone.process.pid, {"didomi": didomi_process.pid, "dataverse": dataverse_process.pid}
        ).start()
        admin.call("DELETE", "/requests")
        run_started = time.monotonic()
        run_id = standalone.trigger()
        state = standalone.wait_for_run(run_id, timeout=max(900.0, users / 200))
        seconds = time.monotonic() - run_started
        sampler.stop()
        report = standalone.xcom(run_id, "push_contacts") if state == "success" else {}
        server_requests = admin.call("GET", "/requests")
        print(f"run {state} in {seconds:.1f} s; checking what Dataverse holds ...", flush=True)
        run = figures(users, chunk_rows, pool_slots, home, run_id, state, seconds, report, sampler, server_requests)
        show(run)  # before the read-back: an emulator dying there must not take the run's figures with it
        try:
            run.update(read_back(dataverse, didomi))
        except (requests.RequestException, OSError, ValueError) as err:
            run.update({"lost": None, "duplicated": None, "read_back_error": f"{type(err).__name__}: {err}"[:300]})
        show_read_back(run)
        return run
    finally:
        if standalone is not None:
            standalone.stop()
        for process in (didomi_process, dataverse_process):
            process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=30)


def figures(
    users: int,
    chunk_rows: int,
    pool_slots: int,
    home: Path,
    run_id: str,
    state: str,
    seconds: float,
    report: dict[str, Any],
    sampler: Sampler,
    server_requests: dict[str, Any],
) -> dict[str, Any]:
    db = home / "airflow.db"
    tis = task_instances(db, run_id)
    by_uuid = {str(ti["id"]).replace("-", ""): ti for ti in tis}
    per_task: dict[str, int] = {}
    for entry in sampler.seen.values():
        match = TASK_TITLE.search(entry.title)
        if match is None:
            continue
        ti = by_uuid.get(match.group(1).replace("-", ""))
        name = "?" if ti is None else ti["task_id"] + (f"[{ti['map_index']}]" if ti["map_index"] >= 0 else "")
        per_task[name] = max(per_task.get(name, 0), entry.peak_rss)
    pushes = [ti for ti in tis if ti["task_id"] == "push_chunks"]
    starts = [t for t in (parse_time(ti["start_date"]) for ti in pushes) if t]
    ends = [t for t in (parse_time(ti["end_date"]) for ti in pushes) if t]
    push_seconds = (max(ends) - min(starts)).total_seconds() if starts and ends else 0.0
    windows = sorted(
        (round((a - min(starts)).total_seconds(), 1), round((b - min(starts)).total_seconds(), 1))
        for a, b in ((parse_time(ti["start_date"]), parse_time(ti["end_date"])) for ti in pushes)
        if a and b
    )
    counts = report.get("counts") or {}
    written = int(counts.get("created", 0)) + int(counts.get("updated", 0))
    concurrency = min(pool_slots, len(pushes) or 1) * DOP_HINT
    capacity = theoretical_max_records_per_s(
        PROTECTION, records_per_request=BATCH_SIZE, concurrency=concurrency, latency_s=LATENCY_MS / 1000
    )
    xcom_total, xcom_per_task = xcom_bytes(db, run_id)
    others = [e for e in sampler.seen.values() if not TASK_TITLE.search(e.title)]
    return {
        "users": users,
        "chunk_rows": chunk_rows,
        "chunks": len(pushes),
        "state": state,
        "seconds": round(seconds, 1),
        "users_per_s": round(users / seconds, 1),
        "push_seconds": round(push_seconds, 1),
        "push_windows": windows,
        "rows_written": written,
        "counts": counts,
        "throttled_429": report.get("throttled_429"),
        "http_requests": report.get("http_requests"),
        "server_requests": server_requests.get("total"),
        "capacity_rows_per_s": round(capacity, 1),
        "capacity_fraction": round(written / (capacity * push_seconds), 3) if push_seconds else 0.0,
        "peak_task_rss_mb": round(max(per_task.values(), default=0) / MB, 1),
        "task_rss_mb": {k: round(v / MB, 1) for k, v in sorted(per_task.items(), key=_task_order)},
        "peak_tasks_sum_mb": round(sampler.peak_tasks / MB, 1),
        "peak_run_rss_mb": round(sampler.peak_tree / MB, 1),
        "airflow_processes_mb": {
            _short(e.title): round(e.peak_rss / MB, 1) for e in sorted(others, key=lambda e: -e.peak_rss)[:8]
        },
        "emulator_rss_mb": {k: round(v / MB, 1) for k, v in sampler.emulator_peak.items()},
        "xcom_bytes": xcom_total,
        "xcom_bytes_per_task": xcom_per_task,
        "samples": sampler.samples,
        "task_states": dict(Counter(str(ti["state"]) for ti in tis)),
    }


def _task_order(item: tuple[str, int]) -> tuple[int, str, int]:
    order = ["preflight", "pull_consents", "apply_mapping", "push_chunks", "push_contacts"]
    name, _, index = item[0].partition("[")
    return (order.index(name) if name in order else 99, name, int(index.rstrip("]") or -1))


def _short(title: str) -> str:
    return re.sub(r"\s+", " ", title)[:70]


def show(run: dict[str, Any]) -> None:
    print(
        f"run {run['state']}: {run['users']:,} users in {run['seconds']} s = {run['users_per_s']:,} users/s, "
        f"{run['chunks']} chunk(s) of <= {run['chunk_rows']:,}; tasks {run['task_states']}"
    )
    print(f"  outcomes {run['counts']}; {run['throttled_429']} x 429; {run['http_requests']} requests")
    print(
        f"  push phase {run['push_seconds']} s: {run['rows_written']:,} rows written at "
        f"{run['rows_written'] / max(run['push_seconds'], 1e-9):,.0f} rows/s = {run['capacity_fraction']:.0%} of "
        f"the modelled {run['capacity_rows_per_s']:,.0f} rows/s"
    )
    print(
        "  push tasks (start-end s after the first push started): "
        + ", ".join(f"{a}-{b}" for a, b in run["push_windows"])
    )
    tasks = run["task_rss_mb"]
    biggest = sorted(tasks.items(), key=lambda kv: -kv[1])[:6]
    print(f"  peak task RSS {run['peak_task_rss_mb']} MB; largest: " + ", ".join(f"{k} {v}" for k, v in biggest))
    by_name: dict[str, list[float]] = {}
    for name, mb in tasks.items():
        by_name.setdefault(name.partition("[")[0], []).append(mb)
    print("  per task (max over map indexes): " + ", ".join(f"{k} {max(v)}" for k, v in by_name.items()))
    print(
        f"  whole run (Airflow's tree, summed per sample, max): {run['peak_run_rss_mb']} MB; task processes "
        f"together at most {run['peak_tasks_sum_mb']} MB"
    )
    print(f"  Airflow's own processes: {run['airflow_processes_mb']}")
    print(f"  emulators (not the product): {run['emulator_rss_mb']} MB")
    print(f"  XCom stored for the run: {run['xcom_bytes']:,} bytes {run['xcom_bytes_per_task']}")


def show_read_back(run: dict[str, Any]) -> None:
    if run.get("read_back_error"):
        print(f"  read back FAILED ({run['read_back_error']}): lost / duplicated unknown")
        return
    print(
        f"  read back: {run['expected']:,} Didomi users with an organization_user_id, {run['contacts']:,} contacts: "
        f"{run['missing']} missing, {run['wrong_values']} with other values, {run['duplicated']} duplicated "
        f"{run['examples'] or ''}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--baseline-users", type=int, default=50_000)
    parser.add_argument("--chunk-rows", type=int, default=50_000)
    parser.add_argument("--pool-slots", type=int, default=2, help="dataverse_api / didomi_api pool slots")
    parser.add_argument("--no-baseline", action="store_true", help="skip the one-chunk baseline run")
    parser.add_argument("--keep", action="store_true", help=f"keep the work folder ({_HOME})")
    args = parser.parse_args()
    print(
        f"Dataverse emulator as benchmarks/push.py: limits / {SCALE} on the time axis -> {PROTECTION.max_requests} "
        f"requests and {PROTECTION.max_execution_ms:,.0f} ms per {PROTECTION.window_s:g} s, latency {LATENCY_MS:g} "
        f"ms, x-ms-dop-hint {DOP_HINT}; batch size {BATCH_SIZE}"
    )
    try:
        baseline = None
        if not args.no_baseline:
            baseline = measure(
                args.baseline_users, args.baseline_users, args.pool_slots, _HOME / "baseline", "baseline, one chunk"
            )
        run = measure(args.users, args.chunk_rows, args.pool_slots, _HOME / "chunked", "chunked")
    finally:
        if args.keep:
            print(f"work folder kept: {_HOME}")
        else:
            shutil.rmtree(_HOME, ignore_errors=True)

    result = {k: run[k] for k in ("users", "seconds", "users_per_s", "capacity_fraction", "peak_task_rss_mb")}
    result.update({k: run[k] for k in ("xcom_bytes", "lost", "duplicated", "chunks", "peak_run_rss_mb")})
    result["emulator_rss_mb"] = run["emulator_rss_mb"]
    if baseline is not None:
        ratio = run["peak_task_rss_mb"] / max(baseline["peak_task_rss_mb"], 1e-9)
        users_ratio = run["users"] / baseline["users"]
        print(
            f"\nbaseline: one chunk of {baseline['users']:,} users, peak task RSS {baseline['peak_task_rss_mb']} MB; "
            f"chunked: {run['users']:,} users ({users_ratio:g}x), peak task RSS {run['peak_task_rss_mb']} MB "
            f"({ratio:.2f}x)"
        )
        result.update(
            {
                "baseline_users": baseline["users"],
                "baseline_peak_task_rss_mb": baseline["peak_task_rss_mb"],
                "task_rss_ratio": round(ratio, 2),
                "baseline_seconds": baseline["seconds"],
            }
        )
    targets = {
        "peak task RSS <= 600 MB": run["peak_task_rss_mb"] <= 600,
        "capacity fraction >= 0.85": run["capacity_fraction"] >= 0.85,
        "XCom <= 1 MB": run["xcom_bytes"] <= 1_000_000,
        "0 lost, 0 duplicated": run["lost"] == 0 and run["duplicated"] == 0,  # None: the read-back failed
    }
    print(
        "targets (issue #14, for 1M users): "
        + ", ".join(f"{k}: {'met' if v else 'MISSED'}" for k, v in targets.items())
    )
    print(json.dumps(result))
    return 0 if run["state"] == "success" else 1


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the finally blocks stop Airflow and the emulators
    sys.exit(main())
