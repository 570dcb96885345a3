"""Model versions and checkpoints: layout, metadata and checks common to every store.

Layout under a bucket or directory (`<version>` is zero-padded so names sort):
    <env_id>/models/<version>.json     its ModelInfo (sha256, size, step, ...)
    <env_id>/models/<version>.onnx     the model
    <env_id>/latest.json               ModelInfo of the newest version
    <env_id>/serving.json              which version actors should serve (ServingPointer)
    <env_id>/checkpoints/<version>.pt  trainer state published with that version
A version, once written, is never overwritten. Its .json is written first, "only if
absent": that record is the claim on the version number, and a model file is never
visible without the sha256 that vouches for it.
"""

from __future__ import annotations

import hashlib
import re
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
    """Free-form facts about the model (e.g. network shape), for people and tools."""


class ServingPointer(msgspec.Struct, frozen=True, kw_only=True):
    """Which model actors should serve. With `hold` they serve `version` and ignore newer
    models (a rollback); without it they serve the newest, as if there were no pointer."""

    version: int
    hold: bool = False
    reason: str = ""
    decided_at: float = msgspec.field(default_factory=time.time)


class ModelNotFound(LookupError):
    """No model of that version (or none at all) for that game."""


class ModelCorrupt(ValueError):
    """Stored bytes do not match their metadata, or exceed the size limit."""


class StoreUnavailable(ConnectionError):
    """The store cannot be reached; trying again later may work."""


class VersionExists(ValueError):
    """That version is already stored with other bytes; versions are never overwritten."""


# -- layout -----------------------------------------------------------------------------

_ENV_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def env_prefix(env_id: str) -> str:
    """`connect4` -> `connect4/`; refuses names that could escape the store's root
    (env ids also arrive in control events)."""
    if not _ENV_ID.match(env_id) or ".." in env_id:
        raise ValueError(f"invalid env_id {env_id!r}")
    return f"{env_id}/"


def _versioned(env_id: str, folder: str, version: int, suffix: str) -> str:
    if not isinstance(version, int) or version < 0:
        raise ValueError(f"invalid model version {version!r}")
    return f"{env_prefix(env_id)}{folder}/{version:08d}.{suffix}"


def model_key(env_id: str, version: int) -> str:
    return _versioned(env_id, "models", version, "onnx")


def info_key(env_id: str, version: int) -> str:
    return _versioned(env_id, "models", version, "json")


def checkpoint_key(env_id: str, version: int) -> str:
    return _versioned(env_id, "checkpoints", version, "pt")


def latest_key(env_id: str) -> str:
    return f"{env_prefix(env_id)}latest.json"


def serving_key(env_id: str) -> str:
    return f"{env_prefix(env_id)}serving.json"


def version_of(key: str) -> int | None:
    """`.../00000012.onnx` -> 12 (None for names that are not versions)."""
    stem = key.rsplit("/", 1)[-1].split(".", 1)[0]
    return int(stem) if stem.isdigit() else None


# -- metadata and checks ----------------------------------------------------------------


def make_info(env_id: str, version: int, data: bytes, step: int, metadata: dict[str, str] | None) -> ModelInfo:
    return ModelInfo(
        env_id=env_id, version=version, key=model_key(env_id, version),
        sha256=hashlib.sha256(data).hexdigest(), size=len(data), step=step,
        created_at=time.time(), metadata=dict(metadata or {}),
    )


def encode_info(info: ModelInfo) -> bytes:
    return msgspec.json.encode(info)


def decode_info(data: bytes, key: str) -> ModelInfo:
    try:
        return msgspec.json.decode(data, type=ModelInfo)
    except msgspec.DecodeError as exc:
        raise ModelCorrupt(f"unreadable model metadata {key}: {exc}") from None


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
    what = f"no model of {env_id} exists" if version is None else f"model version {version} of {env_id} does not exist"
    newest = f"newest is {versions[-1]}" if versions else "none stored yet"
    return ModelNotFound(f"{what} ({newest})")


# -- the interface ----------------------------------------------------------------------


