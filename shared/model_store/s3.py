"""The model store on S3 (MinIO, AWS S3, Ceph): plain S3 calls through aioboto3, path-style
addressing, the bucket created if missing (and never made public). "Only if absent" is a
conditional put (`If-None-Match: *`), so two writers can never both create a version."""

from __future__ import annotations

import contextlib

import aioboto3
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError

from shared.config import StorageConfig
from shared.model_store.base import ObjectModelStore, ObjectTooLarge, StoreUnavailable


class S3ModelStore(ObjectModelStore):
    def __init__(self, storage: StorageConfig, *, connect_timeout: float = 5, attempts: int = 3):
        self.storage = storage
        self.bucket = storage.s3_bucket
        self._boto_config = BotoConfig(
            s3={"addressing_style": "path"},
            connect_timeout=connect_timeout, read_timeout=30,
            retries={"max_attempts": attempts, "mode": "standard"},
        )
        self._stack = contextlib.AsyncExitStack()
        self._s3 = None

    def _where(self) -> str:
        return f"S3 endpoint {self.storage.s3_endpoint_url or '(AWS default)'} bucket {self.bucket}"

    async def __aenter__(self) -> "S3ModelStore":
        session = aioboto3.Session(
            aws_access_key_id=self.storage.s3_access_key,
            aws_secret_access_key=self.storage.s3_secret_key,
            region_name=self.storage.s3_region,
        )
        self._s3 = await self._stack.enter_async_context(session.client(
            "s3", endpoint_url=self.storage.s3_endpoint_url or None, config=self._boto_config,
        ))
        try:
            await self._ensure_bucket()
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def _ensure_bucket(self) -> None:
        try:
            await self._call(self._s3.head_bucket, Bucket=self.bucket)
        except ClientError as exc:
            if _status(exc) != 404:
                raise StoreUnavailable(f"{self._where()}: {_code(exc)}") from None
            await self._create_bucket()

    async def _create_bucket(self) -> None:
        kwargs = {}
        if self.storage.s3_region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self.storage.s3_region}
        try:
            await self._call(self._s3.create_bucket, Bucket=self.bucket, **kwargs)
        except ClientError as exc:
            if _code(exc) not in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
                raise StoreUnavailable(f"{self._where()}: cannot create bucket: {_code(exc)}") from None

    async def __aexit__(self, *exc) -> None:
        await self._stack.aclose()

    async def _call(self, method, **kwargs):
        """One S3 call; connection failures become StoreUnavailable (no credentials in it)."""
        try:
            return await method(**kwargs)
        except ClientError:
            raise
        except (BotoCoreError, OSError) as exc:
            raise StoreUnavailable(f"{self._where()} unreachable: {type(exc).__name__}") from None
        except Exception as exc:  # aiohttp's errors when the endpoint drops the connection
            if type(exc).__module__.startswith("aiohttp"):
                raise StoreUnavailable(f"{self._where()} unreachable: {type(exc).__name__}") from None
            raise

    async def _get(self, key: str, *, max_bytes: int | None = None) -> bytes | None:
        try:
            response = await self._call(self._s3.get_object, Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _status(exc) == 404:
                return None
            raise StoreUnavailable(f"{self._where()}: get {key}: {_code(exc)}") from None
        async with response["Body"] as body:
            # The length header arrives before the body: refuse an oversized object unread.
            if max_bytes is not None and response["ContentLength"] > max_bytes:
                raise ObjectTooLarge(response["ContentLength"])
            try:
                return await body.read()
            except (BotoCoreError, OSError) as exc:
                raise StoreUnavailable(f"{self._where()}: get {key}: {type(exc).__name__}") from None

    async def _put(self, key: str, data: bytes, *, if_absent: bool = False) -> bool:
        extra = {"IfNoneMatch": "*"} if if_absent else {}
        try:
            await self._call(self._s3.put_object, Bucket=self.bucket, Key=key, Body=data, **extra)
        except ClientError as exc:
            if if_absent and _status(exc) in (409, 412):
                return False
            raise StoreUnavailable(f"{self._where()}: put {key}: {_code(exc)}") from None
        return True

    async def _list(self, prefix: str) -> list[str]:
        keys, token = [], None
        while True:
            kwargs = {"Bucket": self.bucket, "Prefix": prefix, **({"ContinuationToken": token} if token else {})}
            try:
                page = await self._call(self._s3.list_objects_v2, **kwargs)
            except ClientError as exc:
                raise StoreUnavailable(f"{self._where()}: list {prefix}: {_code(exc)}") from None
            keys += [obj["Key"] for obj in page.get("Contents", [])]
            if not page.get("IsTruncated"):
                return keys
            token = page["NextContinuationToken"]


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def _code(exc: ClientError) -> str:
    return exc.response.get("Error", {}).get("Code", "error")
