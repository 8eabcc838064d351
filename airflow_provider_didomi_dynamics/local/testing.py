"""Run the sync DAGs in-process against the emulators: for the demo, our tests and users testing their own DAGs.

Airflow reads its configuration at import, so :func:`prepare_airflow_home` sets the environment first; import
nothing from airflow before calling it. Its DAGs folder is ``<home>/dags`` with the provider's three DAG files
(written from the package, so this works from an installed wheel), unless you pass your own folder.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from airflow_provider_didomi_dynamics.dags import write_dag_files


def prepare_airflow_home(home: Path, dags_folder: Path | None = None, migrate: bool = True) -> None:
    """Point Airflow at a private SQLite home and (once) create its metadata database.

    ``dags_folder`` None: ``<home>/dags``, (re)written with the provider's DAG files.
    """
    home = home.resolve()  # SQLite URLs must be absolute
    home.mkdir(parents=True, exist_ok=True)
    if dags_folder is None:
        dags_folder = write_dag_files(home / "dags")
    os.environ["AIRFLOW_HOME"] = str(home)
    os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
    os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(dags_folder)
    os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{home / 'airflow.db'}"
    os.environ.setdefault("AIRFLOW__CORE__TEST_CONNECTION", "Enabled")
    if migrate and not (home / ".migrated").exists():
        done = subprocess.run(
            [sys.executable, "-m", "airflow", "db", "migrate"],
            capture_output=True,
            text=True,
            env=os.environ.copy(),
        )
        if done.returncode != 0:
            raise RuntimeError(f"airflow db migrate failed in {home}:\n{done.stderr[-3000:]}")
        (home / ".migrated").touch()


def set_connections(env: dict[str, str]) -> None:
    """Install ``AIRFLOW_CONN_*`` values (from :func:`emulators.runner.connection_env`) in this process."""
    os.environ.update(env)


def set_config_variable(config: dict[str, Any]) -> None:
    """Set the Variable ``didomi_dynamics_config`` the DAGs read, through the environment secrets backend."""
    os.environ["AIRFLOW_VAR_DIDOMI_DYNAMICS_CONFIG"] = json.dumps(config)


@dataclass
class DagRunResult:
    """What a run left behind: its state, each task's state and every XCom value."""

    dag_id: str
    run_id: str
    state: str
    task_states: dict[str, str] = field(default_factory=dict)
    xcoms: dict[tuple[str, str], Any] = field(default_factory=dict)  # a mapped task: its last map index's
    mapped_xcoms: dict[tuple[str, str], dict[int, Any]] = field(default_factory=dict)  # map index -> value
    mapped_states: dict[str, dict[int, str]] = field(default_factory=dict)

    def value(self, task_id: str, key: str = "return_value") -> Any:
        return self.xcoms.get((task_id, key))

    def values(self, task_id: str, key: str = "return_value") -> list[Any]:
        """Every map index's value of a mapped task, in map-index order (an unmapped task: its one value)."""
        if (task_id, key) in self.mapped_xcoms:
            return [v for _, v in sorted(self.mapped_xcoms[(task_id, key)].items())]
        return [self.xcoms[(task_id, key)]] if (task_id, key) in self.xcoms else []


def load_dag(dag_id: str, dags_folder: Path | None = None) -> Any:
    """The DAG ``dag_id`` as the DAG processor parses it from ``dags_folder`` (None: ``[core] dags_folder``)."""
    from airflow.configuration import conf
    from airflow.dag_processing.dagbag import DagBag

    if dags_folder is None:
        dags_folder = Path(conf.get("core", "dags_folder"))
    bag = DagBag(str(dags_folder))
    if bag.import_errors:
        raise RuntimeError(f"DAG import errors: {bag.import_errors}")
    dag = bag.get_dag(dag_id)
    if dag is None:
        raise KeyError(f"no DAG {dag_id!r} in {dags_folder}")
    return dag


def run_dag(
    dag: Any,
    run_conf: dict[str, Any] | None = None,
    logical_date: dt.datetime | None = None,
    mark_success_pattern: str | None = None,
) -> DagRunResult:
    """``dag.test()`` plus the states and XComs a test or the demo reads afterwards."""
    import copy

    holders = [dag.params, *(task.params for task in dag.tasks)]
    saved = [(param, copy.deepcopy(param.value)) for ps in holders for param in (ps.get_param(k) for k in ps)]
    try:
        dag_run = dag.test(run_conf=run_conf, logical_date=logical_date, mark_success_pattern=mark_success_pattern)
    finally:
        for param, value in saved:  # dag.test() resolves the run conf into the shared Param objects
            param.value = value
    return collect(dag.dag_id, dag_run.run_id)


def collect(dag_id: str, run_id: str) -> DagRunResult:
    from airflow.models.dagrun import DagRun
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        dag_run = session.scalars(select(DagRun).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id)).one()
        result = DagRunResult(dag_id, run_id, str(dag_run.state))
        for ti in sorted(dag_run.get_task_instances(session=session), key=lambda t: t.map_index):
            result.task_states[ti.task_id] = str(ti.state)
            if ti.map_index >= 0:
                result.mapped_states.setdefault(ti.task_id, {})[ti.map_index] = str(ti.state)
        rows: Any = session.scalars(XComModel.get_many(run_id=run_id, dag_ids=dag_id, map_indexes=None))
        for row in sorted(rows, key=lambda r: r.map_index):
            value = _deserialize(row)
            result.xcoms[(row.task_id, row.key)] = value
            if row.map_index >= 0:
                result.mapped_xcoms.setdefault((row.task_id, row.key), {})[row.map_index] = value
    return result


def _deserialize(row: Any) -> Any:
    from airflow.models.xcom import XComModel
    from airflow.sdk.serde import deserialize

    value = XComModel.deserialize_value(row)
    try:
        return deserialize(value)
    except Exception:  # plain JSON values are already what we want
        return value
