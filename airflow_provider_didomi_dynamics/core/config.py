"""The integration config: the seed's ``microsoft-dynamics`` JSON, parsed and validated in one pass.

Every problem is reported at once with its JSON path (``mappings[2].value: ...``) so a person fixes a config in
one edit, and the client secret never reaches a repr, a log line or an error message.

``properties.target`` picks what the mappings write: contact attributes (``contact``, the seed's Legacy
integration, the default) or Customer Insights - Journeys' Contact Point Consent rows (``contact_point_consent``,
Didomi's Current integration), where a mapping's ``id`` names a Purpose or Topic record instead of an attribute.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping as MappingABC
from dataclasses import dataclass, replace
from dataclasses import field as dc_field
from enum import Enum
from pathlib import Path
from typing import Any

from airflow_provider_didomi_dynamics.core.grammar import READ_ONLY_USER_FIELDS, FieldKind, FieldRef, parse_column
from airflow_provider_didomi_dynamics.exceptions import ConfigError, GrammarError, Problem

TYPE_ID = "microsoft-dynamics"
DEFAULT_CONTACT_KEY_ATTRIBUTE = "emailaddress1"
VARIABLE_KEY = "didomi_dynamics_config"
_LOGICAL_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")
_SYSTEM_ATTRIBUTES = {"contactid", "createdon", "modifiedon", "versionnumber", "_createdby_value", "_modifiedby_value"}
_GUID = re.compile(r"^\{?([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})\}?$")
# Keys of ``properties`` that only mean something with target contact_point_consent.
_CPC_PROPERTIES = ("contact_point_type", "contact_point_attributes")
_CPC_VALUE_SHAPES = (
    "consents_purposes_<purpose>_enabled (a Purpose), "
    "consents_purposes_<purpose>_values_<preference>_<value>_enabled (a Topic) "
    "or consents_channels_<channel>_enabled (a Purpose on that mapping's contact point)"
)


class Secret:
    """A string that prints as ``***`` wherever it ends up (repr, str, f-strings, logs, exceptions)."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get_secret_value(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


class Direction(str, Enum):
    """Which way a mapping carries values."""

    BOTH = "both"
    TO_DYNAMICS = "to_dynamics"
    TO_DIDOMI = "to_didomi"

    @property
    def forward(self) -> bool:
        return self is not Direction.TO_DIDOMI

    @property
    def reverse(self) -> bool:
        return self is not Direction.TO_DYNAMICS


class NullValues(str, Enum):
    """What a consent with no choice (null) does to the contact column."""

    SKIP = "skip"
    CLEAR = "clear"


class Target(str, Enum):
    """What the mappings write in Dataverse: contact attributes, or Contact Point Consent rows."""

    CONTACT = "contact"
    CONTACT_POINT_CONSENT = "contact_point_consent"


class ContactPointType(str, Enum):
    """The kind of contact point a consent row belongs to (``msdynmkt_contactpointtype``; Custom is not offered)."""

    EMAIL = "email"
    TEXT = "text"
    VOICE = "voice"


class ConsentKind(str, Enum):
    """Which Customer Insights - Journeys record a consent mapping targets."""

    PURPOSE = "purpose"  # msdynmkt_purpose
    TOPIC = "topic"  # msdynmkt_topic


# The contact attribute that holds each contact point's value unless properties.contact_point_attributes says otherwise.
DEFAULT_CONTACT_POINT_ATTRIBUTES: MappingABC[ContactPointType, str] = {
    ContactPointType.EMAIL: "emailaddress1",
    ContactPointType.TEXT: "mobilephone",
    ContactPointType.VOICE: "mobilephone",
}


@dataclass(frozen=True)
class Authentication:
    """Dataverse credentials from the seed's ``authentication`` block."""

    client_id: str
    client_secret: Secret
    tenant_id: str
    instance: str


@dataclass(frozen=True)
class Transform:
    """``invert`` for opt-out columns, or a value map (Didomi value -> Dataverse value) for choice columns."""

    invert: bool = False
    value_map: tuple[tuple[str, Any], ...] = ()

    @property
    def is_identity(self) -> bool:
        return not self.invert and not self.value_map


@dataclass(frozen=True)
class FieldMapping:
    """One mapping: a Dataverse contact attribute (``id``) paired with a Didomi consent column (``value``)."""

    attribute: str
    value: str
    field: FieldRef
    direction: Direction = Direction.BOTH
    transform: Transform = dc_field(default_factory=Transform)


