"""The provider installs from a wheel: built from the repo, installed into a fresh venv in an empty folder.

Offline, and why it is done this way: the fresh venvs get no package index for the run-time dependencies
(``pip install --no-index``). Instead, a ``.pth`` file adds a folder of symlinks to every distribution this test
process already has (its own site-packages, without the provider's own files and editable hooks), so pip finds
Airflow, pandas and the rest *already installed* and only installs the wheel. The wheel itself is built with
``pip wheel --no-deps``; its build backend (setuptools>=77) comes from pip's configured sources, or from this
environment when it already has a new enough setuptools (``--no-build-isolation``).

With ``[emulators]``: pip resolves the wheel and its extra against those distributions, then
``didomi-dynamics demo`` runs to the end with the cwd in an empty folder, outside the checkout.

Without the extra: the venv sees everything except fastapi, starlette and uvicorn. pip cannot *resolve* such a venv
for this provider at all, because ``apache-airflow`` -> ``apache-airflow-core`` requires fastapi, starlette and
uvicorn itself (its API server); so the wheel goes in with ``--no-deps``, and the wheel's metadata is checked
instead: the provider requires none of them outside the extra. cryptography stays: msal needs it.

Marked slow (about two minutes). With ``--dist loadfile`` this file runs on one worker, and the wheel is built once
per module.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from demo_checks import DEMO_USERS, assert_demo_output

from airflow_provider_didomi_dynamics.dags import DAG_IDS, dag_file_text

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
PACKAGE = "airflow_provider_didomi_dynamics"
EXTRA_ONLY = ("fastapi", "starlette", "uvicorn", "cryptography")  # declared only under [emulators] (or not at all)
LEFT_OUT_WITHOUT_EXTRA = re.compile(r"^(fastapi|fastapi_cli|starlette|uvicorn)([-_.].*)?$", re.IGNORECASE)
NOT_FROM_THIS_ENV = ("airflow_provider_didomi_dynamics", "__editable__", "distutils-precedence.pth")
COPY_IGNORE = shutil.ignore_patterns(
    ".git", ".venv", "build", "*.egg-info", "__pycache__", ".*_cache", ".demo", ".emulators", ".airflow-local"
)


def run(command: list[str], cwd: Path, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{command} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def clean_env(venv: Path | None = None) -> dict[str, str]:
    """This process's environment without what points into the checkout or the test suite's Airflow home."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("AIRFLOW", "DIDOMI_DYNAMICS_", "PYTEST", "PYTHON", "VIRTUAL_ENV"))
    }
    if venv is not None:  # nothing of Airflow's lands in ~/airflow: the demo sets its own home, the rest uses this one
        env["AIRFLOW_HOME"] = str(venv.parent / "airflow-home")
        env["PATH"] = os.pathsep.join([str(venv / "bin"), env.get("PATH", "")])
        env["VIRTUAL_ENV"] = str(venv)
    return env


def setuptools_is_recent() -> bool:
    try:
        major = int(importlib.metadata.version("setuptools").split(".")[0])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return False
    return major >= 77


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built from a copy of the repo (an in-tree build would leave build/ in the checkout)."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"
    shutil.copytree(REPO, source, ignore=COPY_IGNORE, symlinks=True)
    isolation = ["--no-build-isolation"] if setuptools_is_recent() else []
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "-w", str(work / "dist"), str(source)]
    run(command, cwd=work, env=clean_env())
    (built,) = (work / "dist").glob("airflow_provider_didomi_dynamics-*.whl")
    return built


def fresh_venv(root: Path, leave_out: re.Pattern[str] | None = None) -> Path:
    """A new venv whose ``.pth`` adds symlinks to this environment's distributions (not the provider, not
    ``leave_out``)."""
    deps = root / "deps"
    deps.mkdir(parents=True)
    for folder in {Path(sysconfig.get_paths()["purelib"]), Path(sysconfig.get_paths()["platlib"])}:
        for entry in folder.iterdir():
            if entry.name.startswith(NOT_FROM_THIS_ENV) or (deps / entry.name).exists():
                continue
            if leave_out is not None and leave_out.match(entry.name):
                continue
            (deps / entry.name).symlink_to(entry)
    venv = root / "venv"
    run([sys.executable, "-m", "venv", str(venv)], cwd=root, env=clean_env())
    python = venv / "bin" / "python"
    site_packages = run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=root, env=clean_env()
    ).stdout.strip()
    (Path(site_packages) / "_this_envs_distributions.pth").write_text(f"import site; site.addsitedir({str(deps)!r})\n")
    return venv