class ModelStore(Protocol):
    """Where the trainer puts model versions and checkpoints and where actors get them.
    Use as `async with open_model_store(config.storage) as store:`."""

    async def __aenter__(self) -> "ModelStore": ...

    async def __aexit__(self, *exc) -> None: ...

    async def put_model(self, env_id: str, version: int, data: bytes, *, step: int,
                        metadata: dict[str, str] | None = None) -> ModelInfo:
        """Store a new version and move `latest` forward (never back). VersionExists if
        the version holds other bytes; the same bytes again finish an interrupted put."""

    async def latest(self, env_id: str) -> ModelInfo | None:
        """The newest version's info, None before the first one."""

    async def get_info(self, env_id: str, version: int) -> ModelInfo:
        """That version's info, or ModelNotFound."""

    async def get_model(self, env_id: str, version: int | None = None, *, max_bytes: int,
                        expected: ModelInfo | None = None) -> tuple[ModelInfo, bytes]:
        """The model's bytes, size-limited before download and sha256-checked (against
        `expected` if given, else the stored info); version None means the newest."""

    async def list_versions(self, env_id: str) -> list[int]:
        """Every stored version, ascending."""

    async def put_checkpoint(self, env_id: str, version: int, data: bytes) -> str:
        """Store trainer state for `version` (VersionExists if there); returns its key."""

    async def latest_checkpoint(self, env_id: str) -> tuple[int, bytes] | None:
        """The highest-numbered checkpoint, None if there is none."""

    async def prune_checkpoints(self, env_id: str, keep: int) -> list[int]:
        """Delete all but the newest `keep` checkpoints; the versions deleted."""

    async def put_serving(self, env_id: str, pointer: ServingPointer) -> None:
        """Say which version actors should serve (overwrites the previous pointer)."""

    async def serving(self, env_id: str) -> ServingPointer | None:
        """The pointer, None if none was ever written."""


# -- the logic, shared by every back end ------------------------------------------------


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
        """Keys under `prefix`, in any order."""
        raise NotImplementedError

    async def _delete(self, key: str) -> None:
        """Remove `key` (nothing to do if it is absent)."""
        raise NotImplementedError

    async def put_model(self, env_id: str, version: int, data: bytes, *, step: int,
                        metadata: dict[str, str] | None = None) -> ModelInfo:
        info = make_info(env_id, version, data, step, metadata)
        if not await self._put(info_key(env_id, version), encode_info(info), if_absent=True):
            stored = await self.get_info(env_id, version)
            if stored.sha256 != info.sha256:
                raise VersionExists(
                    f"model version {version} of {env_id} already exists with other bytes "
                    f"(sha256 {stored.sha256}); versions are never overwritten"
                )
            # The same bytes again: an earlier attempt may have stopped half-way
            # (e.g. its connection dropped), so finish it rather than fail.
            info = stored
        await self._put(info.key, data, if_absent=True)
        latest = await self.latest(env_id)
        if latest is None or latest.version < version:
            await self._put(latest_key(env_id), encode_info(info))
        return info

    async def latest(self, env_id: str) -> ModelInfo | None:
        key = latest_key(env_id)
        data = await self._get(key)
        return None if data is None else decode_info(data, key)

    async def get_info(self, env_id: str, version: int) -> ModelInfo:
        key = info_key(env_id, version)
        data = await self._get(key)
        if data is None:
            raise not_found(env_id, version, await self.list_versions(env_id))
        return decode_info(data, key)

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
        if info.size > max_bytes:
            raise too_large(info, info.size, max_bytes)
        try:
            # The key is derived here, never taken from `expected` (it may come off the wire).
            data = await self._get(model_key(env_id, info.version), max_bytes=max_bytes)
        except ObjectTooLarge as exc:
            raise too_large(info, exc.size, max_bytes) from None
        if data is None:
            raise ModelNotFound(
                f"model version {info.version} of {env_id} has metadata but no model file "
                f"(an interrupted upload?)"
            )
        check_bytes(info, data)
        return info, data

    async def list_versions(self, env_id: str) -> list[int]:
        keys = await self._list(f"{env_prefix(env_id)}models/")
        return sorted({v for k in keys if k.endswith(".json") and (v := version_of(k)) is not None})

    async def put_checkpoint(self, env_id: str, version: int, data: bytes) -> str:
        key = checkpoint_key(env_id, version)
        if not await self._put(key, data, if_absent=True):
            raise VersionExists(f"checkpoint {version} of {env_id} already exists")
        return key

    async def _checkpoint_versions(self, env_id: str) -> list[int]:
        keys = await self._list(f"{env_prefix(env_id)}checkpoints/")
        return sorted(v for k in keys if k.endswith(".pt") and (v := version_of(k)) is not None)

    async def prune_checkpoints(self, env_id: str, keep: int) -> list[int]:
        # Oldest first: a prune cut short still leaves the newest ones.
        old = (await self._checkpoint_versions(env_id))[:-keep]
        for version in old:
            await self._delete(checkpoint_key(env_id, version))
        return old

    async def latest_checkpoint(self, env_id: str) -> tuple[int, bytes] | None:
        versions = await self._checkpoint_versions(env_id)
        for version in reversed(versions):
            data = await self._get(checkpoint_key(env_id, version))
            if data is not None:
                return version, data
        return None

    async def put_serving(self, env_id: str, pointer: ServingPointer) -> None:
        await self._put(serving_key(env_id), msgspec.json.encode(pointer))

    async def serving(self, env_id: str) -> ServingPointer | None:
        key = serving_key(env_id)
        data = await self._get(key)
        if data is None:
            return None
        try:
            return msgspec.json.decode(data, type=ServingPointer)
        except msgspec.DecodeError as exc:
            raise ModelCorrupt(f"unreadable serving pointer {key}: {exc}") from None
