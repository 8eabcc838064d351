"""The provider's DAGs as factories, so they ship in the wheel; a DAG file of a few lines calls one at module level.

Airflow's DAG processor only reads files in its DAGs folder, so a deployment copies the files
:func:`dag_file_text` prints (the repo's ``dags/`` holds the same) or lets :func:`write_dag_files` write them.
Importing this package imports no operator: each factory module does, when it is imported.
"""

from __future__ import annotations

from pathlib import Path

DAG_IDS = ("didomi_to_dynamics", "dynamics_to_didomi", "dynamics_to_didomi_live", "dynamics_webhook_setup")

_DAG_FILE = '''"""The {dag_id} DAG, as the provider defines it (airflow_provider_didomi_dynamics.dags)."""

from airflow_provider_didomi_dynamics.dags.{dag_id} import build_dag

dag = build_dag()
'''


def dag_file_text(dag_id: str) -> str:
    """The DAG file Airflow's DAG processor reads for ``dag_id`` (one of :data:`DAG_IDS`)."""
    if dag_id not in DAG_IDS:
        raise KeyError(f"no DAG {dag_id!r} in this provider: {', '.join(DAG_IDS)}")
    return _DAG_FILE.format(dag_id=dag_id)


def write_dag_files(folder: Path) -> Path:
    """Write (or refresh) the DAG files into ``folder``, created if missing, and return it."""
    folder.mkdir(parents=True, exist_ok=True)
    for dag_id in DAG_IDS:
        path = folder / f"{dag_id}.py"
        text = dag_file_text(dag_id)
        if not path.exists() or path.read_text() != text:  # an unchanged file keeps its mtime: no re-parse
            path.write_text(text)
    return folder
