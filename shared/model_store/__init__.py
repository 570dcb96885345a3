"""Where model versions and checkpoints live: S3 in a deployment, a directory for
`cartridge up`."""

from shared.config import StorageConfig
from shared.model_store.base import (
    ModelCorrupt, ModelInfo, ModelNotFound, ModelStore, StoreUnavailable, VersionExists,
)
from shared.model_store.local import LocalModelStore
from shared.model_store.s3 import S3ModelStore


def open_model_store(storage: StorageConfig) -> ModelStore:
    """The store `storage.model_store` names, not yet entered (`async with` it)."""
    if storage.model_store == "local":
        return LocalModelStore(storage)
    return S3ModelStore(storage)


__all__ = ["ModelCorrupt", "ModelInfo", "ModelNotFound", "ModelStore", "StoreUnavailable", "VersionExists",
           "LocalModelStore", "S3ModelStore", "open_model_store"]
