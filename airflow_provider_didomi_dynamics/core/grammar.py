"""The column grammar: how a Didomi consent field is named as one flat column.

| column | Didomi field |
| --- | --- |
| ``organization_user_id``, ``user_id``, ``created_at``, ``updated_at``, ``country`` | the user's own fields |
| ``metadata_<key>`` | ``user.metadata[key]`` |
| ``consents_purposes_<purpose>_enabled`` | purpose consent (true / false / null = no choice) |
| ``consents_purposes_<purpose>_enabled_li`` | purpose legitimate interest |
| ``consents_purposes_<purpose>_values_<preference>`` | selected value ids, comma-separated |
| ``consents_purposes_<purpose>_values_<preference>_<value>_enabled`` | is that value selected |
| ``consents_channels_<channel>_enabled`` | channel consent |
| ``consents_vendors_<vendor>_enabled`` | vendor consent |

Ids may contain ``_``: the kind of a column is read from its fixed prefix and suffix; a value flag is split
between preference and value by the known preference ids when given, else at the last ``_``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

from airflow_provider_didomi_dynamics.exceptions import GrammarError


class FieldKind(str, Enum):
    """What a column names in the Didomi consent user."""

    USER_FIELD = "user_field"
    METADATA = "metadata"
    PURPOSE_ENABLED = "purpose_enabled"
    PURPOSE_ENABLED_LI = "purpose_enabled_li"
    PREFERENCE_VALUES = "preference_values"
    PREFERENCE_VALUE_ENABLED = "preference_value_enabled"
    CHANNEL_ENABLED = "channel_enabled"
    VENDOR_ENABLED = "vendor_enabled"


# The kinds whose column holds true / false / null (no choice): the only ones ``invert`` and consent rows apply to.
BOOLEAN_KINDS = frozenset(
    {
        FieldKind.PURPOSE_ENABLED,
        FieldKind.PURPOSE_ENABLED_LI,
        FieldKind.PREFERENCE_VALUE_ENABLED,
        FieldKind.CHANNEL_ENABLED,
        FieldKind.VENDOR_ENABLED,
    }
)
USER_FIELDS = ("organization_user_id", "user_id", "created_at", "updated_at", "country")
READ_ONLY_USER_FIELDS = ("user_id", "created_at", "updated_at", "country")

_ID = r"[^\s]+?"
_PURPOSE_VALUE_FLAG = re.compile(rf"^consents_purposes_(?P<purpose>{_ID})_values_(?P<rest>.+)_enabled$")
_PURPOSE_VALUES = re.compile(rf"^consents_purposes_(?P<purpose>{_ID})_values_(?P<preference>.+)$")
_PURPOSE_LI = re.compile(r"^consents_purposes_(?P<purpose>.+)_enabled_li$")
_PURPOSE = re.compile(r"^consents_purposes_(?P<purpose>.+)_enabled$")
_CHANNEL = re.compile(r"^consents_channels_(?P<channel>.+)_enabled$")
_VENDOR = re.compile(r"^consents_vendors_(?P<vendor>.+)_enabled$")
_METADATA = re.compile(r"^metadata_(?P<key>.+)$")


@dataclass(frozen=True)
class FieldRef:
    """A parsed column name: its kind and the ids it refers to."""

    kind: FieldKind
    name: str | None = None  # user field name or metadata key
    purpose: str | None = None
    preference: str | None = None
    value: str | None = None
    channel: str | None = None
    vendor: str | None = None

    @property
    def column(self) -> str:
        return column_name(self)

    @property
    def is_boolean(self) -> bool:
        """Whether the column holds true / false / null (no choice)."""
        return self.kind in BOOLEAN_KINDS


def column_name(ref: FieldRef) -> str:
    """The flat column for a field reference (the inverse of :func:`parse_column`)."""
    kind = ref.kind
    if kind is FieldKind.USER_FIELD:
        return str(ref.name)
    if kind is FieldKind.METADATA:
        return f"metadata_{ref.name}"
    if kind is FieldKind.PURPOSE_ENABLED:
        return f"consents_purposes_{ref.purpose}_enabled"
    if kind is FieldKind.PURPOSE_ENABLED_LI:
        return f"consents_purposes_{ref.purpose}_enabled_li"
    if kind is FieldKind.PREFERENCE_VALUES:
        return f"consents_purposes_{ref.purpose}_values_{ref.preference}"
    if kind is FieldKind.PREFERENCE_VALUE_ENABLED:
        return f"consents_purposes_{ref.purpose}_values_{ref.preference}_{ref.value}_enabled"
    if kind is FieldKind.CHANNEL_ENABLED:
        return f"consents_channels_{ref.channel}_enabled"
    return f"consents_vendors_{ref.vendor}_enabled"


def parse_column(column: str, known_preferences: Iterable[str] = ()) -> FieldRef:
    """Parse a flat column name; ``known_preferences`` disambiguates value flags whose ids contain ``_``."""
    if not isinstance(column, str) or not column:
        raise GrammarError("must be a non-empty string")
    if column in USER_FIELDS:
        return FieldRef(FieldKind.USER_FIELD, name=column)
    if m := _METADATA.match(column):
        return FieldRef(FieldKind.METADATA, name=m["key"])
    if m := _PURPOSE_VALUE_FLAG.match(column):
        preference, value = _split_preference_value(m["rest"], known_preferences)
        return FieldRef(FieldKind.PREFERENCE_VALUE_ENABLED, purpose=m["purpose"], preference=preference, value=value)
    if m := _PURPOSE_VALUES.match(column):
        return FieldRef(FieldKind.PREFERENCE_VALUES, purpose=m["purpose"], preference=m["preference"])
    if m := _PURPOSE_LI.match(column):
        return FieldRef(FieldKind.PURPOSE_ENABLED_LI, purpose=m["purpose"])
    if m := _PURPOSE.match(column):
        return FieldRef(FieldKind.PURPOSE_ENABLED, purpose=m["purpose"])
    if m := _CHANNEL.match(column):
        return FieldRef(FieldKind.CHANNEL_ENABLED, channel=m["channel"])
    if m := _VENDOR.match(column):
        return FieldRef(FieldKind.VENDOR_ENABLED, vendor=m["vendor"])
    raise GrammarError(
        f"{column!r} is not a Didomi consent column; expected e.g. consents_purposes_<purpose>_enabled, "
        "consents_channels_<channel>_enabled or metadata_<key> (see the README's grammar table)"
    )


def _split_preference_value(rest: str, known_preferences: Iterable[str]) -> tuple[str, str]:
    for preference in sorted(known_preferences, key=len, reverse=True):
        if rest.startswith(preference + "_") and len(rest) > len(preference) + 1:
            return preference, rest[len(preference) + 1 :]
    if "_" not in rest:
        raise GrammarError(
            f"value flag '..._values_{rest}_enabled' needs both a preference and a value id: "
            "write consents_purposes_<purpose>_values_<preference>_<value>_enabled"
        )
    preference, value = rest.rsplit("_", 1)
    return preference, value
