"""[event-driven] under a real scheduler and triggerer (``airflow standalone``): dynamics_to_didomi_live, scheduled on
the Asset DataverseChangesTrigger watches, takes a person's edits to Didomi within seconds, exactly once each.

Checked in order on one deployment: our own write fires nothing; a person's edit arrives and a deleted contact is
reported skipped, never sent; a burst of 200 edits in 10 s arrives once each; an expired delta token falls back to a
window read; a triggerer restart (edits made while it is down) resumes from the stored token and loses and repeats
nothing; the hourly DAG then finds nothing to send.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import psutil
import requests
from airflow_rest import LocalAirflow

from airflow_provider_didomi_dynamics.local.demo import editor_hook, emulator_hook

LIVE = "dynamics_to_didomi_live"
REVERSE = "dynamics_to_didomi"
POLL_S = 2  # DIDOMI_DYNAMICS_LIVE_POLL_SECONDS of the deployment
ARRIVAL_TIMEOUT_S = 180
BURST = 200


class LiveDeployment:
    """The deployment's emulators as the test reaches them: over HTTPS, the admin API and the Web API."""

    def __init__(self, local: LocalAirflow) -> None:
        self.local = local
        self.endpoints: dict[str, Any] = json.loads((local.workdir / "emulators" / "endpoints.json").read_text())
        self.person = editor_hook(self.endpoints)
        self.edited: Counter[str] = Counter()  # organization_user_id (the contact's e-mail) -> edits made
        self.latencies: list[float] = []

    def admin(self, method: str, url_key: str, path: str, body: Any = None) -> Any:
        answer = requests.request(
            method,
            f"{self.endpoints[url_key]}/_emulator{path}",
            json=body,
            verify=self.endpoints["ca_file"],
            timeout=30,
        )
        answer.raise_for_status()
        return answer.json() if answer.content else None

    def contacts(self) -> list[dict[str, Any]]:
        rows = self.admin("GET", "dataverse_url", "/contacts")["value"]
        return sorted((r for r in rows if r.get("emailaddress1")), key=lambda r: r["emailaddress1"])

    def events(self) -> list[dict[str, Any]]:
        return list(self.admin("GET", "didomi_url", "/dump")["events"])

    def contact_gets(self) -> int:
        """GET requests on contacts the Dataverse emulator answered: the trigger's polls while no run works."""
        rows = self.admin("GET", "dataverse_url", "/requests")["value"]
        return sum(int(r["count"]) for r in rows if r["method"] == "GET" and r["route"] == "contacts")

    def wait_for_polls(self, count: int = 2, timeout: float = 120) -> None:
        """Until the trigger has asked for changes ``count`` more times (its baseline token is then stored)."""
        start = self.contact_gets()
        until(lambda: self.contact_gets() >= start + count, timeout, "the trigger never polled Dataverse")

    def edit(self, rows: Iterable[dict[str, Any]], pause_s: float = 0.0) -> float:
        """A person flips donotbulkemail on each row (one Web API write each); the time of the last edit."""
        at = time.monotonic()
        for row in rows:
            new_value = not bool(row["donotbulkemail"])
            self.person.update_multiple("contact", [{"contactid": row["contactid"], "donotbulkemail": new_value}])
            row["donotbulkemail"] = new_value
            self.edited[str(row["emailaddress1"])] += 1
            at = time.monotonic()
            if pause_s:
                time.sleep(pause_s)
        return at

    def wait_for_events(self, events_before: int, keys: Iterable[str], edited_at: float) -> None:
        """Until each of ``keys`` has one more Didomi event than before; records each arrival's latency."""
        wanted = set(keys)
        arrived: dict[str, float] = {}

        def done() -> bool:
            for event in self.events()[events_before:]:
                key = str(event["user"]["organization_user_id"])
                if key in wanted and key not in arrived:
                    arrived[key] = time.monotonic() - edited_at
            return len(arrived) == len(wanted)

        until(done, ARRIVAL_TIMEOUT_S, lambda: f"events arrived for {len(arrived)} of {len(wanted)} edited users")
        self.latencies.extend(arrived.values())

    def live_runs(self) -> list[dict[str, Any]]:
        return list(self.local.api("GET", f"/dags/{LIVE}/dagRuns", params={"limit": 100})["dag_runs"])

    def settle(self) -> list[dict[str, Any]]:
        """Wait for every live run to end (and for the trigger to poll twice after that); every run succeeded."""

        def ended() -> bool:
            return all(run["state"] in ("success", "failed") for run in self.live_runs())

        until(ended, ARRIVAL_TIMEOUT_S, "a live run never ended")
        time.sleep(2 * POLL_S)  # a change the last run left behind would fire now
        until(ended, ARRIVAL_TIMEOUT_S, "a live run never ended")
        runs = self.live_runs()
        failed = [run["dag_run_id"] for run in runs if run["state"] != "success"]
        assert not failed, f"live runs failed: {failed}: {[self.local.task_instances(LIVE, r) for r in failed]}"
        return runs

    def assert_each_edit_sent_once(self, events_before: int) -> None:
        sent = Counter(str(e["user"]["organization_user_id"]) for e in self.events()[events_before:])
        assert sent == self.edited, {k: (sent[k], self.edited[k]) for k in set(sent) | set(self.edited)}


