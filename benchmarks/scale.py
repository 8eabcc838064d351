"""Benchmark: a forward full sync of many Didomi users through the real, chunked and mapped ``didomi_to_dynamics`` DAG.

Both emulators run in their own processes: Didomi seeded with ``--users`` demo users (its rate limit off), Dataverse
with the same service-protection model, latency and batch size as ``benchmarks/push.py`` and every other user as an
existing contact (the rest are created: ``upsert_mode`` true). The DAG runs through ``dag.test()`` in this process,
task after task, with the shipped chunk size (``--chunk-rows``, default 50,000).

Memory per task: before each task the kernel's peak-RSS counter of this process is reset (``/proc/self/clear_refs``
5) and read when the task ends (``VmHWM``), so each figure is the peak while that task ran. It includes what this
process already held (Airflow, the DAG, what Python kept from earlier tasks of the run; each run has its own
interpreter), so a task in its own worker process uses less; the growth over the task's start is printed too.

Baseline, in the same process run: the same DAG with one chunk holding every user (``--baseline-users``, default
20,000): the memory of an unchunked run, which grows with users. The ratio of the peak task RSS per user shows
what chunking buys.

    python benchmarks/scale.py [--users 100000] [--baseline-users 20000] [--chunk-rows 50000]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

BENCHMARKS = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCHMARKS))

import didomi_pull  # noqa: E402  # the Didomi emulator as didomi_pull.py starts it
import push as push_bench  # noqa: E402  # the Dataverse emulator and service-protection model of push.py

from airflow_provider_didomi_dynamics.emulators.runner import connection_env  # noqa: E402

CONFIG = {
    "type_id": "microsoft-dynamics",
    "properties": {"contact_key_attribute": "emailaddress1", "null_values": "skip"},
    "mappings": [
        {"id": "donotbulkemail", "value": "consents_purposes_newsletter_enabled", "transform": "invert"},
        {"id": "followemail", "value": "consents_purposes_marketing_enabled"},
        {"id": "donotemail", "value": "consents_channels_email_enabled", "transform": "invert"},
        {"id": "donotphone", "value": "consents_channels_phone_enabled", "transform": "invert"},
    ],
    "upsert_mode": True,
}


def status_mb(field: str, pid: int | str = "self") -> float:
    """A memory line of ``/proc/<pid>/status`` (``VmHWM``: peak RSS, ``VmRSS``: now) in MB; 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def reset_peak() -> None:
    with open("/proc/self/clear_refs", "w", encoding="ascii") as refs:
        refs.write("5")


class TaskMemory:
    """Peak RSS of each task instance, from the task's start to its end (callbacks on every task)."""

    def __init__(self) -> None:
        self.started: dict[tuple[str, int], float] = {}
        self.peaks: dict[tuple[str, int], tuple[float, float]] = {}

    def on_start(self, context: Any) -> None:
        ti = context["ti"]
        reset_peak()
        self.started[(ti.task_id, ti.map_index)] = status_mb("VmRSS")

    def on_end(self, context: Any) -> None:
        ti = context["ti"]
        key = (ti.task_id, ti.map_index)
        self.peaks[key] = (status_mb("VmHWM"), self.started.get(key, 0.0))

    def attach(self, dag: Any) -> None:
        for task in dag.tasks:
            task.on_execute_callback = [self.on_start]
            task.on_success_callback = [self.on_end]
            task.on_failure_callback = [self.on_end]

    def by_task(self) -> dict[str, dict[str, float]]:
        grouped: dict[str, dict[str, float]] = {}
        for (task_id, _), (peak, start) in self.peaks.items():
            entry = grouped.setdefault(task_id, {"peak_mb": 0.0, "growth_mb": 0.0, "instances": 0})
            entry["peak_mb"] = max(entry["peak_mb"], round(peak, 1))
            entry["growth_mb"] = max(entry["growth_mb"], round(peak - start, 1))
            entry["instances"] += 1
        return grouped


def xcom_bytes(dag_id: str, run_id: str) -> int:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import func, select

    with create_session() as session:
        total = session.scalar(
            select(func.sum(func.length(XComModel.value))).where(XComModel.dag_id == dag_id, XComModel.run_id == run_id)
        )
    return int(total or 0)


