"""The `dynamics_to_didomi` DAG (Dynamics 365 -> Didomi): contacts changed by people become Didomi consent events."""

from __future__ import annotations

from typing import Any

from airflow.sdk import DAG, Asset, CronDataIntervalTimetable, Param, task

from airflow_provider_didomi_dynamics.dags import settings
from airflow_provider_didomi_dynamics.operators.dataverse import DataversePullContactsOperator
from airflow_provider_didomi_dynamics.operators.didomi import DidomiPushConsentsOperator
from airflow_provider_didomi_dynamics.operators.fail_fast import fails_fast
from airflow_provider_didomi_dynamics.operators.mapping import ReverseConsentMappingOperator
from airflow_provider_didomi_dynamics.operators.preflight import SyncPreflightOperator
from airflow_provider_didomi_dynamics.sync.webhook_payload import targeted_contact_ids

DOC = """
### Dynamics 365 contacts -> Didomi consent events

Each run reads the contacts whose `modifiedon` lies in the run's window, ordered by (`modifiedon`, `contactid`),
leaves out the rows last written by this integration's own application user (so our writes never echo back),
rebuilds Didomi consent events from the mapped attributes and sends only what differs from the Didomi user,
with `$disable_integrations=true` so Didomi does not forward the change back to Dynamics.

With `properties.target: contact_point_consent` the run reads Customer Insights - Journeys' Contact Point Consent
rows instead (a preference centre's changes), leaves out rows carrying this integration's `msdynmkt_reason`, and ties
each row to its Didomi user through the contact holding its e-mail address or phone number.

**Conflicts**: when both sides changed, the newer change wins, field by field: for a Didomi user updated after the
contact, Didomi's event history tells which fields Didomi changed later; those keep Didomi's value and the contact's
other changes are sent (a row left with nothing to send is reported *skipped*, "Didomi changed later").

**Failed rows** (an event Didomi refused) wait in the task's retry queue (Variable
`didomi_dynamics_retry.dynamics_to_didomi.push_consents.<target>`) and the next run, scheduled or manual, resends them.

**Re-runs**: event ids are derived from the contact and its `modifiedon`, so a re-run never stores an event twice.
Params: `since` / `until`, `full_sync`, `contact_ids` (targeted re-sync), `remote_execution_context` (the Dynamics
webhook's payload, passed as run conf through the REST API: syncs just that contact), `dry_run`.
"""


def build_dag() -> DAG:
    """The ``dynamics_to_didomi`` DAG as a deployment schedules it; a DAG file calls this at module level."""
    with DAG(
        dag_id="dynamics_to_didomi",
        description="Dynamics 365 contact changes -> Didomi consent events",
        schedule=CronDataIntervalTimetable(settings.schedule_cron("dynamics_to_didomi"), timezone="UTC"),
        start_date=settings.START_DATE,
        catchup=False,
        max_active_runs=1,
        default_args=settings.default_args(),
        params={
            **settings.sync_params(),
            "contact_ids": Param(
                [],
                type=["array", "null"],
                description="Sync only these Dataverse contact ids (GUIDs), e.g. 0f5d8a52-8f4e-4c1e-9a0c-6b1d2f7e3a90.",
            ),
            "remote_execution_context": Param(
                None,
                type=["null", "object", "array"],
                description="A RemoteExecutionContext delivered by the Dynamics webhook: sync just its contact.",
                description_md=(
                    "A **RemoteExecutionContext** as the Dynamics webhook delivers it: the run syncs just its "
                    "contact. Only two fields are read, e.g. "
                    '`{"PrimaryEntityName": "contact", "PrimaryEntityId": "0f5d8a52-8f4e-4c1e-9a0c-6b1d2f7e3a90"}`; '
                    "a list of them works too. Leave empty for a windowed run."
                ),
            ),
        },
        render_template_as_native_obj=True,
        doc_md=DOC,
        tags=["didomi", "dynamics365", "consent"],
    ) as dag:

        @task(task_id="targeted_contacts")
        @fails_fast
        def targeted_contacts(params: dict[str, Any] | None = None) -> list[str]:
            """Contact ids from the run conf: ``contact_ids`` and/or a webhook's ``remote_execution_context``."""
            params = params or {}
            return targeted_contact_ids(params.get("contact_ids"), params.get("remote_execution_context"))

        preflight = SyncPreflightOperator(task_id="preflight", config=settings.config_source())
        pull_contacts = DataversePullContactsOperator(
            task_id="pull_contacts",
            config=settings.config_source(),
            since="{{ params.since }}",
            until="{{ params.until }}",
            full_sync="{{ params.full_sync }}",
            contact_ids=targeted_contacts(),
            pool=settings.DATAVERSE_POOL,
            inlets=[Asset("dataverse://contacts")],
        )
        reverse_mapping = ReverseConsentMappingOperator(
            task_id="reverse_mapping", contacts=pull_contacts.output, config=settings.config_source()
        )
        push_consents = DidomiPushConsentsOperator(
            task_id="push_consents",
            events=reverse_mapping.output,
            config=settings.config_source(),
            dry_run="{{ params.dry_run }}",
            pool=settings.DIDOMI_POOL,
            outlets=[Asset("didomi://consents/events")],
        )
        preflight >> pull_contacts >> reverse_mapping >> push_consents
    return dag
