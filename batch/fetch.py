"""One request per image: the bytes of an input, fetched without a HEAD.

An S3 input is one ``GetObject`` (boto3): its size comes from the manifest, so nothing asks for
it first. botocore retries throttling (SlowDown, 503), 5xx and connection errors itself with
adaptive back-off (``S3_RETRIES`` attempts); a body cut short is fetched again here, with
back-off. What never succeeds is:

* a row-level error for the input itself: ``not_found`` (404 / no such file), ``access_denied``
  (403 / no permission) and ``image_too_large`` (more than ``max_bytes`` arrived);
* ``Transient`` otherwise: the caller writes no row, so a re-run fetches the input again.

At most ``max_bytes + 1`` bytes of an object are read, whatever it holds.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from batch.uris import S3Options, parse_uri, s3_filesystem_kwargs

S3_RETRIES = 8
BODY_ATTEMPTS = 3
NOT_FOUND = "not_found"
ACCESS_DENIED = "access_denied"
_NOT_FOUND_CODES = {"NoSuchKey", "NoSuchBucket", "404", "NotFound"}
_DENIED_CODES = {"AccessDenied", "403", "Forbidden", "AllAccessDisabled", "InvalidObjectState"}


class Transient(Exception):
    """A read that kept failing for a reason that may pass (throttling, 5xx, timeouts)."""


@dataclass(frozen=True)
class Fetched:
    data: bytes | None  # None with an error
    error: str | None = None
    message: str | None = None


class Fetcher:
    """Reads inputs by URI: ``s3://bucket/key`` through boto3, anything else from the local disk.
    Picklable (the client is built lazily, once per process)."""

    def __init__(self, s3: S3Options | None, max_bytes: int, threads: int = 16, base_uri: str | None = None):
        """``base_uri``: the input's URI, whose S3 flags (``?endpoint_override=...``) apply to every key."""
        self.s3 = s3 or S3Options()
        self.base_uri = base_uri if base_uri and base_uri.startswith(("s3://", "s3a://")) else None
        self.max_bytes = max_bytes
        self.threads = threads
        self._client = None
        self._lock = threading.Lock()

    def __getstate__(self):
        return {"s3": self.s3, "max_bytes": self.max_bytes, "threads": self.threads, "base_uri": self.base_uri}

    def __setstate__(self, state):
        self.__init__(state["s3"], state["max_bytes"], state["threads"], state["base_uri"])

    def fetch(self, uri: str) -> Fetched:
        if uri.startswith("s3://"):
            return self._s3(uri)
        return self._local(uri)

    def _local(self, path: str) -> Fetched:
        try:
            with open(path, "rb") as handle:
                data = handle.read(self.max_bytes + 1)
        except FileNotFoundError as exc:
            return Fetched(None, NOT_FOUND, f"no such file ({exc.strerror})")
        except (PermissionError, IsADirectoryError) as exc:
            return Fetched(None, ACCESS_DENIED, f"cannot read the file ({exc.strerror})")
        except OSError as exc:
            raise Transient(f"{type(exc).__name__}: {exc}") from exc
        return self._sized(data)

    def _s3(self, uri: str) -> Fetched:
        from botocore.exceptions import ClientError

        bucket, _, key = uri[len("s3://") :].partition("/")
        last: Exception | None = None
        for attempt in range(BODY_ATTEMPTS):
            try:
                response = self.client(uri).get_object(Bucket=bucket, Key=key)
                body = response["Body"]
                try:
                    return self._sized(body.read(self.max_bytes + 1))
                finally:
                    body.close()
            except ClientError as exc:
                error = exc.response.get("Error", {})
                code = str(error.get("Code", ""))
                status = str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
                if code in _NOT_FOUND_CODES or status == "404":
                    return Fetched(None, NOT_FOUND, f"S3 answered {code or status}: no such object")
                if code in _DENIED_CODES or status == "403":
                    return Fetched(None, ACCESS_DENIED, f"S3 answered {code or status}: access denied")
                raise Transient(f"S3 {code or status} after {S3_RETRIES} attempts") from exc  # botocore retried
            except Exception as exc:  # the body cut short, a timeout after the retries: once more
                last = exc
                time.sleep(min(0.2 * 2**attempt, 5.0))
        raise Transient(f"{type(last).__name__}: {last}") from last

    def _sized(self, data: bytes) -> Fetched:
        if len(data) > self.max_bytes:
            return Fetched(
                None, "image_too_large", f"file is over the {self.max_bytes}-byte cap (model.decode.max_bytes)"
            )
        return Fetched(data)

    def client(self, uri: str):
        with self._lock:
            if self._client is None:
                self._client = s3_client(self.s3, self.base_uri or uri, self.threads)
            return self._client


def s3_client(options: S3Options, uri: str, pool: int = 16):
    """A boto3 S3 client with the settings ``batch.uris`` gives pyarrow (URI flags, options, env)."""
    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config

    kwargs = s3_filesystem_kwargs(parse_uri(uri), options)
    config = Config(
        retries={"max_attempts": S3_RETRIES, "mode": "adaptive"},
        connect_timeout=10,
        read_timeout=60,
        max_pool_connections=max(pool, 10),
        signature_version=UNSIGNED if kwargs.get("anonymous") else None,
    )
    endpoint = kwargs.get("endpoint_override")
    if endpoint:
        endpoint = f"{kwargs.get('scheme', 'https')}://{endpoint}"
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        region_name=kwargs.get("region"),
        aws_access_key_id=kwargs.get("access_key"),
        aws_secret_access_key=kwargs.get("secret_key"),
        aws_session_token=kwargs.get("session_token"),
        config=config,
    )
