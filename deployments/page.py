"""The web page (``GET /``, its script and style sheet) and ``GET /openapi.json``, answered by the ingress.

The files ship as package data in ``deployments/static/`` and are read once, when the replica
starts. Everything is same-origin: the page loads no font, script or style from elsewhere, so it
works on a cluster without internet access, and its Content-Security-Policy allows nothing else.
These routes need no API key: the page must load for a person to type one, and none of them
says which models are served (``/v1/models`` does, and needs the key).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from importlib import resources

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route, get_route_path
from starlette.types import ASGIApp, Receive, Scope, Send

from deployments.endpoints import require

# route below the application's prefix -> (file in deployments/static, media type)
FILES = {
    "": ("index.html", "text/html; charset=utf-8"),  # GET / (and /prefix/)
    "static/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "static/app.css": ("app.css", "text/css; charset=utf-8"),
}

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' blob: data:",  # the chosen photo is shown from a blob: URL; data: for the empty favicon
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)

HEADERS = {
    # revalidate every time (cheap: 304 on a matching ETag): page and script always come from one release
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


@dataclass(frozen=True)
class Asset:
    body: bytes
    media_type: str
    etag: str

    @classmethod
    def of(cls, body: bytes, media_type: str) -> Asset:
        return cls(body, media_type, '"' + hashlib.sha256(body).hexdigest()[:32] + '"')


class Site:
    def __init__(self, openapi_document: dict):
        static = resources.files("deployments") / "static"
        self.assets = {route: Asset.of((static / name).read_bytes(), media) for route, (name, media) in FILES.items()}
        document = json.dumps(openapi_document, indent=1).encode()
        self.assets["openapi.json"] = Asset.of(document, "application/json")

    def routes(self, route) -> list[Route]:
        """One GET route per asset; ``route(path, handler)`` makes the app's route (errors, counting)."""

        def serve(asset: Asset):
            async def handler(request: Request) -> Response:
                require(request, "GET")
                return self.answer(request, asset)

            return handler

        return [route("/" + path, serve(asset)) for path, asset in self.assets.items()]

    def answer(self, request: Request, asset: Asset) -> Response:
        headers = {**HEADERS, "ETag": asset.etag}
        if asset.media_type.startswith("text/html"):
            headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        if asset.etag in _etags(request.headers.get("if-none-match", "")):
            return Response(status_code=304, headers=headers)
        return Response(asset.body, media_type=asset.media_type, headers=headers)


def redirecting_to_the_page(app: ASGIApp) -> ASGIApp:
    """``app``, except that the application's bare prefix (``/prefix``) redirects to ``prefix/``,
    relatively, so that it holds behind a proxy that adds its own prefix: the page's relative
    links (static/app.js, v1/models) then resolve below the prefix."""

    async def asgi(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and get_route_path(scope) == "":
            last = scope["path"].rstrip("/").rsplit("/", 1)[-1]
            await RedirectResponse(f"{last}/", status_code=308, headers=HEADERS)(scope, receive, send)
            return
        await app(scope, receive, send)

    return asgi


def _etags(header: str) -> set[str]:
    return {tag.strip().removeprefix("W/") for tag in header.split(",") if tag.strip()}
