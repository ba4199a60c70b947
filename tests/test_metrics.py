import warnings

import numpy as np
import pandas as pd
import pytest
from scipy.stats import pearsonr

from emi_lib.constants import EMOTIONS
from emi_lib.eval import ConstantColumnWarning, challenge_score, score_table


def test_matches_scipy_pearsonr():
    rng = np.random.default_rng(0)
    true = rng.random((200, 6))
    pred = 0.5 * true + rng.normal(0, 0.3, size=true.shape)
    s = challenge_score(pred, true)
    ref = [pearsonr(pred[:, j], true[:, j]).statistic for j in range(6)]
    for j, emo in enumerate(EMOTIONS):
        assert abs(s["per_emotion"][emo] - ref[j]) < 1e-6
    assert abs(s["mean"] - np.mean(ref)) < 1e-6
    assert s["n"] == 200


def test_dataset_level_not_batch_average():
    rng = np.random.default_rng(1)
    true = rng.random((100, 6))
    pred = true + rng.normal(0, 0.5, size=true.shape)
    whole = challenge_score(pred, true)["mean"]
    halves = np.mean([challenge_score(pred[:50], true[:50])["mean"], challenge_score(pred[50:], true[50:])["mean"]])
    assert whole != pytest.approx(halves, abs=1e-9)


def test_constant_column_is_nan_with_warning_naming_it():
    rng = np.random.default_rng(2)
    true = rng.random((20, 6))
    pred = true.copy()
    pred[:, 3] = 0.5
    with pytest.warns(ConstantColumnWarning, match="Empathic Pain"):
        s = challenge_score(pred, true)
    assert np.isnan(s["per_emotion"]["Empathic Pain"])
    assert np.isnan(s["mean"])
    assert s["per_emotion"]["Joy"] == pytest.approx(1.0)


def test_dataframes_align_on_ids_and_reject_mismatch():
    rng = np.random.default_rng(3)
    ids = [f"{i:05d}" for i in range(30)]
    true = pd.DataFrame(rng.random((30, 6)), index=ids, columns=list(EMOTIONS))
    pred = true.sample(frac=1.0, random_state=0)  # shuffled rows, same ids
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert challenge_score(pred, true)["mean"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="different ids"):
        challenge_score(pred.iloc[:-1], true)


def test_rejects_nan_and_wrong_shape():
    true = np.random.default_rng(4).random((10, 6))
    pred = true.copy()
    pred[2, 1] = np.nan
    with pytest.raises(ValueError, match="Amusement"):
        challenge_score(pred, true)
    with pytest.raises(ValueError, match="shape"):
        challenge_score(true[:, :5], true[:, :5])


def test_score_table():
    true = np.random.default_rng(5).random((10, 6))
    t = score_table({"perfect": challenge_score(true, true)})
    assert list(t.columns) == [*EMOTIONS, "mean"]
    assert t.loc["perfect", "mean"] == pytest.approx(1.0)
