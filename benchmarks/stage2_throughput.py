"""Stage-2 throughput: training and inference clips/s of the full model (TCN + gated BiLSTM +
quality-guided fusion), and the share of step time spent waiting for data (batch iterator and
collate) against the total step time. A benchmark, not a test.

    python benchmarks/stage2_throughput.py                       # random demo-like sequences
    python benchmarks/stage2_throughput.py --store DIR --root ROOT  # a feature store (train split)

Random inputs (default) mimic the demo profile with raw features: vision 10 fps x ~5 s with a
64-d frame embedding, audio log-mel at 100 steps/s (64-d), a few clips missing a modality.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
import torch

from emi_lib.constants import EMOTIONS
from emi_lib.models.emi_model import EMIModel, EMIModelConfig, count_parameters
from emi_lib.train.data import Stage2Data, Stage2Dataset, epoch_batches, eval_batches, to_device
from emi_lib.train.losses import emi_loss


def random_data(n: int, vision_dim: int, audio_dim: int, vision_len: float, audio_len: float, seed: int) -> Stage2Data:
    rng = np.random.default_rng(seed)
    ids = [f"{i:05d}" for i in range(n)]
    vision, audio = {}, {}
    for i, cid in enumerate(ids):
        tv = max(2, int(rng.normal(vision_len, 0.3 * vision_len)))
        ta = max(2, int(tv * audio_len / vision_len))
        if i % 40 != 1:  # ~2.5 % lack the face
            vision[cid] = rng.standard_normal((tv, vision_dim), dtype=np.float32)
        if i % 40 != 2:  # ~2.5 % lack the audio
            audio[cid] = rng.standard_normal((ta, audio_dim), dtype=np.float32)
    labels = pd.DataFrame(rng.random((n, len(EMOTIONS))), index=ids, columns=list(EMOTIONS))
    priors = pd.DataFrame({"face_quality": rng.random(n), "audio_quality": rng.random(n)}, index=ids)
    absent = {"vision": [c for c in ids if c not in vision], "audio": [c for c in ids if c not in audio]}
    return Stage2Data(vision, audio, labels=labels, priors=priors, ids=ids, absent=absent)


def store_data(store_dir: str, root: str, split: str, vision: str, audio: str) -> Stage2Data:
    from emi_lib.data import DataRoot
    from emi_lib.features.quality import compute_priors
    from emi_lib.features.store import FeatureStore
    from emi_lib.train.data import media_absent

    dr = DataRoot(root)
    return Stage2Data.from_store(FeatureStore(store_dir), split, vision=("vision", vision), audio=("audio", audio),
                                 labels=dr.split(split), priors=compute_priors(root, split, progress=False),
                                 ids=dr.ids(split), absent=media_absent(dr, split))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", help="a FeatureStore folder (else random sequences)")
    ap.add_argument("--root", help="the data root of --store (labels, priors)")
    ap.add_argument("--split", default="train")
    ap.add_argument("--vision-backbone", default="openclip-tiny")
    ap.add_argument("--audio-backbone", default="logmel")
    ap.add_argument("--clips", type=int, default=300, help="random clips")
    ap.add_argument("--vision-dim", type=int, default=64)
    ap.add_argument("--audio-dim", type=int, default=64)
    ap.add_argument("--vision-len", type=float, default=50, help="mean vision steps per random clip")
    ap.add_argument("--audio-len", type=float, default=500, help="mean audio steps per random clip")
    ap.add_argument("--max-len", type=int, default=128)
    ap.add_argument("--max-len-audio", type=int, default=150)
    ap.add_argument("--tcn-channels", type=int, nargs="+", default=[64, 64, 64, 64])
    ap.add_argument("--lstm-hidden", type=int, default=48)
    ap.add_argument("--fusion-dim", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=2, help="timed training epochs (after one warm-up step)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: see notebook 02 on OpenMP spin-waits)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)

    data = (store_data(args.store, args.root, args.split, args.vision_backbone, args.audio_backbone) if args.store
            else random_data(args.clips, args.vision_dim, args.audio_dim, args.vision_len, args.audio_len, args.seed))
    dims = data.dims()
    cfg = EMIModelConfig(vision_dim=dims["vision"], audio_dim=dims["audio"], tcn_channels=args.tcn_channels,
                         lstm_hidden=args.lstm_hidden, fusion_dim=args.fusion_dim, fusion="quality", use_priors=True)
    t0 = time.perf_counter()
    ds = Stage2Dataset(data, {"vision": dims["vision"], "audio": dims["audio"], "text": 1}, args.max_len,
                       args.max_len_audio, prior_columns={"vision": ["face_quality"], "audio": ["audio_quality"]})
    prep_s = time.perf_counter() - t0
    net = EMIModel(cfg).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)

    def train_epoch(epoch: int, limit: int | None = None) -> tuple[int, float, float]:
        net.train()
        wait = total = 0.0
        n = 0
        batches = epoch_batches(len(ds), args.batch_size, args.seed, epoch)[:limit]
        it = iter(batches)
        while True:
            t_a = time.perf_counter()
            b = next(it, None)
            if b is None:
                break
            batch = to_device(ds.collate(b), device)
            t_b = time.perf_counter()
            loss, _ = emi_loss(net(batch)["pred"], batch["labels"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            t_c = time.perf_counter()
            wait += t_b - t_a
            total += t_c - t_a
            n += len(b)
        return n, wait, total

    train_epoch(0, limit=1)  # warm-up
    n = wait = total = 0.0
    for e in range(args.epochs):
        dn, dw, dt = train_epoch(e + 1)
        n, wait, total = n + dn, wait + dw, total + dt
    net.eval()
    iwait = itotal = 0.0
    with torch.no_grad():
        for b in eval_batches(len(ds), 2 * args.batch_size):
            t_a = time.perf_counter()
            batch = to_device(ds.collate(b), device)
            t_b = time.perf_counter()
            net(batch)
            if device.type == "cuda":
                torch.cuda.synchronize()
            t_c = time.perf_counter()
            iwait += t_b - t_a
            itotal += t_c - t_a
    lens = {m: np.mean([len(s) for s in ds.seqs[m] if len(s)]) for m in ("vision", "audio")}
    print(f"data: {'store ' + args.store if args.store else 'random'}; {len(ds)} clips; mean steps after "
          f"subsampling vision {lens['vision']:.0f}, audio {lens['audio']:.0f}; dims {dims['vision']}/{dims['audio']}; "
          f"dataset preparation {prep_s:.2f} s")
    print(f"model: {count_parameters(net):,} parameters; device {device}; threads {torch.get_num_threads()}; "
          f"batch {args.batch_size}")
    table = pd.DataFrame({
        "clips": [int(n), len(ds)],
        "seconds": [total, itotal],
        "clips/s": [n / total, len(ds) / itotal],
        "data wait share": [wait / total, iwait / itotal],
    }, index=pd.Index(["training", "inference"], name="phase"))
    print(table.to_string(float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    main()
