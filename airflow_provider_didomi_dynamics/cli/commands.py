"""What each ``didomi-dynamics`` subcommand does; each imports what it needs when it runs, so ``validate-config``
works on a worker that has neither the emulators' extra nor a configured Airflow."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

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
    from airflow_provider_didomi_dynamics.local.demo import main as demo_main

    return demo_main(Path(args.workdir), users=args.users)


def cmd_preflight(args: argparse.Namespace) -> int:
    from airflow_provider_didomi_dynamics.preflight.command import main_preflight

    return main_preflight(args)


def cmd_airflow(args: argparse.Namespace) -> int:
    from airflow_provider_didomi_dynamics.local.standalone import main as airflow_main

    return airflow_main(Path(args.workdir), port=args.port, verbose=args.verbose, users=args.users)


def cmd_airflow_celery(args: argparse.Namespace) -> int:
    from airflow_provider_didomi_dynamics.local.celery import backends_of
    from airflow_provider_didomi_dynamics.local.celery import main as celery_main

    return celery_main(Path(args.workdir), port=args.port, users=args.users, backends=backends_of(args))


def cmd_edit_contacts(args: argparse.Namespace) -> int:
    """Play the person: change N contacts in the running Dataverse emulator, as its 'editor' user, and say what next."""
    import json

    from airflow_provider_didomi_dynamics.local.demo import edit_contacts_as_a_person, print_table

    endpoints_file = Path(args.state_dir) / "endpoints.json"
    if not endpoints_file.is_file():
        print(
            f"didomi-dynamics edit-contacts: no {endpoints_file}; start the emulators first (`make airflow`, or "
            "`didomi-dynamics emulate --state-dir DIR`) and pass the same --state-dir",
            file=sys.stderr,
        )
        return EXIT_INVALID
    changed = edit_contacts_as_a_person(json.loads(endpoints_file.read_text()), args.count)
    print_table(
        f"{len(changed)} contact(s) edited in Dynamics by a person (the emulator's editor user)",
        changed,
        ["contact", "donotbulkemail"],
    )
    print("Next: trigger dynamics_to_didomi (no params): the run covers up to now and sends these changes to Didomi.")
    return EXIT_OK
