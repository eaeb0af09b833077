"""pipeline.infra without a server: the policy template's guard, merging, and stores that reject a rule
(botocore's Stubber scripts the S3 answers)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.stub import Stubber

from pipeline.config import Settings, s3_config
from pipeline.errors import ConfigError, StorageError
from pipeline.infra import UNSUPPORTED, bootstrap, policy_for
from pipeline.storage.s3 import S3Storage, make_client

INFRA = Path(__file__).resolve().parents[2] / "infra"


def template() -> Any:
    return json.loads((INFRA / "bucket-policy.json").read_text())


def test_policy_for_scopes_the_template_to_bucket_and_prefix() -> None:
    assert policy_for(template(), "webseed", "")["Statement"][0]["Resource"] == "arn:aws:s3:::webseed/*"
    assert policy_for(template(), "webseed", "a/b")["Statement"][0]["Resource"] == "arn:aws:s3:::webseed/a/b/*"


@pytest.mark.parametrize(
    "statement",
    [
        {"Effect": "Allow", "Principal": "*", "Action": ["s3:GetObject", "s3:PutObject"], "Resource": "x"},
        {"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "s3:ListBucket", "Resource": "x"},
        {"Effect": "Allow", "Principal": {"AWS": ["*"]}, "Action": "s3:*", "Resource": "x"},
    ],
)
def test_policy_for_refuses_wider_public_grants(statement: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="only s3:GetObject may be public"):
        policy_for({"Version": "2012-10-17", "Statement": [statement]}, "webseed", "")


def test_policy_for_allows_grants_to_named_principals() -> None:
    statement = {"Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::1:user/ci"}, "Action": "s3:PutObject"}
    policy_for({"Version": "2012-10-17", "Statement": [statement]}, "webseed", "")


@pytest.fixture
def stubbed(monkeypatch: pytest.MonkeyPatch) -> Iterator[Stubber]:
    for name, value in {
        "AWS_ACCESS_KEY_ID": "k",
        "AWS_SECRET_ACCESS_KEY": "s",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
    }.items():
        monkeypatch.setenv(name, value)
    settings = Settings(s3_endpoint_url="http://127.0.0.1:9", s3_max_attempts=1)
    client = make_client(s3_config(settings))
    storage = S3Storage(client, "webseed", "")
    monkeypatch.setattr(S3Storage, "from_url", classmethod(lambda cls, url, s3: storage))
    with Stubber(client) as stubber:
        yield stubber
        stubber.assert_no_pending_responses()


def test_rules_the_store_rejects_are_reported_not_fatal(stubbed: Stubber) -> None:
    policy = policy_for(template(), "webseed", "")
    stubbed.add_response("head_bucket", {})
    stubbed.add_response("get_bucket_policy", {"Policy": json.dumps(policy)})
    stubbed.add_response("get_bucket_policy", {"Policy": json.dumps(policy)})  # wider-grants check
    stubbed.add_client_error("get_bucket_lifecycle_configuration", "NotImplemented", http_status_code=501)
    stubbed.add_client_error("get_bucket_cors", "NoSuchCORSConfiguration", http_status_code=404)
    stubbed.add_client_error("put_bucket_cors", "MalformedXML", http_status_code=400)
    report = bootstrap("s3://webseed", s3_config(Settings()), infra_dir=INFRA)
    assert report.lines()[1:] == [
        "bucket: exists",
        "policy: unchanged (anonymous s3:GetObject on arn:aws:s3:::webseed/*)",
        f"lifecycle: {UNSUPPORTED} (NotImplemented on read; abort incomplete multipart uploads after 1 day(s) "
        "not applied)",
        f"cors: {UNSUPPORTED} (MalformedXML; GET/HEAD from any origin not applied)",
    ]


def test_a_store_that_accepts_but_does_not_report_back(stubbed: Stubber) -> None:
    stubbed.add_response("head_bucket", {})
    stubbed.add_client_error("get_bucket_policy", "NotImplemented", http_status_code=501)
    stubbed.add_response("get_bucket_lifecycle_configuration", {"Rules": []})
    stubbed.add_response("put_bucket_lifecycle_configuration", {})
    stubbed.add_response("get_bucket_lifecycle_configuration", {"Rules": []})
    stubbed.add_client_error("get_bucket_cors", "NoSuchCORSConfiguration", http_status_code=404)
    stubbed.add_response("put_bucket_cors", {})
    stubbed.add_response("get_bucket_cors", {"CORSRules": json.loads((INFRA / "cors.json").read_text())["CORSRules"]})
    report = bootstrap("s3://webseed", s3_config(Settings()), infra_dir=INFRA)
    assert report.outcome("policy") == UNSUPPORTED
    assert report.lines()[3].endswith("the store accepted it but does not report it back)")
    assert report.lines()[4] == "cors: applied (GET/HEAD from any origin)"


def test_public_policy_blocked_by_the_account(stubbed: Stubber) -> None:
    stubbed.add_response("head_bucket", {})
    stubbed.add_client_error("get_bucket_policy", "NoSuchBucketPolicy", http_status_code=404)
    stubbed.add_client_error("put_bucket_policy", "AccessDenied", http_status_code=403)
    with pytest.raises(StorageError, match="Block Public Access"):
        bootstrap("s3://webseed", s3_config(Settings()), infra_dir=INFRA)


def test_bad_infra_file_is_reported_before_anything_is_written(stubbed: Stubber, tmp_path: Path) -> None:
    for name in ("bucket-policy.json", "lifecycle.json"):
        (tmp_path / name).write_text((INFRA / name).read_text())
    (tmp_path / "cors.json").write_text("{not json")
    with pytest.raises(ConfigError, match="cors.json: not readable JSON"):
        bootstrap("s3://webseed", s3_config(Settings()), infra_dir=tmp_path)
