"""``make airflow``: the real Airflow UI (``airflow standalone``) wired to both emulators, for a person to try.

1. start both emulators with the demo data (one private CA), in this process;
2. prepare an ``AIRFLOW_HOME`` with SQLite (``<workdir>/airflow``), the provider's DAG files in its ``dags/`` and
   ``[core] test_connection = Enabled``;
3. write into the metadata database, so they show in the UI (Admin > Connections / Variables / Pools):
   the connections ``didomi_default`` and ``dataverse_default`` (pointing at the emulators; refreshed on every
   start because the emulators' ports and CA change), the Variable ``didomi_dynamics_config`` (the packaged
   ``local/config/demo.json`` with the emulator's ``authentication``) and the pools ``didomi_api`` / ``dataverse_api``;
4. run ``airflow standalone`` (scheduler, API server + UI, triggerer, DAG processor) as a subprocess, its output in
   ``<workdir>/airflow-standalone.log``, and print the URL, the user and the password once the UI answers;
5. on Ctrl-C or SIGTERM stop Airflow (and anything it started), then the emulators.

Run it with ``make airflow``, ``didomi-dynamics airflow`` or
``python -m airflow_provider_didomi_dynamics.local.standalone``.
Nothing from airflow is imported before :func:`prepare_airflow_home` has set the environment.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from airflow_provider_didomi_dynamics.emulators.demo_data import DEMO_USERS
from airflow_provider_didomi_dynamics.emulators.runner import RunningEmulators, connection_env
from airflow_provider_didomi_dynamics.local import DEMO_CONFIG
from airflow_provider_didomi_dynamics.local.testing import prepare_airflow_home

DEFAULT_WORKDIR = Path(".airflow-local")
DEFAULT_PORT = 8080
CONFIG_VARIABLE = "didomi_dynamics_config"
POOL_SLOTS = 4
PASSWORDS_FILE = "simple_auth_manager_passwords.json.generated"
LOG_FILE = "airflow-standalone.log"
READY_TIMEOUT_S = 240.0
STOP_TIMEOUT_S = 30.0
ADMIN_USER = "admin"
UI_TEST_PORT = 0

CONNECTION_DESCRIPTIONS = {
    "didomi_default": "Didomi API: local emulator started by `make airflow` (demo data)",
    "dataverse_default": "Dynamics 365 / Dataverse Web API: local emulator started by `make airflow` (demo data)",
}


# ---------------------------------------------------------------------------------------------------------------
# what goes into the metadata database


def connection_rows(endpoints: dict[str, Any]) -> list[dict[str, Any]]:
    """Both default connections (id, type, host, login, password, extra as a dict), pointing at the emulators."""
    rows = []
    for key, value in sorted(connection_env(endpoints).items()):
        conn_id = key.removeprefix("AIRFLOW_CONN_").lower()
        row = {"conn_id": conn_id, **json.loads(value)}
        row["description"] = CONNECTION_DESCRIPTIONS.get(conn_id, "")
        rows.append(row)
    return rows


def demo_config(endpoints: dict[str, Any], path: Path = DEMO_CONFIG) -> dict[str, Any]:
    """The packaged demo config with the emulator's Dataverse app registration as ``authentication``."""
    config: dict[str, Any] = json.loads(path.read_text())
    config["authentication"] = {
        "client_id": endpoints["client_id"],
        "client_secret": endpoints["client_secret"],
        "tenant_id": endpoints["tenant_id"],
        "instance": endpoints["dataverse_url"],
    }
    return config


def pool_names() -> list[str]:
    """The pools the DAGs use (``dags.settings`` reads the same environment variables)."""
    return [
        os.environ.get("DIDOMI_DYNAMICS_DIDOMI_POOL", "didomi_api"),
        os.environ.get("DIDOMI_DYNAMICS_DATAVERSE_POOL", "dataverse_api"),
    ]


