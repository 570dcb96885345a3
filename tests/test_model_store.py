"""The model store: the same tests on S3 (moto's server over HTTP, or MinIO) and on a
directory, then what only S3 has (bucket, conditional puts, an unreachable endpoint)."""

import contextlib
import hashlib

import aioboto3
import aiobotocore.response
import pytest
from botocore.config import Config as BotoConfig
from botocore.exceptions import ClientError

from shared.model_store import (
    LocalModelStore, ModelCorrupt, ModelNotFound, S3ModelStore, StoreUnavailable, VersionExists,
    open_model_store,
)
from shared.model_store.base import encode_info, info_key, make_info, model_key
from shared.retry import Unreachable

ENV = "connect4"
MAX = 1 << 20


@pytest.fixture(params=["s3", "local"])
def storage(request, make_config):
    return make_config(storage={"model_store": request.param}).storage


@contextlib.asynccontextmanager
async def raw_s3(storage):
    """A plain S3 client, to look at or tamper with objects behind the store's back."""
    session = aioboto3.Session(aws_access_key_id=storage.s3_access_key,
                               aws_secret_access_key=storage.s3_secret_key, region_name=storage.s3_region)
    async with session.client("s3", endpoint_url=storage.s3_endpoint_url,
                              config=BotoConfig(s3={"addressing_style": "path"})) as s3:
        yield s3


async def overwrite_raw(storage, key: str, data: bytes):
    if storage.model_store == "local":
        path = LocalModelStore(storage)._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return
    async with raw_s3(storage) as s3:
        await s3.put_object(Bucket=storage.s3_bucket, Key=key, Body=data)


async def test_roundtrip_with_sha256(storage):
    async with open_model_store(storage) as store:
        assert isinstance(store, S3ModelStore if storage.model_store == "s3" else LocalModelStore)
        assert await store.latest(ENV) is None
        info = await store.put_model(ENV, 1, b"model one", step=10, metadata={"blocks": "4"})
        assert info.sha256 == hashlib.sha256(b"model one").hexdigest() and info.size == 9
        assert info.key == "connect4/models/00000001.onnx"
        got, data = await store.get_model(ENV, 1, max_bytes=MAX)
        assert data == b"model one" and got == info
        assert await store.get_info(ENV, 1) == info
        latest, data = await store.get_model(ENV, max_bytes=MAX)
        assert latest == info and data == b"model one"
        assert latest.step == 10 and latest.metadata == {"blocks": "4"}


async def test_latest_only_moves_forward(storage):
    async with open_model_store(storage) as store:
        await store.put_model(ENV, 2, b"two", step=2)
        await store.put_model(ENV, 1, b"one", step=1)
        assert (await store.latest(ENV)).version == 2
        assert await store.list_versions(ENV) == [1, 2]
        await store.put_model(ENV, 3, b"three", step=3)
        assert (await store.latest(ENV)).version == 3
        assert (await store.get_model(ENV, max_bytes=MAX))[1] == b"three"


async def test_versions_are_never_overwritten(storage):
    async with open_model_store(storage) as store:
        original = await store.put_model(ENV, 1, b"original", step=1)
        with pytest.raises(VersionExists, match="version 1 of connect4 already exists"):
            await store.put_model(ENV, 1, b"replacement", step=2)
        info, data = await store.get_model(ENV, 1, max_bytes=MAX)
        assert data == b"original" and info == original
        assert await store.latest(ENV) == original
        # The same bytes again (a retry whose first reply was lost) are not an error.
        assert await store.put_model(ENV, 1, b"original", step=1) == original


async def test_a_retry_finishes_an_interrupted_put(storage):
    async with open_model_store(storage) as store:
        # As if an upload stopped after claiming version 1 (its metadata) but before the model.
        claim = make_info(ENV, 1, b"model", 5, None)
        await overwrite_raw(storage, info_key(ENV, 1), encode_info(claim))
        with pytest.raises(ModelNotFound, match="version 1 of connect4 has metadata but no model file"):
            await store.get_model(ENV, 1, max_bytes=MAX)
        assert await store.put_model(ENV, 1, b"model", step=5) == claim
        assert await store.get_model(ENV, max_bytes=MAX) == (claim, b"model")


async def test_unknown_version_names_it(storage):
    async with open_model_store(storage) as store:
        with pytest.raises(ModelNotFound, match=r"^no model of connect4 exists \(none stored yet\)$"):
            await store.get_model(ENV, None, max_bytes=MAX)
        await store.put_model(ENV, 1, b"one", step=1)
        await store.put_model(ENV, 5, b"five", step=5)
        with pytest.raises(ModelNotFound, match=r"^model version 7 of connect4 does not exist \(newest is 5\)$"):
            await store.get_model(ENV, 7, max_bytes=MAX)
        with pytest.raises(ModelNotFound, match="model version 3 of connect4 does not exist"):
            await store.get_info(ENV, 3)


async def test_tampered_model_is_rejected(storage):
    async with open_model_store(storage) as store:
        info = await store.put_model(ENV, 1, b"good bytes", step=1)
        await overwrite_raw(storage, info.key, b"evil bytes")
        with pytest.raises(ModelCorrupt, match=f"sha256 mismatch for model version 1 of connect4: expected {info.sha256}"):
            await store.get_model(ENV, 1, max_bytes=MAX)


async def test_size_limit(storage):
    async with open_model_store(storage) as store:
        await store.put_model(ENV, 1, b"x" * 1000, step=1)
        with pytest.raises(ModelCorrupt, match="version 1 of connect4 is 1000 bytes, over the 100-byte limit"):
            await store.get_model(ENV, 1, max_bytes=100)
        assert (await store.get_model(ENV, 1, max_bytes=1000))[1] == b"x" * 1000


