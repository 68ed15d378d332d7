"""HTTP errors of the service: every failure a client can cause becomes a 4xx with ``{"error": message}``;
and the check of its API key."""
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


def check_api_key(key: str, where: str, fix: str) -> str:
    """``key`` if it can guard the service, else a ConfigError naming ``where`` it came from and ``fix``.

    An empty key must not mean "no authentication" (``--api-key "$KEY"`` with KEY unset gives one);
    a key with spaces around it or outside printable ASCII could never be sent in an HTTP header
    (header values are trimmed, and are not UTF-8), so no client could authenticate.
    """
    from ..errors import ConfigError

    if not key.strip():
        raise ConfigError(f"{where} is empty; {fix}")
    if key != key.strip() or not (key.isascii() and key.isprintable()):
        raise ConfigError(f"{where} has spaces around it or characters outside printable ASCII, which no client "
                          f"can send in an HTTP header; use letters, digits and punctuation only "
                          f"(e.g. openssl rand -hex 16)")
    return key
