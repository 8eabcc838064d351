"""Typed column metadata for the contact table and its rendering as Dataverse ``AttributeMetadata`` JSON.

Each attribute carries a converter that validates and normalises a value written through the Web API, so the
write path is one dict lookup and one call per column. Error codes and messages follow what Dataverse returns.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from airflow_provider_didomi_dynamics.emulators.dataverse.errors import DataverseError
from airflow_provider_didomi_dynamics.emulators.dataverse.odata import parse_datetime_us

ENTITY = "contact"
ENTITY_SET = "contacts"
PRIMARY_ID = "contactid"
CONTACT_METADATA_ID = "608861bc-50a4-4c5f-a02c-21fe1943e2cf"
_NS = uuid.UUID("5d3c1a52-6a47-4b59-9a55-7a0b8b8f0e11")
_GUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")

# AttributeType -> (odata cast type, value kind used by the query compiler)
ATTRIBUTE_TYPES: dict[str, tuple[str, str]] = {
    "String": ("StringAttributeMetadata", "string"),
    "Memo": ("MemoAttributeMetadata", "string"),
    "Boolean": ("BooleanAttributeMetadata", "bool"),
    "Picklist": ("PicklistAttributeMetadata", "int"),
    "State": ("StateAttributeMetadata", "int"),
    "Status": ("StatusAttributeMetadata", "int"),
    "Integer": ("IntegerAttributeMetadata", "int"),
    "BigInt": ("BigIntAttributeMetadata", "int"),
    "Decimal": ("DecimalAttributeMetadata", "float"),
    "Double": ("DoubleAttributeMetadata", "float"),
    "Money": ("MoneyAttributeMetadata", "float"),
    "DateTime": ("DateTimeAttributeMetadata", "datetime"),
    "Uniqueidentifier": ("UniqueIdentifierAttributeMetadata", "guid"),
    "Lookup": ("LookupAttributeMetadata", "guid"),
    "Owner": ("LookupAttributeMetadata", "guid"),
}
CAST_TO_TYPES: dict[str, set[str]] = {}
for _type, (_cast, _kind) in ATTRIBUTE_TYPES.items():
    CAST_TO_TYPES.setdefault(_cast, set()).add(_type)
CAST_TO_TYPES["EnumAttributeMetadata"] = {"Picklist", "State", "Status"}

# Properties every AttributeMetadata has; others need a cast segment (Microsoft.Dynamics.CRM.<Type>Metadata).
BASE_PROPERTIES = {
    "MetadataId",
    "LogicalName",
    "SchemaName",
    "AttributeType",
    "AttributeTypeName",
    "DisplayName",
    "Description",
    "EntityLogicalName",
    "IsCustomAttribute",
    "IsPrimaryId",
    "IsPrimaryName",
    "IsValidForCreate",
    "IsValidForUpdate",
    "IsValidForRead",
    "IsLogical",
    "RequiredLevel",
    "AttributeOf",
    "ColumnNumber",
    "IsManaged",
}
CAST_PROPERTIES = {
    "StringAttributeMetadata": {"MaxLength", "Format", "FormatName", "DatabaseLength"},
    "MemoAttributeMetadata": {"MaxLength", "Format"},
    "PicklistAttributeMetadata": {"OptionSet", "DefaultFormValue"},
    "StateAttributeMetadata": {"OptionSet", "DefaultFormValue"},
    "StatusAttributeMetadata": {"OptionSet", "DefaultFormValue"},
    "EnumAttributeMetadata": {"OptionSet", "DefaultFormValue"},
    "BooleanAttributeMetadata": {"OptionSet", "DefaultValue"},
    "IntegerAttributeMetadata": {"MinValue", "MaxValue", "Format"},
    "BigIntAttributeMetadata": {"MinValue", "MaxValue"},
    "DecimalAttributeMetadata": {"MinValue", "MaxValue", "Precision"},
    "DoubleAttributeMetadata": {"MinValue", "MaxValue", "Precision"},
    "MoneyAttributeMetadata": {"MinValue", "MaxValue", "Precision"},
    "DateTimeAttributeMetadata": {"Format", "DateTimeBehavior"},
    "UniqueIdentifierAttributeMetadata": set(),
    "LookupAttributeMetadata": {"Targets"},
}

Converter = Callable[[Any], Any]

# Values Dataverse gives standard columns on create; also their metadata DefaultValue.
CREATE_DEFAULTS: dict[str, Any] = {
    "donotbulkemail": False,
    "donotemail": False,
    "donotphone": False,
    "donotpostalmail": False,
    "donotfax": False,
    "donotsendmm": False,
    "followemail": True,
    "preferredcontactmethodcode": 1,
    "statecode": 0,
    "statuscode": 1,
}


def label(text: str) -> dict[str, Any]:
    """A Dataverse ``Label`` complex value in English (1033)."""
    localized = {"Label": text, "LanguageCode": 1033, "IsManaged": False}
    return {"LocalizedLabels": [localized], "UserLocalizedLabel": localized}


def stable_id(*parts: str) -> str:
    """Deterministic metadata ids, so the same column has the same MetadataId across runs."""
    return str(uuid.uuid5(_NS, "/".join(parts)))


def payload_error(message: str) -> DataverseError:
    """Dataverse's error for a value the OData reader cannot convert (wrong JSON type, bad literal)."""
    return DataverseError(
        400,
        "0x80048d19",
        "Error identified in Payload provided by the user for Entity :'contacts', For more information on this "
        "error please follow this help link https://go.microsoft.com/fwlink/?linkid=2195293  ----> "
        f"InnerException : Microsoft.OData.ODataException: {message}",
    )


