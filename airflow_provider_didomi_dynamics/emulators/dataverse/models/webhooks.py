"""Asynchronous webhook delivery: a ``RemoteExecutionContext`` POSTed to each matching service endpoint.

Dataverse runs async (mode 1) post-operation (stage 40) steps from its async service after the transaction
commits, so delivery happens on a background thread and never blocks or fails the write that caused it. The
:class:`Webhooks` layer of the model matches each write against the registered steps.
"""

from __future__ import annotations

import json
import queue
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import requests

from airflow_provider_didomi_dynamics.emulators.dataverse.models.identity import Caller
from airflow_provider_didomi_dynamics.emulators.dataverse.models.metadata import ENTITY, PRIMARY_ID
from airflow_provider_didomi_dynamics.emulators.dataverse.models.system_tables import SystemTables

CONTRACT_NS = "http://schemas.microsoft.com/xrm/2011/Contracts"

AUTH_WEBHOOK_KEY = 4
AUTH_HTTP_HEADER = 5
AUTH_HTTP_QUERY_STRING = 6


def parse_settings(authvalue: str) -> dict[str, str]:
    """``<settings><setting name="x-key" value="..."/></settings>`` to a dict (HttpHeader/HttpQueryString auth)."""
    if not authvalue:
        return {}
    try:
        root = ET.fromstring(authvalue)
    except ET.ParseError:
        return {}
    return {s.get("name", ""): s.get("value", "") for s in root.iter("setting") if s.get("name")}


def _date(us: int) -> str:
    return f"/Date({us // 1000})/"


def _attribute_value(attr_type: str | None, value: Any) -> Any:
    """Serialise a column value the way the DataContract JSON serializer does in a RemoteExecutionContext."""
    if value is None:
        return None
    if attr_type in ("Picklist", "State", "Status"):
        return {"__type": f"OptionSetValue:{CONTRACT_NS}", "Value": value}
    if attr_type == "DateTime":
        return _date(value)
    if attr_type in ("Lookup", "Owner"):
        return {
            "__type": f"EntityReference:{CONTRACT_NS}",
            "Id": value,
            "KeyAttributes": [],
            "LogicalName": "systemuser",
            "Name": None,
            "RowVersion": None,
        }
    if attr_type == "Money":
        return {"__type": f"Money:{CONTRACT_NS}", "Value": value}
    return value


@dataclass
class WebhookEvent:
    """One contact change for which a step matched, captured at commit time."""

    message: str  # Create | Update
    entity_id: str
    target: dict[str, Any]  # logical name -> stored value (only the columns in the request, plus the id)
    post_image: dict[str, Any]
    attribute_types: dict[str, str]
    user_id: str
    initiating_user_id: str
    user_aad_object_id: str | None
    organization_id: str
    organization_name: str
    business_unit_id: str
    correlation_id: str
    at_us: int


@dataclass
class Delivery:
    """One POST to a service endpoint (kept for inspection)."""

    url: str
    message: str
    entity_id: str
    step_id: str
    status: int | None = None
    error: str | None = None
    attempts: int = 0
    body: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "message": self.message,
            "entity_id": self.entity_id,
            "step_id": self.step_id,
            "status": self.status,
            "error": self.error,
            "attempts": self.attempts,
        }


def build_context(event: WebhookEvent, step: dict[str, Any]) -> dict[str, Any]:
    """The JSON ``RemoteExecutionContext`` for one event and one step."""

    def entity(values: dict[str, Any]) -> dict[str, Any]:
        return {
            "__type": f"Entity:{CONTRACT_NS}",
            "Attributes": [
                {"key": k, "value": _attribute_value(event.attribute_types.get(k), v)} for k, v in values.items()
            ],
            "EntityState": None,
            "FormattedValues": [],
            "Id": event.entity_id,
            "KeyAttributes": [],
            "LogicalName": "contact",
            "RelatedEntities": [],
            "RowVersion": str(values.get("versionnumber", "")) or None,
        }

    no_user = "00000000-0000-0000-0000-000000000000"
    output_parameters: list[dict[str, Any]] = []
    if event.message == "Create":
        output_parameters.append({"key": "id", "value": event.entity_id})
    return {
        "BusinessUnitId": event.business_unit_id,
        "CorrelationId": event.correlation_id,
        "Depth": 1,
        "InitiatingUserAzureActiveDirectoryObjectId": event.user_aad_object_id or no_user,
        "InitiatingUserId": event.initiating_user_id,
        "InputParameters": [{"key": "Target", "value": entity(event.target)}],
        "IsExecutingOffline": False,
        "IsInTransaction": False,
        "IsOfflinePlayback": False,
        "IsolationMode": 1,
        "MessageName": event.message,
        "Mode": int(step.get("mode", 1)),
        "OperationCreatedOn": _date(event.at_us),
        "OperationId": str(uuid.uuid4()),
        "OrganizationId": event.organization_id,
        "OrganizationName": event.organization_name,
        "OutputParameters": output_parameters,
        "OwningExtension": {
            "Id": step["sdkmessageprocessingstepid"],
            "KeyAttributes": [],
            "LogicalName": "sdkmessageprocessingstep",
            "Name": step.get("name"),
            "RowVersion": None,
        },
        "ParentContext": None,
        "PostEntityImages": [],
        "PreEntityImages": [],
        "PrimaryEntityId": event.entity_id,
        "PrimaryEntityName": "contact",
        "RequestId": str(uuid.uuid4()),
        "SecondaryEntityName": "none",
        "SharedVariables": [],
        "Stage": int(step.get("stage", 40)),
        "UserAzureActiveDirectoryObjectId": event.user_aad_object_id or no_user,
        "UserId": event.user_id,
    }


