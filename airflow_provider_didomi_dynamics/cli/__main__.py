"""``python -m airflow_provider_didomi_dynamics.cli``: the console script without its entry point."""

from __future__ import annotations

import sys

from airflow_provider_didomi_dynamics.cli import main

sys.exit(main())
