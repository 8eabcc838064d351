"""The `didomi_to_dynamics` DAG (Didomi -> Dynamics 365): consent users changed in the window become contact updates."""

from __future__ import annotations

from airflow.sdk import DAG, Asset, CronDataIntervalTimetable, Param

from airflow_provider_didomi_dynamics.dags import settings
from airflow_provider_didomi_dynamics.operators.dataverse import DataversePushContactsOperator
from airflow_provider_didomi_dynamics.operators.didomi import DidomiPullConsentsOperator
from airflow_provider_didomi_dynamics.operators.mapping import ApplyConsentMappingOperator
from airflow_provider_didomi_dynamics.operators.preflight import SyncPreflightOperator

DOC = """
### Didomi -> Dynamics 365 contacts

Each run pulls the Didomi consent users whose `updated_at` lies in the run's window, maps their consent fields to
contact attributes with the integration config (Variable `didomi_dynamics_config`, the seed's JSON) and writes
only what changed to the Dataverse contacts matched by `organization_user_id`.

**Window**: a scheduled run covers its data interval. A run triggered from the UI uses the `since` / `until`
params, else starts where the previous successful run ended, else looks back 24 hours. `full_sync` takes everything;
`organization_user_ids` re-syncs just those users. `dry_run` counts and samples the changes and writes nothing.

**Conflicts**: when both sides changed, the newer change wins, field by field. A contact a person changed after
the Didomi user's latest update keeps its values; one changed before it is checked against Didomi's event history,
and if a two-way column still holds the person's newer value the row waits (*skipped*, "Dynamics changed later")
until the reverse DAG has sent it to Didomi.

**Outcomes**: every user ends *created*, *updated*, *unchanged*, *skipped* (no contact and `upsert_mode` false,
or no `organization_user_id`) or *failed* (with Dataverse's message). See the `push_contacts` return value.
Failed rows wait in the task's retry queue (Variable `didomi_dynamics_retry.didomi_to_dynamics.push_contacts.<target>`)
and the next run, scheduled or triggered by hand, retries them. Clearing and re-running any task is safe: nothing is
written twice.
"""


def build_dag() -> DAG:
    """The ``didomi_to_dynamics`` DAG as a deployment schedules it; a DAG file calls this at module level."""
    with DAG(
        dag_id="didomi_to_dynamics",
        description="Didomi consent -> Dynamics 365 contact attributes",
        schedule=CronDataIntervalTimetable(settings.schedule_cron("didomi_to_dynamics"), timezone="UTC"),
        start_date=settings.START_DATE,
        catchup=False,
        max_active_runs=1,
        default_args=settings.default_args(),
        params={
            **settings.sync_params(),
            "organization_user_ids": Param(
                [],
                type=["array", "null"],
                description="Re-sync only these Didomi organization_user_ids (targeted re-sync), e.g. ann@example.com.",
            ),
        },
        render_template_as_native_obj=True,
        doc_md=DOC,
        tags=["didomi", "dynamics365", "consent"],
    ) as dag:
        preflight = SyncPreflightOperator(task_id="preflight", config=settings.config_source())
        pull_consents = DidomiPullConsentsOperator(
            task_id="pull_consents",
            since="{{ params.since }}",
            until="{{ params.until }}",
            full_sync="{{ params.full_sync }}",
            organization_user_ids="{{ params.organization_user_ids }}",
            pool=settings.DIDOMI_POOL,
            inlets=[Asset("didomi://consents/users")],
        )
        apply_mapping = ApplyConsentMappingOperator(
            task_id="apply_mapping", users=pull_consents.output, config=settings.config_source()
        )
        push_contacts = DataversePushContactsOperator(
            task_id="push_contacts",
            contacts=apply_mapping.output,
            config=settings.config_source(),
            dry_run="{{ params.dry_run }}",
            didomi_conn_id="didomi_default",  # Didomi's event history decides per-field conflicts
            pool=settings.DATAVERSE_POOL,
            outlets=[Asset("dataverse://contacts")],
        )
        preflight >> pull_consents >> apply_mapping >> push_contacts
    return dag
