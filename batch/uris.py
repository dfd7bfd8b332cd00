"""URIs -> (pyarrow filesystem, path): local paths, ``file://``, and ``s3://`` on AWS or any endpoint.

S3 settings come, highest first, from the URI itself (``s3://anonymous@bucket/...``,
``?endpoint_override=host:port&scheme=http&region=...``), then ``S3Options``, then the usual AWS
environment variables (AWS_ENDPOINT_URL[_S3], AWS_REGION / AWS_DEFAULT_REGION,
AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN).

With no keys given anywhere, pyarrow's S3FileSystem falls back to the AWS SDK's default chain
(``~/.aws/credentials`` and ``~/.aws/config``, AWS_PROFILE, then instance metadata) - the way to
prefer over key flags, which show up in process listings and shell history.

Secrets are ``SecretStr``: unwrapped only in ``s3_filesystem_kwargs``, the arguments of the
filesystem constructor. Validation errors of these models never carry their input values, and
a URI is shown (errors, logs, summaries) only through ``redact_uri``.

An S3 key with ``.``, ``..`` or empty segments is refused: S3 keeps them literally, so
``s3://b/x/../in`` is not ``s3://b/in`` to S3, yet reads as that to a person (and to any prefix
check done on normalised paths).

``parse_uri`` and ``s3_filesystem_kwargs`` are pure (no network), so URI handling is unit-tested
without a reachable S3.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Literal, Mapping
from urllib.parse import parse_qs, parse_qsl, urlsplit, urlunsplit

import pyarrow.fs as pafs
from pydantic import ConfigDict, SecretStr, model_validator

from shared.config import StrictModel

DEFAULT_NON_AWS_REGION = "us-east-1"  # custom endpoints (MinIO, moto, ...) still need a region set
_QUERY_KEYS = ("endpoint_override", "scheme", "region")


class S3Options(StrictModel):
    """S3 connection settings; any field left unset falls back to the AWS environment variables."""

    model_config = ConfigDict(hide_input_in_errors=True)  # the input holds the secret key

    endpoint_override: str | None = None  # "host:port" or "http://host:port"
    scheme: Literal["http", "https"] | None = None
    region: str | None = None
    anonymous: bool = False
    access_key: str | None = None
    secret_key: SecretStr | None = None
    session_token: SecretStr | None = None

    @model_validator(mode="after")
    def _consistent(self) -> "S3Options":
        if (self.access_key is None) != (self.secret_key is None):
            raise ValueError("give both access_key and secret_key, or neither")
        if self.anonymous and self.access_key is not None:
            raise ValueError("anonymous access and an access key exclude each other")
        return self

    def with_env(self, env: Mapping[str, str] | None = None) -> "S3Options":
        """A copy with unset fields filled from the AWS environment variables."""
        env = os.environ if env is None else env
        updates: dict = {}
        endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
        if self.endpoint_override is None and endpoint:
            updates["endpoint_override"] = endpoint
        region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
        if self.region is None and region:
            updates["region"] = region
        if self.access_key is None and not self.anonymous and env.get("AWS_ACCESS_KEY_ID"):
            updates["access_key"] = env["AWS_ACCESS_KEY_ID"]
            updates["secret_key"] = env.get("AWS_SECRET_ACCESS_KEY")
            updates["session_token"] = self.session_token or env.get("AWS_SESSION_TOKEN")
        return self.model_validate({**self.model_dump(), **updates}) if updates else self


@dataclass(frozen=True)
class Location:
    """A parsed URI: ``path`` is what the filesystem understands ("bucket/key" for S3)."""

    scheme: Literal["local", "s3"]
    path: str
    anonymous: bool = False
    query: dict[str, str] = field(default_factory=dict)

    @property
    def bucket(self) -> str | None:
        return self.path.split("/", 1)[0] if self.scheme == "s3" else None

    def uri_for(self, path: str) -> str:
        """The full URI of a path on this filesystem (what the ``path`` output column holds)."""
        return f"s3://{path}" if self.scheme == "s3" else path


@dataclass(frozen=True)
class Resolved:
    filesystem: pafs.FileSystem
    location: Location

    @property
    def path(self) -> str:
        return self.location.path

    def uri_for(self, path: str) -> str:
        return self.location.uri_for(path)


def parse_uri(uri: str) -> Location:
    """Split a URI into scheme, filesystem path and the S3 flags it carries. No I/O.

    Error messages show the URI through ``redact_uri`` only."""
    if not uri or not uri.strip():
        raise ValueError("empty URI")
    shown = redact_uri(uri)
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if scheme in ("s3", "s3a"):
        user, _, bucket = parts.netloc.rpartition("@")
        if not bucket:
            raise ValueError(f"S3 URI without a bucket: {shown!r}")
        if user and user != "anonymous":
            raise ValueError(
                f"only 'anonymous@' may precede the bucket in an S3 URI ({shown!r}); pass keys through the "
                "AWS environment variables or ~/.aws/credentials, not in a URI"
            )
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        unknown = set(query) - set(_QUERY_KEYS)
        if unknown:
            raise ValueError(f"unknown S3 URI parameters {sorted(unknown)}; known: {list(_QUERY_KEYS)}")
        key = parts.path.strip("/")
        if key and any(segment in ("", ".", "..") for segment in key.split("/")):
            raise ValueError(
                f"S3 key with an empty, '.' or '..' segment in {shown!r}: "
                "S3 does not resolve them; spell the key plainly"
            )
        path = f"{bucket}/{key}".rstrip("/")
        return Location("s3", path, anonymous=user == "anonymous", query=query)
    if scheme in ("", "file", "local"):
        if scheme and parts.netloc not in ("", "localhost"):
            host = parts.netloc.rpartition("@")[2]
            raise ValueError(f"{shown!r} names host {host!r}; write file:///absolute/path or a plain path")
        raw = parts.path if scheme else uri
        return Location("local", os.path.abspath(os.path.expanduser(raw)))
    raise ValueError(f"unsupported URI scheme {parts.scheme!r}; use s3://, file:// or a local path")


def redact_uri(uri: str) -> str:
    """``uri`` fit for errors and logs: user-info other than ``anonymous`` becomes ``***``, and so
    do the values of query parameters twinfer does not know. A plain local path is left as is."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return "<unparsable URI>"
    if not parts.scheme or len(parts.scheme) == 1:  # a plain path (or a Windows drive letter)
        return uri
    netloc = parts.netloc
    if "@" in netloc:
        user, _, host = netloc.rpartition("@")
        netloc = f"{user if user == 'anonymous' else '***'}@{host}"
    query = "&".join(
        f"{key}={value if key in _QUERY_KEYS else '***'}"
        for key, value in parse_qsl(parts.query, keep_blank_values=True)
    )
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def is_within(inner: Location, outer: Location) -> bool:
    """Whether ``inner`` is ``outer`` or lies below it: on resolved paths locally (symlinks and
    ``..`` followed, as the OS would), on the keys for S3 (``parse_uri`` refused ``..`` there)."""
    if inner.scheme != outer.scheme:
        return False
    if inner.scheme == "local":
        a, b = os.path.realpath(inner.path), os.path.realpath(outer.path)
    else:
        a, b = inner.path, outer.path
    return a == b or a.startswith(b.rstrip("/") + "/")


