"""Serve an emulator's ASGI app over HTTPS on a loopback port, in a background thread or in the foreground."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

from airflow_provider_didomi_dynamics.emulators.common.tls import TlsMaterial

LOOPBACK = "127.0.0.1"


def _bind(host: str, port: int) -> socket.socket:
    # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY only on accepted sockets whose proto says TCP; without it
    # Nagle holds a small response's second TLS record until the client's delayed ACK (~40 ms per request).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


class _ThreadedServer(uvicorn.Server):
    """uvicorn server that does not take over signal handling (it runs beside the caller's code)."""

    def install_signal_handlers(self) -> None:  # uvicorn < 0.29
        return None

    @contextmanager
    def capture_signals(self) -> Iterator[None]:  # uvicorn >= 0.29
        yield


class EmulatorServer:
    """One HTTPS listener for one ASGI app; ``url`` is known as soon as the socket is bound."""

    def __init__(self, app: Any, tls: TlsMaterial | None, host: str = LOOPBACK, port: int = 0) -> None:
        self._socket = _bind(host, port)
        self.host = host
        self.port: int = self._socket.getsockname()[1]
        scheme = "https" if tls else "http"
        # "localhost" matches the certificate's DNS name and keeps URLs readable.
        self.url = f"{scheme}://localhost:{self.port}"
        config_kwargs: dict[str, Any] = {
            "app": app,
            "log_level": "warning",
            "access_log": False,
            "lifespan": "off",
            "timeout_keep_alive": 30,
            "limit_concurrency": 4096,
            "backlog": 2048,
        }
        if tls:
            config_kwargs["ssl_certfile"] = str(tls.cert_file)
            config_kwargs["ssl_keyfile"] = str(tls.key_file)
        self._server = _ThreadedServer(uvicorn.Config(**config_kwargs))
        self._thread: threading.Thread | None = None

    def start(self) -> EmulatorServer:
        """Serve in a daemon thread and return once the server accepts connections."""
        self._thread = threading.Thread(target=self._run, name=f"emulator-{self.port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 15
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError(f"emulator on port {self.port} did not start")
            time.sleep(0.01)
        return self

    def _run(self) -> None:
        asyncio.run(self._server.serve(sockets=[self._socket]))

    def serve_forever(self) -> None:
        """Serve in the calling thread until SIGINT/SIGTERM (the console script's foreground mode)."""
        server = uvicorn.Server(self._server.config)
        asyncio.run(server.serve(sockets=[self._socket]))

    def stop(self, grace_s: float = 5.0) -> None:
        """Let requests in flight finish (up to ``grace_s``), then close idle keep-alive connections at once.

        A graceful uvicorn shutdown also waits for each idle TLS client to answer close_notify, which a pooled
        requests session never does: without ``force_exit`` every stop took the full join timeout.
        """
        self._server.should_exit = True
        if self._thread is not None:
            deadline = time.monotonic() + grace_s
            while self._server.server_state.tasks and time.monotonic() < deadline:
                time.sleep(0.01)
            self._server.force_exit = True
            self._thread.join(timeout=10)
        self._socket.close()

    def __enter__(self) -> EmulatorServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
