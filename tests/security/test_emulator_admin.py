"""The emulators' admin endpoints (``/_emulator/...``: endpoints with client secrets, faults, resets) answer loopback
callers only, and the emulators listen on the loopback interface only."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import httpx
import pytest

from airflow_provider_didomi_dynamics.emulators.common.faults import FaultMiddleware
from airflow_provider_didomi_dynamics.emulators.dataverse.http.app import DataverseApp
from airflow_provider_didomi_dynamics.emulators.dataverse.http.wire import error_body
from airflow_provider_didomi_dynamics.emulators.dataverse.models import DataverseModel
from airflow_provider_didomi_dynamics.emulators.didomi.models import DidomiModel
from airflow_provider_didomi_dynamics.emulators.didomi.urls import create_app

REMOTE = ("203.0.113.7", 51515)  # TEST-NET-3: any address that is not loopback
LOOPBACK = ("127.0.0.1", 51515)


def _call(app: Any, client: tuple[str, int], method: str, path: str, body: Any = None) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, client=client)
        async with httpx.AsyncClient(transport=transport, base_url="https://localhost") as http:
            return await http.request(method, path, json=body)

    return asyncio.run(go())


def _dataverse() -> tuple[Any, DataverseModel]:
    model = DataverseModel()
    endpoints = {"client_secret": model.integration.client_secret}
    return FaultMiddleware(DataverseApp(model, lambda: endpoints), model, error_body), model


def _didomi() -> tuple[Any, DidomiModel]:
    model = DidomiModel()
    return create_app(model), model


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/_emulator/endpoints", None),
        ("GET", "/_emulator/state", None),
        ("POST", "/_emulator/faults", {"kind": "status", "status": 503, "count": 5}),
        ("POST", "/_emulator/tokens/expire", None),
    ],
)
def test_dataverse_admin_refuses_a_non_loopback_caller(method: str, path: str, body: Any) -> None:
    app, model = _dataverse()
    answer = _call(app, REMOTE, method, path, body)
    assert answer.status_code == 403
    assert "loopback" in answer.text
    assert model.integration.client_secret not in answer.text
    assert model.faults.faults == []


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/_emulator/dump", None),
        ("POST", "/_emulator/faults", {"kind": "status", "status": 503, "count": 5}),
        ("POST", "/_emulator/expire-tokens", None),
        ("POST", "/_emulator/reset", None),
    ],
)
def test_didomi_admin_refuses_a_non_loopback_caller(method: str, path: str, body: Any) -> None:
    app, model = _didomi()
    model.add_users([{"organization_user_id": "kept@example.com"}])
    answer = _call(app, REMOTE, method, path, body)
    assert answer.status_code == 403
    assert "loopback" in answer.text
    assert model.faults.faults == []
    assert model.user_count() == 1


def test_admin_answers_a_loopback_caller() -> None:
    dataverse, _ = _dataverse()
    didomi, _ = _didomi()
    assert _call(dataverse, LOOPBACK, "GET", "/_emulator/health").status_code == 200
    assert _call(didomi, LOOPBACK, "GET", "/_emulator/health").status_code == 200


def _listening_addresses(port: int) -> set[str]:
    """Local addresses of the listening sockets on ``port`` (Linux /proc), e.g. {"127.0.0.1"}."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        path = Path(table)
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            address, port_hex = fields[1].rsplit(":", 1)
            if int(port_hex, 16) != port or fields[3] != "0A":  # 0A: LISTEN
                continue
            if len(address) == 8:
                found.add(socket.inet_ntop(socket.AF_INET, bytes.fromhex(address)[::-1]))
            else:
                raw = bytes.fromhex(address)
                found.add(socket.inet_ntop(socket.AF_INET6, b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))))
    return found


def test_running_emulators_listen_on_loopback_only(sync_pair: Any) -> None:
    for url in (sync_pair.running.endpoints["dataverse_url"], sync_pair.running.endpoints["didomi_url"]):
        port = httpx.URL(url).port
        assert port is not None
        addresses = _listening_addresses(port)
        assert addresses == {"127.0.0.1"}, f"{url} listens on {addresses}"
        for address in _non_loopback_addresses():
            with pytest.raises(OSError), socket.create_connection((address, port), timeout=2):
                pass


def _non_loopback_addresses() -> list[str]:
    """This host's IPv4 addresses other than loopback (the one a default route would use)."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("203.0.113.1", 9))  # no packet is sent: this only picks the outgoing interface
        address = probe.getsockname()[0]
    except OSError:
        return []
    finally:
        probe.close()
    return [] if address.startswith("127.") else [address]
