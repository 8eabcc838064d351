"""``make airflow-celery``: a distributed Airflow on one machine, wired to both emulators, the way a real deployment
runs it: every component its own process, tasks on Celery workers, state in PostgreSQL.

1. start Redis (``redis-server`` on a free loopback port, its own dir, no persistence): the Celery broker;
2. start PostgreSQL (``initdb`` into ``<workdir>/pg`` the first time, ``postgres`` on a free loopback port, database
   ``airflow``): the metadata database and Celery's result backend. As root the server runs as the ``postgres`` user
   (it refuses root), in a temporary folder when that user cannot reach ``<workdir>``;
3. prepare ``AIRFLOW_HOME`` (``<workdir>/airflow``, the provider's DAG files) with ``CeleryExecutor`` and
   ``airflow db migrate``;
4. start the emulators with the demo data in this process and write the connections, the config Variable and the
   pools into the metadata database (the same pieces as ``make airflow``: :mod:`.standalone`);
5. start ``airflow dag-processor``, ``scheduler``, ``api-server`` and two ``airflow celery worker`` (worker1,
   worker2). Each worker has :data:`WORKER_NAME_ENV` set, and ``[core] hostname_callable`` is
   :func:`worker_hostname`, so a task instance's ``hostname`` (UI, REST API) names the worker that ran it;
6. print the URL, user and password once the API server, scheduler, DAG processor and both workers are up; on
   Ctrl-C or SIGTERM stop the Airflow components, then PostgreSQL and Redis, then the emulators.

Logs: ``<workdir>/logs/<component>.log``. Redis and PostgreSQL come from the system (``make services``:
``.ci/install-services`` apt-gets ``redis-server`` and ``postgresql`` when missing); the Python side from the
``[celery]`` extra. Nothing from airflow is imported before the environment is set.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import importlib.metadata
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_WORKDIR = Path(".airflow-celery")
DEFAULT_PORT = 8080
WORKERS = ("worker1", "worker2")
WORKER_CONCURRENCY = 2
WORKER_NAME_ENV = "DIDOMI_DYNAMICS_WORKER_NAME"
HOSTNAME_CALLABLE = "airflow_provider_didomi_dynamics.local.celery.worker_hostname"
DB_USER = "airflow"
DB_NAME = "airflow"
# airflow standalone's and the Celery workers' log servers: never hand these out.
RESERVED_PORTS = (8793, 8794)
SERVICE_TIMEOUT_S = 60.0
READY_TIMEOUT_S = 300.0
STOP_TIMEOUT_S = 20.0
SECRETS_FILE = "secrets.json"
# what the [celery] extra brings, by distribution name: looking a module of airflow up would import airflow, which
# reads its configuration once, before we set it
CELERY_EXTRA = ("apache-airflow-providers-celery", "psycopg2-binary", "asyncpg", "redis")


def worker_hostname() -> str:
    """``[core] hostname_callable``: the machine's name, plus ``/<worker>`` inside a worker started here.

    Both workers share one machine, so their task instances' ``hostname`` would read the same without it.
    """
    name = os.environ.get(WORKER_NAME_ENV)
    return f"{socket.gethostname()}/{name}" if name else socket.gethostname()


class ServiceError(RuntimeError):
    """A server could not be found or started; the message says what to do."""


# ---------------------------------------------------------------------------------------------------------------
# ports, binaries, processes


def free_port() -> int:
    """A free loopback port, never one of :data:`RESERVED_PORTS`."""
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if port not in RESERVED_PORTS:
            return port


def find_binary(name: str) -> str:
    """``name`` on PATH, else in Debian's ``/usr/lib/postgresql/<version>/bin`` (newest version first)."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=_version_key, reverse=True)
    if candidates:
        return candidates[0]
    package = "redis-server" if name == "redis-server" else "postgresql"
    raise ServiceError(
        f"{name} not found: run `make services` (.ci/install-services: apt-get install -y {package}), "
        f"or install {package} with your package manager"
    )


def _version_key(path: str) -> tuple[int, ...]:
    version = Path(path).parent.parent.name
    return tuple(int(part) for part in version.split(".") if part.isdigit())


