"""How fast is the Dataverse emulator? Simple GETs/s and records/s through UpsertMultiple, limits off.

The emulator runs in a subprocess (``python -m airflow_provider_didomi_dynamics.emulators.dataverse``) and the
load comes from separate client processes using keep-alive HTTPS connections (``http.client``), so neither side
shares a GIL with the other. Targets on a 2-core machine: >= 2,000 GETs/s and >= 50,000 records/s.
The last line of output is one JSON object: ``{"gets_per_s": ..., "upsert_records_per_s": ...}``.

Usage: ``python benchmarks/emulator.py [--seconds 4] [--clients 3] [--batch 1000]``
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing as mp
import os
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests

MODULE = "airflow_provider_didomi_dynamics.emulators.dataverse"
API = "/api/data/v9.2/"


def start_emulator(state_dir: Path) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    """Start the emulator subprocess and wait for READY; returns the process and endpoints.json."""
    proc = subprocess.Popen(
        [sys.executable, "-m", MODULE, "--state-dir", str(state_dir), "--service-protection", "off"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("READY"):
        proc.kill()
        raise RuntimeError(f"emulator did not start: {line!r}")
    return proc, json.loads((state_dir / "endpoints.json").read_text())


def get_token(endpoints: dict[str, Any]) -> str:
    response = requests.post(
        f"{endpoints['authority_host']}/{endpoints['tenant_id']}/oauth2/v2.0/token",
        data={
            "client_id": endpoints["client_id"],
            "client_secret": endpoints["client_secret"],
            "grant_type": "client_credentials",
            "scope": f"{endpoints['dataverse_url']}/.default",
        },
        verify=endpoints["ca_file"],
        timeout=30,
    )
    response.raise_for_status()
    return str(response.json()["access_token"])


def _connection(endpoints: dict[str, Any]) -> http.client.HTTPSConnection:
    parts = urlsplit(endpoints["dataverse_url"])
    context = ssl.create_default_context(cafile=endpoints["ca_file"])
    return http.client.HTTPSConnection(parts.hostname or "localhost", parts.port, context=context, timeout=60)


def _get_worker(endpoints: dict[str, Any], token: str, path: str, seconds: float, start_at: float, out: Any) -> None:
    conn = _connection(endpoints)
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json", "OData-MaxVersion": "4.0"}
    conn.request("GET", path, headers=headers)  # warm the TLS session before the clock starts
    conn.getresponse().read()
    while time.time() < start_at:
        time.sleep(0.001)
    done = 0
    errors = 0
    deadline = start_at + seconds
    while time.time() < deadline:
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        response.read()
        if response.status == 200:
            done += 1
        else:
            errors += 1
    out.put((done, errors, time.time() - start_at))


def _upsert_worker(
    endpoints: dict[str, Any], token: str, bodies: list[bytes], per_body: int, seconds: float, start_at: float, out: Any
) -> None:
    conn = _connection(endpoints)
    headers = {
        "Authorization": f"Bearer {token}",
        "Accept": "application/json",
        "Content-Type": "application/json",
        "OData-MaxVersion": "4.0",
    }
    path = f"{API}contacts/Microsoft.Dynamics.CRM.UpsertMultiple"
    while time.time() < start_at:
        time.sleep(0.001)
    records = 0
    errors = 0
    deadline = start_at + seconds
    i = 0
    while time.time() < deadline:
        conn.request("POST", path, body=bodies[i % len(bodies)], headers=headers)
        response = conn.getresponse()
        payload = response.read()
        if response.status == 204:
            records += per_body
        else:
            errors += 1
            if errors == 1:
                print(f"upsert error {response.status}: {payload[:300]!r}", file=sys.stderr)
        i += 1
    out.put((records, errors, time.time() - start_at))


def server_cpu_s(pid: int) -> float | None:
    """CPU seconds used so far by the emulator process (Linux /proc), to tell server cost from machine contention."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _cpu_note(before: float | None, after: float | None, elapsed: float, operations: int, unit: str) -> str:
    if before is None or after is None or operations == 0:
        return ""
    used = after - before
    return f"; server CPU {used / elapsed:.0%} of one core, {used / operations * 1e6:,.0f} us per {unit}"


