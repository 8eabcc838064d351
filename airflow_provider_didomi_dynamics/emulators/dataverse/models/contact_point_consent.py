"""Customer Insights - Journeys' consent tables: Purpose, Topic and Contact Point Consent (version 4).

Names, choice values, required levels and navigation properties as Microsoft's entity reference lists them
(``msdynmkt_purpose``, ``msdynmkt_topic``, ``msdynmkt_contactpointconsent4``). Only the columns an integration
reads or writes are modelled; the Python seeding API (``add_purpose``, ``add_topic``, ``add_consent_rows``) sits
here too.
"""

from __future__ import annotations

from typing import Any

from airflow_provider_didomi_dynamics.emulators.dataverse.models.metadata import AttributeMeta
from airflow_provider_didomi_dynamics.emulators.dataverse.models.tables import LookupDef, TableDef, Tables

PURPOSE = "msdynmkt_purpose"
TOPIC = "msdynmkt_topic"
CONSENT = "msdynmkt_contactpointconsent4"
PURPOSES = "msdynmkt_purposes"
TOPICS = "msdynmkt_topics"
CONSENTS = "msdynmkt_contactpointconsent4s"

# msdynmkt_contactpointtype (global choice msdynmkt_contactpointtype)
CONTACT_POINT_TYPES = {534120000: "Email", 534120001: "Text Message", 534120002: "Custom", 534120003: "Voice"}
# msdynmkt_value (global choice msdynmkt_consentvalue)
CONSENT_VALUES = {534120000: "Not Set", 534120001: "Opted In", 534120002: "Opted Out"}
# msdynmkt_contactpointconsenttype (global choice msdynmkt_consentlevel)
CONSENT_LEVELS = {534120000: "Purpose", 534120001: "Topic"}
# msdynmkt_source (global choice msdynmkt_consentsource)
CONSENT_SOURCES = {
    534120000: "Internal",
    534120001: "Preference page",
    534120002: "Text message",
    534120003: "Loaded",
    534120004: "Preference Center",
    534120005: "Realtime Marketing Form",
    534120006: "Subscription Center",
    534120007: "Email - list-unsubscribe",
}
# msdynmkt_type on a purpose (global choice msdynmkt_purposetype)
PURPOSE_TYPES = {534120000: "Commercial Communication", 534120001: "Transactional Communication", 534120002: "Tracking"}
STATES = {0: "Active", 1: "Inactive"}
STATUSES = {1: "Active", 2: "Inactive"}

EMAIL, TEXT, CUSTOM, VOICE = 534120000, 534120001, 534120002, 534120003
NOT_SET, OPTED_IN, OPTED_OUT = 534120000, 534120001, 534120002
PURPOSE_LEVEL, TOPIC_LEVEL = 534120000, 534120001
COMMERCIAL = 534120000


def _attr(entity: str, name: str, attribute_type: str, display: str, **kw: Any) -> AttributeMeta:
    return AttributeMeta(name, attribute_type, display_name=display, entity=entity, **kw)


def _system_columns(entity: str, display: str) -> list[AttributeMeta]:
    """The audit, state and owner columns every user-owned table has."""

    def ro(name: str, attribute_type: str, text: str, **kw: Any) -> AttributeMeta:
        return _attr(entity, name, attribute_type, text, valid_for_create=False, valid_for_update=False, **kw)

    return [
        _attr(
            entity,
            "statecode",
            "State",
            "Status",
            options=STATES,
            required_level="SystemRequired",
            global_option_set=f"{entity}_statecode",
        ),
        _attr(
            entity, "statuscode", "Status", "Status Reason", options=STATUSES, global_option_set=f"{entity}_statuscode"
        ),
        ro("createdon", "DateTime", "Created On", schema_name="CreatedOn"),
        ro("modifiedon", "DateTime", "Modified On", schema_name="ModifiedOn"),
        ro("versionnumber", "BigInt", "Version Number", schema_name="VersionNumber"),
        ro("createdby", "Lookup", "Created By", schema_name="CreatedBy", targets=["systemuser"]),
        ro("modifiedby", "Lookup", "Modified By", schema_name="ModifiedBy", targets=["systemuser"]),
        ro(
            "createdonbehalfby",
            "Lookup",
            "Created By (Delegate)",
            schema_name="CreatedOnBehalfBy",
            targets=["systemuser"],
        ),
        ro(
            "modifiedonbehalfby",
            "Lookup",
            "Modified By (Delegate)",
            schema_name="ModifiedOnBehalfBy",
            targets=["systemuser"],
        ),
        ro("ownerid", "Owner", "Owner", schema_name="OwnerId", targets=["systemuser", "team"]),
    ]