def validation_error(message: str) -> DataverseError:
    return DataverseError(400, "0x80044331", f"A validation error occurred. {message}")


@dataclass
class AttributeMeta:
    """One column of the table: type, limits, options, and who may write it."""

    logical_name: str
    attribute_type: str
    display_name: str = ""
    max_length: int | None = None
    options: dict[int, str] | None = None
    min_value: float | None = None
    max_value: float | None = None
    is_custom: bool = False
    valid_for_create: bool = True
    valid_for_update: bool = True
    is_primary_id: bool = False
    is_primary_name: bool = False
    required_level: str = "None"
    targets: list[str] = field(default_factory=list)
    schema_name: str = ""
    metadata_id: str = ""
    entity: str = ENTITY
    default_form_value: int | None = None
    global_option_set: str | None = None
    converter: Converter = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.attribute_type not in ATTRIBUTE_TYPES:
            raise ValueError(f"unsupported attribute type {self.attribute_type!r}")
        if not self.schema_name:
            self.schema_name = self.logical_name
        if not self.metadata_id:
            self.metadata_id = stable_id(self.entity, self.logical_name)
        if not self.display_name:
            self.display_name = self.logical_name
        if self.attribute_type in ("String", "Memo") and self.max_length is None:
            self.max_length = 100 if self.attribute_type == "String" else 2000
        if self.attribute_type == "Integer":
            self.min_value = -2147483648 if self.min_value is None else self.min_value
            self.max_value = 2147483647 if self.max_value is None else self.max_value
        self.converter = self._make_converter()

    @property
    def kind(self) -> str:
        return ATTRIBUTE_TYPES[self.attribute_type][1]

    @property
    def cast(self) -> str:
        return ATTRIBUTE_TYPES[self.attribute_type][0]

    @property
    def web_name(self) -> str:
        """Name of the property in Web API JSON: lookups surface as ``_<name>_value``."""
        if self.attribute_type in ("Lookup", "Owner"):
            return f"_{self.logical_name}_value"
        return self.logical_name

    def _make_converter(self) -> Converter:
        name = self.logical_name
        entity = self.entity
        t = self.attribute_type
        if t in ("String", "Memo"):
            max_length = self.max_length or 0

            def conv_string(v: Any) -> Any:
                if v is None:
                    return None
                if not isinstance(v, str):
                    raise payload_error("Cannot convert a primitive value to the expected type 'Edm.String'.")
                if len(v) > max_length:
                    raise validation_error(
                        f"The length of the '{name}' attribute of the '{entity}' entity exceeded the maximum "
                        f"allowed length of '{max_length}'."
                    )
                return v

            return conv_string
        if t == "Boolean":

            def conv_bool(v: Any) -> Any:
                if v is None or isinstance(v, bool):
                    return v
                raise payload_error(f"Cannot convert the literal '{v}' to the expected type 'Edm.Boolean'.")

            return conv_bool
        if t in ("Picklist", "State", "Status"):
            allowed = self.options or {}

            def conv_option(v: Any) -> Any:
                if v is None:
                    return None
                if isinstance(v, bool) or not isinstance(v, int):
                    raise payload_error(f"Cannot convert the literal '{v}' to the expected type 'Edm.Int32'.")
                if v not in allowed:
                    accepted = ",".join(str(k) for k in allowed)
                    raise validation_error(
                        f"The value {v} of '{name}' on record of type '{entity}' is outside the valid range. "
                        f"Accepted Values: {accepted}"
                    )
                return v

            return conv_option
        if t in ("Integer", "BigInt"):
            low, high = self.min_value, self.max_value

            def conv_int(v: Any) -> Any:
                if v is None:
                    return None
                if isinstance(v, bool) or not isinstance(v, int):
                    raise payload_error(f"Cannot convert the literal '{v}' to the expected type 'Edm.Int32'.")
                if (low is not None and v < low) or (high is not None and v > high):
                    raise validation_error(
                        f"The value {v} of '{name}' on record of type '{entity}' is outside the valid range."
                    )
                return v

            return conv_int
        if t in ("Decimal", "Double", "Money"):

            def conv_float(v: Any) -> Any:
                if v is None:
                    return None
                if isinstance(v, bool) or not isinstance(v, (int, float)):
                    raise payload_error(f"Cannot convert the literal '{v}' to the expected type 'Edm.Decimal'.")
                return float(v)

            return conv_float
        if t == "DateTime":

            def conv_datetime(v: Any) -> Any:
                if v is None:
                    return None
                if not isinstance(v, str):
                    raise payload_error(f"Cannot convert the literal '{v}' to the expected type 'Edm.DateTimeOffset'.")
                try:
                    return parse_datetime_us(v)
                except ValueError as exc:
                    raise payload_error(
                        f"Cannot convert the literal '{v}' to the expected type 'Edm.DateTimeOffset'."
                    ) from exc

            return conv_datetime

        def conv_guid(v: Any) -> Any:
            if v is None:
                return None
            if not isinstance(v, str) or not _GUID_RE.match(v):
                raise payload_error(f"Cannot convert the literal '{v}' to the expected type 'Edm.Guid'.")
            return v.lower()

        return conv_guid

    def to_json(self, entity_metadata_id: str = CONTACT_METADATA_ID) -> dict[str, Any]:
        """Full ``AttributeMetadata`` JSON including the derived type's properties."""
        out: dict[str, Any] = {
            "@odata.type": f"#Microsoft.Dynamics.CRM.{self.cast}",
            "MetadataId": self.metadata_id,
            "LogicalName": self.logical_name,
            "SchemaName": self.schema_name,
            "EntityLogicalName": self.entity,
            "AttributeType": self.attribute_type,
            "AttributeTypeName": {"Value": f"{self.attribute_type}Type"},
            "DisplayName": label(self.display_name),
            "Description": label(""),
            "IsCustomAttribute": self.is_custom,
            "IsManaged": not self.is_custom,
            "IsPrimaryId": self.is_primary_id,
            "IsPrimaryName": self.is_primary_name,
            "IsValidForCreate": self.valid_for_create,
            "IsValidForUpdate": self.valid_for_update,
            "IsValidForRead": True,
            "IsLogical": False,
            "AttributeOf": None,
            "RequiredLevel": {"Value": self.required_level, "CanBeChanged": True},
        }
        if self.attribute_type in ("String", "Memo"):
            out["MaxLength"] = self.max_length
            out["DatabaseLength"] = (self.max_length or 0) * 2
            out["Format"] = "Text" if self.attribute_type == "String" else "TextArea"
            if self.attribute_type == "String":
                out["FormatName"] = {"Value": "Text"}
        elif self.attribute_type in ("Picklist", "State", "Status"):
            default = self.default_form_value
            out["DefaultFormValue"] = next(iter(self.options or {}), None) if default is None else default
            out["OptionSet"] = {
                "MetadataId": stable_id(self.entity, self.logical_name, "optionset"),
                "Name": self.global_option_set or f"{self.entity}_{self.logical_name}",
                "OptionSetType": self.attribute_type,
                "Options": [
                    {"Value": value, "Label": label(text), "Color": None, "IsManaged": not self.is_custom}
                    for value, text in (self.options or {}).items()
                ],
            }
            if self.global_option_set is not None:
                out["OptionSet"]["IsGlobal"] = True
        elif self.attribute_type == "Boolean":
            texts = self.options or {0: "No", 1: "Yes"}
            out["DefaultValue"] = bool(CREATE_DEFAULTS.get(self.logical_name, False))
            out["OptionSet"] = {
                "MetadataId": stable_id(self.entity, self.logical_name, "optionset"),
                "Name": f"{self.entity}_{self.logical_name}",
                "OptionSetType": "Boolean",
                "TrueOption": {"Value": 1, "Label": label(texts.get(1, "Yes"))},
                "FalseOption": {"Value": 0, "Label": label(texts.get(0, "No"))},
            }
        elif self.attribute_type in ("Integer", "BigInt", "Decimal", "Double", "Money"):
            out["MinValue"] = self.min_value
            out["MaxValue"] = self.max_value
        elif self.attribute_type == "DateTime":
            out["Format"] = "DateAndTime"
            out["DateTimeBehavior"] = {"Value": "UserLocal"}
        elif self.attribute_type in ("Lookup", "Owner"):
            out["Targets"] = list(self.targets)
        return out


