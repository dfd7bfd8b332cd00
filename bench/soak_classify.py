"""Every answer the soak harness gets, put in one category: documented or a violation.

The documented error codes are read from ``shared.errors`` (every ``TwinferError`` subclass, with
its HTTP status), so this list cannot drift from what the server raises. Goals (the hardening
issue): no 5xx except the documented 503s, every 4xx is the documented JSON.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

OK = "2xx"
DOC_4XX = "4xx documented"
DOC_503 = "503 documented"
PROXY = "proxy answer"  # 408, or any non-JSON 4xx/5xx: Serve's proxy (or uvicorn) answered, not twinfer
BAD_JSON = "undocumented JSON"  # JSON that breaks the contract: unknown code, status mismatch, 5xx, no Retry-After
CONN = "connection error"  # no answer: reset, refused, client timeout
CATEGORIES = (OK, DOC_4XX, DOC_503, PROXY, BAD_JSON, CONN)
VIOLATIONS = (PROXY, BAD_JSON, CONN)
DOCUMENTED_503 = ("overloaded", "unavailable")


@dataclass(frozen=True)
class Verdict:
    category: str
    status: int | None
    code: str | None = None  # the JSON error code, when there is one
    detail: str = ""

    @property
    def violation(self) -> bool:
        return self.category in VIOLATIONS

    @property
    def label(self) -> str:
        """``"413 image_too_large"``, ``"200"``, ``"conn ClientOSError"``: for counting answers."""
        if self.status is None:
            return f"conn {self.detail}".strip()
        return f"{self.status} {self.code}" if self.code else str(self.status)


def error_codes() -> dict[str, int]:
    """code -> HTTP status of every ``TwinferError`` subclass (and ``TwinferError`` itself: ``internal``)."""
    from shared.errors import TwinferError

    codes, stack = {}, [TwinferError]
    while stack:
        cls = stack.pop()
        codes[cls.code] = cls.http_status
        stack.extend(cls.__subclasses__())
    return codes


def classify(
    status: int | None, headers: Mapping[str, str], body: bytes, codes: Mapping[str, int], error: str = ""
) -> Verdict:
    """``status`` None means no answer came (``error`` names why). ``headers`` keys are matched
    case-insensitively."""
    if status is None:
        return Verdict(CONN, None, detail=error)
    payload = _json(body)
    if 200 <= status < 300:
        if isinstance(payload, dict) and "error" not in payload:
            return Verdict(OK, status)
        return Verdict(BAD_JSON, status, detail="2xx whose body is not a JSON result")
    code = _error_code(payload)
    if code is None:
        return Verdict(PROXY, status, detail=_snippet(body))
    if code not in codes:
        return Verdict(BAD_JSON, status, code, "unknown error code")
    if codes[code] != status:
        return Verdict(BAD_JSON, status, code, f"code {code!r} is documented with status {codes[code]}")
    if 400 <= status < 500:
        return Verdict(DOC_4XX, status, code)
    if status == 503 and code in DOCUMENTED_503:
        retry_after = {k.lower(): v for k, v in headers.items()}.get("retry-after", "")
        if retry_after.isdigit():
            return Verdict(DOC_503, status, code)
        return Verdict(BAD_JSON, status, code, "503 without a Retry-After of whole seconds")
    return Verdict(BAD_JSON, status, code, "5xx other than the documented 503s")


def _error_code(payload) -> str | None:
    """The code of /v1's ``{"error": {"code", "message"}}`` or the Open Inference Protocol's
    ``{"error": "<code>: <message>"}``; None for any other body."""
    error = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(error, dict) and isinstance(error.get("code"), str) and isinstance(error.get("message"), str):
        return error["code"]
    if isinstance(error, str) and ": " in error:
        return error.split(": ", 1)[0]
    return None


# gRPC: twinfer's errors are "<code>: <message>" details with the code's status (deployments/v2/
# grpc_service.py); the transport's own refusal of an oversized message is RESOURCE_EXHAUSTED.
GRPC_TRANSPORT_LIMIT = "larger than max"


def classify_grpc(status: str, details: str, codes: Mapping[str, int]) -> Verdict:
    """``status``: a ``grpc.StatusCode`` name ("OK", "INVALID_ARGUMENT"...); ``details`` the call's."""
    if status == "OK":
        return Verdict(OK, 200)
    if status == "RESOURCE_EXHAUSTED" and GRPC_TRANSPORT_LIMIT in details:
        return Verdict(DOC_4XX, 413, "transport_limit", "gRPC RESOURCE_EXHAUSTED")
    code = details.split(": ", 1)[0] if ": " in details else None
    if code not in codes:  # no twinfer error: counted as a 5xx
        return Verdict(BAD_JSON, 500, None, f"gRPC {status}: {details[:80]}")
    if grpc_status(code) != status:
        return Verdict(BAD_JSON, codes[code], code, f"gRPC {status}, documented as {grpc_status(code)}")
    http = codes[code]
    if 400 <= http < 500:
        return Verdict(DOC_4XX, http, code, f"gRPC {status}")
    if http == 503 and code in DOCUMENTED_503:
        return Verdict(DOC_503, http, code, f"gRPC {status}")
    return Verdict(BAD_JSON, http, code, f"gRPC {status}: an error other than the documented 503s")


def grpc_status(code: str) -> str:
    """The gRPC status the server answers twinfer's error ``code`` with."""
    from deployments.v2.grpc_service import status_code
    from shared.errors import TwinferError

    classes, stack = {}, [TwinferError]
    while stack:
        cls = stack.pop()
        classes[cls.code] = cls
        stack.extend(cls.__subclasses__())
    return status_code(classes[code]("")).name


def _json(body: bytes):
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None


def _snippet(body: bytes, limit: int = 80) -> str:
    return body[:limit].decode("utf-8", "replace").replace("\n", " ")
