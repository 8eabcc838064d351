"""The route tables of the Dataverse emulator (moto's ``urls.py``): which handler answers which path.

A request goes by path prefix to the Web API (``/api/data/v9.x/``), to the admin table (``/_emulator/``, see
:mod:`.admin`) or to Entra ID (anything else). Below ``/api/data/v9.x/`` a whole resource (the service document,
``$batch``) or the first segment's entity set picks the handler; the handler reads the key and the rest of the path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from airflow_provider_didomi_dynamics.emulators.dataverse.http.system import SYSTEM_SETS
from airflow_provider_didomi_dynamics.emulators.dataverse.http.wire import Request, Response

if TYPE_CHECKING:
    from airflow_provider_didomi_dynamics.emulators.dataverse.http.app import DataverseApp

ResourceHandler = Callable[[Request], Response]
SegmentHandler = Callable[[Request, "str | None", str], Response]

WEB_API_PREFIX = "/api/data/"


def resource_routes(app: DataverseApp) -> dict[str, ResourceHandler]:
    """Resources matched as a whole, before the path is split into segments."""
    return {
        "": app.service_document,
        "/": app.service_document,
        "$batch": app.batch_request,
    }


def segment_routes(app: DataverseApp) -> dict[str, SegmentHandler]:
    """First path segment (entity set, function or metadata root) -> handler of ``(request, key, rest)``."""
    routes: dict[str, SegmentHandler] = {
        "contacts": app.contacts.route,
        "WhoAmI": app.who_am_i,
        "WhoAmI()": app.who_am_i,
        "EntityDefinitions": app.metadata.route,
    }
    for name in SYSTEM_SETS:
        routes[name] = app.system.route_for(name)
    for name in app.model.tables:  # the TableDef tables (Purpose, Topic, Contact Point Consent)
        routes[name] = app.tables.route_for(name)
    return routes