def write_metadata(endpoints: dict[str, Any], config: dict[str, Any], pool_slots: int = POOL_SLOTS) -> None:
    """Create or replace the two connections, the config Variable and both pools in the metadata database.

    Call after :func:`prepare_airflow_home` (this imports airflow, which reads its configuration once).
    """
    from airflow.models.connection import Connection
    from airflow.models.pool import Pool
    from airflow.models.variable import Variable
    from airflow.utils.session import create_session
    from sqlalchemy import delete

    rows = connection_rows(endpoints)
    with create_session() as session:
        session.execute(delete(Connection).where(Connection.conn_id.in_([r["conn_id"] for r in rows])))
        session.flush()
        for row in rows:
            session.add(
                Connection(
                    conn_id=row["conn_id"],
                    conn_type=row["conn_type"],
                    description=row["description"],
                    host=row["host"],
                    login=row["login"],
                    password=row["password"],
                    # Port 0, not NULL: the 3.3.2 UI's Test button posts ``port: Number(null)`` = 0 and the API
                    # then refuses "host or port differs from the stored connection" (apache/airflow#73298).
                    # Both hooks ignore a falsy port.
                    port=UI_TEST_PORT,
                    extra=json.dumps(row["extra"]),
                )
            )
    Variable.set(
        CONFIG_VARIABLE,
        config,
        description="Integration config read by both sync DAGs (demo config, emulator authentication)",
        serialize_json=True,
    )
    for name in pool_names():
        Pool.create_or_update_pool(
            name=name,
            slots=pool_slots,
            description=f"Concurrent tasks calling the {'Didomi' if 'didomi' in name else 'Dataverse'} API",
            include_deferred=False,
        )


# ---------------------------------------------------------------------------------------------------------------
# airflow standalone


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def standalone_env(port: int) -> dict[str, str]:
    """This process's environment (AIRFLOW_HOME etc. already set) plus what ``airflow standalone`` needs."""
    env = dict(os.environ)
    # standalone starts its components as plain `airflow ...`: make this interpreter's scripts come first on PATH.
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([bin_dir, env.get("PATH", "")])
    env["AIRFLOW__CORE__TEST_CONNECTION"] = "Enabled"
    env["AIRFLOW__API__PORT"] = str(port)
    env["AIRFLOW__API__HOST"] = env.get("AIRFLOW__API__HOST", "127.0.0.1")
    # Workers reach the execution API through the base URL; it must follow the port.
    env["AIRFLOW__API__BASE_URL"] = f"http://localhost:{port}"
    env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] = f"http://localhost:{port}/execution/"
    # standalone only generates (and we only read) a password for the default single user.
    env.pop("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS", None)
    env.pop("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS", None)
    # Tasks must never fall back on environment connections pointing elsewhere: the DB holds the emulator's.
    for key in [k for k in env if k in ("AIRFLOW_CONN_DIDOMI_DEFAULT", "AIRFLOW_CONN_DATAVERSE_DEFAULT")]:
        env.pop(key)
    env.pop("AIRFLOW_VAR_DIDOMI_DYNAMICS_CONFIG", None)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def wait_until_ready(
    process: subprocess.Popen[bytes], port: int, home: Path, stop: threading.Event, timeout: float
) -> str | None:
    """Poll the API server's health endpoint until it answers and the password file exists; None once it is ready,
    else why not."""
    deadline = time.monotonic() + timeout
    url = f"http://127.0.0.1:{port}/api/v2/monitor/health"
    while time.monotonic() < deadline:
        if stop.is_set():
            return "stopped before Airflow was ready"
        if process.poll() is not None:
            return f"airflow standalone exited with code {process.returncode}"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                health = json.loads(response.read())
            if (
                health.get("metadatabase", {}).get("status") == "healthy"
                and health.get("scheduler", {}).get("status") == "healthy"
                and (home / PASSWORDS_FILE).exists()
            ):
                return None
        except (OSError, urllib.error.URLError, ValueError):
            pass
        stop.wait(1.0)
    return f"Airflow did not answer on {url} within {timeout:.0f}s"


def admin_password(home: Path) -> str:
    try:
        passwords = json.loads((home / PASSWORDS_FILE).read_text())
    except (OSError, ValueError):
        return f"(see {home / PASSWORDS_FILE})"
    return str(passwords.get(ADMIN_USER) or next(iter(passwords.values()), ""))


