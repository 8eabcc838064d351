"""The preflight's judgement: pure functions from the gathered facts to :class:`Check` findings, in the order a
person fixes things (connections, privileges, columns, keys, bulk messages, consent ids). No I/O here."""

from __future__ import annotations

from collections.abc import Mapping

from airflow_provider_didomi_dynamics.core.config import IntegrationConfig, Target
from airflow_provider_didomi_dynamics.core.grammar import FieldKind, FieldRef
from airflow_provider_didomi_dynamics.preflight.columns import attribute_checks
from airflow_provider_didomi_dynamics.preflight.consent import consent_checks, consent_privileges
from airflow_provider_didomi_dynamics.preflight.facts import (
    SYSTEM_ADMINISTRATOR,
    WEBHOOK_NAME_PREFIX,
    ConsentScan,
    DataverseFacts,
    DidomiFacts,
)
from airflow_provider_didomi_dynamics.preflight.report import FAIL, OK, WARN, Check
from airflow_provider_didomi_dynamics.preflight.wording import (
    DEPTH_LABELS,
    KEYS_HOWTO,
    ROLES_HOWTO,
    known_ids,
    privilege_purposes,
)

WEBHOOK_PRIVILEGES = (
    "prvCreateServiceEndpoint",
    "prvReadServiceEndpoint",
    "prvWriteServiceEndpoint",
    "prvCreateSdkMessageProcessingStep",
    "prvReadSdkMessageProcessingStep",
    "prvWriteSdkMessageProcessingStep",
    "prvReadSdkMessage",
)


def judge(
    config: IntegrationConfig,
    dataverse: DataverseFacts,
    didomi: DidomiFacts,
    *,
    check_webhook: bool = False,
    check_change_tracking: bool = False,
) -> list[Check]:
    """Turn the gathered facts into checks, in the order a person fixes things."""
    checks: list[Check] = []
    if dataverse.connection_error:
        message = dataverse.connection_error + " Other Dataverse checks skipped."
        checks.append(Check("Dataverse connection", FAIL, message, transient="connection" in dataverse.transient))
    else:
        source = f"; credentials: {dataverse.credentials}" if dataverse.credentials else ""
        checks.append(Check("Dataverse connection", OK, f"{dataverse.connected_as} (token and WhoAmI work{source})."))
    if didomi.connection_error:
        checks.append(Check("Didomi connection", FAIL, didomi.connection_error, transient=didomi.connection_transient))
    else:
        checks.append(Check("Didomi connection", OK, f"{didomi.connected_as} (token and first page of users work)."))
    scan = didomi.scan if not didomi.scan_error else None
    if not dataverse.connection_error and config.target is Target.CONTACT_POINT_CONSENT:
        checks.extend(privilege_checks(config, dataverse, check_webhook))
        checks.extend(consent_checks(config, dataverse))
    elif not dataverse.connection_error:
        checks.extend(privilege_checks(config, dataverse, check_webhook))
        checks.extend(attribute_checks(config, dataverse, scan))
        checks.append(alternate_key_check(config, dataverse))
        checks.append(bulk_message_check(config, dataverse))
    if not dataverse.connection_error and check_change_tracking:
        checks.append(change_tracking_check(config, dataverse))
    if not didomi.connection_error:
        checks.extend(consent_id_checks(config, didomi))
    return checks


def change_tracking_check(config: IntegrationConfig, facts: DataverseFacts) -> Check:
    """The live reverse sync polls the synced table's delta link: without change tracking it falls back to
    ``modifiedon`` windows, which cost a query per poll and never see a delete."""
    from airflow_provider_didomi_dynamics.triggers.dataverse_changes import ENABLE_CHANGE_TRACKING

    table = "msdynmkt_contactpointconsent4" if config.target is Target.CONTACT_POINT_CONSENT else "contact"
    name = "Change tracking"
    if facts.change_tracking_error:
        return Check(
            name,
            FAIL,
            f"Could not read EntityDefinitions(LogicalName='{table}'): {facts.change_tracking_error}.",
            transient="change_tracking" in facts.transient,
        )
    if facts.change_tracking:
        return Check(name, OK, f"{table} keeps change tracking: the live sync reads only what changed.")
    return Check(
        name,
        WARN,
        f"Change tracking is not enabled on {table}: the live sync falls back to reading modifiedon windows on "
        "every poll and never sees a delete. Fix: " + ENABLE_CHANGE_TRACKING.format(table=table) + ".",
    )


