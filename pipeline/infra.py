"""`invoke infra.bootstrap`: apply infra/ (bucket policy, lifecycle, CORS) to the bucket of an s3:// dest.

Idempotent: each document is read back first and only written when the bucket lacks it ("unchanged"
otherwise). Rules and statements that the bucket already has under other IDs/Sids are kept (merged by
ID), so an operator's own lifecycle rules or policy statements survive. Where the store rejects a
configuration (NotImplemented, MalformedXML …) the report says "unsupported by this store" and the
other steps still run.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.errors import ConfigError, StorageError
from pipeline.storage.s3 import S3Storage, translate_error

if TYPE_CHECKING:
    from pipeline.storage import S3Config

UNSUPPORTED = "unsupported by this store"
_UNSUPPORTED_CODES = {
    "NotImplemented",
    "XNotImplemented",
    "501",
    "MalformedXML",
    "MalformedPolicy",
    "InvalidRequest",
    "UnsupportedOperation",
    "MethodNotAllowed",
    "405",
}
_ABSENT_CODES = {"NoSuchBucketPolicy", "NoSuchLifecycleConfiguration", "NoSuchCORSConfiguration", "404"}
ANONYMOUS_ACTIONS = {"s3:GetObject"}  # the only thing infra/bucket-policy.json may grant to everyone


@dataclass(frozen=True)
class BootstrapStep:
    name: str  # bucket | policy | lifecycle | cors
    outcome: str  # exists | created | applied | unchanged | unsupported by this store
    detail: str = ""

    def line(self) -> str:
        return f"{self.name}: {self.outcome}" + (f" ({self.detail})" if self.detail else "")


@dataclass(frozen=True)
class BootstrapReport:
    dest: str
    endpoint: str
    steps: tuple[BootstrapStep, ...]

    def outcome(self, name: str) -> str:
        return next(step.outcome for step in self.steps if step.name == name)

    def lines(self) -> list[str]:
        return [f"infra.bootstrap {self.dest} at {self.endpoint}", *(step.line() for step in self.steps)]


def _code(exc: Exception) -> str:
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return ""
    code = response.get("Error", {}).get("Code") or response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return str(code or "")


def _load(infra_dir: Path, name: str) -> Any:
    path = infra_dir / name
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: missing; pass the infra/ directory of a mirrorseed checkout") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: not readable JSON ({exc}); fix the file") from None


def _canonical(value: Any) -> Any:
    """Compare documents as S3 stores them: empty values dropped, unordered string lists sorted, `"*"`
    principals in one form."""
    if isinstance(value, dict):
        out = {k: _canonical(v) for k, v in value.items()}
        if out.get("Principal") in ({"AWS": "*"}, {"AWS": ["*"]}):
            out["Principal"] = "*"
        return {k: v for k, v in out.items() if v not in (None, "", {}, [])}
    if isinstance(value, list):
        items = [_canonical(v) for v in value]
        if all(isinstance(v, str) for v in items):
            return items[0] if len(items) == 1 else sorted(items)
        return items
    return value


def policy_for(template: Any, bucket: str, prefix: str) -> dict[str, Any]:
    """infra/bucket-policy.json with `BUCKET` -> the bucket (and prefix); refuses anything beyond anonymous
    s3:GetObject, so a mistaken edit of the file cannot open writes or listing to everyone."""
    scope = f"{bucket}/{prefix}" if prefix else bucket
    text = json.dumps(template).replace("arn:aws:s3:::BUCKET/", f"arn:aws:s3:::{scope}/")
    text = text.replace("arn:aws:s3:::BUCKET", f"arn:aws:s3:::{bucket}")
    policy: dict[str, Any] = json.loads(text)
    for statement in policy.get("Statement", []):
        if statement.get("Effect") != "Allow" or _canonical({"Principal": statement.get("Principal")}) != {
            "Principal": "*"
        }:
            continue
        actions = statement.get("Action", [])
        actions = {actions} if isinstance(actions, str) else set(actions)
        if not actions <= ANONYMOUS_ACTIONS:
            raise ConfigError(
                f"infra/bucket-policy.json: grants {', '.join(sorted(actions - ANONYMOUS_ACTIONS))} to everyone; "
                "only s3:GetObject may be public, fix the file"
            )
    return policy


def _merge(current: list[Any], desired: list[Any], id_field: str) -> tuple[list[Any], bool]:
    """(merged list, whether `current` already holds every desired item): items of `current` under other
    IDs are kept; ours replace those with the same ID."""
    have = [_canonical(item) for item in current]
    if all(_canonical(item) in have for item in desired):
        return current, True
    ours = {item.get(id_field) for item in desired if item.get(id_field)}
    kept = [item for item in current if not item.get(id_field) or item.get(id_field) not in ours]
    return kept + desired, False


class _Bootstrap:
    def __init__(self, storage: S3Storage) -> None:
        self.storage = storage
        self.client = storage.client
        self.bucket = storage.bucket

    def error(self, exc: Exception, action: str) -> StorageError:
        return translate_error(exc, "", endpoint=self.storage.endpoint, bucket=self.bucket, action=action)

    def ensure_bucket(self, create: bool, region: str | None) -> BootstrapStep:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
            return BootstrapStep("bucket", "exists")
        except ClientError as exc:
            if _code(exc) not in ("404", "NoSuchBucket", "NotFound"):
                raise self.error(exc, "read the bucket") from None
        except BotoCoreError as exc:
            raise self.error(exc, "read the bucket") from None
        if not create:
            raise StorageError(
                f"s3://{self.bucket}: the bucket does not exist at {self.storage.endpoint}; "
                "create it or run invoke infra.bootstrap --create-bucket"
            )
        args: dict[str, Any] = {"Bucket": self.bucket}
        if region and region != "us-east-1":
            args["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            self.client.create_bucket(**args)
        except ClientError as exc:
            if _code(exc) == "BucketAlreadyOwnedByYou":
                return BootstrapStep("bucket", "exists")
            if _code(exc) == "BucketAlreadyExists":
                raise StorageError(
                    f"s3://{self.bucket}: the name is taken by another account; choose another bucket name"
                ) from None
            raise self.error(exc, "create the bucket") from None
        except BotoCoreError as exc:
            raise self.error(exc, "create the bucket") from None
        return BootstrapStep("bucket", "created")

    def apply(
        self,
        name: str,
        read: Callable[[], list[Any]],
        write: Callable[[list[Any]], None],
        desired: list[Any],
        id_field: str,
        what: str,
    ) -> BootstrapStep:
        """Read the bucket's items, write the merge if ours are missing, read back to confirm."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            current = read()
        except ClientError as exc:
            code = _code(exc)
            if code in _ABSENT_CODES:
                current = []
            elif code in _UNSUPPORTED_CODES:
                return BootstrapStep(name, UNSUPPORTED, f"{code} on read; {what} not applied")
            else:
                raise self.error(exc, f"read the {name} configuration") from None
        except BotoCoreError as exc:
            raise self.error(exc, f"read the {name} configuration") from None
        merged, unchanged = _merge(current, desired, id_field)
        if unchanged:
            return BootstrapStep(name, "unchanged", what)
        try:
            write(merged)
        except ClientError as exc:
            code = _code(exc)
            if code in _UNSUPPORTED_CODES:
                return BootstrapStep(name, UNSUPPORTED, f"{code}; {what} not applied")
            if name == "policy" and code in ("AccessDenied", "403"):
                raise StorageError(
                    f"s3://{self.bucket}: the store refused the public-read bucket policy (AccessDenied); "
                    "on AWS allow public bucket policies for this bucket (Block Public Access: BlockPublicPolicy "
                    "and RestrictPublicBuckets off) and check that the credentials may s3:PutBucketPolicy"
                ) from None
            raise self.error(exc, f"write the {name} configuration") from None
        except BotoCoreError as exc:
            raise self.error(exc, f"write the {name} configuration") from None
        try:
            confirmed = _merge(read(), desired, id_field)[1]
        except (ClientError, BotoCoreError):
            confirmed = False
        if not confirmed:
            return BootstrapStep(name, "applied", f"{what}; the store accepted it but does not report it back")
        others = len(merged) - len(desired)
        return BootstrapStep(name, "applied", what + (f"; kept {others} other(s) of the bucket" if others else ""))

    def policy(self, policy: dict[str, Any]) -> BootstrapStep:
        version = policy.get("Version", "2012-10-17")

        def read() -> list[Any]:
            text = self.client.get_bucket_policy(Bucket=self.bucket)["Policy"]
            try:
                statements = json.loads(text).get("Statement", [])
            except (ValueError, AttributeError):
                return []
            return statements if isinstance(statements, list) else [statements]

        def write(statements: list[Any]) -> None:
            document = json.dumps({"Version": version, "Statement": statements})
            self.client.put_bucket_policy(Bucket=self.bucket, Policy=document)

        resources = sorted({r for s in policy["Statement"] for r in _as_list(s.get("Resource"))})
        step = self.apply(
            "policy", read, write, policy["Statement"], "Sid", f"anonymous s3:GetObject on {', '.join(resources)}"
        )
        if step.outcome in ("applied", "unchanged"):
            wider = self._other_public_grants(read, policy["Statement"])
            if wider:
                return BootstrapStep(step.name, step.outcome, f"{step.detail}; WARNING: {wider}")
        return step

    def _other_public_grants(self, read: Callable[[], list[Any]], ours: list[Any]) -> str:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            statements = read()
        except (ClientError, BotoCoreError):
            return ""
        mine = [_canonical(s) for s in ours]
        extra: set[str] = set()
        for statement in statements:
            if _canonical(statement) in mine or statement.get("Effect") != "Allow":
                continue
            if _canonical({"Principal": statement.get("Principal")}) == {"Principal": "*"}:
                extra.update(_as_list(statement.get("Action")))
        extra -= ANONYMOUS_ACTIONS
        if not extra:
            return ""
        return f"other statements of the bucket policy grant {', '.join(sorted(extra))} to everyone; review them"

    def lifecycle(self, rules: list[Any]) -> BootstrapStep:
        def read() -> list[Any]:
            return list(self.client.get_bucket_lifecycle_configuration(Bucket=self.bucket).get("Rules", []))

        def write(merged: list[Any]) -> None:
            self.client.put_bucket_lifecycle_configuration(Bucket=self.bucket, LifecycleConfiguration={"Rules": merged})

        days = {r.get("AbortIncompleteMultipartUpload", {}).get("DaysAfterInitiation") for r in rules} - {None}
        what = "abort incomplete multipart uploads after " + "/".join(str(d) for d in sorted(days)) + " day(s)"
        return self.apply("lifecycle", read, write, rules, "ID", what)

    def cors(self, rules: list[Any]) -> BootstrapStep:
        def read() -> list[Any]:
            return list(self.client.get_bucket_cors(Bucket=self.bucket).get("CORSRules", []))

        def write(merged: list[Any]) -> None:
            self.client.put_bucket_cors(Bucket=self.bucket, CORSConfiguration={"CORSRules": merged})

        methods = sorted({m for r in rules for m in r.get("AllowedMethods", [])})
        return self.apply("cors", read, write, rules, "ID", f"{'/'.join(methods)} from any origin")


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else [str(v) for v in value]


