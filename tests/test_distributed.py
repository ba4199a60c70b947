"""Two CPU processes with gloo (torch.multiprocessing.spawn): the gathered dataset-level metric,
stage-2 and stage-1 training under DDP, and sharded feature extraction.

One module fixture spawns the two processes once and runs every scenario in them (process start
and imports, open_clip's above all, cost more than the scenarios); each test then checks what its
scenario left on disk. A scenario that raises fails the fixture, hence every test of the module."""

from __future__ import annotations

import json
import os
import pickle
import socket

import numpy as np
import pandas as pd
import pytest
import torch
import torch.multiprocessing as mp

from emi_lib.constants import EMOTIONS
from emi_lib.eval.metrics import challenge_score

WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _init(rank: int, port: int):
    """What torchrun would set, then the library's own initialisation (gloo on the CPU)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from emi_lib.distributed import init_distributed

    ctx = init_distributed(device="cpu", timeout_s=120)  # a hung collective fails instead of blocking
    assert (ctx.rank, ctx.world, ctx.backend, ctx.is_main) == (rank, WORLD, "gloo", rank == 0)
    return ctx


def _worker(rank, port, out, root):
    from emi_lib.distributed import cleanup

    _init(rank, port)
    _metric_part(rank, out)
    _extract_part(rank, root, os.path.join(out, "extract"))
    _stage2_part(rank, out)
    _stage1_part(rank, out)
    cleanup()


@pytest.fixture(scope="module")
def spawned(tmp_path_factory):
    """Run every scenario in 2 processes; returns the folders they wrote to."""
    from test_extract import Evil
    from tiny_root import write_tiny_root

    out = tmp_path_factory.mktemp("ddp")
    root = out / "root"
    ids = write_tiny_root(root)
    bad = ids["train"][1]  # rank 1's only train clip (train[1::2])
    (root / "vit" / f"{bad}.pkl").write_bytes(pickle.dumps(Evil(out / "pwned")))
    (out / "extract").mkdir()
    mp.spawn(_worker, args=(_free_port(), str(out), str(root)), nprocs=WORLD, join=True)
    return {"out": out, "root": root, "ids": ids, "bad": bad}


# ------------------------------------------------------------------------------------------ (a) metric
def _fixed_predictions(n: int = 50, cut: int = 13):
    """Labels and predictions = labels + noise; the clips from ``cut`` on (rank 1's, the larger shard)
    carry a constant offset, as a shard-dependent bias would."""
    rng = np.random.default_rng(0)
    ids = [f"{i:05d}" for i in range(n)]
    true = rng.uniform(size=(n, 6))
    pred = true + 0.3 * rng.normal(size=(n, 6))
    pred[cut:] += 0.5
    return ids, pred, pd.DataFrame(true, index=ids, columns=list(EMOTIONS)), cut


def _metric_part(rank, out):
    from emi_lib.distributed import all_gather_object, gather_predictions, shard_ids
    from emi_lib.eval.metrics import gathered_challenge_score

    ids, pred, labels, cut = _fixed_predictions()
    part = slice(0, cut) if rank == 0 else slice(cut, None)  # 13 vs 37 clips
    my_ids, my_pred = ids[part], pred[part]
    score = gathered_challenge_score(my_ids, my_pred, labels)
    per_rank = all_gather_object(challenge_score(my_pred, labels.loc[my_ids].to_numpy())["mean"])
    errors = {}
    extra = [ids[0]] if rank == 1 else []  # clip 0 is rank 0's; rank 1 sends it too
    extra_ids, extra_pred = my_ids + extra, np.vstack([my_pred, pred[: len(extra)] + 1])
    for name, call in {
        "clash": lambda: gather_predictions(extra_ids, extra_pred),  # clip 0 from both ranks, different rows
        "missing": lambda: gathered_challenge_score(my_ids[:-1], my_pred[:-1], labels),
    }.items():
        try:
            call()
        except ValueError as err:
            errors[name] = str(err)
    same = gather_predictions(my_ids + extra, np.vstack([my_pred, pred[: len(extra)]]))  # same values: kept once
    shards = all_gather_object(shard_ids(ids))
    with open(os.path.join(out, f"metric{rank}.json"), "w") as fh:
        json.dump({"score": score["mean"], "per_emotion": score["per_emotion"], "per_rank": per_rank,
                   "errors": errors, "same_n": len(same), "same_order": list(same.index) == ids,
                   "shards": shards}, fh)


def test_gathered_metric_equals_single_process(spawned):
    tmp_path = spawned["out"]
    ids, pred, labels, cut = _fixed_predictions()
    single = challenge_score(pred, labels.to_numpy())
    res = [json.loads((tmp_path / f"metric{r}.json").read_text()) for r in range(WORLD)]
    for r in res:
        assert abs(r["score"] - single["mean"]) < 1e-6  # on every rank
        for e in EMOTIONS:
            assert abs(r["per_emotion"][e] - single["per_emotion"][e]) < 1e-6
        assert "different values" in r["errors"]["clash"] and "lack 2 clip" in r["errors"]["missing"]
        assert r["same_n"] == len(ids) and r["same_order"]
        assert sorted(sum(r["shards"], [])) == ids and r["shards"][0] == ids[0::2]
    # why it matters: the per-rank r of each shard ignores the offset between shards and weights a
    # 13-clip shard like a 37-clip one; its average is far from the dataset-level score
    per_rank_avg = float(np.mean(res[0]["per_rank"]))
    assert abs(per_rank_avg - single["mean"]) > 0.05, (per_rank_avg, single["mean"])


# ------------------------------------------------------------------------------------------ (b) stage 2
def _stage2_data():
    from test_stage2_train import planted, tiny_cfg

    return planted(44, seed=1), planted(23, seed=2), tiny_cfg(epochs=3, batch_size=6, ckpt_every_steps=2)


def _stage2_part(rank, out):
    from emi_lib.train.stage2 import TrainingInterrupted, train_stage2

    train, val, cfg = _stage2_data()
    model, hist = train_stage2(cfg, train, val, os.path.join(out, "run"), progress=False)
    torch.save(model.state_dict(), os.path.join(out, f"weights{rank}.pt"))
    hist.to_csv(os.path.join(out, f"history{rank}.csv"), index=False)
    with open(os.path.join(out, f"attrs{rank}.json"), "w") as fh:
        json.dump(hist.attrs, fh)
    try:  # killed after step 4 (epoch 2, mid-epoch; checkpoint at step 4), then resumed
        train_stage2(cfg, train, val, os.path.join(out, "run2"), progress=False, stop_after_steps=4)
    except TrainingInterrupted:
        pass
    model, hist = train_stage2(cfg, train, val, os.path.join(out, "run2"), progress=False)
    torch.save(model.state_dict(), os.path.join(out, f"resumed{rank}.pt"))
    hist.to_csv(os.path.join(out, f"resumed{rank}.csv"), index=False)


def test_stage2_two_processes(spawned):
    from emi_lib.train.buckets import shard
    from emi_lib.train.data import epoch_batches
    from emi_lib.train.stage2 import load_run, predict

    tmp_path = spawned["out"]
    w0, w1 = (torch.load(tmp_path / f"weights{r}.pt", weights_only=True) for r in range(WORLD))
    assert w0.keys() == w1.keys() and all(torch.equal(w0[k], w1[k]) for k in w0)  # identical on both ranks
    run = tmp_path / "run"
    assert {p.name for p in run.iterdir()} >= {"config.json", "checkpoint.pt", "best.pt", "history.csv",
                                               "data_summary.json"}
    assert not list(run.glob("*.tmp*"))
    h0, h1 = (pd.read_csv(tmp_path / f"history{r}.csv") for r in range(WORLD))
    pd.testing.assert_frame_equal(h0.drop(columns="epoch_time_s"), h1.drop(columns="epoch_time_s"))
    pd.testing.assert_frame_equal(pd.read_csv(run / "history.csv").drop(columns="epoch_time_s"),
                                  h0.drop(columns="epoch_time_s"))
    train, val, cfg = _stage2_data()
    # every rank ran the same number of steps: 44 clips / 6 = 7 batches -> 6 (a multiple of 2) -> 3 per rank
    assert len(shard(epoch_batches(len(train), 6, cfg.seed, 0), 0, WORLD)) == 3
    assert list(h0["step"]) == [3, 6, 9]
    attrs = json.loads((tmp_path / "attrs0.json").read_text())
    model, _ = load_run(run, "best")
    torch.set_num_threads(1)
    pred, _, _ = predict(model, val)
    score = challenge_score(pred, val.labels)["mean"]
    assert abs(score - attrs["best_score"]) < 1e-6
    assert abs(h0.loc[h0["epoch"] == attrs["best_epoch"], "val_mean_pcc"].item() - score) < 1e-6
    assert all(torch.equal(model.state_dict()[k], w0[k]) for k in w0)  # the returned model is best.pt's
    # a two-process run killed mid-epoch and resumed ends as the uninterrupted one (per-rank RNG,
    # batch order and loss sums restored)
    for r in range(WORLD):
        wr = torch.load(tmp_path / f"resumed{r}.pt", weights_only=True)
        assert all(torch.equal(wr[k], w0[k]) for k in w0)
        pd.testing.assert_frame_equal(pd.read_csv(tmp_path / f"resumed{r}.csv").drop(columns="epoch_time_s"),
                                      h0.drop(columns="epoch_time_s"))


# ------------------------------------------------------------------------------------------ (c) extraction
def _extract_part(rank, root, store):
    from emi_lib.features.extract import extract_split
    from emi_lib.features.store import FeatureStore

    log = open(os.path.join(store, f"writes{rank}.txt"), "a")
    write = FeatureStore.write

    def logged(self, modality, backbone, split, cid, array):
        log.write(f"{modality} {split} {cid}\n")
        log.flush()
        return write(self, modality, backbone, split, cid, array)

    FeatureStore.write = logged
    reps = {}
    for split in ("train", "valid", "test"):
        reps[split] = extract_split(root, split, os.path.join(store, "features"), "vision", "official", progress=False)
    again = extract_split(root, "train", os.path.join(store, "features"), "vision", "official", progress=False)
    with open(os.path.join(store, f"report{rank}.pkl"), "wb") as fh:
        pickle.dump({s: (r.computed, r.existing, r.failed_ids, r.n_clips, r.dim) for s, r in reps.items()}
                    | {"again": (again.computed, again.existing, again.failed_ids, again.n_clips, again.dim)}, fh)
    FeatureStore.write = write
    log.close()


def test_extraction_two_processes(spawned):
    from emi_lib.features.extract import read_meta
    from emi_lib.features.store import FeatureStore

    ids, bad, out = spawned["ids"], spawned["bad"], spawned["out"] / "extract"
    assert not (spawned["out"] / "pwned").exists()
    writes = sum(((out / f"writes{r}.txt").read_text().split("\n")[:-1] for r in range(WORLD)), [])
    good = [f"vision {s} {c}" for s in ("train", "valid", "test") for c in ids[s] if c != bad]
    assert sorted(writes) == sorted(good)  # every clip written exactly once, by one rank
    store = FeatureStore(out / "features")
    reps = [pickle.loads((out / f"report{r}.pkl").read_bytes()) for r in range(WORLD)]
    assert reps[0] == reps[1]  # the same merged report on every rank
    for split in ("train", "valid", "test"):
        computed, existing, failed, n, dim = reps[0][split]
        expected = [c for c in ids[split] if c != bad]
        assert computed == expected and existing == [] and n == len(ids[split]) and dim == 8
        assert failed == ([bad] if split == "train" else [])
        meta = read_meta(store, "vision", "official", split)
        assert meta["n_clips"] == len(ids[split]) and meta["n_stored"] == len(expected)
        assert sorted(store.done_ids("vision", "official", split)) == expected
    assert read_meta(store, "vision", "official", "train")["failed"][bad]["kind"] == "unsafe"  # rank 1's failure
    computed, existing, failed, n, _ = reps[0]["again"]  # a rerun: nothing recomputed, the failure retried
    assert computed == [] and existing == [c for c in ids["train"] if c != bad] and failed == [bad]


# ------------------------------------------------------------------------------------------ (d) stage 1
def _stage1_setup():
    from test_stage1_train import DT, D, planted

    from emi_lib.models.aligner import AlignerConfig

    tr, va = planted(64, seed=1), planted(24, seed=2)
    cfg = AlignerConfig.tiny(D, DT, epochs=3, lr=3e-3, batch_size=8, dropout=0.0, device="cpu")
    return cfg, tr, va


def _stage1_part(rank, out):
    from emi_lib.train.stage1 import train_aligner

    cfg, (tf, tt, _), (vf, vt, _) = _stage1_setup()
    model, hist = train_aligner(cfg, tf, tt, vf, vt, progress=False)
    torch.save(model.state_dict(), os.path.join(out, f"s1_{rank}.pt"))
    hist.to_csv(os.path.join(out, f"s1_hist{rank}.csv"))


def test_stage1_two_processes_global_negatives(spawned):
    """2 ranks x 8 clips with all-gathered negatives = one process with batches of 16 (same order)."""
    import dataclasses

    from emi_lib.train.stage1 import train_aligner

    tmp_path = spawned["out"]
    w0, w1 = (torch.load(tmp_path / f"s1_{r}.pt", weights_only=True) for r in range(WORLD))
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    h0 = pd.read_csv(tmp_path / "s1_hist0.csv", index_col=0)
    cfg, (tf, tt, _), (vf, vt, _) = _stage1_setup()
    torch.set_num_threads(1)
    single, hs = train_aligner(dataclasses.replace(cfg, batch_size=16), tf, tt, vf, vt, progress=False)
    assert list(h0.index) == [0, 1, 2, 3] and h0["train_loss"].iloc[1:].notna().all()
    np.testing.assert_allclose(h0["train_loss"].iloc[1:], hs["train_loss"].iloc[1:], rtol=1e-4)
    # (val_loss is not compared: its ClipLoss batches are batch_size clips, 8 here and 16 there)
    np.testing.assert_allclose(h0["val_clip2text_R@1"], hs["val_clip2text_R@1"])
    np.testing.assert_allclose(h0["logit_scale"], hs["logit_scale"], rtol=1e-5)
    for k, v in single.state_dict().items():
        np.testing.assert_allclose(w0[k].numpy(), v.numpy(), atol=1e-4, err_msg=k)


@pytest.mark.parametrize("n", [7])
def test_shard_ids_single_process(n):
    from emi_lib.distributed import context, gather_predictions, shard_ids

    ids = [str(i) for i in range(n)]
    assert shard_ids(ids) == ids and context().world == 1  # no process group: one rank holds everything
    assert sum((shard_ids(ids, r, 3) for r in range(3)), []) != ids  # interleaved, ...
    assert sorted(sum((shard_ids(ids, r, 3) for r in range(3)), [])) == sorted(ids)  # ... each clip once
    df = gather_predictions(ids[::-1], np.arange(n * 6).reshape(n, 6)[::-1])
    assert list(df.index) == sorted(ids) and df.iloc[0, 0] == 0
    assert gather_predictions([], []).shape == (0, len(EMOTIONS))  # a rank that holds no clip
