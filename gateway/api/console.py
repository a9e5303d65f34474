"""The web console: static files from gateway/web/static, served at /console/.

Everything the page loads comes from this package (Leaflet is vendored from npm by
scripts/vendor_web.sh), so the console works on a machine without internet. The content
security policy makes that a rule: scripts, styles, images and connections from this origin only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

__all__ = ["STATIC_DIR", "install_console"]

STATIC_DIR: Final = Path(__file__).resolve().parents[1] / "web" / "static"

_HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class _ConsoleFiles(StaticFiles):
    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(_HEADERS)
        # The page and its scripts change with the gateway: revalidate, never serve a stale one.
        response.headers.setdefault("Cache-Control", "no-cache")
        return response


def install_console(app: FastAPI) -> None:
    """Serve the console at /console/ and send / there."""
    app.mount("/console", _ConsoleFiles(directory=STATIC_DIR, html=True), name="console")

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse("/console/")
