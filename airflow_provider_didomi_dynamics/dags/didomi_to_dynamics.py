"""The `didomi_to_dynamics` DAG (Didomi -> Dynamics 365): consent users changed in the window become contact updates."""

from __future__ import annotations

from airflow.sdk import DAG, Asset, CronDataIntervalTimetable, Param

from airflow_provider_didomi_dynamics.dags import settings
from airflow_provider_didomi_dynamics.operators.dataverse import (
    DataversePushContactsOperator,
    DataversePushReportOperator,
)
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

**Chunks**: the pull writes the users as Parquet chunks (`DIDOMI_DYNAMICS_CHUNK_ROWS`, 50,000 by default) under
`DIDOMI_DYNAMICS_CHUNK_PATH` (object storage: `s3://`, `gs://`, `abfs://`; `file://` under the Airflow home by
default); `apply_mapping` and `push_chunks` are mapped over them, each task holding one chunk, and `push_contacts`
adds the chunks' reports up into the run report. The pool `dataverse_api` caps how many chunks push at once. A
successful run removes its chunk files; a failed one keeps them, so clearing a failed chunk re-reads it.

**Outcomes**: every user ends *created*, *updated*, *unchanged*, *skipped* (no contact and `upsert_mode` false,
or no `organization_user_id`) or *failed* (with Dataverse's message). See the `push_contacts` return value (it adds up
the report of each chunk of `push_chunks`).
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
            chunked=True,  # Parquet chunks under object storage; the next two tasks are mapped over them
            export_path=settings.export_path(),  # full syncs from Didomi's daily batch export, when set
            pool=settings.DIDOMI_POOL,
            inlets=[Asset("didomi://consents/users")],
        )
        apply_mapping = ApplyConsentMappingOperator.partial(
            task_id="apply_mapping", config=settings.config_source()
        ).expand(users=pull_consents.output)
        push_chunks = DataversePushContactsOperator.partial(
            task_id="push_chunks",
            config=settings.config_source(),
            dry_run="{{ params.dry_run }}",
            didomi_conn_id="didomi_default",  # Didomi's event history decides per-field conflicts
            settled_by="push_contacts",  # the retry queue is the run's, named after the report task
            pool=settings.DATAVERSE_POOL,  # its slots cap how many chunks push at once (one budget in Dataverse)
        ).expand(contacts=apply_mapping.output)
        push_contacts = DataversePushReportOperator(
            task_id="push_contacts",  # the run report where an unchunked push left it
            chunks_task_id="pull_consents",
            mapping_task_id="apply_mapping",
            outlets=[Asset("dataverse://contacts")],
        )
        preflight >> pull_consents
        push_chunks >> push_contacts
    return dag
