"""``python -m airflow_provider_didomi_dynamics.emulators.didomi``: the Didomi emulator alone, in the foreground.

Once it serves, ``STATE_DIR/endpoints.json`` holds the endpoints and the ``AIRFLOW_CONN_DIDOMI_DEFAULT`` line is
printed; benchmarks run it this way so the emulator does not share the client's interpreter.
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
from pathlib import Path

from airflow_provider_didomi_dynamics.emulators.common.private_file import write_private_json
from airflow_provider_didomi_dynamics.emulators.demo_data import DEMO_USERS
from airflow_provider_didomi_dynamics.emulators.didomi import DidomiEmulator


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--state-dir", required=True, help="where TLS files and endpoints.json are written")
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--seed", choices=("empty", "demo"), default="empty")
    parser.add_argument("--demo-users", type=int, default=None, help="seed this many demo users (implies --seed demo)")
    parser.add_argument("--token-lifetime-s", type=float, default=3600.0)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--no-rate-limit", action="store_true", help="turn the 100 req / 15 s limit off")
    args = parser.parse_args(argv)

    state_dir = Path(args.state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    emulator = DidomiEmulator(
        state_dir=state_dir,
        latency_ms=args.latency_ms,
        seed="empty",
        token_lifetime_s=args.token_lifetime_s,
        port=args.port,
    )
    if args.demo_users is not None or args.seed == "demo":
        emulator.model.seed_demo(args.demo_users if args.demo_users is not None else DEMO_USERS)
    if args.no_rate_limit:
        emulator.model.rate_limiter.enabled = False

    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    emulator.start()
    try:
        endpoints = {**emulator.endpoints(), "pid": os.getpid()}
        write_private_json(state_dir / "endpoints.json", endpoints)  # a poller never reads half a file
        name, value = emulator.airflow_conn_env()
        print(f"Didomi emulator on {emulator.url} ({emulator.model.user_count()} users)", flush=True)
        print(f"export {name}='{value}'", flush=True)
        stop.wait()
    finally:
        emulator.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
