"""Role-based security of the emulated org: privileges, security roles, and who holds which role.

Dataverse checks every operation against the privileges of the effective user (the application user, or the user it
impersonates): a role grants privileges (``prvReadContact``...) at a depth (Basic, Local, Deep, Global), a user holds
the union of its roles' privileges, and a missing privilege is a 403 with code ``0x80040220`` naming it. That is what
a preflight check has to tell apart (the seed: System Administrator only while the webhook is set up), so the
emulator models it. Privilege GUIDs and object type codes are Microsoft's published ones where the SDK documentation
lists them (contact, serviceendpoint, sdkmessage, sdkmessageprocessingstep); the others are stable made-up GUIDs.

Simplifications (documented in the emulator README): one business unit, depth is reported but every granted
privilege works org-wide, teams and field security do not exist, metadata reads and ``WhoAmI`` need no privilege.
:class:`SecurityLayer` is the model's API over it (assign roles, check privileges).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from airflow_provider_didomi_dynamics.emulators.dataverse import errors as E
from airflow_provider_didomi_dynamics.emulators.dataverse.errors import DataverseError
from airflow_provider_didomi_dynamics.emulators.dataverse.models.state import OrgState

if TYPE_CHECKING:
    from airflow_provider_didomi_dynamics.emulators.dataverse.models.identity import Caller, SystemUser

MISSING_PRIVILEGE = "0x80040220"
SYSTEM_ADMINISTRATOR = "System Administrator"
DIDOMI_INTEGRATION = "Didomi Integration"
# The System Administrator role template id is the same in every org.
SYSTEM_ADMINISTRATOR_TEMPLATE_ID = "627090ff-40a3-4053-8790-584edc5be201"
DEPTHS = ("Basic", "Local", "Deep", "Global")
_NS = uuid.UUID("0e0d3a55-5b7e-4c1e-9f6b-2f1d8c5e4a77")


@dataclass(frozen=True)
class Privilege:
    """One privilege: its name, id, and the table (object type code) it guards."""

    name: str
    privilege_id: str
    object_type_code: int
    entity: str


def _p(name: str, privilege_id: str | None, otc: int, entity: str) -> Privilege:
    pid = privilege_id.lower() if privilege_id else str(uuid.uuid5(_NS, name))
    return Privilege(name, pid, otc, entity)


_STEP = "sdkmessageprocessingstep"
# Customer Insights - Journeys' consent tables (custom-entity privileges are named after the logical name).
CONSENT_TABLE_TYPE_CODES = {"msdynmkt_purpose": 10650, "msdynmkt_topic": 10651, "msdynmkt_contactpointconsent4": 10652}
# name -> Privilege. The GUIDs given are Microsoft's (SDK "entity privileges" tables); None = a stable made-up id.
PRIVILEGES: dict[str, Privilege] = {
    p.name: p
    for p in (
        _p("prvCreateContact", "A8BFF87F-0DF0-41D4-BABD-F093FAF1E32C", 2, "contact"),
        _p("prvReadContact", "BA09EC92-12C4-4312-BA16-5715C2CBD6DA", 2, "contact"),
        _p("prvWriteContact", "65C22075-4E09-4F39-BAEC-E4BC3A950686", 2, "contact"),
        _p("prvDeleteContact", "2DDDED47-7488-4039-B9FF-81DEFE81FDD3", 2, "contact"),
        _p("prvShareContact", "AE756940-61FF-4BD3-BFBB-F2B0D542C608", 2, "contact"),
        _p("prvAssignContact", "43C63782-C7C6-471C-BD9C-24F79BF8C2A1", 2, "contact"),
        _p("prvAppendContact", "2B16BA12-6AB4-4AD2-B7C0-8641D2D6DFF2", 2, "contact"),
        _p("prvCreateServiceEndpoint", "C8F9248E-3C2D-42FB-B43C-C02EF857F4C0", 4618, "serviceendpoint"),
        _p("prvReadServiceEndpoint", "D86523D6-5946-4DDB-8176-4778116F8213", 4618, "serviceendpoint"),
        _p("prvWriteServiceEndpoint", "AD0EDD87-A785-4352-94C1-00C555E49696", 4618, "serviceendpoint"),
        _p("prvDeleteServiceEndpoint", "72CFF9A3-4772-4E16-8760-A29937521192", 4618, "serviceendpoint"),
        _p("prvCreateSdkMessageProcessingStep", "998329E9-5CE5-4538-99B1-983191899A8B", 4608, _STEP),
        _p("prvReadSdkMessageProcessingStep", "DB10A828-EC49-4035-8B7E-C58EFAF169EC", 4608, _STEP),
        _p("prvWriteSdkMessageProcessingStep", "072AEE35-581D-4488-85B1-AF09926FDA70", 4608, _STEP),
        _p("prvDeleteSdkMessageProcessingStep", "25CA2AFD-E85D-4a14-BB81-C368CD59BF5B", 4608, _STEP),
        # sdkmessagefilter (4607) has no privileges of its own: prvReadSdkMessage covers it.
        _p("prvCreateSdkMessage", "303DEF1C-947C-4af3-A63B-406A7ABC72DE", 4606, "sdkmessage"),
        _p("prvReadSdkMessage", "94C3AC2C-EB23-41cb-A903-4E2E49E910B4", 4606, "sdkmessage"),
        _p("prvWriteSdkMessage", "6EBC7C4C-FDE7-424c-842E-11651498A9B3", 4606, "sdkmessage"),
        _p("prvDeleteSdkMessage", "8F9B0745-2842-45b6-A306-EAB47F138C7A", 4606, "sdkmessage"),
        _p("prvCreateUser", None, 8, "systemuser"),
        _p("prvReadUser", None, 8, "systemuser"),
        _p("prvWriteUser", None, 8, "systemuser"),
        _p("prvCreateRole", None, 1036, "role"),
        _p("prvReadRole", None, 1036, "role"),
        _p("prvWriteRole", None, 1036, "role"),
        _p("prvDeleteRole", None, 1036, "role"),
        _p("prvActOnBehalfOfAnotherUser", None, 0, "none"),
        _p("prvBypassCustomBusinessLogic", None, 0, "none"),
        *(
            _p(f"prv{action}{entity}", None, otc, entity)
            for entity, otc in CONSENT_TABLE_TYPE_CODES.items()
            for action in ("Create", "Read", "Write", "Delete", "Append", "AppendTo")
        ),
    )
}
# What the Didomi sync needs (see the preflight): contacts, the bulk-message lookup (sdkmessagefilters), reading its
# own roles and privileges, and seeing whether the webhook is registered (read-only on the registration tables).
DIDOMI_INTEGRATION_PRIVILEGES = (
    "prvReadContact",
    "prvWriteContact",
    "prvCreateContact",
    "prvReadSdkMessage",
    "prvReadSdkMessageProcessingStep",
    "prvReadServiceEndpoint",
    "prvReadUser",
    "prvReadRole",
    # Contact Point Consent target: read and create purposes and topics, read and write consent rows.
    *(
        f"prv{action}{entity}"
        for entity in CONSENT_TABLE_TYPE_CODES
        for action in ("Create", "Read", "Write", "Append", "AppendTo")
    ),
)


@dataclass
class SecurityRole:
    """A security role: privilege name -> depth. ``all_privileges`` marks System Administrator (it holds them all)."""

    roleid: str
    name: str
    privileges: dict[str, str] = field(default_factory=dict)
    all_privileges: bool = False
    builtin: bool = False
    roletemplateid: str | None = None

    def grants(self) -> dict[str, str]:
        if self.all_privileges:
            return dict.fromkeys(PRIVILEGES, "Global")
        return dict(self.privileges)

    def as_row(self, business_unit_id: str) -> dict[str, Any]:
        return {
            "roleid": self.roleid,
            "name": self.name,
            "_businessunitid_value": business_unit_id,
            "_roletemplateid_value": self.roletemplateid,
            "ismanaged": self.builtin,
            "iscustomizable": {"Value": not self.builtin, "CanBeChanged": False},
        }


class SecurityModel:
    """Roles, their assignment to system users, and privilege checks (the effective-privilege set is cached)."""

    def __init__(self, business_unit_id: str) -> None:
        self.business_unit_id = business_unit_id
        self._lock = threading.RLock()
        self.roles: dict[str, SecurityRole] = {}
        self._assigned: dict[str, list[str]] = {}  # systemuserid -> role ids, in assignment order
        self._defaults: dict[str, tuple[str, ...]] = {}  # systemuserid -> role names at creation (for reset)
        self._effective: dict[str, dict[str, str]] = {}
        self._add_builtin_roles()

    def _add_builtin_roles(self) -> None:
        self.roles.clear()
        self.add_role(
            SYSTEM_ADMINISTRATOR, (), all_privileges=True, builtin=True, roletemplateid=SYSTEM_ADMINISTRATOR_TEMPLATE_ID
        )
        self.add_role(DIDOMI_INTEGRATION, DIDOMI_INTEGRATION_PRIVILEGES, builtin=True)

    # -- roles --------------------------------------------------------------------------------------------------

    def add_role(
        self,
        name: str,
        privileges: Iterable[str] | Mapping[str, str],
        *,
        all_privileges: bool = False,
        builtin: bool = False,
        roletemplateid: str | None = None,
    ) -> SecurityRole:
        """Create a role; ``privileges`` are names (Global depth) or name -> depth."""
        grants = dict(privileges) if isinstance(privileges, Mapping) else dict.fromkeys(privileges, "Global")
        for privilege, depth in grants.items():
            if privilege not in PRIVILEGES:
                raise ValueError(f"unknown privilege {privilege!r}; known: {', '.join(sorted(PRIVILEGES))}")
            if depth not in DEPTHS:
                raise ValueError(f"depth must be one of {', '.join(DEPTHS)}, got {depth!r}")
        with self._lock:
            if self.find_role(name) is not None:
                raise ValueError(f"a role named {name!r} already exists")
            role = SecurityRole(
                str(uuid.uuid5(_NS, f"role/{name}")), name, grants, all_privileges, builtin, roletemplateid
            )
            self.roles[role.roleid] = role
            self._effective.clear()
            return role

    def find_role(self, name: str) -> SecurityRole | None:
        """A role by name (case-insensitive, as Dataverse compares strings)."""
        wanted = name.strip().casefold()
        with self._lock:
            return next((r for r in self.roles.values() if r.name.casefold() == wanted), None)

    def role(self, name: str) -> SecurityRole:
        found = self.find_role(name)
        if found is None:
            raise DataverseError(404, "0x80040217", f"role With Name = {name} Does Not Exist")
        return found

    def role_rows(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {rid: r.as_row(self.business_unit_id) for rid, r in self.roles.items()}

    # -- assignments --------------------------------------------------------------------------------------------

    def register_user(self, user_id: str, role_names: Iterable[str]) -> None:
        """A new system user with its initial roles (restored by :meth:`reset`)."""
        names = tuple(role_names)
        with self._lock:
            self._defaults[user_id] = names
            self._assigned[user_id] = [self.role(n).roleid for n in names]
            self._effective.pop(user_id, None)

    def assign(self, user_id: str, role_name: str) -> None:
        role = self.role(role_name)
        with self._lock:
            held = self._assigned.setdefault(user_id, [])
            if role.roleid not in held:
                held.append(role.roleid)
            self._effective.pop(user_id, None)

    def remove(self, user_id: str, role_name: str) -> None:
        role = self.role(role_name)
        with self._lock:
            held = self._assigned.setdefault(user_id, [])
            if role.roleid in held:
                held.remove(role.roleid)
            self._effective.pop(user_id, None)

    def roles_of(self, user_id: str) -> list[SecurityRole]:
        with self._lock:
            return [self.roles[rid] for rid in self._assigned.get(user_id, []) if rid in self.roles]

    def reset(self) -> None:
        """Back to the built-in roles and every user's initial roles."""
        with self._lock:
            self._add_builtin_roles()
            self._assigned = {uid: [self.role(n).roleid for n in names] for uid, names in self._defaults.items()}
            self._effective.clear()

    # -- checks -------------------------------------------------------------------------------------------------

    def privileges_of(self, user_id: str) -> dict[str, str]:
        """Privilege name -> the deepest depth any of the user's roles grants."""
        with self._lock:
            cached = self._effective.get(user_id)
            if cached is not None:
                return cached
            merged: dict[str, str] = {}
            for role in self.roles_of(user_id):
                for name, depth in role.grants().items():
                    if name not in merged or DEPTHS.index(depth) > DEPTHS.index(merged[name]):
                        merged[name] = depth
            self._effective[user_id] = merged
            return merged

    def has(self, user_id: str, privilege: str) -> bool:
        return privilege in self.privileges_of(user_id)

    def require(self, user_id: str, privilege: str, access_mode: int = 0) -> None:
        """Raise Dataverse's 403 privilege error unless the user holds ``privilege``."""
        if privilege in self.privileges_of(user_id):
            return
        raise self.missing(user_id, privilege, access_mode)

    def missing(self, user_id: str, privilege: str, access_mode: int = 0) -> DataverseError:
        info = PRIVILEGES[privilege]
        held = self.privileges_of(user_id)
        return DataverseError(
            403,
            MISSING_PRIVILEGE,
            f"Principal user (Id={user_id}, type=8, roleCount={len(self.roles_of(user_id))}, "
            f"privilegeCount={len(held)}, accessMode={access_mode}), is missing {privilege} privilege "
            f"(Id={info.privilege_id}) on OTC={info.object_type_code} for entity '{info.entity}'.",
        )

    def role_privileges(self, user_id: str) -> list[dict[str, Any]]:
        """``RetrieveUserPrivileges``'s ``RolePrivileges``: one entry per privilege the user holds."""
        return [
            {
                "Depth": depth,
                "PrivilegeId": PRIVILEGES[name].privilege_id,
                "BusinessUnitId": self.business_unit_id,
                "PrivilegeName": name,
                "RecordFilterId": None,
                "RecordFilterUniqueName": None,
            }
            for name, depth in sorted(self.privileges_of(user_id).items())
        ]


