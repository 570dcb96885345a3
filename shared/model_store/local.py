"""The model store in a local directory, for `cartridge up` and single machines: atomic
writes (temp file + rename), and "only if absent" by hard-linking the temp file into
place, which fails if the name exists, so a version is never overwritten."""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path

from shared.config import StorageConfig
from shared.model_store.base import ObjectModelStore, ObjectTooLarge


class LocalModelStore(ObjectModelStore):
    def __init__(self, storage: StorageConfig):
        self.root = Path(storage.local_model_dir)

    async def __aenter__(self) -> "LocalModelStore":
        self.root.mkdir(parents=True, exist_ok=True)
        return self

    async def __aexit__(self, *exc) -> None:
        pass

    def _path(self, key: str) -> Path:
        return self.root / key

    async def _get(self, key: str, *, max_bytes: int | None = None) -> bytes | None:
        return await asyncio.to_thread(_read, self._path(key), max_bytes)

    async def _put(self, key: str, data: bytes, *, if_absent: bool = False) -> bool:
        return await asyncio.to_thread(_write, self._path(key), data, if_absent)

    async def _delete(self, key: str) -> None:
        await asyncio.to_thread(self._path(key).unlink, missing_ok=True)

    async def _list(self, prefix: str) -> list[str]:
        folder = self._path(prefix)
        if not folder.is_dir():
            return []
        # Names starting with "." are temp files of writes in progress.
        return [f"{prefix}{p.name}" for p in folder.iterdir() if not p.name.startswith(".")]


def _read(path: Path, max_bytes: int | None) -> bytes | None:
    try:
        with open(path, "rb") as f:
            # The size of the file actually opened (a rename may replace the name meanwhile).
            size = os.fstat(f.fileno()).st_size
            if max_bytes is not None and size > max_bytes:
                raise ObjectTooLarge(size)
            return f.read()
    except FileNotFoundError:
        return None


def _write(path: Path, data: bytes, if_absent: bool) -> bool:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if if_absent:
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
        else:
            os.replace(tmp, path)
        return True
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
