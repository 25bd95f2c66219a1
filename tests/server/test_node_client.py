"""A client in another language, built from the .proto files alone, against the real server."""

import json
import subprocess

import pytest

from server.app import PredictionServer

from ..prerequisites import NODE, NODE_CLIENT, NODE_CLIENT_PACKAGES, REPO_ROOT


@pytest.fixture(scope="module")
def node() -> str:
    NODE_CLIENT_PACKAGES.require()
    return str(NODE.require())


def test_node_client_from_protos_alone_gets_typed_answers(node, mlflow_server: PredictionServer):
    result = subprocess.run(
        [node, str(NODE_CLIENT / "client.js"), str(REPO_ROOT), f"127.0.0.1:{mlflow_server.port}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    answers = json.loads(result.stdout)

    assert answers["predict"]["median_house_value"] > 0
    assert answers["predict"]["median_house_value_usd"] == pytest.approx(answers["predict"]["median_house_value"] * 1e5)
    assert answers["predict"]["model"]["name"] == "CaliforniaHousingBestModel"
    assert len(answers["predict_batch"]["predictions"]) == 2
    assert answers["housing_info"]["features"][0]["name"] == "median_income"
    assert answers["classify"]["species"] == "IRIS_SPECIES_SETOSA"
    assert answers["classify"]["species_name"] == "setosa"
    assert answers["classify_batch"]["classifications"][0]["species_name"] == "setosa"
    assert answers["missing_field"]["code"] == "INVALID_ARGUMENT"
    assert "is required but was not set" in answers["missing_field"]["details"]
