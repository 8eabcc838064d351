"""Preflight: check a setup before a sync runs, and say what is wrong, why it matters and how to fix it.

A sync that starts with a missing privilege, a misspelt column or a purpose id that does not exist fails row by row
(or, worse, succeeds and writes nothing useful). The preflight asks both APIs once, up front, in about a second:
both connections, the application user's privileges (and the seed's rule that System Administrator is needed only
while the webhook is set up), every mapped contact attribute and its type, the alternate key on the contact key,
the bulk messages, and whether the mapped Didomi purposes, preferences and channels occur in the consent data.

``run_preflight`` returns a :class:`PreflightReport` (``ok`` means no check failed); the DAGs call it as their first
task with the run id, so retries and sibling tasks of one run reuse the result. ``main_preflight`` is the
``didomi-dynamics preflight`` command.

- ``facts``: what the hooks' methods say (no raw queries here); ``checks``: pure judgement of those facts
- ``wording``: the texts a person reads; ``report``: ``Check`` and ``PreflightReport``
- ``run``: ``run_preflight`` (with its per-run cache) and ``preflight_task``; ``command``: the CLI part
"""

from __future__ import annotations

from airflow_provider_didomi_dynamics.exceptions import PreflightError
from airflow_provider_didomi_dynamics.preflight.checks import WEBHOOK_PRIVILEGES, judge, required_sync_privileges
from airflow_provider_didomi_dynamics.preflight.command import add_preflight_arguments, main_preflight
from airflow_provider_didomi_dynamics.preflight.facts import (
    DEFAULT_SCAN_PAGES,
    AttributeInfo,
    ConsentScan,
    DataverseFacts,
    DidomiFacts,
    gather_dataverse,
    gather_didomi,
)
from airflow_provider_didomi_dynamics.preflight.report import FAIL, OK, WARN, Check, PreflightReport
from airflow_provider_didomi_dynamics.preflight.run import (
    config_fingerprint,
    forget_preflight_cache,
    preflight_task,
    run_preflight,
)

__all__ = [
    "DEFAULT_SCAN_PAGES",
    "FAIL",
    "OK",
    "WARN",
    "WEBHOOK_PRIVILEGES",
    "AttributeInfo",
    "Check",
    "ConsentScan",
    "DataverseFacts",
    "DidomiFacts",
    "PreflightError",
    "PreflightReport",
    "add_preflight_arguments",
    "config_fingerprint",
    "forget_preflight_cache",
    "gather_dataverse",
    "gather_didomi",
    "judge",
    "main_preflight",
    "preflight_task",
    "required_sync_privileges",
    "run_preflight",
]