def run_parallel(target: Any, args_for: list[tuple[Any, ...]]) -> list[tuple[int, int, float]]:
    ctx = mp.get_context("fork") if hasattr(os, "fork") else mp.get_context()
    out = ctx.Queue()
    procs = [ctx.Process(target=target, args=(*args, out)) for args in args_for]
    for p in procs:
        p.start()
    results = [out.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--clients", type=int, default=3, help="client processes for the GET test")
    parser.add_argument("--upsert-clients", type=int, default=2, help="client processes for the upsert test")
    parser.add_argument("--batch", type=int, default=1000, help="records per UpsertMultiple request")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="dv-bench-") as tmp:
        proc, endpoints = start_emulator(Path(tmp))
        try:
            token = get_token(endpoints)
            session = requests.Session()
            base = endpoints["dataverse_url"] + API
            headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
            created = session.post(
                base + "contacts",
                json={"firstname": "Bench", "lastname": "Mark", "emailaddress1": "bench@example.com"},
                headers=headers,
                verify=endpoints["ca_file"],
            )
            contact_url = created.headers["OData-EntityId"]
            contact_path = contact_url[contact_url.index(API) :]
            # Alternate key through the metadata API, as a client would set it up on a real org.
            session.post(
                base + "EntityDefinitions(LogicalName='contact')/Attributes",
                json={
                    "@odata.type": "Microsoft.Dynamics.CRM.StringAttributeMetadata",
                    "SchemaName": "new_externalid",
                    "MaxLength": 100,
                },
                headers=headers,
                verify=endpoints["ca_file"],
            ).raise_for_status()
            session.post(
                base + "EntityDefinitions(LogicalName='contact')/Keys",
                json={"SchemaName": "new_externalid_key", "KeyAttributes": ["new_externalid"]},
                headers=headers,
                verify=endpoints["ca_file"],
            ).raise_for_status()

            start_at = time.time() + 1.0
            cpu_before = server_cpu_s(proc.pid)
            results = run_parallel(
                _get_worker,
                [(endpoints, token, contact_path, args.seconds, start_at) for _ in range(args.clients)],
            )
            gets = sum(r[0] for r in results)
            get_errors = sum(r[1] for r in results)
            get_elapsed = max(r[2] for r in results)
            gets_per_s = gets / get_elapsed
            note = _cpu_note(cpu_before, server_cpu_s(proc.pid), get_elapsed + 1.0, gets, "GET")
            print(
                f"GET contacts(id): {gets} requests in {get_elapsed:.2f} s with {args.clients} keep-alive clients "
                f"-> {gets_per_s:,.0f} GETs/s ({get_errors} errors{note})"
            )

            # Each client upserts its own key space; the first pass creates rows, later passes update them.
            bodies_per_client = 5
            client_args = []
            for c in range(args.upsert_clients):
                bodies = []
                for b in range(bodies_per_client):
                    targets = [
                        {
                            "@odata.type": "Microsoft.Dynamics.CRM.contact",
                            "@odata.id": f"contacts(new_externalid='c{c}-b{b}-{i}')",
                            "firstname": f"First{i}",
                            "lastname": f"Last{b}",
                            "emailaddress1": f"user{c}.{b}.{i}@example.com",
                            "donotemail": i % 2 == 0,
                            "donotbulkemail": i % 3 == 0,
                        }
                        for i in range(args.batch)
                    ]
                    bodies.append(json.dumps({"Targets": targets}).encode())
                client_args.append((endpoints, token, bodies, args.batch, args.seconds, time.time() + 1.0))
            start_at = time.time() + 1.0
            client_args = [(*a[:5], start_at) for a in client_args]
            cpu_before = server_cpu_s(proc.pid)
            results = run_parallel(_upsert_worker, client_args)
            records = sum(r[0] for r in results)
            upsert_errors = sum(r[1] for r in results)
            upsert_elapsed = max(r[2] for r in results)
            records_per_s = records / upsert_elapsed
            note = _cpu_note(cpu_before, server_cpu_s(proc.pid), upsert_elapsed + 1.0, records // args.batch, "request")
            print(
                f"UpsertMultiple ({args.batch}/request, alternate key): {records:,} records in {upsert_elapsed:.2f} s "
                f"with {args.upsert_clients} clients -> {records_per_s:,.0f} records/s ({upsert_errors} errors{note})"
            )
            count = session.get(
                base + "contacts?$select=contactid&$count=true&$top=1", headers=headers, verify=endpoints["ca_file"]
            ).json()
            print(f"contacts in the emulator afterwards: {count.get('@odata.count')} (count is capped at 5000)")
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
    print(json.dumps({"gets_per_s": round(gets_per_s, 1), "upsert_records_per_s": round(records_per_s, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
