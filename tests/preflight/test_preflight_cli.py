"""``main_preflight`` (wired as ``didomi-dynamics preflight``): exit 0 all well, 1 a check failed, 2 invalid config."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest
from preflight_support import Setup

from airflow_provider_didomi_dynamics.preflight.command import add_preflight_arguments, main_preflight


def parse(*argv: str) -> argparse.Namespace:
    return add_preflight_arguments(argparse.ArgumentParser(prog="didomi-dynamics preflight")).parse_args(list(argv))


def write(tmp_path: Path, raw: dict[str, Any]) -> str:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(raw))
    return str(path)


def test_exit_0_and_a_readable_table_for_the_demo_setup(
    setup: Setup, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main_preflight(parse("--config", write(tmp_path, setup.config_dict())))
    out = capsys.readouterr().out
    assert code == 0, out
    assert "STATUS  CHECK" in out
    assert "ok      Dataverse connection" in out
    assert "preflight passed: 0 failed, 0 warning(s), 8 ok" in out
    assert setup.emulators.endpoints["client_secret"] not in out


def test_exit_1_when_a_mapped_attribute_is_missing(
    setup: Setup, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = setup.config_dict(extra_mappings=[{"id": "new_missing", "value": "consents_purposes_analytics_enabled"}])
    code = main_preflight(parse("--config", write(tmp_path, raw)))
    out = capsys.readouterr().out
    assert code == 1
    assert "FAIL    Attribute new_missing" in out
    assert "mappings[6].id: contact has no attribute 'new_missing'" in " ".join(out.split())
    assert "preflight FAILED: 1 failed" in out


def test_exit_1_when_webhook_setup_lacks_privileges(
    setup: Setup, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    setup.model.assign_role(setup.client_id, "Didomi Integration")
    setup.model.remove_role(setup.client_id, "System Administrator")
    path = write(tmp_path, setup.config_dict())
    assert main_preflight(parse("--config", path)) == 0
    assert main_preflight(parse("--config", path, "--webhook")) == 1
    assert "FAIL    Webhook setup privileges" in capsys.readouterr().out


def test_exit_2_and_every_problem_for_an_invalid_config(
    setup: Setup, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = setup.config_dict(extra_mappings=[{"id": "Bad Name", "value": "nope"}], upsert_mode="yes")
    code = main_preflight(parse("--config", write(tmp_path, raw)))
    err = capsys.readouterr().err
    assert code == 2
    assert "invalid, 3 problem(s)" in err
    assert "mappings[6].id" in err and "mappings[6].value" in err and "upsert_mode" in err


def test_missing_config_file_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main_preflight(parse("--config", str(tmp_path / "nope.json"))) == 2
    assert "cannot read" in capsys.readouterr().err


def test_other_connection_ids_and_json_output(
    setup: Setup, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    monkeypatch.setenv("AIRFLOW_CONN_DV_PROD", os.environ["AIRFLOW_CONN_DATAVERSE_DEFAULT"])
    monkeypatch.setenv("AIRFLOW_CONN_DIDOMI_PROD", os.environ["AIRFLOW_CONN_DIDOMI_DEFAULT"])
    monkeypatch.delenv("AIRFLOW_CONN_DATAVERSE_DEFAULT")
    args = parse(
        "--config",
        write(tmp_path, setup.config_dict()),
        "--dataverse-conn-id",
        "dv_prod",
        "--didomi-conn-id",
        "didomi_prod",
        "--json",
        "--scan-pages",
        "2",
    )
    assert main_preflight(args) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["ok"] is True and body["counts"]["fail"] == 0
    ids = next(c for c in body["checks"] if c["name"] == "Didomi consent ids")
    assert "200 Didomi user(s) (2 page(s))" in ids["message"]