@dataclass(frozen=True)
class ConsentRecordRef:
    """A Purpose or Topic record as a mapping's ``id`` names it: by ``msdynmkt_name`` or by its GUID (lowercase)."""

    name: str | None = None
    guid: str | None = None

    @property
    def label(self) -> str:
        """How messages quote the record: ``"Marketing"`` or the GUID."""
        return json.dumps(self.name, ensure_ascii=False) if self.name is not None else str(self.guid)

    @property
    def key(self) -> tuple[str, str]:
        """Identity for duplicate checks: names compare case-insensitively, as Dataverse compares text."""
        return ("guid", str(self.guid)) if self.guid is not None else ("name", str(self.name).casefold())


@dataclass(frozen=True)
class ConsentMapping:
    """One mapping of target contact_point_consent: a Didomi consent flag paired with a Purpose or Topic record.

    Each contact gets one consent row per mapping on the contact point of ``contact_point_type``. A topic row also
    carries its purpose: ``purpose_record`` is the record of the topic's Didomi purpose mapping on the same contact
    point type (for a purpose mapping it is ``record`` itself).
    """

    path: str  # the mapping's JSON path, e.g. "mappings[2]", for preflight and run messages
    record: ConsentRecordRef
    kind: ConsentKind
    value: str
    field: FieldRef
    contact_point_type: ContactPointType
    purpose_record: ConsentRecordRef
    direction: Direction = Direction.BOTH

    @property
    def topic_record(self) -> ConsentRecordRef | None:
        return self.record if self.kind is ConsentKind.TOPIC else None

    @property
    def purpose(self) -> str | None:
        """The Didomi purpose id (None for a channel mapping)."""
        return self.field.purpose


