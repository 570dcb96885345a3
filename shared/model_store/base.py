"""Model versions and checkpoints: layout, metadata and checks common to every store.

Layout under a bucket or directory (`<version>` is zero-padded so names sort):
    <env_id>/models/<version>.onnx     the model
    <env_id>/models/<version>.json     its ModelInfo (sha256, size, step, ...)
    <env_id>/latest.json               ModelInfo of the newest version
    <env_id>/checkpoints/<version>.pt  trainer state published with that version
A version, once written, is never overwritten.
"""

from __future__ import annotations

import hashlib
import time
from typing import Protocol

import msgspec


class ModelInfo(msgspec.Struct, frozen=True, kw_only=True):
    env_id: str
    version: int
    key: str
    sha256: str
    size: int
    step: int = 0
    created_at: float = 0.0
    metadata: dict[str, str] = {}


class ModelNotFound(LookupError):
    """No model of that version (or none at all) for that game."""


class ModelCorrupt(ValueError):
    """Stored bytes do not match their metadata, or exceed the size limit."""


class StoreUnavailable(ConnectionError):
    """The store cannot be reached; trying again later may work."""


class VersionExists(ValueError):
    """That version is already stored; versions are never overwritten."""


def model_key(env_id: str, version: int) -> str:
    return f"{env_id}/models/{version:08d}.onnx"


def info_key(env_id: str, version: int) -> str:
    return f"{env_id}/models/{version:08d}.json"


def latest_key(env_id: str) -> str:
    return f"{env_id}/latest.json"


def checkpoint_key(env_id: str, version: int) -> str:
    return f"{env_id}/checkpoints/{version:08d}.pt"


def version_of(key: str) -> int | None:
    """`.../00000012.onnx` -> 12 (None for names that are not versions)."""
    stem = key.rsplit("/", 1)[-1].split(".", 1)[0]
    return int(stem) if stem.isdigit() else None


def make_info(env_id: str, version: int, data: bytes, step: int, metadata: dict[str, str] | None) -> ModelInfo:
    return ModelInfo(
        env_id=env_id, version=version, key=model_key(env_id, version),
        sha256=hashlib.sha256(data).hexdigest(), size=len(data), step=step,
        created_at=time.time(), metadata=dict(metadata or {}),
    )


def encode_info(info: ModelInfo) -> bytes:
    return msgspec.json.encode(info)


def decode_info(data: bytes) -> ModelInfo:
    return msgspec.json.decode(data, type=ModelInfo)


def too_large(info: ModelInfo, size: int, max_bytes: int) -> ModelCorrupt:
    return ModelCorrupt(
        f"model version {info.version} of {info.env_id} is {size} bytes, over the {max_bytes}-byte limit"
    )


def check_bytes(info: ModelInfo, data: bytes) -> None:
    digest = hashlib.sha256(data).hexdigest()
    if digest != info.sha256 or len(data) != info.size:
        raise ModelCorrupt(
            f"sha256 mismatch for model version {info.version} of {info.env_id}: "
            f"expected {info.sha256} ({info.size} bytes), got {digest} ({len(data)} bytes)"
        )


def not_found(env_id: str, version: int | None, versions: list[int]) -> ModelNotFound:
    what = "no model" if version is None else f"model version {version}"
    newest = f"newest is {versions[-1]}" if versions else "none stored yet"
    return ModelNotFound(f"{what} of {env_id} exists ({newest})")


