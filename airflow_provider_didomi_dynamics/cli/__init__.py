"""The ``didomi-dynamics`` console script: validate a config, run the emulators, check a setup before a sync.

This module is the argument parser; :mod:`.commands` holds what each subcommand does.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from airflow_provider_didomi_dynamics.cli.commands import (
    cmd_airflow,
    cmd_airflow_celery,
    cmd_demo,
    cmd_edit_contacts,
    cmd_emulate,
    cmd_preflight,
    cmd_validate_config,
)
from airflow_provider_didomi_dynamics.local.celery import add_backend_arguments

EXIT_MISSING_EXTRA = 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="didomi-dynamics",
        description="Didomi <-> Microsoft Dynamics 365 consent sync: tools around the Airflow provider.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    validate = commands.add_parser("validate-config", help="check an integration config JSON file")
    validate.add_argument("path", help="path of the integration config JSON (the seed's microsoft-dynamics shape)")
    validate.set_defaults(func=cmd_validate_config)

    emulate = commands.add_parser(
        "emulate", help="run the local Dataverse and Didomi emulators in the foreground until terminated"
    )
    emulate.add_argument("--only", choices=["dataverse", "didomi"], help="start just one emulator")
    emulate.add_argument("--state-dir", default=".emulators", help="where endpoints.json and the CA file go")
    emulate.add_argument("--latency-ms", type=float, default=0.0, help="fixed latency added to every request")
    emulate.add_argument("--seed", choices=["demo", "empty"], default="empty", help="initial data")
    emulate.set_defaults(func=cmd_emulate)

    edit = commands.add_parser(
        "edit-contacts", help="play a person: change N contacts in the running Dataverse emulator (for the reverse DAG)"
    )
    edit.add_argument("count", type=int, nargs="?", default=3, help="how many contacts to change (default 3)")
    edit.add_argument(
        "--state-dir", default=".airflow-local/emulators", help="the emulators' state dir (holds endpoints.json)"
    )
    edit.set_defaults(func=cmd_edit_contacts)

    demo = commands.add_parser("demo", help="run both DAGs end to end against the emulators and print the outcome")
    demo.add_argument("--workdir", default=".demo", help="where the demo keeps its Airflow home and emulator files")
    demo.add_argument("--users", type=int, default=5000, help="Didomi users to seed (default 5000)")
    demo.set_defaults(func=cmd_demo)

    from airflow_provider_didomi_dynamics.preflight.command import add_preflight_arguments

    preflight = commands.add_parser(
        "preflight", help="check connections, privileges, mapped attributes and consent ids before a sync"
    )
    add_preflight_arguments(preflight)
    preflight.set_defaults(func=cmd_preflight)
    local = commands.add_parser(
        "airflow", help="run airflow standalone (UI on :8080) wired to the emulators with demo data, until Ctrl-C"
    )
    local.add_argument("--workdir", default=".airflow-local", help="where AIRFLOW_HOME, emulator files and the log go")
    local.add_argument("--port", type=int, default=None, help="UI / API port (default: $AIRFLOW__API__PORT, else 8080)")
    local.add_argument("--verbose", action="store_true", help="show airflow standalone's output instead of a log file")
    local.add_argument("--users", type=int, default=None, help="demo Didomi users to seed (default 5000)")
    local.set_defaults(func=cmd_airflow)
    celery = commands.add_parser(
        "airflow-celery",
        help="run Airflow with CeleryExecutor: scheduler, api-server, dag-processor, two Celery workers, Redis and "
        "PostgreSQL, wired to the emulators with demo data, until Ctrl-C",
    )
    celery.add_argument(
        "--workdir", default=".airflow-celery", help="where AIRFLOW_HOME, PostgreSQL's data, emulator files, logs go"
    )
    celery.add_argument(
        "--port", type=int, default=None, help="UI / API port (default: $AIRFLOW__API__PORT, else 8080)"
    )
    celery.add_argument("--users", type=int, default=None, help="demo Didomi users to seed (default 5000)")
    add_backend_arguments(celery)
    celery.set_defaults(func=cmd_airflow_celery)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ImportError as err:
        # The emulators' import guard names the pip extra that brings what is missing: that line is all a person
        # needs, a traceback would bury it. Any other ImportError is a bug and keeps its traceback.
        if getattr(err, "extra", None) is None:
            raise
        print(f"didomi-dynamics {args.command}: {err}", file=sys.stderr)
        return EXIT_MISSING_EXTRA
