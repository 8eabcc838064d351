"""Web API routes of ``EntityDefinitions``: the contact entity, its Attributes (with type casts) and Keys, and the
read-only metadata of the ``TableDef`` tables (the consent tables)."""

from __future__ import annotations

from typing import Any

from airflow_provider_didomi_dynamics.emulators.dataverse import errors as E
from airflow_provider_didomi_dynamics.emulators.dataverse.errors import DataverseError
from airflow_provider_didomi_dynamics.emulators.dataverse.http.wire import (
    Request,
    Response,
    aliases,
    method_not_allowed,
    parse_address,
    project,
    split_segment,
)
from airflow_provider_didomi_dynamics.emulators.dataverse.models import DataverseModel
from airflow_provider_didomi_dynamics.emulators.dataverse.models.metadata import (
    BASE_PROPERTIES,
    CAST_PROPERTIES,
    CAST_TO_TYPES,
    CONTACT_METADATA_ID,
    AttributeMeta,
    attribute_from_metadata_json,
)
from airflow_provider_didomi_dynamics.emulators.dataverse.models.queries import generic_resolver
from airflow_provider_didomi_dynamics.emulators.dataverse.models.tables import TableDef
from airflow_provider_didomi_dynamics.emulators.dataverse.odata import build_filter, parse_expand, parse_select