class ModelStore(Protocol):
    async def __aenter__(self) -> "ModelStore": ...

    async def __aexit__(self, *exc) -> None: ...

    async def put_model(self, env_id: str, version: int, data: bytes, *, step: int,
                        metadata: dict[str, str] | None = None) -> ModelInfo:
        """Store a new version (VersionExists if it is there) and move `latest` forward."""

    async def latest(self, env_id: str) -> ModelInfo | None: ...

    async def get_info(self, env_id: str, version: int) -> ModelInfo: ...

    async def get_model(self, env_id: str, version: int | None = None, *, max_bytes: int,
                        expected: ModelInfo | None = None) -> tuple[ModelInfo, bytes]:
        """The model's bytes, size-limited and sha256-checked (against `expected` if
        given, else the stored metadata); version None means the newest."""

    async def list_versions(self, env_id: str) -> list[int]: ...

    async def put_checkpoint(self, env_id: str, version: int, data: bytes) -> str: ...

    async def latest_checkpoint(self, env_id: str) -> tuple[int, bytes] | None: ...


class ObjectTooLarge(Exception):
    def __init__(self, size: int):
        self.size = size


class ObjectModelStore:
    """The store's logic over three object primitives that each back end provides:
    `_get` (size-limited), `_put` (optionally only if absent) and `_list`."""

    async def _get(self, key: str, *, max_bytes: int | None = None) -> bytes | None:
        """The object's bytes, None if absent; `ObjectTooLarge` (before reading the body)
        if it is over `max_bytes`."""
        raise NotImplementedError

    async def _put(self, key: str, data: bytes, *, if_absent: bool = False) -> bool:
        """Write `key`; with `if_absent`, only if it does not exist (False if it did)."""
        raise NotImplementedError

    async def _list(self, prefix: str) -> list[str]:
        raise NotImplementedError

    async def put_model(self, env_id: str, version: int, data: bytes, *, step: int,
                        metadata: dict[str, str] | None = None) -> ModelInfo:
        info = make_info(env_id, version, data, step, metadata)
        # Metadata first: a model object is only ever visible with its info beside it.
        if not await self._put(info_key(env_id, version), encode_info(info), if_absent=True):
            raise VersionExists(f"model version {version} of {env_id} already exists")
        await self._put(info.key, data)
        latest = await self.latest(env_id)
        if latest is None or latest.version < version:
            await self._put(latest_key(env_id), encode_info(info))
        return info

    async def latest(self, env_id: str) -> ModelInfo | None:
        data = await self._get(latest_key(env_id))
        return None if data is None else decode_info(data)

    async def get_info(self, env_id: str, version: int) -> ModelInfo:
        data = await self._get(info_key(env_id, version))
        if data is None:
            raise not_found(env_id, version, await self.list_versions(env_id))
        return decode_info(data)

    async def get_model(self, env_id: str, version: int | None = None, *, max_bytes: int,
                        expected: ModelInfo | None = None) -> tuple[ModelInfo, bytes]:
        """`expected` (e.g. from a model-published event) saves reading the metadata:
        one request per reload."""
        if expected is not None:
            info = expected
        elif version is None:
            info = await self.latest(env_id)
            if info is None:
                raise not_found(env_id, None, [])
        else:
            info = await self.get_info(env_id, version)
        try:
            data = await self._get(info.key, max_bytes=max_bytes)
        except ObjectTooLarge as exc:
            raise too_large(info, exc.size, max_bytes) from None
        if data is None:
            raise not_found(env_id, info.version, await self.list_versions(env_id))
        check_bytes(info, data)
        return info, data

    async def list_versions(self, env_id: str) -> list[int]:
        keys = await self._list(f"{env_id}/models/")
        return sorted({v for k in keys if k.endswith(".json") and (v := version_of(k)) is not None})

    async def put_checkpoint(self, env_id: str, version: int, data: bytes) -> str:
        key = checkpoint_key(env_id, version)
        if not await self._put(key, data, if_absent=True):
            raise VersionExists(f"checkpoint {version} of {env_id} already exists")
        return key

    async def latest_checkpoint(self, env_id: str) -> tuple[int, bytes] | None:
        keys = await self._list(f"{env_id}/checkpoints/")
        versions = sorted(v for k in keys if (v := version_of(k)) is not None)
        for version in reversed(versions):
            data = await self._get(checkpoint_key(env_id, version))
            if data is not None:
                return version, data
        return None