# Which privilege family guards each table: prv<Create|Read|Write|Delete><family>.
TABLE_PRIVILEGES = {
    "contacts": "Contact",
    "serviceendpoints": "ServiceEndpoint",
    "sdkmessageprocessingsteps": "SdkMessageProcessingStep",
    "sdkmessages": "SdkMessage",
    "sdkmessagefilters": "SdkMessage",
    "systemusers": "User",
    "roles": "Role",
    "msdynmkt_purposes": "msdynmkt_purpose",
    "msdynmkt_topics": "msdynmkt_topic",
    "msdynmkt_contactpointconsent4s": "msdynmkt_contactpointconsent4",
}


class SecurityLayer(OrgState):
    """The model's security API: roles of users and application users, and the privilege checks every layer calls."""

    def system_user(self, client_id_or_user_id: str) -> SystemUser:
        """The system user behind an application (client id) or with this ``systemuserid``."""
        key = client_id_or_user_id.strip().lower()
        with self._lock:
            app = self.apps.get(client_id_or_user_id) or self.apps.get(key)
            if app is not None:
                return app.user
            user = self.users.get(key)
            if user is None:
                raise E.not_found("systemuser", client_id_or_user_id)
            return user

    def assign_role(self, client_id_or_user_id: str, role_name: str) -> list[str]:
        """Give a user (or the application user of a client id) a security role; returns its role names."""
        user = self.system_user(client_id_or_user_id)
        self.security.assign(user.systemuserid, role_name)
        return self.user_roles(user.systemuserid)

    def remove_role(self, client_id_or_user_id: str, role_name: str) -> list[str]:
        """Take a security role away (e.g. System Administrator once the webhook is set up); returns what is left."""
        user = self.system_user(client_id_or_user_id)
        self.security.remove(user.systemuserid, role_name)
        return self.user_roles(user.systemuserid)

    def user_roles(self, client_id_or_user_id: str) -> list[str]:
        user = self.system_user(client_id_or_user_id)
        return [r.name for r in self.security.roles_of(user.systemuserid)]

    def add_role(self, name: str, privileges: Iterable[str] | dict[str, str]) -> dict[str, Any]:
        """Define a custom security role (privilege names at Global depth, or name -> depth)."""
        role = self.security.add_role(name, privileges)
        return role.as_row(self.business_unit_id)

    def user_privileges(self, client_id_or_user_id: str) -> list[dict[str, Any]]:
        """What ``RetrieveUserPrivileges`` returns for this user."""
        user = self.system_user(client_id_or_user_id)
        return self.security.role_privileges(user.systemuserid)

    def check_privilege(self, caller: Caller, privilege: str) -> None:
        """403 ``0x80040220`` unless the effective user holds ``privilege``."""
        if self._bypass_security:
            return
        user = caller.user
        self.security.require(user.systemuserid, privilege, 4 if user.applicationid else 0)

    def check_table_privilege(self, caller: Caller, action: str, entity_set: str) -> None:
        """``action`` Create/Read/Write/Delete on a table (no-op for tables without privileges)."""
        family = TABLE_PRIVILEGES.get(entity_set)
        if family is not None:
            self.check_privilege(caller, f"prv{action}{family}")

    @contextmanager
    def _security_bypassed(self) -> Iterator[None]:
        """Seeding and other Python-side setup act as the platform itself, not as a user."""
        previous = self._bypass_security
        self._bypass_security = True
        try:
            yield
        finally:
            self._bypass_security = previous


__all__ = [
    "DIDOMI_INTEGRATION",
    "DIDOMI_INTEGRATION_PRIVILEGES",
    "MISSING_PRIVILEGE",
    "PRIVILEGES",
    "SYSTEM_ADMINISTRATOR",
    "TABLE_PRIVILEGES",
    "Privilege",
    "SecurityLayer",
    "SecurityModel",
    "SecurityRole",
]