def required_sync_privileges(config: IntegrationConfig) -> list[str]:
    """What the sync DAGs need: read always; write and the bulk lookup when anything flows to Dynamics."""
    needed = ["prvReadContact"]
    if config.target is Target.CONTACT_POINT_CONSENT:
        return [*needed, *consent_privileges(config)]
    if config.forward_mappings:
        needed += ["prvWriteContact", "prvReadSdkMessage"]
        if config.upsert_mode:
            needed.append("prvCreateContact")
    return needed


def privilege_checks(config: IntegrationConfig, facts: DataverseFacts, check_webhook: bool) -> list[Check]:
    """Sync privileges, webhook-setup privileges, and the seed's System Administrator rule."""
    checks: list[Check] = []
    needed = required_sync_privileges(config)
    held = facts.privileges
    if held is None:
        checks.append(
            Check(
                "Sync privileges",
                WARN,
                f"Could not read the application user's privileges ({facts.privileges_error}), so they are not "
                f"checked. The sync needs {', '.join(needed)}; to let the preflight verify them, give the "
                f"application user read access to Users (prvReadUser) in one of its roles ({ROLES_HOWTO}).",
            )
        )
    else:
        missing = [p for p in needed if p not in held]
        shallow = [p for p in needed if p in held and p.endswith("Contact") and held[p] != "Global"]
        if missing:
            checks.append(
                Check(
                    "Sync privileges",
                    FAIL,
                    f"The application user lacks {privilege_purposes(missing)}. Without "
                    f"{'it' if len(missing) == 1 else 'them'} the sync fails with 'Principal user ... is missing "
                    "... privilege'. Add a "
                    "security role that grants them at Organization level to the application user "
                    f"({ROLES_HOWTO}), e.g. a copy of Basic User with Contact Read/Write/Create set to Organization.",
                )
            )
        elif shallow:
            levels = ", ".join(f"{p} at {DEPTH_LABELS.get(held[p], held[p])} level" for p in shallow)
            checks.append(
                Check(
                    "Sync privileges",
                    WARN,
                    f"The application user holds {levels}: it can only reach contacts it (or its business unit) "
                    "owns, so other contacts look missing or fail to update. Set Contact access to Organization "
                    f"in its security role ({ROLES_HOWTO}).",
                )
            )
        else:
            checks.append(
                Check("Sync privileges", OK, f"The application user holds what the sync needs: {', '.join(needed)}.")
            )
        if check_webhook:
            checks.append(_webhook_privileges_check(held, facts))
    if check_webhook and held is None:
        checks.append(
            Check(
                "Webhook setup privileges",
                WARN,
                "Could not read the application user's privileges, so webhook setup is not checked. Registering the "
                f"webhook needs {', '.join(WEBHOOK_PRIVILEGES[:2])} and more: as the seed says, assign System "
                f"Administrator to the application user while dynamics_webhook_setup runs ({ROLES_HOWTO}).",
            )
        )
    sa = _system_administrator_check(config, facts, check_webhook)
    if sa is not None:
        checks.append(sa)
    return checks


def _webhook_privileges_check(held: Mapping[str, str], facts: DataverseFacts) -> Check:
    missing = [p for p in WEBHOOK_PRIVILEGES if p not in held]
    if missing:
        return Check(
            "Webhook setup privileges",
            FAIL,
            f"Registering the webhook needs {privilege_purposes(missing)}, which the application user lacks. "
            "As the seed says: assign System Administrator to the application user "
            f"({ROLES_HOWTO}), run dynamics_webhook_setup, then remove System Administrator again.",
        )
    registered = f" The webhook {', '.join(facts.webhooks)} is already registered." if facts.webhooks else ""
    return Check(
        "Webhook setup privileges",
        OK,
        f"The application user can register the webhook (it holds {', '.join(WEBHOOK_PRIVILEGES)}).{registered}",
    )


