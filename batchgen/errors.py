"""The few user-facing error types; the CLI turns them into messages and exit codes."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with the input, located as the user sees it."""

    file: str
    message: str
    row: int | None = None  # spreadsheet row number, header = 1
    column: str | None = None
    hint: str | None = None

    def __str__(self) -> str:
        where = self.file
        if self.row is not None:
            where += f", row {self.row}"
        if self.column is not None:
            where += f", column '{self.column}'"
        text = f"{where}: {self.message}"
        if self.hint:
            text += f" ({self.hint})"
        return text


class BatchgenError(Exception):
    """Base of every error that is the user's to fix, not a bug."""

    exit_code = 1


class ConfigError(BatchgenError):
    """The job file or the command line is wrong."""

    exit_code = 2


class InputError(BatchgenError):
    """The sheet (or a check against the endpoints) found problems; nothing was sent."""

    exit_code = 2

    def __init__(self, problems: Iterable[Problem], summary: str = "") -> None:
        self.problems = tuple(problems)
        count = len(self.problems)
        head = summary or f"{count} problem{'s' if count != 1 else ''} found; nothing was sent"
        super().__init__("\n".join([head, *(f"  - {p}" for p in self.problems)]))


class EndpointError(BatchgenError):
    """A request to one endpoint failed."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class RetryableEndpointError(EndpointError):
    """Worth sending again (timeouts, dropped connections, 429, 5xx).

    `retry_after`: the seconds the server asked to wait (a 429 or 503 with Retry-After); such
    an answer is the server pacing its clients, not a sign of trouble.
    """

    def __init__(
        self, message: str, status: int | None = None, *, retry_after: float | None = None
    ) -> None:
        super().__init__(message, status)
        self.retry_after = retry_after


class FatalEndpointError(EndpointError):
    """Sending the same request again cannot help (422, 404, 401, a bad response)."""


class RowError(FatalEndpointError):
    """The server raised an error while processing this request (a 500 in its error shape).

    It says nothing about the server's health, and the same request fails the same way on the
    same server; another server (other hardware or precision) may succeed.
    """

    def __init__(self, message: str, status: int | None = None, *, hint: str | None = None) -> None:
        super().__init__(message, status)
        self.hint = hint

    def __str__(self) -> str:
        text = super().__str__()
        return f"{text} ({self.hint})" if self.hint else text


class NoEndpointError(BatchgenError):
    """No endpoint could be reached for longer than the job allows."""


class NothingAnswersError(NoEndpointError):
    """No endpoint has answered since the start: a wrong address or a server not started.

    Waiting would not help (wait_all_down is for servers that answered and went away), and
    nothing was sent.
    """

    exit_code = 2
