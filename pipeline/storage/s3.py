"""S3Storage: an S3-compatible bucket (AWS, R2, B2, Ceph, SeaweedFS, MinIO …) through boto3.

Keys live under `s3://bucket/prefix/`. Every put sends an explicit Content-Type and Cache-Control (some
stores type an untyped object as text/plain) and the SHA-256 of the bytes as `x-amz-meta-sha256`.
Conditional puts use `If-None-Match: *` / `If-Match: <etag>`; `probe_conditional_writes()` checks that the
store enforces them. Every botocore error is turned into one-line StorageError here, naming the key and
the fix; credentials never appear in a message or a log line.
"""

from __future__ import annotations

import base64
import builtins
import hashlib
import io
import logging
import re
import secrets
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, Any, BinaryIO, Literal, TypeVar, cast
from urllib.parse import urlparse

from pipeline.errors import ConfigError, PipelineError, PublishConflictError, StorageError
from pipeline.model import Artifact
from pipeline.objects import PRIVATE_PREFIX
from pipeline.storage import ObjectInfo, S3Config, StoredObject, check_key, copy_chunk

if TYPE_CHECKING:
    from types_boto3_s3 import S3Client

log = logging.getLogger(__name__)
_T = TypeVar("_T")

MULTIPART_THRESHOLD = 8 * 1024 * 1024  # objects this large go through the managed (multipart) upload
_WRONG_ETAG = '"00000000000000000000000000000000"'
_MD5_ETAG = re.compile(r'^"?([0-9a-f]{32})"?$')
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")

_CREDENTIAL_CODES = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
    "TokenRefreshRequired",
}
_CONFLICT_CODES = {"PreconditionFailed", "412", "ConditionalRequestConflict", "409"}
_MISSING_CODES = {"NoSuchKey", "404", "NotFound"}
CREDENTIALS_HINT = "check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or s3_profile"

# What botocore and urllib3 write at DEBUG (`--verbose`) that must not reach a log: the session token
# (the `X-Amz-Security-Token` header in "Sending http request: <AWSPreparedRequest ... headers={...}>",
# `x-amz-security-token:<token>` in the canonical request, `X-Amz-Security-Token=` in a presigned
# URL's query) and the request signatures (`Signature=` in the Authorization header, `Signature:` in
# botocore.auth's log, `X-Amz-Signature=` in a query). botocore never logs the secret access key.
REDACTED = "<redacted>"
_SECRETS = re.compile(
    r"""(?ix)
    ( x-amz-security-token ['"]?+ \s*+ [:=] \s*+ b?+ ['"]?+  # header (dict repr or canonical form), query
    | (?: x-amz- )? signature (?: = | : \s*+ )                # Authorization, botocore.auth, query
    )
    [^'"\s&,;}<>]+  # possessive above and no '<' here: a REDACTED value is left as it is
    """
)
_LOG_SOURCES = ("botocore", "boto3", "s3transfer", "urllib3")


def redact(text: str) -> str:
    """`text` with every session token and request signature replaced by REDACTED."""
    return _SECRETS.sub(lambda m: m.group(1) + REDACTED, text)


