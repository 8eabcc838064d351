"""One copy of each value coercion: flags, text, timestamps, id lists and JSON-ready values.

Values reach the provider as rendered templates (``"False"``), run params, pandas cells (``pd.NA``, NaN, numpy
scalars) and API JSON. Each kind is read here, with one accepted set of spellings, so a flag means the same in a
param, a Dataverse cell and a retry row. No pandas import: pandas' missing values are recognised by type name.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import uuid
from collections.abc import Iterable
from typing import Any

from airflow_provider_didomi_dynamics.exceptions import ParamError

TRUE_TEXTS = frozenset({"true", "1", "yes", "y", "on"})
FALSE_TEXTS = frozenset({"false", "0", "no", "n", "off"})
EMPTY_TEXTS = frozenset({"", "none", "null"})
_MISSING_TYPES = ("NAType", "NaTType")


def is_missing(value: Any) -> bool:
    """None, NaN, ``pd.NA`` or ``pd.NaT``: how JSON, floats and pandas spell "no value"."""
    if value is None:
        return True
    if isinstance(value, float):
        return math.isnan(value)
    return type(value).__name__ in _MISSING_TYPES


def flag(value: Any, name: str = "flag") -> bool:
    """A templated or param flag: rendered templates arrive as text, so ``"False"`` must stay false.

    Empty text and ``none`` / ``null`` mean false (a param left blank); anything else that is not a flag is an
    error naming ``name``, never a silent false.
    """
    if isinstance(value, bool):
        return value
    if is_missing(value):
        return False
    if isinstance(value, str):
        text = value.strip().lower()
        if text in TRUE_TEXTS:
            return True
        if text in FALSE_TEXTS or text in EMPTY_TEXTS:
            return False
        raise ParamError(f"{name}: {value!r} is not true or false")
    if isinstance(value, int | float) or hasattr(value, "item"):
        return bool(value)
    raise ParamError(f"{name}: {value!r} is not true or false")


def tri_state(value: Any) -> bool | None:
    """A consent flag from Dataverse, a frame or JSON: True, False or None (no choice); ValueError otherwise."""
    if value is None or value is True or value is False:
        return value
    if is_missing(value):
        return None
    item = getattr(value, "item", None)  # numpy scalars
    if callable(item) and not isinstance(value, str):
        value = item()
        if value is True or value is False:
            return value
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in TRUE_TEXTS:
            return True
        if text in FALSE_TEXTS:
            return False
    raise ValueError(f"{value!r} is not true or false")


def text_or_none(value: Any, *, strip: bool = True) -> str | None:
    """A cell as text, or None when missing (or empty, when stripping)."""
    if is_missing(value):
        return None
    text = str(value)
    if strip:
        text = text.strip()
        return text or None
    return text


def optional_number(value: Any) -> float | None:
    """A templated number: empty, ``none`` or ``null`` mean not set."""
    if is_missing(value) or (isinstance(value, str) and value.strip().lower() in EMPTY_TEXTS):
        return None
    return float(value)


# ---- timestamps ---------------------------------------------------------------------------------------------------


def as_utc(value: Any) -> dt.datetime | None:
    """A datetime, ``pd.Timestamp`` or ISO 8601 text as an aware UTC datetime (naive means UTC); None when
    missing or unreadable."""
    if is_missing(value):
        return None
    if isinstance(value, dt.datetime):
        to_python = getattr(value, "to_pydatetime", None)  # pandas Timestamp
        moment = to_python() if callable(to_python) else value
    elif isinstance(value, str) and value:
        try:
            moment = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            return None
    else:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.timezone.utc)
    return moment.astimezone(dt.timezone.utc)


def utc_or_none(text: Any) -> dt.datetime | None:
    """An API's ISO 8601 timestamp (text only) as an aware UTC datetime; None when absent or unreadable."""
    return as_utc(text) if isinstance(text, str) else None


def parse_instant(value: Any, name: str) -> dt.datetime | None:
    """A person's ISO 8601 instant (a param, a context value) as aware UTC; empty means not given, junk is an error
    naming ``name``. Airflow hands context values such as ``prev_data_interval_end_success`` as lazy proxies."""
    value = getattr(value, "__wrapped__", value)
    if is_missing(value) or (isinstance(value, str) and value.strip().lower() in EMPTY_TEXTS):
        return None
    moment = as_utc(value if isinstance(value, dt.datetime) else str(value))
    if moment is None:
        from airflow_provider_didomi_dynamics.exceptions import WindowError

        raise WindowError(f"{name}: {value!r} is not an ISO 8601 date-time; use e.g. 2026-11-27T00:00:00Z")
    return moment


def iso_millis(moment: dt.datetime | None) -> str | None:
    """``2026-01-05T10:00:00.123Z``: the form Didomi and Dataverse both write (UTC, milliseconds)."""
    if moment is None:
        return None
    moment = moment.astimezone(dt.timezone.utc) if moment.tzinfo else moment.replace(tzinfo=dt.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def iso_seconds(moment: dt.datetime) -> str:
    """``2026-01-05T10:00:00Z``: a datetime column value as Dataverse takes it."""
    moment = moment.astimezone(dt.timezone.utc) if moment.tzinfo else moment.replace(tzinfo=dt.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


# ---- id lists -----------------------------------------------------------------------------------------------------


def _items(value: Any) -> list[Any]:
    """A list, a JSON list, or comma/newline separated text, as a list; empty text or ``none`` gives []."""
    if is_missing(value):
        return []
    if isinstance(value, str):
        text = value.strip()
        if text.lower() in EMPTY_TEXTS or text == "[]":
            return []
        return json.loads(text) if text.startswith("[") else text.replace("\n", ",").split(",")
    if isinstance(value, Iterable):
        return list(value)
    return [value]


def id_list(value: Any) -> list[str]:
    """Ids (e.g. ``organization_user_ids``) from a list, a JSON list or separated text; blanks and repeats dropped."""
    return list(dict.fromkeys(str(v).strip() for v in _items(value) if not is_missing(v) and str(v).strip()))


def guid_list(value: Any, name: str = "contact_ids", error: type[ParamError] = ParamError) -> list[str]:
    """GUIDs in lower case without repeats, from what :func:`id_list` accepts; a non-GUID names its position."""
    ids: list[str] = []
    for index, raw in enumerate(_items(value)):
        if is_missing(raw) or not str(raw).strip():
            continue
        try:
            ids.append(str(uuid.UUID(str(raw).strip())))
        except ValueError:
            raise error(f"{name}[{index}]: {raw!r} is not a contact GUID") from None
    return list(dict.fromkeys(ids))


# ---- JSON-ready values --------------------------------------------------------------------------------------------


def json_value(value: Any) -> Any:
    """A value JSON can hold: numpy scalars unboxed, NaN / NA / NaT as null, datetimes as ISO text, containers deep."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if isinstance(value, dict):
        return {str(k): json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_value(v) for v in value]
    if is_missing(value):
        return None
    if isinstance(value, dt.datetime | dt.date):  # pandas Timestamp is a datetime
        return value.isoformat()
    item = getattr(value, "item", None)  # numpy scalars
    if callable(item):
        return json_value(item())
    return str(value)
