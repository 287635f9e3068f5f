"""Text normalisation, the one definition shared by ingest (duplicate detection), the DVC stage (what the model
trains on) and prediction (what the served model sees), so a text means the same thing everywhere.
"""

from __future__ import annotations

import hashlib
import unicodedata


def normalize_text(text: str, lowercase: bool = False) -> str:
    """NFKC (so look-alike code points agree) and collapsed whitespace."""
    # str.split() breaks on exactly the characters regex \s matches (str.isspace), at a third of the cost:
    # this runs for every row ingested.
    text = " ".join(unicodedata.normalize("NFKC", text).split())
    return text.lower() if lowercase else text


def text_key(text: str) -> str:
    """The identity of a text for deduplication: case and spacing do not make a new example."""
    return hashlib.sha1(normalize_text(text).casefold().encode("utf-8")).hexdigest()
