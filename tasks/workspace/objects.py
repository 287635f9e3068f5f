"""The shared object store of a loop that several machines carry on: where collect keeps what it writes.

A workspace whose ledger is PostgreSQL (`Workspace.shared`) is one loop run from any machine, so nothing an
iteration needs may live only on the disk of the machine that wrote it. DVC already keeps the prepared data and
MLflow the models; what collect writes (each file's staged rows and quarantined rows, its archived bytes, each
accepted batch) goes here too, beside the DVC remote under a prefix DVC never touches (`Workspace.state_store`).
The folder keeps its copy as a cache. The ledger records each object's md5, so a copy fetched on another machine
is verified before it is used, and an object that is gone or altered is a clear error (`MissingFromStores`), never
a wrong batch. A workspace on one machine (SQLite ledger) has no object store: its folder is the store.
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kaizen.tasks.workspace.files import commit_file, temporary


class MissingFromStores(RuntimeError):
    """Something an iteration needs is neither in the workspace folder nor (intact) in the shared stores. Not the
    batch's fault: such an attempt is not counted against it (tasks/operate/failures.py)."""


def md5_of(path: Path, piece: int = 1 << 20) -> str:
    """The md5 of a file's bytes, as DVC 3 computes it: so a batch's md5 in the ledger is its md5 in dvc.lock."""
    digest = hashlib.md5()  # noqa: S324  (an identity shared with DVC, not a security measure)
    with path.open("rb") as handle:
        while block := handle.read(piece):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class ObjectStore:
    url: str  # an fsspec URL (s3://bucket/prefix) or an absolute folder

    def _located(self, key: str) -> tuple[Any, str]:
        import fsspec

        fs, root = fsspec.core.url_to_fs(self.url)
        return fs, f"{root.rstrip('/')}/{key}"

    def shown(self, key: str) -> str:
        from kaizen.tasks.workspace.redact import redact

        return redact(f"{self.url.rstrip('/')}/{key}")

    def put(self, local: Path, key: str) -> None:
        """Upload a file (overwriting: every object's content is a function of its key's inputs, so a repeat after a
        kill writes the same bytes)."""
        fs, path = self._located(key)
        fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        fs.put_file(str(local), path)
        fs.invalidate_cache(path)

    def fetch(self, key: str, dest: Path, md5: str | None) -> int:
        """Download `key` to `dest` (atomically), verified against `md5` when the ledger has one; its size.
        MissingFromStores when the object is gone or its bytes are not the ones recorded."""
        fs, path = self._located(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = temporary(dest)
        fs.invalidate_cache(path)  # s3fs answers from a listing cached earlier in the process otherwise
        try:
            fs.get_file(path, str(tmp))
        except FileNotFoundError as exc:
            tmp.unlink(missing_ok=True)
            raise MissingFromStores(f"{self.shown(key)} is gone from the object store") from exc
        if md5 is not None and (found := md5_of(tmp)) != md5:
            tmp.unlink()
            raise MissingFromStores(f"{self.shown(key)} in the object store is not the object the ledger recorded "
                                    f"(md5 {found}, recorded {md5})")
        size = tmp.stat().st_size
        commit_file(tmp, dest)
        return size

    def remove(self, key: str) -> None:
        """Delete `key`; one already gone is fine (a kill after the delete, before the ledger knew)."""
        fs, path = self._located(key)
        with contextlib.suppress(FileNotFoundError):
            fs.rm_file(path)
        fs.invalidate_cache(path)