def purpose_table() -> TableDef:
    e = PURPOSE
    return TableDef(
        logical_name=e,
        entity_set=PURPOSES,
        schema_name=e,
        display_name="Purpose",
        display_collection_name="Purposes",
        primary_id="msdynmkt_purposeid",
        primary_name="msdynmkt_name",
        object_type_code=10650,
        description="Why a contact point may be contacted (commercial, transactional, tracking).",
        attributes=[
            _attr(
                e,
                "msdynmkt_purposeid",
                "Uniqueidentifier",
                "Purpose",
                schema_name="msdynmkt_purposeId",
                is_primary_id=True,
                valid_for_update=False,
                required_level="SystemRequired",
            ),
            _attr(
                e,
                "msdynmkt_name",
                "String",
                "Name",
                max_length=100,
                is_primary_name=True,
                required_level="ApplicationRequired",
            ),
            _attr(e, "msdynmkt_description", "String", "Description", max_length=100),
            _attr(
                e,
                "msdynmkt_type",
                "Picklist",
                "Type",
                options=PURPOSE_TYPES,
                required_level="ApplicationRequired",
                default_form_value=-1,
                global_option_set="msdynmkt_purposetype",
            ),
            *_system_columns(e, "Purpose"),
        ],
        create_defaults={"statecode": 0, "statuscode": 1, "msdynmkt_type": COMMERCIAL},
    )


def topic_table() -> TableDef:
    e = TOPIC
    return TableDef(
        logical_name=e,
        entity_set=TOPICS,
        schema_name=e,
        display_name="Topic",
        display_collection_name="Topics",
        primary_id="msdynmkt_topicid",
        primary_name="msdynmkt_name",
        object_type_code=10651,
        description="A finer subject under a purpose that a contact point can opt in to or out of.",
        attributes=[
            _attr(
                e,
                "msdynmkt_topicid",
                "Uniqueidentifier",
                "Topic",
                schema_name="msdynmkt_topicId",
                is_primary_id=True,
                valid_for_update=False,
                required_level="SystemRequired",
            ),
            _attr(
                e,
                "msdynmkt_name",
                "String",
                "Name",
                max_length=100,
                is_primary_name=True,
                required_level="ApplicationRequired",
            ),
            _attr(
                e,
                "msdynmkt_purposeid",
                "Lookup",
                "Purpose",
                schema_name="msdynmkt_purposeId",
                targets=[PURPOSE],
                required_level="ApplicationRequired",
            ),
            *_system_columns(e, "Topic"),
        ],
        lookups=(LookupDef("msdynmkt_purposeid", "msdynmkt_purposeId", PURPOSE, required=True),),
        create_defaults={"statecode": 0, "statuscode": 1},
    )