class WebhookDispatcher:
    """A queue and one daemon worker thread that POSTs contexts, with one retry on 502/503/504."""

    def __init__(self, organization_host: str, verify: str | bool = True, timeout_s: float = 60.0) -> None:
        self.organization_host = organization_host
        self.verify: str | bool = verify
        self.timeout_s = timeout_s
        self.deliveries: list[Delivery] = []
        self._queue: queue.Queue[tuple[dict[str, Any], dict[str, Any], WebhookEvent] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._session = requests.Session()

    def enqueue(self, step: dict[str, Any], endpoint: dict[str, Any], event: WebhookEvent) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="dataverse-webhooks", daemon=True)
                self._thread.start()
        self._queue.put((step, endpoint, event))

    def wait_idle(self, timeout_s: float = 10.0) -> bool:
        """Block until every queued delivery has been attempted (tests use this)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._queue.unfinished_tasks == 0:
                return True
            time.sleep(0.01)
        return False

    def stop(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout=5)
        self._session.close()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                self._deliver(*item)
            finally:
                self._queue.task_done()

    def _deliver(self, step: dict[str, Any], endpoint: dict[str, Any], event: WebhookEvent) -> None:
        body = build_context(event, step)
        url = str(endpoint.get("url") or "")
        headers = {
            "Content-Type": "application/json",
            "x-ms-dynamics-organization": self.organization_host,
            "x-ms-dynamics-entity-name": "contact",
            "x-ms-dynamics-request-name": event.message,
            "x-ms-correlation-request-id": event.correlation_id,
        }
        authtype = int(endpoint.get("authtype") or 0)
        authvalue = str(endpoint.get("_authvalue") or "")
        if authtype == AUTH_HTTP_HEADER:
            headers.update(parse_settings(authvalue))
        elif authtype in (AUTH_WEBHOOK_KEY, AUTH_HTTP_QUERY_STRING):
            params = {"code": authvalue} if authtype == AUTH_WEBHOOK_KEY else parse_settings(authvalue)
            parts = urlsplit(url)
            query = parts.query + ("&" if parts.query else "") + urlencode(params)
            url = urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))
        delivery = Delivery(
            url=url,
            message=event.message,
            entity_id=event.entity_id,
            step_id=step["sdkmessageprocessingstepid"],
            body=body,
            headers=headers,
        )
        payload = json.dumps(body).encode()
        for attempt in (1, 2):
            delivery.attempts = attempt
            try:
                verify = self.verify
                if isinstance(verify, Path):
                    verify = str(verify)
                response = self._session.post(url, data=payload, headers=headers, timeout=self.timeout_s, verify=verify)
                delivery.status = response.status_code
                delivery.error = None if response.ok else response.text[:500]
                if response.status_code not in (502, 503, 504):
                    break
            except requests.RequestException as exc:
                delivery.error = str(exc)
                break
        with self._lock:
            self.deliveries.append(delivery)


class Webhooks(SystemTables):
    """Match a write against the registered steps and hand the events to the dispatcher."""

    def _emit(self, message: str, row: dict[str, Any], target: dict[str, Any], caller: Caller) -> None:
        requested = set(target.pop("__requested__", None) or target)
        matches = []
        for step in self._steps.rows.values():
            if step.get("statecode", 0) != 0:
                continue
            msg = self._sdkmessages.rows.get(step.get("_sdkmessageid_value", ""))
            if msg is None or msg["name"] != message:
                continue
            fid = step.get("_sdkmessagefilterid_value")
            if fid is not None:
                flt = self._filters.rows.get(fid)
                if flt is None or flt["primaryobjecttypecode"] != ENTITY:
                    continue
            filtering = step.get("filteringattributes")
            if message == "Update" and filtering:
                wanted = {a.strip().lower() for a in str(filtering).split(",") if a.strip()}
                if not wanted & {self._lookup_columns.get(k, k) for k in requested}:
                    continue
            endpoint = self._endpoints.rows.get(step.get("_eventhandler_value", ""))
            if endpoint is None:
                continue
            matches.append((step, endpoint))
        if not matches:
            return
        types = {m.logical_name: m.attribute_type for m in self.attributes.values()}
        logical_target = {self._lookup_columns.get(k, k): v for k, v in target.items()}
        post_image = {self._lookup_columns.get(k, k): v for k, v in row.items()}
        event = WebhookEvent(
            message=message,
            entity_id=row[PRIMARY_ID],
            target=logical_target,
            post_image=post_image,
            attribute_types=types,
            user_id=caller.user.systemuserid,
            initiating_user_id=caller.user.systemuserid,
            user_aad_object_id=caller.user.azureactivedirectoryobjectid,
            organization_id=self.organization_id,
            organization_name=self.organization_name,
            business_unit_id=self.business_unit_id,
            correlation_id=str(uuid.uuid4()),
            at_us=row["modifiedon"],
        )
        for step, endpoint in matches:
            self.webhooks.enqueue(step, endpoint, event)

    def webhook_deliveries(self) -> list[dict[str, Any]]:
        return [d.as_dict() for d in list(self.webhooks.deliveries)]

    def wait_for_webhooks(self, timeout_s: float = 10.0) -> bool:
        return self.webhooks.wait_idle(timeout_s)

    def close(self) -> None:
        self.webhooks.stop()