def _system_administrator_check(config: IntegrationConfig, facts: DataverseFacts, check_webhook: bool) -> Check | None:
    """The seed: System Administrator only while the webhook is set up, removed once the integration is configured."""
    if facts.roles is None:
        if facts.privileges is None:
            return None
        return Check(
            "System Administrator role",
            WARN,
            f"Could not read the application user's roles ({facts.roles_error}), so whether System Administrator "
            "can be removed is not checked. Give it read access to Users and Security Roles (prvReadUser, "
            "prvReadRole) to let the preflight tell.",
        )
    roles = ", ".join(facts.roles) or "none"
    if SYSTEM_ADMINISTRATOR not in facts.roles:
        return Check(
            "System Administrator role",
            OK,
            f"Not assigned (roles: {roles}): least privilege, as the seed asks once the webhook is set up.",
        )
    needed = ", ".join(required_sync_privileges(config))
    if facts.webhooks:
        if check_webhook:
            return Check(
                "System Administrator role",
                OK,
                f"Assigned, as webhook setup needs; the webhook {', '.join(facts.webhooks)} is already registered, "
                "so remove System Administrator right after this setup run.",
            )
        return Check(
            "System Administrator role",
            WARN,
            f"Still assigned, but the webhook {', '.join(facts.webhooks)} is already registered, so System "
            "Administrator can now be removed (the seed: it is needed only while the webhook is set up; remove it "
            f"now). The sync needs only {needed}: make sure another role grants those (e.g. a custom 'Didomi "
            f"Integration' role), then remove System Administrator ({ROLES_HOWTO}).",
        )
    if facts.webhooks is None:
        return Check(
            "System Administrator role",
            OK,
            f"Assigned (roles: {roles}); whether the webhook is registered could not be read "
            f"({facts.webhooks_error}). It is needed only while the webhook is set up: remove it afterwards.",
        )
    return Check(
        "System Administrator role",
        OK,
        f"Assigned (roles: {roles}) and no {WEBHOOK_NAME_PREFIX}* webhook is registered yet: it is needed only "
        "while dynamics_webhook_setup runs. Remove it afterwards, or now if you do not use the webhook; the sync "
        f"needs only {needed}.",
    )


def alternate_key_check(config: IntegrationConfig, facts: DataverseFacts) -> Check:
    """An Active alternate key on the contact key lets creates be upserts, which never duplicate on a re-run."""
    key = config.contact_key_attribute
    name = f"Alternate key on {key}"
    if facts.keys is None:
        return Check(name, WARN, f"Could not read the contact table's alternate keys ({facts.keys_error}).")
    matching = [k for k in facts.keys if [str(a).lower() for a in k.get("KeyAttributes") or []] == [key]]
    active = [k for k in matching if k.get("EntityKeyIndexStatus") == "Active"]
    if active:
        schema = active[0].get("SchemaName") or active[0].get("LogicalName")
        effect = "creates are" if config.upsert_mode else "once upsert_mode is on, creates will be"
        return Check(
            name,
            OK,
            f"Active alternate key {schema} on {key}: {effect} upserts by {key}, so a re-run never duplicates a "
            "contact.",
        )
    if matching:
        status = str(matching[0].get("EntityKeyIndexStatus"))
        if status == "Failed":
            why = (
                f"its index build Failed, usually because existing contacts share a {key} value. Remove the "
                f"duplicates, then reactivate the key ({KEYS_HOWTO})"
            )
        else:
            why = f"it is still being built (status {status}); it turns Active on its own, usually within minutes"
        impact = "until then creates can duplicate on a re-run" if config.upsert_mode else "no creates yet"
        return Check(
            name, WARN if config.upsert_mode else OK, f"The alternate key on {key} is not Active: {why}; {impact}."
        )
    if not config.upsert_mode:
        return Check(
            name,
            OK,
            f"No alternate key on {key}; fine while upsert_mode is false (contacts are only updated, never "
            f"created). Before turning upsert_mode on, define one on {key} in {KEYS_HOWTO}.",
        )
    return Check(
        name,
        WARN,
        f"No Active alternate key on {key}: creates can duplicate on a re-run (a retried create is not recognised "
        f"as the same contact). Define an alternate key on {key} in {KEYS_HOWTO}.",
    )


def bulk_message_check(config: IntegrationConfig, facts: DataverseFacts) -> Check:
    """Bulk messages make a write one request per batch; without them the hook falls back to ``$batch``."""
    name = "Bulk messages"
    if not config.forward_mappings:
        return Check(name, OK, "Only to_didomi mappings: the sync never writes to Dynamics.")
    if facts.bulk_messages is None:
        forbidden = (facts.bulk_error or "").startswith("forbidden")
        return Check(
            name,
            FAIL if forbidden else WARN,
            f"Could not read sdkmessagefilters ({facts.bulk_error}). "
            + (
                "The sync reads them before its first write and would fail there: grant prvReadSdkMessage "
                f"({ROLES_HOWTO})."
                if forbidden
                else "The sync will ask again and fall back to $batch if they are missing."
            ),
        )
    needed = ["UpdateMultiple", *(["UpsertMultiple", "CreateMultiple"] if config.upsert_mode else [])]
    missing = [m for m in needed if m not in facts.bulk_messages]
    if missing:
        return Check(
            name,
            WARN,
            f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not available for contact in this org: "
            "those writes use the $batch fallback (atomic changesets of up to 1,000 requests). Results are the "
            "same, but each row then counts against the service limit of 6,000 requests per 5 minutes, so large "
            "runs are slower. Nothing to fix; it goes away when the org offers the messages.",
        )
    return Check(
        name,
        OK,
        f"{', '.join(needed)} available for contact: writes go in bulk requests (one request per batch).",
    )


