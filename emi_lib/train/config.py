"""Every hyper-parameter the workbench trains with, and its presets: ``smoke`` (tests), ``demo`` (SynthMimic on a
laptop CPU), ``full`` (real data on a GPU). One commented line per field; every number is ours (the paper
publishes none). The notebooks, the command line (``emi_lib.train.launch``) and notebook 03's ablation all
build their configs here, so notebook 02's full model, the CLI's and the ablation's reference are one model.

* :data:`STAGE1` -> :func:`stage1_config` (an :class:`~emi_lib.models.aligner.AlignerConfig`, one per modality)
* :data:`FINETUNE` -> :func:`finetune_config` (the fine-tuned image tower, :mod:`emi_lib.train.finetune`)
* :data:`STAGE2` + :data:`STAGE2_TRAIN` -> :func:`stage2_config` (a :class:`~emi_lib.train.stage2.Stage2Config`)

Overrides are keyword arguments: ``None`` keeps the preset (a notebook parameter left at None), any other
value wins, and a key that names no field raises ``TypeError`` (``learning_rate=`` is not ``lr=``). The
dataclasses' own defaults are for library use; the presets below are what the workbench runs.
"""

from __future__ import annotations

from emi_lib.models.aligner import AlignerConfig
from emi_lib.models.emi_model import EMIModelConfig
from emi_lib.train.finetune import FinetuneConfig
from emi_lib.train.stage2 import Stage2Config

PROFILES = ("smoke", "demo", "full")

#: stage 1, the modality-text aligners (AlignerConfig fields), per profile
STAGE1: dict[str, dict] = {
    "smoke": dict(embed_dim=16,  # E, size of the shared clip/text space
                  hidden=32,  # width of the frame and text projector MLPs
                  attn_hidden=32,  # rows of V in the attention pooling
                  epochs=3,  # passes over the training clips (no early stopping)
                  batch_size=8,  # clips per contrastive batch (= negatives + 1)
                  lr=1e-3,  # AdamW learning rate
                  max_steps=256,  # training sequences longer than this are subsampled (the export keeps all)
                  oof_folds=3),  # K of the out-of-fold training-split export when the text is the label
    # demo: 300 training clips; 25 epochs take ~20 s per aligner on one CPU thread
    "demo": dict(embed_dim=64, hidden=128, attn_hidden=64, epochs=25, batch_size=64, lr=1e-3, max_steps=256,
                 oof_folds=3),  # K=3 costs 1.5x the main aligner, K=5 2.8x (measured on the demo's shapes)
    "full": dict(embed_dim=128, hidden=256, attn_hidden=64, epochs=60, batch_size=128, lr=1e-3, max_steps=256,
                 oof_folds=5),
}

#: the fine-tuned open_clip image tower (FinetuneConfig fields); "full" uses the demo preset
FINETUNE: dict[str, dict] = {
    "smoke": dict(frames_per_clip=2,  # crops sampled per clip and step
                  max_frames=8,  # crops preloaded per clip, spread over it
                  epochs=3, batch_size=8,  # passes over the clips; clips per contrastive batch
                  lr=3e-4,  # AdamW learning rate of the tower (heads: FinetuneConfig.lr_head)
                  warmup_steps=0,  # linear warm-up steps before the cosine decay
                  embed_dim=16),  # size of the loss's joint space
    # demo: <= ~90 s on one CPU thread for 300 clips
    "demo": dict(frames_per_clip=4, max_frames=32, epochs=32, batch_size=16, lr=3e-4, warmup_steps=10, embed_dim=64),
}
FINETUNE["full"] = dict(FINETUNE["demo"])

#: stage 2, model sizes and budget per profile
STAGE2: dict[str, dict] = {
    "smoke": dict(tcn_channels=[16, 16],  # TCN channels per residual block (2 blocks: RF 13 steps)
                  lstm_hidden=16,  # BiLSTM hidden size per direction
                  fusion_dim=16,  # fused vector size
                  head_hidden=16,  # head MLP hidden size
                  epochs=3,  # maximum epochs (early stopping may end sooner)
                  max_len=48,  # vision steps kept per clip (evenly spaced)
                  max_len_audio=64),  # audio steps kept per clip
    # demo: sized for 16-23-d face and ~129-d voice features. Demo root, one seed, one thread on a busy machine:
    # 39 s per run against 188 s for [64]*4 channels / 48 hidden / 150 audio steps, validation 0.609 vs 0.622
    "demo": dict(tcn_channels=[32, 32, 32, 32], lstm_hidden=32, fusion_dim=64, head_hidden=64, epochs=14,
                 max_len=128, max_len_audio=100),
    "full": dict(tcn_channels=[128, 128, 128, 128], lstm_hidden=128, fusion_dim=128, head_hidden=64, epochs=30,
                 max_len=256, max_len_audio=512),
}

