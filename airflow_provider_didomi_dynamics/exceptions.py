"""Every error the provider raises, in one tree under :class:`DidomiDynamicsError`.

Each error says whether a retry can fix it (``retryable``). An operator turns the ones that cannot (a config a
person must edit, a refused secret, a missing column) into ``AirflowFailException`` so the task fails at once with
the message a person acts on; transient ones (5xx, 429, timeouts) keep Airflow's retry policy. Errors that callers
already catch as ``ValueError`` or ``TypeError`` keep that second base.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import requests

# HTTP statuses a later attempt may get past: throttling, timeouts, and the server's own failures.
RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


class DidomiDynamicsError(Exception):
    """Base class of this provider's errors. ``retryable``: whether trying again later can succeed."""

    retryable: bool = False


# ---- input a person wrote: config, params, mappings ---------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """One validation problem: where it is (a JSON path) and what to do about it."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class ConfigError(DidomiDynamicsError, ValueError):
    """An invalid config; ``problems`` lists every problem found, each with its JSON path."""

    def __init__(self, problems: Sequence[Problem], source: str = "integration config") -> None:
        self.problems = list(problems)
        self.source = source
        lines = "\n".join(f"  {p}" for p in self.problems)
        super().__init__(f"{source} has {len(self.problems)} problem(s):\n{lines}")


class GrammarError(DidomiDynamicsError, ValueError):
    """A column name that the Didomi column grammar does not define."""


class WindowError(DidomiDynamicsError, ValueError):
    """A window a person asked for that cannot be satisfied (e.g. since after until, or a date that is no date)."""


class ParamError(DidomiDynamicsError, ValueError):
    """A run param or operator argument that cannot be read (a flag that is not true/false, an id that is no GUID)."""


class WebhookPayloadError(ParamError):
    """A webhook payload (``remote_execution_context``) that is not a contact RemoteExecutionContext."""


class DidomiWebhookMessageError(WebhookPayloadError):
    """A queue message that is not a Didomi webhook body (or one of its envelopes) naming a user to re-sync.

    Not retryable: the same message fails the same way. The scheduled window run still syncs that user.
    """


class InputError(ParamError, TypeError):
    """A task input (usually an upstream task's output) that is not the frame or rows the engine takes."""


class ConnectionSetupError(DidomiDynamicsError, ValueError):
    """An Airflow connection that is missing, or lacks a field the hook needs (host, login, password, an extra)."""


# ---- data that cannot be mapped -----------------------------------------------------------------------------------


class ColumnCollisionError(DidomiDynamicsError, ValueError):
    """Two different Didomi paths flatten to one column name (ids that contain ``_`` can do that)."""

    def __init__(self, column: str, first_path: str, second_path: str) -> None:
        self.column = column
        self.paths = (first_path, second_path)
        super().__init__(
            f"column {column!r} would hold two different Didomi fields: {first_path} and {second_path}; "
            "rename one of these ids in Didomi (ids that differ only in where an '_' falls flatten to the same name)"
        )


class MalformedUserError(DidomiDynamicsError, TypeError):
    """A consent user that is not a JSON object; the rest of the page cannot be trusted to line up either."""


class ReverseMappingError(DidomiDynamicsError, ValueError):
    """The contacts frame lacks a column the reverse mapping needs."""


class MissingColumnError(DidomiDynamicsError, ValueError):
    """A mapped column the Dataverse table does not have: every row would fail, a person fixes the mapping."""


