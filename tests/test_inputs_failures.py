"""Stage-2 inputs surface what the extraction could not read: failures collected, warned, recorded, and a split
with failed clips refused by training (a failed clip is not a missing modality)."""

from __future__ import annotations

import json
import re

import pytest
from tiny_root import write_tiny_root

from emi_lib.models import EMIModelConfig
from emi_lib.train import Stage2Config, train_stage2
from emi_lib.train.inputs import prepare_stage2_inputs


def test_stage2_inputs_collect_warn_and_training_refuses_failed_clips(tmp_path):
    root = tmp_path / "root"
    ids = write_tiny_root(root)
    partial, failed = ids["train"][0], ids["train"][2]
    (root / "face_images" / partial / "1.jpg").write_bytes(b"garbage, not a jpeg" * 10)
    for crop in (root / "face_images" / failed).glob("*.jpg"):
        crop.write_bytes(b"garbage, not a jpeg" * 10)
    kw = dict(stage1="none", vision_backbone="fer", audio_backbone="logmel", store_dir=tmp_path / "store",
              verbose=False)
    with pytest.warns(UserWarning) as caught:
        inp = prepare_stage2_inputs(root, "smoke", **kw)
    messages = [str(w.message) for w in caught]
    assert any(re.search(rf"feature extraction failures.*{failed} \[unreadable\].*{partial}: 1", m) for m in messages)
    assert any(re.search(rf"priors train: .*{partial} face: 1 unreadable crop", m) for m in messages)
    got = inp.extraction_failures
    assert list(got) == ["vision/train"] and list(got["vision/train"]["failed"]) == [failed]
    assert list(got["vision/train"]["unreadable_frames"]) == [partial]
    json.dumps(got)  # recordable as is
    train = inp.sets["train"]
    assert train.absent["vision"] == set() and train.unexplained_missing("vision") == [failed]
    assert train.has("vision", partial)  # the clip with one bad crop keeps its other three
    dims = inp.dims()
    cfg = Stage2Config(model=EMIModelConfig.tiny(dims["vision"], dims["audio"]), epochs=1, batch_size=2,
                       device="cpu", max_len=8)
    with pytest.raises(ValueError, match=rf"train: 1 of 3 clips .* no vision features .*{failed}"):
        train_stage2(cfg, train, inp.sets["valid"], tmp_path / "run", progress=False)
    with pytest.warns(UserWarning, match=failed):  # a second run (features stored) still reports them
        again = prepare_stage2_inputs(root, "smoke", **kw)
    assert again.extraction_failures == got


def test_a_clip_with_no_valid_raw_step_may_lack_its_aligned_stream(tmp_path):
    """Stage-1 streams: no face found in any frame leaves nothing to align (declared, like absent media); a clip
    whose raw features have valid steps but no aligned ones is still counted as a failure."""
    import numpy as np

    from emi_lib.features.store import FeatureStore
    from emi_lib.train.data import Stage2Data
    from emi_lib.train.inputs import _declare_unalignable

    raw = FeatureStore(tmp_path / "store")
    raw.write("vision", "fer", "train", "00000", np.full((3, 7), np.nan, np.float32))  # no valid step
    raw.write("vision", "fer", "train", "00001", np.ones((3, 7), np.float32))  # valid steps, aligned lost
    d = Stage2Data({"00002": np.ones((2, 4), np.float32)}, {}, ids=["00000", "00001", "00002"],
                   absent={"vision": [], "audio": ["00000", "00001", "00002"]})
    _declare_unalignable(d, raw, {"vision": ("vision", "fer")}, "train")
    assert d.absent["vision"] == {"00000"} and d.unexplained_missing("vision") == ["00001"]
