"""The broker's one error tree.

Every failure a caller can see is a `BrokerError` subclass carrying its HTTP status and a
short machine-readable code. Exactly one place (`broker.web.problem`) turns these into
RFC 9457 problem documents; messages are written for the caller and never carry secrets,
stack traces or library internals. Internal detail is logged where the error is caught.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

__all__ = [
    "BadRequest",
    "BrokerError",
    "ConfigError",
    "Forbidden",
    "MethodNotAllowed",
    "NotFound",
    "OAuthError",
    "PayloadTooLarge",
    "PolicyDenied",
    "RateLimited",
    "Unauthenticated",
    "Unavailable",
    "UnsupportedMediaType",
]


class ConfigError(Exception):
    """Invalid configuration or policy, found at start-up or on reload.

    The message names the file and the key so an operator can fix it without a traceback.
    """


class BrokerError(Exception):
    """Base of every error that is returned to a caller.

    Attributes:
        status: HTTP status code.
        code: Stable machine-readable code, also the last segment of the problem `type`.
        title: Short human-readable summary of the problem type (RFC 9457 `title`).
        detail: Precise explanation of this occurrence (RFC 9457 `detail`).
        extra: Extension members added to the problem document.
        headers: Extra HTTP response headers (for example `Retry-After`).
    """

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"
    title: ClassVar[str] = "Internal Server Error"

    def __init__(
        self,
        detail: str,
        *,
        extra: Mapping[str, object] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Create the error.

        Args:
            detail: Precise explanation for the caller. Never a secret.
            extra: Extension members for the problem document.
            headers: Extra response headers.
        """
        super().__init__(detail)
        self.detail = detail
        self.extra: dict[str, object] = dict(extra or {})
        self.headers: dict[str, str] = dict(headers or {})


class BadRequest(BrokerError):
    """The request is malformed: JSON, types, lengths, unknown fields or values."""

    status = 400
    code = "invalid_request"
    title = "Bad Request"


class Unauthenticated(BrokerError):
    """No identity, or an identity that does not verify, or a revoked agent."""

    status = 401
    code = "unauthenticated"
    title = "Unauthorized"

    def __init__(
        self,
        detail: str,
        *,
        presented: bool = True,
        extra: Mapping[str, object] | None = None,
    ) -> None:
        """Create the error.

        Args:
            detail: What exactly failed to verify.
            presented: Whether the caller presented an identity at all; only failures of a
                presented identity are audited (contract section 3).
            extra: Extension members for the problem document.
        """
        super().__init__(
            detail,
            extra=extra,
            headers={"WWW-Authenticate": 'Bearer realm="credential-broker"'},
        )
        self.presented = presented


class Forbidden(BrokerError):
    """The caller is authenticated but may not do this."""

    status = 403
    code = "forbidden"
    title = "Forbidden"


class PolicyDenied(Forbidden):
    """The policy denied the request; carries the decision id and every reason."""

    code = "policy_denied"

    def __init__(self, detail: str, *, decision_id: str, reasons: list[str]) -> None:
        """Create the error.

        Args:
            detail: One-line summary of the denial.
            decision_id: Id of the audited decision.
            reasons: Every reason the policy gave.
        """
        super().__init__(detail, extra={"decision_id": decision_id, "reasons": reasons})
        self.decision_id = decision_id
        self.reasons = reasons


class OAuthError(BrokerError):
    """An error of an OAuth endpoint, rendered in the RFC 6749 section 5.2 form.

    Attributes:
        error: The OAuth error code (`invalid_request`, `invalid_grant`, `invalid_target`,
            `invalid_scope`, `unsupported_grant_type`, ...).
    """

    status = 400
    code = "oauth_error"
    title = "Bad Request"

    def __init__(
        self,
        error: str,
        detail: str,
        *,
        status: int = 400,
        extra: Mapping[str, object] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Create the error."""
        super().__init__(detail, extra=extra, headers=headers)
        self.error = error
        self.status = status  # type: ignore[misc]


class NotFound(BrokerError):
    """No such resource."""

    status = 404
    code = "not_found"
    title = "Not Found"


class Conflict(BrokerError):
    """The resource is not in a state that allows this (an approval already decided)."""

    status = 409
    code = "conflict"
    title = "Conflict"


class Gone(BrokerError):
    """The resource existed but is no more (an expired or already used approval)."""

    status = 410
    code = "gone"
    title = "Gone"


class MethodNotAllowed(BrokerError):
    """The endpoint exists but not for this method."""

    status = 405
    code = "method_not_allowed"
    title = "Method Not Allowed"


class PayloadTooLarge(BrokerError):
    """The request body is over the limit."""

    status = 413
    code = "payload_too_large"
    title = "Payload Too Large"


class UnsupportedMediaType(BrokerError):
    """The request body is not of an accepted media type."""

    status = 415
    code = "unsupported_media_type"
    title = "Unsupported Media Type"


class RateLimited(BrokerError):
    """A rate limit or budget is exhausted."""

    status = 429
    code = "rate_limited"
    title = "Too Many Requests"

    def __init__(
        self,
        detail: str,
        *,
        retry_after: int,
        decision_id: str | None = None,
        reasons: list[str] | None = None,
    ) -> None:
        """Create the error.

        Args:
            detail: Which limit was hit.
            retry_after: Seconds until the limit admits another request.
            decision_id: Id of the audited decision.
            reasons: The denial reasons (at least `rate_limited`).
        """
        extra: dict[str, object] = {"retry_after": retry_after}
        if decision_id is not None:
            extra["decision_id"] = decision_id
        if reasons is not None:
            extra["reasons"] = reasons
        super().__init__(detail, extra=extra, headers={"Retry-After": str(retry_after)})
        self.retry_after = retry_after


class Unavailable(BrokerError):
    """A dependency (Vault, the audit sink, the state store) cannot take the request."""

    status = 503
    code = "unavailable"
    title = "Service Unavailable"

    def __init__(
        self,
        detail: str,
        *,
        retry_after: int = 5,
        reason: str = "backend_unavailable",
        extra: Mapping[str, object] | None = None,
    ) -> None:
        """Create the error.

        Args:
            detail: Which dependency is unavailable (never its raw error).
            retry_after: Suggested seconds before a retry.
            reason: Reason code for the audit trail (`vault_unavailable`, ...).
            extra: Extension members for the problem document.
        """
        super().__init__(detail, extra=extra, headers={"Retry-After": str(retry_after)})
        self.retry_after = retry_after
        self.reason = reason
