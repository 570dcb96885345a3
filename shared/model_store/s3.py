"""The model store on S3 (MinIO, AWS S3, Ceph): plain S3 calls through aioboto3, path-style
addressing, the bucket created if missing (and never made public). TLS: an `https://`
endpoint, verified against `storage.s3_ca_file` when set.

"Only if absent" is a conditional put (`If-None-Match: *`), so two writers can never both
create a version. A server that rejects that header (501 NotImplemented) gets a HEAD
before the PUT instead, which is safe for one writer but not race-free.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import aioboto3
import aiohttp
from botocore.config import Config as BotoConfig
from botocore.exceptions import ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError

from shared import tls
from shared.config import StorageConfig, mask_url
from shared.model_store.base import ObjectModelStore, ObjectTooLarge, StoreUnavailable
from shared.retry import Link, Refused, reach

log = logging.getLogger(__name__)

# What a dead or dropped endpoint raises: botocore's connect errors (refused, DNS, connect
# timeout), its read errors (read timeout, closed connection), and aiohttp's own.
_UNREACHABLE = (BotoConnectionError, HTTPClientError, aiohttp.ClientError, asyncio.TimeoutError, OSError)


class UntrustedEndpoint(StoreUnavailable):
    """The endpoint's TLS certificate is not trusted (while running, retried as any outage:
    the certificate or `storage.s3_ca_file` may be fixed)."""


class S3ModelStore(ObjectModelStore):
    def __init__(self, storage: StorageConfig, *, connect_timeout: float = 5, read_timeout: float = 60,
                 attempts: int = 3):
        """`attempts` counts the first try; botocore backs off between retries."""
        self.storage = storage
        self.bucket = storage.s3_bucket
        self._boto_config = BotoConfig(
            s3={"addressing_style": "path"},
            connect_timeout=connect_timeout, read_timeout=read_timeout,
            retries={"total_max_attempts": attempts, "mode": "standard"},
        )
        self._conditional_puts = True  # until the server says it does not support them
        self.link = Link(f"{self._endpoint} bucket {self.bucket}", log)
        self._stack = contextlib.AsyncExitStack()
        self._s3 = None

    async def __aenter__(self) -> "S3ModelStore":
        session = aioboto3.Session(
            # Empty means: let boto find credentials (environment, profile, instance role).
            aws_access_key_id=self.storage.s3_access_key or None,
            aws_secret_access_key=self.storage.s3_secret_key or None,
            region_name=self.storage.s3_region,
        )
        self._s3 = await self._stack.enter_async_context(session.client(
            "s3", endpoint_url=self.storage.s3_endpoint_url or None, config=self._boto_config,
            verify=self.storage.s3_ca_file or None,  # None: botocore's own trust store
        ))
        try:
            await reach(self._endpoint, self._ensure_bucket, attempts=self.storage.connect_attempts,
                        errors=(StoreUnavailable,))
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(self, *exc) -> None:
        await self._stack.aclose()

    # -- errors ---------------------------------------------------------------------------

    @property
    def _endpoint(self) -> str:
        return f"S3 endpoint {mask_url(self.storage.s3_endpoint_url) or '(AWS default)'}"

    def _unavailable(self, what: str) -> StoreUnavailable:
        """The error to raise (no credentials in it); the link is told the store is lost."""
        secret = self.storage.s3_secret_key
        what = what.replace(secret, "***") if secret else what
        self.link.failed(what)
        return StoreUnavailable(f"{self.link.name}: {what}")

    async def _call(self, method, **kwargs):
        """One S3 call; a dead endpoint becomes StoreUnavailable (no credentials in it).
        ClientError (the server answered) is left to the caller."""
        try:
            result = await method(**kwargs)
        except ClientError:
            raise
        except _UNREACHABLE as exc:
            if (error := tls.certificate_error(exc)) is not None:
                message = tls.untrusted(self.link.name, error, "storage.s3_ca_file")
                self.link.failed(message)
                raise UntrustedEndpoint(message) from None
            raise self._unavailable(f"unreachable ({type(exc).__name__}: {exc})") from None
        self.link.ok()
        return result

    # -- bucket ---------------------------------------------------------------------------

    async def _ensure_bucket(self) -> None:
        try:
            await self._call(self._s3.head_bucket, Bucket=self.bucket)
        except UntrustedEndpoint as exc:  # at start-up: trying again will not make it trusted
            raise Refused(str(exc)) from None
        except ClientError as exc:
            if _status(exc) in (401, 403):  # wrong credentials or no permission: retrying won't help
                raise Refused(str(self._unavailable(f"access refused: {_code(exc)}"))) from None
            if _status(exc) != 404:
                raise self._unavailable(f"cannot use the bucket: {_code(exc)}") from None
            await self._create_bucket()

    async def _create_bucket(self) -> None:
        kwargs = {}
        if self.storage.s3_region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self.storage.s3_region}
        try:
            await self._call(self._s3.create_bucket, Bucket=self.bucket, **kwargs)
            log.info("created bucket %s", self.bucket)
        except ClientError as exc:
            if _status(exc) != 409:  # BucketAlreadyOwnedByYou / BucketAlreadyExists
                raise self._unavailable(f"cannot create the bucket: {_code(exc)}") from None
            # Someone created it first (e.g. another service starting): fine if we can use it.
            try:
                await self._call(self._s3.head_bucket, Bucket=self.bucket)
            except ClientError as again:
                raise self._unavailable(f"bucket exists but is not usable: {_code(again)}") from None

    # -- objects --------------------------------------------------------------------------

    async def _get(self, key: str, *, max_bytes: int | None = None) -> bytes | None:
        try:
            response = await self._call(self._s3.get_object, Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _status(exc) == 404:
                return None
            raise self._unavailable(f"get {key}: {_code(exc)}") from None
        body = response["Body"]
        try:
            # The headers arrive before the body: refuse an oversized object unread.
            size = response.get("ContentLength")
            if max_bytes is not None and size is not None and size > max_bytes:
                raise ObjectTooLarge(size)
            try:
                return await body.read()
            except _UNREACHABLE as exc:
                raise self._unavailable(f"get {key}: {type(exc).__name__}: {exc}") from None
        finally:
            body.release()  # back to the pool if fully read, else the connection is dropped

    async def _exists(self, key: str) -> bool:
        try:
            await self._call(self._s3.head_object, Bucket=self.bucket, Key=key)
            return True
        except ClientError as exc:
            if _status(exc) == 404:
                return False
            raise self._unavailable(f"head {key}: {_code(exc)}") from None

    async def _put(self, key: str, data: bytes, *, if_absent: bool = False) -> bool:
        conditional = if_absent and self._conditional_puts
        if if_absent and not conditional and await self._exists(key):
            return False
        extra = {"IfNoneMatch": "*"} if conditional else {}
        try:
            await self._call(self._s3.put_object, Bucket=self.bucket, Key=key, Body=data, **extra)
        except ClientError as exc:
            # 412: it exists. 409: a concurrent conditional write of the same key won.
            if conditional and _status(exc) in (409, 412):
                return False
            if conditional and (_status(exc) == 501 or _code(exc) == "NotImplemented"):
                log.warning("S3 server rejects conditional puts (%s); checking before writing instead",
                            _code(exc))
                self._conditional_puts = False
                return await self._put(key, data, if_absent=True)
            raise self._unavailable(f"put {key}: {_code(exc)}") from None
        return True

    async def _delete(self, key: str) -> None:
        try:
            await self._call(self._s3.delete_object, Bucket=self.bucket, Key=key)
        except ClientError as exc:
            raise self._unavailable(f"delete {key}: {_code(exc)}") from None

    async def _list(self, prefix: str) -> list[str]:
        keys, token = [], None
        while True:
            kwargs = {"Bucket": self.bucket, "Prefix": prefix, **({"ContinuationToken": token} if token else {})}
            try:
                page = await self._call(self._s3.list_objects_v2, **kwargs)
            except ClientError as exc:
                raise self._unavailable(f"list {prefix}: {_code(exc)}") from None
            keys += [obj["Key"] for obj in page.get("Contents", [])]
            if not page.get("IsTruncated"):
                return keys
            token = page["NextContinuationToken"]


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def _code(exc: ClientError) -> str:
    return exc.response.get("Error", {}).get("Code", "error")
