"""X-Request-ID: accepted or generated, sent to the server as metadata, returned, and logged."""

import logging
import re

import pytest

from rest_bridge.middleware import accepted_request_id

from .conftest import IRIS, bridge
from .scripted_server import ScriptedServer

pytestmark = pytest.mark.anyio


async def test_a_client_id_is_sent_upstream_returned_and_logged(scripted: ScriptedServer, caplog):
    async with bridge(scripted.target) as client:
        with caplog.at_level(logging.INFO, logger="rest_bridge.access"):
            response = await client.post("/predict/iris", json=IRIS, headers={"X-Request-ID": "trace-me.42"})
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "trace-me.42"
    assert scripted.script.metadata[-1]["x-request-id"] == "trace-me.42"
    assert any(
        "trace-me.42" in record.getMessage() and '"POST /predict/iris" 200' in record.getMessage()
        for record in caplog.records
    )


@pytest.mark.parametrize("sent", [None, "", "has space", "x" * 129, "caf\u00e9"])
async def test_a_missing_or_unusable_id_is_replaced_by_a_generated_one(scripted: ScriptedServer, sent):
    headers = {} if sent is None else {"X-Request-ID": sent.encode("utf-8")}
    async with bridge(scripted.target) as client:
        response = await client.post("/predict/iris", json=IRIS, headers=headers)
    assert response.status_code == 200
    generated = response.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated)
    assert scripted.script.metadata[-1]["x-request-id"] == generated


async def test_errors_carry_the_request_id_in_body_and_header(scripted: ScriptedServer):
    async with bridge(scripted.target) as client:
        response = await client.post("/predict/iris", json={"sepal_length_cm": 1}, headers={"X-Request-ID": "bad-1"})
    assert response.status_code == 422
    assert response.headers["x-request-id"] == "bad-1"
    assert response.json()["error"]["request_id"] == "bad-1"


def test_accepted_ids():
    assert accepted_request_id(b"a") == "a"
    assert accepted_request_id(b"!" * 128) == "!" * 128
    assert accepted_request_id(b"") is None
    assert accepted_request_id(b"a\tb") is None
    assert accepted_request_id(b"\x7f") is None
