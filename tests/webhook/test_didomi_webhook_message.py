"""What a Didomi webhook becomes on its way to the forward DAG: the run conf a team's watcher DAG triggers with, from
every envelope a queue or Airflow's MessageQueueTrigger hands over, and the error a person reads when a message is
not one. The payload shapes are the ones the released providers' triggers yield (see the module's docstring)."""

from __future__ import annotations

import json
import logging
import types
from collections.abc import Iterator
from typing import Any

import pytest

from airflow_provider_didomi_dynamics.exceptions import (
    DidomiWebhookMessageError,
    WebhookPayloadError,
    is_retryable,
)
from airflow_provider_didomi_dynamics.sync.didomi_webhook_message import (
    KAFKA_APPLY_FUNCTION,
    forward_run_conf,
    kafka_apply_function,
    read_message,
)


def user(key: str | None, didomi_id: str = "didomi-1") -> dict[str, Any]:
    return {"id": didomi_id, "organization_id": "org", "organization_user_id": key, "consents": {"purposes": []}}


def event(key: str | None) -> dict[str, Any]:
    return {"id": "evt-1", "user": {"id": "didomi-1", "organization_user_id": key}, "consents": {"purposes": []}}


def created(kind: str, entity: dict[str, Any]) -> dict[str, Any]:
    return {"type": kind, "parameters": {"entity": entity}}


def updated(kind: str, old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    return {"type": kind, "parameters": {"source": {"id": "evt-9"}, "old_entity": old, "new_entity": new}}


ANN = created("user.created", user("ann@example.com"))


def conf(*keys: str) -> dict[str, Any]:
    return {"organization_user_ids": list(keys)}


def sqs_message(body: Any, message_id: str = "m-1") -> dict[str, Any]:
    """One item of SQS receive_message's "Messages", as SqsSensorTrigger puts it in its event's message_batch."""
    text = body if isinstance(body, str) else json.dumps(body)
    return {"MessageId": message_id, "ReceiptHandle": "rh", "MD5OfBody": "x", "Body": text}


def sns_envelope(body: Any) -> dict[str, Any]:
    """What SNS delivers into an SQS queue subscribed without raw message delivery."""
    return {
        "Type": "Notification",
        "MessageId": "sns-1",
        "TopicArn": "arn:aws:sns:eu-west-1:1:didomi",
        "Message": json.dumps(body),
    }


def asset_event_extra(payload: Any) -> dict[str, Any]:
    """An asset event's extra when an AssetWatcher's trigger fired (Trigger.submit_event)."""
    return {"from_trigger": True, "payload": payload}


class AssetEvent:
    """Stands in for what ``triggering_asset_events[asset]`` yields: an object with ``extra``."""

    def __init__(self, extra: dict[str, Any]) -> None:
        self.extra = extra


class KafkaRecord:
    """Stands in for a confluent-kafka Message: AwaitMessageTrigger hands it to apply_function."""

    def __init__(self, value: bytes | None) -> None:
        self._value = value

    def value(self) -> bytes | None:
        return self._value

    def error(self) -> None:
        return None


class ServiceBusMessage:
    """Stands in for azure-servicebus's ServiceBusReceivedMessage: ``body`` is bytes or an iterator of sections."""

    def __init__(self, *sections: bytes) -> None:
        self.sections = sections

    @property
    def body(self) -> Iterator[bytes]:
        return iter(self.sections)


# ---- Didomi's webhook types ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        created("user.created", user("ann@example.com")),
        updated("user.updated", user("ann@example.com"), user("ann@example.com")),
        created("event.created", event("ann@example.com")),
        updated("event.updated", event("ann@example.com"), event("ann@example.com")),
        created("event.deleted", event("ann@example.com")),
    ],
    ids=lambda body: body["type"],
)
def test_each_consent_change_resyncs_its_user(body: dict[str, Any]) -> None:
    assert forward_run_conf(body) == conf("ann@example.com")