def _s(name: str, length: int, display: str, **kw: Any) -> AttributeMeta:
    return AttributeMeta(name, "String", display_name=display, max_length=length, **kw)


def _b(name: str, display: str, yes: str = "Yes", no: str = "No") -> AttributeMeta:
    return AttributeMeta(name, "Boolean", display_name=display, options={0: no, 1: yes})


def _system(name: str, attribute_type: str, display: str, **kw: Any) -> AttributeMeta:
    return AttributeMeta(
        name, attribute_type, display_name=display, valid_for_create=False, valid_for_update=False, **kw
    )


def standard_contact_attributes() -> list[AttributeMeta]:
    """The standard contact columns this emulator models (types and lengths as on a Dataverse org)."""
    return [
        AttributeMeta(
            "contactid",
            "Uniqueidentifier",
            display_name="Contact",
            schema_name="ContactId",
            is_primary_id=True,
            valid_for_update=False,
        ),
        _s("firstname", 50, "First Name", schema_name="FirstName"),
        _s("lastname", 50, "Last Name", schema_name="LastName"),
        AttributeMeta(
            "fullname",
            "String",
            display_name="Full Name",
            schema_name="FullName",
            max_length=160,
            is_primary_name=True,
            valid_for_create=False,
            valid_for_update=False,
        ),
        _s("emailaddress1", 100, "Email", schema_name="EMailAddress1"),
        _s("emailaddress2", 100, "Email Address 2", schema_name="EMailAddress2"),
        _s("emailaddress3", 100, "Email Address 3", schema_name="EMailAddress3"),
        _s("mobilephone", 50, "Mobile Phone", schema_name="MobilePhone"),
        _s("telephone1", 50, "Business Phone", schema_name="Telephone1"),
        _s("externaluseridentifier", 50, "External User Identifier", schema_name="ExternalUserIdentifier"),
        _b("donotbulkemail", "Do not allow Bulk Emails", "Do Not Allow", "Allow"),
        _b("donotemail", "Do not allow Emails", "Do Not Allow", "Allow"),
        _b("donotphone", "Do not allow Phone Calls", "Do Not Allow", "Allow"),
        _b("donotpostalmail", "Do not allow Mails", "Do Not Allow", "Allow"),
        _b("donotfax", "Do not allow Faxes", "Do Not Allow", "Allow"),
        _b("donotsendmm", "Send Marketing Materials", "Do Not Send", "Send"),
        _b("followemail", "Follow Email Activity", "Allow", "Do Not Allow"),
        AttributeMeta(
            "preferredcontactmethodcode",
            "Picklist",
            display_name="Preferred Method of Contact",
            schema_name="PreferredContactMethodCode",
            options={1: "Any", 2: "Email", 3: "Phone", 4: "Fax", 5: "Mail"},
        ),
        AttributeMeta(
            "statecode",
            "State",
            display_name="Status",
            schema_name="StateCode",
            options={0: "Active", 1: "Inactive"},
            valid_for_create=False,
        ),
        AttributeMeta(
            "statuscode",
            "Status",
            display_name="Status Reason",
            schema_name="StatusCode",
            options={1: "Active", 2: "Inactive"},
        ),
        _system("createdon", "DateTime", "Created On", schema_name="CreatedOn"),
        _system("modifiedon", "DateTime", "Modified On", schema_name="ModifiedOn"),
        _system("versionnumber", "BigInt", "Version Number", schema_name="VersionNumber"),
        _system("createdby", "Lookup", "Created By", schema_name="CreatedBy", targets=["systemuser"]),
        _system("modifiedby", "Lookup", "Modified By", schema_name="ModifiedBy", targets=["systemuser"]),
        _system(
            "createdonbehalfby",
            "Lookup",
            "Created By (Delegate)",
            schema_name="CreatedOnBehalfBy",
            targets=["systemuser"],
        ),
        _system(
            "modifiedonbehalfby",
            "Lookup",
            "Modified By (Delegate)",
            schema_name="ModifiedOnBehalfBy",
            targets=["systemuser"],
        ),
        _system("ownerid", "Owner", "Owner", schema_name="OwnerId", targets=["systemuser", "team"]),
    ]


