"""Who may call the Didomi API: API keys, sessions with expiring JWTs, and the non-consent rate limit."""

from __future__ import annotations

import base64
import collections
import hashlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from airflow_provider_didomi_dynamics.emulators.didomi.errors import DidomiApiError
from airflow_provider_didomi_dynamics.emulators.didomi.models.records import _b64url, _dumps
from airflow_provider_didomi_dynamics.emulators.didomi.models.state import OrgState


@dataclass
class ApiKey:
    """An API key (key + secret) of one organization."""

    key: str
    secret: str
    organization_id: str


@dataclass
class RateLimiter:
    """Sliding window per organization for non-consent routes: ``limit`` requests per ``window_s`` seconds."""

    limit: int = 100
    window_s: float = 15.0
    enabled: bool = True
    clock: Callable[[], float] = time.monotonic
    _hits: dict[str, collections.deque[float]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    throttled: int = 0

    def check(self, key: str) -> float | None:
        """Count one request; ``None`` when allowed, else the seconds until the window lets one through."""
        if not self.enabled:
            return None
        now = self.clock()
        with self._lock:
            hits = self._hits.setdefault(key, collections.deque())
            while hits and hits[0] <= now - self.window_s:
                hits.popleft()
            if len(hits) >= self.limit:
                self.throttled += 1
                return max(hits[0] + self.window_s - now, 0.001)
            hits.append(now)
            return None

    def reset(self) -> None:
        with self._lock:
            self._hits.clear()
            self.throttled = 0


class Access(OrgState):
    """API keys and sessions: create a session from a key, check a bearer token, expire tokens."""

    @property
    def api_key(self) -> ApiKey:
        """The first (default) API key."""
        return next(iter(self.api_keys.values()))

    def add_api_key(self, key: str, secret: str, organization_id: str) -> ApiKey:
        api_key = ApiKey(key, secret, organization_id)
        with self._lock:
            self.api_keys[key] = api_key
        return api_key

    def create_session(self, body: Any) -> dict[str, str]:
        """``POST /v1/sessions``: an api-key login; bad credentials are a 400, as documented."""
        if not isinstance(body, dict) or body.get("type") != "api-key":
            raise DidomiApiError(400, 'body must be {"type": "api-key", "key": ..., "secret": ...}')
        key = body.get("key")
        secret = body.get("secret")
        with self._lock:
            api_key = self.api_keys.get(key) if isinstance(key, str) else None
            if api_key is None or not isinstance(secret, str) or not hmac.compare_digest(api_key.secret, secret):
                raise DidomiApiError(400, "Invalid API key or secret")
            now = self.clock()
            session_id = uuid.uuid4().hex
            expires_at = now + self.token_lifetime_s
            self._sessions[session_id] = expires_at
            self.sessions_created += 1
        header = _b64url(_dumps({"alg": "HS256", "typ": "JWT"}))
        payload = _b64url(
            _dumps(
                {
                    "sub": api_key.key,
                    "organization_id": api_key.organization_id,
                    "sid": session_id,
                    "iat": int(now),
                    "exp": int(expires_at),
                }
            )
        )
        signature = _b64url(hmac.new(self._signing_key, f"{header}.{payload}".encode(), hashlib.sha256).digest())
        return {"access_token": f"{header}.{payload}.{signature}"}

    def authenticate(self, authorization: str | None) -> str:
        """Check a ``Bearer`` token and return its organization id; 401 when missing, forged or expired."""
        if not authorization or not authorization.startswith("Bearer "):
            raise DidomiApiError(401, "No auth token")
        token = authorization[len("Bearer ") :].strip()
        parts = token.split(".")
        if len(parts) != 3:
            raise DidomiApiError(401, "Invalid token")
        expected = _b64url(hmac.new(self._signing_key, f"{parts[0]}.{parts[1]}".encode(), hashlib.sha256).digest())
        if not hmac.compare_digest(expected, parts[2]):
            raise DidomiApiError(401, "Invalid token")
        try:
            payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
        except ValueError:
            raise DidomiApiError(401, "Invalid token") from None
        with self._lock:
            expires_at = self._sessions.get(payload.get("sid", ""))
        if expires_at is None or expires_at <= self.clock():
            raise DidomiApiError(401, "jwt expired")
        return str(payload["organization_id"])

    def expire_tokens(self) -> int:
        """Invalidate every token issued so far (they answer 401 from now on); returns how many there were."""
        with self._lock:
            count = len(self._sessions)
            self._sessions.clear()
        return count
