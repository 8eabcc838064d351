"""The watcher DAG of docs/live-forward.md is a DAG file that loads, and its task makes the run conf from the asset
events an SQS watcher leaves (MessageQueueTrigger is stood in for when common.messaging is not installed)."""

from __future__ import annotations

import json
import re
import sys
import types
from pathlib import Path
from typing import Any

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "live-forward.md"
MSG_QUEUE = "airflow.providers.common.messaging.triggers.msg_queue"


def watcher_dag_source() -> str:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    (source,) = [b for b in blocks if "with DAG(" in b]
    return source


@pytest.fixture
def watcher(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    try:
        __import__(MSG_QUEUE)
    except ImportError:
        from airflow.triggers.base import BaseEventTrigger

        class MessageQueueTrigger(BaseEventTrigger):
            def __init__(self, *, scheme: str, **kwargs: Any) -> None:
                super().__init__()
                self.scheme, self.kwargs = scheme, kwargs

            def serialize(self) -> tuple[str, dict[str, Any]]:
                return f"{MSG_QUEUE}.MessageQueueTrigger", {"scheme": self.scheme, **self.kwargs}

            async def run(self) -> Any:  # pragma: no cover - never run here
                yield None

        stub = types.ModuleType(MSG_QUEUE)
        stub.MessageQueueTrigger = MessageQueueTrigger  # type: ignore[attr-defined]
        for name in ("airflow.providers.common.messaging", "airflow.providers.common.messaging.triggers"):
            monkeypatch.setitem(sys.modules, name, sys.modules.get(name) or types.ModuleType(name))
        monkeypatch.setitem(sys.modules, MSG_QUEUE, stub)
    module = types.ModuleType("didomi_webhooks_to_dynamics")
    exec(compile(watcher_dag_source(), str(DOC), "exec"), module.__dict__)
    return module


class AssetEvent:
    def __init__(self, extra: dict[str, Any]) -> None:
        self.extra = extra


def sqs_event(*bodies: dict[str, Any]) -> AssetEvent:
    batch = [{"MessageId": f"m-{i}", "ReceiptHandle": "rh", "Body": json.dumps(b)} for i, b in enumerate(bodies)]
    return AssetEvent({"from_trigger": True, "payload": {"status": "success", "message_batch": batch}})


def test_the_watcher_dag_triggers_the_forward_dag_on_the_watched_asset(watcher: types.ModuleType) -> None:
    dag = watcher.dag
    (asset_watcher,) = watcher.DIDOMI_WEBHOOKS.watchers

    assert dag.dag_id == "didomi_webhooks_to_dynamics"
    assert asset_watcher.trigger.serialize()[1]["scheme"] == "sqs"
    assert dag.get_task("resync_users").trigger_dag_id == "didomi_to_dynamics"
    assert dag.get_task("resync_users").upstream_task_ids == {"read_webhooks"}


def test_its_task_makes_one_run_conf_of_every_asset_event(watcher: types.ModuleType) -> None:
    read = watcher.dag.get_task("read_webhooks").python_callable
    ann = {
        "type": "user.updated",
        "parameters": {"new_entity": {"id": "d1", "organization_user_id": "ann@example.com"}},
    }
    bob = {"type": "event.created", "parameters": {"entity": {"user": {"organization_user_id": "bob@example.com"}}}}

    run_conf = read(triggering_asset_events={watcher.DIDOMI_WEBHOOKS: [sqs_event(ann, bob), sqs_event(ann)]})

    assert run_conf == {"organization_user_ids": ["ann@example.com", "bob@example.com"]}


def test_its_task_skips_when_no_user_is_left_to_sync(watcher: types.ModuleType) -> None:
    from airflow.sdk.exceptions import AirflowSkipException

    read = watcher.dag.get_task("read_webhooks").python_callable
    gone = {"type": "user.deleted", "parameters": {"entity": {"id": "d1", "organization_user_id": "gone@example.com"}}}

    with pytest.raises(AirflowSkipException, match="no Didomi user to re-sync"):
        read(triggering_asset_events={watcher.DIDOMI_WEBHOOKS: [sqs_event(gone)]})
