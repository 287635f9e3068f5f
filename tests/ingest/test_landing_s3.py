"""The landing zone on a real object store (SeaweedFS's S3 gateway, through s3fs, as `s3://bucket/landing`).

s3fs keeps the listings it made (its dircache) and answers `ls`, `exists` and `info` from them; one instance
serves a whole process (fsspec caches instances). These tests write through another client, the way files
arrive from other machines, and read through kaizen's own instance: no decision may rest on what that
instance listed earlier. Each test has a landing zone of its own (a uuid prefix) in the session's bucket.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from pathlib import Path

import fsspec
import pytest

from kaizen.tasks.ingest import landing
from kaizen.tasks.ingest.collect import collect
from kaizen.tasks.notify.arrivals import poll
from kaizen.tasks.workspace.layout import Workspace
from tests.support.files import csv_bytes, sha256
from tests.support.workspaces import write_params

OLD = csv_bytes([("A gripping story, told with care.", "positive"), ("Dull, slow and far too long.", "negative")])
SAME_SIZE = csv_bytes([("A gripping story, told with care.", "negative"), ("Dull, slow and far too long.", "positive")])
LONGER = OLD + b"Warm, funny and honest.,positive\n"
assert len(SAME_SIZE) == len(OLD) and SAME_SIZE != OLD


class Writer:
    """Another client of the store (boto3, not kaizen's s3fs instance): what it writes, kaizen did not see."""

    def __init__(self, store: dict, url: str) -> None:
        import boto3

        self.client = boto3.client("s3", endpoint_url=store["endpoint"])
        self.bucket, self.prefix = url.removeprefix("s3://").split("/", 1)

    def put(self, name: str, data: bytes) -> str:
        return self.client.put_object(Bucket=self.bucket, Key=f"{self.prefix}/{name}", Body=data)["ETag"]

    def get(self, name: str) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=f"{self.prefix}/{name}")["Body"].read()

    def delete(self, name: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=f"{self.prefix}/{name}")

    def names(self) -> list[str]:
        listed = self.client.list_objects_v2(Bucket=self.bucket, Prefix=f"{self.prefix}/")
        return sorted(o["Key"].removeprefix(f"{self.prefix}/") for o in listed.get("Contents", []))


@pytest.fixture
def url(object_store: dict) -> str:
    return f"s3://{object_store['bucket']}/{uuid.uuid4().hex}/landing"


@pytest.fixture
def writer(object_store: dict, url: str) -> Writer:
    return Writer(object_store, url)


@pytest.fixture
def s3_workspace(copy_workspace: Callable[..., Workspace], url: str) -> Callable[..., Workspace]:
    return lambda **overrides: copy_workspace({"data.settle_seconds": 0, "storage.landing": url}, **overrides)


def ready(url: str) -> list[str]:
    found, skipped = landing.survey(url, settle_seconds=0)
    assert skipped == []
    return [f.name for f in found]


@pytest.mark.parametrize("new", [SAME_SIZE, LONGER], ids=["same-size", "longer"])
def test_an_object_replaced_after_the_survey_is_not_read_as_surveyed_nor_removed(
        url: str, writer: Writer, tmp_path: Path, new: bytes) -> None:
    etag = writer.put("a.csv", OLD)
    fs, _ = fsspec.core.url_to_fs(url)
    (file,), _ = landing.survey(url, settle_seconds=0)
    assert file.stamp[0] == len(OLD) and file.stamp[2] == etag  # the ETag tells same-size replacements apart

    writer.put("a.csv", new)  # replaced before collect reads it
    copy = tmp_path / "copy"
    with pytest.raises(landing.NotReady, match="changed"):
        landing.fetch(fs, file, copy)
    assert landing.remove(fs, file).startswith("left in the landing zone: it changed")
    assert writer.get("a.csv") == new

    (file,), _ = landing.survey(url, settle_seconds=0)  # the next run reads what is there now
    assert landing.fetch(fs, file, copy) == (sha256(new), len(new))
    assert copy.read_bytes() == new

    writer.put("a.csv", OLD)  # replaced after it was read: removing it would lose content never read
    assert landing.remove(fs, file).startswith("left in the landing zone: it changed")
    assert writer.get("a.csv") == OLD

    (file,), _ = landing.survey(url, settle_seconds=0)
    assert landing.fetch(fs, file, copy) == (sha256(OLD), len(OLD))
    assert landing.remove(fs, file) is None
    assert writer.names() == []


def test_one_process_on_one_s3fs_instance_sees_every_arrival_and_departure(url: str, writer: Writer) -> None:
    import s3fs

    fs, _ = fsspec.core.url_to_fs(url)
    assert fs is s3fs.S3FileSystem()  # the one instance every look of a `kaizen watch` gets
    assert ready(url) == []  # the landing zone does not exist yet
    writer.put("a.csv", OLD)
    assert ready(url) == ["a.csv"]
    writer.put("b.csv", OLD)
    assert ready(url) == ["a.csv", "b.csv"]
    writer.delete("a.csv")
    assert ready(url) == ["b.csv"]
    writer.put("b.csv", SAME_SIZE)
    (file,), _ = landing.survey(url, settle_seconds=0)
    assert landing.look(fs, file) == file.stamp and file.stamp[0] == len(SAME_SIZE)


def test_poll_on_an_s3_landing_announces_each_arrival_once(s3_workspace, writer: Writer) -> None:
    ws = s3_workspace()
    announced: list[list[str]] = []

    def announce(_: Workspace, names: list[str]) -> str:
        announced.append(names)
        return f"event-{len(announced)}"

    assert poll(ws, announce) == []
    writer.put("a.csv", OLD)
    assert poll(ws, announce) == ["a.csv"]
    assert poll(ws, announce) == []  # never twice
    writer.put("b.csv", OLD)
    assert poll(ws, announce) == ["b.csv"]
    assert announced == [["a.csv"], ["b.csv"]]


def test_collect_leaves_an_object_replaced_while_it_settles_and_ingests_the_new_one_next(
        s3_workspace, writer: Writer) -> None:
    ws = s3_workspace(data__settle_seconds=4)
    writer.put("a.csv", OLD)
    # Replaced (same size, so only the ETag tells) while collect waits for it to hold still.
    replacer = threading.Timer(1.5, writer.put, ("a.csv", SAME_SIZE))
    replacer.start()
    try:
        first = collect(ws)
    finally:
        replacer.join()
    assert first.files == [] and [s.reason.split(":")[0] for s in first.skipped] == ["still being written"]
    assert writer.get("a.csv") == SAME_SIZE

    write_params(ws.root, {"data.settle_seconds": 0})
    (outcome,) = collect(Workspace.open(ws.root)).files
    assert (outcome.sha256, outcome.rows_in, outcome.note) == (sha256(SAME_SIZE), 2, "ingested")
    assert writer.names() == []
