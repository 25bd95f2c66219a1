"""Swagger UI at /docs and ReDoc at /redoc, working with no internet.

FastAPI's own pages load their JavaScript and CSS from a CDN, and ReDoc's its fonts from Google. Here
every asset comes from the bridge itself: the static files that the ``fastapi-offline`` package ships
(Swagger UI 5 and ReDoc 2 bundles and a favicon), served under ``STATIC_PATH``.
"""

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS_PACKAGE = ("fastapi_offline", "static")
STATIC_PATH = "/static/docs"
# Swagger UI would otherwise ask validator.swagger.io to validate the schema.
SWAGGER_UI_PARAMETERS = {"validatorUrl": None, "tryItOutEnabled": True}


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
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{title} - Swagger UI",
            swagger_js_url=f"{static}/swagger-ui-bundle.js",
            swagger_css_url=f"{static}/swagger-ui.css",
            swagger_favicon_url=f"{static}/favicon.png",
            oauth2_redirect_url=None,
            swagger_ui_parameters=SWAGGER_UI_PARAMETERS,
        )

    @app.get(redoc_url, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        openapi_url, static = urls(request)
        return get_redoc_html(
            openapi_url=openapi_url,
            title=f"{title} - ReDoc",
            redoc_js_url=f"{static}/redoc.standalone.js",
            redoc_favicon_url=f"{static}/favicon.png",
            with_google_fonts=False,
        )
