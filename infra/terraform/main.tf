# A mirrorseed destination bucket on AWS S3 — the same state `invoke infra.bootstrap` applies from
# ../bucket-policy.json, ../lifecycle.json and ../cors.json, plus the publisher's IAM policy.
# Works with Terraform >= 1.5 or OpenTofu. Example:
#
#   terraform init
#   terraform apply -var bucket_name=my-mirror -var prefix=debian
#   invoke release --dest s3://my-mirror/debian --public-url https://my-mirror.s3.eu-central-1.amazonaws.com/debian ...
#
# An example, not a module: review it before applying (this makes objects under the prefix world-readable).

terraform {
  required_version = ">= 1.5"
  required_providers {
    aws = { source = "hashicorp/aws", version = ">= 5.0" }
  }
}

variable "region" {
  type    = string
  default = "eu-central-1"
}

variable "bucket_name" {
  type        = string
  description = "globally unique bucket name"
}

variable "prefix" {
  type        = string
  default     = ""
  description = "the /prefix of --dest s3://bucket/prefix, without slashes; empty for the whole bucket"
}

provider "aws" {
  region = var.region
}

locals {
  # objects of the destination: arn:aws:s3:::bucket/* or arn:aws:s3:::bucket/prefix/*
  objects_arn = var.prefix == "" ? "${aws_s3_bucket.mirror.arn}/*" : "${aws_s3_bucket.mirror.arn}/${var.prefix}/*"
}

resource "aws_s3_bucket" "mirror" {
  bucket = var.bucket_name
}

# ACLs off: access is decided by policies only (an object ACL can never make anything public).
resource "aws_s3_bucket_ownership_controls" "mirror" {
  bucket = aws_s3_bucket.mirror.id
  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

# Block Public Access would refuse the public-read policy below: allow bucket policies, keep ACLs blocked.
resource "aws_s3_bucket_public_access_block" "mirror" {
  bucket                  = aws_s3_bucket.mirror.id
  block_public_acls       = true
  ignore_public_acls      = true
  block_public_policy     = false
  restrict_public_buckets = false
}

# ../bucket-policy.json: anyone may s3:GetObject (GET, HEAD, Range) under the prefix. Nothing else:
# no ListBucket (no anonymous listing), no writes, no deletes.
data "aws_iam_policy_document" "public_read" {
  statement {
    sid       = "PublicReadObjects"
    effect    = "Allow"
    actions   = ["s3:GetObject"]
    resources = [local.objects_arn]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
  }
}

resource "aws_s3_bucket_policy" "public_read" {
  bucket     = aws_s3_bucket.mirror.id
  policy     = data.aws_iam_policy_document.public_read.json
  depends_on = [aws_s3_bucket_public_access_block.mirror]
}

# ../lifecycle.json: a killed upload leaves invisible, billed multipart parts; abort them after 1 day.
# No expiration rule: deleting old indexes and torrents is mirrorseed's retention, after the pointer commit.
resource "aws_s3_bucket_lifecycle_configuration" "mirror" {
  bucket = aws_s3_bucket.mirror.id
  rule {
    id     = "abort-incomplete-multipart-uploads"
    status = "Enabled"
    filter {
      prefix = ""
    }
    abort_incomplete_multipart_upload {
      days_after_initiation = 1
    }
  }
}

# ../cors.json: browsers and web clients may GET/HEAD (with Range) from any origin.
resource "aws_s3_bucket_cors_configuration" "mirror" {
  bucket = aws_s3_bucket.mirror.id
  cors_rule {
    id              = "public-read"
    allowed_origins = ["*"]
    allowed_methods = ["GET", "HEAD"]
    allowed_headers = ["Range", "If-None-Match", "If-Modified-Since"]
    expose_headers  = ["Content-Length", "Content-Range", "Accept-Ranges", "ETag", "Last-Modified"]
    max_age_seconds = 3600
  }
}

# The CI publisher (`invoke release`): read, write and delete objects under the prefix, list the bucket
# (limited to the prefix). No bucket-configuration rights: run infra.bootstrap / this file as an admin.
data "aws_iam_policy_document" "publisher" {
  statement {
    sid       = "PublishObjects"
    actions   = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"]
    resources = [local.objects_arn]
  }
  statement {
    sid       = "ListDestination"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.mirror.arn]
    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = var.prefix == "" ? ["*"] : ["${var.prefix}/*", var.prefix]
    }
  }
}

resource "aws_iam_policy" "publisher" {
  name        = "mirrorseed-publisher-${var.bucket_name}"
  description = "mirrorseed release: Put/Get/Delete objects and List in s3://${var.bucket_name}/${var.prefix}"
  policy      = data.aws_iam_policy_document.publisher.json
}

# Attach the policy to the CI identity. Prefer a role assumed through the CI's OIDC provider (no
# long-lived keys); a user with access keys is shown because it works everywhere. Its keys go to the CI's
# secret store as AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, never into mirror.toml.
resource "aws_iam_user" "publisher" {
  name = "mirrorseed-ci-${var.bucket_name}"
}

resource "aws_iam_user_policy_attachment" "publisher" {
  user       = aws_iam_user.publisher.name
  policy_arn = aws_iam_policy.publisher.arn
}

output "dest" {
  value = var.prefix == "" ? "s3://${var.bucket_name}" : "s3://${var.bucket_name}/${var.prefix}"
}

output "public_url" {
  value = "https://${aws_s3_bucket.mirror.bucket_regional_domain_name}${var.prefix == "" ? "" : "/${var.prefix}"}"
}
