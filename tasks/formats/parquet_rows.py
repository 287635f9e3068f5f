"""parquet_rows: a Parquet file -> its rows, a chunk at a time, with no judgement of their values yet.

A row group is read whole, and its author chooses its size: the footer is checked against limits.max_row_group_bytes
before any data is read. Its size on disk says little of its size in memory (a million rows of one dictionary
value take kilobytes), so text columns are read as dictionaries, and each batch's values are counted as they would
be decoded (limits.max_file_bytes, and limits.max_compression_ratio against the file's size) before any become
Python objects. No value is longer than limits.max_text_bytes.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any, BinaryIO

from kaizen.tasks.formats.decode import PIECE, BadFile, Meter
from kaizen.tasks.formats.rows import Chunk, RawRow


def parquet_chunks(binary: BinaryIO, compressed: bool, size: int, remarks: tuple[str, ...], strict: bool,
                   meter: Meter) -> Iterator[Chunk]:
    """Parquet's rows by record batch. Its footer comes last, so a compressed file is first decompressed to
    an unnamed temporary file (gone with the process, however it ends). Read strictly, a fault in its rows is
    raised once the rest of the file is known not to be corrupt (which would come first)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    def corrupt(exc: BaseException) -> BadFile:
        return BadFile(f"unreadable parquet file (corrupt or truncated): {type(exc).__name__}: {str(exc)[:300]}")

    with ExitStack() as stack:
        if compressed:
            plain_file = stack.enter_context(tempfile.TemporaryFile())
            shutil.copyfileobj(binary, plain_file, PIECE)
            plain_file.seek(0)
            binary = plain_file
        try:
            metadata = pq.ParquetFile(binary, buffer_size=PIECE).metadata
            _fits(metadata, meter)
            source = pq.ParquetFile(binary, buffer_size=PIECE, metadata=metadata,  # buffered: read in pieces
                                    read_dictionary=_texts(metadata))
            names = source.schema_arrow.names  # decoded here: a name that is not UTF-8 raises UnicodeDecodeError
            total = max(metadata.num_rows, 1)
            batches = _batches(source, size)
        except (pa.ArrowException, OSError, ValueError) as exc:  # corrupt or truncated: footer, schema
            if isinstance(exc, BadFile):
                raise
            raise corrupt(exc) from exc
        duplicated = sorted({c for c in names if names.count(c) > 1})
        fault = (BadFile(f"unreadable parquet file: column(s) {duplicated} appear more than once")
                 if duplicated else None)  # rows as dicts would silently keep only one of them
        start = 1
        while True:
            if fault is not None and not strict:
                raise fault
            try:
                batch = next(batches, None)
            except (pa.ArrowException, OSError, ValueError) as exc:  # a corrupt page, wherever it lies
                raise corrupt(exc) from exc
            if batch is None:
                break
            if fault is not None or not batch.num_rows:
                continue
            meter.add_bytes(sum(_decoded_size(column, names[i], meter.limits.max_text_bytes)
                                for i, column in enumerate(batch.columns)), "decoded")
            try:
                records = batch.to_pylist()
            except (pa.ArrowException, ValueError, OverflowError) as exc:  # values Python cannot hold (odd dates)
                fault = BadFile(f"unreadable parquet file: {type(exc).__name__}: {str(exc)[:300]}")
                continue
            rows = [RawRow(record, None, number) for number, record in enumerate(records, start)]
            start += len(records)
            yield Chunk(list(names), rows, start - len(records), remarks, done=(start - 1) / total)
        if fault is not None:
            raise fault
        if start == 1:
            raise BadFile("empty parquet file: no rows")


def _fits(metadata: Any, meter: Meter) -> None:
    """Refuse, from the footer alone, a file with more rows than limits.max_file_rows or a row group that would
    not fit limits.max_row_group_bytes: a group's columns unpacked, and 8 bytes a value besides (the offsets or
    dictionary indices that hold them)."""
    limits = meter.limits
    if metadata.num_rows > limits.max_file_rows:
        raise BadFile(f"file too long: {metadata.num_rows} rows, more than limits.max_file_rows = "
                      f"{limits.max_file_rows}")
    for group in range(metadata.num_row_groups):
        columns = metadata.row_group(group)
        chunks = [columns.column(c) for c in range(columns.num_columns)]
        sizes = [c.total_uncompressed_size + 8 * c.num_values for c in chunks]
        if any(c.total_uncompressed_size < 0 or c.num_values < 0 for c in chunks):
            raise BadFile(f"unreadable parquet file (corrupt): row group {group + 1} has a negative size")
        if sum(sizes) > limits.max_row_group_bytes:
            widest = max(range(len(sizes)), key=sizes.__getitem__)
            raise BadFile(f"unreadable parquet file: row group {group + 1} unpacks to {sum(sizes)} bytes "
                          f"({sizes[widest]} in column {chunks[widest].path_in_schema!r}), beyond "
                          f"limits.max_row_group_bytes = {limits.max_row_group_bytes}")


def _texts(metadata: Any) -> list[str]:
    """The columns of text or bytes, read as dictionaries: a value used a million times is held once."""
    schema = metadata.schema
    return [schema.column(c).path for c in range(metadata.num_columns)
            if schema.column(c).physical_type == "BYTE_ARRAY"]


def _decoded_size(array: Any, name: str, max_text: int) -> int:
    """The bytes of `array`'s values once decoded, a dictionary's value counted at each use; a text or bytes
    value of the top level longer than `max_text` is BadFile."""
    import pyarrow as pa
    import pyarrow.compute as pc

    kind = array.type
    dictionary = pa.types.is_dictionary(kind)
    values = array.dictionary if dictionary else array
    if any(check(values.type) for check in (pa.types.is_string, pa.types.is_large_string, pa.types.is_binary,
                                            pa.types.is_large_binary)):
        lengths = pc.binary_length(values)
        if (longest := pc.max(lengths).as_py() or 0) > max_text:
            raise BadFile(f"unreadable parquet file: a value of column {name!r} holds {longest} bytes, beyond "
                          f"limits.max_text_bytes = {max_text}")
        used = pc.take(lengths, array.indices) if dictionary else lengths
        return int(pc.sum(used).as_py() or 0) + 8 * len(array)
    if dictionary:
        return values.nbytes * len(array) // max(len(values), 1) + 8 * len(array)
    if any(check(kind) for check in (pa.types.is_list, pa.types.is_large_list, pa.types.is_fixed_size_list,
                                     pa.types.is_map)):
        return 8 * len(array) + _nested_size(array.flatten())
    if pa.types.is_struct(kind):
        return sum(_nested_size(child) for child in array.flatten())
    return array.nbytes


def _nested_size(array: Any) -> int:
    """A nested array's values: as `_decoded_size`, no single value refused (a text within is counted whole)."""
    return _decoded_size(array, "", 1 << 62)


def _batches(source: Any, size: int) -> Iterator[Any]:
    """Record batches of at most `size` rows, a row group at a time: memory stays one row group, where
    `iter_batches` keeps what it has read until the file is closed (100 MB per million short texts)."""
    for group in range(source.num_row_groups):
        yield from source.read_row_group(group).to_batches(max_chunksize=size)
