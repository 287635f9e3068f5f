"""Credentials never leave the process: a URL's user and password, and secret-looking query parameters, are
masked wherever a URL is shown, logged, tagged, sent in an event or written to an artifact.

The landing zone (`storage.landing`) and the tracking URI may carry credentials (`https://TOKEN@host`,
`http://user:password@host:5000` in MLFLOW_TRACKING_URI, `...?token=...`): they are used as given and only
ever shown masked.
"""

from __future__ import annotations

import re

MASK = "***"
# scheme://user[:password]@  (the user alone can be a token, as in https://TOKEN@host)
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/@\s]+)@")
_SECRET_QUERY = re.compile(
    r"(?P<key>[?&;](?:[A-Za-z0-9_.-]*(?:token|secret|password|passwd|pwd|key|signature|sig|credential|auth)"
    r"[A-Za-z0-9_.-]*)=)(?P<value>[^&;#\s]*)", re.IGNORECASE)


def redact(text: str) -> str:
    """`text` with every URL's user information and secret query values masked."""
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{MASK}@", text)
    return _SECRET_QUERY.sub(lambda m: f"{m['key']}{MASK}", text)


def redact_value(value: object) -> object:
    """A param, tag or payload value masked when it is text (containers are masked item by item)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redact_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact_value(v) for v in value)
    return value
