"""The landing zone on a local disk: a hard link is refused like a symbolic one (its other names may lie outside
the landing zone), at the survey and again when the file is opened. No workspace needed: survey and fetch
take a folder."""

from __future__ import annotations

import os
from pathlib import Path

import fsspec
import pytest

from kaizen.tasks.ingest import landing
from tests.support.files import csv_bytes, land

GOOD = csv_bytes([("A gripping story, told with care.", "positive")])
SECRET = csv_bytes([("Someone else's words, never landed.", "negative")])


def test_a_hard_link_is_skipped_with_a_reason(tmp_path: Path) -> None:
    folder, secret = tmp_path / "landing", tmp_path / "secret.csv"
    secret.write_bytes(SECRET)
    land(folder, "good.csv", GOOD)
    os.link(secret, folder / "linked.csv")

    ready, skipped = landing.survey(str(folder), 0)

    assert [f.name for f in ready] == ["good.csv"]
    assert [(s.name, s.reason) for s in skipped] == [("linked.csv", (
        "a hard link (2 names for one file, the others possibly outside the landing zone): links are not "
        "followed; put the file in as a copy of its own"))]


def test_a_hard_link_made_after_the_survey_is_not_read(tmp_path: Path) -> None:
    folder = tmp_path / "landing"
    path = land(folder, "good.csv", GOOD)
    (ready,), _ = landing.survey(str(folder), 0)
    os.link(path, tmp_path / "elsewhere.csv")
    fs, _ = fsspec.core.url_to_fs(str(folder))

    with pytest.raises(landing.NotReady, match="a hard link"):
        landing.fetch(fs, ready, tmp_path / "copy")

    assert not (tmp_path / "copy").exists()  # refused before a byte was read
