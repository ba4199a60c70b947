"""Named stage-2 budgets (model sizes, epochs, sequence caps) per profile, and the config builder the
notebooks share, so notebook 02's full model and notebook 03's ablation variants are the same model.

Every number is ours (the paper gives none): the demo budget trains one model in 10-35 s on one CPU
thread; smoke is only for tests; full is a starting point for real data on a GPU.
"""

from __future__ import annotations

from emi_lib.models.emi_model import EMIModelConfig
from emi_lib.train.stage2 import Stage2Config

#: profile -> sizes and budget of the stage-2 model
STAGE2_BUDGET: dict[str, dict] = {
    "smoke": dict(tcn_channels=[16, 16],  # TCN channels per residual block (2 blocks: RF 13 steps)
                  lstm_hidden=16,  # BiLSTM hidden size per direction
                  fusion_dim=16, head_hidden=16,  # fused vector size, head MLP hidden size
                  epochs=3,  # maximum epochs (early stopping may end sooner)
                  max_len=48, max_len_audio=64),  # steps kept per clip (evenly spaced)
    # demo: sized for 16-23-d face and ~129-d voice features. Demo root, one seed, one thread on a busy machine:
    # 39 s per run against 188 s for [64]*4 channels / 48 hidden / 150 audio steps, validation 0.609 vs 0.622
    "demo": dict(tcn_channels=[32, 32, 32, 32], lstm_hidden=32, fusion_dim=64, head_hidden=64, epochs=14,
                 max_len=128, max_len_audio=100),
    "full": dict(tcn_channels=[128, 128, 128, 128], lstm_hidden=128, fusion_dim=128, head_hidden=64, epochs=30,
                 max_len=256, max_len_audio=512),
}

#: training hyper-parameters shared by every profile (notebook parameters may override them)
TRAIN_DEFAULTS = dict(lr=2e-3,  # peak AdamW learning rate
                      batch_size=32,  # clips per step
                      patience=6,  # early stopping on the validation mean PCC
                      mse_weight=1.0, pcc_weight=1.0,  # loss = mse_weight * MSE + pcc_weight * mean(1 - r)
                      tcn_kernel=3, tau=1.0,  # TCN kernel size; softmax temperature of the quality weights
                      quality_hidden=32, dropout=0.1,  # quality-MLP size; dropout of TCN, LSTM and head
                      # training-time augmentation (emi_lib.train.augment) and auxiliary heads. Demo root, raw
                      # features, one seed: dropout 0.3 raised validation mean PCC 0.610 -> 0.633, corruption 0.5
                      # 0.610 -> 0.614; auxiliary heads 0.615 -> 0.619 (off). Notebook 03 over 3 seeds (demo run):
                      # neither dropout nor corruption training shown to help (+0.003 each, intervals about +-0.04)
                      modality_dropout=0.3,  # share of training clips losing one of their streams (ABAW10: 0.3)
                      corrupt_prob=0.3,  # share of training clips given a face-span or audio-noise corruption
                      corrupt_face_span=(0.3, 1.0),  # range of the share of a clip's vision steps hidden
                      corrupt_snr_db=(-10.0, 20.0),  # range of the feature-space audio-noise SNR (dB)
                      aux_weight=0.0,  # weight of the per-modality auxiliary heads' loss
                      aux_heads=None)  # build the auxiliary heads; None = exactly when aux_weight > 0


def budget(profile: str) -> dict:
    """The profile's budget (``full`` for any profile name not listed, e.g. a real-data run)."""
    return dict(STAGE2_BUDGET.get(profile, STAGE2_BUDGET["full"]))


def stage2_config(profile: str, dims: dict, *, fusion: str = "quality", use_priors: bool = True, seed: int = 0,
                  use_text: bool = False, swap_encoders: bool = False, n_train: int | None = None,
                  **overrides) -> Stage2Config:
    """A :class:`Stage2Config` for ``profile``. ``dims``: {"vision": D, "audio": D, "text": D or None}.
    Priors are used only by quality fusion. ``overrides``: any budget or ``TRAIN_DEFAULTS`` key (None = keep)."""
    b = budget(profile) | dict(TRAIN_DEFAULTS)
    unknown = set(overrides) - set(b)  # checked before merging (merged keys would always be "known")
    if unknown:
        raise TypeError(f"unknown stage-2 budget key(s) {sorted(unknown)}")
    b.update({k: v for k, v in overrides.items() if v is not None})
    aux_heads = b["aux_weight"] > 0 if b["aux_heads"] is None else bool(b["aux_heads"])
    model = EMIModelConfig(
        vision_dim=dims["vision"], audio_dim=dims["audio"], text_dim=dims.get("text") or 384, use_text=use_text,
        tcn_channels=list(b["tcn_channels"]), tcn_kernel=b["tcn_kernel"], lstm_hidden=b["lstm_hidden"],
        fusion_dim=b["fusion_dim"], head_hidden=b["head_hidden"], quality_hidden=b["quality_hidden"], tau=b["tau"],
        tcn_dropout=b["dropout"], lstm_dropout=b["dropout"], head_dropout=b["dropout"],
        fusion=fusion, use_priors=bool(use_priors and fusion == "quality"), swap_encoders=swap_encoders,
        aux_heads=aux_heads)
    batch = b["batch_size"] if n_train is None else min(b["batch_size"], n_train)
    return Stage2Config(model=model.to_dict(), mse_weight=b["mse_weight"], pcc_weight=b["pcc_weight"], lr=b["lr"],
                        epochs=b["epochs"], batch_size=batch, patience=b["patience"], seed=seed,
                        max_len=b["max_len"], max_len_audio=b["max_len_audio"], ckpt_every_steps=None, device="auto",
                        modality_dropout=b["modality_dropout"], corrupt_prob=b["corrupt_prob"],
                        corrupt_face_span=list(b["corrupt_face_span"]), corrupt_snr_db=list(b["corrupt_snr_db"]),
                        aux_weight=b["aux_weight"])
