"""One way to reach files, local or on S3: a pyarrow FileSystem plus the path inside it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import urlparse

import pyarrow.fs as pafs

from loader.config import is_remote


@dataclass(frozen=True)
class Location:
    filesystem: pafs.FileSystem
    path: str  # inside `filesystem`: no scheme
    uri: str  # what the user wrote, for messages

    def child(self, *parts: str) -> Location:
        joined = "/".join([self.path.rstrip("/"), *parts])
        return Location(self.filesystem, joined, "/".join([self.uri.rstrip("/"), *parts]))


def s3_filesystem() -> pafs.S3FileSystem:
    """S3 from the environment: AWS_ENDPOINT_URL for emulators, otherwise the default credential chain."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3")
    if not endpoint:
        return pafs.S3FileSystem(region=os.environ.get("AWS_REGION", "us-east-1"))
    parsed = urlparse(endpoint)
    return pafs.S3FileSystem(
        endpoint_override=parsed.netloc or parsed.path,
        scheme=parsed.scheme or "http",
        region=os.environ.get("AWS_REGION", "us-east-1"),
        allow_bucket_creation=True,
    )


def locate(uri: str) -> Location:
    if uri.startswith("s3://"):
        return Location(s3_filesystem(), uri[len("s3://"):], uri)
    if is_remote(uri):
        filesystem, path = pafs.FileSystem.from_uri(uri)
        return Location(filesystem, path, uri)
    return Location(pafs.LocalFileSystem(), os.path.abspath(uri), uri)