#: stage-2 training recipe, the same for every profile
STAGE2_TRAIN = dict(lr=2e-3,  # peak AdamW learning rate (cosine decay after a 5% warm-up)
                    batch_size=32,  # clips per optimiser step (per rank under DDP)
                    patience=6,  # early stopping: epochs without a better validation mean PCC
                    mse_weight=1.0,  # loss = mse_weight * MSE + pcc_weight * mean_e (1 - r_e)
                    pcc_weight=1.0,
                    tcn_kernel=3,  # TCN kernel size
                    tau=1.0,  # softmax temperature of the quality weights
                    quality_hidden=32,  # hidden size of the quality MLPs
                    dropout=0.1,  # dropout of the TCN, the LSTM and the head
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


def _check_profile(profile: str) -> str:
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {PROFILES}")
    return profile


def _merge(preset: dict, overrides: dict, what: str) -> dict:
    """``preset`` with the non-None ``overrides``; a key the preset does not have raises (checked before
    merging, or every merged key would look known)."""
    unknown = set(overrides) - set(preset)
    if unknown:
        raise TypeError(f"unknown {what} key(s) {sorted(unknown)}; known: {sorted(preset)}")
    return preset | {k: v for k, v in overrides.items() if v is not None}


def stage1_preset(profile: str, **overrides) -> dict:
    """:data:`STAGE1` of ``profile`` with ``overrides`` (None keeps the preset; an unknown key raises)."""
    return _merge(dict(STAGE1[_check_profile(profile)]), overrides, "stage-1")


def stage1_config(profile: str, modality: str, in_dim: int, text_dim: int, *, seed: int = 0, device: str = "auto",
                  **overrides) -> AlignerConfig:
    """The aligner of one modality: the :data:`STAGE1` preset of ``profile`` (without ``oof_folds``), then any
    :class:`AlignerConfig` field as an override (``pooling=``, ``label_aware=``, ...; None keeps the preset)."""
    fields = set(AlignerConfig.__dataclass_fields__) - {"modality", "in_dim", "text_dim", "seed", "device"}
    unknown = set(overrides) - fields
    if unknown:
        raise TypeError(f"unknown stage-1 key(s) {sorted(unknown)}; known: {sorted(fields)}")
    p = {k: v for k, v in STAGE1[_check_profile(profile)].items() if k != "oof_folds"}
    p |= {k: v for k, v in overrides.items() if v is not None}
    return AlignerConfig(modality=modality, in_dim=in_dim, text_dim=text_dim, seed=seed, device=device, **p)


def oof_folds(profile: str, text_source: str, override: int | None = None) -> int:
    """K of the out-of-fold training-split export: ``override`` when given (0 = off; applies to transcripts
    too), else the preset's K when the text is the label and 0 (in fold) with transcripts."""
    k = int(override) if override is not None else (STAGE1[_check_profile(profile)]["oof_folds"]
                                                     if text_source == "label_prompt" else 0)
    if k == 1 or k < 0:
        raise ValueError(f"out-of-fold K must be 0 (off) or at least 2, got {override}")
    return k


def finetune_config(profile: str, **overrides) -> FinetuneConfig:
    """The fine-tuned tower's :class:`FinetuneConfig`: :data:`FINETUNE` of ``profile``, then any field."""
    p = dict(FINETUNE[_check_profile(profile)])
    unknown = set(overrides) - set(FinetuneConfig.__dataclass_fields__)
    if unknown:
        raise TypeError(f"unknown fine-tuning key(s) {sorted(unknown)}")
    return FinetuneConfig(**(p | {k: v for k, v in overrides.items() if v is not None}))


def stage2_preset(profile: str) -> dict:
    """:data:`STAGE2` of ``profile`` merged with :data:`STAGE2_TRAIN` (every key :func:`stage2_config` accepts)."""
    return dict(STAGE2[_check_profile(profile)]) | dict(STAGE2_TRAIN)


def stage2_config(profile: str, dims: dict, *, fusion: str = "quality", use_priors: bool = True, seed: int = 0,
                  use_text: bool = False, swap_encoders: bool = False, n_train: int | None = None,
                  **overrides) -> Stage2Config:
    """A :class:`Stage2Config` for ``profile``. ``dims``: {"vision": D, "audio": D, "text": D or None}.
    Priors are used only by quality fusion. ``overrides``: any :func:`stage2_preset` key (None keeps it)."""
    b = _merge(stage2_preset(profile), overrides, "stage-2")
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