@dataclass
class Component:
    """One process we started, in its own process group, and its log file."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path
    stop_signal: int = signal.SIGTERM

    def alive(self) -> bool:
        return self.process.poll() is None


@dataclass
class Owner:
    """Who a server runs as: this user, or (as root) an unprivileged one, because PostgreSQL refuses root."""

    uid: int | None = None
    gid: int | None = None

    @classmethod
    def for_postgres(cls) -> Owner:
        if os.geteuid() != 0:
            return cls()
        for name in ("postgres", "nobody"):
            with contextlib.suppress(KeyError):
                entry = pwd.getpwnam(name)
                return cls(entry.pw_uid, entry.pw_gid)
        raise ServiceError("running as root and there is no 'postgres' or 'nobody' user to run PostgreSQL as")

    def popen_kwargs(self) -> dict[str, Any]:
        return {} if self.uid is None else {"user": self.uid, "group": self.gid, "extra_groups": []}

    def can_enter(self, folder: Path) -> bool:
        """Whether this user can walk down to ``folder`` (every ancestor searchable)."""
        if self.uid is None:
            return True
        for part in [folder, *folder.parents]:
            if not part.exists():
                continue
            st = part.stat()
            if st.st_uid == self.uid:
                ok = bool(st.st_mode & 0o100)
            elif st.st_gid == self.gid:
                ok = bool(st.st_mode & 0o010)
            else:
                ok = bool(st.st_mode & 0o001)
            if not ok:
                return False
        return True

    def take(self, folder: Path) -> None:
        if self.uid is not None:
            os.chown(folder, self.uid, self.gid if self.gid is not None else -1)
            folder.chmod(0o700)


def start_process(
    name: str, command: list[str], log: Path, env: dict[str, str] | None = None, **kwargs: Any
) -> Component:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as stream:
        process = subprocess.Popen(
            command,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=stream,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own group: Ctrl-C reaches us, and we stop the components in order
            **kwargs,
        )
    return Component(name, process, log)


def stop_components(components: Sequence[Component], timeout: float = STOP_TIMEOUT_S) -> None:
    """Each component's stop signal to every group at once, then SIGKILL what is still there after ``timeout``."""
    for component in components:
        if component.alive():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(component.process.pid, component.stop_signal)
    deadline = time.monotonic() + timeout
    for component in components:
        with contextlib.suppress(subprocess.TimeoutExpired):
            component.process.wait(max(0.1, deadline - time.monotonic()))
    for component in components:
        # a worker's task processes share its group and may outlive it
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(component.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            component.process.wait(5)


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# ---------------------------------------------------------------------------------------------------------------
# Redis and PostgreSQL


def start_redis(folder: Path, port: int, log: Path) -> Component:
    """redis-server on loopback, no RDB snapshots and no AOF: a broker's queue for one session."""
    folder.mkdir(parents=True, exist_ok=True)
    command = [find_binary("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder)]
    command += ["--save", "", "--appendonly", "no", "--daemonize", "no", "--protected-mode", "yes"]
    return start_process("redis", command, log)


def wait_for_redis(component: Component, port: int, timeout: float = SERVICE_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not component.alive():
            raise ServiceError(f"redis-server exited with code {component.process.returncode}:\n{tail(component.log)}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            if sock.recv(16).startswith(b"+PONG"):
                return
        time.sleep(0.2)
    raise ServiceError(f"redis-server did not answer PING on port {port} within {timeout:.0f}s")


def postgres_data_dir(workdir: Path, owner: Owner) -> tuple[Path, bool]:
    """``<workdir>/pg`` (kept between starts), or a temporary folder (removed at stop) when ``owner`` cannot
    reach ``workdir``, e.g. pytest's private temporary folders as root."""
    if owner.can_enter(workdir):
        return workdir / "pg", False
    folder = Path(tempfile.mkdtemp(prefix="didomi-dynamics-pg-"))
    owner.take(folder)
    return folder / "data", True


def init_postgres(data: Path, owner: Owner, log: Path) -> None:
    """initdb once: user ``airflow``, trust auth (the server listens on loopback only), UTF-8."""
    if (data / "PG_VERSION").exists():
        return
    data.mkdir(parents=True, exist_ok=True)
    owner.take(data)
    command = [find_binary("initdb"), "-D", str(data), "-U", DB_USER, "-A", "trust", "-E", "UTF8", "--no-sync"]
    with open(log, "ab") as stream:
        done = subprocess.run(command, stdout=stream, stderr=subprocess.STDOUT, cwd="/", **owner.popen_kwargs())
    if done.returncode != 0:
        raise ServiceError(f"initdb failed (exit {done.returncode}):\n{tail(log)}")


def start_postgres(data: Path, port: int, owner: Owner, log: Path) -> Component:
    """postgres on loopback TCP only (no Unix socket to place); durability off: a local, throw-away database."""
    command = [find_binary("postgres"), "-D", str(data), "-p", str(port), "-c", "listen_addresses=127.0.0.1"]
    for setting in ("unix_socket_directories=", "fsync=off", "synchronous_commit=off", "full_page_writes=off"):
        command += ["-c", setting]
    command += ["-c", "max_connections=200"]
    component = start_process("postgres", command, log, cwd="/", **owner.popen_kwargs())
    # SIGINT is PostgreSQL's fast shutdown; SIGTERM (smart) would wait for every client, this process included
    component.stop_signal = signal.SIGINT
    return component


def wait_for_postgres(component: Component, port: int, timeout: float = SERVICE_TIMEOUT_S) -> None:
    """Wait until the server accepts connections, then create the database ``airflow`` if it is missing."""
    import psycopg2

    deadline = time.monotonic() + timeout
    while True:
        if not component.alive():
            raise ServiceError(f"postgres exited with code {component.process.returncode}:\n{tail(component.log)}")
        try:
            connection = psycopg2.connect(host="127.0.0.1", port=port, user=DB_USER, dbname="postgres")
            break
        except psycopg2.OperationalError:
            if time.monotonic() > deadline:
                raise ServiceError(
                    f"postgres did not accept connections on port {port} within {timeout:.0f}s"
                ) from None
            time.sleep(0.3)
    try:
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DB_NAME,))
            if cursor.fetchone() is None:
                cursor.execute(f'CREATE DATABASE "{DB_NAME}"')
    finally:
        connection.close()


# ---------------------------------------------------------------------------------------------------------------
# Airflow's configuration


@dataclass
class Ports:
    api: int
    redis: int = field(default_factory=free_port)
    postgres: int = field(default_factory=free_port)


@dataclass
class Backends:
    """Where the broker and the metadata database are: None for each server this command starts itself."""

    broker_url: str | None = None
    database_url: str | None = None

    def resolved(self, ports: Ports) -> tuple[str, str]:
        """The broker URL and the SQLAlchemy URL (``postgresql+psycopg2://``) every component uses."""
        broker = self.broker_url or f"redis://127.0.0.1:{ports.redis}/0"
        database = self.database_url or f"postgresql://{DB_USER}@127.0.0.1:{ports.postgres}/{DB_NAME}"
        return broker, psycopg2_url(database)


def psycopg2_url(url: str) -> str:
    """``postgresql://`` / ``postgres://`` as ``postgresql+psycopg2://``: SQLAlchemy 2.1 reads a bare
    ``postgresql://`` as psycopg 3, which the [celery] extra does not bring."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("postgresql", "postgres", "postgresql+psycopg2"):
        raise ServiceError(f"--database-url must be a postgresql:// URL, not {masked(url)}")
    return f"postgresql+psycopg2://{rest}"


def masked(url: str) -> str:
    """``url`` with its password replaced by ``***``: the banner and errors never print a secret."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def check_broker(url: str) -> None:
    """PING an external Redis once, so a wrong URL fails now rather than as a worker that never gets ready."""
    import redis

    try:
        redis.Redis.from_url(url, socket_connect_timeout=5).ping()
    except (redis.RedisError, ValueError) as err:
        raise ServiceError(f"Redis at {masked(url)} did not answer PING: {err}") from None


def check_database(url: str) -> None:
    """Connect to an external PostgreSQL once: a wrong URL or password fails now, with the server's words."""
    import psycopg2

    try:
        psycopg2.connect(url.replace("postgresql+psycopg2://", "postgresql://", 1), connect_timeout=5).close()
    except psycopg2.Error as err:
        raise ServiceError(f"PostgreSQL at {masked(url)}: {str(err).strip()}") from None


def deployment_secrets(workdir: Path) -> dict[str, str]:
    """The Fernet key and JWT secret every component must share (connections' passwords, task tokens); kept in
    ``<workdir>/secrets.json`` so a restart can still read what the database holds."""
    path = workdir / SECRETS_FILE
    with contextlib.suppress(OSError, ValueError):
        stored = json.loads(path.read_text())
        if {"fernet_key", "jwt_secret"} <= set(stored):
            return {k: str(stored[k]) for k in ("fernet_key", "jwt_secret")}
    from cryptography.fernet import Fernet

    values = {"fernet_key": Fernet.generate_key().decode(), "jwt_secret": secrets.token_urlsafe(32)}
    path.write_text(json.dumps(values))
    path.chmod(0o600)
    return values


def celery_settings(broker_url: str, database_url: str, keys: dict[str, str]) -> dict[str, str]:
    """The ``AIRFLOW__*`` values that make this a CeleryExecutor deployment on Redis and PostgreSQL
    (``database_url`` as :func:`psycopg2_url` writes it; it is Celery's result backend too)."""
    return {
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": database_url,
        "AIRFLOW__CELERY__BROKER_URL": broker_url,
        "AIRFLOW__CELERY__RESULT_BACKEND": f"db+{database_url}",
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(WORKER_CONCURRENCY),
        "AIRFLOW__CORE__HOSTNAME_CALLABLE": HOSTNAME_CALLABLE,
        "AIRFLOW__CORE__FERNET_KEY": keys["fernet_key"],
        "AIRFLOW__API_AUTH__JWT_SECRET": keys["jwt_secret"],
        "AIRFLOW__CORE__TEST_CONNECTION": "Enabled",
        # one API server process is plenty here (the default starts several)
        "AIRFLOW__API__WORKERS": "1",
    }


def airflow_commands(workdir: Path, port: int) -> dict[str, list[str]]:
    """Each component's command line (``python -m airflow`` of this interpreter), by component name."""
    airflow = [sys.executable, "-m", "airflow"]
    commands = {
        "dag-processor": [*airflow, "dag-processor"],
        "scheduler": [*airflow, "scheduler"],
        "api-server": [*airflow, "api-server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
    }
    for name in WORKERS:
        commands[name] = [
            *airflow,
            "celery",
            "worker",
            "--celery-hostname",
            f"{name}@%h",  # two workers on one machine: distinct Celery node names
            "--concurrency",
            str(WORKER_CONCURRENCY),
            "--pid",
            str(workdir / "run" / f"{name}.pid"),
            "--skip-serve-logs",  # same machine, same log folder: the API server reads the files directly
        ]
    return commands


def migrate(env: dict[str, str], log: Path) -> None:
    with open(log, "ab") as stream:
        done = subprocess.run(
            [sys.executable, "-m", "airflow", "db", "migrate"], env=env, stdout=stream, stderr=subprocess.STDOUT
        )
    if done.returncode != 0:
        raise ServiceError(f"airflow db migrate failed (exit {done.returncode}):\n{tail(log)}")


def wait_until_ready(
    components: dict[str, Component], port: int, home: Path, stop: threading.Event, timeout: float = READY_TIMEOUT_S
) -> str | None:
    """None once the API server reports a healthy database, scheduler and DAG processor, the password file exists
    and both workers said ``ready``; else why not."""
    from airflow_provider_didomi_dynamics.local.standalone import PASSWORDS_FILE

    deadline = time.monotonic() + timeout
    url = f"http://127.0.0.1:{port}/api/v2/monitor/health"
    while time.monotonic() < deadline:
        if stop.is_set():
            return "stopped before Airflow was ready"
        for component in components.values():
            if not component.alive():
                return (
                    f"{component.name} exited with code {component.process.returncode}; "
                    f"last lines of {component.log}:\n{tail(component.log)}"
                )
        healthy = False
        with contextlib.suppress(OSError, urllib.error.URLError, ValueError):
            with urllib.request.urlopen(url, timeout=2) as response:
                health = json.loads(response.read())
            healthy = all(
                (health.get(part) or {}).get("status") == "healthy"
                for part in ("metadatabase", "scheduler", "dag_processor")
            )
        workers_ready = all(" ready." in tail(components[name].log, 200) for name in WORKERS)
        if healthy and workers_ready and (home / PASSWORDS_FILE).exists():
            return None
        stop.wait(1.0)
    return f"Airflow was not ready within {timeout:.0f}s (health: {url}; logs: {home.parent / 'logs'})"


# ---------------------------------------------------------------------------------------------------------------
# the command


def _installed(distribution: str) -> bool:
    try:
        importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def main(
    workdir: Path = DEFAULT_WORKDIR,
    port: int | None = None,
    users: int | None = None,
    backends: Backends | None = None,
) -> int:
    """Start everything; return when stopped (Ctrl-C / SIGTERM), 0, or 1 after a failure."""
    from airflow_provider_didomi_dynamics.local.standalone import port_in_use

    workdir = Path(workdir).resolve()
    missing = [name for name in CELERY_EXTRA if not _installed(name)]
    if missing:
        print(
            "airflow-celery needs the optional extra: pip install 'airflow-provider-didomi-dynamics[celery]' "
            f"(missing: {', '.join(missing)})",
            file=sys.stderr,
        )
        return 1
    port = port or int(os.environ.get("AIRFLOW__API__PORT") or DEFAULT_PORT)
    if port_in_use(port):
        print(
            f"port {port} is already in use: stop what runs there or choose another one "
            f"(didomi-dynamics airflow-celery --port {port + 1})",
            file=sys.stderr,
        )
        return 1
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = _run(workdir, Ports(api=port), backends or Backends(), users, stop)
    except ServiceError as err:
        print(f"airflow-celery: {err}", file=sys.stderr)
        code = 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print("stopped." if code == 0 else "stopped after an error (see above).", flush=True)
    return code


def _run(workdir: Path, ports: Ports, backends: Backends, users: int | None, stop: threading.Event) -> int:
    from airflow_provider_didomi_dynamics.emulators.demo_data import DEMO_USERS
    from airflow_provider_didomi_dynamics.emulators.runner import RunningEmulators
    from airflow_provider_didomi_dynamics.local.standalone import (
        CONFIG_VARIABLE,
        demo_config,
        pool_names,
        standalone_env,
        write_metadata,
    )
    from airflow_provider_didomi_dynamics.local.testing import prepare_airflow_home

    started = time.monotonic()
    workdir.mkdir(parents=True, exist_ok=True)
    home, logs = workdir / "airflow", workdir / "logs"
    (workdir / "run").mkdir(exist_ok=True)
    broker_url, database_url = backends.resolved(ports)
    own_redis, own_postgres = backends.broker_url is None, backends.database_url is None
    for name in ("redis-server",) * own_redis + ("initdb", "postgres") * own_postgres:
        find_binary(name)  # say what is missing before anything starts

    services: list[Component] = []
    airflow: dict[str, Component] = {}
    owner = Owner.for_postgres()
    data, throwaway = postgres_data_dir(workdir, owner) if own_postgres else (None, False)
    try:
        if own_redis:
            services.append(start_redis(workdir / "redis", ports.redis, logs / "redis.log"))
        if data is not None:
            init_postgres(data, owner, logs / "postgres.log")
            services.append(start_postgres(data, ports.postgres, owner, logs / "postgres.log"))
        if own_redis:
            wait_for_redis(services[0], ports.redis)
            print(f"Redis on 127.0.0.1:{ports.redis}", flush=True)
        else:
            check_broker(broker_url)
            print(f"Redis: {masked(broker_url)} (yours)", flush=True)
        if data is not None:
            wait_for_postgres(services[-1], ports.postgres)
            print(f"PostgreSQL on 127.0.0.1:{ports.postgres} ({data})", flush=True)
        else:
            check_database(database_url)
            print(f"PostgreSQL: {masked(database_url)} (yours)", flush=True)

        prepare_airflow_home(home, migrate=False)
        os.environ.update(celery_settings(broker_url, database_url, deployment_secrets(workdir)))
        env = standalone_env(ports.api)
        print("airflow db migrate (PostgreSQL) ...", flush=True)
        migrate(env, logs / "db-migrate.log")
        if stop.is_set():
            return 0
        with RunningEmulators(workdir / "emulators", seed="demo", demo_users=users or DEMO_USERS) as running:
            endpoints = running.endpoints
            print(f"emulators: Dataverse {endpoints['dataverse_url']}, Didomi {endpoints['didomi_url']}", flush=True)
            write_metadata(endpoints, demo_config(endpoints))
            print(
                f"metadata DB: connections didomi_default + dataverse_default, Variable {CONFIG_VARIABLE}, "
                f"pools {' + '.join(pool_names())}",
                flush=True,
            )
            for name, command in airflow_commands(workdir, ports.api).items():
                component_env = dict(env, **({WORKER_NAME_ENV: name} if name in WORKERS else {}))
                airflow[name] = start_process(name, command, logs / f"{name}.log", env=component_env, cwd=workdir)
            print(f"starting {', '.join(airflow)} (logs: {logs}) ...", flush=True)
            problem = wait_until_ready(airflow, ports.api, home, stop)
            if problem is not None:
                if stop.is_set():
                    return 0
                print(problem, file=sys.stderr)
                return 1
            print_banner(ports.api, (broker_url, database_url), home, endpoints, logs, time.monotonic() - started)
            while not stop.is_set():
                gone = [c for c in airflow.values() if not c.alive()] + [c for c in services if not c.alive()]
                if gone:
                    print(
                        f"{gone[0].name} exited with code {gone[0].process.returncode} (log: {gone[0].log})",
                        file=sys.stderr,
                    )
                    return 1
                stop.wait(1.0)
            print("stopping Airflow, PostgreSQL, Redis and the emulators ...", flush=True)
            stop_components(list(airflow.values()))
            airflow.clear()
    finally:
        stop_components(list(airflow.values()))
        stop_components(list(reversed(services)))
        if throwaway and data is not None:
            shutil.rmtree(data.parent, ignore_errors=True)
    return 0


def print_banner(
    port: int, urls: tuple[str, str], home: Path, endpoints: dict[str, Any], logs: Path, seconds: float
) -> None:
    from airflow_provider_didomi_dynamics.local.standalone import ADMIN_USER, admin_password

    lines = [
        "",
        "=" * 78,
        f"Airflow UI:  http://localhost:{port}",
        f"user:        {ADMIN_USER}",
        f"password:    {admin_password(home)}",
        "",
        f"CeleryExecutor: workers {', '.join(WORKERS)} (a task's hostname ends with its worker's name)",
        f"broker:      {masked(urls[0])}",
        f"database:    {masked(urls[1])}",
        "DAGs: didomi_to_dynamics, dynamics_to_didomi (paused; trigger them from the UI)",
        f"a person's edit: didomi-dynamics edit-contacts 3 --state-dir {home.parent / 'emulators'}",
        f"emulators:   Dataverse {endpoints['dataverse_url']}   Didomi {endpoints['didomi_url']}",
        f"logs:        {logs}",
        f"ready in {seconds:.0f} s. Ctrl-C stops everything.",
        "=" * 78,
        "",
    ]
    print("\n".join(lines), flush=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``didomi-dynamics airflow-celery`` and ``python -m ...local.celery``."""
    parser.add_argument(
        "--workdir",
        default=str(DEFAULT_WORKDIR),
        help="where AIRFLOW_HOME, PostgreSQL's data, emulator files and logs go",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=None,
        help=f"API server / UI port (default: $AIRFLOW__API__PORT, else {DEFAULT_PORT})",
    )
    parser.add_argument("--users", type=int, default=None, help="demo Didomi users to seed (default 5000)")
    add_backend_arguments(parser)


def add_backend_arguments(parser: argparse.ArgumentParser) -> None:
    """``--broker-url`` / ``--database-url``: your own Redis / PostgreSQL instead of the ones started here."""
    parser.add_argument(
        "--broker-url",
        default=None,
        help="your Redis (redis://[:password@]host:port/db) instead of starting redis-server here",
    )
    parser.add_argument(
        "--database-url",
        default=None,
        help="your PostgreSQL database (postgresql://user:password@host:port/db, a dedicated one: it is migrated "
        "and its connections, Variable and pools overwritten) instead of starting PostgreSQL here",
    )


def backends_of(args: argparse.Namespace) -> Backends:
    return Backends(broker_url=args.broker_url, database_url=args.database_url)


def cli(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m airflow_provider_didomi_dynamics.local.celery",
        description="Run Airflow with CeleryExecutor (Redis, PostgreSQL, two workers) wired to the emulators.",
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    return main(Path(args.workdir), port=args.port, users=args.users, backends=backends_of(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(cli())