def push_phase_seconds(dag_id: str, run_id: str) -> tuple[float, float]:
    """The chunk pushes' time: summed over the task instances (dag.test runs them one after another, with the next
    chunk's mapping in between), and from the first one's start to the last one's end."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.execute(
            select(TaskInstance.start_date, TaskInstance.end_date).where(
                TaskInstance.dag_id == dag_id, TaskInstance.run_id == run_id, TaskInstance.task_id == "push_chunks"
            )
        ).all()
    busy = sum((r[1] - r[0]).total_seconds() for r in rows if r[0] and r[1])
    starts = [r[0] for r in rows if r[0]]
    ends = [r[1] for r in rows if r[1]]
    return busy, (max(ends) - min(starts)).total_seconds() if starts and ends else 0.0


def read_back(admin: push_bench.Admin, keys: list[str]) -> tuple[int, int]:
    """Lost (a Didomi user without a contact) and duplicated (a key on more than one contact) rows."""
    rows = admin.call("GET", "/contacts")["value"]
    held = Counter(str(r.get("emailaddress1") or "").casefold() for r in rows)
    lost = sum(1 for k in keys if held[k.casefold()] == 0)
    duplicated = sum(n - 1 for k, n in held.items() if k and n > 1)
    return lost, duplicated


def one_run(workdir: Path, users: int, chunk_rows: int, label: str) -> dict[str, Any]:
    """Start both emulators for ``users``, run the forward DAG once, measure, stop them."""
    state = workdir / label
    state.mkdir(parents=True)
    t0 = time.monotonic()
    didomi, didomi_endpoints = didomi_pull.start_emulator(state / "didomi", users, latency_ms=0.0)
    dataverse, dataverse_endpoints = push_bench.start_emulator(state / "dataverse")
    try:
        admin = push_bench.Admin(dataverse_endpoints)
        admin.call("POST", "/keys", {"name": "new_emailkey", "attributes": ["emailaddress1"]})
        keys = [f"user{i:06d}@example.com" for i in range(users) if i % 100 != 99]  # seed_demo: these are anonymous
        admin.add_contacts([{"emailaddress1": k, "lastname": "Existing"} for k in keys[::2]])
        seeded = time.monotonic() - t0
        os.environ.update(connection_env(didomi_endpoints))  # each emulator has its own CA
        os.environ.update(connection_env(dataverse_endpoints))
        config = {
            **CONFIG,
            "authentication": {
                "client_id": dataverse_endpoints["client_id"],
                "client_secret": dataverse_endpoints["client_secret"],
                "tenant_id": dataverse_endpoints["tenant_id"],
                "instance": dataverse_endpoints["dataverse_url"],
            },
        }
        os.environ["AIRFLOW_VAR_DIDOMI_DYNAMICS_CONFIG"] = json.dumps(config)
        os.environ["DIDOMI_DYNAMICS_CHUNK_ROWS"] = str(chunk_rows)

        from airflow_provider_didomi_dynamics.local.testing import load_dag, run_dag

        dag = load_dag("didomi_to_dynamics")
        memory = TaskMemory()
        memory.attach(dag)
        started = time.monotonic()
        result = run_dag(dag, run_conf={"full_sync": True}, mark_success_pattern="preflight")
        seconds = time.monotonic() - started
        if result.state != "success":
            raise SystemExit(f"{label}: the run ended {result.state}: {result.task_states}")
        report = result.value("push_contacts")
        counts = report["counts"]
        written = counts["created"] + counts["updated"]
        push_s, push_span_s = push_phase_seconds("didomi_to_dynamics", result.run_id)
        capacity = push_bench.modelled_capacity(push_bench.PROTECTION.dop_hint or 1)
        lost, duplicated = read_back(admin, keys)
        tasks = memory.by_task()
        return {
            "users": users,
            "chunks": report.get("chunks", 1),
            "seconds": round(seconds, 1),
            "seed_seconds": round(seeded, 1),
            "users_per_s": round(users / seconds, 1),
            "push_seconds": round(push_s, 1),
            "push_span_seconds": round(push_span_s, 1),
            "written": written,
            "counts": {k: v for k, v in counts.items() if v},
            "capacity_rows_per_s": round(capacity, 1),
            "capacity_fraction": round(written / push_s / capacity, 3) if push_s else 0.0,
            "throttled_429": int(report.get("throttled_429") or 0),
            "peak_task_rss_mb": max(t["peak_mb"] for t in tasks.values()),
            "tasks": tasks,
            "run_peak_rss_mb": round(max(t["peak_mb"] for t in tasks.values()), 1),
            "emulator_rss_mb": {
                "didomi": round(status_mb("VmHWM", didomi.pid), 1),
                "dataverse": round(status_mb("VmHWM", dataverse.pid), 1),
            },
            "xcom_bytes": xcom_bytes("didomi_to_dynamics", result.run_id),
            "lost": lost,
            "duplicated": duplicated,
        }
    finally:
        for process in (didomi, dataverse):
            process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=30)
            if process.poll() is None:  # a million users take a while to let go of: never leave one running
                process.kill()
                process.wait(timeout=30)


def show(figures: dict[str, Any]) -> None:
    print(
        f"{figures['users']:,} users in {figures['chunks']} chunk(s): {figures['seconds']} s "
        f"({figures['users_per_s']:,} users/s; emulators seeded in {figures['seed_seconds']} s)"
    )
    print(
        f"  push phase {figures['push_seconds']} s of chunk pushes ({figures['push_span_seconds']} s first start to "
        f"last end), {figures['written']:,} rows written {figures['counts']}: "
        f"{figures['capacity_fraction']:.0%} of the modelled {figures['capacity_rows_per_s']:,} rows/s, "
        f"{figures['throttled_429']} x 429"
    )
    for task_id, entry in figures["tasks"].items():
        print(
            f"  {task_id:<15} x{int(entry['instances']):<3} peak RSS {entry['peak_mb']:7.1f} MB "
            f"(+{entry['growth_mb']:.1f} MB over its start)"
        )
    print(
        f"  XCom {figures['xcom_bytes']:,} bytes; emulators' peak RSS {figures['emulator_rss_mb']} MB; "
        f"lost {figures['lost']}, duplicated {figures['duplicated']}"
    )


def run_isolated(users: int, chunk_rows: int, label: str) -> dict[str, Any]:
    """:func:`one_run` in a fresh interpreter: each run's tasks start from a process that held no earlier run (nor
    this script's read-back of a million contacts)."""
    done = subprocess.run(
        [sys.executable, __file__, "--one", label, str(users), str(chunk_rows)],
        capture_output=True,
        text=True,
        timeout=7200,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"{label} run failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return dict(json.loads(lines[-1].removeprefix("RESULT ")))


def run_one(label: str, users: int, chunk_rows: int) -> int:
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-scale-{label}-"))
    try:
        from airflow_provider_didomi_dynamics.local.testing import prepare_airflow_home

        prepare_airflow_home(workdir / "airflow")
        os.environ["DIDOMI_DYNAMICS_RETRIES"] = "0"
        os.environ["DIDOMI_DYNAMICS_PROGRESS_SECONDS"] = "60"
        figures = one_run(workdir, users, chunk_rows, label)
        print("RESULT " + json.dumps(figures), flush=True)
        return 0
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--baseline-users", type=int, default=20_000)
    parser.add_argument("--chunk-rows", type=int, default=50_000)
    parser.add_argument("--one", nargs=3, metavar="ARG", help=argparse.SUPPRESS)  # label users chunk_rows
    args = parser.parse_args()
    if args.one:
        return run_one(args.one[0], int(args.one[1]), int(args.one[2]))
    baseline = run_isolated(args.baseline_users, max(args.baseline_users, 1), "baseline")
    print("baseline: one chunk holding every user (an unchunked run)")
    show(baseline)
    chunked = run_isolated(args.users, args.chunk_rows, "chunked")
    print(f"chunked: {args.chunk_rows:,} users per chunk")
    show(chunked)
    grown = chunked["peak_task_rss_mb"] / baseline["peak_task_rss_mb"]
    print(
        f"peak task RSS: {chunked['peak_task_rss_mb']} MB for {args.users:,} users "
        f"in {chunked['chunks']} chunks vs "
        f"{baseline['peak_task_rss_mb']} MB for {args.baseline_users:,} in one chunk "
        f"({grown:.2f}x for {args.users / args.baseline_users:.0f}x the users)"
    )
    targets = {
        "peak_task_rss_mb <= 600": chunked["peak_task_rss_mb"] <= 600,
        "capacity_fraction >= 0.85": chunked["capacity_fraction"] >= 0.85,
        "xcom_bytes <= 1 MB": chunked["xcom_bytes"] <= 1_000_000,
        "lost == 0 and duplicated == 0": chunked["lost"] == 0 and chunked["duplicated"] == 0,
    }
    print("targets: " + ", ".join(f"{name}: {'met' if ok else 'NOT met'}" for name, ok in targets.items()))
    line = {
        key: chunked[key]
        for key in (
            "users",
            "seconds",
            "users_per_s",
            "capacity_fraction",
            "peak_task_rss_mb",
            "xcom_bytes",
            "lost",
            "duplicated",
        )
    }
    line.update(
        chunks=chunked["chunks"],
        throttled_429=chunked["throttled_429"],
        baseline_users=baseline["users"],
        baseline_peak_task_rss_mb=baseline["peak_task_rss_mb"],
        rss_ratio=round(grown, 2),
        emulator_rss_mb=chunked["emulator_rss_mb"],
    )
    print(json.dumps(line))
    return 0


if __name__ == "__main__":
    sys.exit(main())
