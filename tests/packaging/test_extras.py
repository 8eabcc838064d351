"""What ships where: the repo's DAG files are the package's, only the local tools need the emulators, and the
emulators without their extra fail with one line that names it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from airflow_provider_didomi_dynamics.dags import DAG_IDS, dag_file_text

REPO = Path(__file__).resolve().parents[2]
MESSAGE = (
    "the emulators need the optional extra: pip install 'airflow-provider-didomi-dynamics[emulators]' "
    "(missing: starlette, uvicorn)"
)
# sys.modules[name] = None makes both `import name` and importlib.util.find_spec(name) see no such module.
WITHOUT_STARLETTE_AND_UVICORN = "import sys\nsys.modules['starlette'] = sys.modules['uvicorn'] = None\n"


def python_without_the_extra(script: str) -> subprocess.CompletedProcess[str]:
    """Run ``script`` in a fresh interpreter that has no starlette and no uvicorn."""
    code = WITHOUT_STARLETTE_AND_UVICORN + textwrap.dedent(script)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240)


def test_the_repo_dag_files_are_the_ones_the_package_writes() -> None:
    assert sorted(p.name for p in (REPO / "dags").glob("*.py")) == sorted(f"{d}.py" for d in DAG_IDS)
    for dag_id in DAG_IDS:
        assert (REPO / "dags" / f"{dag_id}.py").read_text() == dag_file_text(dag_id), dag_id


def test_nothing_but_the_local_tools_imports_the_emulators() -> None:
    done = python_without_the_extra(
        """
        import importlib, pkgutil
        import airflow_provider_didomi_dynamics as package

        NEED_EMULATORS = ("emulators", "local.demo", "local.standalone")
        names = [m.name for m in pkgutil.walk_packages(package.__path__, package.__name__ + ".")]
        for name in names:
            short = name.removeprefix(package.__name__ + ".")
            if short.startswith(NEED_EMULATORS) or short.endswith("__main__"):
                continue
            importlib.import_module(name)
        from airflow_provider_didomi_dynamics.dags import DAG_IDS
        for dag_id in DAG_IDS:
            importlib.import_module(f"airflow_provider_didomi_dynamics.dags.{dag_id}").build_dag()
        loaded = sorted(m for m in sys.modules if m.startswith(package.__name__ + ".emulators"))
        print("IMPORTED", len(names), "EMULATORS", loaded)
        """
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "EMULATORS []" in done.stdout, done.stdout[-2000:]


def test_the_emulators_without_their_extra_name_it() -> None:
    done = python_without_the_extra(
        """
        try:
            import airflow_provider_didomi_dynamics.emulators.runner
        except ImportError as err:
            print(type(err).__name__, err.extra, err.name)
            print(err)
        """
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines() == ["EmulatorsNotInstalledError emulators starlette", MESSAGE]


def test_the_cli_turns_a_missing_extra_into_one_line() -> None:
    for command in ("emulate", "demo", "airflow"):
        done = python_without_the_extra(
            f"""
            from airflow_provider_didomi_dynamics.cli import main
            sys.exit(main([{command!r}]))
            """
        )
        assert done.returncode == 1, (command, done.stdout[-2000:], done.stderr[-2000:])
        assert done.stderr.splitlines() == [f"didomi-dynamics {command}: {MESSAGE}"], command
