"""OData text for the Dataverse Web API: query-value quoting, string literals, ``In`` filters and their chunking to
the URL-length limits, datetime literals.

Pure functions (no I/O): the hook builds URLs with them, and a caller that writes its own ``$filter`` uses the
same quoting, so a key such as ``o'brian+tag@x.com`` means the same thing everywhere.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Sequence
from urllib.parse import quote

MAX_PAGE_SIZE = 5000
MAX_URL_LENGTH = 32_768
# A request inside a $batch body may have a URL of up to 64 KB (Microsoft, "Execute batch operations using the
# Web API").
MAX_BATCH_URL_LENGTH = 65_536
# Room left for the $skiptoken Dataverse appends to a nextLink when a lookup spans more than one page.
NEXT_LINK_MARGIN = 2_048
# Characters left readable in query values; everything else (& # + % " [ ] space, non-ASCII...) is percent-encoded.
_QUERY_SAFE = "$,()'=:@/*!"
_UNRESERVED = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-~"
_ASCII_QUOTE = str.maketrans(
    {chr(c): chr(c) if chr(c) in _UNRESERVED + _QUERY_SAFE else f"%{c:02X}" for c in range(128)}
)
_PLAIN_VALUE = re.compile(r"[A-Za-z0-9_.~@$,()'=:/*!-]*")


def quote_value(value: str) -> str:
    """Percent-encode one query value; ``+`` and ``&`` must not survive or the server reads a space / a new param.

    ASCII goes through one ``str.translate`` (a 60 KB lookup filter per request makes ``quote`` show in profiles).
    """
    if value.isascii():
        return value.translate(_ASCII_QUOTE)
    return quote(value, safe=_QUERY_SAFE)


def encoded_json_length(value: str) -> int:
    """Length of ``value`` as a percent-encoded JSON string; plain ASCII skips the (slow) encoder."""
    if _PLAIN_VALUE.fullmatch(value):
        return len(value) + 6  # the two double quotes become %22
    return len(quote_value(json.dumps(value, ensure_ascii=False)))


def odata_string(value: str) -> str:
    """An OData string literal: single quotes, inner quotes doubled (``'O''Brian'``)."""
    return "'" + value.replace("'", "''") + "'"


def odata_datetime(value: dt.datetime) -> str:
    """An OData ``DateTimeOffset`` literal in UTC, to the millisecond Dataverse stores (``2024-05-01T10:00:00Z``)."""
    value = value.astimezone(dt.timezone.utc)
    text = value.strftime("%Y-%m-%dT%H:%M:%S")
    if value.microsecond:
        text += f".{value.microsecond // 1000:03d}"
    return text + "Z"


def key_path_is_safe(value: str) -> bool:
    """Whether a value can address a row by alternate key: Dataverse rejects these characters in key paths."""
    return bool(value) and not any(c in value for c in '/<>*%&:\\?+#"') and len(value) <= 200


def in_filter(attribute: str, values: Sequence[str]) -> str:
    """``Microsoft.Dynamics.CRM.In``; values as a JSON string array, so quotes and backslashes are JSON-escaped."""
    array = json.dumps(list(values), ensure_ascii=False, separators=(",", ":"))
    return f"Microsoft.Dynamics.CRM.In(PropertyName={odata_string(attribute)},PropertyValues={array})"


def chunk_in_values(
    values: Sequence[str],
    key_attribute: str,
    empty_url_length: int,
    max_url_length: int,
    max_values: int = MAX_PAGE_SIZE,
) -> list[list[str]]:
    """Split ``values`` so each ``In`` query URL, percent-encoded, stays within ``max_url_length``.

    ``empty_url_length`` is the length of the same URL with an empty value array; at most ``max_values`` per chunk
    so one page answers it.
    """
    budget = max_url_length - empty_url_length
    chunks: list[list[str]] = []
    current: list[str] = []
    used = 0
    for value in values:
        cost = encoded_json_length(value) + (1 if current else 0)
        if cost > budget:
            raise ValueError(
                f"a {key_attribute} value of {len(value)} characters cannot fit in one lookup URL "
                f"({max_url_length} characters)"
            )
        if current and (used + cost > budget or len(current) >= max_values):
            chunks.append(current)
            current, used = [], 0
            cost -= 1
        current.append(value)
        used += cost
    if current:
        chunks.append(current)
    return chunks