def bootstrap(dest: str, s3: S3Config, *, infra_dir: Path, create_bucket: bool = False) -> BootstrapReport:
    """Apply infra/bucket-policy.json, lifecycle.json and cors.json to the bucket of `dest`.

    Reads every document first, so a mistake in infra/ is reported before anything is written.
    """
    if not dest.startswith("s3://"):
        raise ConfigError(
            f"dest: {dest!r} is not an S3 destination; infra.bootstrap configures a bucket, "
            "pass --dest s3://bucket[/prefix]"
        )
    storage = S3Storage.from_url(dest, s3)
    policy = policy_for(_load(infra_dir, "bucket-policy.json"), storage.bucket, storage.prefix)
    lifecycle = _load(infra_dir, "lifecycle.json")
    cors = _load(infra_dir, "cors.json")
    for name, document, field in (("lifecycle.json", lifecycle, "Rules"), ("cors.json", cors, "CORSRules")):
        if not isinstance(document, dict) or not isinstance(document.get(field), list):
            raise ConfigError(f"{infra_dir / name}: must be an object with a {field} list; fix the file")
    if not isinstance(policy.get("Statement"), list):
        raise ConfigError(f"{infra_dir / 'bucket-policy.json'}: must have a Statement list; fix the file")

    steps = _Bootstrap(storage)
    done = [steps.ensure_bucket(create_bucket, s3.region)]
    done.append(steps.policy(policy))
    done.append(steps.lifecycle(lifecycle["Rules"]))
    done.append(steps.cors(cors["CORSRules"]))
    return BootstrapReport(dest=storage.url, endpoint=storage.endpoint, steps=tuple(done))
