"""`invoke infra.bootstrap` against SeaweedFS: applies infra/ idempotently, as the operator runs it."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from pipeline.config import Settings, s3_config
from pipeline.infra import bootstrap
from pipeline.urls import join_url
from tests.integration.conftest import run_cli
from tests.s3_server import SeaweedServer
from tests.s3_server import anonymous_request as http

pytestmark = pytest.mark.integration

INFRA = Path(__file__).resolve().parents[2] / "infra"


def new_bucket_name() -> str:
    return f"b-{uuid.uuid4().hex[:16]}"


def test_bootstrap_task_twice_then_anonymous_read_only(s3_server: SeaweedServer) -> None:
    bucket = s3_server.make_bucket(new_bucket_name(), public_read=False)
    client = s3_server.client()
    client.put_object(Bucket=bucket, Key="latest.asc", Body=b"pointer", ContentType="text/plain; charset=us-ascii")
    url = join_url(s3_server.public_url(bucket), "latest.asc")
    assert http(url)[0] == 403, "private before bootstrap"

    args = ("infra.bootstrap", "--dest", f"s3://{bucket}", "--s3-endpoint-url", s3_server.endpoint)
    first = run_cli(*args, env=s3_server.env())
    assert first.returncode == 0, first.stderr
    lines = first.stdout.splitlines()
    assert lines[0] == f"infra.bootstrap s3://{bucket} at {s3_server.endpoint}"
    assert lines[1] == "bucket: exists"
    assert lines[2] == f"policy: applied (anonymous s3:GetObject on arn:aws:s3:::{bucket}/*)"
    assert lines[3] == "lifecycle: applied (abort incomplete multipart uploads after 1 day(s))"
    assert lines[4] == "cors: applied (GET/HEAD from any origin)"

    second = run_cli(*args, env=s3_server.env())
    assert second.returncode == 0, second.stderr
    assert [line.split(" (")[0] for line in second.stdout.splitlines()[1:]] == [
        "bucket: exists",
        "policy: unchanged",
        "lifecycle: unchanged",
        "cors: unchanged",
    ]

    status, headers, body = http(url)
    assert (status, body) == (200, b"pointer") and headers["Content-Type"] == "text/plain; charset=us-ascii"
    assert http(url, headers={"Range": "bytes=0-2"})[:3:2] == (206, b"poi")
    assert http(url, method="PUT", data=b"evil")[0] == 403
    assert http(join_url(s3_server.public_url(bucket), "new-key"), method="PUT", data=b"evil")[0] == 403
    assert http(url, method="DELETE")[0] == 403
    assert http(s3_server.public_url(bucket) + "?list-type=2")[0] == 403
    assert http(url)[2] == b"pointer"

    policy = json.loads(client.get_bucket_policy(Bucket=bucket)["Policy"])
    assert [s["Action"] for s in policy["Statement"]] in (["s3:GetObject"], [["s3:GetObject"]])
    rules = client.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    assert [r["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"] for r in rules] == [1]
    cors = client.get_bucket_cors(Bucket=bucket)["CORSRules"]
    assert sorted(cors[0]["AllowedMethods"]) == ["GET", "HEAD"]


def test_endpoint_from_environment_and_create_bucket(s3_server: SeaweedServer) -> None:
    bucket = new_bucket_name()
    env = {**s3_server.env(), "MIRRORSEED_S3_ENDPOINT_URL": s3_server.endpoint}
    missing = run_cli("infra.bootstrap", "--dest", f"s3://{bucket}/mirror", env=env)
    assert missing.returncode == 5
    assert missing.stderr.strip() == (
        f"StorageError: s3://{bucket}: the bucket does not exist at {s3_server.endpoint}; "
        "create it or run invoke infra.bootstrap --create-bucket"
    )
    created = run_cli("infra.bootstrap", "--dest", f"s3://{bucket}/mirror", "--create-bucket", env=env)
    assert created.returncode == 0, created.stderr
    assert "bucket: created" in created.stdout.splitlines()
    assert f"policy: applied (anonymous s3:GetObject on arn:aws:s3:::{bucket}/mirror/*)" in created.stdout

    client = s3_server.client()
    for key in ("mirror/latest.asc", "outside.txt"):
        client.put_object(Bucket=bucket, Key=key, Body=b"x", ContentType="text/plain")
    base = s3_server.public_url(bucket)
    assert http(join_url(base, "mirror/latest.asc"))[0] == 200
    assert http(join_url(base, "outside.txt"))[0] == 403, "the policy opens only the destination's prefix"

    again = run_cli("infra.bootstrap", "--dest", f"s3://{bucket}/mirror", "--create-bucket", env=env)
    assert again.returncode == 0 and "bucket: exists" in again.stdout.splitlines()


def test_bootstrap_keeps_the_buckets_other_rules(s3_server: SeaweedServer, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    bucket = s3_server.make_bucket(new_bucket_name(), public_read=False)
    client = s3_server.client()
    other_statement = {
        "Sid": "OperatorReadsLogs",
        "Effect": "Allow",
        "Principal": {"AWS": ["arn:aws:iam::123456789012:user/ops"]},
        "Action": ["s3:GetObject"],
        "Resource": [f"arn:aws:s3:::{bucket}/logs/*"],
    }
    client.put_bucket_policy(
        Bucket=bucket, Policy=json.dumps({"Version": "2012-10-17", "Statement": [other_statement]})
    )
    other_rule = {"ID": "expire-logs", "Status": "Enabled", "Filter": {"Prefix": "logs/"}, "Expiration": {"Days": 30}}
    client.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": [other_rule]})
    settings = Settings(dest=f"s3://{bucket}", s3_endpoint_url=s3_server.endpoint, s3_max_attempts=2)

    report = bootstrap(settings.dest, s3_config(settings), infra_dir=INFRA)
    assert [report.outcome(n) for n in ("bucket", "policy", "lifecycle", "cors")] == [
        "exists",
        "applied",
        "applied",
        "applied",
    ]
    assert "kept 1 other(s) of the bucket" in report.lines()[2]
    rule_ids = sorted(r["ID"] for r in client.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"])
    assert rule_ids == ["abort-incomplete-multipart-uploads", "expire-logs"]
    sids = sorted(s.get("Sid", "") for s in json.loads(client.get_bucket_policy(Bucket=bucket)["Policy"])["Statement"])
    assert sids == ["OperatorReadsLogs", "PublicReadObjects"]

    again = bootstrap(settings.dest, s3_config(settings), infra_dir=INFRA)
    assert [step.outcome for step in again.steps] == ["exists", "unchanged", "unchanged", "unchanged"]


def test_bootstrap_warns_about_wider_public_grants(s3_server: SeaweedServer, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    bucket = s3_server.make_bucket(new_bucket_name(), public_read=False)
    wide = {"Sid": "Oops", "Effect": "Allow", "Principal": "*", "Action": ["s3:ListBucket"]}
    wide["Resource"] = [f"arn:aws:s3:::{bucket}"]
    s3_server.client().put_bucket_policy(
        Bucket=bucket, Policy=json.dumps({"Version": "2012-10-17", "Statement": [wide]})
    )
    report = bootstrap(f"s3://{bucket}", s3_config(Settings(s3_endpoint_url=s3_server.endpoint)), infra_dir=INFRA)
    assert "WARNING: other statements of the bucket policy grant s3:ListBucket to everyone" in report.lines()[2]


def test_bootstrap_refuses_non_s3_dest_and_a_wrong_secret(s3_server: SeaweedServer) -> None:
    local = run_cli("infra.bootstrap", "--dest", "./public", env=s3_server.env())
    assert local.returncode == 2 and local.stderr.startswith("ConfigError: dest: './public' is not an S3 destination")

    bucket = s3_server.make_bucket(new_bucket_name(), public_read=False)
    env = {**s3_server.env(), "AWS_SECRET_ACCESS_KEY": "wrong-secret"}
    denied = run_cli("infra.bootstrap", "--dest", f"s3://{bucket}", "--s3-endpoint-url", s3_server.endpoint, env=env)
    assert denied.returncode == 5, denied.stderr
    message = denied.stderr.strip()
    assert "\n" not in message and "wrong-secret" not in message
    assert "check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or s3_profile" in message
    with pytest.raises(ClientError):
        s3_server.client().get_bucket_policy(Bucket=bucket)  # nothing was applied
