"""The ``didomi-dynamics`` console script: validate a config, run the emulators, check a setup before a sync."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from airflow_provider_didomi_dynamics.core.config import IntegrationConfig
from airflow_provider_didomi_dynamics.exceptions import ConfigError

EXIT_OK = 0
EXIT_INVALID = 2


def cmd_validate_config(args: argparse.Namespace) -> int:
    """Exit 0 with a one-line summary, or 2 with every problem on its own line, each with its JSON path."""
    try:
        config = IntegrationConfig.from_file(args.path)
    except ConfigError as err:
        print(f"{args.path}: invalid, {len(err.problems)} problem(s):", file=sys.stderr)
        for problem in err.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_INVALID
    print(f"{args.path}: {config.summary()}")
    return EXIT_OK


def cmd_emulate(args: argparse.Namespace) -> int:
    from airflow_provider_didomi_dynamics.emulators.runner import run_emulators

    return run_emulators(
        only=args.only,
        state_dir=args.state_dir,
        latency_ms=args.latency_ms,
        seed=args.seed,
    )


def cmd_demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from airflow_provider_didomi_dynamics.demo import main as demo_main

    return demo_main(Path(args.workdir))


def cmd_preflight(args: argparse.Namespace) -> int:
    from airflow_provider_didomi_dynamics.preflight import main_preflight

    return main_preflight(args)


def cmd_airflow(args: argparse.Namespace) -> int:
    from pathlib import Path

    from airflow_provider_didomi_dynamics.local_airflow import main as airflow_main

    return airflow_main(Path(args.workdir), port=args.port, verbose=args.verbose)


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

    demo = commands.add_parser("demo", help="run both DAGs end to end against the emulators and print the outcome")
    demo.add_argument("--workdir", default=".demo", help="where the demo keeps its Airflow home and emulator files")
    demo.set_defaults(func=cmd_demo)

    from airflow_provider_didomi_dynamics.preflight import add_preflight_arguments

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
    local.set_defaults(func=cmd_airflow)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
