"""The Didomi emulator's records: identifiers, limits, timestamps and fast JSON copies shared by every layer."""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import gc
import uuid
from collections.abc import Iterator
from typing import Any

import msgspec

DEFAULT_ORGANIZATION_ID = "emulator-org"
DEFAULT_API_KEY = "didomi-emulator-key"
PAGE_SIZE = 100
MAX_EVENTS_PER_REQUEST = 100
EVENT_STATUSES = ("confirmed", "pending_approval", "rejected")

_NAMESPACE = uuid.UUID("5b0f7c0e-2f55-4a8e-9a53-6c9b5f0a1d11")

# A catalogue: purpose id -> preference id -> allowed value ids.
Catalogue = dict[str, dict[str, list[str]]]


def iso(timestamp: float) -> str:
    """Didomi's timestamp format: UTC, millisecond precision, ``Z`` suffix."""
    moment = dt.datetime.fromtimestamp(timestamp, tz=dt.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def parse_iso(value: str) -> float:
    """Parse an ISO 8601 timestamp (``Z`` or offset; naive means UTC) to epoch seconds."""
    moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.timezone.utc)
    return moment.timestamp()


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _dumps(value: Any) -> bytes:
    return _encoder.encode(value)


def _clone(value: Any) -> Any:
    """A deep copy of JSON data, several times faster than ``copy.deepcopy`` (which made 100k-user seeds slow)."""
    return _decoder.decode(_encoder.encode(value))


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cycle collector for bulk loads of JSON data (no cycles; the collector's scans dominate)."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder()
