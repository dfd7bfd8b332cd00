"""HTTP plumbing for the ingress: read a capped body within the replica's byte budget, pick out the
image bytes, check API keys, answer JSON."""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path

from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse

from deployments.admission import BodyHold
from deployments.config import IngressConfig
from shared.errors import (
    BodyTooLarge,
    ClientDisconnected,
    EmptyInput,
    InvalidImage,
    InvalidRequest,
    TwinferError,
    Unauthorized,
    UnsupportedMediaType,
)

RAW_TYPES = ("application/octet-stream",)

MIN_KEY_LENGTH = 16


def error_headers(error: TwinferError) -> dict[str, str]:
    """Retry-After for the errors that say when to come back; the challenge for a missing key."""
    headers = {}
    if error.retry_after_s is not None:
        headers["Retry-After"] = str(error.retry_after_s)
    if isinstance(error, Unauthorized):
        headers["WWW-Authenticate"] = 'Bearer realm="twinfer"'
    return headers


def error_response(error: TwinferError) -> JSONResponse:
    return JSONResponse({"error": error.to_dict()}, status_code=error.http_status, headers=error_headers(error))


def load_api_keys(settings: IngressConfig) -> tuple[bytes, ...]:
    """The API keys from ``api_keys_env`` and/or ``api_keys_file`` (both: their union); () when neither is set.

    Each source that is set must exist and hold at least one key, or the replica refuses to start:
    a typo must not silently serve without keys. Messages never contain a key.
    """
    keys: list[str] = []
    if settings.api_keys_env is not None:
        value = os.environ.get(settings.api_keys_env)
        if value is None:
            raise ValueError(
                f"ingress.api_keys_env: environment variable {settings.api_keys_env} is not set in the ingress "
                f"replica's environment (export it where `ray start` / `serve run` runs)"
            )
        found = [k.strip() for k in value.split(",") if k.strip()]
        if not found:
            raise ValueError(f"ingress.api_keys_env: environment variable {settings.api_keys_env} holds no key")
        keys += found
    if settings.api_keys_file is not None:
        path = Path(settings.api_keys_file).expanduser()
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise ValueError(f"ingress.api_keys_file: cannot read {path}: {exc.strerror or exc}") from None
        found = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
        if not found:
            raise ValueError(f"ingress.api_keys_file: {path} holds no key (one per line; '#' starts a comment)")
        keys += found
    for number, key in enumerate(keys, 1):
        if len(key) < MIN_KEY_LENGTH or any(c.isspace() or not c.isprintable() for c in key):
            raise ValueError(
                f"API key #{number} is shorter than {MIN_KEY_LENGTH} characters or holds whitespace/control "
                f"characters; generate keys with e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
            )
    # digests: compare_digest then always compares equal lengths, so timing tells nothing about a key's length
    return tuple(hashlib.sha256(key.encode()).digest() for key in dict.fromkeys(keys))


def check_bearer(authorization: str, key_digests: tuple[bytes, ...]) -> None:
    """Raise ``Unauthorized`` unless the ``Authorization`` header's value is ``Bearer <key>`` for one of the keys."""
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("this API needs an API key: send the header 'Authorization: Bearer <key>'")
    presented = hashlib.sha256(token.encode()).digest()
    match = False
    for digest in key_digests:  # every key, no early exit: the time taken does not depend on which key matched
        match |= hmac.compare_digest(presented, digest)
    if not match:
        raise Unauthorized("the API key is not valid")


async def read_body(request: Request, max_bytes: int, hold: BodyHold) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed ``max_bytes``. Its bytes
    are reserved in ``hold`` (the replica's byte budget) before they are read: the declared length
    at once, a body without one as it arrives. A client that goes away mid-body is
    ``ClientDisconnected``."""
    declared = request.headers.get("content-length")
    if declared is not None:
        declared = declared.strip()
        if not declared.isdigit() or len(declared) > 19:
            raise InvalidRequest(f"Content-Length {declared[:40]!r} is not a length")
        if int(declared) > max_bytes:
            raise BodyTooLarge(f"body is {declared} bytes; the limit is {max_bytes}")
        hold.grow(int(declared))
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_bytes:
                raise BodyTooLarge(f"body exceeds the limit of {max_bytes} bytes")
            if size > hold.size:
                hold.grow(size - hold.size)
            chunks.append(chunk)
    except ClientDisconnect:
        raise ClientDisconnected(f"the client closed the connection after {size} bytes of its body") from None
    return b"".join(chunks)


async def image_bytes(request: Request, max_bytes: int, hold: BodyHold) -> bytes:
    """Raw image body (image/*, application/octet-stream) or the ``file`` field of a multipart form."""
    content_type = request.headers.get("content-type", "application/octet-stream")
    media_type = content_type.split(";", 1)[0].strip().lower()
    if not (media_type.startswith("image/") or media_type in RAW_TYPES or media_type == "multipart/form-data"):
        raise UnsupportedMediaType(
            f"content type {media_type!r} is not accepted; send the image bytes as image/jpeg, image/png, "
            f"image/webp or application/octet-stream, or as the 'file' field of multipart/form-data"
        )
    body = await read_body(request, max_bytes, hold)
    if media_type != "multipart/form-data":
        if not body:
            raise EmptyInput("empty body: send the image bytes")
        return body
    return await _multipart_file(request, body)


async def _multipart_file(request: Request, body: bytes) -> bytes:
    async def stream():
        yield body

    try:
        form = await MultiPartParser(request.headers, stream(), max_files=1, max_fields=16).parse()
    except MultiPartException as exc:
        raise InvalidImage(f"malformed multipart body: {exc.message}") from None
    upload = form.get("file")
    if upload is None or isinstance(upload, str):
        raise EmptyInput("multipart body has no 'file' field holding the image")
    data = await upload.read()
    if not data:
        raise EmptyInput("the 'file' field is empty")
    return data