def requirements(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as archive:
        (metadata,) = [name for name in archive.namelist() if name.endswith(".dist-info/METADATA")]
        text = archive.read(metadata).decode()
    return [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Requires-Dist:")]


def test_the_wheel_ships_the_dags_and_the_demo_configs(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    for dag_id in DAG_IDS:
        assert f"{PACKAGE}/dags/{dag_id}.py" in names
    assert {f"{PACKAGE}/local/config/demo.json", f"{PACKAGE}/local/config/seed_example.json"} <= names
    assert not any(name.startswith("dags/") for name in names), "the repo's dags/ is not a package"


def test_the_emulators_dependencies_are_only_in_the_extra(wheel: Path) -> None:
    unconditional = [r for r in requirements(wheel) if "extra ==" not in r]
    emulators = [r for r in requirements(wheel) if 'extra == "emulators"' in r]
    named = {re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0].lower() for r in unconditional}
    assert named.isdisjoint(EXTRA_ONLY), unconditional
    assert {"starlette", "uvicorn", "cryptography"} <= {re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0] for r in emulators}
    assert any(r.startswith("msgspec") for r in unconditional), "imported by the Didomi hook"


def test_installed_with_the_extra_the_demo_runs_outside_the_checkout(wheel: Path, tmp_path: Path) -> None:
    venv = fresh_venv(tmp_path / "with-extra")
    env = clean_env(venv)
    run([str(venv / "bin" / "python"), "-m", "pip", "install", "--no-index", f"{wheel}[emulators]"], tmp_path, env)
    empty = tmp_path / "empty"
    empty.mkdir()
    where = run([str(venv / "bin" / "python"), "-c", f"import {PACKAGE} as p; print(p.__file__)"], empty, env)
    assert where.stdout.strip().startswith(str(venv)), "the provider must come from the wheel, not the checkout"

    done = run([str(venv / "bin" / "didomi-dynamics"), "demo", "--users", str(DEMO_USERS)], empty, env, timeout=900)
    assert_demo_output(done.stdout)
    for dag_id in DAG_IDS:  # the DAG files the demo gave Airflow come from the package: the repo's dags/ holds the same
        assert (empty / ".demo" / "airflow" / "dags" / f"{dag_id}.py").read_text() == dag_file_text(dag_id)


def test_installed_without_the_extra_hooks_and_dags_import_and_the_emulators_say_which_extra(
    wheel: Path, tmp_path: Path
) -> None:
    venv = fresh_venv(tmp_path / "without-extra", leave_out=LEFT_OUT_WITHOUT_EXTRA)
    env = clean_env(venv)
    python = str(venv / "bin" / "python")
    run([python, "-m", "pip", "install", "--no-index", "--no-deps", str(wheel)], tmp_path, env)
    empty = tmp_path / "empty"
    empty.mkdir()
    script = """
import sys
import airflow_provider_didomi_dynamics.hooks.dataverse
from airflow_provider_didomi_dynamics.dags import (
    didomi_to_dynamics, dynamics_to_didomi, dynamics_to_didomi_live, dynamics_webhook_setup
)
modules = (didomi_to_dynamics, dynamics_to_didomi, dynamics_to_didomi_live, dynamics_webhook_setup)
print([m.build_dag().dag_id for m in modules])
assert not [m for m in sys.modules if ".emulators" in m], "hooks and DAGs must not import the emulators"
try:
    import fastapi
except ImportError:
    print("fastapi is not installed")
"""
    done = run([python, "-c", script], empty, env)
    expected = "['didomi_to_dynamics', 'dynamics_to_didomi', 'dynamics_to_didomi_live', 'dynamics_webhook_setup']"
    assert expected in done.stdout
    assert "fastapi is not installed" in done.stdout

    emulate = subprocess.run(
        [str(venv / "bin" / "didomi-dynamics"), "emulate"], cwd=empty, env=env, capture_output=True, text=True
    )
    assert emulate.returncode == 1
    assert emulate.stderr.strip().splitlines() == [
        "didomi-dynamics emulate: the emulators need the optional extra: "
        "pip install 'airflow-provider-didomi-dynamics[emulators]' (missing: starlette, uvicorn)"
    ]
