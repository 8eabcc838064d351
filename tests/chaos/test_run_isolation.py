"""Two runs of one loaded DAG through ``testing.run_dag`` (what the demo and users' own tests call): the second run
is governed by its own run conf only; nothing of the first run's conf carries over."""

from __future__ import annotations

from typing import Any

from chaos_worlds import user, world

from airflow_provider_didomi_dynamics.local.testing import load_dag, run_dag


def test_a_targeted_resync_does_not_turn_the_next_full_sync_into_a_targeted_one(campaign: Any) -> None:
    keys = [f"isolation-{i}@example.com" for i in range(5)]
    with campaign.use(campaign.reference, world([user(k) for k in keys], [])):
        dag = load_dag("didomi_to_dynamics")

        targeted = run_dag(dag, run_conf={"organization_user_ids": keys[:1]})
        full = run_dag(dag, run_conf={"full_sync": True})

        assert targeted.value("pull_consents", "pull_report")["kept"] == 1
        report = full.value("pull_consents", "pull_report")
        assert report["window"]["why"] == "full sync", report
        assert report["kept"] == 5, f"the full sync pulled {report['kept']} user(s): {report['window']}"
