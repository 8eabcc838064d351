"""The `dynamics_webhook_setup` DAG: register (or remove) the Dynamics webhook that reports contact changes."""

from __future__ import annotations

from typing import Any

from airflow.sdk import DAG, Param, task

from airflow_provider_didomi_dynamics.dags import settings
from airflow_provider_didomi_dynamics.operators.fail_fast import fails_fast

DOC = """
### Dynamics webhook setup (manual)

Registers a Dataverse **webhook** (`serviceendpoints`, header auth) plus one asynchronous step per message
(contact **Create** and **Update**, the Update step filtered to the mapped attributes) pointing at a URL you own,
typically a small relay that triggers `dynamics_to_didomi` through Airflow's REST API with the delivered
`RemoteExecutionContext` as run conf (see the README, "Webhook").

Idempotent: a second run with the same settings changes nothing; a changed URL, secret or mapping updates in place.
`action=remove` deletes the steps and the endpoint.

The target URL, header name and secret come from the connection `dynamics_webhook_default` (type HTTP: host = URL,
login = header name, password = secret). Registering needs high privileges (the seed asks for *System
Administrator* on the application user); once this DAG has run, remove that role: `didomi-dynamics preflight
--webhook` tells you whether it is still assigned.
"""

WEBHOOK_CONN_ID = "dynamics_webhook_default"


def build_dag() -> DAG:
    """The ``dynamics_webhook_setup`` DAG as a deployment schedules it; a DAG file calls this at module level."""
    with DAG(
        dag_id="dynamics_webhook_setup",
        description="Register, update or remove the Dynamics contact webhook",
        schedule=None,
        start_date=settings.START_DATE,
        catchup=False,
        max_active_runs=1,
        params={
            "action": Param("ensure", enum=["ensure", "remove"], description="ensure = create or update; remove"),
            "name": Param(
                "didomi-dynamics contact changes", type="string", description="Webhook (service endpoint) name"
            ),
            "dry_run": Param(False, type="boolean", description="Say what would change, change nothing."),
        },
        doc_md=DOC,
        tags=["didomi", "dynamics365", "webhook"],
    ) as dag:

        @task(pool=settings.DATAVERSE_POOL)
        @fails_fast
        def setup_webhook(params: dict[str, Any] | None = None) -> dict[str, Any]:
            from airflow.sdk import BaseHook

            from airflow_provider_didomi_dynamics.core.config import load_config
            from airflow_provider_didomi_dynamics.hooks.dataverse import DataverseHook
            from airflow_provider_didomi_dynamics.hooks.dataverse.webhooks import (
                WebhookSpec,
                ensure_webhook,
                remove_webhook,
            )

            params = params or {}
            hook = DataverseHook()
            if params.get("action") == "remove":
                return remove_webhook(hook, params["name"]).as_dict()
            config = load_config(settings.config_source())
            target = BaseHook.get_connection(WEBHOOK_CONN_ID)
            if not target.host or not target.password:
                raise ValueError(
                    f"connection {WEBHOOK_CONN_ID}: set host (the webhook URL) and password (the shared secret)"
                )
            url = target.host if "://" in target.host else f"https://{target.host}"
            spec = WebhookSpec(
                name=params["name"],
                url=url,
                header_name=target.login or "x-didomi-dynamics-key",
                secret=target.password,
                attributes=[m.attribute for m in config.reverse_mappings] + [config.contact_key_attribute],
            )
            result = ensure_webhook(hook, spec, dry_run=bool(params.get("dry_run")))
            return {**result.as_dict(), "changed": result.changed, "dry_run": bool(params.get("dry_run"))}

        setup_webhook()
    return dag
