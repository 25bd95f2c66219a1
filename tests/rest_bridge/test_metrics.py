"""Every request the bridge answers is counted under a route label from a fixed set: the path template of the route
that answered (the docs pages and their assets included), or ``unmatched``; never a path a client chose."""

import re

import httpx
import pytest
from fastapi.routing import APIRoute
from starlette.routing import Mount, Route

from rest_bridge.app import create_app
from rest_bridge.metrics import UNMATCHED_ROUTE
from rest_bridge.settings import BridgeSettings

pytestmark = pytest.mark.anyio

SAMPLE = re.compile(r'^bridge_http_requests_total\{method="(\w+)",route="([^"]*)",status="(\d+)"\} ([\d.]+)$')


async def _counts(client: httpx.AsyncClient) -> dict[tuple[str, str, int], float]:
    counts = {}
    for line in (await client.get("/metrics")).text.splitlines():
        if match := SAMPLE.match(line):
            method, route, status, value = match.groups()
            counts[(method, route, int(status))] = float(value)
    return counts


async def test_the_docs_pages_schema_and_assets_have_their_own_route_labels(client: httpx.AsyncClient):
    paths = {
        "/openapi.json": 200,
        "/docs": 200,
        "/redoc": 200,
        "/static/docs/swagger-ui.css": 200,
        "/static/docs/swagger-ui-bundle.js": 200,
        "/static/docs/favicon.png": 200,
        "/static/docs/no-such-file.js": 404,
        "/static/docs/..%2f..%2fetc%2fpasswd": 404,
        "/nowhere": 404,
        "/static/elsewhere.js": 404,
    }
    for path, status in paths.items():
        assert (await client.get(path)).status_code == status, path

    counts = await _counts(client)
    assert counts[("GET", "/openapi.json", 200)] == 1
    assert counts[("GET", "/docs", 200)] == 1
    assert counts[("GET", "/redoc", 200)] == 1
    # Every file under the mount, found or not, is one label: a client cannot add label values.
    assert counts[("GET", "/static/docs/{path}", 200)] == 3
    assert counts[("GET", "/static/docs/{path}", 404)] == 2
    assert counts[("GET", UNMATCHED_ROUTE, 404)] == 2
    assert not [route for (_, route, _) in counts if "swagger" in route or "passwd" in route or "nowhere" in route]


async def test_every_route_label_is_a_route_template_of_the_app(client: httpx.AsyncClient):
    app = create_app(BridgeSettings())
    templates = {route.path_format for route in app.routes if isinstance(route, APIRoute | Route | Mount)}
    assert {"/openapi.json", "/docs", "/redoc", "/static/docs/{path}", "/predict/iris"} <= templates
    for path in ("/predict/iris", "/openapi.json", "/static/docs/favicon.png", "/random/probe", "/static/docs"):
        await client.get(path)
    labels = {route for (_, route, _) in await _counts(client)}
    assert labels <= templates | {UNMATCHED_ROUTE}
    assert {"/predict/iris", "/openapi.json", "/static/docs/{path}", UNMATCHED_ROUTE} <= labels


async def test_an_undecodable_body_is_counted_as_the_422_it_gets(client: httpx.AsyncClient):
    for body in (b'{"sepal_length_cm": "\xff"}', b"[" * 100_000):
        response = await client.post("/predict/iris", content=body, headers={"content-type": "application/json"})
        assert response.status_code == 422, response.text
    counts = await _counts(client)
    assert counts[("POST", "/predict/iris", 422)] == 2
    assert ("POST", "/predict/iris", 400) not in counts
