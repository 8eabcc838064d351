"""Pull and flatten 100k Didomi consent users: the provider's path against a naive loop, on the same emulator data.

The emulator runs in its own process (so it does not share a GIL with the client) and each measured pull runs in a
fresh child process, so the peak RSS of one path is not inflated by the other. The provider path is
``DidomiPullConsentsOperator(full_sync=True).execute()`` (DidomiHook: pooled HTTPS, prefetch of the next page;
UserFrameBuilder: columns per page). The baseline is what one writes without the provider: ``requests.get`` per
page, ``response.json()``, one flat dict per user, ``pd.DataFrame(rows)`` at the end.

Usage: python benchmarks/didomi_pull.py [--users 100000] [--latency-ms 0]
Ends with one JSON line: {"users_per_s", "baseline_users_per_s", "ratio", "peak_rss_mb"}.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def start_emulator(state_dir: Path, users: int, latency_ms: float) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    """The emulator in a subprocess, seeded with ``users`` demo users; returns once endpoints.json is written."""
    command = [
        sys.executable,
        "-m",
        "airflow_provider_didomi_dynamics.emulators.didomi",
        "--state-dir",
        str(state_dir),
        "--demo-users",
        str(users),
        "--latency-ms",
        str(latency_ms),
        "--no-rate-limit",
    ]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL)
    endpoints_file = state_dir / "endpoints.json"
    deadline = time.monotonic() + 300
    while not endpoints_file.exists():
        if process.poll() is not None:
            raise RuntimeError(f"the emulator exited with {process.returncode}")
        if time.monotonic() > deadline:
            process.kill()
            raise RuntimeError("the emulator did not start within 300 s")
        time.sleep(0.1)
    return process, json.loads(endpoints_file.read_text())


# -- the two measured paths (each run in a child process) ------------------------------------------------------------


def run_provider(endpoints: dict[str, Any]) -> dict[str, Any]:
    """The operator path, as a task would run it (connection from AIRFLOW_CONN_DIDOMI_DEFAULT)."""
    from airflow_provider_didomi_dynamics.emulators.runner import connection_env

    os.environ["AIRFLOW_CONN_DIDOMI_DEFAULT"] = connection_env(endpoints)["AIRFLOW_CONN_DIDOMI_DEFAULT"]
    from airflow_provider_didomi_dynamics.operators.didomi import DidomiPullConsentsOperator

    operator = DidomiPullConsentsOperator(task_id="pull_consents", full_sync=True)
    started = time.perf_counter()
    frame = operator.execute({})  # type: ignore[arg-type]
    seconds = time.perf_counter() - started
    return {"users": len(frame), "columns": frame.shape[1], "seconds": seconds, "peak_rss_mb": peak_rss_mb()}


def flatten_naively(user: dict[str, Any]) -> dict[str, Any]:
    """The same columns as the mapping engine, one dict per user."""
    row: dict[str, Any] = {
        "organization_user_id": user.get("organization_user_id"),
        "user_id": user.get("id"),
        "created_at": user.get("created_at"),
        "updated_at": user.get("updated_at"),
        "country": user.get("country"),
    }
    for key, value in (user.get("metadata") or {}).items():
        row[f"metadata_{key}"] = value
    consents = user.get("consents") or {}
    for purpose in consents.get("purposes") or []:
        base = f"consents_purposes_{purpose['id']}"
        row[f"{base}_enabled"] = purpose.get("enabled")
        row[f"{base}_enabled_li"] = purpose.get("enabled_li")
        for preference, chosen in (purpose.get("values") or {}).items():
            text = chosen.get("value") or ""
            row[f"{base}_values_{preference}"] = text
            for value in text.split(","):
                if value:
                    row[f"{base}_values_{preference}_{value}_enabled"] = True
    for channel in consents.get("channels") or []:
        row[f"consents_channels_{channel['id']}_enabled"] = channel.get("enabled")
    return row


def run_baseline(endpoints: dict[str, Any]) -> dict[str, Any]:
    import pandas as pd
    import requests

    url = endpoints["didomi_url"]
    verify = endpoints["ca_file"]
    organization_id = endpoints["organization_id"]
    started = time.perf_counter()
    token = requests.post(
        f"{url}/v1/sessions",
        json={"type": "api-key", "key": endpoints["didomi_key"], "secret": endpoints["didomi_secret"]},
        verify=verify,
        timeout=60,
    ).json()["access_token"]
    rows: list[dict[str, Any]] = []
    cursor = None
    while True:
        params = {"organization_id": organization_id}
        if cursor:
            params["$cursor"] = cursor
        response = requests.get(
            f"{url}/v1/consents/users",
            params=params,
            headers={"Authorization": f"Bearer {token}"},
            verify=verify,
            timeout=60,
        )
        response.raise_for_status()
        body = response.json()
        rows.extend(flatten_naively(user) for user in body["data"])
        cursor = body.get("cursor")
        if not cursor:
            break
    frame = pd.DataFrame(rows)
    seconds = time.perf_counter() - started
    return {"users": len(frame), "columns": frame.shape[1], "seconds": seconds, "peak_rss_mb": peak_rss_mb()}


def measure(phase: str, endpoints: dict[str, Any]) -> dict[str, Any]:
    """Run one path in a fresh interpreter and read its figures back."""
    completed = subprocess.run(
        [sys.executable, __file__, "--phase", phase, "--endpoints", json.dumps(endpoints)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"{phase} run failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--phase", choices=("provider", "baseline"), help=argparse.SUPPRESS)
    parser.add_argument("--endpoints", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.phase:
        # Child mode: Airflow's settings must exist before the operator imports airflow.
        home = Path(tempfile.mkdtemp(prefix="didomi-bench-airflow-"))
        os.environ.setdefault("AIRFLOW_HOME", str(home))
        os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
        runner = run_provider if args.phase == "provider" else run_baseline
        print(json.dumps(runner(json.loads(args.endpoints))))
        return 0

    with tempfile.TemporaryDirectory(prefix="didomi-bench-") as state:
        started = time.perf_counter()
        emulator, endpoints = start_emulator(Path(state), args.users, args.latency_ms)
        print(f"emulator: {args.users:,} users seeded and serving in {time.perf_counter() - started:.1f}s")
        try:
            provider = measure("provider", endpoints)
            baseline = measure("baseline", endpoints)
        finally:
            emulator.terminate()
            emulator.wait(timeout=30)

    for name, figures in (("provider", provider), ("baseline", baseline)):
        if figures["users"] != args.users:
            raise SystemExit(f"{name} pulled {figures['users']} users, expected {args.users}")
    users_per_s = provider["users"] / provider["seconds"]
    baseline_per_s = baseline["users"] / baseline["seconds"]
    ratio = users_per_s / baseline_per_s
    print(
        f"provider (hook + operator + UserFrameBuilder): {provider['users']:,} users, {provider['columns']} columns "
        f"in {provider['seconds']:.2f}s = {users_per_s:,.0f} users/s, peak RSS {provider['peak_rss_mb']:.0f} MB"
    )
    print(
        f"baseline (requests.get + json + dict per row): {baseline['users']:,} users, {baseline['columns']} columns "
        f"in {baseline['seconds']:.2f}s = {baseline_per_s:,.0f} users/s, peak RSS {baseline['peak_rss_mb']:.0f} MB"
    )
    print(f"ratio: {ratio:.2f}x")
    print(
        json.dumps(
            {
                "users_per_s": round(users_per_s, 1),
                "baseline_users_per_s": round(baseline_per_s, 1),
                "ratio": round(ratio, 2),
                "peak_rss_mb": round(provider["peak_rss_mb"], 1),
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
