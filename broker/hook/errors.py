"""The hook's one error type and the exit codes it maps to (documented in `broker-hook --help`)."""

from __future__ import annotations

__all__ = [
    "EXIT_NO_IDENTITY",
    "EXIT_OUTPUT",
    "EXIT_RATE_LIMITED",
    "EXIT_REFUSED",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "HookError",
]

EXIT_USAGE = 2
EXIT_NO_IDENTITY = 3
EXIT_UNREACHABLE = 4
EXIT_REFUSED = 5
EXIT_RATE_LIMITED = 6
EXIT_OUTPUT = 7

#: Failures worth retrying: the broker may come back or lift the limit.
TRANSIENT = frozenset({EXIT_UNREACHABLE, EXIT_RATE_LIMITED})


class HookError(Exception):
    """A failure with the exit code it maps to. Its message never holds a secret."""

    def __init__(self, code: int, message: str, *, retry_after: float | None = None) -> None:
        """Create the error.

        Args:
            code: The process exit code this failure maps to.
            message: What went wrong, for the log.
            retry_after: Seconds the broker asked us to wait (429 `Retry-After`).
        """
        super().__init__(message)
        self.code = code
        self.retry_after = retry_after

    @property
    def transient(self) -> bool:
        """Whether retrying may help (broker unreachable or failing, rate limited)."""
        return self.code in TRANSIENT