def until(condition: Callable[[], bool], timeout: float, what: str | Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(what() if callable(what) else what)
        time.sleep(0.5)


def triggerer_of(local: LocalAirflow) -> psutil.Process:
    """The ``airflow triggerer`` process airflow standalone started."""
    for child in psutil.Process(local.process.pid).children(recursive=True):
        try:
            if "triggerer" in child.cmdline() and child.name().startswith(("python", "airflow")):
                return child
        except psutil.Error:
            continue
    raise AssertionError("airflow standalone runs no triggerer")


def restart_triggerer(local: LocalAirflow, while_down: Callable[[], None]) -> subprocess.Popen[bytes]:
    """Stop the triggerer as a deployment does (SIGTERM), run ``while_down``, start a new one (the caller stops it
    with :func:`stop_triggerer`)."""
    old = triggerer_of(local)
    env, cwd = old.environ(), old.cwd()
    log_file = local.workdir / "airflow-standalone.log"
    old.send_signal(signal.SIGTERM)
    # It leaves its trigger loop within seconds; its log server can keep the process up for longer.
    until(lambda: not old.is_running() or "Exited trigger loop" in log_file.read_text(), 60, "the triggerer hangs")
    for process in [*old.children(recursive=True), old]:
        with contextlib.suppress(psutil.Error):
            process.kill()
    while_down()
    log = open(local.workdir / "triggerer-restarted.log", "ab")  # noqa: SIM115 - lives as long as the process
    return subprocess.Popen(
        [sys.executable, "-m", "airflow", "triggerer"],
        env=env,
        cwd=cwd,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # the deployment's own session cannot be joined from here: stopped by the caller
    )


def stop_triggerer(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


def check_live_dag(local: LocalAirflow, report: dict[str, Any]) -> None:
    """Everything [event-driven] item 7 asks of a real scheduler with the triggerer, on ``local``."""
    live = LiveDeployment(local)
    local.wait_for_dag(LIVE)
    local.api("PATCH", f"/dags/{LIVE}", json={"is_paused": False})  # the triggerer starts watching now
    live.wait_for_polls()
    events_before = len(live.events())
    contacts = [c for c in live.contacts() if c.get("donotbulkemail") is not None]
    ours, first, deleted, burst, expired, down = (
        contacts[0],
        contacts[1],
        contacts[2],
        contacts[3 : 3 + BURST],
        contacts[3 + BURST : 5 + BURST],
        contacts[5 + BURST : 10 + BURST],
    )

    # --- our own write fires nothing
    known = {r["dag_run_id"] for r in live.live_runs()}
    runs_before = len(known)
    own = emulator_hook(live.endpoints)  # the sync's own application user
    own.update_multiple("contact", [{"contactid": ours["contactid"], "donotbulkemail": not ours["donotbulkemail"]}])
    live.wait_for_polls(2)
    assert len(live.live_runs()) == runs_before, "our own write started a live run"

    # --- a person's edit reaches Didomi; a contact a person deletes is reported skipped, never sent
    edited_at = live.edit([first])
    live.person.request("DELETE", f"contacts({deleted['contactid']})")
    live.wait_for_events(events_before, [first["emailaddress1"]], edited_at)
    report["first_edit_s"] = round(live.latencies[-1], 1)
    runs = live.settle()
    reports = [local.xcom(LIVE, r["dag_run_id"], "push_consents") for r in runs if r["dag_run_id"] not in known]
    skipped = [row for pushed in reports for row in pushed["skipped"]]
    assert skipped == [
        {"key": f"contact {deleted['contactid']}", "outcome": "skipped", "reason": "deleted in Dynamics"}
    ], skipped
    assert sum(pushed["counts"]["sent"] for pushed in reports) == 1

    # --- a burst of 200 edits in 10 s: every one arrives, once
    runs_before = len(live.live_runs())
    burst_started = time.monotonic()
    edited_at = live.edit(burst, pause_s=10 / BURST)
    live.wait_for_events(events_before, [c["emailaddress1"] for c in burst], burst_started)
    report["burst_runs"] = len(live.settle()) - runs_before
    report["burst_last_arrival_s"] = round(max(live.latencies[-BURST:]) - (edited_at - burst_started), 1)
    live.assert_each_edit_sent_once(events_before)

    # --- an expired delta token: a window read bridges the gap (then a new token)
    live.admin("POST", "dataverse_url", "/change-tracking", {"delta_token_ttl_s": 0.5})
    time.sleep(POLL_S)
    edited_at = live.edit(expired)
    live.wait_for_events(events_before, [c["emailaddress1"] for c in expired], edited_at)
    live.admin("POST", "dataverse_url", "/change-tracking", {"delta_token_ttl_s": 7 * 24 * 3600})
    logged = (local.workdir / "airflow-standalone.log").read_text()
    assert "the delta token of contacts expired" in logged, "the trigger never fell back to a window read"
    live.settle()
    live.assert_each_edit_sent_once(events_before)

    # --- the triggerer restarts while a person edits: nothing lost, nothing twice, delta polls again
    restarted = restart_triggerer(local, lambda: live.edit(down))
    try:
        edited_at = time.monotonic()
        live.wait_for_events(events_before, [c["emailaddress1"] for c in down], edited_at)
        report["after_restart_s"] = round(max(live.latencies[-len(down) :]), 1)
        live.settle()
        live.assert_each_edit_sent_once(events_before)
        resumed = (local.workdir / "triggerer-restarted.log").read_text()
        assert "resuming from the delta state" in resumed, "the new triggerer did not resume from the stored token"
    finally:
        stop_triggerer(restarted)

    # --- the hourly DAG, the safety net, sees the same edits and sends nothing again
    hourly = local.trigger_now(REVERSE)
    assert local.wait_for_run(REVERSE, hourly) == "success", local.task_instances(REVERSE, hourly)
    assert local.xcom(REVERSE, hourly, "push_consents")["counts"].get("sent", 0) == 0
    live.assert_each_edit_sent_once(events_before)
    report["edits"] = sum(live.edited.values())
    print(f"live: {report}")


__all__ = ["POLL_S", "check_live_dag"]
