"""/docs and /redoc work offline: every asset the pages load is served by the bridge itself."""

import re
from html.parser import HTMLParser
from urllib.parse import urlsplit

import pytest

pytestmark = pytest.mark.anyio


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.scripts: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._in_script = tag == "script"
        self.urls += [value for name, value in attrs if name in {"src", "href", "spec-url"} and value]

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.scripts.append(data)


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_every_asset_of_the_page_is_served_by_the_bridge(client, page: str):
    response = await client.get(page)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    links = _Links()
    links.feed(response.text)
    # Swagger UI is told where the schema is inside its inline script.
    urls = links.urls + re.findall(r"url: '([^']+)'", "".join(links.scripts))
    assert "/openapi.json" in urls
    assert any(url.endswith(".js") for url in urls)
    assert not re.search(r"https?://", response.text), "the page names an external host"
    for url in urls:
        parts = urlsplit(url)
        assert not parts.scheme and not parts.netloc, url
        asset = await client.get(url)
        assert asset.status_code == 200, url
        assert asset.content, url


async def test_the_assets_are_real_swagger_ui_and_redoc(client):
    bundle = await client.get("/static/docs/swagger-ui-bundle.js")
    assert "SwaggerUIBundle" in bundle.text
    assert bundle.headers["content-type"].startswith(("application/javascript", "text/javascript"))
    redoc = await client.get("/static/docs/redoc.standalone.js")
    assert "Redoc" in redoc.text


async def test_the_schema_documents_every_route_and_the_error_body(client):
    schema = (await client.get("/openapi.json")).json()
    assert set(schema["paths"]) == {
        "/predict/housing",
        "/predict/housing/batch",
        "/predict/housing/columns",
        "/predict/iris",
        "/predict/iris/batch",
        "/predict/iris/columns",
        "/models",
        "/health",
        "/ready",
        "/metrics",
        "/metrics/prometheus",
        "/retrain",
        "/operations",
        "/operations/{id}",
        "/models/{model}/versions",
        "/models/{model}/aliases/{alias}",
        "/models/{model}/rollback",
        "/models/{model}/traffic",
        "/predictions/{prediction_id}",
        "/drift/{model}",
        "/feedback",
        "/quality/{model}",
        "/models/{model}/auto-retrain",
    }
    predict = schema["paths"]["/predict/iris"]["post"]
    error_ref = {"$ref": "#/components/schemas/ErrorResponse"}
    for status in ("422", "503", "504", "4XX", "5XX"):
        assert predict["responses"][status]["content"]["application/json"]["schema"] == error_ref
    latitude = schema["components"]["schemas"]["HousingFeatures"]["properties"]["latitude"]
    assert (latitude["minimum"], latitude["maximum"], latitude["examples"]) == (32.0, 42.5, [35.63])
    assert "decimal degrees north" in latitude["description"]
    sepal = schema["components"]["schemas"]["IrisFeatures"]["properties"]["sepal_length_cm"]
    assert sepal["exclusiveMinimum"] == 0
    assert "HTTPValidationError" not in schema["components"]["schemas"]


async def test_admin_operations_declare_the_bearer_token_and_no_other_does(client):
    schema = (await client.get("/openapi.json")).json()
    # A security scheme is what gives Swagger UI its "Authorize" button.
    (name, scheme), *others = schema["components"]["securitySchemes"].items()
    assert (name, scheme["type"], scheme["scheme"], others) == ("AdminToken", "http", "bearer", [])
    assert "Authorization: Bearer <token>" in scheme["description"]
    secured = {
        (verb, path)
        for path, operations in schema["paths"].items()
        for verb, operation in operations.items()
        if operation.get("security")
    }
    assert secured == {
        ("post", "/retrain"),
        ("get", "/operations"),
        ("get", "/operations/{id}"),
        ("get", "/models/{model}/versions"),
        ("put", "/models/{model}/aliases/{alias}"),
        ("post", "/models/{model}/rollback"),
        ("put", "/models/{model}/traffic"),
        ("get", "/predictions/{prediction_id}"),
        ("get", "/drift/{model}"),
        ("post", "/feedback"),
        ("get", "/quality/{model}"),
        ("put", "/models/{model}/auto-retrain"),
    }
    for verb, path in secured:
        operation = schema["paths"][path][verb]
        assert operation["security"] == [{"AdminToken": []}]
        assert operation["tags"] == ["admin"]
        for status in ("401", "403"):
            error = operation["responses"][status]["content"]["application/json"]["schema"]
            assert error == {"$ref": "#/components/schemas/ErrorResponse"}
    # Routes whose server part can be off document its 400 (FAILED_PRECONDITION), as a rollback documents its own.
    for verb, path in (
        ("get", "/drift/{model}"),
        ("post", "/feedback"),
        ("get", "/quality/{model}"),
        ("put", "/models/{model}/auto-retrain"),
    ):
        refused = schema["paths"][path][verb]["responses"]["400"]
        assert "FAILED_PRECONDITION" in refused["description"], path
        assert refused["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorResponse"}
    assert "202" in schema["paths"]["/retrain"]["post"]["responses"]
    # The header is documented by the scheme, not as a parameter the client fills in by hand.
    parameters = [p for ops in schema["paths"].values() for op in ops.values() for p in op.get("parameters", [])]
    assert not [p for p in parameters if p["name"].lower() == "authorization"]
