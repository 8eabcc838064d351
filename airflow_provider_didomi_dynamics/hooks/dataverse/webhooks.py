"""Register, update or remove the Dynamics webhook that tells Airflow when a contact changes (the seed's
bidirectional flow), idempotently: a second run with the same settings changes nothing.

Wire shape (Microsoft's webhook registration): a ``serviceendpoints`` row (``contract`` 8 = webhook, ``authtype`` 5 =
HTTP header, ``messageformat`` 2 = JSON) and one ``sdkmessageprocessingsteps`` row per message (asynchronous,
post-operation, filtered to the mapped attributes on Update).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from xml.sax.saxutils import quoteattr

from airflow_provider_didomi_dynamics.hooks.dataverse.hook import DataverseHook
from airflow_provider_didomi_dynamics.hooks.dataverse.odata import odata_string

WEBHOOK_CONTRACT = 8
AUTH_HTTP_HEADER = 5
MESSAGE_FORMAT_JSON = 2
STAGE_POST_OPERATION = 40
MODE_ASYNC = 1
DEFAULT_MESSAGES = ("Create", "Update")
_FINGERPRINT_PREFIX = "didomi-dynamics settings "


@dataclass(frozen=True)
class WebhookSpec:
    """What the webhook should look like; ``secret`` is sent as header ``header_name`` on every delivery."""

    name: str
    url: str
    header_name: str
    secret: str
    attributes: Sequence[str]
    entity: str = "contact"
    messages: Sequence[str] = DEFAULT_MESSAGES

    def fingerprint(self) -> str:
        """A digest of the write-only settings (auth value), kept in the description to detect a change."""
        digest = hashlib.sha256(f"{self.header_name}\0{self.secret}".encode()).hexdigest()[:16]
        return f"{_FINGERPRINT_PREFIX}{digest}"

    def auth_value(self) -> str:
        return f"<settings><setting name={quoteattr(self.header_name)} value={quoteattr(self.secret)} /></settings>"

    def filtering_attributes(self) -> str:
        return ",".join(sorted(dict.fromkeys(a.lower() for a in self.attributes)))


@dataclass
class WebhookResult:
    """What a run did to each piece: created, updated, unchanged or deleted."""

    endpoint: str = "unchanged"
    endpoint_id: str = ""
    steps: dict[str, str] = field(default_factory=dict)

    @property
    def changed(self) -> bool:
        return self.endpoint != "unchanged" or any(v != "unchanged" for v in self.steps.values())

    def as_dict(self) -> dict[str, Any]:
        return {"endpoint": self.endpoint, "endpoint_id": self.endpoint_id, "steps": dict(self.steps)}


def _entity_id(response: Any, entity_set: str) -> str:
    location = response.headers.get("OData-EntityId", "")
    return location.rsplit(f"{entity_set}(", 1)[-1].rstrip(")") if location else ""


def find_endpoint(hook: DataverseHook, name: str) -> dict[str, Any] | None:
    body = hook.get_json(
        "serviceendpoints",
        {
            "$select": "serviceendpointid,name,url,contract,authtype,messageformat,description",
            "$filter": f"name eq {odata_string(name)}",
        },
    )
    rows = body.get("value", [])
    return rows[0] if rows else None


def _message_ids(hook: DataverseHook, message: str, entity: str) -> tuple[str, str]:
    messages = hook.get_json(
        "sdkmessages", {"$select": "sdkmessageid,name", "$filter": f"name eq {odata_string(message)}"}
    ).get("value", [])
    if not messages:
        raise LookupError(f"Dataverse has no SDK message {message!r}")
    message_id = messages[0]["sdkmessageid"]
    filters = hook.get_json(
        "sdkmessagefilters",
        {
            "$select": "sdkmessagefilterid",
            "$filter": f"primaryobjecttypecode eq {odata_string(entity)} and _sdkmessageid_value eq {message_id}",
        },
    ).get("value", [])
    if not filters:
        raise LookupError(f"Dataverse has no {message} message filter for {entity}")
    return message_id, filters[0]["sdkmessagefilterid"]


def _steps_of(hook: DataverseHook, endpoint_id: str) -> list[dict[str, Any]]:
    return hook.get_json(
        "sdkmessageprocessingsteps",
        {
            "$select": "sdkmessageprocessingstepid,name,filteringattributes,_sdkmessageid_value,stage,mode",
            "$filter": f"_eventhandler_value eq {endpoint_id}",
        },
    ).get("value", [])


def ensure_webhook(hook: DataverseHook, spec: WebhookSpec, dry_run: bool = False) -> WebhookResult:
    """Make Dataverse match ``spec``; touch only what differs."""
    result = WebhookResult()
    endpoint = find_endpoint(hook, spec.name)
    wanted = {
        "name": spec.name,
        "url": spec.url,
        "contract": WEBHOOK_CONTRACT,
        "authtype": AUTH_HTTP_HEADER,
        "messageformat": MESSAGE_FORMAT_JSON,
        "description": spec.fingerprint(),
    }
    if endpoint is None:
        result.endpoint = "created"
        if not dry_run:
            response = hook.request(
                "POST", "serviceendpoints", json_body={**wanted, "authvalue": spec.auth_value()}, idempotent=False
            )
            result.endpoint_id = _entity_id(response, "serviceendpoints")
    else:
        result.endpoint_id = endpoint["serviceendpointid"]
        changes = {k: v for k, v in wanted.items() if endpoint.get(k) != v}
        if changes:
            result.endpoint = "updated"
            if "description" in changes:
                changes["authvalue"] = spec.auth_value()
            if not dry_run:
                hook.request("PATCH", f"serviceendpoints({result.endpoint_id})", json_body=changes)
    existing = _steps_of(hook, result.endpoint_id) if result.endpoint_id else []
    for message in spec.messages:
        message_id, filter_id = _message_ids(hook, message, spec.entity)
        filtering = spec.filtering_attributes() if message == "Update" else None
        step = next((s for s in existing if s.get("_sdkmessageid_value") == message_id), None)
        wanted_step = {
            "name": f"{spec.name}: {message} of {spec.entity}",
            "stage": STAGE_POST_OPERATION,
            "mode": MODE_ASYNC,
            "filteringattributes": filtering,
        }
        if step is None:
            result.steps[message] = "created"
            if not dry_run:
                hook.request(
                    "POST",
                    "sdkmessageprocessingsteps",
                    json_body={
                        **wanted_step,
                        "rank": 1,
                        "supporteddeployment": 0,
                        "asyncautodelete": True,
                        "eventhandler_serviceendpoint@odata.bind": f"/serviceendpoints({result.endpoint_id})",
                        "sdkmessageid@odata.bind": f"/sdkmessages({message_id})",
                        "sdkmessagefilterid@odata.bind": f"/sdkmessagefilters({filter_id})",
                    },
                    idempotent=False,
                )
            continue
        changes = {k: v for k, v in wanted_step.items() if (step.get(k) or None) != (v or None)}
        result.steps[message] = "updated" if changes else "unchanged"
        if changes and not dry_run:
            hook.request("PATCH", f"sdkmessageprocessingsteps({step['sdkmessageprocessingstepid']})", json_body=changes)
    return result


def remove_webhook(hook: DataverseHook, name: str) -> WebhookResult:
    """Delete the steps, then the endpoint; a webhook that is already gone is 'unchanged'."""
    result = WebhookResult()
    endpoint = find_endpoint(hook, name)
    if endpoint is None:
        return result
    result.endpoint_id = endpoint["serviceendpointid"]
    for step in _steps_of(hook, result.endpoint_id):
        hook.request("DELETE", f"sdkmessageprocessingsteps({step['sdkmessageprocessingstepid']})")
        result.steps[step.get("name") or step["sdkmessageprocessingstepid"]] = "deleted"
    hook.request("DELETE", f"serviceendpoints({result.endpoint_id})")
    result.endpoint = "deleted"
    return result
