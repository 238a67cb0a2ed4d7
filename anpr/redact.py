"""Secrets out of locations before they are stored, shown or logged.

A camera URL such as `rtsp://admin:pw@cam/stream`, or a webhook URL with `?token=...`,
names a source or an endpoint; its credentials must not follow it into the reads, the
exports, the logs or an error message. `redact` keeps the URL readable (scheme, user,
host, path) and replaces the secrets with `***`. What opens the stream or posts to the
endpoint keeps the real URL.

The result is always text that can be stored and printed: bytes of a file name that are
not UTF-8 (which Linux allows) are shown as `\\xff` escapes (`printable`).
"""

from __future__ import annotations

import re
from urllib.parse import unquote

HIDDEN = "***"
# Query parameters whose value is a credential (case-insensitive; `-` read as `_`), and
# any name ending in `_` and one of them (client_secret, x_amz_signature, refresh_token).
SECRET_PARAMETERS = frozenset(
    {"password", "passwd", "pwd", "token", "key", "secret", "auth", "signature", "sig", "api_key", "access_token"}
)
_SECRET_RUN_TOGETHER = frozenset({"apikey", "accesstoken", "authtoken", "clientsecret"})
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)(.*)$", re.S)


def redact(location: str) -> str:
    """`location` with a URL's userinfo password (`user:***@`, or `***@` for a bare
    token) and the values of secret-looking query parameters replaced; anything that
    is not `scheme://...` (a file path) is returned as is, but `printable`. Never raises."""
    location = printable(location)
    match = _URL.match(location)
    if match is None:
        return location
    scheme, rest = match.groups()
    # The authority ends at the first / ? or #, and its userinfo at its last @ (as FFmpeg
    # and urllib read it). A password holding an unencoded `/` moves that @ into the path,
    # so the last @ before the query counts: hiding part of an odd path is the safe error.
    query_at = min((i for i in (rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    head, tail = rest[:query_at], rest[query_at:]
    userinfo, at, after = head.rpartition("@")
    if at:
        user, colon, _ = userinfo.partition(":")
        head = (f"{user}:{HIDDEN}" if colon else HIDDEN) + at + after
    return scheme + head + _redact_parameters(tail)


def printable(text: str) -> str:
    """`text` with the bytes that were not UTF-8 shown as `\\xff` escapes.

    Python holds such bytes of a file name or argument as lone surrogates, which a
    database, a JSON reader or a UTF-8 terminal refuses."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate that was no byte (an escape in a YAML string)
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _redact_parameters(tail: str) -> str:
    """A URL's `?query#fragment` with secret parameter values hidden (a fragment can carry
    parameters too: `#access_token=...`)."""
    return re.sub(r"([?#&;])([^=&;#]*)=([^&;#]*)", _hide_value, tail)


def _hide_value(match: re.Match[str]) -> str:
    separator, name, value = match.groups()
    return f"{separator}{name}={HIDDEN if value and is_secret_parameter(name) else value}"


def is_secret_parameter(name: str) -> bool:
    """Whether a query parameter's value looks like a credential."""
    name = unquote(name).strip().lower().replace("-", "_")
    return (
        name in SECRET_PARAMETERS
        or name in _SECRET_RUN_TOGETHER
        or any(name.endswith("_" + word) for word in SECRET_PARAMETERS)
    )


def redact_text(text: str) -> str:
    """Every URL inside free text redacted (an error message quoting one)."""
    return re.sub(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]*", lambda m: redact(m.group(0)), text)
