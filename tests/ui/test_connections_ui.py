"""What `make airflow` puts in front of a person, checked without a browser.

* the connection forms Airflow builds from our provider info (``ProvidersManager`` and the exact ``hook_meta`` JSON the
  React UI reads): relabelled Host/Login/Password with placeholders, Schema/Port hidden, labelled extras;
* the metadata a fresh ``AIRFLOW_HOME`` gets from :mod:`local_airflow` (DB connections, the Variable, the pools) and
  the "Test" path over it: ``airflow connections test`` succeeds for both connections against the emulators and fails
  with a message a person acts on for a wrong secret.

The browser check of the same forms (and the screenshots under docs/) is ``tests/ui/take_screenshots.mjs``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_didomi_dynamics.emulators.runner import RunningEmulators
from airflow_provider_didomi_dynamics.get_provider_info import get_provider_info
from airflow_provider_didomi_dynamics.local import standalone as local_airflow

STANDARD_FIELDS = {"description", "schema", "host", "port", "login", "password", "extra"}
WRONG_SECRET = "definitely-not-the-secret"

# Runs in a fresh interpreter: Airflow reads AIRFLOW_HOME once per process, and this one belongs to conftest.
SETUP = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from airflow_provider_didomi_dynamics.local import standalone as local_airflow
    from airflow_provider_didomi_dynamics.local.testing import prepare_airflow_home

    home, endpoints, wrong = Path(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3]
    prepare_airflow_home(home)
    local_airflow.write_metadata(endpoints, local_airflow.demo_config(endpoints))

    from airflow.models.connection import Connection
    from airflow.utils.session import create_session

    bad = dict(endpoints, client_secret=wrong, didomi_secret=wrong)
    with create_session() as session:
        for row in local_airflow.connection_rows(bad):
            session.add(Connection(conn_id=row["conn_id"] + "_wrong_secret", conn_type=row["conn_type"],
                                   host=row["host"], login=row["login"], password=row["password"],
                                   extra=json.dumps(row["extra"])))
    """
)


def connection_types() -> dict[str, dict[str, Any]]:
    return {c["connection-type"]: c for c in get_provider_info()["connection-types"]}


# ------------------------------------------------------------------------------------------------ forms


@pytest.mark.parametrize("conn_type", ["didomi", "dataverse"])
def test_providers_manager_builds_the_declared_form(conn_type: str) -> None:
    from airflow.providers_manager import ProvidersManager

    spec = connection_types()[conn_type]
    behaviour = spec["ui-field-behaviour"]
    manager = ProvidersManager()

    loaded = manager.field_behaviours[conn_type]
    assert loaded["hidden_fields"] == behaviour["hidden-fields"]
    assert loaded["relabeling"] == behaviour["relabeling"]
    expected_placeholders = {
        (k if k in STANDARD_FIELDS else f"extra__{conn_type}__{k}"): v for k, v in behaviour["placeholders"].items()
    }
    assert loaded["placeholders"] == expected_placeholders

    widgets = {k: w for k, w in manager.connection_form_widgets.items() if k.startswith(f"extra__{conn_type}__")}
    assert set(widgets) == {f"extra__{conn_type}__{name}" for name in spec["conn-fields"]}
    for name, field in spec["conn-fields"].items():
        widget = widgets[f"extra__{conn_type}__{name}"]
        assert widget.hook_class_name == spec["hook-class-name"]
        assert widget.field_name == name
        assert widget.field["schema"]["title"] == field["label"]
        assert widget.field["description"] == field.get("description")
        assert widget.field["value"] == field["schema"].get("default")
        assert widget.is_sensitive is False  # no secret lives in an extra


@pytest.mark.parametrize("conn_type", ["didomi", "dataverse"])
def test_ui_receives_labels_placeholders_and_hidden_fields(conn_type: str) -> None:
    """``GET /ui/connections/hook_meta`` is what the React form renders; check that payload itself."""
    from airflow.api_fastapi.core_api.services.ui.connections import HookMetaService

    spec = connection_types()[conn_type]
    behaviour = spec["ui-field-behaviour"]
    (meta,) = [m for m in HookMetaService.hook_meta_data() if m.connection_type == conn_type]
    assert meta.hook_name == spec["hook-name"]
    standard = meta.standard_fields
    assert standard is not None
    for field in ("host", "login", "password"):
        shown = getattr(standard, field)
        assert shown is not None and not shown.hidden
        assert shown.title == behaviour["relabeling"][field]
        assert shown.placeholder == behaviour["placeholders"][field]
    assert standard.url_schema is not None and standard.url_schema.hidden
    assert standard.port is not None and standard.port.hidden

    extras = meta.extra_fields or {}
    assert list(extras) == list(spec["conn-fields"])
    for name, field in spec["conn-fields"].items():
        assert extras[name]["schema"]["title"] == field["label"]
        assert extras[name]["value"] == field["schema"].get("default")


@pytest.mark.parametrize("conn_type", ["didomi", "dataverse"])
def test_every_extra_with_a_placeholder_also_explains_itself(conn_type: str) -> None:
    """Airflow 3.3's form shows placeholders only on standard fields; an extra's hint must be in its description."""
    spec = connection_types()[conn_type]
    placeholders = spec["ui-field-behaviour"]["placeholders"]
    for name in placeholders:
        assert name in STANDARD_FIELDS or name in spec["conn-fields"], f"placeholder for unknown field {name}"
    for name, field in spec["conn-fields"].items():
        if name in placeholders and "default" not in field["schema"]:
            assert field.get("description"), f"{conn_type}.{name} has a placeholder the UI never shows"


# ------------------------------------------------------------------------------------------------ Test button path


