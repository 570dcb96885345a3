"""Where model versions and checkpoints live: S3 in a deployment, a directory for
`cartridge up`."""

from shared.config import StorageConfig
from shared.model_store.base import (
    ModelCorrupt, ModelInfo, ModelNotFound, ModelStore, ServingPointer, StoreUnavailable, VersionExists,
)
from shared.model_store.local import LocalModelStore


def open_model_store(storage: StorageConfig) -> ModelStore:
    """The store `storage.model_store` names, not yet entered (`async with` it)."""
    if storage.model_store == "local":
        return LocalModelStore(storage)
    from shared.model_store.s3 import S3ModelStore

    return S3ModelStore(storage)


def __getattr__(name: str):
    # `from shared.model_store import S3ModelStore` imports aioboto3 only when asked for.
    if name == "S3ModelStore":
        from shared.model_store.s3 import S3ModelStore

        return S3ModelStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["ModelCorrupt", "ModelInfo", "ModelNotFound", "ModelStore", "ServingPointer", "StoreUnavailable", "VersionExists",
           "LocalModelStore", "S3ModelStore", "open_model_store"]
