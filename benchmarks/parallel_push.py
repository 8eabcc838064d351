"""Benchmark: 1, 2 and 4 chunk pushes at once against one Dataverse, as mapped ``push_chunks`` tasks run them.

Dataverse's service-protection limits are per application user and web server, so parallel pushes of one run share
one budget. One Dataverse emulator (the service-protection model, latency and batch size of ``benchmarks/push.py``)
receives, for each N, ``--rows`` rows split into N disjoint chunks (half of them existing contacts, every row
changing), each pushed by its own OS process through the same push engine and application user, all started
together. Per N: total rows/s over the slowest push, the fraction of the modelled capacity for N pushes of
``x-ms-dop-hint`` writers each (one push: the round trips bound it; two or more: the execution-time budget), 429s,
lost and duplicated rows read back. N=1 is the baseline in the same run; the ratios are against it.

    python benchmarks/parallel_push.py [--rows 60000] [--parallel 1,2,4]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

BENCHMARKS = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCHMARKS))

import pandas as pd  # noqa: E402
import push as push_bench  # noqa: E402  # emulator, service protection, config and values of push.py

from airflow_provider_didomi_dynamics.emulators.runner import connection_env  # noqa: E402


def keys_for(round_name: str, rows: int) -> list[str]:
    return [f"{round_name}-{i:06d}@example.com" for i in range(rows)]


def worker(endpoints_file: Path, round_name: str, rows: int, index: int, of: int, start_at: float) -> int:
    """One chunk push in this process (a mapped task's push); prints one JSON line with its report's figures."""
    from airflow_provider_didomi_dynamics.operators.dataverse import DataversePushContactsOperator

    endpoints = json.loads(endpoints_file.read_text())
    os.environ[f"AIRFLOW_CONN_{push_bench.CONN_ID.upper()}"] = connection_env(endpoints)[
        "AIRFLOW_CONN_DATAVERSE_DEFAULT"
    ]
    keys = keys_for(round_name, rows)
    mine = [i for i in range(rows) if i % of == index]
    frame = pd.DataFrame({"organization_user_id": pd.array([keys[i] for i in mine], dtype="string")})
    frame["updated_at"] = pd.Timestamp("2024-05-01T00:00:00Z")
    for attribute in push_bench.ATTRIBUTES:
        frame[attribute] = pd.array([push_bench.target_values(i)[attribute] for i in mine], dtype="boolean")
    operator = DataversePushContactsOperator(
        task_id="push_chunks",
        contacts=frame,
        config=push_bench.config_for(endpoints),
        dataverse_conn_id=push_bench.CONN_ID,
        batch_size=push_bench.BATCH_SIZE,
    )
    time.sleep(max(0.0, start_at - time.time()))  # every push of the round starts together
    started = time.time()
    report = operator.execute({})
    print(
        json.dumps(
            {
                "started": started,
                "ended": time.time(),
                "rows": len(mine),
                "requests": report["http_requests"],
                "throttled_429": report["throttled_429"],
                "failed": report["counts"]["failed"],
            }
        ),
        flush=True,
    )
    return 0


def one_round(endpoints: dict[str, Any], endpoints_file: Path, n: int, rows: int, capacity: float) -> dict[str, Any]:
    admin = push_bench.Admin(endpoints)
    round_name = f"p{n}"
    keys = keys_for(round_name, rows)
    admin.add_contacts(
        [{"emailaddress1": keys[i], **push_bench.opposite(push_bench.target_values(i))} for i in range(rows // 2)]
    )
    time.sleep(push_bench.PROTECTION.window_s * 2)  # the seeding's usage leaves the sliding window
    start_at = time.time() + 8.0  # time for every process to import Airflow and build its frame
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--worker",
                str(endpoints_file),
                round_name,
                str(rows),
                str(i),
                str(n),
                str(start_at),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        for i in range(n)
    ]
    results = []
    for process in processes:
        out, _ = process.communicate(timeout=1800)
        lines = [line for line in out.splitlines() if line.startswith("{")]
        if process.returncode != 0 or not lines:
            raise RuntimeError(f"a push of round {round_name} failed (exit {process.returncode})")
        results.append(json.loads(lines[-1]))
    seconds = max(r["ended"] for r in results) - min(r["started"] for r in results)
    dump = admin.call("GET", "/contacts")["value"]
    held = Counter(r["emailaddress1"] for r in dump if str(r["emailaddress1"]).startswith(f"{round_name}-"))
    by_key = {r["emailaddress1"]: r for r in dump}
    lost = sum(
        1
        for i, key in enumerate(keys)
        if key not in by_key or any(by_key[key][a] != v for a, v in push_bench.target_values(i).items())
    )
    rows_per_s = rows / seconds
    requests = sum(r["requests"] for r in results)
    throttled = sum(r["throttled_429"] for r in results)
    return {
        "parallel": n,
        "rows": rows,
        "seconds": round(seconds, 2),
        "rows_per_s": round(rows_per_s, 1),
        "capacity_fraction": round(rows_per_s / capacity, 3),
        "requests": requests,
        "throttled_429": throttled,
        "throttled_share": round(throttled / requests, 4) if requests else 0.0,
        "failed": sum(r["failed"] for r in results),
        "lost": lost,
        "duplicated": sum(n - 1 for n in held.values() if n > 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=60_000)
    parser.add_argument("--parallel", default="1,2,4")
    parser.add_argument("--worker", nargs=6, metavar="ARG", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        file, round_name, rows, index, of, start_at = args.worker
        return worker(Path(file), round_name, int(rows), int(index), int(of), float(start_at))
    counts = [int(n) for n in args.parallel.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench-parallel-") as tmp:
        process, endpoints = push_bench.start_emulator(Path(tmp))
        try:
            push_bench.Admin(endpoints).call("POST", "/keys", {"name": "new_emailkey", "attributes": ["emailaddress1"]})
            hint = push_bench.PROTECTION.dop_hint or 1
            rounds = []
            for n in counts:
                # N pushes may each send x-ms-dop-hint writes at once; one budget bounds them together (as scale.py)
                capacity = push_bench.modelled_capacity(n * hint)
                print(f"modelled capacity for {n} push(es) of {hint} writers, one budget: {capacity:,.0f} rows/s")
                rounds.append(one_round(endpoints, Path(tmp) / "endpoints.json", n, args.rows, capacity))
        finally:
            process.terminate()
            process.wait(timeout=30)
    base = rounds[0]
    for r in rounds:
        print(
            f"{r['parallel']} push(es) at once: {r['rows']:,} rows in {r['seconds']} s = {r['rows_per_s']:,} rows/s, "
            f"{r['capacity_fraction']:.0%} of capacity ({r['rows_per_s'] / base['rows_per_s']:.2f}x of "
            f"{base['parallel']}), {r['throttled_429']} x 429 of {r['requests']} requests, {r['failed']} failed, "
            f"{r['lost']} lost, {r['duplicated']} duplicated"
        )
    line: dict[str, Any] = {f"n{r['parallel']}_capacity_fraction": r["capacity_fraction"] for r in rounds}
    line.update(
        {f"n{r['parallel']}_ratio": round(r["rows_per_s"] / base["rows_per_s"], 2) for r in rounds},
        throttled_429=sum(r["throttled_429"] for r in rounds),
        lost=sum(r["lost"] for r in rounds),
        duplicated=sum(r["duplicated"] for r in rounds),
    )
    print(json.dumps(line))
    return 0


if __name__ == "__main__":
    sys.exit(main())
