"""The console script: exit codes and the lines a person reads."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from airflow_provider_didomi_dynamics.cli import main
from airflow_provider_didomi_dynamics.local import SEED_EXAMPLE


def test_validate_config_accepts_the_seed_example(capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["validate-config", str(SEED_EXAMPLE)]) == 0
    out = capsys.readouterr().out.strip()
    assert len(out.splitlines()) == 1
    assert "valid microsoft-dynamics config: 1 mapping(s)" in out and "upsert_mode=true" in out


def test_validate_config_lists_every_problem_and_exits_2(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    bad = json.loads(SEED_EXAMPLE.read_text())
    bad["upsert_mode"] = "true"
    bad["mappings"].append({"id": "donotemail", "value": "consents_purposez_x"})
    del bad["authentication"]["tenant_id"]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    assert main(["validate-config", str(path)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"{path}: invalid, 3 problem(s):"
    assert [line.strip().split(":")[0] for line in err[1:]] == [
        "authentication.tenant_id",
        "upsert_mode",
        "mappings[1].value",
    ]


def test_console_script_is_installed(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "didomi-dynamics"
    result = subprocess.run(
        [str(script), "validate-config", str(tmp_path / "missing.json")], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "cannot read" in result.stderr


def test_the_cli_does_not_import_airflow_before_a_command_sets_its_home() -> None:
    """Airflow reads its configuration at import: a parser that imported it would pin ~/airflow's database, and
    `didomi-dynamics demo` would then fail with "no such table: dag" on its own fresh home."""
    probe = (
        "import sys; from airflow_provider_didomi_dynamics.cli import build_parser; build_parser(); "
        "print(sorted(m for m in sys.modules if m == 'airflow' or m.startswith('airflow.')))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_edit_contacts_plays_a_person_against_the_running_emulators(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    """[operator-experience] item 3: what `make airflow`'s banner offers, so the reverse DAG has a change to send."""
    from airflow_provider_didomi_dynamics.emulators.runner import RunningEmulators

    with RunningEmulators(tmp_path / "emulators", seed="demo", demo_users=50) as running:
        model = running.dataverse.model
        before = {row["contactid"]: row["donotbulkemail"] for row in model.contacts_rows()}

        assert main(["edit-contacts", "2", "--state-dir", str(tmp_path / "emulators")]) == 0

        after = {row["contactid"]: row for row in model.contacts_rows()}
        changed = [cid for cid, row in after.items() if row["donotbulkemail"] != before[cid]]
        assert len(changed) == 2
        editor = model.editor.user.systemuserid
        assert all(after[cid]["_modifiedby_value"] == editor for cid in changed)
    out = capsys.readouterr().out
    assert "2 contact(s) edited in Dynamics by a person" in out and "trigger dynamics_to_didomi" in out
    assert main(["edit-contacts", "1", "--state-dir", str(tmp_path / "nowhere")]) == 2
    assert "start the emulators first" in capsys.readouterr().err