@dataclass(frozen=True)
class IntegrationConfig:
    """The validated seed config plus the optional extensions documented in the README.

    With target contact_point_consent, ``mappings`` is empty and ``consent_mappings`` holds the mappings.
    """

    mappings: tuple[FieldMapping, ...]
    # Optional: an Airflow connection (or secrets backend) is the better home for a client secret.
    authentication: Authentication | None = None
    upsert_mode: bool = False
    contact_key_attribute: str = DEFAULT_CONTACT_KEY_ATTRIBUTE
    null_values: NullValues = NullValues.SKIP
    properties: MappingABC[str, Any] = dc_field(default_factory=dict)
    type_id: str = TYPE_ID
    target: Target = Target.CONTACT
    consent_mappings: tuple[ConsentMapping, ...] = ()
    contact_point_type: ContactPointType = ContactPointType.EMAIL
    # Every contact point type with its contact attribute (the defaults overlaid by the config's).
    contact_point_attributes: tuple[tuple[ContactPointType, str], ...] = tuple(DEFAULT_CONTACT_POINT_ATTRIBUTES.items())

    def contact_point_attribute(self, contact_point_type: ContactPointType | str) -> str:
        """The contact attribute holding the value (address, number) of a contact point of that type."""
        return dict(self.contact_point_attributes)[ContactPointType(contact_point_type)]

    @property
    def contact_point_types(self) -> tuple[ContactPointType, ...]:
        """The contact point types the consent mappings use, in mapping order, without repeats."""
        return tuple(dict.fromkeys(m.contact_point_type for m in self.consent_mappings))

    @property
    def forward_consent_mappings(self) -> tuple[ConsentMapping, ...]:
        return tuple(m for m in self.consent_mappings if m.direction.forward)

    @property
    def reverse_consent_mappings(self) -> tuple[ConsentMapping, ...]:
        return tuple(m for m in self.consent_mappings if m.direction.reverse)

    @property
    def forward_mappings(self) -> tuple[FieldMapping, ...]:
        return tuple(m for m in self.mappings if m.direction.forward)

    @property
    def reverse_mappings(self) -> tuple[FieldMapping, ...]:
        return tuple(m for m in self.mappings if m.direction.reverse)

    @property
    def mapped_attributes(self) -> tuple[str, ...]:
        """Every contact attribute the config touches, in mapping order, without repeats."""
        return tuple(dict.fromkeys(m.attribute for m in self.mappings))

    def summary(self) -> str:
        if self.target is Target.CONTACT_POINT_CONSENT:
            return self._consent_summary()
        return (
            f"valid {self.type_id} config: {len(self.mappings)} mapping(s) "
            f"({len(self.forward_mappings)} to Dynamics, {len(self.reverse_mappings)} to Didomi), "
            f"key {self.contact_key_attribute} <- organization_user_id, upsert_mode={str(self.upsert_mode).lower()}, "
            f"null_values={self.null_values.value}, {self.credentials_summary()}"
        )

    def _consent_summary(self) -> str:
        purposes = sum(1 for m in self.consent_mappings if m.kind is ConsentKind.PURPOSE)
        topics = len(self.consent_mappings) - purposes
        points = ", ".join(f"{t.value} ({self.contact_point_attribute(t)})" for t in self.contact_point_types)
        return (
            f"valid {self.type_id} config, target {self.target.value}: "
            f"{len(self.consent_mappings)} consent mapping(s) ({purposes} purpose(s), {topics} topic(s); "
            f"{len(self.forward_consent_mappings)} to Dynamics, {len(self.reverse_consent_mappings)} to Didomi), "
            f"contact point {points}, "
            f"key {self.contact_key_attribute} <- organization_user_id, upsert_mode={str(self.upsert_mode).lower()}, "
            f"null_values={self.null_values.value}, {self.credentials_summary()}"
        )

    def credentials_summary(self) -> str:
        """Where a run's Dataverse credentials come from, as far as the config alone can tell."""
        if self.authentication is None:
            return "credentials: the Airflow connection only (no authentication block)"
        return (
            "credentials: the Airflow connection when it exists, else the authentication block "
            f"(instance {self.authentication.instance})"
        )

    @classmethod
    def from_dict(cls, raw: Any, source: str = "integration config") -> IntegrationConfig:
        return _Parser(source).parse(raw)

    @classmethod
    def from_json(cls, text: str, source: str = "integration config") -> IntegrationConfig:
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(
                [Problem("$", f"not valid JSON ({err.msg} at line {err.lineno} column {err.colno})")], source
            ) from None
        return cls.from_dict(raw, source)

    @classmethod
    def from_file(cls, path: str | Path) -> IntegrationConfig:
        file = Path(path)
        try:
            text = file.read_text(encoding="utf-8")
        except OSError as err:
            raise ConfigError([Problem("$", f"cannot read {file}: {err.strerror}")], str(file)) from None
        return cls.from_json(text, str(file))

    @classmethod
    def from_variable(cls, key: str = VARIABLE_KEY) -> IntegrationConfig:
        """Read the config from an Airflow Variable holding the seed's JSON."""
        from airflow.sdk import Variable

        raw = Variable.get(key, default=None)
        if raw is None:
            raise ConfigError(
                [Problem("$", f"Airflow Variable {key!r} is not set; set it to the integration config JSON")],
                f"Variable {key}",
            )
        if isinstance(raw, str):
            return cls.from_json(raw, f"Variable {key}")
        return cls.from_dict(raw, f"Variable {key}")


def load_config(source: str | Path | MappingABC[str, Any] | IntegrationConfig | None = None) -> IntegrationConfig:
    """Accept a config, a dict, a JSON file path, JSON text, or nothing (the Airflow Variable)."""
    if isinstance(source, IntegrationConfig):
        return source
    if source is None:
        return IntegrationConfig.from_variable()
    if isinstance(source, MappingABC):
        return IntegrationConfig.from_dict(dict(source))
    text = str(source)
    if text.lstrip().startswith("{"):
        return IntegrationConfig.from_json(text)
    return IntegrationConfig.from_file(text)


