"""Raw data step: write the two data sets as CSV files and read them back as numpy arrays.

Exceptions::

    DataError                 anything wrong with the raw data
    +-- DataUnavailableError  the housing data is not in the data home and may not or could not be downloaded
    +-- MalformedDataError    a raw CSV file does not have the expected columns or values
"""

import csv
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from sklearn.datasets import fetch_california_housing, load_iris

from data.schema import HOUSING_FEATURES, HOUSING_TARGET, IRIS_FEATURES, IRIS_SPECIES, IRIS_TARGET

HOUSING_CSV = "housing_raw.csv"
IRIS_CSV = "iris_raw.csv"

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


class DataError(Exception):
    """Base class of the raw data errors."""


class DataUnavailableError(DataError):
    """The California housing data is neither in the data home nor downloadable."""


class MalformedDataError(DataError):
    """A raw CSV file does not hold the expected columns or values."""


@dataclass(frozen=True)
class RawDatasets:
    """Where the raw CSV files of one data directory live."""

    housing: Path
    iris: Path

    @classmethod
    def in_dir(cls, directory: Path) -> "RawDatasets":
        return cls(housing=directory / HOUSING_CSV, iris=directory / IRIS_CSV)


def write_raw_datasets(output_dir: Path, data_home: Path | None, *, allow_download: bool = True) -> RawDatasets:
    """Write ``housing_raw.csv`` and ``iris_raw.csv`` into ``output_dir`` (created if missing)."""
    paths = RawDatasets.in_dir(output_dir)
    write_housing_csv(paths.housing, data_home, allow_download=allow_download)
    write_iris_csv(paths.iris)
    return paths


def write_housing_csv(path: Path, data_home: Path | None, *, allow_download: bool = True) -> Path:
    """Write the 20,640 California housing rows: ``HOUSING_FEATURES`` then ``HOUSING_TARGET``.

    ``data_home`` is scikit-learn's data home; None lets scikit-learn choose (``~/scikit_learn_data``).
    """
    try:
        bunch = fetch_california_housing(
            data_home=None if data_home is None else str(data_home), download_if_missing=allow_download
        )
    except OSError as exc:  # sklearn's "data not found" and every download failure (URLError is an OSError)
        where = data_home if data_home is not None else "scikit-learn's default data home"
        raise DataUnavailableError(
            f"The California housing data is not in {where} and could not be downloaded"
            f"{'' if allow_download else ' (downloading is not allowed)'}: {exc}. "
            "Set SCIKIT_LEARN_DATA to a folder holding cal_housing_py3.pkz, or allow the download."
        ) from exc
    rows = np.column_stack([bunch.data, bunch.target])
    _write_csv(path, (*HOUSING_FEATURES, HOUSING_TARGET), rows.tolist())
    return path


def write_iris_csv(path: Path) -> Path:
    """Write the 150 iris rows: ``IRIS_FEATURES`` then ``IRIS_TARGET`` as the species name."""
    bunch = load_iris()
    if tuple(bunch.target_names) != IRIS_SPECIES:
        raise MalformedDataError(f"load_iris species {tuple(bunch.target_names)} differ from {IRIS_SPECIES}")
    rows = [[*features, IRIS_SPECIES[label]] for features, label in zip(bunch.data.tolist(), bunch.target, strict=True)]
    _write_csv(path, (*IRIS_FEATURES, IRIS_TARGET), rows)
    return path


def load_housing(path: Path) -> tuple[FloatArray, FloatArray]:
    """Read ``housing_raw.csv``: features of shape (n, 8) and the target of shape (n,), both float64."""
    with path.open(newline="") as f:
        _check_header(path, next(csv.reader(f), []), (*HOUSING_FEATURES, HOUSING_TARGET))
        try:
            table = np.loadtxt(f, delimiter=",", dtype=np.float64, ndmin=2)
        except ValueError as exc:
            raise MalformedDataError(f"{path}: {exc}") from exc
    if table.shape[1] != len(HOUSING_FEATURES) + 1 or not np.isfinite(table).all():
        raise MalformedDataError(f"{path}: expected {len(HOUSING_FEATURES) + 1} finite numbers per row")
    return np.ascontiguousarray(table[:, :-1]), np.ascontiguousarray(table[:, -1])


def load_iris_raw(path: Path) -> tuple[FloatArray, IntArray]:
    """Read ``iris_raw.csv``: features of shape (n, 4) and labels 0, 1, 2 in ``IRIS_SPECIES`` order."""
    label_of = {name: label for label, name in enumerate(IRIS_SPECIES)}
    features: list[list[float]] = []
    labels: list[int] = []
    with path.open(newline="") as f:
        reader = csv.reader(f)
        _check_header(path, next(reader, []), (*IRIS_FEATURES, IRIS_TARGET))
        for line, row in enumerate(reader, start=2):
            try:
                features.append([float(value) for value in row[:-1]])
                labels.append(label_of[row[-1]])
            except (ValueError, KeyError, IndexError) as exc:
                raise MalformedDataError(f"{path}, line {line}: cannot read {row!r}") from exc
    x = np.array(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != len(IRIS_FEATURES):
        raise MalformedDataError(f"{path}: expected {len(IRIS_FEATURES)} features per row")
    return x, np.array(labels, dtype=np.int64)


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, logged with each training run to tie a model to its data."""
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    # Write next to the target and rename, so an interrupted run never leaves a truncated CSV that
    # the training step would take for a complete one.
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with partial.open("w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    partial.replace(path)


def _check_header(path: Path, header: Sequence[str], expected: Sequence[str]) -> None:
    if tuple(header) != tuple(expected):
        raise MalformedDataError(f"{path}: columns {tuple(header)} differ from {tuple(expected)}")
