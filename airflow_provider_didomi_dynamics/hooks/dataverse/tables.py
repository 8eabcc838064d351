"""Which Dataverse table a read or a write is about: the names the Web API needs, in one small descriptor.

The hook's reads, key lookups and bulk writes take a :class:`Table` (``CONTACT`` by default), so a second table
(Contact Point Consent comes next) is one more descriptor, not a copy of the contact code.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from airflow_provider_didomi_dynamics.hooks.dataverse.odata import odata_string


@dataclass(frozen=True)
class Table:
    """One Dataverse table.

    ``logical_name`` names it in metadata and bulk messages (``contact``), ``entity_set`` in URLs (``contacts``),
    ``id_attribute`` is its primary key (``contactid``); ``alternate_key`` is the column an Active alternate key
    addresses rows by (the config chooses it for contacts: ``contact_key_attribute``); ``lookups`` maps a
    navigation property to the entity set it points to, written as ``<nav>@odata.bind``.
    """

    logical_name: str
    entity_set: str
    id_attribute: str
    alternate_key: str | None = None
    lookups: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def named(cls, logical_name: str) -> Table:
        """A table whose names follow Dataverse's default pattern (``x`` -> ``xs``, ``xid``)."""
        return cls(logical_name, f"{logical_name}s", f"{logical_name}id")

    def keyed_by(self, attribute: str) -> Table:
        """The same table addressed by ``attribute`` (an Active alternate key on it)."""
        return replace(self, alternate_key=attribute)

    def row_path(self, row_id: str) -> str:
        """``contacts(<id>)``: one row by primary key."""
        return f"{self.entity_set}({row_id})"

    def key_path(self, value: str, attribute: str | None = None) -> str:
        """``contacts(emailaddress1='a@x.com')``: one row by alternate key (the ``@odata.id`` of an upsert)."""
        key = attribute or self.alternate_key
        if not key:
            raise ValueError(f"table {self.logical_name} has no alternate key to address rows by")
        return f"{self.entity_set}({key}={odata_string(value)})"

    def bind(self, navigation: str, row_id: str) -> dict[str, Any]:
        """``{"<nav>@odata.bind": "/<entity set>(<id>)"}``: set a lookup column to another table's row."""
        try:
            target = self.lookups[navigation]
        except KeyError:
            raise ValueError(f"table {self.logical_name} has no lookup {navigation!r}") from None
        return {f"{navigation}@odata.bind": f"/{target}({row_id})"}


CONTACT = Table("contact", "contacts", "contactid")
# Customer Insights - Journeys: consent per contact point and purpose or topic (version 4; 2 and 3 are legacy).
PURPOSE = Table("msdynmkt_purpose", "msdynmkt_purposes", "msdynmkt_purposeid")
TOPIC = Table(
    "msdynmkt_topic", "msdynmkt_topics", "msdynmkt_topicid", lookups={"msdynmkt_purposeId": "msdynmkt_purposes"}
)
CONTACT_POINT_CONSENT = Table(
    "msdynmkt_contactpointconsent4",
    "msdynmkt_contactpointconsent4s",
    "msdynmkt_contactpointconsent4id",
    lookups={"msdynmkt_purposeId": "msdynmkt_purposes", "msdynmkt_topicId": "msdynmkt_topics"},
)


def as_table(table: Table | str) -> Table:
    """A :class:`Table`, or one from the logical name callers passed before tables existed (``"contact"``)."""
    return table if isinstance(table, Table) else Table.named(table)


def entity_set_of(table: Table | str) -> str:
    """The entity set of a :class:`Table`, or the entity set name itself (``"contacts"``, ``"serviceendpoints"``)."""
    return table.entity_set if isinstance(table, Table) else table


__all__ = ["CONTACT", "CONTACT_POINT_CONSENT", "PURPOSE", "TOPIC", "Table", "as_table", "entity_set_of"]
