"""Text normalisation, the one definition shared by ingest (duplicate detection), the DVC stage (what the model
trains on) and prediction (what the served model sees), so a text means the same thing everywhere.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

_SPACES = re.compile(r"\s+")


def normalize_text(text: str, lowercase: bool = False) -> str:
    """NFKC (so look-alike code points agree) and collapsed whitespace."""
    text = _SPACES.sub(" ", unicodedata.normalize("NFKC", text)).strip()
    return text.lower() if lowercase else text


def text_key(text: str) -> str:
    """The identity of a text for deduplication: case and spacing do not make a new example."""
    return hashlib.sha1(normalize_text(text).casefold().encode("utf-8")).hexdigest()