class _RedactSecrets(logging.Filter):
    """Rewrites a record whose message holds a session token or a signature (before any handler)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


_REDACT_FILTER = _RedactSecrets()


def _redact_library_logs() -> None:
    """Put the filter on every logger of boto3, botocore, s3transfer and urllib3 that exists once a
    client is made (a logger's filters see only its own records, not its children's)."""
    names = [n for n in list(logging.root.manager.loggerDict) if n.split(".")[0] in _LOG_SOURCES]
    for name in sorted({*_LOG_SOURCES, *names}):
        logger = logging.getLogger(name)
        if _REDACT_FILTER not in logger.filters:
            logger.addFilter(_REDACT_FILTER)


def parse_s3_url(url: str) -> tuple[str, str]:
    """`s3://bucket[/prefix]` -> (bucket, prefix); the prefix has no leading or trailing '/'."""
    parsed = urlparse(url)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ConfigError(f"{url}: not an S3 destination; write it as s3://bucket or s3://bucket/prefix")
    if "@" in parsed.netloc or parsed.query or parsed.fragment or parsed.params:
        raise ConfigError(
            f"{url}: an s3:// destination is only s3://bucket/prefix (no credentials, ?query or #fragment); "
            "credentials come from the AWS environment or s3_profile"
        )
    bucket = parsed.netloc
    if not _BUCKET.match(bucket) or ".." in bucket:
        raise ConfigError(f"{url}: {bucket!r} is not a valid bucket name (3-63 lowercase letters, digits, '.', '-')")
    prefix = parsed.path.strip("/")
    if prefix:
        try:
            check_key(prefix)
        except StorageError:
            raise ConfigError(f"{url}: the prefix {prefix!r} is not a clean '/'-separated path") from None
    return bucket, prefix


def _one_line(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _error_code(exc: Exception) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = response.get("Error", {}).get("Code")
        if code:
            return str(code)
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if status:
            return str(status)
    return ""


def make_client(settings: S3Config) -> S3Client:
    """A boto3 S3 client (endpoint, region, addressing, profile, retries, timeouts).

    Credentials: the profile `s3_profile` if set, otherwise boto3's default chain (AWS_ACCESS_KEY_ID/
    AWS_SECRET_ACCESS_KEY, AWS_PROFILE, ~/.aws, instance roles …).
    """
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ProfileNotFound

    config = Config(
        retries={"mode": "standard", "total_max_attempts": settings.max_attempts},  # incl. the first
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.read_timeout,
        max_pool_connections=max(10, settings.upload_concurrency + 2),
        # botocore >= 1.36 adds CRC checksums by default, which many S3-compatible stores reject
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        s3={"addressing_style": cast(Literal["auto", "virtual", "path"], settings.addressing_style)},
    )
    try:
        session = boto3.session.Session(profile_name=settings.profile) if settings.profile else boto3.Session()
        client = session.client("s3", endpoint_url=settings.endpoint_url, region_name=settings.region, config=config)
        _redact_library_logs()
        return client
    except ProfileNotFound:
        raise ConfigError(
            f"s3_profile: no AWS profile {settings.profile!r} in ~/.aws/config or ~/.aws/credentials; "
            "fix s3_profile or unset it to use AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"
        ) from None
    except ValueError as exc:  # e.g. a malformed endpoint URL
        raise ConfigError(f"s3_endpoint_url: {_one_line(str(exc))}; pass a URL like https://s3.example.com") from None
    except BotoCoreError as exc:
        raise ConfigError(f"S3 client: {_one_line(str(exc))}; check s3_* settings") from None


def translate_error(exc: Exception, subject: str, *, endpoint: str, bucket: str, action: str) -> StorageError:
    """One botocore/boto3 error -> one-line StorageError naming `subject` (a key or the bucket) and the fix."""
    from botocore.exceptions import (
        ClientError,
        ConnectionClosedError,
        ConnectTimeoutError,
        NoCredentialsError,
        PartialCredentialsError,
        ReadTimeoutError,
        SSLError,
    )
    from botocore.exceptions import ConnectionError as BotoConnectionError

    where = f"s3://{bucket}/{subject}" if subject else f"s3://{bucket}"
    if isinstance(exc, BotoConnectionError | ReadTimeoutError):  # refused, DNS, connect/read timeouts, TLS
        if isinstance(exc, ConnectTimeoutError):
            reason = "connect timed out"
        elif isinstance(exc, ReadTimeoutError):
            reason = "read timed out"
        elif isinstance(exc, ConnectionClosedError):
            reason = "connection closed"
        elif isinstance(exc, SSLError):
            reason = "TLS failed"
        else:
            reason = "connection failed"
        return StorageError(
            f"{where}: cannot reach the S3 endpoint {endpoint} ({reason} while trying to {action}); "
            "check s3_endpoint_url and the network"
        )
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return StorageError(f"{where}: no usable AWS credentials to {action}; {CREDENTIALS_HINT}")
    if isinstance(exc, ClientError):
        code = _error_code(exc)
        if code in _CREDENTIAL_CODES:
            return StorageError(f"{where}: {endpoint} refused the credentials ({code}); {CREDENTIALS_HINT}")
        if code == "NoSuchBucket":
            return StorageError(
                f"{where}: the bucket {bucket!r} does not exist at {endpoint}; "
                "create it or run invoke infra.bootstrap --create-bucket"
            )
        if code in ("AccessDenied", "403", "AllAccessDisabled"):
            return StorageError(
                f"{where}: access denied ({code}) when trying to {action} at {endpoint}; {CREDENTIALS_HINT}, "
                "and that they may Get/Put/Delete/List this bucket"
            )
        if code in ("PermanentRedirect", "AuthorizationHeaderMalformed", "301", "IllegalLocationConstraintException"):
            return StorageError(
                f"{where}: the bucket is in another region ({code}) than the one configured; set s3_region"
            )
        message = _one_line(exc.response.get("Error", {}).get("Message", "") or str(exc))
        return StorageError(f"{where}: S3 refused to {action} ({code}: {message}) at {endpoint}")
    return StorageError(f"{where}: S3 {action} failed at {endpoint} ({type(exc).__name__}: {_one_line(str(exc))})")


class S3Storage:
    """Objects under `s3://bucket/prefix/`; ObjectInfo.etag is the S3 ETag as returned (quotes included)."""

    def __init__(self, client: S3Client, bucket: str, prefix: str = "", *, upload_concurrency: int = 8) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.upload_concurrency = max(1, upload_concurrency)
        self.endpoint = str(client.meta.endpoint_url)

    @classmethod
    def from_url(cls, url: str, settings: S3Config) -> S3Storage:
        bucket, prefix = parse_s3_url(url)
        return cls(make_client(settings), bucket, prefix, upload_concurrency=settings.upload_concurrency)

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def _key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _relative(self, full: str) -> str:
        return full[len(self.prefix) + 1 :] if self.prefix else full

    def _error(self, exc: Exception, key: str, action: str) -> StorageError:
        subject = self._key(key) if key else self.prefix
        return translate_error(exc, subject, endpoint=self.endpoint, bucket=self.bucket, action=action)

    def _call(
        self,
        call: Callable[[], _T],
        *,
        key: str,
        action: str,
        if_missing: Callable[[], _T] | None = None,
        conflict: Callable[[], PipelineError] | None = None,
        subject: str | None = None,
    ) -> _T:
        """Run one boto3 call; its errors are mapped in one place: a missing key (`if_missing`), a lost
        condition (`conflict`), anything else one StorageError naming the key and what was tried."""
        from boto3.exceptions import S3UploadFailedError
        from botocore.exceptions import BotoCoreError, ClientError

        error: Exception
        try:
            return call()
        except S3UploadFailedError as exc:  # the managed upload wraps the ClientError
            inner = exc.__cause__ or exc.__context__
            error = inner if isinstance(inner, ClientError | BotoCoreError) else exc
        except (ClientError, BotoCoreError) as exc:
            error = exc
        code = _error_code(error) if isinstance(error, ClientError) else ""
        if if_missing is not None and code in _MISSING_CODES:
            return if_missing()
        if conflict is not None and code in _CONFLICT_CODES:
            raise conflict() from None
        if subject is not None:
            raise translate_error(error, subject, endpoint=self.endpoint, bucket=self.bucket, action=action) from None
        raise self._error(error, key, action) from None

    # --- reads -----------------------------------------------------------------------------------------

    def get(self, key: str) -> StoredObject | None:
        def read() -> StoredObject:
            response = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
            with response["Body"] as body:
                data = body.read()
            modified = response.get("LastModified")
            info = ObjectInfo(key, len(data), response["ETag"], modified.timestamp() if modified else None)
            return StoredObject(info, data)

        return self._call(read, key=key, action="read it", if_missing=lambda: None)

    def get_file(self, key: str, file: BinaryIO) -> ObjectInfo | None:
        def read() -> ObjectInfo:
            response = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
            size = 0
            with response["Body"] as body:
                for chunk in iter(lambda: body.read(MULTIPART_THRESHOLD), b""):
                    copy_chunk(file, chunk)
                    size += len(chunk)
            modified = response.get("LastModified")
            return ObjectInfo(key, size, response["ETag"], modified.timestamp() if modified else None)

        return self._call(read, key=key, action="read it", if_missing=lambda: None)

    def _head_object(self, key: str) -> Any:
        """The HEAD response, or None when the key is missing (S3 answers HEAD with a bare 404, so a missing
        bucket is None too)."""
        return self._call(
            lambda: self.client.head_object(Bucket=self.bucket, Key=self._key(key)),
            key=key,
            action="read its metadata",
            if_missing=lambda: None,
        )

    def head(self, key: str) -> ObjectInfo | None:
        response = self._head_object(key)
        if response is None:
            return None
        modified = response.get("LastModified")
        return ObjectInfo(key, response["ContentLength"], response["ETag"], modified.timestamp() if modified else None)

    def stored_sha256(self, key: str) -> str | None:
        """The SHA-256 recorded at upload time (x-amz-meta-sha256), None if the key or the metadata is missing."""
        response = self._head_object(key)
        if response is None:
            return None
        sha256: str | None = response.get("Metadata", {}).get("sha256")
        return sha256

    def same_content(self, info: ObjectInfo, data: bytes) -> bool:
        """Size, then the ETag where it is an MD5 (single-part upload), else the stored sha256 metadata,
        else the bytes themselves. A false "different" only costs a re-upload."""
        if info.size != len(data):
            return False
        match = _MD5_ETAG.match(info.etag)
        if match and match.group(1) == hashlib.md5(data, usedforsecurity=False).hexdigest():
            return True
        # A multipart ETag ("…-3"), or an MD5-shaped one that differs (different bytes, or an SSE-KMS/SSE-C
        # store whose ETag is no MD5): the sha256 recorded at upload settles it with one HEAD.
        digest = self.stored_sha256(info.key)
        if digest is not None:
            return digest == hashlib.sha256(data).hexdigest()
        stored = self.get(info.key)
        return stored is not None and stored.data == data

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        """Every object whose key (relative to the storage prefix) starts with `prefix`, paginated."""
        full_prefix = f"{self.prefix}/{prefix}" if self.prefix else prefix
        found: list[ObjectInfo] = []

        def pages() -> None:
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=full_prefix):
                for item in page.get("Contents", []):
                    modified = item.get("LastModified")
                    found.append(
                        ObjectInfo(
                            self._relative(item["Key"]),
                            item.get("Size", 0),
                            item.get("ETag", ""),
                            modified.timestamp() if modified else None,
                        )
                    )

        self._call(pages, key=prefix, action="list it", subject=full_prefix)
        return found

    # --- writes ----------------------------------------------------------------------------------------

    def _put_args(self, key: str, sha256: str, content_type: str, cache_control: str) -> dict[str, Any]:
        return {
            "Bucket": self.bucket,
            "Key": self._key(key),
            "ContentType": content_type,
            "CacheControl": cache_control,
            "Metadata": {"sha256": sha256},
        }

    def put(self, key: str, data: bytes, *, content_type: str, cache_control: str) -> ObjectInfo:
        args = self._put_args(key, hashlib.sha256(data).hexdigest(), content_type, cache_control)

        def write() -> ObjectInfo:
            if len(data) >= MULTIPART_THRESHOLD:
                return self._put_large(key, io.BytesIO(data), args)
            md5 = base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()
            response = self.client.put_object(Body=data, ContentMD5=md5, **args)
            return ObjectInfo(key, len(data), response["ETag"], None)

        return self._call(write, key=key, action="write it")

    def put_file(self, key: str, file: BinaryIO, *, content_type: str, cache_control: str) -> ObjectInfo:
        """Read once for the SHA-256 and MD5, then sent from the file: in parts past MULTIPART_THRESHOLD."""
        sha256, md5, size = hashlib.sha256(), hashlib.md5(usedforsecurity=False), 0
        file.seek(0)
        for chunk in iter(lambda: file.read(MULTIPART_THRESHOLD), b""):
            sha256.update(chunk)
            md5.update(chunk)
            size += len(chunk)
        args = self._put_args(key, sha256.hexdigest(), content_type, cache_control)

        def write() -> ObjectInfo:
            file.seek(0)  # again on every attempt
            if size >= MULTIPART_THRESHOLD:
                return self._put_large(key, file, args)
            content_md5 = base64.b64encode(md5.digest()).decode()
            response = self.client.put_object(Body=file.read(), ContentMD5=content_md5, **args)
            return ObjectInfo(key, size, response["ETag"], None)

        return self._call(write, key=key, action="write it")

    def _put_large(self, key: str, body: BinaryIO, args: dict[str, Any]) -> ObjectInfo:
        """Managed multipart upload (8 MiB parts); s3transfer aborts the upload if a part fails."""
        from boto3.s3.transfer import TransferConfig

        transfer = TransferConfig(
            multipart_threshold=MULTIPART_THRESHOLD,
            multipart_chunksize=MULTIPART_THRESHOLD,
            max_concurrency=min(4, self.upload_concurrency),
            use_threads=True,
        )
        extra = {k: args[k] for k in ("ContentType", "CacheControl", "Metadata")}
        self.client.upload_fileobj(body, self.bucket, args["Key"], ExtraArgs=extra, Config=transfer)
        info = self.head(key)
        if info is None:
            raise StorageError(f"s3://{self.bucket}/{args['Key']}: missing right after its upload; check the store")
        return info

    def _put_conditional_raw(
        self, key: str, data: bytes, content_type: str, cache_control: str, if_match: str | None
    ) -> str:
        """One PUT with `If-None-Match: *` (if_match None) or `If-Match: <etag>`; returns the new ETag and
        lets botocore's errors through."""
        args = self._put_args(key, hashlib.sha256(data).hexdigest(), content_type, cache_control)
        if if_match is None:
            args["IfNoneMatch"] = "*"
        else:
            args["IfMatch"] = if_match
        md5 = base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()
        return self.client.put_object(Body=data, ContentMD5=md5, **args)["ETag"]

    def put_conditional(
        self, key: str, data: bytes, *, content_type: str, cache_control: str, if_match: str | None
    ) -> ObjectInfo:
        """A single PUT with `If-None-Match: *` (if_match None) or `If-Match: <etag>`; 412/409 -> conflict."""

        def conflict() -> PipelineError:
            if if_match is None:
                return PublishConflictError(f"{self.url}/{key}: already exists; another run published it first")
            return PublishConflictError(
                f"{self.url}/{key}: changed since this run started (ETag is no longer {if_match}); "
                "another run published first, run again"
            )

        etag = self._call(
            lambda: self._put_conditional_raw(key, data, content_type, cache_control, if_match),
            key=key,
            action="write it",
            conflict=conflict,
        )
        return ObjectInfo(key, len(data), etag, None)

    def put_many(self, artifacts: Sequence[Artifact]) -> builtins.list[ObjectInfo]:
        """Parallel unconditional puts on a bounded pool sharing this client (boto3 clients are thread-safe).

        On the first failure, queued uploads are cancelled, running ones finish, then that error is raised.
        """
        if not artifacts:
            return []
        workers = min(self.upload_concurrency, len(artifacts))
        if workers == 1:
            return [
                self.put(a.key, a.data, content_type=a.content_type, cache_control=a.cache_control) for a in artifacts
            ]
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="s3-put") as pool:
            futures: list[Future[ObjectInfo]] = [
                pool.submit(self.put, a.key, a.data, content_type=a.content_type, cache_control=a.cache_control)
                for a in artifacts
            ]
            wait(futures, return_when=FIRST_EXCEPTION)
            if any(f.done() and not f.cancelled() and f.exception() is not None for f in futures):
                for future in futures:
                    future.cancel()
                wait(futures)  # drain: nothing is still writing when the error is raised
                failed = [f for f in futures if not f.cancelled() and f.exception() is not None]
                first = failed[0].exception()
                assert first is not None
                if isinstance(first, StorageError):
                    more = f" ({len(failed) - 1} more uploads failed)" if len(failed) > 1 else ""
                    raise type(first)(f"{first}{more}") from None
                raise first
            return [f.result() for f in futures]

    def delete(self, key: str) -> None:
        """Delete one key; deleting a missing key is not an error."""
        self._call(
            lambda: self.client.delete_object(Bucket=self.bucket, Key=self._key(key)),
            key=key,
            action="delete it",
            if_missing=lambda: None,
        )

    # --- start-up check --------------------------------------------------------------------------------

    def probe_conditional_writes(self) -> None:
        """Refuse a store that accepts but ignores If-None-Match / If-Match (publishing would not be atomic).

        Writes `.mirrorseed/probe-<random>` under the prefix three times (create-only, create-only again,
        If-Match on a wrong ETag) and deletes it; the second and third writes must fail with 412 (or 409).
        """
        from botocore.exceptions import BotoCoreError, ClientError

        key = f"{PRIVATE_PREFIX}probe-{secrets.token_hex(8)}"
        body = b"mirrorseed conditional-write probe\n"
        advice = "publishing would not be atomic; use a store that supports them or pass --no-cas with an external lock"

        def written(if_match: str | None) -> bool:
            try:
                self._put_conditional_raw(key, body, "text/plain; charset=us-ascii", "no-cache", if_match)
                return True
            except ClientError as exc:
                code = _error_code(exc)
                if code in _CONFLICT_CODES:
                    return False
                if code in ("NotImplemented", "501"):
                    raise StorageError(
                        f"{self.endpoint}: the store does not implement conditional writes ({code} for "
                        f"If-None-Match/If-Match); {advice}"
                    ) from None
                raise self._error(exc, key, "write the conditional-write probe") from None
            except BotoCoreError as exc:
                raise self._error(exc, key, "write the conditional-write probe") from None

        if not written(None):
            raise StorageError(f"{self.url}/{key}: the conditional-write probe key already exists; run again")
        try:
            if written(None) or written(_WRONG_ETAG):
                raise StorageError(
                    f"{self.endpoint}: the store ignores conditional writes (If-None-Match/If-Match); {advice}"
                )
        finally:
            try:
                self.delete(key)
            except StorageError as exc:
                log.warning("%s", exc)
