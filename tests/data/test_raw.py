import csv
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
from sklearn.datasets import fetch_california_housing

from data import raw
from data.__main__ import main
from data.raw import (
    DataUnavailableError,
    MalformedDataError,
    RawDatasets,
    load_housing,
    load_iris_raw,
    write_iris_csv,
    write_raw_datasets,
)
from data.schema import HOUSING_FEATURES, HOUSING_TARGET, IRIS_FEATURES, IRIS_SPECIES, IRIS_TARGET

# From /work/shared/data/README.md ("Checked values").
HOUSING_FEATURE_MEANS = [3.870671, 28.639486, 5.429000, 1.096675, 1425.476744, 3.070655, 35.631861, -119.569704]
HOUSING_TARGET_MEAN = 2.068558


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory, offline_data_home: Path) -> RawDatasets:
    return write_raw_datasets(tmp_path_factory.mktemp("data"), offline_data_home, allow_download=False)


def header(path: Path) -> tuple[str, ...]:
    with path.open(newline="") as f:
        return tuple(next(csv.reader(f)))


def test_housing_csv_has_the_schema_columns_and_every_row(written: RawDatasets) -> None:
    assert header(written.housing) == (*HOUSING_FEATURES, HOUSING_TARGET)
    x, y = load_housing(written.housing)
    assert x.shape == (20640, 8) and y.shape == (20640,)
    assert x.dtype == np.float64 and y.dtype == np.float64
    np.testing.assert_allclose(x.mean(axis=0), HOUSING_FEATURE_MEANS, atol=1e-6)
    assert y.mean() == pytest.approx(HOUSING_TARGET_MEAN, abs=1e-6)
    assert (y.min(), y.max()) == (0.14999, 5.00001)


def test_housing_csv_round_trips_sklearn_values_exactly(written: RawDatasets, offline_data_home: Path) -> None:
    bunch = fetch_california_housing(data_home=str(offline_data_home), download_if_missing=False)
    x, y = load_housing(written.housing)
    np.testing.assert_array_equal(x, bunch.data)
    np.testing.assert_array_equal(y, bunch.target)


def test_iris_csv_holds_species_names_read_back_as_labels(written: RawDatasets) -> None:
    assert header(written.iris) == (*IRIS_FEATURES, IRIS_TARGET)
    with written.iris.open(newline="") as f:
        first = next(csv.DictReader(f))
    assert first == {
        "sepal_length_cm": "5.1",
        "sepal_width_cm": "3.5",
        "petal_length_cm": "1.4",
        "petal_width_cm": "0.2",
        "species": "setosa",
    }
    x, y = load_iris_raw(written.iris)
    assert x.shape == (150, 4) and x.dtype == np.float64
    assert np.bincount(y).tolist() == [50, 50, 50]
    assert sorted(set(y.tolist())) == list(range(len(IRIS_SPECIES)))


def test_missing_housing_data_without_download_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataUnavailableError, match=r"SCIKIT_LEARN_DATA.*allow the download"):
        write_raw_datasets(tmp_path / "out", tmp_path / "empty_home", allow_download=False)
    assert not (tmp_path / "out" / raw.HOUSING_CSV).exists()


def test_download_failure_is_a_data_unavailable_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(**_: object) -> None:
        raise URLError("no network")

    monkeypatch.setattr(raw, "fetch_california_housing", offline)
    with pytest.raises(DataUnavailableError, match="no network") as caught:
        write_raw_datasets(tmp_path, None, allow_download=True)
    assert isinstance(caught.value.__cause__, URLError)


def test_wrong_columns_are_rejected(tmp_path: Path) -> None:
    path = tmp_path / "housing.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(MalformedDataError, match="columns"):
        load_housing(path)


def test_unknown_species_is_rejected(tmp_path: Path) -> None:
    path = write_iris_csv(tmp_path / "iris.csv")
    path.write_text(path.read_text().replace("virginica", "dandelion", 1))
    with pytest.raises(MalformedDataError, match="dandelion"):
        load_iris_raw(path)


def test_cli_writes_both_files_offline(
    tmp_path: Path, offline_data_home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SCIKIT_LEARN_DATA", str(offline_data_home))
    assert main(["--output-dir", str(tmp_path), "--offline"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"wrote {tmp_path / raw.HOUSING_CSV}",
        f"wrote {tmp_path / raw.IRIS_CSV}",
    ]


def test_cli_reports_missing_data_without_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SCIKIT_LEARN_DATA", str(tmp_path / "empty_home"))
    assert main(["--output-dir", str(tmp_path / "out"), "--offline"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: The California housing data is not in") and "Traceback" not in err