async def test_oversized_object_is_refused_before_download(storage, monkeypatch):
    """Metadata saying 10 bytes does not get a 100 kB object downloaded."""
    reads = []
    real_read = aiobotocore.response.StreamingBody.read

    async def counting_read(self, *args, **kwargs):
        chunk = await real_read(self, *args, **kwargs)
        reads.append(len(chunk))
        return chunk

    monkeypatch.setattr(aiobotocore.response.StreamingBody, "read", counting_read)
    async with open_model_store(storage) as store:
        await store.put_model(ENV, 1, b"small data", step=1)
        await overwrite_raw(storage, model_key(ENV, 1), b"y" * 100_000)
        with pytest.raises(ModelCorrupt, match="100000 bytes, over the 1000-byte limit"):
            await store.get_model(ENV, 1, max_bytes=1000)
    if storage.model_store == "s3":
        assert reads and max(reads) < 1000  # the metadata was read, the model body never


async def test_checkpoints(storage):
    async with open_model_store(storage) as store:
        assert await store.latest_checkpoint(ENV) is None
        assert await store.put_checkpoint(ENV, 1, b"ckpt1") == "connect4/checkpoints/00000001.pt"
        await store.put_checkpoint(ENV, 10, b"ckpt10")
        await store.put_checkpoint(ENV, 2, b"ckpt2")
        assert await store.latest_checkpoint(ENV) == (10, b"ckpt10")
        with pytest.raises(VersionExists):
            await store.put_checkpoint(ENV, 10, b"again")
        assert await store.latest_checkpoint(ENV) == (10, b"ckpt10")


@pytest.mark.parametrize("env_id", ["../etc", "a/b", "", ".hidden"])
async def test_env_ids_cannot_escape_the_store(storage, env_id):
    async with open_model_store(storage) as store:
        with pytest.raises(ValueError, match="invalid env_id"):
            await store.put_model(env_id, 1, b"m", step=1)


# -- S3 only ----------------------------------------------------------------------------


async def test_bucket_is_created_private(make_config):
    storage = make_config().storage
    async with raw_s3(storage) as s3:
        with pytest.raises(ClientError) as missing:
            await s3.head_bucket(Bucket=storage.s3_bucket)
        assert missing.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
        async with S3ModelStore(storage) as store:
            await store.put_model(ENV, 1, b"m", step=1)
        await s3.head_bucket(Bucket=storage.s3_bucket)
        acl = await s3.get_bucket_acl(Bucket=storage.s3_bucket)
        grantees = [g["Grantee"].get("URI", "") for g in acl["Grants"]]
        assert not any("AllUsers" in uri or "AuthenticatedUsers" in uri for uri in grantees)


async def test_bucket_created_by_someone_else_first_is_fine(make_config):
    # Outside us-east-1, creating an existing bucket is a 409 (BucketAlreadyOwnedByYou).
    storage = make_config(storage={"s3_region": "eu-west-1"}).storage
    async with S3ModelStore(storage) as store:
        await store._create_bucket()  # as if another service won the race
        await store.put_model(ENV, 1, b"m", step=1)
    async with S3ModelStore(storage) as again:
        assert await again.list_versions(ENV) == [1]


async def test_falls_back_when_the_server_rejects_conditional_puts(make_config):
    storage = make_config().storage
    async with S3ModelStore(storage) as store:
        real_put = store._s3.put_object
        rejected = []

        async def put_object(**kwargs):
            if "IfNoneMatch" in kwargs:  # what S3 servers without the feature answer
                rejected.append(kwargs["Key"])
                raise ClientError({"Error": {"Code": "NotImplemented", "Message": "If-None-Match"},
                                   "ResponseMetadata": {"HTTPStatusCode": 501}}, "PutObject")
            return await real_put(**kwargs)

        store._s3.put_object = put_object
        await store.put_model(ENV, 1, b"original", step=1)
        with pytest.raises(VersionExists):
            await store.put_model(ENV, 1, b"replacement", step=1)
        assert (await store.get_model(ENV, 1, max_bytes=MAX))[1] == b"original"
        assert rejected == [info_key(ENV, 1)]  # asked once, then remembered


async def test_unreachable_endpoint_is_retried_then_reported(make_config, caplog):
    storage = make_config(storage={"s3_endpoint_url": "http://127.0.0.1:1", "s3_secret_key": "sekrit-value",
                                   "connect_attempts": 2}).storage
    with pytest.raises(Unreachable, match="after 2 attempts") as err:
        async with S3ModelStore(storage, connect_timeout=0.5, attempts=1):
            pass
    assert "127.0.0.1:1" in str(err.value)
    assert "sekrit-value" not in str(err.value)
    retries = [r.getMessage() for r in caplog.records if "retrying in" in r.getMessage()]
    assert len(retries) == 1 and "sekrit-value" not in retries[0]


async def test_only_the_newest_checkpoints_are_kept(storage):
    async with open_model_store(storage) as store:
        for version in range(1, 8):
            await store.put_checkpoint(ENV, version, f"state {version}".encode())
        assert await store.prune_checkpoints(ENV, keep=3) == [1, 2, 3, 4]
        assert await store.prune_checkpoints(ENV, keep=3) == []  # nothing more to do
        assert await store._checkpoint_versions(ENV) == [5, 6, 7]
        assert await store.latest_checkpoint(ENV) == (7, b"state 7")