class _Parser:
    """Walks the raw JSON once, collecting every problem before failing."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.problems: list[Problem] = []

    def problem(self, path: str, message: str) -> None:
        self.problems.append(Problem(path, message))

    def parse(self, raw: Any) -> IntegrationConfig:
        if not isinstance(raw, MappingABC):
            raise ConfigError([Problem("$", f"must be a JSON object, got {_type_name(raw)}")], self.source)
        known = {"type_id", "authentication", "properties", "mappings", "upsert_mode"}
        for key in raw:
            if key not in known and not str(key).startswith("_"):
                self.problem(str(key), f"unknown property; expected one of {', '.join(sorted(known))}")
        type_id = raw.get("type_id")
        if type_id != TYPE_ID:
            self.problem("type_id", f"must be {TYPE_ID!r}, got {type_id!r}")
        authentication = self.parse_authentication(raw.get("authentication"))
        properties = raw.get("properties", {})
        key_attribute, null_values = self.parse_properties(properties)
        target, point_type, point_attributes = self.parse_target(properties)
        upsert_mode = raw.get("upsert_mode", False)
        if not isinstance(upsert_mode, bool):
            self.problem("upsert_mode", f"must be true or false, got {json.dumps(upsert_mode)}")
            upsert_mode = False
        mappings: list[FieldMapping] = []
        consent_mappings: list[ConsentMapping] = []
        if target is Target.CONTACT:
            mappings = self.parse_mappings(raw.get("mappings"), key_attribute)
        elif target is Target.CONTACT_POINT_CONSENT:
            consent_mappings = self.parse_consent_mappings(raw.get("mappings"), point_type)
        else:  # the rules depend on the target: only the list's shape can be checked
            self.check_mapping_list(raw.get("mappings"))
        if self.problems:
            raise ConfigError(self.problems, self.source)
        return IntegrationConfig(
            authentication=authentication,
            mappings=tuple(mappings),
            upsert_mode=upsert_mode,
            contact_key_attribute=key_attribute,
            null_values=null_values,
            properties=dict(properties) if isinstance(properties, MappingABC) else {},
            type_id=TYPE_ID,
            target=target or Target.CONTACT,
            consent_mappings=tuple(consent_mappings),
            contact_point_type=point_type,
            contact_point_attributes=point_attributes,
        )

    def parse_authentication(self, raw: Any) -> Authentication | None:
        if raw is None:  # credentials then come from the Airflow connection; checked when a run starts
            return None
        if not isinstance(raw, MappingABC):
            self.problem("authentication", f"must be an object, got {_type_name(raw)}")
            return None
        values: dict[str, str] = {}
        for key in ("client_id", "client_secret", "tenant_id", "instance"):
            value = raw.get(key)
            if value is None:
                self.problem(f"authentication.{key}", "is required")
            elif not isinstance(value, str) or not value.strip():
                # Never echo the value: it may be the secret.
                self.problem(f"authentication.{key}", f"must be a non-empty string, got {_type_name(value)}")
            else:
                values[key] = value.strip()
        for key in raw:
            if key not in ("client_id", "client_secret", "tenant_id", "instance"):
                self.problem(f"authentication.{key}", "unknown property")
        if len(values) < 4:
            return None
        return Authentication(
            client_id=values["client_id"],
            client_secret=Secret(values["client_secret"]),
            tenant_id=values["tenant_id"],
            instance=values["instance"].rstrip("/"),
        )

    def parse_properties(self, raw: Any) -> tuple[str, NullValues]:
        key_attribute = DEFAULT_CONTACT_KEY_ATTRIBUTE
        null_values = NullValues.SKIP
        if not isinstance(raw, MappingABC):
            self.problem("properties", f"must be an object (may be empty), got {_type_name(raw)}")
            return key_attribute, null_values
        if "contact_key_attribute" in raw:
            value = raw["contact_key_attribute"]
            if not isinstance(value, str) or not _LOGICAL_NAME.match(value):
                self.problem(
                    "properties.contact_key_attribute",
                    f"{json.dumps(value)} is not a Dataverse logical name (lowercase letters, digits and _), "
                    "e.g. emailaddress1 or externaluseridentifier",
                )
            elif value in _SYSTEM_ATTRIBUTES:
                self.problem("properties.contact_key_attribute", f"{value} is set by Dataverse; pick a text column")
            else:
                key_attribute = value
        if "null_values" in raw:
            value = raw["null_values"]
            try:
                null_values = NullValues(value)
            except ValueError:
                self.problem("properties.null_values", f"must be 'skip' or 'clear', got {json.dumps(value)}")
        return key_attribute, null_values

    def parse_target(
        self, raw: Any
    ) -> tuple[Target | None, ContactPointType, tuple[tuple[ContactPointType, str], ...]]:
        """``properties.target`` and the Contact Point Consent options; None when the target is unknown."""
        attributes = dict(DEFAULT_CONTACT_POINT_ATTRIBUTES)
        point_type = ContactPointType.EMAIL
        if not isinstance(raw, MappingABC):
            return Target.CONTACT, point_type, tuple(attributes.items())
        target: Target | None = Target.CONTACT
        if "target" in raw:
            try:
                target = Target(raw["target"])
            except ValueError:
                self.problem(
                    "properties.target",
                    f"must be 'contact' (contact attributes, the default) or 'contact_point_consent' "
                    f"(Customer Insights - Journeys consent rows), got {json.dumps(raw['target'], ensure_ascii=False)}",
                )
                target = None
        if target is Target.CONTACT:
            for key in _CPC_PROPERTIES:
                if key in raw:
                    self.problem(
                        f"properties.{key}",
                        'applies only with "target": "contact_point_consent"; set properties.target or remove it',
                    )
            return target, point_type, tuple(attributes.items())
        if "contact_point_type" in raw:
            parsed = self.parse_point_type("properties.contact_point_type", raw["contact_point_type"])
            point_type = parsed or point_type
        if "contact_point_attributes" in raw:
            self.parse_point_attributes(raw["contact_point_attributes"], attributes)
        return target, point_type, tuple(attributes.items())

    def parse_point_type(self, path: str, raw: Any) -> ContactPointType | None:
        try:
            return ContactPointType(raw)
        except ValueError:
            self.problem(path, f"must be 'email', 'text' or 'voice', got {json.dumps(raw, ensure_ascii=False)}")
            return None

    def parse_point_attributes(self, raw: Any, attributes: dict[ContactPointType, str]) -> None:
        path = "properties.contact_point_attributes"
        if not isinstance(raw, MappingABC):
            self.problem(
                path,
                f'must be an object of contact point type -> contact attribute (e.g. {{"text": "telephone1"}}), '
                f"got {_type_name(raw)}",
            )
            return
        for key, value in raw.items():
            if key not in {t.value for t in ContactPointType}:
                self.problem(f"{path}.{key}", "unknown contact point type; expected email, text or voice")
                continue
            point_type = ContactPointType(key)
            if not isinstance(value, str) or not _LOGICAL_NAME.match(value):
                self.problem(
                    f"{path}.{key}",
                    f"{json.dumps(value, ensure_ascii=False)} is not a Dataverse contact attribute logical name "
                    "(lowercase letters, digits and _, e.g. emailaddress2 or telephone1)",
                )
            elif value in _SYSTEM_ATTRIBUTES:
                self.problem(f"{path}.{key}", f"{value} is set by Dataverse; pick the column holding the {key} value")
            else:
                attributes[point_type] = value

    def check_mapping_list(self, raw: Any) -> bool:
        """The shape every target shares: a non-empty list."""
        if raw is None:
            self.problem("mappings", "is required: a list of {id, value}")
            return False
        if not isinstance(raw, list):
            self.problem("mappings", f"must be a list of {{id, value}}, got {_type_name(raw)}")
            return False
        if not raw:
            self.problem("mappings", "is empty; add at least one {id, value} mapping")
        return True

    def parse_mappings(self, raw: Any, key_attribute: str) -> list[FieldMapping]:
        if not self.check_mapping_list(raw):
            return []
        mappings: list[tuple[int, FieldMapping]] = []
        for index, item in enumerate(raw):
            mapping = self.parse_mapping(f"mappings[{index}]", item, key_attribute)
            if mapping is not None:
                mappings.append((index, mapping))
        mappings = _split_value_flags(mappings)
        self.check_conflicts(mappings)
        return [m for _, m in mappings]

    def parse_mapping(self, path: str, raw: Any, key_attribute: str) -> FieldMapping | None:
        if not isinstance(raw, MappingABC):
            self.problem(path, f"must be an object {{id, value}}, got {_type_name(raw)}")
            return None
        ok = True
        for key in raw:
            if key not in ("id", "value", "direction", "transform"):
                self.problem(f"{path}.{key}", "unknown property; expected id, value, direction or transform")
        attribute = raw.get("id")
        if not isinstance(attribute, str) or not _LOGICAL_NAME.match(attribute):
            self.problem(
                f"{path}.id",
                f"{json.dumps(attribute)} is not a Dataverse contact attribute logical name "
                "(lowercase letters, digits and _, e.g. donotbulkemail)",
            )
            ok = False
        elif attribute in _SYSTEM_ATTRIBUTES:
            self.problem(f"{path}.id", f"{attribute} is maintained by Dataverse and cannot be written; map another")
            ok = False
        elif attribute == key_attribute:
            self.problem(
                f"{path}.id",
                f"{attribute} is the contact key attribute (organization_user_id goes there already); "
                "map another attribute or change properties.contact_key_attribute",
            )
            ok = False
        value = raw.get("value")
        field_ref: FieldRef | None = None
        try:
            field_ref = parse_column(value)  # type: ignore[arg-type]
        except GrammarError as err:
            self.problem(f"{path}.value", str(err))
            ok = False
        direction = self.parse_direction(path, raw)
        if direction is None:
            ok = False
            direction = Direction.BOTH
        transform = self.parse_transform(f"{path}.transform", raw.get("transform"), field_ref)
        if transform is None:
            ok = False
        if not ok or field_ref is None or transform is None:
            return None
        if direction.reverse:
            self.check_reversible(path, field_ref, transform)
        return FieldMapping(
            attribute=str(attribute), value=str(value), field=field_ref, direction=direction, transform=transform
        )

    def parse_direction(self, path: str, raw: MappingABC[str, Any]) -> Direction | None:
        if "direction" not in raw:
            return Direction.BOTH
        try:
            return Direction(raw["direction"])
        except ValueError:
            self.problem(
                f"{path}.direction",
                f"must be 'both', 'to_dynamics' or 'to_didomi', got {json.dumps(raw['direction'])}",
            )
            return None

    def parse_consent_mappings(self, raw: Any, default_type: ContactPointType) -> list[ConsentMapping]:
        if not self.check_mapping_list(raw):
            return []
        parsed: list[ConsentMapping] = []
        for index, item in enumerate(raw):
            mapping = self.parse_consent_mapping(f"mappings[{index}]", item, default_type)
            if mapping is not None:
                parsed.append(mapping)
        self.check_consent_duplicates(parsed)
        return self.link_topics(parsed, default_type)

    def parse_consent_mapping(self, path: str, raw: Any, default_type: ContactPointType) -> ConsentMapping | None:
        if not isinstance(raw, MappingABC):
            self.problem(path, f"must be an object {{id, value}}, got {_type_name(raw)}")
            return None
        for key in raw:
            if key not in ("id", "value", "direction", "contact_point", "transform"):
                self.problem(f"{path}.{key}", "unknown property; expected id, value, direction or contact_point")
        record = self.parse_record(f"{path}.id", raw.get("id"))
        field_ref = self.parse_consent_value(f"{path}.value", raw.get("value"))
        direction = self.parse_direction(path, raw)
        point_type: ContactPointType | None = default_type
        if "contact_point" in raw:
            point_type = self.parse_point_type(f"{path}.contact_point", raw["contact_point"])
        ok = True
        if "transform" in raw:
            self.problem(
                f"{path}.transform",
                "a Contact Point Consent row is written as Didomi says (true -> OptedIn, false -> OptedOut), "
                f"so {json.dumps(raw['transform'], ensure_ascii=False)} cannot apply; remove transform",
            )
            ok = False
        if not ok or record is None or field_ref is None or direction is None or point_type is None:
            return None
        kind = ConsentKind.TOPIC if field_ref.kind is FieldKind.PREFERENCE_VALUE_ENABLED else ConsentKind.PURPOSE
        return ConsentMapping(
            path=path,
            record=record,
            kind=kind,
            value=field_ref.column,
            field=field_ref,
            contact_point_type=point_type,
            purpose_record=record,
            direction=direction,
        )

    def parse_record(self, path: str, raw: Any) -> ConsentRecordRef | None:
        if not isinstance(raw, str) or not raw.strip():
            self.problem(
                path,
                f'must name the Purpose or Topic record: its name (msdynmkt_name, e.g. "Newsletter") '
                f"or its GUID, got {_type_name(raw)}",
            )
            return None
        if match := _GUID.match(raw.strip()):
            return ConsentRecordRef(guid=match.group(1).lower())
        if any(ord(c) < 32 for c in raw):
            self.problem(path, f"{json.dumps(raw, ensure_ascii=False)} has a control character; copy the name again")
            return None
        return ConsentRecordRef(name=raw)

    def parse_consent_value(self, path: str, raw: Any) -> FieldRef | None:
        try:
            ref = parse_column(raw)
        except GrammarError as err:
            self.problem(path, str(err))
            return None
        column = json.dumps(raw, ensure_ascii=False)
        if ref.kind in (FieldKind.PURPOSE_ENABLED, FieldKind.PREFERENCE_VALUE_ENABLED, FieldKind.CHANNEL_ENABLED):
            return ref
        if ref.kind is FieldKind.PREFERENCE_VALUES:
            why = (
                f"{column} is a whole value list, and a consent row holds one answer; map each value as "
                f"consents_purposes_{ref.purpose}_values_{ref.preference}_<value>_enabled to its Topic"
            )
        elif ref.kind is FieldKind.PURPOSE_ENABLED_LI:
            why = (
                f"{column} is legitimate interest, not consent; map consents_purposes_{ref.purpose}_enabled, "
                "or use target contact"
            )
        elif ref.kind is FieldKind.VENDOR_ENABLED:
            why = f"{column} is vendor consent, which has no Contact Point Consent row; use target contact"
        else:
            why = f"{column} is not a consent flag, so no Contact Point Consent row can hold it; use target contact"
        self.problem(path, f"{why}; a consent mapping's value is {_CPC_VALUE_SHAPES}")
        return None

    def check_consent_duplicates(self, mappings: list[ConsentMapping]) -> None:
        rows: dict[tuple[ConsentKind, tuple[str, str], ContactPointType], str] = {}
        reverse: dict[str, str] = {}
        for mapping in mappings:
            row = (mapping.kind, mapping.record.key, mapping.contact_point_type)
            if row in rows:
                self.problem(
                    f"{mapping.path}.id",
                    f"{mapping.kind.value.capitalize()} {mapping.record.label} on contact point "
                    f"{mapping.contact_point_type.value} is already mapped by {rows[row]}; one consent row takes "
                    'one Didomi field (remove one, or set "contact_point" to another type)',
                )
            else:
                rows[row] = mapping.path
            if mapping.direction.reverse:
                if mapping.value in reverse:
                    self.problem(
                        f"{mapping.path}.value",
                        f"{mapping.value} is already written back by {reverse[mapping.value]}; two consent rows "
                        'would fight over one consent (set "direction": "to_dynamics" on one of them)',
                    )
                else:
                    reverse[mapping.value] = mapping.path

    def link_topics(self, mappings: list[ConsentMapping], default_type: ContactPointType) -> list[ConsentMapping]:
        """Give each topic mapping the Purpose record of its Didomi purpose's mapping on the same contact point."""
        purposes: dict[tuple[str, ContactPointType], list[ConsentMapping]] = {}
        for mapping in mappings:
            if mapping.kind is ConsentKind.PURPOSE and mapping.field.kind is FieldKind.PURPOSE_ENABLED:
                purposes.setdefault((str(mapping.field.purpose), mapping.contact_point_type), []).append(mapping)
        linked: list[ConsentMapping] = []
        for mapping in mappings:
            if mapping.kind is not ConsentKind.TOPIC:
                linked.append(mapping)
                continue
            purpose, point = str(mapping.field.purpose), mapping.contact_point_type
            parents = purposes.get((purpose, point), [])
            if len(parents) == 1:
                linked.append(replace(mapping, purpose_record=parents[0].record))
                continue
            if parents:
                self.problem(
                    f"{mapping.path}.value",
                    f"purpose {purpose} is mapped to {len(parents)} Purposes on contact point {point.value} "
                    f"({', '.join(p.path for p in parents)}), so this topic's Purpose is ambiguous; "
                    "keep one of them on this contact point",
                )
                continue
            elsewhere = [p.path for (p_id, _), group in purposes.items() if p_id == purpose for p in group]
            note = f" (it is mapped on another contact point by {', '.join(elsewhere)})" if elsewhere else ""
            self.problem(
                f"{mapping.path}.value",
                f"a Topic row carries its Purpose, but purpose {purpose} is not mapped on contact point "
                f"{point.value}{note}; add "
                f'{{"id": "<Purpose name or GUID>", "value": "consents_purposes_{purpose}_enabled"'
                + (f', "contact_point": "{point.value}"' if point is not default_type else "")
                + "}",
            )
        return linked

    def parse_transform(self, path: str, raw: Any, field_ref: FieldRef | None) -> Transform | None:
        if raw is None:
            return Transform()
        if raw == "invert":
            if field_ref is not None and not field_ref.is_boolean:
                self.problem(path, f"'invert' applies to true/false consent columns, not {field_ref.kind.value}")
                return None
            return Transform(invert=True)
        if isinstance(raw, MappingABC) and raw:
            if field_ref is not None and field_ref.is_boolean:
                # a true/false column is looked up as "true" / "false"; any other key would silently never match
                odd = [str(k) for k in raw if str(k).lower() not in ("true", "false")]
                if odd:
                    self.problem(
                        path,
                        f'{field_ref.kind.value} is true/false, so its value map keys must be "true" and/or '
                        f'"false" (e.g. {{"true": 100000000, "false": 100000001}}), got {json.dumps(odd)}',
                    )
                    return None
            return Transform(value_map=tuple((str(k), v) for k, v in raw.items()))
        self.problem(
            path,
            f"must be 'invert' or a non-empty object mapping Didomi values to Dataverse values "
            f'(e.g. {{"weekly": 100000000}}), got {json.dumps(raw)}',
        )
        return None

    def check_reversible(self, path: str, field_ref: FieldRef, transform: Transform) -> None:
        why = ""
        if field_ref.kind is FieldKind.USER_FIELD and field_ref.name in READ_ONLY_USER_FIELDS:
            why = f"{field_ref.name} is set by Didomi and cannot be written back"
        elif field_ref.kind is FieldKind.USER_FIELD:
            why = "organization_user_id is the match key, it is never rewritten from Dynamics"
        elif field_ref.kind is FieldKind.VENDOR_ENABLED:
            why = "vendor consent comes from the consent notice, not from consent events"
        elif transform.value_map:
            targets = [json.dumps(v, sort_keys=True) for _, v in transform.value_map]
            if len(set(targets)) != len(targets):
                why = "its transform maps two Didomi values to one Dataverse value, so the way back is ambiguous"
        if why:
            self.problem(
                path,
                f'cannot be synced back to Didomi: {why}; set "direction": "to_dynamics"',
            )

    def check_conflicts(self, mappings: list[tuple[int, FieldMapping]]) -> None:
        forward_targets: dict[str, int] = {}
        reverse_targets: dict[str, int] = {}
        reverse_lists: dict[tuple[str | None, str | None], int] = {}
        for index, mapping in mappings:
            if mapping.direction.forward:
                if mapping.attribute in forward_targets:
                    self.problem(
                        f"mappings[{index}].id",
                        f"{mapping.attribute} is already written by mappings[{forward_targets[mapping.attribute]}]; "
                        'one attribute takes one Didomi field (set "direction": "to_didomi" on one of them)',
                    )
                else:
                    forward_targets[mapping.attribute] = index
            if mapping.direction.reverse:
                if mapping.value in reverse_targets:
                    self.problem(
                        f"mappings[{index}].value",
                        f"{mapping.value} is already written back by mappings[{reverse_targets[mapping.value]}]; "
                        "two contact attributes would fight over one consent "
                        '(set "direction": "to_dynamics" on one of them)',
                    )
                else:
                    reverse_targets[mapping.value] = index
                if mapping.field.kind is FieldKind.PREFERENCE_VALUES:
                    reverse_lists[(mapping.field.purpose, mapping.field.preference)] = index
        for index, mapping in mappings:
            ref = mapping.field
            if mapping.direction.reverse and ref.kind is FieldKind.PREFERENCE_VALUE_ENABLED:
                other = reverse_lists.get((ref.purpose, ref.preference))
                if other is not None:
                    self.problem(
                        f"mappings[{index}].value",
                        f"preference {ref.preference} of purpose {ref.purpose} is also written back as a whole list "
                        f'by mappings[{other}]; keep one of them with "direction": "to_dynamics"',
                    )


def _split_value_flags(mappings: list[tuple[int, FieldMapping]]) -> list[tuple[int, FieldMapping]]:
    """Re-split value flag columns with the preference ids the config's value list mappings name.

    ``..._values_contact_freq_week_1_enabled`` alone splits at the last ``_`` (preference ``contact_freq_week``);
    a mapping of ``..._values_contact_freq`` tells that the preference is ``contact_freq`` and the value ``week_1``.
    """
    known = tuple(
        dict.fromkeys(str(m.field.preference) for _, m in mappings if m.field.kind is FieldKind.PREFERENCE_VALUES)
    )
    if not known:
        return mappings
    return [
        (index, replace(m, field=parse_column(m.value, known)))
        if m.field.kind is FieldKind.PREFERENCE_VALUE_ENABLED
        else (index, m)
        for index, m in mappings
    ]


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, str) and not value.strip():
        return "an empty string"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list"}.get(
        type(value), "an object" if isinstance(value, MappingABC) else type(value).__name__
    )
