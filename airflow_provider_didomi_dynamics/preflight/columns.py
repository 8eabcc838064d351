"""Preflight checks of the mapped contact columns: each exists, can be written, has a type its mapping can fill and
room for what Didomi holds; value maps target values the column accepts. Pure functions of the facts."""

from __future__ import annotations

import json
from collections.abc import Mapping

from airflow_provider_didomi_dynamics.core.config import FieldMapping, IntegrationConfig
from airflow_provider_didomi_dynamics.core.grammar import FieldKind, column_name
from airflow_provider_didomi_dynamics.preflight.facts import (
    CHOICE_TYPES,
    TEXT_TYPES,
    AttributeInfo,
    ConsentScan,
    DataverseFacts,
)
from airflow_provider_didomi_dynamics.preflight.report import FAIL, OK, WARN, Check, Status
from airflow_provider_didomi_dynamics.preflight.wording import COLUMNS_HOWTO, did_you_mean

INTEGER_TYPES = ("Integer", "BigInt")
NUMBER_TYPES = ("Decimal", "Double", "Money")
DATE_FIELDS = ("created_at", "updated_at")


def attribute_checks(config: IntegrationConfig, facts: DataverseFacts, scan: ConsentScan | None) -> list[Check]:
    """Every mapped attribute exists on contact with a type its mapping can fill; the key attribute is text."""
    if facts.attributes is None:
        return [
            Check(
                "Contact attributes",
                FAIL if not (facts.attributes_error or "").startswith("forbidden") else WARN,
                f"Could not read the contact table's columns ({facts.attributes_error}); the sync checks them "
                "first and would stop there too.",
                transient="attributes" in facts.transient,
            )
        ]
    attributes = facts.attributes
    checks: list[Check] = []
    key = config.contact_key_attribute
    key_info = attributes.get(key)
    if key_info is None:
        checks.append(
            Check(
                f"Key attribute {key}",
                FAIL,
                f"properties.contact_key_attribute: contact has no column {key!r}{did_you_mean(key, attributes)}. "
                "Contacts are matched to Didomi users by it (organization_user_id); fix the name (logical names are "
                f"lowercase) or create the column ({COLUMNS_HOWTO}).",
            )
        )
    elif key_info.attribute_type not in TEXT_TYPES:
        checks.append(
            Check(
                f"Key attribute {key}",
                FAIL,
                f"properties.contact_key_attribute: {key} is a {key_info.attribute_type} column, but it must hold "
                "Didomi's organization_user_id (text). Pick a Single line of text column such as emailaddress1.",
            )
        )
    for index, mapping in enumerate(config.mappings):
        problem = _mapping_problem(index, mapping, attributes.get(mapping.attribute), attributes, config, scan)
        if problem is not None:
            checks.append(problem)
    if not checks:
        checks.append(
            Check(
                "Contact attributes",
                OK,
                f"All {len(config.mapped_attributes)} mapped attributes exist on contact with compatible types "
                f"({', '.join(f'{a} {attributes[a].attribute_type}' for a in config.mapped_attributes)}); "
                f"key {key} is text.",
            )
        )
    return checks


def _mapping_problem(
    index: int,
    mapping: FieldMapping,
    info: AttributeInfo | None,
    attributes: Mapping[str, AttributeInfo],
    config: IntegrationConfig,
    scan: ConsentScan | None,
) -> Check | None:
    """The first problem of one mapping, or None when its attribute can hold what flows through it."""
    attr = mapping.attribute
    name = f"Attribute {attr}"
    path = f"mappings[{index}]"
    if info is None:
        return Check(
            name,
            FAIL,
            f"{path}.id: contact has no attribute {attr!r}{did_you_mean(attr, attributes)}, so {mapping.value} has "
            f"nowhere to go and the sync stops before writing. Fix the id (the column's logical name, lowercase, "
            f"with its publisher prefix such as new_) or create the column ({COLUMNS_HOWTO}).",
        )
    if mapping.direction.forward and not info.valid_for_update:
        return Check(
            name,
            FAIL,
            f"{path}.id: {attr} is read-only in Dataverse (IsValidForUpdate is false), so the sync cannot write "
            f'{mapping.value} into it. Map another column, or set "direction": "to_didomi".',
        )
    type_problem = _type_problem(mapping, info, scan)
    if type_problem is not None:
        status, text = type_problem
        return Check(name, status, f"{path}: {text}")
    if mapping.direction.forward and config.upsert_mode and not info.valid_for_create:
        return Check(
            name,
            WARN,
            f"{path}.id: {attr} cannot be set when a contact is created (IsValidForCreate is false): contacts "
            "created by upsert_mode start without it.",
        )
    return None


