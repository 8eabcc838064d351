"""The `dynamics_to_didomi_live` DAG: a person's change in Dynamics reaches Didomi in seconds, no webhook, no relay.

Scheduled on an Asset watched by :class:`DataverseChangesTrigger` in Airflow's triggerer: the trigger polls the
synced table's delta link and fires with the ids others changed; each run syncs exactly those rows through the same
reverse engine as the hourly ``dynamics_to_didomi`` (which stays as the safety net: both may see a change, neither
sends it twice, because the push sends only what differs from Didomi and event ids are deterministic).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from airflow.sdk import DAG, Asset, AssetWatcher, Param, task
from airflow.sdk.exceptions import AirflowSkipException

from airflow_provider_didomi_dynamics.core.coerce import guid_list
from airflow_provider_didomi_dynamics.dags import settings
from airflow_provider_didomi_dynamics.operators.dataverse import DataversePullContactsOperator
from airflow_provider_didomi_dynamics.operators.didomi import DidomiPushConsentsOperator
from airflow_provider_didomi_dynamics.operators.fail_fast import fails_fast
from airflow_provider_didomi_dynamics.operators.mapping import ReverseConsentMappingOperator
from airflow_provider_didomi_dynamics.operators.preflight import SyncPreflightOperator
from airflow_provider_didomi_dynamics.triggers.dataverse_changes import DataverseChangesTrigger

log = logging.getLogger(__name__)

DAG_ID = "dynamics_to_didomi_live"
ASSET_NAME = "dataverse_changes"
ASSET_URI = "dataverse://changes"

DOC = """
### Dynamics 365 -> Didomi, live

Runs when **`DataverseChangesTrigger`** (in the triggerer) sees rows of the synced table changed by someone other
than this integration: contacts, or Customer Insights - Journeys' Contact Point Consent rows with
`properties.target: contact_point_consent`. The trigger polls the table's change-tracking delta link every
`DIDOMI_DYNAMICS_LIVE_POLL_SECONDS` (15 s by default; one small request while nothing changes) and keeps its token in
the asset's state store, so a triggerer restart resumes where it was.

Each run syncs exactly the changed rows with everything `dynamics_to_didomi` guarantees: our own writes never echo
back, the newer side wins field by field, event ids are deterministic (a repeat stores nothing twice), failed events
wait in the retry queue. A row **deleted** in Dynamics is reported *skipped*, "deleted in Dynamics", never sent as an
opt-out. Changes arriving while a run works wait for the next run (`max_active_runs=1`): none is lost. The task
`follow_up` covers what Airflow leaves behind: asset events that arrived while this run waited for the previous one
are not this run's, and queue no run of their own; when there are such events it records one asset event itself, so
the next run starts as soon as this one ends and takes them (skipped when there are none).

The hourly `dynamics_to_didomi` stays the safety net (an expired token, a triggerer down for longer than Dataverse
keeps tokens); both can run, nothing is sent twice. Params (a manual run): `row_ids` syncs those rows, `dry_run`.
"""


def watched_asset(poll_interval: float | None = None) -> Asset:
    """The Asset the triggerer watches: one event per poll that found rows others changed."""
    trigger = DataverseChangesTrigger(
        config_path=settings.config_source(),
        poll_interval=poll_interval if poll_interval is not None else settings.live_poll_seconds(),
    )
    return Asset(name=ASSET_NAME, uri=ASSET_URI, watchers=[AssetWatcher(name=f"{ASSET_NAME}_watcher", trigger=trigger)])


def changes_of(events: Iterable[Any], manual_ids: Any = None) -> dict[str, list[str]]:
    """Every triggering event's changed and deleted ids, first seen first, once each; a row changed and then
    deleted counts as deleted. ``manual_ids``: a person's ``row_ids`` from the trigger form."""
    changed: dict[str, None] = dict.fromkeys(guid_list(manual_ids, "row_ids"))
    deleted: dict[str, None] = {}
    for event in events:
        extra = getattr(event, "extra", None) or {}
        payload = extra.get("payload") if isinstance(extra, Mapping) else None
        if not isinstance(payload, Mapping):
            continue
        changed.update(dict.fromkeys(guid_list(payload.get("ids"), "ids")))
        deleted.update(dict.fromkeys(guid_list(payload.get("deleted"), "deleted")))
    return {"ids": [i for i in changed if i not in deleted], "deleted": list(deleted)}


