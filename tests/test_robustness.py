"""Robustness sweep: test-only SynthMimic roots regenerated at rising corruption hold the same clips."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from emi_lib.data import DataRoot
from emi_lib.data.synth import SynthConfig, ensure_synthmimic, generate
from emi_lib.eval.corruption import load_corruptions
from emi_lib.eval.submission import read_hidden_labels
from emi_lib.experiments.robustness import CLEAN, degradation_table, make_sweep_roots, sweep_levels

TINY = dict(n_train=2, n_valid=2, n_test=4, n_subjects=3)


def test_sweep_levels_share_a_clean_start():
    lv = sweep_levels(occlusion=(0.5, 1.0), snr_db=(10.0, -10.0))
    assert list(lv["axis"]) == ["clean", "occlusion", "occlusion", "snr", "snr"]
    assert lv.loc[0, "overrides"] == CLEAN
    assert lv.loc[2, "overrides"]["occlusion_rate"] == 1.0 and lv.loc[2, "severity"] == 1.0
    snr = lv[lv["axis"] == "snr"]
    assert list(snr["severity"].round(4)) == [0.3333, 1.0]
    assert snr.iloc[1]["overrides"]["noise_snr_db"] == (-10.0, -10.0) and snr.iloc[1]["overrides"]["noise_rate"] == 1.0


def test_test_only_roots_hold_the_same_clips_with_other_corruptions(tmp_path):
    lv = sweep_levels(occlusion=(1.0,), snr_db=(-10.0,))
    lv = make_sweep_roots(lv, tmp_path, "smoke", 0, workers=1, progress=False)
    clean, occ, snr = (lv.loc[i, "root"] for i in range(3))
    for r in (clean, occ, snr):
        assert DataRoot(r).available_splits() == ["test"]
    labels = [read_hidden_labels(r) for r in (clean, occ, snr)]
    pd.testing.assert_frame_equal(labels[0], labels[1])
    pd.testing.assert_frame_equal(labels[0], labels[2])
    c = {name: load_corruptions(r) for name, r in (("clean", clean), ("occ", occ), ("snr", snr))}
    assert (c["clean"]["face_corruption"] == "none").all() and (c["clean"]["audio_corruption"] == "none").all()
    assert (c["occ"]["face_corruption"] == "occlusion").all() and (c["occ"]["audio_corruption"] == "none").all()
    assert (c["snr"]["audio_corruption"] == "noise").all() and (c["snr"]["face_corruption"] == "none").all()
    # occlusion changes the face only: the voice is byte-identical; noise changes the voice only
    d_clean, d_occ, d_snr = DataRoot(clean), DataRoot(occ), DataRoot(snr)
    cid = d_clean.ids("test")[0]
    assert d_clean.audio_path("test", cid).read_bytes() == d_occ.audio_path("test", cid).read_bytes()
    assert d_clean.audio_path("test", cid).read_bytes() != d_snr.audio_path("test", cid).read_bytes()
    # a second call reuses the roots (ensure_synthmimic: same config -> no regeneration)
    mtime = (d_occ.root / "synthmimic" / "manifest.json").stat().st_mtime_ns
    make_sweep_roots(lv.drop(columns="root"), tmp_path, "smoke", 0, workers=1, progress=False)
    assert (d_occ.root / "synthmimic" / "manifest.json").stat().st_mtime_ns == mtime


def test_generate_splits_argument(tmp_path):
    man = generate(tmp_path / "r", SynthConfig.from_profile("smoke", seed=1, **TINY), workers=1, progress=False,
                   splits=("test",))
    assert man["splits"] == ["test"] and man["counts"] == {"test": 4}
    with pytest.raises(ValueError, match="subset"):
        generate(tmp_path / "bad", SynthConfig.from_profile("smoke", **TINY), workers=1, progress=False,
                 splits=("dev",))
    # asking for all splits regenerates a test-only root
    ensure_synthmimic(tmp_path / "r", profile="smoke", seed=1, workers=1, progress=False, **TINY)
    assert DataRoot(tmp_path / "r").available_splits() == ["train", "valid", "test"]


def _degradation_rows(full_worst_slope):
    rows = []
    for seed in range(3):
        for sev, full, eq in ((0.0, 0.50, 0.48), (1.0, 0.45, 0.30)):
            slope = full_worst_slope if sev == 1.0 else 0.01
            rows += [dict(key="full", seed=seed, axis="occlusion", severity=sev, mean=full + slope * seed),
                     dict(key="equal", seed=seed, axis="occlusion", severity=sev, mean=eq + 0.012 * seed)]
    return pd.DataFrame(rows)


def test_degradation_table_measures_the_change_of_the_advantage():
    r = degradation_table(_degradation_rows(0.013), "full", ["equal"]).iloc[0]
    assert r["advantage_clean"] == pytest.approx(0.02 - 0.002, abs=1e-9)
    assert r["advantage_worst"] == pytest.approx(0.15 + 0.001, abs=1e-9)
    assert r["change"] == pytest.approx(0.133, abs=1e-9) and r["change_verdict"] == "holds"
    assert np.isfinite(r["change_lo"])
    # the same change on every seed (0.13): no variance to test, "untestable" rather than a p of 0
    flat = degradation_table(_degradation_rows(0.01), "full", ["equal"]).iloc[0]
    assert flat["change"] == pytest.approx(0.13, abs=1e-9) and flat["change_verdict"] == "untestable"