@pytest.fixture(scope="module")
def airflow_setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningEmulators, dict[str, str]]]:
    """Emulators in this process; a fresh SQLite AIRFLOW_HOME filled by local_airflow, as `make airflow` does."""
    work = tmp_path_factory.mktemp("ui-airflow")
    home = work / "airflow"
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AIRFLOW_CONN_", "AIRFLOW_VAR_")) and k != "AIRFLOW__CORE__UNIT_TEST_MODE"
    }
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{home / 'airflow.db'}",
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__TEST_CONNECTION="Enabled",
    )
    with RunningEmulators(work / "emulators", seed="empty") as running:
        subprocess.run(
            [sys.executable, "-c", SETUP, str(home), json.dumps(running.endpoints), WRONG_SECRET],
            env=env,
            check=True,
            capture_output=True,
            timeout=120,
        )
        yield running, env


def airflow_cli(env: dict[str, str], *commands: list[str]) -> list[subprocess.CompletedProcess[str]]:
    """Run several ``airflow`` commands at once (each pays Airflow's ~3 s start-up)."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "airflow", *command],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for command in commands
    ]
    results = []
    for command, proc in zip(commands, procs, strict=True):
        out, err = proc.communicate(timeout=120)
        results.append(subprocess.CompletedProcess(command, proc.returncode, out, err))
    return results


def test_metadata_db_holds_connections_variable_and_pools(
    airflow_setup: tuple[RunningEmulators, dict[str, str]],
) -> None:
    running, env = airflow_setup
    listed, variable, pools = airflow_cli(
        env,
        ["connections", "list", "-o", "json", "--show-values", "--hide-sensitive"],
        ["variables", "get", local_airflow.CONFIG_VARIABLE],
        ["pools", "list", "-o", "json"],
    )
    assert listed.returncode == 0, listed.stderr[-2000:]
    by_id = {c["conn_id"]: c for c in json.loads(listed.stdout)}
    assert by_id["didomi_default"]["conn_type"] == "didomi"
    assert by_id["didomi_default"]["host"] == running.endpoints["didomi_url"]
    assert by_id["dataverse_default"]["conn_type"] == "dataverse"
    assert by_id["dataverse_default"]["host"] == running.endpoints["dataverse_url"]
    # port 0, not NULL: the 3.3.2 list page's Test button only works then (apache/airflow#73298)
    assert {by_id[c]["port"] for c in ("didomi_default", "dataverse_default")} == {"0"}

    assert variable.returncode == 0, variable.stderr[-2000:]
    config = json.loads(variable.stdout)
    assert config["authentication"] == {
        "client_id": running.endpoints["client_id"],
        "client_secret": running.endpoints["client_secret"],
        "tenant_id": running.endpoints["tenant_id"],
        "instance": running.endpoints["dataverse_url"],
    }
    assert config["mappings"], "the demo mappings are kept"

    assert pools.returncode == 0, pools.stderr[-2000:]
    slots = {p["pool"]: int(p["slots"]) for p in json.loads(pools.stdout)}
    assert slots["didomi_api"] == local_airflow.POOL_SLOTS
    assert slots["dataverse_api"] == local_airflow.POOL_SLOTS


def test_connections_test_succeeds_and_a_wrong_secret_fails_readably(
    airflow_setup: tuple[RunningEmulators, dict[str, str]],
) -> None:
    running, env = airflow_setup
    didomi, dataverse, bad_didomi, bad_dataverse = airflow_cli(
        env,
        ["connections", "test", "didomi_default"],
        ["connections", "test", "dataverse_default"],
        ["connections", "test", "didomi_default_wrong_secret"],
        ["connections", "test", "dataverse_default_wrong_secret"],
    )
    for result in (didomi, dataverse, bad_didomi, bad_dataverse):
        result.stdout = " ".join(result.stdout.split())  # rich wraps long messages at the terminal width
    for ok in (didomi, dataverse):
        assert ok.returncode == 0, f"{ok.args}: {ok.stdout[-2000:]} {ok.stderr[-2000:]}"
        assert "Connection success!" in ok.stdout

    assert bad_dataverse.returncode == 1
    assert "Connection failed!" in bad_dataverse.stdout
    assert "Invalid client secret" in bad_dataverse.stdout, bad_dataverse.stdout
    assert running.endpoints["client_id"] in bad_dataverse.stdout  # says which app registration

    assert bad_didomi.returncode == 1
    assert "Connection failed!" in bad_didomi.stdout
    assert "Didomi rejected the API key or secret" in bad_didomi.stdout, bad_didomi.stdout

    for bad in (bad_didomi, bad_dataverse):
        assert WRONG_SECRET not in bad.stdout + bad.stderr


# ------------------------------------------------------------------------------------------------ local_airflow


def test_standalone_environment_follows_the_port_and_finds_airflow(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_DIDOMI_DEFAULT", '{"conn_type": "didomi"}')
    monkeypatch.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS", "True")
    env = local_airflow.standalone_env(8765)
    assert env["AIRFLOW__API__PORT"] == "8765"
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://localhost:8765/execution/"
    assert env["AIRFLOW__CORE__TEST_CONNECTION"] == "Enabled"
    # standalone starts `airflow scheduler` etc. by name: this venv's bin must come first even if not activated
    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)
    assert "AIRFLOW_CONN_DIDOMI_DEFAULT" not in env  # the DB connections are the ones the UI shows and tests
    assert "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS" not in env


def test_a_busy_port_is_reported_before_anything_starts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert local_airflow.main(tmp_path / "work", port=port) == 1
    assert f"port {port} is already in use" in capsys.readouterr().err
    assert not (tmp_path / "work").exists()
