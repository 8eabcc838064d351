"""``didomi-dynamics airflow-celery --broker-url/--database-url``: your own Redis and PostgreSQL. A wrong one fails
at once with the reason, before anything starts, and the password it holds is never printed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from airflow_rest import free_port


def run_celery(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    argv = ["airflow-celery", "--workdir", str(tmp_path / "w"), "--port", str(free_port()), *extra]
    return subprocess.run(
        [sys.executable, "-m", "airflow_provider_didomi_dynamics.cli", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")},
    )


def test_an_unreachable_redis_fails_at_once_and_names_it_without_its_password(tmp_path: Path) -> None:
    broker = f"redis://:broker-secret@127.0.0.1:{free_port()}/0"
    done = run_celery(tmp_path, "--broker-url", broker, "--database-url", "postgresql://a@127.0.0.1:1/x")
    assert done.returncode == 1
    assert f"Redis at {broker.replace('broker-secret', '***')} did not answer PING" in done.stderr
    assert "broker-secret" not in done.stdout + done.stderr


def test_an_unreachable_postgresql_fails_at_once_with_the_servers_words(tmp_path: Path) -> None:
    database = f"postgresql://airflow:db-secret@127.0.0.1:{free_port()}/airflow"
    done = run_celery(tmp_path, "--database-url", database)
    assert done.returncode == 1
    assert "PostgreSQL at postgresql+psycopg2://airflow:***@127.0.0.1:" in done.stderr
    assert "Connection refused" in done.stderr or "connection refused" in done.stderr.lower(), done.stderr
    assert "db-secret" not in done.stdout + done.stderr
    assert not (tmp_path / "w" / "airflow").exists(), "nothing is prepared before the database answers"


def test_a_database_url_that_is_not_postgresql_is_refused(tmp_path: Path) -> None:
    done = run_celery(tmp_path, "--broker-url", "redis://127.0.0.1:1/0", "--database-url", "mysql://u:pw@h/db")
    assert done.returncode == 1
    assert "--database-url must be a postgresql:// URL, not mysql://u:***@h/db" in done.stderr