def stop_process_group(process: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT_S) -> None:
    """SIGINT first (standalone stops its components on KeyboardInterrupt), then SIGTERM and SIGKILL to the group."""
    pgid = process.pid  # started with start_new_session=True: its own process group
    for sig, wait_s in ((signal.SIGINT, timeout), (signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(wait_s)
        # whatever standalone left behind (api-server workers, task supervisors) shares its process group
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGTERM if sig != signal.SIGKILL else signal.SIGKILL)
        if process.poll() is not None and not _group_alive(pgid):
            return


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def main(
    workdir: Path = DEFAULT_WORKDIR, port: int | None = None, verbose: bool = False, users: int | None = None
) -> int:
    """Start the emulators and ``airflow standalone`` wired to them; return when stopped (Ctrl-C / SIGTERM)."""
    workdir = Path(workdir).resolve()
    port = port or int(os.environ.get("AIRFLOW__API__PORT") or DEFAULT_PORT)
    if port_in_use(port):
        print(
            f"port {port} is already in use: stop what runs there or choose another one "
            f"(AIRFLOW__API__PORT={port + 1} make airflow, or didomi-dynamics airflow --port {port + 1})",
            file=sys.stderr,
        )
        return 1

    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = _run(workdir, port, verbose, stop, users)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print("stopped." if code == 0 else "stopped after an error (see above).", flush=True)
    return code


def _run(workdir: Path, port: int, verbose: bool, stop: threading.Event, users: int | None = None) -> int:
    """Everything between the port check and the final message; 0 when a person stopped it, 1 on a failure."""
    home = workdir / "airflow"
    log_path = workdir / LOG_FILE
    print(f"preparing AIRFLOW_HOME {home} (SQLite; the first time takes a few seconds) ...", flush=True)
    os.environ["AIRFLOW__CORE__TEST_CONNECTION"] = "Enabled"
    prepare_airflow_home(home)
    with RunningEmulators(workdir / "emulators", seed="demo", demo_users=users or DEMO_USERS) as running:
        endpoints = running.endpoints
        print(f"emulators: Dataverse {endpoints['dataverse_url']}, Didomi {endpoints['didomi_url']}", flush=True)
        write_metadata(endpoints, demo_config(endpoints))
        print(
            f"metadata DB: connections didomi_default + dataverse_default, Variable {CONFIG_VARIABLE}, "
            f"pools {' + '.join(pool_names())}",
            flush=True,
        )
        if stop.is_set():
            return 0
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "airflow", "standalone"],
                env=standalone_env(port),
                cwd=workdir,
                stdin=subprocess.DEVNULL,
                stdout=None if verbose else log,
                stderr=None if verbose else subprocess.STDOUT,
                start_new_session=True,  # its own process group: stopped (and cleaned up) by us, not by the tty
            )
            try:
                where = "" if verbose else f" (log: {log_path})"
                print(f"starting airflow standalone on port {port}{where} ...", flush=True)
                problem = wait_until_ready(process, port, home, stop, READY_TIMEOUT_S)
                if problem is not None and not stop.is_set():
                    print(problem, file=sys.stderr)
                    if not verbose:
                        print(f"last lines of {log_path}:\n{_tail(log_path)}", file=sys.stderr)
                    return 1
                if problem is None:
                    print_banner(port, home, endpoints, log_path if not verbose else None)
                while not stop.is_set() and process.poll() is None:
                    stop.wait(1.0)
                if not stop.is_set():
                    print(f"airflow standalone exited with code {process.returncode}", file=sys.stderr)
                    return 1
                print("stopping Airflow and the emulators ...", flush=True)
            finally:
                stop_process_group(process)
    return 0


def print_banner(port: int, home: Path, endpoints: dict[str, Any], log_path: Path | None) -> None:
    lines = [
        "",
        "=" * 78,
        f"Airflow UI:  http://localhost:{port}",
        f"user:        {ADMIN_USER}",
        f"password:    {admin_password(home)}",
        "",
        "Admin > Connections: didomi_default and dataverse_default (open one, press Test)",
        "DAGs: didomi_to_dynamics, dynamics_to_didomi (paused; trigger them from the UI)",
        f"a person's edit: didomi-dynamics edit-contacts 3 --state-dir {home.parent / 'emulators'}",
        f"emulators:   Dataverse {endpoints['dataverse_url']}   Didomi {endpoints['didomi_url']}",
        f"AIRFLOW_HOME {home}",
    ]
    if log_path is not None:
        lines.append(f"logs:        tail -f {log_path}")
    lines += ["Ctrl-C stops Airflow and the emulators.", "=" * 78, ""]
    print("\n".join(lines), flush=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m airflow_provider_didomi_dynamics.local.standalone",
        description="Run airflow standalone wired to the local Didomi and Dataverse emulators (demo data).",
    )
    add_arguments(parser)
    return parser


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``didomi-dynamics airflow`` and ``python -m ...local.standalone``."""
    parser.add_argument(
        "--workdir", default=str(DEFAULT_WORKDIR), help="where AIRFLOW_HOME, the emulator files and the log go"
    )
    parser.add_argument(
        "--port",
        type=int,
        default=None,
        help=f"API server / UI port (default: $AIRFLOW__API__PORT, else {DEFAULT_PORT})",
    )
    parser.add_argument("--verbose", action="store_true", help="show airflow standalone's output instead of a log")
    parser.add_argument("--users", type=int, default=None, help=f"demo Didomi users to seed (default {DEMO_USERS})")


def cli(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return main(Path(args.workdir), port=args.port, verbose=args.verbose, users=args.users)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(cli())
