"""The emulated org's state (moto's ``models``): :class:`DataverseModel` and the records tests build on."""

from __future__ import annotations

from airflow_provider_didomi_dynamics.emulators.dataverse.errors import AuthError
from airflow_provider_didomi_dynamics.emulators.dataverse.models.identity import ApplicationUser, Caller, SystemUser
from airflow_provider_didomi_dynamics.emulators.dataverse.models.org import SEEDS, DataverseModel, route_name
from airflow_provider_didomi_dynamics.emulators.dataverse.models.queries import QueryPage
from airflow_provider_didomi_dynamics.emulators.dataverse.models.schema import AlternateKey
from airflow_provider_didomi_dynamics.emulators.dataverse.models.throttling import ServiceProtection

__all__ = [
    "SEEDS",
    "AlternateKey",
    "ApplicationUser",
    "AuthError",
    "Caller",
    "DataverseModel",
    "QueryPage",
    "ServiceProtection",
    "SystemUser",
    "route_name",
]
