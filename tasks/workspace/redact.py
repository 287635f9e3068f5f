"""Credentials never leave the process: a URL's password (or the token given as its user), secret-looking query
parameters and a webhook's key in its path are masked wherever a URL is shown, logged, tagged, sent in an event or
written to an artifact. This is the one masker: settings errors, params, events and links all go through it.

The landing zone (`storage.landing`) and the tracking URI may carry credentials (`https://TOKEN@host`,
`http://user:password@host:5000` in MLFLOW_TRACKING_URI, `...?token=...`): they are used as given and only
ever shown masked. A webhook URL is a secret as a whole: Slack's `hooks.slack.com/services/T../B../KEY`,
Discord's `discord.com/api/webhooks/ID/TOKEN`, Teams' `*.webhook.office.com/webhookb2/...`; on any other host a
token-like path segment after `/services/`, `/webhooks/` or `/hooks/` is taken for the key.
"""

from __future__ import annotations

import re

MASK = "***"
# scheme://user:password@ keeps the user (a name, as SQLAlchemy shows it); scheme://user@ alone is taken for a
# token, as in https://TOKEN@host, and masked whole.
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^/@:\s]*)(?P<password>:[^/@\s]*)?@")
_SECRET_QUERY = re.compile(
    r"(?P<key>[?&;](?:[A-Za-z0-9_.-]*(?:token|secret|password|passwd|pwd|key|signature|sig|credential|auth)"
    r"[A-Za-z0-9_.-]*)=)(?P<value>[^&;#\s]*)", re.IGNORECASE)
# scheme://host/any/path/<marker>/<rest>: the rest of the path may be the webhook's key. A URL ends at a quote
# (a repr) or at Slack's `|` (<url|text>).
_WEBHOOK_PATH = re.compile(
    r"(?P<keep>\b[A-Za-z][A-Za-z0-9+.-]*://(?P<host>[^/\s?#'\"<>|]+)(?:/[^/\s?#'\"<>|]*)*?/"
    r"(?:services|webhooks?|webhookb2|hooks)/)(?P<rest>[^\s?#'\"<>|]+)", re.IGNORECASE)
# Hosts whose webhook path after the marker is all key (some of it short: Slack's T.../B...).
_WEBHOOK_HOSTS = re.compile(
    r"hooks\.slack(?:-gov)?\.com|(?:[\w-]+\.)?discord(?:app)?\.com|[\w.-]+\.webhook\.office\.com"
    r"|outlook\.office(?:365)?\.com|hooks\.zapier\.com", re.IGNORECASE)
# A generated key, not a word: 8+ characters with a digit among letters, or 20+ of mixed case.
_TOKEN = re.compile(r"(?=[\w-]*\d)(?=[\w-]*[A-Za-z])[\w-]{8,}|\d{12,}|(?=[\w-]*[a-z])(?=[\w-]*[A-Z])[\w-]{20,}")


def _mask_userinfo(match: re.Match) -> str:
    if match["password"] is None:
        return f"{match['scheme']}{MASK}@"
    return f"{match['scheme']}{match['user']}:{MASK}@"


def _mask_webhook(match: re.Match) -> str:
    host = match["host"].rpartition("@")[2].partition(":")[0]
    if _WEBHOOK_HOSTS.fullmatch(host):
        return f"{match['keep']}{MASK}"
    segments = match["rest"].split("/")
    first = next((i for i, segment in enumerate(segments) if _TOKEN.fullmatch(segment)), None)
    if first is None:  # /services/mlflow, /hooks/kaizen: words, not a key
        return match[0]
    return match["keep"] + "/".join([*segments[:first], MASK])


def redact(text: str) -> str:
    """`text` with every URL's password or token user, secret query values and webhook keys masked."""
    text = _USERINFO.sub(_mask_userinfo, text)
    text = _WEBHOOK_PATH.sub(_mask_webhook, text)
    return _SECRET_QUERY.sub(lambda m: f"{m['key']}{MASK}", text)


def holds_secret(url: str) -> bool:
    """Whether `url` carries anything `redact` would mask: such a URL belongs in the environment, not a file."""
    return redact(url) != url


def redact_value(value: object) -> object:
    """A param, tag or payload value masked when it is text (containers are masked item by item)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redact_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact_value(v) for v in value)
    return value
