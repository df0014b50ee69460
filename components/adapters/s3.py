"""The one place that builds a boto3 S3 client, plus the two listing helpers drops and memory need.

Credentials come only from boto3's standard chain (environment, shared config/credentials files, instance
role); nothing here reads, stores or logs them. The endpoint and region follow `S3Config`, then the usual
AWS environment variables, so the same code talks to AWS, MinIO or a local moto server.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import boto3
from botocore.config import Config as BotoConfig

from components.core.config import S3Config

DEFAULT_REGION = "us-east-1"


def s3_endpoint(s3: S3Config | None = None) -> str | None:
    """`s3.endpoint_url`, else AWS_ENDPOINT_URL, else None (boto3's default AWS endpoint)."""
    return (s3.endpoint_url if s3 else None) or os.environ.get("AWS_ENDPOINT_URL") or None


def s3_region(s3: S3Config | None = None) -> str:
    """`s3.region`, else AWS_REGION / AWS_DEFAULT_REGION, else us-east-1."""
    return (
        (s3.region if s3 else None)
        or os.environ.get("AWS_REGION")
        or os.environ.get("AWS_DEFAULT_REGION")
        or DEFAULT_REGION
    )


def s3_client(s3: S3Config | None = None) -> Any:
    """A boto3 S3 client with standard retries; credentials from boto3's own chain only."""
    config = BotoConfig(retries={"max_attempts": 5, "mode": "standard"})
    return boto3.client("s3", endpoint_url=s3_endpoint(s3), region_name=s3_region(s3), config=config)


def split_s3_uri(uri: str) -> tuple[str, str]:
    """'s3://bucket/a/b' -> ('bucket', 'a/b/'); the prefix is '' or ends with '/' so keys join by concatenation."""
    if not uri.startswith("s3://"):
        raise ValueError(f"{uri!r} is not an s3:// location. Write it as s3://bucket/prefix.")
    bucket, _, prefix = uri[len("s3://") :].partition("/")
    if not bucket:
        raise ValueError(f"{uri!r} names no bucket. Write it as s3://bucket/prefix.")
    prefix = prefix.strip("/")
    return bucket, (prefix + "/" if prefix else "")


def list_keys(client: Any, bucket: str, prefix: str) -> Iterator[str]:
    """Every object key under `prefix`, across pages."""
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            yield obj["Key"]


def list_subprefixes(client: Any, bucket: str, prefix: str) -> Iterator[str]:
    """The next path segment of every key under `prefix` that has one more '/' (S3's 'directories')."""
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix, Delimiter="/"):
        for common in page.get("CommonPrefixes", []):
            yield common["Prefix"][len(prefix) :].rstrip("/")


def object_exists(client: Any, bucket: str, key: str) -> bool:
    """True if `key` exists; a missing key is False, any other error (auth, network) raises."""
    try:
        client.head_object(Bucket=bucket, Key=key)
    except client.exceptions.ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return False
        raise
    return True