def s3_filesystem_kwargs(
    location: Location, options: S3Options | None = None, env: Mapping[str, str] | None = None
) -> dict:
    """Keyword arguments for ``pyarrow.fs.S3FileSystem``: URI flags over options over environment."""
    options = (options or S3Options()).with_env(env)
    endpoint = location.query.get("endpoint_override", options.endpoint_override)
    scheme = location.query.get("scheme", options.scheme)
    if endpoint and "://" in endpoint:
        endpoint_scheme, _, endpoint = endpoint.partition("://")
        scheme = scheme or endpoint_scheme
    region = location.query.get("region", options.region)
    if endpoint and not region:
        region = DEFAULT_NON_AWS_REGION
    kwargs: dict = {}
    if endpoint:
        kwargs["endpoint_override"] = endpoint.rstrip("/")
    if scheme:
        kwargs["scheme"] = scheme
    if region:
        kwargs["region"] = region
    if location.anonymous or options.anonymous:
        kwargs["anonymous"] = True
    elif options.access_key:
        kwargs.update(access_key=options.access_key, secret_key=options.secret_key.get_secret_value())
        if options.session_token:
            kwargs["session_token"] = options.session_token.get_secret_value()
    return kwargs


def resolve(uri: str, options: S3Options | None = None) -> Resolved:
    """The filesystem and path for ``uri``. On AWS with no region given, asks S3 for the bucket's."""
    location = parse_uri(uri)
    if location.scheme == "local":
        return Resolved(pafs.LocalFileSystem(), location)
    kwargs = s3_filesystem_kwargs(location, options)
    if "region" not in kwargs and "endpoint_override" not in kwargs:
        kwargs["region"] = _bucket_region(location.bucket)
    return Resolved(pafs.S3FileSystem(**kwargs), location)


def join(base: str, *names: str) -> str:
    return "/".join([base.rstrip("/"), *(n.strip("/") for n in names)])


def _bucket_region(bucket: str) -> str:
    try:
        return pafs.resolve_s3_region(bucket)
    except Exception:  # no network, or no permission to ask: the SDK default region
        return DEFAULT_NON_AWS_REGION
