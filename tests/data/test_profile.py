"""Reference profiles and PSI: the numbers drift detection rests on."""

import json

import numpy as np
import pytest
from sklearn.datasets import fetch_california_housing

from data.profile import ProfileError, ReferenceProfile, profile_column, reference_profile
from data.schema import HOUSING_FEATURES, HOUSING_TARGET


@pytest.fixture(scope="module")
def housing(offline_data_home):
    data = fetch_california_housing(data_home=offline_data_home, download_if_missing=False)
    rows = np.random.default_rng(0).permutation(len(data.target))
    return data.data[rows].astype(np.float64), data.target[rows].astype(np.float64)


def test_traffic_from_the_training_distribution_has_psi_near_zero_and_shifted_incomes_do_not(housing):
    x, y = housing
    training, live = x[:15000], x[15000:16000]
    profile = reference_profile(training, y[:15000], HOUSING_FEATURES, (HOUSING_TARGET,))
    same = {name: column.psi(live[:, i]) for i, (name, column) in enumerate(profile.features.items())}
    assert max(same.values()) < 0.05, same
    richer = live[:, 0] * 1.5
    assert profile.features["median_income"].psi(richer) > 0.2


def test_bins_hold_the_quantiles_and_ties_make_fewer_wider_bins():
    column = profile_column(np.arange(1000, dtype=np.float64))
    assert len(column.edges) == 9
    np.testing.assert_allclose(column.proportions, 0.1)
    # A capped column (house ages stop at 52) repeats its cap: those quantiles collapse into one edge, and the
    # shares are counted rather than assumed to be a tenth each.
    capped = np.concatenate([np.full(600, 500.0), np.arange(400, dtype=np.float64)])
    tied = profile_column(capped)
    assert len(tied.edges) < 9
    assert tied.proportions[-1] == pytest.approx(0.6)
    assert tied.proportions.sum() == pytest.approx(1.0)


def test_values_outside_the_training_range_land_in_the_outer_bins():
    column = profile_column(np.linspace(0.0, 1.0, 101))
    counts = column.counts(np.array([-100.0, 100.0]))
    assert counts[0] == 1 and counts[-1] == 1 and counts.sum() == 2


def test_a_profile_survives_json_and_a_damaged_one_is_refused():
    x = np.random.default_rng(1).normal(size=(500, 2))
    profile = reference_profile(x, x.sum(axis=1), ("a", "b"), ("out",))
    restored = ReferenceProfile.from_json(json.loads(json.dumps(profile.to_json())))
    assert restored.rows == 500 and list(restored.features) == ["a", "b"] and list(restored.outputs) == ["out"]
    np.testing.assert_array_equal(restored.features["a"].edges, profile.features["a"].edges)
    document = profile.to_json()
    document["features"]["a"]["proportions"] = document["features"]["a"]["proportions"][:-1]
    with pytest.raises(ProfileError, match="proportions"):
        ReferenceProfile.from_json(document)
    with pytest.raises(ProfileError, match="format"):
        ReferenceProfile.from_json({**profile.to_json(), "format": 99})
    with pytest.raises(ProfileError):
        ReferenceProfile.from_json({"format": 1})
