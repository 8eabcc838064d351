"""Run the Dataverse emulator alone, in the foreground (``python -m ...emulators.dataverse``).

Benchmarks start it in a subprocess so the client does not share a GIL with the server. Once serving, it writes
``STATE_DIR/endpoints.json`` and prints one ``READY <url>`` line; SIGINT/SIGTERM stop it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import threading
from pathlib import Path

from airflow_provider_didomi_dynamics.emulators.dataverse import DataverseEmulator, ServiceProtection


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m airflow_provider_didomi_dynamics.emulators.dataverse")
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--seed", default="empty")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--token-lifetime-s", type=int, default=3600)
    parser.add_argument(
        "--service-protection",
        default="off",
        help="'off', 'default' (scaled-down limits) or a JSON object of ServiceProtection fields",
    )
    args = parser.parse_args(argv)

    try:  # uvloop makes the server noticeably faster; asyncio.run in the server thread picks up the policy
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass

    protection: ServiceProtection | None
    if args.service_protection == "off":
        protection = None
    elif args.service_protection == "default":
        protection = ServiceProtection()
    else:
        protection = ServiceProtection(**json.loads(args.service_protection))

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    emulator = DataverseEmulator(
        state_dir=args.state_dir,
        latency_ms=args.latency_ms,
        seed=args.seed,
        service_protection=protection,
        token_lifetime_s=args.token_lifetime_s,
        port=args.port,
    ).start()
    try:
        emulator.write_endpoints(args.state_dir / "endpoints.json")
        print(f"READY {emulator.url}", flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        emulator.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
