"""Text normalisation: the one definition that ingest, the DVC stage and prediction share."""

from __future__ import annotations

import pandas as pd

from kaizen.tasks.formats.text import normalize_text, text_key


def test_normalize_text_applies_nfkc_and_collapses_whitespace() -> None:
    assert normalize_text("\uff27\uff52\uff45\uff41\uff54\u3000\ufb01lm") == "Great film"  # full width, ligature
    assert normalize_text("  a\tlong \n\n review\u00a0here\r\n ") == "a long review here"
    assert normalize_text("Caf\u0065\u0301") == "Caf\u00e9"  # combining accent composed
    assert normalize_text("  Mixed CASE ", lowercase=True) == "mixed case"
    assert normalize_text("Mixed CASE") == "Mixed CASE"


def test_text_key_ignores_case_spacing_and_lookalike_code_points(domains: dict[str, pd.DataFrame]) -> None:
    for text in domains["movies"]["text"].head(50):
        assert text_key(f"  {text.upper()}  ") == text_key(text)
        assert text_key(text.replace(" ", " \t ")) == text_key(text)
        assert text_key(text + " and more") != text_key(text)
    assert text_key("\uff27\uff52\uff45\uff41\uff54 FILM") == text_key("great film")
