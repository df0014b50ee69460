"""The one place that builds a boto3 S3 client, plus the two listing helpers drops and memory need.

Credentials come only from boto3's standard chain (environment, shared config/credentials files, instance
role); nothing here reads, stores or logs them. The endpoint and region follow `S3Config`, then the usual
AWS environment variables, so the same code talks to AWS, MinIO or a local moto server.

Faults: every client retries through botocore's own retry modes (`s3.retry_mode`, `s3.max_attempts`), so a
restarting endpoint is ridden out without hand-made loops. What still fails becomes `S3Unavailable`, one line that
names the endpoint or bucket and the fix, instead of a botocore traceback.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import boto3
from botocore.config import Config as BotoConfig
from botocore.exceptions import ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError

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


MISSING_BUCKET = ("NoSuchBucket", "404", "NotFound")
DENIED = ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch")


class S3Unavailable(RuntimeError):
    """The S3 endpoint did not answer, or the bucket is missing or refused; the message says which and the fix."""


def s3_client(s3: S3Config | None = None) -> Any:
    """A boto3 S3 client that retries with backoff (`s3.retry_mode`, `s3.max_attempts`); credentials from boto3."""
    s3 = s3 or S3Config()
    config = BotoConfig(retries={"max_attempts": s3.max_attempts, "mode": s3.retry_mode})
    return boto3.client("s3", endpoint_url=s3_endpoint(s3), region_name=s3_region(s3), config=config)


@contextmanager
def explained(bucket: str, s3: S3Config | None = None) -> Iterator[None]:
    """Turn a dead endpoint, a missing bucket or refused credentials into one `S3Unavailable` line."""
    endpoint = s3_endpoint(s3) or "the AWS S3 endpoint"
    try:
        yield
    except (BotoConnectionError, HTTPClientError) as exc:  # refused, reset, timed out: after every retry
        attempts = (s3 or S3Config()).max_attempts
        raise S3Unavailable(
            f"S3 endpoint {endpoint} did not answer ({type(exc).__name__}, {attempts} attempts). Fix: start the S3 "
            "server, or set s3.endpoint_url / AWS_ENDPOINT_URL to the right endpoint (raise s3.max_attempts to wait "
            "longer)."
        ) from None
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in MISSING_BUCKET and exc.operation_name in ("HeadBucket", "ListObjectsV2", "ListObjects"):
            raise S3Unavailable(
                f"bucket {bucket!r} does not exist at {endpoint}. Fix: create it (aws s3 mb s3://{bucket}) or point "
                "memory.uri / the drop location at an existing bucket."
            ) from None
        if code in DENIED:
            raise S3Unavailable(
                f"{endpoint} refused access to bucket {bucket!r} ({code}). Fix: check AWS_ACCESS_KEY_ID / "
                "AWS_SECRET_ACCESS_KEY (or the profile) and the bucket's policy."
            ) from None
        raise


def check_bucket(bucket: str, s3: S3Config | None = None) -> None:
    """Fail fast, in one line, when the endpoint is down or the bucket is missing (with the client's retries)."""
    with explained(bucket, s3):
        s3_client(s3).head_bucket(Bucket=bucket)


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
    for key, _, _ in list_objects(client, bucket, prefix):
        yield key


def list_objects(client: Any, bucket: str, prefix: str) -> Iterator[tuple[str, int, str | None]]:
    """(key, size, ETag) of every object under `prefix`, across pages."""
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            yield obj["Key"], int(obj.get("Size", 0)), obj.get("ETag")


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
