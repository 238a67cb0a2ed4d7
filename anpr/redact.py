"""Secrets out of locations before they are stored, shown or logged.

A camera URL such as `rtsp://admin:pw@cam/stream`, a database URL with `?password=...`,
or a webhook URL with `?token=...`, names a source or an endpoint; its credentials must not
follow it into the reads, the exports, the logs or an error message. `redact` keeps the URL
readable (scheme, user, host, path) and replaces the secrets with `***`. What opens the
stream or posts to the endpoint keeps the real URL.

The result is always text that can be stored and printed on one line (`printable`): a
file name, a purpose or any other text from outside may hold a line break, an ANSI escape
sequence that rewrites the terminal, or a bidi override that reorders what is shown, and
each is shown as an escape instead, as are the bytes of a file name that are not UTF-8
(which Linux allows, shown as `\\xff`).
"""

from __future__ import annotations

import re
from urllib.parse import unquote

HIDDEN = "***"
# The query parameters whose value is shown: every other value is hidden. A list of secret
# names always misses one (pass=, pw=, passphrase=, sslpassword=, a vendor's own), while
# hiding a harmless value costs a `***` in a message. Compared case-insensitively, `-` read
# as `_`, after percent-decoding.
SHOWN_PARAMETERS = frozenset(
    {
        # a camera stream: which stream, and how it is carried
        *("channel", "subtype", "stream", "streamtype", "profile", "resolution", "fps", "framerate"),
        *("transport", "rtsp_transport", "codec", "width", "height", "quality", "compression"),
        # a database connection (a SQLAlchemy URL): how to connect, never as whom
        *("host", "port", "sslmode", "connect_timeout", "application_name", "target_session_attrs"),
        *("client_encoding", "mode", "cache", "uri", "timeout", "check_same_thread", "charset"),
    }
)
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)(.*)$", re.S)


def redact(location: str) -> str:
    """`location` with a URL's userinfo password (`user:***@`, or `***@` for a bare
    token) and the value of every query parameter not known to be harmless replaced;
    anything that is not `scheme://...` (a file path) is returned as is, but `printable`.
    Never raises."""
    location = printable(location)
    match = _URL.match(location)
    if match is None:
        return location
    scheme, rest = match.groups()
    # The authority ends at the first / ? or #, and its userinfo at its last @ (as FFmpeg
    # and urllib read it). A password holding an unencoded `/` moves that @ into the path,
    # so the last @ before the query counts: hiding part of an odd path is the safe error.
    query_at = _query_start(rest)
    head, tail = rest[:query_at], rest[query_at:]
    userinfo, at, after = head.rpartition("@")
    if at:
        user, colon, _ = userinfo.partition(":")
        head = (f"{user}:{HIDDEN}" if colon else HIDDEN) + at + after
    return scheme + head + _redact_parameters(tail)


def redact_query(url: str) -> str:
    """`url` with its query and fragment values hidden as `redact` hides them, and its
    userinfo left as it is: for a URL whose own parser has hidden the password already and
    whose user is a login to show (a database URL as SQLAlchemy renders it)."""
    url = printable(url)
    query_at = _query_start(url)
    return url[:query_at] + _redact_parameters(url[query_at:])


def _query_start(url: str) -> int:
    return min((i for i in (url.find("?"), url.find("#")) if i >= 0), default=len(url))


def printable(text: str) -> str:
    """`text` with every character that is not printable shown as an escape: C0 and C1
    controls (a line break, the ESC of an ANSI sequence), U+2028 and U+2029, bidi overrides
    and other format characters as `\\n`, `\\x1b`, `\\u202e`; and the bytes of a file name
    that were not UTF-8, which Python holds as lone surrogates (a database, a JSON reader or
    a UTF-8 terminal refuses them), as `\\xff`. Printable text is returned as is, so
    applying it twice changes nothing."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else _escaped(ch) for ch in text)


_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escaped(ch: str) -> str:
    code = ord(ch)
    if ch in _NAMED_ESCAPES:
        return _NAMED_ESCAPES[ch]
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    if code < 0x80:
        return f"\\x{code:02x}"
    # \u even below 0x100: a character (U+00A0) is told apart from a byte that was not UTF-8 (\xa0)
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def _redact_parameters(tail: str) -> str:
    """A URL's `?query#fragment` with every value hidden whose name is not shown (a fragment
    can carry parameters too: `#access_token=...`), and every item without a value that is
    not such a name (`?S3cret`)."""
    return re.sub(r"([?#&;])([^?#&;]*)", _hide_item, tail)


def _hide_item(match: re.Match[str]) -> str:
    separator, item = match.groups()
    name, equals, value = item.partition("=")
    if not item or is_shown_parameter(name):
        return separator + item
    return separator + (f"{name}={HIDDEN if value else ''}" if equals else HIDDEN)


def is_shown_parameter(name: str) -> bool:
    """Whether a query parameter's value may be shown (SHOWN_PARAMETERS)."""
    return unquote(name).strip().lower().replace("-", "_") in SHOWN_PARAMETERS


def redact_text(text: str) -> str:
    """Every URL inside free text redacted (an error message quoting one)."""
    return re.sub(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]*", lambda m: redact(m.group(0)), text)