def attribute_from_metadata_json(body: dict[str, Any]) -> AttributeMeta:
    """Build a custom column from a ``POST EntityDefinitions(...)/Attributes`` body."""
    odata_type = str(body.get("@odata.type", "")).lstrip("#").rsplit(".", 1)[-1]
    attribute_type = None
    for type_name, (cast, _kind) in ATTRIBUTE_TYPES.items():
        if cast == odata_type and type_name not in ("Owner", "Lookup", "State", "Status", "Uniqueidentifier"):
            attribute_type = type_name
            break
    if attribute_type is None:
        raise DataverseError(
            400, "0x80048d19", f"The attribute type '{odata_type or '(missing @odata.type)'}' is not supported."
        )
    schema_name = body.get("SchemaName")
    if not isinstance(schema_name, str) or not schema_name:
        raise DataverseError(400, "0x80044331", "A validation error occurred. SchemaName is required.")
    options: dict[int, str] | None = None
    if attribute_type == "Picklist":
        raw = ((body.get("OptionSet") or {}).get("Options")) or []
        options = {}
        for item in raw:
            text = ""
            localized = ((item.get("Label") or {}).get("LocalizedLabels")) or []
            if localized:
                text = localized[0].get("Label", "")
            options[int(item["Value"])] = text
    display = ""
    localized_display = ((body.get("DisplayName") or {}).get("LocalizedLabels")) or []
    if localized_display:
        display = localized_display[0].get("Label", "")
    return AttributeMeta(
        schema_name.lower(),
        attribute_type,
        schema_name=schema_name,
        display_name=display or schema_name,
        max_length=body.get("MaxLength"),
        options=options,
        min_value=body.get("MinValue"),
        max_value=body.get("MaxValue"),
        is_custom=True,
        required_level=str(((body.get("RequiredLevel") or {}).get("Value")) or "None"),
    )


def entity_json(model_attrs: list[AttributeMeta], change_tracking: bool) -> dict[str, Any]:
    """``EntityMetadata`` JSON for contact (without expansions)."""
    return {
        "@odata.type": "#Microsoft.Dynamics.CRM.EntityMetadata",
        "MetadataId": CONTACT_METADATA_ID,
        "LogicalName": ENTITY,
        "SchemaName": "Contact",
        "EntitySetName": ENTITY_SET,
        "LogicalCollectionName": ENTITY_SET,
        "CollectionSchemaName": "Contacts",
        "PrimaryIdAttribute": PRIMARY_ID,
        "PrimaryNameAttribute": "fullname",
        "ObjectTypeCode": 2,
        "ChangeTrackingEnabled": change_tracking,
        "IsCustomEntity": False,
        "IsManaged": True,
        "IsActivity": False,
        "OwnershipType": "UserOwned",
        "TableType": "Standard",
        "DisplayName": label("Contact"),
        "DisplayCollectionName": label("Contacts"),
        "Description": label("Person with whom a business unit has a relationship."),
    }
