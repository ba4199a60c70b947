"""Submission writer/validator/scorer, the corruption breakdown and the stage-2 evaluation plots."""

from __future__ import annotations

import json
import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from emi_lib.constants import EMOTIONS, HEADER
from emi_lib.data import DataError
from emi_lib.eval.corruption import corruption_breakdown, noise_ceiling, weights_by_corruption
from emi_lib.eval.metrics import challenge_score
from emi_lib.eval.submission import score_submission, validate_submission, write_submission
from emi_lib.viz.stage2_plots import plot_pcc_bars, plot_pred_vs_true, plot_weights_vs_severity

TEST_IDS = list(range(12660, 12672))
FACE = ["none", "none", "occlusion", "none", "missing_frames", "none", "occlusion", "no_face", "none", "none",
        "occlusion", "none"]
AUDIO = ["none", "noise", "none", "none", "noise", "clipping", "none", "none", "noise", "missing", "none", "none"]


@pytest.fixture()
def root(tmp_path):
    """A fake SynthMimic root: test split, hidden labels, corruption table and manifest."""
    rng = np.random.default_rng(0)
    (tmp_path / "test_data").mkdir()
    (tmp_path / "synthmimic").mkdir()
    (tmp_path / "test_data" / "test_split.csv").write_text("Filename\n" + "\n".join(map(str, TEST_IDS)) + "\n")
    labels = pd.DataFrame(rng.integers(0, 5, (len(TEST_IDS), 6)) / 4, columns=list(EMOTIONS))
    labels.insert(0, "Filename", TEST_IDS)
    labels.to_csv(tmp_path / "synthmimic" / "test_labels.csv", index=False)
    cor = pd.DataFrame({"Filename": TEST_IDS, "split": "test", "face_corruption": FACE,
                        "face_severity": [0.0 if f == "none" else rng.uniform() for f in FACE],
                        "audio_corruption": AUDIO,
                        "audio_snr_db": [rng.uniform(-5, 15) if a == "noise" else np.nan for a in AUDIO],
                        "audio_severity": [0.0 if a == "none" else rng.uniform() for a in AUDIO]})
    cor.to_csv(tmp_path / "synthmimic" / "corruptions.csv", index=False)
    ceiling = {"per_emotion": dict.fromkeys(EMOTIONS, 0.9), "mean": 0.9}
    (tmp_path / "synthmimic" / "manifest.json").write_text(json.dumps({"noise_ceiling": {"test": ceiling,
                                                                                          "valid": ceiling}}))
    return tmp_path


def hidden(root) -> pd.DataFrame:
    df = pd.read_csv(root / "synthmimic" / "test_labels.csv")
    df.index = [f"{i:05d}" for i in df.pop("Filename")]
    return df


