"""Fail a task at once on what a retry cannot fix; leave the rest to Airflow's retry policy.

An invalid config, a refused secret, a missing column or a connection that does not exist fail the same way on
every try: retrying them only delays, by minutes of backoff, the message a person has to act on. Whether an error
can pass with time is the error's own answer (``exceptions.is_retryable``); this is the one place that turns a "no"
into ``AirflowFailException``, keeping the message and chaining the original error.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from airflow.sdk.exceptions import AirflowFailException

from airflow_provider_didomi_dynamics.exceptions import is_retryable

Execute = TypeVar("Execute", bound=Callable[..., Any])


def fails_fast(execute: Execute) -> Execute:
    """Decorate an operator's ``execute``: a non-retryable error becomes ``AirflowFailException`` (no retries)."""

    @functools.wraps(execute)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return execute(*args, **kwargs)
        except Exception as err:
            if is_retryable(err):
                raise
            raise AirflowFailException(str(err)) from err

    return run  # type: ignore[return-value]
