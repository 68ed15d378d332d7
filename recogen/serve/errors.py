"""HTTP errors of the service: every failure a client can cause becomes a 4xx with ``{"error": message}``."""
from __future__ import annotations


class ApiError(Exception):
    """A client mistake answered with ``status`` and a one-line message naming the problem and the fix."""

    def __init__(self, status: int, message: str, kind: str = "bad_request"):
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind


def user_error_status(exc: Exception) -> int:
    """HTTP status of a recogen UserError raised while answering: bad values 422, bad data 400."""
    from ..errors import ConfigError

    return 422 if isinstance(exc, ConfigError) else 400
