"""How the flows behave when something goes wrong: which errors are retried, and how a failure reads.

I/O tasks (reading a source, publishing a dataset version, MLflow registry calls, writing
predictions) are Prefect tasks made by ``io_task``: a timeout, and retries with exponential
backoff and jitter, but only for errors that may pass on a second try (``is_transient``: a
connection reset, a timeout, a busy database, a 5xx from a server). Bad input (a
``ValueError`` such as ``DataValidationError``, a missing file, an unknown registry version) fails
at once, with its own message.

A pipeline made of steps wraps each one in ``step(name)``: whatever fails inside is re-raised as
``StepFailed``, whose message is one line, ``<step> failed: <error type>: <first line of the
error>``, with the original exception chained. The ``retrain`` flow ends with that line as its
state message, so the Prefect UI says at a glance what broke.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from prefect import task
from prefect.cache_policies import NONE
from prefect.tasks import exponential_backoff

IO_RETRIES = 3
IO_BACKOFF_SECONDS = 2.0  # delays 2, 4, 8 s (each ±50 % jitter) before retries 1, 2, 3
IO_JITTER = 0.5

# Errors that a filesystem raises for a wrong path or a refused write: bad input, not bad luck.
PERMANENT_OS_ERRORS = (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError)
# MLflow error codes that mean "the server or its store is unavailable", not "your request is wrong".
TRANSIENT_MLFLOW_CODES = frozenset(
    {
        "INTERNAL_ERROR",
        "TEMPORARILY_UNAVAILABLE",
        "WORKSPACE_TEMPORARILY_UNAVAILABLE",
        "SERVICE_UNDER_MAINTENANCE",
        "REQUEST_LIMIT_EXCEEDED",
        "DEADLINE_EXCEEDED",
        "IO_ERROR",
        "ABORTED",
    }
)
# Transient errors of libraries that do not derive from OSError, by class name (no imports needed):
# SQLAlchemy's "database is locked", botocore's connection failures.
TRANSIENT_ERROR_NAMES = frozenset(
    {
        "OperationalError",
        "EndpointConnectionError",
        "ConnectTimeoutError",
        "ReadTimeoutError",
        "ConnectionClosedError",
    }
)


def is_transient(error: BaseException) -> bool:
    """Whether ``error`` may pass on a second try; bad input (any ``ValueError``) never does."""
    if isinstance(error, (ValueError, TypeError, KeyError)) or isinstance(error, PERMANENT_OS_ERRORS):
        return False
    if isinstance(error, (OSError, TimeoutError, ConnectionError)):  # includes Prefect's task timeouts
        return True
    names = {cls.__name__ for cls in type(error).__mro__}
    if "MlflowException" in names:
        return getattr(error, "error_code", None) in TRANSIENT_MLFLOW_CODES
    return not names.isdisjoint(TRANSIENT_ERROR_NAMES)


def retry_if_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry a failed I/O task only for a transient error."""
    error = state.data if isinstance(state.data, BaseException) else None
    if error is None:
        try:
            state.result()
        except Exception as raised:
            error = raised
    return error is not None and is_transient(error)


def io_task(name: str, *, timeout_seconds: float, retries: int = IO_RETRIES, **options: Any) -> Callable:
    """``@task`` for I/O: timeout, ``retries`` on transient errors only, exponential backoff with jitter.

    Results stay in memory (never persisted: some are large) and inputs are not hashed for a cache.
    """
    settings = {
        "name": name,
        "retries": retries,
        "retry_delay_seconds": exponential_backoff(backoff_factor=IO_BACKOFF_SECONDS),
        "retry_jitter_factor": IO_JITTER,
        "retry_condition_fn": retry_if_transient,
        "timeout_seconds": timeout_seconds,
        "cache_policy": NONE,
        "persist_result": False,
    }
    return task(**{**settings, **options})


class StepFailed(RuntimeError):
    """A pipeline step failed; ``str()`` is one line naming the step and the error, which is chained."""

    def __init__(self, step: str, error: BaseException) -> None:
        self.step, self.error = step, error
        super().__init__(f"{step} failed: {type(error).__name__}: {first_line(error)}")


def first_line(error: BaseException, limit: int = 400) -> str:
    """The first non-empty line of an error's message, cut at ``limit`` characters."""
    line = next((part.strip() for part in str(error).splitlines() if part.strip()), "") or "(no message)"
    return line if len(line) <= limit else line[: limit - 1] + "…"


@contextmanager
def step(name: str) -> Iterator[None]:
    """Run a pipeline step: any exception leaves as ``StepFailed(name, error)`` (once, at the innermost step)."""
    try:
        yield
    except StepFailed:
        raise
    except Exception as error:
        raise StepFailed(name, error) from error