def consent_id_checks(config: IntegrationConfig, didomi: DidomiFacts) -> list[Check]:
    """Mapped purposes, preferences, values and channels should occur in the organization's consent data."""
    kinds = (
        FieldKind.PURPOSE_ENABLED,
        FieldKind.PURPOSE_ENABLED_LI,
        FieldKind.PREFERENCE_VALUES,
        FieldKind.PREFERENCE_VALUE_ENABLED,
        FieldKind.CHANNEL_ENABLED,
    )
    # (JSON path, Didomi column, its reference, what a misspelt id means for this mapping)
    refs: list[tuple[str, str, FieldRef, str]] = [
        (f"mappings[{i}].value", m.value, m.field, f"{m.attribute} is never filled")
        for i, m in enumerate(config.mappings)
        if m.field.kind in kinds
    ]
    refs += [
        (
            f"{m.path}.value",
            m.value,
            m.field,
            f"no {m.kind.value.capitalize()} row for {m.record.label} is ever written",
        )
        for m in config.consent_mappings
        if m.field.kind in kinds
    ]
    name = "Didomi consent ids"
    if not refs:
        return [Check(name, OK, "No mapping refers to a purpose, preference or channel.")]
    scan = didomi.scan
    if didomi.scan_error or scan is None:
        return [Check(name, WARN, f"Could not scan the Didomi users ({didomi.scan_error}); ids are not checked.")]
    if scan.users == 0:
        return [
            Check(
                name,
                WARN,
                "The organization has no consent users yet, so the mapped purpose/preference/channel ids cannot be "
                "confirmed. Check them against the Didomi console (Preference management) before the first sync.",
            )
        ]
    checks: list[Check] = []
    seen: dict[str, list[str]] = {"purposes": [], "preferences": [], "channels": []}
    for path, value, ref, consequence in refs:
        problem = _unknown_id(ref, scan)
        if problem is None:
            _note(seen, ref)
            continue
        checks.append(
            Check(
                path,
                WARN,
                f"{path} ({value}): {problem} in the consent data of {scan.describe()}. If the id is "
                f"misspelt, {consequence} (and values written back are refused by Didomi); "
                "if it is simply new, ignore this. Compare with the ids in the Didomi console (Preference "
                "management).",
            )
        )
    if not checks:
        parts = [f"{k} {', '.join(dict.fromkeys(v))}" for k, v in seen.items() if v]
        checks.append(Check(name, OK, f"Mapped {'; '.join(parts)} all occur in {scan.describe()}."))
    return checks


def _note(seen: dict[str, list[str]], ref: FieldRef) -> None:
    if ref.kind is FieldKind.CHANNEL_ENABLED:
        seen["channels"].append(str(ref.channel))
        return
    seen["purposes"].append(str(ref.purpose))
    if ref.preference:
        seen["preferences"].append(f"{ref.purpose}/{ref.preference}")


def _unknown_id(ref: FieldRef, scan: ConsentScan) -> str | None:
    if ref.kind is FieldKind.CHANNEL_ENABLED:
        if ref.channel in scan.channels:
            return None
        return f"channel {ref.channel!r} was never seen (channels seen: {known_ids(scan.channels)})"
    purpose = str(ref.purpose)
    preferences = scan.purposes.get(purpose)
    if preferences is None:
        return f"purpose {purpose!r} was never seen (purposes seen: {known_ids(scan.purposes)})"
    if ref.kind in (FieldKind.PURPOSE_ENABLED, FieldKind.PURPOSE_ENABLED_LI):
        return None
    preference = str(ref.preference)
    values = preferences.get(preference)
    if values is None:
        return (
            f"preference {preference!r} of purpose {purpose!r} was never seen "
            f"(its preferences seen: {known_ids(preferences)})"
        )
    if ref.kind is FieldKind.PREFERENCE_VALUE_ENABLED and ref.value not in values:
        return (
            f"value {ref.value!r} of preference {preference!r} (purpose {purpose!r}) was never seen "
            f"(values seen: {known_ids(values)})"
        )
    return None


__all__ = [
    "WEBHOOK_PRIVILEGES",
    "alternate_key_check",
    "bulk_message_check",
    "consent_id_checks",
    "judge",
    "privilege_checks",
    "required_sync_privileges",
]