def _type_problem(mapping: FieldMapping, info: AttributeInfo, scan: ConsentScan | None) -> tuple[Status, str] | None:
    ref = mapping.field
    attr = mapping.attribute
    kind = info.attribute_type
    value_map = mapping.transform.value_map
    if value_map:
        return _value_map_problem(mapping, info)
    if ref.is_boolean:
        if kind == "Boolean":
            return None
        return FAIL, (
            f"{attr} is a {kind} column but {mapping.value} is true/false. Map it to a Yes/No (Boolean) column, or "
            f'add a value map that turns true/false into {kind} values, e.g. "transform": {{"true": ..., '
            '"false": ...}.'
        )
    if ref.kind is FieldKind.USER_FIELD and ref.name in DATE_FIELDS:
        if kind == "DateTime":
            return None
        if kind in TEXT_TYPES:
            return WARN, f"{attr} is {kind}; {mapping.value} is a date and will be stored as ISO 8601 text."
        return FAIL, f"{attr} is a {kind} column but {mapping.value} is a date: map it to a Date and time column."
    # value lists, metadata and the other user fields are text
    if kind not in TEXT_TYPES:
        what = "a comma-separated list of value ids" if ref.kind is FieldKind.PREFERENCE_VALUES else "text"
        return FAIL, (
            f"{attr} is a {kind} column but {mapping.value} is {what}. Map it to a text column (Single line of text "
            "or Multiple lines of text), or add a value map from the Didomi texts to this column's values."
        )
    return _length_problem(mapping, info, scan)


def _length_problem(mapping: FieldMapping, info: AttributeInfo, scan: ConsentScan | None) -> tuple[Status, str] | None:
    """Dataverse refuses a text longer than MaxLength (the row fails): compare with what Didomi holds."""
    if info.max_length is None or scan is None:
        return None
    ref = mapping.field
    column = column_name(ref)
    observed = scan.longest.get(column, 0)
    if observed > info.max_length:
        return WARN, (
            f"{mapping.attribute} holds at most {info.max_length} characters, but {mapping.value} reaches {observed} "
            f"in {scan.describe()}: those contacts would fail with a validation error. Raise the column's maximum "
            f"length ({COLUMNS_HOWTO} → {mapping.attribute} → Advanced options)."
        )
    if ref.kind is FieldKind.PREFERENCE_VALUES:
        values = sorted(scan.purposes.get(str(ref.purpose), {}).get(str(ref.preference), set()))
        worst = len(",".join(values))
        if worst > info.max_length:
            return WARN, (
                f"{mapping.attribute} holds at most {info.max_length} characters, but a user who picks all "
                f"{len(values)} values seen for {ref.preference} ({','.join(values)}) needs {worst}: such a contact "
                f"would fail with a validation error. Raise the column's maximum length ({COLUMNS_HOWTO})."
            )
    return None


def _value_map_problem(mapping: FieldMapping, info: AttributeInfo) -> tuple[Status, str] | None:
    """A value map's target values must be values the column accepts."""
    attr = mapping.attribute
    kind = info.attribute_type
    targets = [v for _, v in mapping.transform.value_map if v is not None]
    path_hint = "its transform"
    ints = all(isinstance(v, int) and not isinstance(v, bool) for v in targets)
    if kind in CHOICE_TYPES:
        if not ints:
            bad = [v for v in targets if not (isinstance(v, int) and not isinstance(v, bool))]
            return FAIL, (
                f"{attr} is a choice ({kind}) column: {path_hint} must map to its option numbers "
                f"(e.g. 100000000), got {json.dumps(bad[:3])}."
            )
        options = info.options or {}
        unknown = sorted({v for v in targets if v not in options})
        if unknown and options:
            listing = ", ".join(f"{v} ({t})" if t else str(v) for v, t in options.items())
            return FAIL, (
                f"{path_hint} maps to {', '.join(map(str, unknown))}, which {attr} does not offer; its options are "
                f"{listing}. Use those numbers, or add the options to the column ({COLUMNS_HOWTO})."
            )
        return None
    if kind == "Boolean":
        if all(isinstance(v, bool) for v in targets):
            return None
        return FAIL, f"{attr} is Yes/No (Boolean): {path_hint} must map to true/false, got {json.dumps(targets[:3])}."
    if kind in INTEGER_TYPES:
        if ints:
            return None
        return FAIL, f"{attr} is a whole number ({kind}) column: {path_hint} must map to integers."
    if kind in NUMBER_TYPES:
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in targets):
            return None
        return FAIL, f"{attr} is a number ({kind}) column: {path_hint} must map to numbers."
    if kind in TEXT_TYPES:
        texts = [v if isinstance(v, str) else json.dumps(v) for v in targets]
        longest = max((len(t) for t in texts), default=0)
        if info.max_length is not None and longest > info.max_length:
            return FAIL, (
                f"{path_hint} writes values of up to {longest} characters into {attr}, which holds "
                f"{info.max_length}: those writes would fail. Shorten the values or raise the column's maximum length."
            )
        if not all(isinstance(v, str) for v in targets):
            return WARN, f"{attr} is text; {path_hint} maps to non-text values, which are written as JSON text."
        return None
    return FAIL, (
        f"{attr} is a {kind} column, which a value map cannot fill; map to a choice, Yes/No, whole number or text "
        "column."
    )


__all__ = ["attribute_checks"]
