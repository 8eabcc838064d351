"""Transform operators: the mapping engine between the pull and push tasks, each way.

They are thin: load the config, call the pure engine, log the counts a person wants to see, return the frame.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
from airflow.sdk import BaseOperator, Context

from airflow_provider_didomi_dynamics.core.config import IntegrationConfig, Target, load_config
from airflow_provider_didomi_dynamics.hooks.dataverse import DataverseHook
from airflow_provider_didomi_dynamics.mapping.forward import forward_map
from airflow_provider_didomi_dynamics.mapping.reverse import reverse_map
from airflow_provider_didomi_dynamics.mapping.reverse_consent import reverse_consent_map
from airflow_provider_didomi_dynamics.operators.fail_fast import fails_fast
from airflow_provider_didomi_dynamics.sync.chunks import ChunkRef, excluded_rows, is_chunk_ref, read_frame, write_frame
from airflow_provider_didomi_dynamics.sync.pull_contacts import column_defaults


class ApplyConsentMappingOperator(BaseOperator):
    """Didomi -> Dynamics: flattened consent users -> one row per contact with the mapped attributes.

    :param users: the flattened frame from ``DidomiPullConsentsOperator`` (an XComArg), or one chunk of it (a
        ``ChunkRef``, when the pull writes chunks and this task is mapped over them): then the mapped rows go to
        a Parquet file beside the chunk and the task returns its ref.
    :param config: the integration config (dict, JSON text, file path) or None for the Airflow Variable.
    """

    template_fields: Sequence[str] = ("users", "config")
    ui_color = "#e8f4ea"

    def __init__(self, *, users: Any, config: Any = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.users = users
        self.config = config

    @fails_fast
    def execute(self, context: Context) -> Any:
        config = load_config(self.config)
        chunk = ChunkRef.from_xcom(self.users) if is_chunk_ref(self.users) else None
        if chunk is not None:
            frame = read_frame(chunk.path())
        else:
            frame = self.users if isinstance(self.users, pd.DataFrame) else pd.DataFrame()
        result = forward_map(frame, config)
        contacts, elsewhere = result.frame, []
        if chunk is not None:  # rows whose newer version another chunk holds: this chunk's push reports them skipped
            superseded = excluded_rows(contacts, chunk)
            elsewhere = [str(k) for k in contacts.loc[superseded, "organization_user_id"]]
            contacts = contacts[~superseded].reset_index(drop=True)
        self.log.info(
            "mapped %d consent user(s) to %d contact row(s) over %d attribute(s); "
            "%d left out without organization_user_id, %d older duplicate(s) dropped",
            len(frame),
            len(contacts),
            len(config.forward_mappings),
            result.missing_key,
            result.duplicates_dropped,
        )
        context["ti"].xcom_push(
            key="mapping_report",
            value={
                "users": len(frame),
                "contacts": len(contacts),
                "skipped_missing_organization_user_id": result.missing_key,
                "duplicates_dropped": result.duplicates_dropped,
                **({"superseded_in_other_chunk": len(elsewhere)} if chunk is not None else {}),
            },
        )
        if chunk is None:
            return contacts
        mapped = chunk.sibling("contacts", len(contacts))
        mapped.exclude = elsewhere  # exactly the rows left out, one key each, for the push to report
        write_frame(contacts, mapped.path())
        return mapped.to_xcom()


class ReverseConsentMappingOperator(BaseOperator):
    """Dynamics -> Didomi: changed contacts -> one Didomi consent event payload per contact.

    :param contacts: the frame from ``DataversePullContactsOperator`` (an XComArg).
    :param config: the integration config (dict, JSON text, file path) or None for the Airflow Variable.
    :param dataverse_conn_id: where to read the mapped columns' default values (None: the config's
        ``authentication``). A column that only holds its default is not a choice a person made.
    """

    template_fields: Sequence[str] = ("contacts", "config", "dataverse_conn_id")
    ui_color = "#e8f4ea"

    def __init__(
        self, *, contacts: Any, config: Any = None, dataverse_conn_id: str | None = "dataverse_default", **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.contacts = contacts
        self.config = config
        self.dataverse_conn_id = dataverse_conn_id

    def column_defaults(self, config: IntegrationConfig) -> dict[str, Any]:
        """Default values of the two-option (Boolean) contact columns, from Dataverse metadata."""
        hook = DataverseHook.for_config(self.dataverse_conn_id, config)
        try:
            return column_defaults(hook, config)
        finally:
            hook.close()

    @fails_fast
    def execute(self, context: Context) -> pd.DataFrame:
        config = load_config(self.config)
        frame = self.contacts if isinstance(self.contacts, pd.DataFrame) else pd.DataFrame()
        if config.target is Target.CONTACT_POINT_CONSENT:
            return self.consent_rows(frame, config, context)
        defaults = self.column_defaults(config) if len(frame) and config.reverse_mappings else {}
        events = reverse_map(frame, config, defaults)
        self.log.info(
            "rebuilt %d consent event(s) from %d contact(s) over %d mapping(s); %d contact(s) without a key left out",
            len(events),
            len(frame),
            len(config.reverse_mappings),
            int(events.attrs.get("missing_key", 0)),
        )
        context["ti"].xcom_push(
            key="mapping_report",
            value={
                "contacts": len(frame),
                "events": len(events),
                "skipped_missing_key": int(events.attrs.get("missing_key", 0)),
            },
        )
        return events

    def consent_rows(self, frame: pd.DataFrame, config: IntegrationConfig, context: Context) -> pd.DataFrame:
        """Target contact_point_consent: changed consent rows -> one change per Didomi user (and skipped rows)."""
        changes = reverse_consent_map(frame, config)
        skipped = int(changes["skip_reason"].notna().sum())
        self.log.info(
            "rebuilt %d consent change(s) from %d consent row(s); %d row(s) cannot be sent (the push reports why)",
            len(changes) - skipped,
            len(frame),
            skipped,
        )
        context["ti"].xcom_push(
            key="mapping_report",
            value={"consent_rows": len(frame), "events": len(changes) - skipped, "skipped": skipped},
        )
        return changes
