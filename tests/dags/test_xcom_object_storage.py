"""Large frames go through the common-io object-storage XCom backend: XCom holds a path, dtypes survive."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

DAG_FILE = textwrap.dedent(
    """
    import datetime as dt
    import pandas as pd
    from airflow.sdk import DAG, task

    with DAG("xcom_frames", schedule=None, start_date=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)) as dag:
        @task
        def produce():
            n = 20_000
            return pd.DataFrame({
                "organization_user_id": pd.array([f"user{i}@example.com" for i in range(n)], dtype="string"),
                "updated_at": pd.to_datetime([1_700_000_000 + i for i in range(n)], unit="s", utc=True)
                .astype("datetime64[us, UTC]"),
                "donotbulkemail": pd.array([True, False, None] * (n // 3) + [True] * (n % 3), dtype="boolean"),
                "preferredcontactmethodcode": pd.array([2, None] * (n // 2), dtype="Int64"),
            })

        @task
        def consume(frame):
            return {"rows": len(frame), "dtypes": {c: str(t) for c, t in frame.dtypes.items()},
                    "nulls": int(frame["donotbulkemail"].isna().sum())}

        consume(produce())
    """
)

SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from airflow_provider_didomi_dynamics.local.testing import load_dag, run_dag

    result = run_dag(load_dag("xcom_frames", Path(sys.argv[1])))
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select
    with create_session() as session:
        raw = session.scalars(select(XComModel).where(XComModel.task_id == "produce")).one().value
    print("RESULT " + json.dumps({"state": result.state, "consumed": result.value("consume"), "raw": str(raw)[:300]}))
    """
)


def test_frames_go_through_object_storage_with_their_dtypes(tmp_path: Path) -> None:
    home, store = tmp_path / "home", tmp_path / "xcom"
    store.mkdir()
    env = os.environ.copy()
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            "AIRFLOW__CORE__XCOM_BACKEND": "airflow.providers.common.io.xcom.backend.XComObjectStorageBackend",
            "AIRFLOW__COMMON_IO__XCOM_OBJECTSTORAGE_PATH": f"file://{store}",
            "AIRFLOW__COMMON_IO__XCOM_OBJECTSTORAGE_THRESHOLD": "1024",
            "AIRFLOW__COMMON_IO__XCOM_OBJECTSTORAGE_COMPRESSION": "gzip",
        }
    )
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "xcom_frames.py").write_text(DAG_FILE)
    env["AIRFLOW__CORE__DAGS_FOLDER"] = str(dags)
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], env=env, check=True, capture_output=True)
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(dags)], env=env, capture_output=True, text=True, timeout=240
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(lines[-1][len("RESULT ") :])
    assert result["state"] == "success"
    assert result["consumed"]["rows"] == 20_000
    assert result["consumed"]["nulls"] == 20_000 // 3
    assert result["consumed"]["dtypes"] == {
        "organization_user_id": "string",
        "updated_at": "datetime64[us, UTC]",
        "donotbulkemail": "boolean",
        "preferredcontactmethodcode": "Int64",
    }
    # The metadata DB holds a path into the store, not the frame; the frame is a file there.
    assert str(store) in result["raw"]
    stored = [p for p in store.rglob("*") if p.is_file()]
    assert stored and all(p.suffix == ".gz" for p in stored)
