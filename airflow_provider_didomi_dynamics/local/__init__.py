"""Running the provider on one machine: the demo, ``make airflow``, helpers to test DAGs in-process, and the example
configs they use, shipped as package data so all of it works from an installed wheel."""

from __future__ import annotations

from pathlib import Path

CONFIG_FOLDER = Path(__file__).resolve().parent / "config"
DEMO_CONFIG = CONFIG_FOLDER / "demo.json"  # the demo's mappings; ``authentication`` is filled in with the emulator's
DEMO_CPC_CONFIG = CONFIG_FOLDER / "demo_contact_point_consent.json"  # the same demo, target contact_point_consent
SEED_EXAMPLE = CONFIG_FOLDER / "seed_example.json"  # the seed's integration config, verbatim