def test_an_updated_user_is_resynced_under_its_new_organization_user_id() -> None:
    body = updated("user.updated", user("old@example.com"), user("new@example.com"))

    assert forward_run_conf(body) == conf("new@example.com")


def test_a_deleted_user_is_no_sync_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    body = created("user.deleted", user("gone@example.com"))

    with caplog.at_level(logging.INFO):
        assert forward_run_conf(body) == conf()

    assert "user.deleted gone@example.com not synced: a user deleted in Didomi is not a consent change" in caplog.text
    (ignored,) = read_message(body).ignored
    assert (ignored.type, ignored.organization_user_id) == ("user.deleted", "gone@example.com")


def test_an_anonymous_user_is_no_sync_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        assert forward_run_conf(created("event.created", event(None))) == conf()

    assert "event.created not synced: an anonymous Didomi user (no organization_user_id)" in caplog.text


def test_didomis_flattened_payload() -> None:
    flat_event = {"id": "evt-1", "user__id": "didomi-1", "user__organization_user_id": "ann@example.com"}
    flat_user = {"id": "didomi-2", "organization_user_id": "bob@example.com", "consents__purposes__0__id": "x"}

    assert forward_run_conf(created("event.created", flat_event)) == conf("ann@example.com")
    assert forward_run_conf(created("user.updated", flat_user)) == conf("bob@example.com")  # new_entity -> entity


def test_a_batch_keeps_first_seen_order_without_repeats() -> None:
    batch = [
        created("event.created", event("bob@example.com")),
        ANN,
        created("user.deleted", user("gone@example.com")),
        updated("user.updated", user("bob@example.com"), user("bob@example.com")),
        json.dumps(created("event.created", event("cy@example.com"))),
    ]

    assert forward_run_conf(batch) == conf("bob@example.com", "ann@example.com", "cy@example.com")


def test_organization_user_id_is_taken_without_surrounding_blanks() -> None:
    assert forward_run_conf(created("user.created", user("  ann@example.com\n"))) == conf("ann@example.com")


# ---- envelopes -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "message",
    [
        pytest.param(json.dumps(ANN), id="json text"),
        pytest.param(json.dumps(ANN).encode(), id="bytes"),
        pytest.param(bytearray(json.dumps(ANN).encode()), id="bytearray"),
        pytest.param(sqs_message(ANN), id="sqs message"),
        pytest.param(sqs_message(sns_envelope(ANN)), id="sns in sqs"),
        pytest.param(sns_envelope(ANN), id="sns envelope"),
        pytest.param({"status": "success", "message_batch": [sqs_message(ANN)]}, id="SqsSensorTrigger event"),
        pytest.param(
            asset_event_extra({"status": "success", "message_batch": [sqs_message(ANN)]}), id="sqs asset extra"
        ),
        pytest.param([AssetEvent(asset_event_extra({"message_batch": [sqs_message(ANN)]}))], id="asset events"),
        pytest.param(json.dumps(ANN).encode(), id="kafka record value"),
        pytest.param(KafkaRecord(json.dumps(ANN).encode()), id="kafka Message"),
        pytest.param(asset_event_extra(json.dumps(ANN)), id="kafka without apply_function"),
        pytest.param({"message": json.dumps(ANN), "queue": "didomi"}, id="service bus queue event"),
        pytest.param(
            {"message": json.dumps(ANN), "topic": "didomi", "subscription": "airflow"}, id="service bus topic event"
        ),
        pytest.param(ServiceBusMessage(json.dumps(ANN).encode()), id="service bus message"),
        pytest.param(
            [
                b'{"type": "user.created", ',
                b'"parameters": {"entity": {"id": "d", "organization_user_id": "ann@example.com"}}}',
            ],
            id="service bus sections",
        ),
        pytest.param(
            ServiceBusMessage(
                b'{"type": "user.created", "parameters": ',
                b'{"entity": {"id": "d", "organization_user_id": "ann@example.com"}}}',
            ),
            id="service bus message in sections",
        ),
        pytest.param({"version": "0", "detail-type": "didomi", "source": "webhook", "detail": ANN}, id="eventbridge"),
        pytest.param(json.dumps(json.dumps(ANN)), id="json text encoded twice"),
        pytest.param(conf("ann@example.com"), id="a run conf made before"),
    ],
)
def test_every_envelope_gives_the_same_run_conf(message: Any) -> None:
    assert forward_run_conf(message) == conf("ann@example.com")


