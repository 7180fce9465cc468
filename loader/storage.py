"""One way to reach files, local or on S3: a pyarrow FileSystem plus the path inside it, and the
translation of object-store errors (pyarrow's and deltalake's) into the loader's transient/terminal ones."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

import pyarrow.fs as pafs

from loader.config import is_remote
from loader.errors import BadSourceData, LoaderError, SinkRejected, SinkUnavailable, SourceUnavailable

# Fault budgets of the drivers' own retries. They absorb a dropped connection or two inside one request;
# a longer outage must reach the loader's tenacity layer (bounded, logged) within seconds, and an endpoint
# that is down must fail a run in seconds, not after minutes of silent retries.
S3_CONNECT_TIMEOUT_S = 3.0
S3_REQUEST_TIMEOUT_S = 30.0  # pyarrow honours it on Windows and macOS only
S3_DRIVER_ATTEMPTS = 4  # pyarrow: about 2 s of backoff in all when the endpoint refuses every try


@dataclass(frozen=True)
class Location:
    filesystem: pafs.FileSystem
    path: str  # inside `filesystem`: no scheme
    uri: str  # what the user wrote, for messages

    def child(self, *parts: str) -> Location:
        joined = "/".join([self.path.rstrip("/"), *parts])
        return Location(self.filesystem, joined, "/".join([self.uri.rstrip("/"), *parts]))


def s3_endpoint() -> str | None:
    """The S3 endpoint from the environment (emulators, MinIO), or None for AWS itself."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def s3_filesystem() -> pafs.S3FileSystem:
    """S3 from the environment: AWS_ENDPOINT_URL for emulators, credentials from the default chain
    (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, profile, role). Buckets are never created: a missing
    bucket is a configuration mistake (a typo would otherwise create a new, empty warehouse)."""
    options: dict = {
        "region": os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
        "connect_timeout": S3_CONNECT_TIMEOUT_S,
        "request_timeout": S3_REQUEST_TIMEOUT_S,
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=S3_DRIVER_ATTEMPTS),
        "allow_bucket_creation": False,
    }
    endpoint = s3_endpoint()
    if endpoint:
        parsed = urlparse(endpoint)
        options["endpoint_override"] = parsed.netloc or parsed.path
        options["scheme"] = parsed.scheme or "http"
    return pafs.S3FileSystem(**options)


def locate(uri: str) -> Location:
    if uri.startswith("s3://"):
        return Location(s3_filesystem(), uri[len("s3://"):], uri)
    if is_remote(uri):
        filesystem, path = pafs.FileSystem.from_uri(uri)
        return Location(filesystem, path, uri)
    return Location(pafs.LocalFileSystem(), os.path.abspath(uri), uri)


def unwritable(folder: Path) -> Path | None:
    """None when the local `folder` can be written, or made, here; else the path in the way (the
    nearest existing ancestor: a file, or a folder without write permission)."""
    existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if existing is None or not existing.is_dir() or not os.access(existing, os.W_OK):
        return existing or folder
    return None


# --- Object-store errors -------------------------------------------------------------------------------

Fault = Literal["denied", "no_bucket", "transient"]

# pyarrow: "AWS Error ACCESS_DENIED during HeadObject operation"; deltalake (object_store): "The operation
# lacked the necessary privileges" / "403 Forbidden" / "<Code>SignatureDoesNotMatch</Code>".
_DENIED = re.compile(
    r"ACCESS_DENIED|SIGNATURE_DOES_NOT_MATCH|INVALID_ACCESS_KEY_ID|INVALID_CLIENT_TOKEN_ID"
    r"|UNRECOGNIZED_CLIENT"
    r"|MISSING_AUTHENTICATION_TOKEN|EXPIRED_TOKEN|AccessDenied|SignatureDoesNotMatch|InvalidAccessKeyId"
    r"|InvalidToken|ExpiredToken|lacked the necessary privileges|lacked valid authentication|403 Forbidden"
)
# pyarrow: "AWS Error NO_SUCH_BUCKET", or "Bucket 'b' not found" when creating a folder; object_store:
# "<Code>NoSuchBucket</Code>".
_NO_BUCKET = re.compile(r"NO_SUCH_BUCKET|NoSuchBucket|Bucket '[^']*' not found"
                        r"|RESOURCE_NOT_FOUND during HeadBucket")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def s3_fault(error: BaseException) -> Fault:
    """What an object-store error means for a retry. Refused credentials and missing buckets cannot
    heal by themselves; everything else (refused or reset connections, timeouts, 5xx, throttling) may."""
    text = str(error)
    if _NO_BUCKET.search(text):
        return "no_bucket"
    if _DENIED.search(text):
        return "denied"
    return "transient"


def _bucket(uri: str) -> str:
    return uri[len("s3://"):].split("/", 1)[0] if uri.startswith("s3://") else ""


def _where(uri: str) -> str:
    if not uri.startswith("s3://"):
        return uri
    endpoint = s3_endpoint()
    return f"{uri} (endpoint {endpoint})" if endpoint else f"{uri} (AWS S3)"


def short_error(error: BaseException, limit: int = 400) -> str:
    """A driver error on one line: deltalake's are multi-line, indented and coloured."""
    text = _ANSI.sub("", str(error))
    text = re.sub(r"\s*\n\s*(↳\s*)?", " -> ", text).strip(" ->")
    return text if len(text) <= limit else text[:limit] + "..."


def storage_error(error: BaseException, uri: str, *, side: Literal["source", "sink"],
                  doing: str) -> LoaderError:
    """The loader error for a failed object-store call on `uri` (the original stays the cause).

    `doing` says what was attempted ("writing Parquet under"), `side` which phase's error it becomes:
    refused credentials and missing buckets are terminal (SinkRejected / BadSourceData), the rest
    transient (SinkUnavailable / SourceUnavailable). Every message names the location and what to do."""
    fault = s3_fault(error) if uri.startswith("s3://") else "transient"
    where, detail, bucket = _where(uri), short_error(error), _bucket(uri)
    key = "warehouse" if side == "sink" else "landing_zone"
    if fault == "no_bucket":
        message = (
            f"{doing} {where} failed: bucket '{bucket}' does not exist ({detail}). Create the bucket "
            f"or fix `{key}` in the config (and AWS_ENDPOINT_URL), then run again: the run replays"
        )
        return SinkRejected(message) if side == "sink" else BadSourceData(message)
    if fault == "denied":
        message = (
            f"{doing} {where} failed: access to bucket '{bucket}' was denied ({detail}). Check the "
            f"credentials (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE or the role) and that "
            f"they may read and write s3://{bucket}, then run again: the run replays"
        )
        return SinkRejected(message) if side == "sink" else BadSourceData(message)
    message = (
        f"{doing} {where} failed: {detail}. Check that the endpoint is reachable; running again is safe: "
        f"the run replays"
    )
    return SinkUnavailable(message) if side == "sink" else SourceUnavailable(message)
