"""Raw-HTTP helpers shared by the Dataverse emulator tests (imported by conftest and test modules)."""

from __future__ import annotations

from typing import Any

import requests

from airflow_provider_didomi_dynamics.emulators.dataverse import DataverseEmulator


class VerifyingSession(requests.Session):
    """A requests session that verifies with a given CA even when REQUESTS_CA_BUNDLE is set."""

    def __init__(self, ca_file: str) -> None:
        super().__init__()
        self.ca_file = ca_file

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        kwargs.setdefault("verify", self.ca_file)
        return super().request(method, url, *args, **kwargs)


class Api:
    """Raw-HTTP helper bound to one application user: token, base URL, standard OData headers."""

    def __init__(self, dv: DataverseEmulator, client_id: str, client_secret: str) -> None:
        self.dv = dv
        self.http = VerifyingSession(str(dv.ca_file))
        self.client_id = client_id
        self.client_secret = client_secret
        self.base = dv.api_url
        self.token = self.fetch_token()

    def fetch_token(self) -> str:
        response = self.http.post(
            f"{self.dv.authority}/oauth2/v2.0/token",
            data={
                "client_id": self.client_id,
                "client_secret": self.client_secret,
                "grant_type": "client_credentials",
                "scope": self.dv.scope,
            },
        )
        response.raise_for_status()
        return str(response.json()["access_token"])

    def headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers = {
            "Authorization": f"Bearer {self.token}",
            "Accept": "application/json",
            "OData-MaxVersion": "4.0",
            "OData-Version": "4.0",
            "If-None-Match": "null",
        }
        headers.update(extra or {})
        return headers

    def url(self, path: str) -> str:
        return path if path.startswith("https://") else self.base + path

    def get(self, path: str, headers: dict[str, str] | None = None, **kw: Any) -> requests.Response:
        return self.http.get(self.url(path), headers=self.headers(headers), **kw)

    def post(self, path: str, json: Any = None, headers: dict[str, str] | None = None, **kw: Any) -> requests.Response:
        return self.http.post(self.url(path), json=json, headers=self.headers(headers), **kw)

    def patch(self, path: str, json: Any = None, headers: dict[str, str] | None = None, **kw: Any) -> requests.Response:
        return self.http.patch(self.url(path), json=json, headers=self.headers(headers), **kw)

    def delete(self, path: str, headers: dict[str, str] | None = None, **kw: Any) -> requests.Response:
        return self.http.delete(self.url(path), headers=self.headers(headers), **kw)

    def create(self, body: dict[str, Any]) -> str:
        response = self.post("contacts", json=body)
        assert response.status_code == 204, response.text
        return response.headers["OData-EntityId"].rsplit("(", 1)[1].rstrip(")")
