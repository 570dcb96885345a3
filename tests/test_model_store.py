"""The model store, the same tests on S3 (a real S3 server over HTTP) and a directory."""

import hashlib

import aioboto3
import pytest

from shared.model_store import (
    LocalModelStore, ModelCorrupt, ModelNotFound, S3ModelStore, StoreUnavailable, VersionExists,
)

ENV = "connect4"
MAX = 1 << 20


@pytest.fixture(params=["s3", "local"])
def storage(request, make_config):
    return make_config(storage={"model_store": request.param}).storage


def open_store(storage):
    return S3ModelStore(storage) if storage.model_store == "s3" else LocalModelStore(storage)


async def overwrite_raw(storage, key: str, data: bytes):
    """Tamper with a stored object behind the store's back."""
    if storage.model_store == "local":
        path = LocalModelStore(storage)._path(key)
        path.chmod(0o644)
        path.write_bytes(data)
        return
    session = aioboto3.Session(aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1")
    async with session.client("s3", endpoint_url=storage.s3_endpoint_url) as s3:
        await s3.put_object(Bucket=storage.s3_bucket, Key=key, Body=data)


async def test_roundtrip_with_sha256(storage):
    async with open_store(storage) as store:
        assert await store.latest(ENV) is None
        info = await store.put_model(ENV, 1, b"model one", step=10, metadata={"blocks": "4"})
        assert info.sha256 == hashlib.sha256(b"model one").hexdigest() and info.size == 9
        got, data = await store.get_model(ENV, 1, max_bytes=MAX)
        assert data == b"model one" and got == info
        latest, data = await store.get_model(ENV, max_bytes=MAX)
        assert latest.version == 1 and latest.step == 10 and latest.metadata == {"blocks": "4"}


async def test_latest_only_moves_forward(storage):
    async with open_store(storage) as store:
        await store.put_model(ENV, 2, b"two", step=2)
        await store.put_model(ENV, 1, b"one", step=1)
        assert (await store.latest(ENV)).version == 2
        assert await store.list_versions(ENV) == [1, 2]
        await store.put_model(ENV, 3, b"three", step=3)
        assert (await store.latest(ENV)).version == 3


async def test_versions_are_never_overwritten(storage):
    async with open_store(storage) as store:
        await store.put_model(ENV, 1, b"original", step=1)
        with pytest.raises(VersionExists, match="version 1"):
            await store.put_model(ENV, 1, b"replacement", step=2)
        _, data = await store.get_model(ENV, 1, max_bytes=MAX)
        assert data == b"original"


async def test_unknown_version_names_it(storage):
    async with open_store(storage) as store:
        with pytest.raises(ModelNotFound, match="none stored yet"):
            await store.get_model(ENV, None, max_bytes=MAX)
        await store.put_model(ENV, 1, b"one", step=1)
        with pytest.raises(ModelNotFound, match="version 7 of connect4.*newest is 1"):
            await store.get_model(ENV, 7, max_bytes=MAX)


async def test_tampered_model_is_rejected(storage):
    async with open_store(storage) as store:
        info = await store.put_model(ENV, 1, b"good bytes", step=1)
        await overwrite_raw(storage, info.key, b"evil bytes")
        with pytest.raises(ModelCorrupt, match="sha256 mismatch for model version 1"):
            await store.get_model(ENV, 1, max_bytes=MAX)


async def test_size_limit(storage):
    async with open_store(storage) as store:
        await store.put_model(ENV, 1, b"x" * 1000, step=1)
        with pytest.raises(ModelCorrupt, match="1000 bytes, over the 100-byte limit"):
            await store.get_model(ENV, 1, max_bytes=100)


async def test_checkpoints(storage):
    async with open_store(storage) as store:
        assert await store.latest_checkpoint(ENV) is None
        await store.put_checkpoint(ENV, 1, b"ckpt1")
        await store.put_checkpoint(ENV, 3, b"ckpt3")
        await store.put_checkpoint(ENV, 2, b"ckpt2")
        assert await store.latest_checkpoint(ENV) == (3, b"ckpt3")
        with pytest.raises(VersionExists):
            await store.put_checkpoint(ENV, 3, b"again")


async def test_bucket_is_created_and_private(make_config):
    storage = make_config().storage
    async with S3ModelStore(storage) as store:
        await store.put_model(ENV, 1, b"m", step=1)
    session = aioboto3.Session(aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1")
    async with session.client("s3", endpoint_url=storage.s3_endpoint_url) as s3:
        acl = await s3.get_bucket_acl(Bucket=storage.s3_bucket)
        grantees = [g["Grantee"].get("URI", "") for g in acl["Grants"]]
        assert not any("AllUsers" in uri or "AuthenticatedUsers" in uri for uri in grantees)


async def test_unreachable_endpoint(make_config):
    storage = make_config(storage={"s3_endpoint_url": "http://127.0.0.1:1", "s3_secret_key": "sekrit-value"}).storage
    with pytest.raises(StoreUnavailable) as err:
        async with S3ModelStore(storage, connect_timeout=0.5, attempts=1):
            pass
    assert "127.0.0.1:1" in str(err.value)
    assert "sekrit-value" not in str(err.value)
