"""HTTP plumbing for the ingress: read a capped body, pick out the image bytes, answer JSON."""

from __future__ import annotations

from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request
from starlette.responses import JSONResponse

from shared.errors import BodyTooLarge, EmptyInput, InvalidImage, TwinferError, UnsupportedMediaType

RAW_TYPES = ("application/octet-stream",)


def error_response(error: TwinferError) -> JSONResponse:
    headers = {}
    if error.retry_after_s is not None:
        headers["Retry-After"] = str(error.retry_after_s)
    return JSONResponse({"error": error.to_dict()}, status_code=error.http_status, headers=headers)


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed ``max_bytes``."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise BodyTooLarge(f"body is {declared} bytes; the limit is {max_bytes}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise BodyTooLarge(f"body exceeds the limit of {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def image_bytes(request: Request, max_bytes: int) -> bytes:
    """Raw image body (image/*, application/octet-stream) or the ``file`` field of a multipart form."""
    content_type = request.headers.get("content-type", "application/octet-stream")
    media_type = content_type.split(";", 1)[0].strip().lower()
    if not (media_type.startswith("image/") or media_type in RAW_TYPES or media_type == "multipart/form-data"):
        raise UnsupportedMediaType(
            f"content type {media_type!r} is not accepted; send the image bytes as image/jpeg, image/png, "
            f"image/webp or application/octet-stream, or as the 'file' field of multipart/form-data"
        )
    body = await read_body(request, max_bytes)
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
