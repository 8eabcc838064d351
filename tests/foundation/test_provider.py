"""The provider registers with Airflow: entry point, both connection types with labelled forms, CLI listing."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import entry_points

from airflow_provider_didomi_dynamics.get_provider_info import get_provider_info


def test_entry_point_returns_provider_info() -> None:
    (entry,) = [
        e for e in entry_points(group="apache_airflow_provider") if e.value.startswith("airflow_provider_didomi")
    ]
    info = entry.load()()
    assert info["package-name"] == "airflow-provider-didomi-dynamics"
    types = {c["connection-type"]: c for c in info["connection-types"]}
    assert set(types) == {"didomi", "dataverse"}
    assert types["dataverse"]["hook-name"] == "Microsoft Dynamics 365 (Dataverse)"
    assert set(types["dataverse"]["conn-fields"]) == {"tenant_id", "authority_host", "api_version", "ca_bundle"}
    assert (
        types["dataverse"]["conn-fields"]["authority_host"]["schema"]["default"] == "https://login.microsoftonline.com"
    )
    assert types["didomi"]["ui-field-behaviour"]["relabeling"] == {
        "host": "API URL",
        "login": "API key",
        "password": "API secret",
    }


def test_providers_manager_lists_both_connection_types_with_forms() -> None:
    from airflow.providers_manager import ProvidersManager

    manager = ProvidersManager()
    assert "airflow-provider-didomi-dynamics" in manager.providers
    try:  # where tasks find hooks on recent Airflow 3 releases; older ones only have ProvidersManager.hooks
        from airflow.sdk.providers_manager_runtime import ProvidersManagerTaskRuntime

        hooks = ProvidersManagerTaskRuntime().hooks
    except ImportError:
        hooks = manager.hooks
    assert hooks["didomi"] is not None and hooks["didomi"].hook_class_name.endswith("DidomiHook")
    assert hooks["dataverse"] is not None and hooks["dataverse"].connection_type == "dataverse"
    widgets = manager.connection_form_widgets
    assert "extra__dataverse__tenant_id" in widgets and "extra__didomi__organization_id" in widgets
    behaviours = manager.field_behaviours
    assert behaviours["dataverse"]["relabeling"]["host"] == "Instance URL"


def test_airflow_providers_list_shows_the_provider() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "airflow", "providers", "list", "-o", "plain"],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "airflow-provider-didomi-dynamics" in result.stdout


def test_every_declared_module_imports() -> None:
    import importlib

    info = get_provider_info()
    for section in ("hooks", "operators", "triggers"):
        for item in info[section]:
            for module in item["python-modules"]:
                importlib.import_module(module)
