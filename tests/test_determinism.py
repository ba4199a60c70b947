"""The same run on the same machine gives the same numbers: stage-2 inputs, training and predictions repeated in two
fresh processes with different hash seeds (set and dict orders of strings differ between them) agree exactly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent('''
    import json, sys
    import torch
    torch.set_num_threads(1)
    from emi_lib.train.config import stage2_config
    from emi_lib.train.inputs import prepare_stage2_inputs
    from emi_lib.train.stage2 import predict, train_stage2
    root, store, out = sys.argv[1:4]
    inp = prepare_stage2_inputs(root, "smoke", stage1="none", vision_backbone="openclip-tiny", audio_backbone="logmel",
                                use_text=False, store_dir=store, verbose=False)
    cfg = stage2_config("smoke", inp.dims(), seed=0, n_train=len(inp.sets["train"]), epochs=2)
    model, hist = train_stage2(cfg, inp.sets["train"], inp.sets["valid"], out, progress=False, resume=False)
    pred, weights, _ = predict(model, inp.sets["test"])
    print(json.dumps({"val": hist["val_mean_pcc"].tolist(), "pred": pred.round(12).to_dict(),
                      "weights": weights.round(12).to_dict(), "mean": inp.standardizer.mean["vision"].tolist()}))
''')


@pytest.fixture(scope="module")
def filled_store(smoke_root, tmp_path_factory):
    """Random per-step features for every clip (no extraction: the point is what happens after it); the first
    process computes the priors from the media and caches them, the second reads the cache."""
    import numpy as np

    from emi_lib.data import DataRoot
    from emi_lib.features.store import FeatureStore

    store, rng = FeatureStore(tmp_path_factory.mktemp("det_store")).bind(smoke_root), np.random.default_rng(0)
    data = DataRoot(smoke_root)
    for split in data.available_splits():
        for cid in data.ids(split):
            store.write("vision", "openclip-tiny", split, cid, rng.normal(size=(int(rng.integers(4, 12)), 6)))
            store.write("audio", "logmel", split, cid, rng.normal(size=(int(rng.integers(8, 30)), 5)))
    return store.root


def test_two_processes_give_identical_numbers(smoke_root, filled_store, tmp_path):
    outs = []
    for k, hash_seed in enumerate(("1", "2")):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed, "OMP_NUM_THREADS": "1"}
        res = subprocess.run([sys.executable, "-c", SCRIPT, str(smoke_root), str(filled_store), str(tmp_path / f"r{k}")],
                             capture_output=True, text=True, env=env, timeout=300)
        assert res.returncode == 0, res.stderr[-3000:]
        outs.append(json.loads(res.stdout.strip().splitlines()[-1]))
    assert outs[0] == outs[1]
