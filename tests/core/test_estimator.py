"""The estimator passes scikit-learn's own checks and agrees with the pipeline's math."""

from __future__ import annotations

import numpy as np
import pytest
from q4 import Q4Estimator
from q4.errors import InputError
from sklearn.decomposition import PCA
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks


@parametrize_with_checks([Q4Estimator()])
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def test_matches_sklearn_pca_components_and_scores():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((500, 5)) @ rng.standard_normal((5, 5)) + 7.0
    est = Q4Estimator().fit(x)
    z = StandardScaler().fit_transform(x)
    pca = PCA(n_components=2, svd_solver="full").fit(z)
    np.testing.assert_allclose(est.components_, pca.components_, atol=1e-10)
    np.testing.assert_allclose(est.transform(x), pca.transform(z), atol=1e-9)
    s = pca.transform(z)
    expected = np.where(s[:, 0] >= 0, np.where(s[:, 1] >= 0, 1, 4), np.where(s[:, 1] >= 0, 2, 3))
    np.testing.assert_array_equal(est.labels_, expected)
    assert set(np.unique(est.predict(x))) <= {1, 2, 3, 4}


def test_save_load_round_trip_predicts_identically(tmp_path):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((200, 3)) * [1.0, 2.0, 3.0]
    est = Q4Estimator().fit(x)
    path = est.save(tmp_path / "q4_model.json")
    assert path.read_text().lstrip().startswith("{")
    loaded = Q4Estimator.load(path)
    np.testing.assert_array_equal(loaded.predict(x), est.predict(x))
    np.testing.assert_array_equal(loaded.transform(x), est.transform(x))


def test_too_few_non_constant_features_is_a_clear_value_error():
    x = np.column_stack([np.arange(10.0), np.full(10, 3.0), np.full(10, 1.0)])
    with pytest.raises(ValueError, match="non-constant") as info:
        Q4Estimator().fit(x)
    assert isinstance(info.value, InputError)
    assert info.value.code == "too_few_features"
