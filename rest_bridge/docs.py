"""Swagger UI at /docs and ReDoc at /redoc, working with no internet.

FastAPI's own pages load their JavaScript and CSS from a CDN, and ReDoc's its fonts from Google. Here
every asset comes from the bridge itself: the static files that the ``fastapi-offline`` package ships
(Swagger UI 5 and ReDoc 2 bundles and a favicon), served under ``STATIC_PATH``.

Each page has a Content-Security-Policy that allows only the bridge's own origin: scripts from ``STATIC_PATH``
and the page's one inline script by its SHA-256 (hashed from the page as sent, so a root path changes nothing),
no ``'unsafe-inline'`` or ``'unsafe-eval'`` for scripts, no framing. ReDoc's bundle inserts its styles as
``<style>`` elements (styled-components, with no way to give them a nonce) and runs its search index in a
``blob:`` worker, so its page also allows inline styles and blob workers.
"""

import base64
import hashlib
import re

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS_PACKAGE = ("fastapi_offline", "static")
STATIC_PATH = "/static/docs"
# Swagger UI would otherwise ask validator.swagger.io to validate the schema.
SWAGGER_UI_PARAMETERS = {"validatorUrl": None, "tryItOutEnabled": True}
# A <script> element without attributes: the pages' inline scripts (an external one is <script src=...>).
INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)
# Swagger UI's and ReDoc's CSS inline their icons as data: images; both pages fetch the schema from the bridge.
COMMON_POLICY = (
    "default-src 'none'",
    "img-src 'self' data:",
    "connect-src 'self'",
    "base-uri 'none'",
    "form-action 'none'",
    "frame-ancestors 'none'",
)
SWAGGER_UI_POLICY = ("style-src 'self'",)
REDOC_POLICY = ("style-src 'self' 'unsafe-inline'", "font-src 'self'", "worker-src blob:")


def script_hashes(html: str) -> list[str]:
    """The CSP source expressions ('sha256-...') of the page's inline scripts."""
    return [
        f"'sha256-{base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()}'"
        for script in INLINE_SCRIPT.findall(html)
    ]


def with_content_security_policy(page: HTMLResponse, directives: tuple[str, ...]) -> HTMLResponse:
    """The page with a Content-Security-Policy of the common directives, ``directives`` and a script-src of the
    bridge's origin and the page's inline scripts."""
    script_src = " ".join(["script-src 'self'", *script_hashes(bytes(page.body).decode())])
    page.headers["Content-Security-Policy"] = "; ".join((*COMMON_POLICY, script_src, *directives))
    return page


def install_offline_docs(app: FastAPI, docs_url: str = "/docs", redoc_url: str = "/redoc") -> None:
    """Serve the documentation pages and their assets; the app must be built with docs_url=None, redoc_url=None."""
    app.mount(STATIC_PATH, StaticFiles(packages=[ASSETS_PACKAGE]), name="docs-assets")
    title = app.title

    def urls(request: Request) -> tuple[str, str]:
        root = request.scope.get("root_path", "").rstrip("/")
        return f"{root}{app.openapi_url}", f"{root}{STATIC_PATH}"

    @app.get(docs_url, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        openapi_url, static = urls(request)
        page = get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{title} - Swagger UI",
            swagger_js_url=f"{static}/swagger-ui-bundle.js",
            swagger_css_url=f"{static}/swagger-ui.css",
            swagger_favicon_url=f"{static}/favicon.png",
            oauth2_redirect_url=None,
            swagger_ui_parameters=SWAGGER_UI_PARAMETERS,
        )
        return with_content_security_policy(page, SWAGGER_UI_POLICY)

    @app.get(redoc_url, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        openapi_url, static = urls(request)
        page = get_redoc_html(
            openapi_url=openapi_url,
            title=f"{title} - ReDoc",
            redoc_js_url=f"{static}/redoc.standalone.js",
            redoc_favicon_url=f"{static}/favicon.png",
            with_google_fonts=False,
        )
        return with_content_security_policy(page, REDOC_POLICY)