def later_events(inlet_events: Any, asset: Asset, run_after: Any) -> int:
    """How many events of ``asset`` came after ``run_after`` (this run's last consumed event): Airflow consumes up
    to that moment only, and events that arrived while the run was queued behind the previous one wake nothing."""
    if run_after is None:
        return 0
    moment = run_after.isoformat() if hasattr(run_after, "isoformat") else str(run_after)
    return len(list(inlet_events[asset].after(moment)))


def build_dag(poll_interval: float | None = None) -> DAG:
    """The ``dynamics_to_didomi_live`` DAG; a DAG file calls this at module level."""
    asset = watched_asset(poll_interval)
    with DAG(
        dag_id=DAG_ID,
        description="Dynamics 365 changes -> Didomi consent events within seconds (change tracking in the triggerer)",
        schedule=[asset],
        start_date=settings.START_DATE,
        catchup=False,
        max_active_runs=1,
        default_args=settings.default_args(),
        params={
            "row_ids": Param(
                [],
                type=["array", "null"],
                description="A manual run: sync these rows of the synced table (contact or consent row GUIDs).",
            ),
            "dry_run": Param(
                False, type=["boolean", "null"], description="Plan only: count and sample the changes, send nothing."
            ),
        },
        render_template_as_native_obj=True,
        doc_md=DOC,
        tags=["didomi", "dynamics365", "consent", "live"],
    ) as dag:

        @task(task_id="changed_rows", multiple_outputs=True)
        @fails_fast
        def changed_rows(
            triggering_asset_events: Mapping[Any, Iterable[Any]] | None = None, params: dict[str, Any] | None = None
        ) -> dict[str, list[str]]:
            """The ids every asset event of this run carries (a burst coalesced into one run)."""
            events = [e for group in (triggering_asset_events or {}).values() for e in group]
            changes = changes_of(events, (params or {}).get("row_ids"))
            log.info(
                "%d asset event(s): %d row(s) changed by others, %d deleted",
                len(events),
                len(changes["ids"]),
                len(changes["deleted"]),
            )
            return changes

        changes: Any = changed_rows()  # multiple_outputs: changes["ids"] is the XCom key "ids"
        preflight = SyncPreflightOperator(
            task_id="preflight", config=settings.config_source(), check_change_tracking=True
        )
        pull_changed = DataversePullContactsOperator(
            task_id="pull_changed",
            config=settings.config_source(),
            row_ids=changes["ids"],
            pool=settings.DATAVERSE_POOL,
        )
        reverse_mapping = ReverseConsentMappingOperator(
            task_id="reverse_mapping", contacts=pull_changed.output, config=settings.config_source()
        )
        push_consents = DidomiPushConsentsOperator(
            task_id="push_consents",
            events=reverse_mapping.output,
            deleted_ids=changes["deleted"],
            config=settings.config_source(),
            dry_run="{{ params.dry_run }}",
            pool=settings.DIDOMI_POOL,
            outlets=[Asset("didomi://consents/events")],
        )

        @task(task_id="follow_up", inlets=[asset], outlets=[asset])
        def follow_up(inlet_events: Any = None, outlet_events: Any = None, dag_run: Any = None) -> int:
            """Record one asset event when changes arrived that no run will take otherwise; skipped when none."""
            waiting = later_events(inlet_events, asset, getattr(dag_run, "run_after", None))
            if not waiting:
                raise AirflowSkipException("no change arrived while this run was queued: nothing to follow up")
            log.info("%d change event(s) arrived while this run was queued: the next run takes them now", waiting)
            outlet_events[asset].extra = {"follow_up": getattr(dag_run, "run_id", None)}
            return waiting

        changes >> preflight >> pull_changed >> reverse_mapping >> push_consents
        changes >> follow_up()  # beside the sync: what it finds is known when the run starts
    return dag