def consent_table() -> TableDef:
    e = CONSENT
    return TableDef(
        logical_name=e,
        entity_set=CONSENTS,
        schema_name=e,
        display_name="Contact Point Consent",
        display_collection_name="Contact Point Consents",
        primary_id="msdynmkt_contactpointconsent4id",
        primary_name="msdynmkt_contactpointvalue",
        object_type_code=10652,
        description="Consent of one contact point (an email address, a phone number) for a purpose or topic.",
        change_tracking=True,
        attributes=[
            _attr(
                e,
                "msdynmkt_contactpointconsent4id",
                "Uniqueidentifier",
                "Contact Point Consent",
                schema_name="msdynmkt_contactpointconsent4Id",
                is_primary_id=True,
                valid_for_update=False,
                required_level="SystemRequired",
            ),
            _attr(
                e,
                "msdynmkt_contactpointvalue",
                "String",
                "Contact point",
                max_length=400,
                is_primary_name=True,
                required_level="ApplicationRequired",
            ),
            _attr(
                e,
                "msdynmkt_contactpointtype",
                "Picklist",
                "Channel",
                options=CONTACT_POINT_TYPES,
                required_level="ApplicationRequired",
                default_form_value=-1,
                global_option_set="msdynmkt_contactpointtype",
            ),
            _attr(
                e,
                "msdynmkt_value",
                "Picklist",
                "Consent status",
                options=CONSENT_VALUES,
                required_level="ApplicationRequired",
                default_form_value=-1,
                global_option_set="msdynmkt_consentvalue",
            ),
            _attr(
                e,
                "msdynmkt_contactpointconsenttype",
                "Picklist",
                "Consent type",
                options=CONSENT_LEVELS,
                default_form_value=-1,
                global_option_set="msdynmkt_consentlevel",
            ),
            _attr(
                e,
                "msdynmkt_purposeid",
                "Lookup",
                "Purpose",
                schema_name="msdynmkt_purposeId",
                targets=[PURPOSE],
                required_level="ApplicationRequired",
            ),
            _attr(e, "msdynmkt_topicid", "Lookup", "Topic", schema_name="msdynmkt_topicId", targets=[TOPIC]),
            _attr(
                e,
                "msdynmkt_source",
                "Picklist",
                "Source",
                options=CONSENT_SOURCES,
                required_level="ApplicationRequired",
                default_form_value=534120000,
                global_option_set="msdynmkt_consentsource",
            ),
            _attr(e, "msdynmkt_reason", "String", "Reason Description", max_length=500),
            _attr(e, "msdynmkt_modifiedonbehalf", "String", "Who requested the change", max_length=500),
            *_system_columns(e, "Contact Point Consent"),
        ],
        lookups=(
            LookupDef("msdynmkt_purposeid", "msdynmkt_purposeId", PURPOSE, required=True),
            LookupDef("msdynmkt_topicid", "msdynmkt_topicId", TOPIC),
        ),
        create_defaults={"statecode": 0, "statuscode": 1, "msdynmkt_source": 534120000},
    )


def consent_tables() -> list[TableDef]:
    """The three tables in dependency order (a topic needs its purpose, a consent row both)."""
    return [purpose_table(), topic_table(), consent_table()]


class ContactPointConsent(Tables):
    """Seeding the consent tables from Python, in the shapes the Journeys app writes them."""

    def add_purpose(self, name: str, *, purpose_type: int = COMMERCIAL) -> str:
        """Create a Purpose record (as the platform); returns its id."""
        return self.add_table_rows(PURPOSES, [{"msdynmkt_name": name, "msdynmkt_type": purpose_type}])[0]

    def add_topic(self, name: str, purpose_id: str) -> str:
        """Create a Topic under a purpose; returns its id."""
        body = {"msdynmkt_name": name, "msdynmkt_purposeId@odata.bind": f"/{PURPOSES}({purpose_id})"}
        return self.add_table_rows(TOPICS, [body])[0]

    def add_consent_rows(self, rows: list[dict[str, Any]], *, client_id: str | None = None) -> list[str]:
        """Seed consent rows: Web API bodies, or ``purpose_id`` / ``topic_id`` shortcuts for the two binds.

        Missing ``msdynmkt_contactpointtype`` means Email and a missing ``msdynmkt_contactpointconsenttype`` is
        derived (Topic when a topic is bound). ``client_id`` makes another app the writer (default: the sync's).
        """
        bodies = []
        for source in rows:
            body = {k: v for k, v in source.items() if k not in ("purpose_id", "topic_id")}
            if "purpose_id" in source:
                body["msdynmkt_purposeId@odata.bind"] = f"/{PURPOSES}({source['purpose_id']})"
            if source.get("topic_id"):
                body["msdynmkt_topicId@odata.bind"] = f"/{TOPICS}({source['topic_id']})"
            body.setdefault("msdynmkt_contactpointtype", EMAIL)
            has_topic = bool(source.get("topic_id") or body.get("msdynmkt_topicId@odata.bind"))
            body.setdefault("msdynmkt_contactpointconsenttype", TOPIC_LEVEL if has_topic else PURPOSE_LEVEL)
            bodies.append(body)
        return self.add_table_rows(CONSENTS, bodies, client_id=client_id)

    def purposes(self) -> list[dict[str, Any]]:
        return self.table_rows(PURPOSES)

    def topics(self) -> list[dict[str, Any]]:
        return self.table_rows(TOPICS)

    def consent_rows(self) -> list[dict[str, Any]]:
        return self.table_rows(CONSENTS)
