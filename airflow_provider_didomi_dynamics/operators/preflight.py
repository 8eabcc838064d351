"""The first task of both sync DAGs: stop early, in words a person acts on, when the setup cannot work."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseOperator, Context

from airflow_provider_didomi_dynamics.operators.fail_fast import fails_fast


class SyncPreflightOperator(BaseOperator):
    """Checks connections, privileges, mapped attributes, the alternate key and consent ids (cached per run).

    :param config: the integration config (dict, JSON text, file path) or None for the Airflow Variable.
    :param check_webhook: also check the privileges webhook registration needs.
    :param check_change_tracking: also check the synced table keeps change tracking (the live reverse sync).
    """

    template_fields: Sequence[str] = ("config", "dataverse_conn_id", "didomi_conn_id")
    ui_color = "#fff4d6"

    def __init__(
        self,
        *,
        config: Any = None,
        dataverse_conn_id: str | None = "dataverse_default",
        didomi_conn_id: str = "didomi_default",
        check_webhook: bool = False,
        check_change_tracking: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.config = config
        self.dataverse_conn_id = dataverse_conn_id
        self.didomi_conn_id = didomi_conn_id
        self.check_webhook = check_webhook
        self.check_change_tracking = check_change_tracking

    @fails_fast
    def execute(self, context: Context) -> dict[str, Any]:
        from airflow_provider_didomi_dynamics.preflight.run import preflight_task

        return preflight_task(
            self.config,
            dataverse_conn_id=self.dataverse_conn_id,
            didomi_conn_id=self.didomi_conn_id,
            run_id=str(context.get("run_id") or ""),
            check_webhook=self.check_webhook,
            check_change_tracking=self.check_change_tracking,
        )
