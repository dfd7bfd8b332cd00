"""Typed errors with stable codes: the one error vocabulary of both paths.

Online, ``http_status`` becomes the response status and ``code`` the JSON error code.
Offline, ``code`` fills the ``error`` column of the row and ``str(err)`` the ``error_message``.
"""

from __future__ import annotations


class TwinferError(Exception):
    """Also the answer to any unexpected failure: JSON 500 ``internal`` online, an ``internal`` row offline."""

    code = "internal"
    http_status = 500
    retry_after_s: int | None = None  # online: sent as the Retry-After header when set

    def to_dict(self) -> dict:
        return {"code": self.code, "message": str(self)}


class InvalidImage(TwinferError):
    """Bytes that are not a decodable image: corrupt, truncated, not an image at all."""

    code = "invalid_image"
    http_status = 400


class EmptyInput(InvalidImage):
    code = "empty_input"


class UnsupportedFormat(TwinferError):
    """A real image in a format outside the allow-list (or a content type we do not take)."""

    code = "unsupported_format"
    http_status = 415


class ImageTooLarge(TwinferError):
    """Pixel count over the cap (decompression-bomb guard) or body over the byte cap."""

    code = "image_too_large"
    http_status = 413


class ImageTooComplex(ImageTooLarge):
    """Decoding would cost more than the cap allows (e.g. a progressive JPEG with too many scans),
    decided from the header and markers before any pixel is decoded."""

    code = "image_too_complex"


class ModelNotFound(TwinferError):
    code = "model_not_found"
    http_status = 404


class WrongTask(TwinferError):
    code = "wrong_task"
    http_status = 404


class InvalidParameter(TwinferError):
    code = "invalid_parameter"
    http_status = 422


class Overloaded(TwinferError):
    code = "overloaded"
    http_status = 503
    retry_after_s = 1


class Unavailable(TwinferError):
    """The model's replicas died or could not be reached within the request's deadline."""

    code = "unavailable"
    http_status = 503
    retry_after_s = 5


class InvalidRequest(TwinferError):
    """An Open Inference Protocol (/v2, gRPC) request that does not follow the protocol: malformed
    JSON or binary tensor data, another input than the image tensor, a shape that does not fit."""

    code = "invalid_request"
    http_status = 400


class Unauthorized(TwinferError):
    """API keys are on and the request has no valid ``Authorization: Bearer <key>``."""

    code = "unauthorized"
    http_status = 401


class WeightsUnavailable(TwinferError):
    """Weights could not be found or fetched; the message says how to provide them."""

    code = "weights_unavailable"
    http_status = 500


class UnsupportedMediaType(UnsupportedFormat):
    code = "unsupported_media_type"


class BodyTooLarge(ImageTooLarge):
    code = "body_too_large"


class ClientDisconnected(TwinferError):
    """The client went away before its request was read in full (or answered). Nobody receives
    the answer; it is counted and logged under this code, never as ``internal``. 499 is the
    status Serve's proxy and nginx record for a client that closed its connection."""

    code = "client_disconnected"
    http_status = 499


class NotFound(TwinferError):
    code = "not_found"
    http_status = 404


class MethodNotAllowed(TwinferError):
    code = "method_not_allowed"
    http_status = 405


def for_image(error: TwinferError, index: int) -> TwinferError:
    """The same error (class, code, status), naming which of a request's images it is about."""
    return type(error)(f"image {index}: {error}")