def test_an_sqs_batch_of_several_messages() -> None:
    payload = {
        "status": "success",
        "message_batch": [
            sqs_message(ANN, "m-1"),
            sqs_message(sns_envelope(created("event.created", event("bob@example.com"))), "m-2"),
            sqs_message(ANN, "m-3"),  # SQS delivers at least once
        ],
    }

    assert forward_run_conf(payload) == conf("ann@example.com", "bob@example.com")


def test_several_asset_events_in_one_run_are_read_together() -> None:
    events = [
        AssetEvent(asset_event_extra({"message": json.dumps(ANN), "queue": "q"})),
        AssetEvent(
            asset_event_extra({"message": json.dumps(created("event.created", event("bob@example.com"))), "queue": "q"})
        ),
    ]

    assert forward_run_conf(events) == conf("ann@example.com", "bob@example.com")


def test_kafka_byte_values_in_a_list_are_a_batch() -> None:
    values = [json.dumps(ANN).encode(), json.dumps(created("event.created", event("bob@example.com"))).encode()]

    assert forward_run_conf(values) == conf("ann@example.com", "bob@example.com")


# ---- Kafka's apply_function ----------------------------------------------------------------------------------------


def test_kafka_apply_function_is_importable_by_its_dotted_path() -> None:
    from airflow.sdk.module_loading import import_string

    assert import_string(KAFKA_APPLY_FUNCTION) is kafka_apply_function


def test_kafka_apply_function_gives_the_run_conf_as_the_event_payload() -> None:
    payload = kafka_apply_function(KafkaRecord(json.dumps(ANN).encode()))

    assert payload == conf("ann@example.com")
    assert forward_run_conf(asset_event_extra(payload)) == conf("ann@example.com")  # what the DAG's task reads


@pytest.mark.parametrize(
    "record",
    [KafkaRecord(None), KafkaRecord(json.dumps(created("user.deleted", user("gone@example.com"))).encode())],
    ids=["tombstone", "deleted user"],
)
def test_kafka_apply_function_skips_a_record_with_nothing_to_sync(record: KafkaRecord) -> None:
    assert kafka_apply_function(record) is None


def test_kafka_apply_function_passes_an_unreadable_record_on_for_the_dag_to_fail_on() -> None:
    payload = kafka_apply_function(KafkaRecord(b'{"type": "user.created"'))

    assert payload == '{"type": "user.created"'
    with pytest.raises(DidomiWebhookMessageError, match=r"^message\.payload: not valid JSON"):
        forward_run_conf(asset_event_extra(payload))