class ConsentRecordError(DidomiDynamicsError, ValueError):
    """A mapped Purpose or Topic is not in Dataverse, or its name is on several records: a person fixes the config."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__(
            f"{len(self.problems)} mapped consent record(s) cannot be resolved:\n" + "\n".join(self.problems)
        )


class NotBuiltError(DidomiDynamicsError):
    """A combination the provider does not do yet: said at once, before anything is read or written."""


class EventFieldError(DidomiDynamicsError, ValueError):
    """A field that no consent event can carry (read-only, vendor, or a value of the wrong type)."""


# ---- what an API answered -----------------------------------------------------------------------------------------


def path_only(url: str | None) -> str:
    """The URL without its query string: queries can be long and carry personal data."""
    if not url:
        return "?"
    return url.split("?", 1)[0]


class ApiError(DidomiDynamicsError):
    """An API answered with an error; ``response`` is kept so callers can read status, headers and body."""

    def __init__(self, service: str, response: requests.Response, message: str, code: str = "") -> None:
        self.service = service
        self.response = response
        self.status_code = response.status_code
        self.code = code
        self.api_message = message
        request = response.request
        method = request.method if request is not None else "?"
        path = path_only(request.url if request is not None else response.url)
        code_part = f" [{code}]" if code else ""
        super().__init__(f"{service} {method} {path} -> {response.status_code}{code_part}: {message}")

    @property
    def retryable(self) -> bool:  # type: ignore[override]
        return self.status_code in RETRYABLE_STATUSES


class BadResponseError(DidomiDynamicsError):
    """A success status whose body is not what the API documents (HTML page, truncated or invalid JSON).

    Usually a proxy or gateway answering in the API's place, which passes: retryable.
    """

    retryable = True


class DataverseAuthError(DidomiDynamicsError):
    """Entra ID refused the client credentials, or its discovery document could not be read.

    ``unreachable`` is True when Entra ID could not be used at all (no answer, a body that is not JSON) rather than
    refusing the credentials; only that can pass with time. An untrusted certificate never does.
    """

    def __init__(self, message: str, *, unreachable: bool = False, untrusted: bool = False) -> None:
        super().__init__(message)
        self.unreachable = unreachable
        self.untrusted = untrusted

    @property
    def retryable(self) -> bool:  # type: ignore[override]
        return self.unreachable and not self.untrusted


class AmbiguousWriteError(DidomiDynamicsError):
    """A non-idempotent write may or may not have been applied (connection lost, 5xx): re-read before resending."""

    retryable = True

    def __init__(self, describe: str, cause: str) -> None:
        self.cause = cause
        super().__init__(f"{describe}: outcome unknown ({cause})")


# ---- a run that stops ---------------------------------------------------------------------------------------------


class PreflightError(DidomiDynamicsError):
    """At least one preflight check failed; the message is the rendered report.

    Retryable only when a failed check says it may pass later (an API that did not answer); a missing privilege or
    column needs a person.
    """

    def __init__(self, report: Any) -> None:
        self.report = report
        super().__init__("preflight failed:\n" + report.render())

    @property
    def retryable(self) -> bool:  # type: ignore[override]
        return bool(getattr(self.report, "transient", True))  # a report that cannot tell keeps Airflow's retries


class ServiceUnavailableError(DidomiDynamicsError):
    """An API stopped answering part-way: every other row was written and reported, the task is retried."""

    retryable = True


class FailureThresholdError(DidomiDynamicsError):
    """More rows failed than the task allows; the report was pushed first and the failed rows wait in the queue."""

    retryable = True


def is_retryable(error: BaseException) -> bool:
    """Whether a task that failed with ``error`` should go through Airflow's retries (True) or fail now (False).

    Provider errors say it themselves; a transport failure (no answer, a dropped connection) may pass, an untrusted
    certificate never does; a connection Airflow does not know needs a person. Anything else keeps Airflow's policy.
    """
    if isinstance(error, DidomiDynamicsError):
        return bool(error.retryable)
    try:
        import requests
    except ImportError:  # pragma: no cover - requests is a dependency
        requests = None  # type: ignore[assignment]
    if requests is not None and isinstance(error, requests.exceptions.SSLError):
        return "CERTIFICATE_VERIFY_FAILED" not in str(error)
    for module in ("airflow.sdk.exceptions", "airflow.exceptions"):  # loaded whenever Airflow raised the error
        not_found = getattr(sys.modules.get(module), "AirflowNotFoundException", None)
        if isinstance(not_found, type) and isinstance(error, not_found):
            return False
    return True


__all__ = [
    "RETRYABLE_STATUSES",
    "AmbiguousWriteError",
    "ApiError",
    "BadResponseError",
    "ColumnCollisionError",
    "ConfigError",
    "ConnectionSetupError",
    "ConsentRecordError",
    "DataverseAuthError",
    "DidomiDynamicsError",
    "DidomiWebhookMessageError",
    "EventFieldError",
    "FailureThresholdError",
    "GrammarError",
    "InputError",
    "MalformedUserError",
    "MissingColumnError",
    "NotBuiltError",
    "ParamError",
    "PreflightError",
    "Problem",
    "ReverseMappingError",
    "ServiceUnavailableError",
    "WebhookPayloadError",
    "WindowError",
    "is_retryable",
]
