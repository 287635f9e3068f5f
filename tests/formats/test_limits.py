"""Hostile files meet the reader's limits (params.yaml `limits`) while they are read: bombs of every compression,
a line or a field too long, a Parquet row group too large or one dictionary value decoded millions of times,
too many rows, too slow. Each is built here, small on disk, and read with small limits; the BadFile names the
limit and its key, collect refuses the file and a scorer stops there. Long lines cost linear work and bounded
memory (counted, not timed: timings are bench/hostile.py's)."""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import subprocess
import sys
import tracemalloc
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import fsspec
import pytest

from kaizen.tasks.formats.decode import BadFile, lines_of
from kaizen.tasks.formats.json_rows import json_chunks
from kaizen.tasks.formats.reader import RawRow, read_chunks, read_leniently
from kaizen.tasks.workspace.members import template
from kaizen.tasks.workspace.settings import LimitsSettings, load_settings

KIB, MIB = 1 << 10, 1 << 20
HEADER = b"text,label\n"
ROW = b'"A gripping story, told with care; the cast is superb.",positive\n'
BLOCK = ROW * (64 * KIB // len(ROW))
BLOCKS = 32  # 2 MiB of one row: kilobytes compressed


def limits(**small: float) -> LimitsSettings:
    """The template's limits with some made small, set as params.yaml would set them."""
    settings = load_settings(template("params.yaml"))
    return settings.with_overrides({f"limits.{key}": value for key, value in small.items()}).limits


def zipped(member: str, data: bytes) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(member, data)
    return out.getvalue()


def bomb(name: str) -> bytes:
    """HEADER and BLOCKS of BLOCK compressed as `name` ends: a stream per block, as gzip, bzip2 and xz allow (one
    block is quick to compress, even for bzip2)."""
    if name.endswith(".zip"):
        return zipped(name.removesuffix(".zip"), HEADER + BLOCK * BLOCKS)
    compressors: dict[str, Callable[[bytes], bytes]] = {".gz": gzip.compress, ".bz2": bz2.compress,
                                                        ".xz": lzma.compress}
    compress = compressors[name[name.rindex("."):]]
    return compress(HEADER + BLOCK) + compress(BLOCK) * (BLOCKS - 1)


def refused(path: Path, name: str, small: LimitsSettings, size: int = 1000) -> str:
    """The reason collect refuses the file; a scorer stops with the same one."""
    with pytest.raises(BadFile) as caught:
        list(read_chunks(path, name, ("text", "label"), size, limits=small))
    chunks = list(read_leniently(fsspec.filesystem("file"), str(path), "text", size, small))
    assert chunks[-1].problem is not None and str(caught.value) in chunks[-1].problem
    return str(caught.value)


@pytest.mark.parametrize("name", ["bomb.csv.gz", "bomb.csv.bz2", "bomb.csv.xz", "bomb.csv.zip"])
def test_a_bomb_stops_at_the_ratio_and_at_the_size(name: str, tmp_path: Path) -> None:
    (tmp_path / name).write_bytes(bomb(name))
    reason = refused(tmp_path / name, name, limits(max_compression_ratio=10, ratio_checked_after_bytes=256 * KIB))
    assert reason.startswith("file too large for its size: decompressed beyond limits.max_compression_ratio = 10 ")
    assert refused(tmp_path / name, name, limits(max_file_bytes=MIB)) == (
        f"file too large: decompressed beyond limits.max_file_bytes = {MIB} bytes")
    read = sum(len(c.rows) for c in read_chunks(tmp_path / name, name, size=10_000, limits=limits()))
    assert read == BLOCKS * BLOCK.count(b"\n")  # the defaults read it


def test_a_small_file_may_compress_well_below_the_ratio_floor(tmp_path: Path) -> None:
    (tmp_path / "fine.csv.gz").write_bytes(bomb("fine.csv.gz"))
    rows = sum(len(c.rows) for c in read_chunks(tmp_path / "fine.csv.gz", "fine.csv.gz", size=10_000,
                                                limits=limits(max_compression_ratio=10)))
    assert rows == BLOCKS * BLOCK.count(b"\n")


def test_an_archive_within_an_archive_is_refused(tmp_path: Path) -> None:
    (tmp_path / "nested.csv.zip").write_bytes(zipped("inner.csv.gz", bomb("inner.csv.gz")))
    assert refused(tmp_path / "nested.csv.zip", "nested.csv.zip", limits()) == (
        "unreadable zip file: it holds 'inner.csv.gz', itself compressed (archives within archives are not read): "
        "zip the file itself")


def test_a_line_too_long_stops_the_file_where_it_starts(tmp_path: Path) -> None:
    data = HEADER + b"fine,positive\n" + b"so good " * (MIB // 8) + b",positive\nlater,negative\n"
    (tmp_path / "line.csv.gz").write_bytes(gzip.compress(data))
    assert refused(tmp_path / "line.csv.gz", "line.csv.gz", limits(max_text_bytes=64 * KIB)) == (
        "unreadable csv file: line 3 is longer than limits.max_text_bytes = 65536")
    chunks = list(read_leniently(fsspec.filesystem("file"), str(tmp_path / "line.csv.gz"), "text", 10,
                                 limits(max_text_bytes=64 * KIB)))
    assert [row.record["text"] for c in chunks for row in c.rows] == ["fine"]  # the rows before it are scored


def test_a_quoted_field_over_many_lines_is_bounded_too(tmp_path: Path) -> None:
    data = HEADER + b'"' + b"a short line\n" * 20_000 + b'",positive\nlater,negative\n'
    (tmp_path / "field.csv").write_bytes(data)
    assert refused(tmp_path / "field.csv", "field.csv", limits(max_text_bytes=64 * KIB)).startswith(
        "unreadable csv file: a field ending on line ")


def test_too_many_rows_and_too_slow(tmp_path: Path) -> None:
    (tmp_path / "rows.csv").write_bytes(HEADER + ROW * 1000)
    assert refused(tmp_path / "rows.csv", "rows.csv", limits(max_file_rows=500), size=100) == (
        "file too long: more rows than limits.max_file_rows = 500")
    assert refused(tmp_path / "rows.csv", "rows.csv", limits(max_read_seconds=1e-9)) == (
        "file too slow to read: longer than limits.max_read_seconds = 1e-09 s")


@contextmanager
def peak_memory() -> Iterator[Callable[[], int]]:
    """The most bytes Python held at once meanwhile."""
    tracemalloc.start()
    try:
        yield lambda: tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


MEASURED = """
import json, resource, sys
from pathlib import Path
from kaizen.tasks.formats.reader import BadFile, read_chunks
from kaizen.tasks.workspace.settings import LimitsSettings
small = LimitsSettings(max_compression_ratio=100, ratio_checked_after_bytes=1 << 20)
peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
import pyarrow.parquet, pyarrow.compute  # loaded before the baseline
before = peak()
try:
    list(read_chunks(Path(sys.argv[1]), "dictionary.parquet", size=2000, limits=small))
except BadFile as exc:
    print(json.dumps([before, peak(), str(exc)]))
"""


def _parquet(path: Path, rows: int, text: str, dictionary: bool) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    zeros = pa.array(np.zeros(rows, dtype=np.int32))
    column = pa.DictionaryArray.from_arrays(zeros, pa.array([text]))
    table = pa.table({"text": column if dictionary else column.dictionary_decode(),
                      "label": pa.DictionaryArray.from_arrays(zeros, pa.array(["positive"]))})
    pq.write_table(table, path, row_group_size=rows, use_dictionary=dictionary, compression="zstd")


def test_a_parquet_row_group_too_large_is_refused_from_its_footer(tmp_path: Path) -> None:
    _parquet(tmp_path / "group.parquet", 100_000, "x" * 100, dictionary=False)
    data = bytearray((tmp_path / "group.parquet").read_bytes())
    data[4:200] = bytes(196)  # its first pages made garbage: a reader that reached them would say corrupt
    (tmp_path / "group.parquet").write_bytes(bytes(data))
    assert refused(tmp_path / "group.parquet", "group.parquet", limits(max_row_group_bytes=4 * MIB)).startswith(
        "unreadable parquet file: row group 1 unpacks to ")
    assert refused(tmp_path / "group.parquet", "group.parquet", limits(max_file_rows=1000)) == (
        "file too long: 100000 rows, more than limits.max_file_rows = 1000")


def test_one_dictionary_value_decoded_over_and_over_stops_at_the_ratio(tmp_path: Path) -> None:
    _parquet(tmp_path / "dictionary.parquet", 100_000, "x" * 1000, dictionary=True)  # 100 MB decoded
    assert (tmp_path / "dictionary.parquet").stat().st_size < 100 * KIB
    reason = refused(tmp_path / "dictionary.parquet", "dictionary.parquet",
                     limits(max_compression_ratio=100, ratio_checked_after_bytes=MIB), size=2000)
    assert reason.startswith("file too large for its size: decoded beyond limits.max_compression_ratio = 100 ")
    # In a process of its own, whose peak is its own: the group is read as a dictionary, not as 300 MB.
    child = subprocess.run([sys.executable, "-c", MEASURED, str(tmp_path / "dictionary.parquet")],
                           capture_output=True, text=True, check=True)
    before, after, said = json.loads(child.stdout)
    assert said == reason and after - before < 64 * MIB
    _parquet(tmp_path / "long.parquet", 10, "x" * 100 * KIB, dictionary=True)
    assert refused(tmp_path / "long.parquet", "long.parquet", limits(max_text_bytes=64 * KIB)) == (
        "unreadable parquet file: a value of column 'text' holds 102400 bytes, beyond limits.max_text_bytes = 65536")


def test_a_json_array_is_parsed_an_item_at_a_time(tmp_path: Path) -> None:
    def array() -> Iterator[str]:  # 64 MiB of items, made as they are read
        yield "["
        for _ in range(1024):
            yield '{"text": "review: a fine film", "label": "positive"}, ' * (64 * KIB // 54)
        yield "{}]"

    with peak_memory() as peak:
        first = next(json_chunks(array(), True, 1000, (), None, True, 64 * KIB))
        assert peak() < MIB  # the first items, not the array
    assert len(first.rows) == 1000 and first.rows[-1] == RawRow({"text": "review: a fine film", "label": "positive"},
                                                                 None, 1000)
    items = [{"text": f"review {n}: a fine film", "label": "positive"} for n in range(2000)]
    (tmp_path / "array.json").write_text(json.dumps(items), encoding="utf-8")  # one line
    small = limits(max_text_bytes=KIB)
    assert [row.record for c in read_chunks(tmp_path / "array.json", "array.json", limits=small) for row in c.rows] \
        == items
    (tmp_path / "big.json").write_text(json.dumps([items[0], {"text": "x" * 100 * KIB}]), encoding="utf-8")
    assert refused(tmp_path / "big.json", "big.json", limits(max_text_bytes=64 * KIB)) == (
        "unreadable jsonl file: item 2 of the array is longer than limits.max_text_bytes = 65536")
    (tmp_path / "deep.json").write_text("[" + "[" * 100_000 + "]" * 100_001, encoding="utf-8")
    assert refused(tmp_path / "deep.json", "deep.json", limits()).startswith(
        "unreadable jsonl file: the array: RecursionError: ")


class Piece(str):
    """A piece of text that counts the characters copied by concatenating onto it (`rest + piece`)."""

    copied = 0

    def __radd__(self, other: str) -> str:
        Piece.copied += len(other) + len(self)
        return str.__add__(other, self)


def _copied(pieces: int, universal: bool) -> int:
    """Characters copied to split one line of `pieces` pieces and a short one."""
    Piece.copied = 0
    text = [Piece("so good " * 8 * KIB)] * pieces + [Piece("\nnext\n")]
    lines = list(lines_of(iter(text), "csv", universal, 1 << 30))
    assert [len(line) for line in lines[:2]] == [64 * KIB * pieces + universal, 4 + universal]
    return Piece.copied


@pytest.mark.parametrize("universal", [True, False])
def test_a_long_line_costs_linear_work(universal: bool) -> None:
    """The unfinished line waits as a list of pieces, joined once: no piece is re-joined to the rest."""
    assert _copied(64, universal) <= 2 * 64 * 64 * KIB  # at most about one copy of the line
    assert _copied(128, universal) <= 2 * _copied(64, universal) + 64 * KIB


def test_a_line_too_long_is_never_held_whole() -> None:
    def endless() -> Iterator[str]:  # 64 MiB without a line break, made as it is read
        for _ in range(1024):
            yield "so good " * 8 * KIB

    with peak_memory() as peak:
        with pytest.raises(BadFile, match="line 1 is longer than limits.max_text_bytes = 1048576"):
            list(lines_of(endless(), "jsonl", False, MIB))
        assert peak() < 3 * MIB