def predictions(root, noise: float = 0.2, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    y = hidden(root)
    return (y + noise * rng.normal(size=y.shape)).sample(frac=1.0, random_state=seed)  # unsorted, out of range


def test_write_validate_and_score_a_good_submission(root):
    pred = predictions(root)
    path = write_submission(pred, root / "sub.csv", root=root)
    lines = path.read_text().splitlines()
    assert lines[0] == "Filename,Admiration,Amusement,Determination,Empathic Pain,Excitement,Joy"
    assert [int(r.split(",")[0]) for r in lines[1:]] == TEST_IDS  # sorted, integer ids
    sub = validate_submission(path, root)
    assert sub.to_numpy().min() >= 0 and sub.to_numpy().max() <= 1  # clipped
    assert not list(root.glob("*.tmp*"))
    score = score_submission(path, root)
    expected = challenge_score(pred.clip(0, 1).loc[sub.index], hidden(root).loc[sub.index])
    assert score["n"] == 12 and math.isclose(score["mean"], expected["mean"], rel_tol=1e-5)


def test_writer_refuses_nan_and_incomplete_predictions(root):
    pred = predictions(root)
    pred.iloc[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        write_submission(pred, root / "sub.csv")
    assert not (root / "sub.csv").exists()
    with pytest.raises(ValueError, match="missing ids"):
        write_submission(predictions(root).iloc[1:], root / "sub.csv", root=root)
    with pytest.raises(ValueError, match="lack the columns"):
        write_submission(predictions(root).drop(columns="Joy"), root / "sub.csv")


def _good_lines(root) -> list[str]:
    return write_submission(predictions(root), root / "good.csv").read_text().splitlines()


@pytest.mark.parametrize(
    "breakage, match",
    [
        (lambda ls: [ls[0].replace("Empathic Pain", "Empathic_Pain")] + ls[1:], "wrong header"),
        (lambda ls: [ls[0].replace("Joy", "Joy,Extra")] + ls[1:], "wrong header"),
        (lambda ls: ls[:-2], r"missing ids .*12670; 12671"),
        (lambda ls: ls + ["12999," + ",".join(["0.5"] * 6)], r"extra ids .*12999"),
        (lambda ls: ls + [ls[3]], r"duplicate id \(1\): 12662"),
        (lambda ls: ls[:2] + [ls[2].rsplit(",", 1)[0] + ",nan"] + ls[3:], r"NaN value \(1\): line 3 Joy"),
        (lambda ls: ls[:2] + [ls[2].rsplit(",", 1)[0] + ",1.5"] + ls[3:], r"outside \[0, 1\] \(1\): line 3 Joy = 1.5"),
        (lambda ls: ls[:2] + [ls[2].rsplit(",", 1)[0] + ",-0.1"] + ls[3:], r"outside \[0, 1\]"),
        (lambda ls: ls[:2] + [ls[2].rsplit(",", 1)[0] + ",high"] + ls[3:], r"non-numeric value .*'high'"),
        (lambda ls: ls[:2] + [ls[2].rsplit(",", 1)[0]] + ls[3:], "wrong field count"),
        (lambda ls: ls[:2] + ["12661.0" + ls[2][5:]] + ls[3:], "non-integer Filename"),
    ],
)
def test_validator_names_each_breakage(root, breakage, match):
    path = root / "bad.csv"
    path.write_text("\n".join(breakage(_good_lines(root))) + "\n")
    with pytest.raises(DataError, match=match):
        validate_submission(path, root)


def test_validator_lists_several_problems_at_once(root):
    lines = _good_lines(root)
    lines = lines[:2] + [lines[2].rsplit(",", 1)[0] + ",2"] + lines[3:-1]
    (root / "bad.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"outside \[0, 1\].*\|.*missing ids") as err:
        validate_submission(root / "bad.csv", root)
    assert err.value.kind == "invalid"
    with pytest.raises(DataError, match="does not exist"):
        validate_submission(root / "nope.csv", root)


def test_score_submission_needs_hidden_labels(root):
    path = write_submission(predictions(root), root / "sub.csv")
    (root / "synthmimic" / "test_labels.csv").unlink()
    with pytest.raises(DataError, match="hidden test labels are not available"):
        score_submission(path, root)


def test_corruption_breakdown_groups(root):
    y = hidden(root)
    pred = predictions(root, noise=0.1)
    table = corruption_breakdown(pred, y, root)
    assert table.loc["all", "n"] == 12 and table.loc["clean", "n"] == 3
    assert table.loc["face corrupted", "n"] == 5 and table.loc["audio corrupted", "n"] == 5
    assert table.loc["face: occlusion", "n"] == 3 and table.loc["audio: missing", "n"] == 1
    assert np.isnan(table.loc["audio: missing", "mean"])  # one clip: undefined, never 0
    assert math.isclose(table.loc["all", "mean"], challenge_score(pred.loc[y.index], y)["mean"])
    clean = [f"{i:05d}" for i, f, a in zip(TEST_IDS, FACE, AUDIO) if f == "none" and a == "none"]
    with np.errstate(all="ignore"):
        expected = [np.corrcoef(pred.loc[clean, e], y.loc[clean, e])[0, 1] for e in EMOTIONS]
    np.testing.assert_allclose(table.loc["clean", list(EMOTIONS)].to_numpy(float), expected, equal_nan=True)
    assert list(corruption_breakdown(pred, y, root / "synthmimic" / "corruptions.csv", by_type=False).index) == [
        "all", "clean", "face corrupted", "audio corrupted"]


def test_weights_by_corruption_and_noise_ceiling(root):
    ids = [f"{i:05d}" for i in TEST_IDS]
    w_face = np.array([0.2 if f != "none" else 0.6 for f in FACE])
    weights = pd.DataFrame({"vision": w_face, "audio": 1 - w_face}, index=ids)
    table = weights_by_corruption(weights, root)
    assert table.loc[("face", "occlusion"), "vision"] == pytest.approx(0.2)
    assert table.loc[("clean", "none"), "vision"] == pytest.approx(0.6)
    assert table.loc[("clean", "none"), "n"] == 3 and list(table.columns) == ["vision", "audio", "n"]
    assert noise_ceiling(root, "test")["mean"] == 0.9
    assert noise_ceiling(root / "test_data") is None
    with pytest.raises(KeyError, match="train"):
        noise_ceiling(root, "train")


def test_stage2_plots_return_figures(root):
    y, pred = hidden(root), predictions(root, noise=0.1).clip(0, 1)
    ids = list(y.index)
    weights = pd.DataFrame({"vision": np.linspace(0, 1, 12), "audio": np.linspace(1, 0, 12)}, index=ids)
    scores = {"full": challenge_score(pred.loc[ids], y), "noisy": challenge_score(predictions(root, 0.5).loc[ids], y)}
    figs = [plot_pred_vs_true(pred, y),
            plot_pred_vs_true(pred, y, hue=pd.Series(FACE, index=ids)),
            plot_pcc_bars(scores, ceiling=noise_ceiling(root)),
            plot_pcc_bars(pd.DataFrame({**{e: [0.1, 0.2] for e in EMOTIONS}, "mean": [0.1, 0.2]}, index=["a", "b"])),
            plot_weights_vs_severity(weights, root)]
    for fig in figs:
        assert isinstance(fig, plt.Figure)
        plt.close(fig)
    assert HEADER[0] == "Filename"
