"""Turn what a queue delivers from Didomi's webhooks into the run conf of a targeted ``didomi_to_dynamics`` run.

Didomi has no change feed to poll cheaply, but it POSTs one webhook per change to an endpoint a team owns, which
puts the body on the team's queue; Airflow's ``MessageQueueTrigger`` in an ``AssetWatcher`` wakes a DAG, whose task
calls :func:`forward_run_conf` and triggers ``didomi_to_dynamics`` with it (docs/live-forward.md). Only the ids are
taken from a message: the run re-reads each user from Didomi, so a late, repeated or out-of-order message still syncs
the user's latest state, and a repeat finds the contact already right (reported *unchanged*, nothing written).

Didomi's webhook body (developers.didomi.io, "Webhooks"): ``{"type": "<user|event>.<created|updated|deleted>",
"parameters": {...}}``; ``created`` and ``deleted`` carry ``parameters.entity``, ``updated`` carries ``source``,
``old_entity`` and ``new_entity``. A user entity has ``organization_user_id``; an event names its user in
``user.organization_user_id``. With Didomi's "flatten" option (reported by a secondary source, not Didomi's page)
``new_entity`` is merged into ``entity`` and nested keys are joined by ``__`` (``user__organization_user_id``).

The envelopes read here, as confirmed in the released providers' code (common-messaging 2.1.2, amazon 9.39.0,
apache-kafka 2.1.0, microsoft-azure 15.2.1; airflow-core 3.3.2):

- ``MessageQueueTrigger`` only dispatches by scheme to the provider's trigger and yields that trigger's events
  (``common/messaging/triggers/msg_queue.py``); an ``AssetWatcher``'s event becomes an asset event whose ``extra`` is
  ``{"from_trigger": True, "payload": <the event's payload>}`` (``airflow/models/trigger.py``, ``submit_event``),
  read in the DAG as ``triggering_asset_events[asset][i].extra``.
- SQS (``amazon/aws/triggers/sqs.py``, ``SqsSensorTrigger``): ``{"status": "success", "message_batch": [...]}``, each
  item one of ``receive_message``'s ``Messages`` (``MessageId``, ``ReceiptHandle``, ``Body`` as text). SNS -> SQS
  without raw delivery wraps the body as ``{"Type": "Notification", "Message": "<body>"}``.
- Kafka (``apache/kafka/triggers/await_message.py``, ``AwaitMessageTrigger``): the payload is whatever
  ``apply_function(message)`` returns, if truthy, else the record is skipped; with no ``apply_function`` (allowed
  there, required by ``KafkaMessageQueueProvider`` for ``queue=`` URIs) it is ``message.value()`` decoded as UTF-8.
  See :func:`kafka_apply_function`.
- Azure Service Bus (``microsoft/azure/triggers/message_bus.py``; scheme ``azure+servicebus``): ``{"message": "<body>",
  "queue": ...}`` or ``{"message": ..., "topic": ..., "subscription": ...}``; the trigger decodes a body of bytes, or
  joins a body of byte sections, as UTF-8.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from airflow_provider_didomi_dynamics.exceptions import DidomiWebhookMessageError

log = logging.getLogger(__name__)

FORWARD_DAG_ID = "didomi_to_dynamics"
WEBHOOK_TYPES = ("user.created", "user.updated", "user.deleted", "event.created", "event.updated", "event.deleted")
# The dotted path Kafka's AwaitMessageTrigger imports in the triggerer.
KAFKA_APPLY_FUNCTION = f"{__name__}.kafka_apply_function"

DELETED_USER = (
    "a user deleted in Didomi is not a consent change: the Dynamics contact keeps its consent columns "
    "(erase it in Dynamics through your own deletion process if you must)"
)
ANONYMOUS_USER = "an anonymous Didomi user (no organization_user_id): no Dynamics contact can be matched to it"
_BYTES = (bytes, bytearray, memoryview)
_TEXT = (str, *_BYTES)
_FIX_BODY = "put Didomi's webhook body on the queue unchanged (JSON text), or inside an SQS, SNS or Service Bus message"


@dataclass(frozen=True)
class Ignored:
    """A webhook that names no user to re-sync, and why: kept so a caller can act on deletions itself."""

    path: str
    type: str
    organization_user_id: str | None
    reason: str


@dataclass(frozen=True)
class WebhookUsers:
    """What a message asks of the forward sync: the users to re-sync (no repeats, first seen first) and the rest."""

    organization_user_ids: tuple[str, ...]
    ignored: tuple[Ignored, ...]


def forward_run_conf(message: Any) -> dict[str, Any]:
    """The ``didomi_to_dynamics`` run conf for ``message``: ``{"organization_user_ids": [...]}``, nothing else.

    ``message`` is anything a queue or Airflow hands over (see the module doc): a webhook body as dict, JSON text or
    bytes, a batch (list) of them, an SQS / SNS / Service Bus / Kafka envelope, an asset event or its ``extra``, a list
    of asset events, or a run conf this function made. ``user.deleted`` and anonymous users are left out with a log
    line each (:func:`read_message` returns them). An empty list means nothing to sync: do not trigger the run then,
    as a run without ``organization_user_ids`` syncs its whole window. Raises :class:`DidomiWebhookMessageError`.
    """
    users = read_message(message)
    for item in users.ignored:
        who = f" {item.organization_user_id}" if item.organization_user_id else ""
        log.info("%s: %s%s not synced: %s", item.path, item.type, who, item.reason)
    return {"organization_user_ids": list(users.organization_user_ids)}


def read_message(message: Any) -> WebhookUsers:
    """The users ``message`` asks to re-sync, and the webhooks it carries that name none (deletions, anonymous)."""
    ids: list[str] = []
    ignored: list[Ignored] = []
    _walk(message, "message", ids, ignored)
    return WebhookUsers(tuple(dict.fromkeys(ids)), tuple(ignored))


def kafka_apply_function(message: Any) -> dict[str, Any] | str | None:
    """``apply_function`` for ``MessageQueueTrigger(scheme="kafka", ...)``: the run conf, or None to skip the record.

    It runs in the triggerer, which commits the record's offset either way and yields a truthy return as the asset
    event's payload. None for a record with nothing to sync (a tombstone, a deleted or anonymous user); a record it
    cannot read comes back as its text, so the DAG's :func:`forward_run_conf` fails on it where a person sees the
    error, instead of the record vanishing in the triggerer or the error stopping the watcher.
    """
    value = message.value() if callable(getattr(message, "value", None)) else message
    if value is None:
        return None
    try:
        conf = forward_run_conf(value)
    except DidomiWebhookMessageError:
        return bytes(value).decode("utf-8", errors="replace") if isinstance(value, _BYTES) else str(value)
    return conf if conf["organization_user_ids"] else None


# ---- envelopes ----------------------------------------------------------------------------------------------------


def _walk(value: Any, path: str, ids: list[str], ignored: list[Ignored]) -> None:
    if isinstance(value, _TEXT):
        _walk(_json(value, path), path, ids, ignored)
    elif isinstance(value, Mapping):
        _walk_mapping(value, path, ids, ignored)
    elif isinstance(value, list | tuple):
        if value and all(isinstance(v, _BYTES) for v in value):
            joined = b"".join(bytes(v) for v in value)
            if len(value) == 1 or _is_json(joined):  # a Service Bus body in sections, joined as its trigger does
                _walk(joined, path, ids, ignored)
                return
        for index, item in enumerate(value):
            _walk(item, f"{path}[{index}]", ids, ignored)
    elif callable(getattr(value, "value", None)):  # a confluent-kafka Message
        record = value.value()
        if record is None:
            raise DidomiWebhookMessageError(
                f"{path}.value(): a Kafka tombstone (null value) carries no webhook; "
                "skip it before this (kafka_apply_function does)"
            )
        _walk(record, f"{path}.value()", ids, ignored)
    elif hasattr(value, "body"):  # an azure-servicebus ServiceBusReceivedMessage: bytes, or an iterator of sections
        body = value.body
        sections = isinstance(body, Iterable) and not isinstance(body, (*_TEXT, Mapping))
        _walk(list(body) if sections else body, f"{path}.body", ids, ignored)
    elif isinstance(getattr(value, "extra", None), Mapping):  # an Airflow asset event
        _walk(value.extra, f"{path}.extra", ids, ignored)
    else:
        raise DidomiWebhookMessageError(
            f"{path}: expected a Didomi webhook body (JSON object, text or bytes) or a queue message holding one, "
            f"got {type(value).__name__}; {_FIX_BODY}"
        )


def _walk_mapping(value: Mapping[str, Any], path: str, ids: list[str], ignored: list[Ignored]) -> None:
    if isinstance(value.get("type"), str):
        _webhook(value, path, ids, ignored)
    elif "from_trigger" in value and "payload" in value:  # an asset event's extra
        _walk(value["payload"], f"{path}.payload", ids, ignored)
    elif "message_batch" in value:  # SqsSensorTrigger's event
        _walk(value["message_batch"], f"{path}.message_batch", ids, ignored)
    elif "Body" in value:  # one SQS message
        _walk(value["Body"], f"{path}.Body", ids, ignored)
    elif value.get("Type") == "Notification" and "Message" in value:  # an SNS envelope
        _walk(value["Message"], f"{path}.Message", ids, ignored)
    elif "message" in value and {"queue", "topic", "subscription"} & value.keys():  # a Service Bus trigger's event
        _walk(value["message"], f"{path}.message", ids, ignored)
    elif "detail" in value and "detail-type" in value:  # an EventBridge event forwarded to the queue
        _walk(value["detail"], f"{path}.detail", ids, ignored)
    elif set(value) == {"organization_user_ids"}:  # a run conf made by forward_run_conf (kafka_apply_function's)
        _run_conf(value["organization_user_ids"], f"{path}.organization_user_ids", ids)
    else:
        keys = ", ".join(sorted(map(str, value))[:10]) or "none"
        raise DidomiWebhookMessageError(
            f"{path}: not a Didomi webhook body (no 'type' and 'parameters') nor a message envelope this reads "
            f"(SQS 'Body', SNS 'Message', Service Bus 'message', Airflow's 'payload' or 'message_batch'); "
            f"its keys: {keys}; {_FIX_BODY}"
        )


def _run_conf(raw: Any, path: str, ids: list[str]) -> None:
    if not isinstance(raw, list) or not all(isinstance(i, str) and i.strip() for i in raw):
        raise DidomiWebhookMessageError(
            f"{path}: expected a list of organization_user_ids (non-empty text), got {raw!r}"
        )
    ids.extend(i.strip() for i in raw)


# ---- Didomi's webhook body ----------------------------------------------------------------------------------------


def _webhook(body: Mapping[str, Any], path: str, ids: list[str], ignored: list[Ignored]) -> None:
    kind = body["type"]
    if kind not in WEBHOOK_TYPES:
        raise DidomiWebhookMessageError(
            f"{path}.type: {kind!r} is not a Didomi webhook type ({', '.join(WEBHOOK_TYPES)}); "
            "send only Didomi's webhooks to this queue, or filter the others out before Airflow"
        )
    parameters = body.get("parameters")
    if not isinstance(parameters, Mapping):
        raise DidomiWebhookMessageError(
            f"{path}.parameters: expected the JSON object of the entities the {kind} webhook is about, "
            f"got {type(parameters).__name__}; {_FIX_BODY}"
        )
    subject, action = kind.split(".")
    key = "new_entity" if action == "updated" and "new_entity" in parameters else "entity"
    where = f"{path}.parameters.{key}"
    entity = parameters.get(key)
    if not isinstance(entity, Mapping):
        expected = "'new_entity' (or 'entity')" if action == "updated" else "'entity'"
        raise DidomiWebhookMessageError(
            f"{where}: missing or not a JSON object ({type(entity).__name__}); a {kind} webhook carries the "
            f"{subject} in {expected}; {_FIX_BODY}"
        )
    if subject == "user":
        found = _organization_user_id(entity, where, "")
    elif isinstance(entity.get("user"), Mapping):
        found = _organization_user_id(entity["user"], f"{where}.user", "")
    elif "user__organization_user_id" in entity or "user__id" in entity:  # Didomi's flattened payload
        found = _organization_user_id(entity, where, "user__")
    else:
        raise DidomiWebhookMessageError(
            f"{where}.user: missing; a consent event names its user in 'user' (with 'organization_user_id'); "
            f"{_FIX_BODY}"
        )
    if kind == "user.deleted":
        ignored.append(Ignored(path, kind, found, DELETED_USER))
    elif found is None:
        ignored.append(Ignored(path, kind, None, ANONYMOUS_USER))
    else:
        ids.append(found)


def _organization_user_id(user: Mapping[str, Any], where: str, prefix: str) -> str | None:
    """The user's ``organization_user_id``; None for an anonymous user (a Didomi ``id`` and no organization id)."""
    field = f"{prefix}organization_user_id"
    raw = user.get(field)
    if isinstance(raw, str) and raw.strip():
        return raw.strip()
    if raw is None or isinstance(raw, str):
        if user.get(f"{prefix}id"):
            return None
        raise DidomiWebhookMessageError(
            f"{where}.{field}: missing, and no Didomi 'id' either, so this is not a Didomi user; contacts are matched "
            f"on organization_user_id: check what produces this message ({_FIX_BODY})"
        )
    raise DidomiWebhookMessageError(
        f"{where}.{field}: {raw!r} is not an organization_user_id (expected non-empty text); "
        "fix the user's organization_user_id in Didomi, or drop this message"
    )


def _json(raw: str | bytes | bytearray | memoryview, path: str) -> Any:
    try:
        text = raw if isinstance(raw, str) else bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        raise DidomiWebhookMessageError(f"{path}: not UTF-8 text; {_FIX_BODY}") from None
    if not text.strip():
        raise DidomiWebhookMessageError(f"{path}: empty; {_FIX_BODY}")
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:  # the text itself is left out: it can hold personal data
        raise DidomiWebhookMessageError(
            f"{path}: not valid JSON ({err.msg} at line {err.lineno} column {err.colno}); {_FIX_BODY}"
        ) from None


def _is_json(raw: bytes) -> bool:
    try:
        json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return False
    return True
