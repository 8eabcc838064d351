"""Helpers of the preflight tests: the demo config with changes, hooks on the emulators, a run in one call."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from airflow_provider_didomi_dynamics.core.config import IntegrationConfig
from airflow_provider_didomi_dynamics.emulators.runner import RunningEmulators
from airflow_provider_didomi_dynamics.hooks.dataverse import DataverseHook
from airflow_provider_didomi_dynamics.hooks.didomi import DidomiHook
from airflow_provider_didomi_dynamics.preflight.report import PreflightReport
from airflow_provider_didomi_dynamics.preflight.run import run_preflight
from airflow_provider_didomi_dynamics.transport.retry import RetryPolicy

FAST = RetryPolicy(max_attempts=2, max_total_wait_s=2.0, backoff_initial_s=0.05, backoff_max_s=0.1)


@dataclass
class Setup:
    """The running emulators and the demo config (authentication pointing at them)."""

    emulators: RunningEmulators
    raw: dict[str, Any]

    @property
    def model(self) -> Any:
        """The Dataverse emulator's model."""
        return self.emulators.dataverse.model

    @property
    def client_id(self) -> str:
        return str(self.emulators.endpoints["client_id"])

    def config_dict(self, *, extra_mappings: list[dict[str, Any]] | None = None, **top: Any) -> dict[str, Any]:
        raw = copy.deepcopy(self.raw)
        raw["mappings"] = [*raw["mappings"], *(extra_mappings or [])]
        raw.update(top)
        return raw

    def config(self, *, extra_mappings: list[dict[str, Any]] | None = None, **top: Any) -> IntegrationConfig:
        return IntegrationConfig.from_dict(self.config_dict(extra_mappings=extra_mappings, **top))

    def run(
        self,
        config: IntegrationConfig | None = None,
        *,
        dataverse: DataverseHook | None = None,
        didomi: DidomiHook | None = None,
        **kwargs: Any,
    ) -> PreflightReport:
        hook = dataverse or DataverseHook(retry_policy=FAST)
        try:
            return run_preflight(config or self.config(), hook, didomi or DidomiHook(retry_policy=FAST), **kwargs)
        finally:
            hook.close()


def statuses(report: PreflightReport) -> dict[str, str]:
    return {c.name: c.status for c in report.checks}


def message(report: PreflightReport, name: str) -> str:
    found = [c.message for c in report.checks if c.name == name]
    assert found, f"no check named {name!r} in {[c.name for c in report.checks]}"
    return found[0]
