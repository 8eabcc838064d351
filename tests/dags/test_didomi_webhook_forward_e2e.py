"""A Didomi webhook, as an SQS queue hands it to an AssetWatcher, triggers didomi_to_dynamics for just its user
(docs/live-forward.md): the run conf ``forward_run_conf`` makes is the one the watcher DAG triggers the run with."""

from __future__ import annotations

import json

from dag_e2e_support import Sync, changed_keys, counts, expected_contact, mapped, push_report

from airflow_provider_didomi_dynamics.sync.didomi_webhook_message import forward_run_conf


def test_a_webhook_from_the_queue_resyncs_just_its_user_and_a_repeat_changes_nothing(sync: Sync) -> None:
    sync.seed(users=100)
    users = sync.users()
    before = sync.contacts()
    stale = sorted(k for k, c in before.items() if expected_contact(users[k], c) != mapped(c))
    changed, deleted = stale[0], stale[1]
    webhooks = [
        {
            "type": "user.updated",
            "parameters": {"source": {}, "old_entity": users[changed], "new_entity": users[changed]},
        },
        {"type": "user.deleted", "parameters": {"entity": users[deleted]}},
    ]
    # the asset event's extra when SqsSensorTrigger (MessageQueueTrigger scheme "sqs") fired
    extra = {
        "from_trigger": True,
        "payload": {
            "status": "success",
            "message_batch": [
                {"MessageId": f"m-{i}", "ReceiptHandle": "rh", "Body": json.dumps(body, default=str)}
                for i, body in enumerate(webhooks)
            ],
        },
    }

    run_conf = forward_run_conf(extra)
    result = sync.forward(**run_conf)

    assert run_conf == {"organization_user_ids": [changed]}
    assert result.state == "success", result.task_states
    assert counts(push_report(result, "push_contacts")) == {"updated": 1}
    after = sync.contacts()
    assert changed_keys(before, after) == {changed}  # the deleted user's contact is left as it was
    assert mapped(after[changed]) == expected_contact(users[changed], before[changed])

    again = sync.forward(**forward_run_conf(extra))  # the queue delivered the message a second time

    assert again.state == "success", again.task_states
    assert counts(push_report(again, "push_contacts")) == {"unchanged": 1}
    assert sync.contacts() == after
