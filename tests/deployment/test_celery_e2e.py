"""Both sync DAGs on CeleryExecutor: ``didomi-dynamics airflow-celery`` (scheduler, api-server, dag-processor, two
Celery workers, a Redis broker, PostgreSQL as the metadata database). Slow (about 90 s): its own file, so
``--dist loadfile`` gives it one xdist worker while the other runs the rest."""

from __future__ import annotations

import os
import re
import socket
import time
from pathlib import Path

import pytest
from deployment_support import check_both_dags, deployment


def leftovers(markers: list[str]) -> list[str]:
    """Processes whose command line or environment names one of ``markers`` (the deployment's folders): every
    component carries one (``AIRFLOW_HOME``, ``--dir``, ``--pid``, ``-D``, ``--state-dir``)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            environ = (proc / "environ").read_bytes().decode(errors="replace")
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if command and any(marker in command or marker in environ for marker in markers):
            found.append(f"{proc.name}: {command[:200]}")
    return found


def listening(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_both_dags_on_celery_match_dag_test_and_spread_over_both_workers(
    tmp_path: Path, airflow_db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with deployment("airflow-celery", tmp_path / "airflow-celery", monkeypatch) as celery:
        check_both_dags(celery, tmp_path, monkeypatch, workers={"worker1", "worker2"})

    # SIGTERM (as Ctrl-C) stopped everything it started: no process left, no port still open
    started = "".join(celery.output)
    redis = re.search(r"^Redis on 127.0.0.1:(\d+)$", started, re.M)
    postgres = re.search(r"^PostgreSQL on 127.0.0.1:(\d+) \((.+)\)$", started, re.M)
    assert redis and postgres, started
    ports = (celery.port, int(redis.group(1)), int(postgres.group(1)))
    markers = [str(celery.workdir), postgres.group(2)]
    deadline = time.monotonic() + 10
    while (left := leftovers(markers)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, f"still running after the stop: {left}"
    assert not [port for port in ports if listening(port)]