class MetadataRoutes:
    """Read the contact table's metadata; create columns and alternate keys."""

    def __init__(self, model: DataverseModel) -> None:
        self.model = model

    def route(self, req: Request, key: str | None, rest: str) -> Response:
        model = self.model
        entity = model.entity_metadata()
        if key is None and rest == "":
            if req.method != "GET":
                raise method_not_allowed(req.method)
            items = [entity, *(model.table_entity_json(d.entity_set) for d in model.table_definitions())]
            if "$filter" in req.params:
                predicate = build_filter(req.params["$filter"], generic_resolver(), aliases(req))
                items = [e for e in items if predicate(e)]
            value = [self._entity_view(req, e, self._attributes_of(e)) for e in items]
            return Response.json(200, {"@odata.context": f"{req.base}$metadata#EntityDefinitions", "value": value})
        if key is not None:
            address = parse_address(key)
            logical = address.get("logicalname") if isinstance(address, dict) else None
            if not (address == CONTACT_METADATA_ID or (isinstance(logical, str) and logical.lower() == "contact")):
                table = self._table_for(address)
                if table is None:
                    raise DataverseError(404, E.NOT_FOUND, f"Could not find entity with key {key}.")
                return self._table_route(req, table, rest)
        if rest == "":
            if req.method != "GET":
                raise method_not_allowed(req.method)
            data = {"@odata.context": f"{req.base}$metadata#EntityDefinitions/$entity"}
            data.update(self._entity_view(req, entity))
            return Response.json(200, data)
        sub, sub_key, sub_rest = split_segment(rest)
        if sub == "Attributes":
            return self._attributes(req, sub_key, sub_rest)
        if sub == "Keys":
            return self._keys(req, sub_key)
        raise DataverseError(404, E.SEGMENT_NOT_FOUND, f"Resource not found for the segment '{sub}'.")

    def _table_for(self, address: str | dict[str, Any]) -> TableDef | None:
        """The ``TableDef`` a key addresses (``LogicalName='...'`` or its MetadataId), if any."""
        logical = address.get("logicalname") if isinstance(address, dict) else None
        for definition in self.model.table_definitions():
            if address == definition.metadata_id or (
                isinstance(logical, str) and logical.lower() == definition.logical_name
            ):
                return definition
        return None

    def _attributes_of(self, entity: dict[str, Any]) -> list[AttributeMeta] | None:
        for definition in self.model.table_definitions():
            if entity.get("MetadataId") == definition.metadata_id:
                return list(definition.attributes)
        return None

    def _table_route(self, req: Request, table: TableDef, rest: str) -> Response:
        """``EntityDefinitions(LogicalName='<table>')`` with its Attributes (read-only) and (no) Keys."""
        if req.method != "GET":
            raise method_not_allowed(req.method)
        if rest == "":
            data = {"@odata.context": f"{req.base}$metadata#EntityDefinitions/$entity"}
            data.update(self._entity_view(req, self.model.table_entity_json(table.entity_set), list(table.attributes)))
            return Response.json(200, data)
        sub, sub_key, sub_rest = split_segment(rest)
        if sub == "Keys":
            return Response.json(
                200, {"@odata.context": f"{req.base}$metadata#EntityDefinitions({table.metadata_id})/Keys", "value": []}
            )
        if sub != "Attributes":
            raise DataverseError(404, E.SEGMENT_NOT_FOUND, f"Resource not found for the segment '{sub}'.")
        attrs = list(table.attributes)
        if sub_key is None:
            cast = sub_rest.removeprefix("Microsoft.Dynamics.CRM.") if sub_rest else None
            options = {k: v for k, v in req.params.items() if k in ("$select", "$filter", "$expand")}
            context = f"{req.base}$metadata#EntityDefinitions({table.metadata_id})/Attributes"
            if cast:
                context += f"/Microsoft.Dynamics.CRM.{cast}"
            return Response.json(200, {"@odata.context": context, "value": self._attribute_views(attrs, cast, options)})
        address = parse_address(sub_key)
        match = None
        for a in attrs:
            if (isinstance(address, str) and a.metadata_id == address) or (
                isinstance(address, dict) and str(address.get("logicalname", "")).lower() == a.logical_name
            ):
                match = a
        if match is None:
            raise DataverseError(404, E.NOT_FOUND, f"Could not find attribute with key {sub_key}.")
        cast = sub_rest.removeprefix("Microsoft.Dynamics.CRM.") if sub_rest else None
        return self._attribute_response(req, match, cast)

    def _entity_view(
        self, req: Request, entity: dict[str, Any], attributes: list[AttributeMeta] | None = None
    ) -> dict[str, Any]:
        out = dict(entity)
        if "$select" in req.params:
            select = parse_select(req.params["$select"])
            for name in select:
                if name not in entity:
                    raise DataverseError(
                        400,
                        E.PROPERTY_NOT_FOUND,
                        f"Could not find a property named '{name}' on type 'Microsoft.Dynamics.CRM.EntityMetadata'.",
                    )
            out = {k: v for k, v in entity.items() if k in select or k == "MetadataId" or k.startswith("@")}
        expand = parse_expand(req.params.get("$expand", ""))
        for name, options in expand.items():
            if name == "Attributes":
                source = self.model.attribute_list() if attributes is None else attributes
                attrs = self._attribute_views(source, None, options)
                out["Attributes"] = attrs
            elif name == "Keys":
                keys = self.model.key_list() if attributes is None else []
                out["Keys"] = project([k.to_json() for k in keys], options.get("$select"))
            else:
                raise DataverseError(
                    400,
                    E.PROPERTY_NOT_FOUND,
                    f"Could not find a property named '{name}' on type 'Microsoft.Dynamics.CRM.EntityMetadata'.",
                )
        return out

    def _attribute_response(self, req: Request, match: Any, cast: str | None) -> Response:
        """One attribute's definition, as ``EntityDefinitions(...)/Attributes(...)`` answers it (cast or not)."""
        options = {k: v for k, v in req.params.items() if k in ("$select", "$expand")}
        views = self._attribute_views([match], cast, options)
        if not views:
            raise DataverseError(404, E.NOT_FOUND, f"The attribute {match.logical_name} is not a {cast}.")
        view = views[0]
        if cast is None and "$select" not in options:
            view = match.to_json()
            view.pop("OptionSet", None)
        return Response.json(
            200, {"@odata.context": f"{req.base}$metadata#EntityDefinitions/Attributes/$entity", **view}
        )

    def _attribute_views(
        self, attrs: list[AttributeMeta], cast: str | None, options: dict[str, str]
    ) -> list[dict[str, Any]]:
        if cast is not None:
            types = CAST_TO_TYPES.get(cast)
            if types is None:
                raise DataverseError(404, E.SEGMENT_NOT_FOUND, f"Resource not found for the segment '{cast}'.")
            attrs = [a for a in attrs if a.attribute_type in types]
        expand = parse_expand(options.get("$expand", ""))
        for name in expand:
            if name != "OptionSet" or cast not in (
                "PicklistAttributeMetadata",
                "StateAttributeMetadata",
                "StatusAttributeMetadata",
                "BooleanAttributeMetadata",
                "EnumAttributeMetadata",
            ):
                type_name = cast or "AttributeMetadata"
                raise DataverseError(
                    400,
                    E.PROPERTY_NOT_FOUND,
                    f"Could not find a property named '{name}' on type 'Microsoft.Dynamics.CRM.{type_name}'.",
                )
        views = []
        for a in attrs:
            full = a.to_json()
            if "OptionSet" not in expand:
                full.pop("OptionSet", None)
            views.append(full)
        if "$filter" in options:
            predicate = build_filter(options["$filter"], generic_resolver(), {})
            views = [v for v in views if predicate(v)]
        select_text = options.get("$select")
        if select_text:
            allowed = set(BASE_PROPERTIES) | (CAST_PROPERTIES.get(cast, set()) if cast else set())
            select = parse_select(select_text)
            for name in select:
                if name not in allowed:
                    type_name = cast or "AttributeMetadata"
                    raise DataverseError(
                        400,
                        E.PROPERTY_NOT_FOUND,
                        f"Could not find a property named '{name}' on type 'Microsoft.Dynamics.CRM.{type_name}'.",
                    )
            keep = set(select) | {"MetadataId", "@odata.type"} | set(expand)
            views = [{k: v for k, v in view.items() if k in keep} for view in views]
        return views

    def _attributes(self, req: Request, key: str | None, rest: str) -> Response:
        model = self.model
        if key is None:
            cast = rest.removeprefix("Microsoft.Dynamics.CRM.") if rest else None
            if req.method == "POST" and cast is None:
                meta = model.create_attribute(attribute_from_metadata_json(req.json()))
                entity_id = f"{req.base}EntityDefinitions({CONTACT_METADATA_ID})/Attributes({meta.metadata_id})"
                return Response(204, b"", [("OData-EntityId", entity_id)])
            if req.method != "GET":
                raise method_not_allowed(req.method)
            options = {k: v for k, v in req.params.items() if k in ("$select", "$filter", "$expand")}
            views = self._attribute_views(model.attribute_list(), cast, options)
            context = f"{req.base}$metadata#EntityDefinitions({CONTACT_METADATA_ID})/Attributes"
            if cast:
                context += f"/Microsoft.Dynamics.CRM.{cast}"
            return Response.json(200, {"@odata.context": context, "value": views})
        address = parse_address(key)
        match = None
        for a in model.attribute_list():
            if (isinstance(address, str) and a.metadata_id == address) or (
                isinstance(address, dict) and str(address.get("logicalname", "")).lower() == a.logical_name
            ):
                match = a
        if match is None:
            raise DataverseError(404, E.NOT_FOUND, f"Could not find attribute with key {key}.")
        if req.method != "GET":
            raise method_not_allowed(req.method)
        cast = rest.removeprefix("Microsoft.Dynamics.CRM.") if rest else None
        return self._attribute_response(req, match, cast)

    def _keys(self, req: Request, key: str | None) -> Response:
        model = self.model
        if key is None:
            if req.method == "POST":
                body = req.json()
                name = body.get("SchemaName") if isinstance(body, dict) else None
                attributes = body.get("KeyAttributes") if isinstance(body, dict) else None
                if not isinstance(name, str) or not isinstance(attributes, list):
                    raise DataverseError(400, E.INVALID_ARGUMENT, "An entity key needs SchemaName and KeyAttributes.")
                display = None
                localized = ((body.get("DisplayName") or {}).get("LocalizedLabels")) or []
                if localized:
                    display = localized[0].get("Label")
                created = model.define_alternate_key(name, attributes, display_name=display or name)
                entity_id = f"{req.base}EntityDefinitions({CONTACT_METADATA_ID})/Keys({created.metadata_id})"
                return Response(204, b"", [("OData-EntityId", entity_id)])
            if req.method != "GET":
                raise method_not_allowed(req.method)
            views = [k.to_json() for k in model.key_list()]
            if "$filter" in req.params:
                predicate = build_filter(req.params["$filter"], generic_resolver(), aliases(req))
                views = [v for v in views if predicate(v)]
            return Response.json(
                200,
                {
                    "@odata.context": f"{req.base}$metadata#EntityDefinitions({CONTACT_METADATA_ID})/Keys",
                    "value": project(views, req.params.get("$select")),
                },
            )
        address = parse_address(key)
        match = None
        for k in model.key_list():
            if (isinstance(address, str) and k.metadata_id == address) or (
                isinstance(address, dict) and str(address.get("logicalname", "")).lower() == k.logical_name
            ):
                match = k
        if match is None:
            raise DataverseError(404, E.NOT_FOUND, f"Could not find entity key with key {key}.")
        if req.method == "DELETE":
            model.delete_alternate_key(match.logical_name)
            return Response(204)
        if req.method != "GET":
            raise method_not_allowed(req.method)
        view = project([match.to_json()], req.params.get("$select"))[0]
        return Response.json(200, {"@odata.context": f"{req.base}$metadata#EntityDefinitions/Keys/$entity", **view})