# ---- what a person reads when a message is not one ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        pytest.param(
            "{not json",
            "message: not valid JSON (Expecting property name enclosed in double quotes at line 1 column 2); "
            "put Didomi's webhook body on the queue unchanged (JSON text), "
            "or inside an SQS, SNS or Service Bus message",
            id="malformed json",
        ),
        pytest.param(
            {"status": "success", "message_batch": [sqs_message(ANN), sqs_message("<html>oops</html>")]},
            "message.message_batch[1].Body: not valid JSON (Expecting value at line 1 column 1); put Didomi's webhook",
            id="malformed sqs body names its place in the batch",
        ),
        pytest.param(
            sqs_message({"Type": "Notification", "Message": "{"}),
            "message.Body.Message: not valid JSON",
            id="malformed sns message",
        ),
        pytest.param(b"\xff\xfe", "message: not UTF-8 text;", id="not utf-8"),
        pytest.param(
            types.SimpleNamespace(body=7), "message.body: expected a Didomi webhook body", id="service bus body of 7"
        ),
        pytest.param("  ", "message: empty;", id="empty"),
        pytest.param(None, "message: expected a Didomi webhook body (JSON object, text or bytes)", id="None"),
        pytest.param(
            42,
            "message: expected a Didomi webhook body (JSON object, text or bytes) "
            "or a queue message holding one, got int",
            id="number",
        ),
        pytest.param(
            {"hello": "world"},
            "message: not a Didomi webhook body (no 'type' and 'parameters') nor a message envelope this reads "
            "(SQS 'Body', SNS 'Message', Service Bus 'message', Airflow's 'payload' or 'message_batch'); "
            "its keys: hello",
            id="unknown object",
        ),
        pytest.param(
            {"type": "consent.given", "parameters": {}},
            "message.type: 'consent.given' is not a Didomi webhook type (user.created, user.updated, user.deleted, "
            "event.created, event.updated, event.deleted); send only Didomi's webhooks to this queue",
            id="unknown type",
        ),
        pytest.param(
            {"type": "user.created"},
            "message.parameters: expected the JSON object of the entities the user.created webhook is about, "
            "got NoneType",
            id="no parameters",
        ),
        pytest.param(
            {"type": "user.updated", "parameters": {"source": {}, "old_entity": user("a@example.com")}},
            "message.parameters.entity: missing or not a JSON object (NoneType); a user.updated webhook carries the "
            "user in 'new_entity' (or 'entity')",
            id="updated without new_entity",
        ),
        pytest.param(
            created("event.created", {"id": "evt-1", "consents": {}}),
            "message.parameters.entity.user: missing; a consent event names its user in 'user' (with "
            "'organization_user_id')",
            id="event without user",
        ),
        pytest.param(
            created("event.created", event(42)),  # type: ignore[arg-type]
            "message.parameters.entity.user.organization_user_id: 42 is not an organization_user_id "
            "(expected non-empty text); fix the user's organization_user_id in Didomi, or drop this message",
            id="id of the wrong type",
        ),
        pytest.param(
            created("user.created", {"organization_user_id": None}),
            "message.parameters.entity.organization_user_id: missing, and no Didomi 'id' either, so this is not a "
            "Didomi user",
            id="no id at all",
        ),
        pytest.param(
            [ANN, {"message": json.dumps(created("event.created", {"user": "ann"})), "queue": "q"}],
            "message[1].message.parameters.entity.user: missing;",
            id="batch names the bad item",
        ),
        pytest.param(
            KafkaRecord(None), "message.value(): a Kafka tombstone (null value) carries no webhook", id="tombstone"
        ),
        pytest.param(
            {"organization_user_ids": ["", 3]},
            "message.organization_user_ids: expected a list of organization_user_ids",
            id="bad run conf",
        ),
    ],
)
def test_a_message_that_is_not_a_webhook_names_the_field_and_the_fix(message: Any, expected: str) -> None:
    with pytest.raises(DidomiWebhookMessageError) as caught:
        forward_run_conf(message)

    assert str(caught.value).startswith(expected), str(caught.value)


def test_the_error_is_a_webhook_payload_error_no_retry_can_fix() -> None:
    with pytest.raises(WebhookPayloadError) as caught:
        forward_run_conf("{")

    assert isinstance(caught.value, ValueError)
    assert not is_retryable(caught.value)


def test_the_error_leaves_the_message_text_out() -> None:
    with pytest.raises(DidomiWebhookMessageError) as caught:
        forward_run_conf('{"organization_user_id": "secret@example.com", broken')

    assert "secret@example.com" not in str(caught.value)
