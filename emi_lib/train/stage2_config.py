"""The configuration of a stage-2 run (:class:`Stage2Config`) and the check that a checkpoint may be resumed
under a config (:func:`check_resumable`). The training it configures: :mod:`emi_lib.train.stage2`."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from emi_lib.features.quality import PRIOR_COLUMNS
from emi_lib.models.emi_model import EMIModelConfig
from emi_lib.train.augment import check_augment_fields
from emi_lib.train.checkpoint import atomic_write_text

#: Config fields that may change between a run and its resume (they do not change the result).
RESUMABLE_CHANGES = ("device", "num_workers", "ckpt_every_steps", "max_missing_share")


@dataclass
class Stage2Config:
    """One stage-2 run. JSON-able (``to_json``/``from_json``); unknown keys raise."""

    model: dict = field(default_factory=lambda: EMIModelConfig().to_dict())  # EMIModelConfig fields
    mse_weight: float = 1.0  # lambda_mse of the loss
    pcc_weight: float = 1.0  # lambda_pcc of the loss (mean over emotions of 1 - batch r)
    lr: float = 2e-3  # peak AdamW learning rate
    weight_decay: float = 1e-2  # AdamW weight decay (weights only, not biases / norms)
    warmup_steps: int | None = None  # linear warm-up steps; None = round(warmup_ratio * total steps)
    warmup_ratio: float = 0.05  # warm-up share of all steps when warmup_steps is None
    min_lr_ratio: float = 0.0  # floor of the cosine decay, as a share of lr
    epochs: int = 30  # maximum epochs
    batch_size: int = 32  # training clips per optimiser step (per rank under DDP)
    eval_batch_size: int | None = None  # clips per evaluation batch; None = 2 * batch_size
    grad_clip: float | None = 1.0  # max global gradient norm; None = no clipping
    patience: int | None = 6  # stop after this many epochs without a better val mean PCC; None = off
    min_delta: float = 0.0  # an improvement must exceed the best score by more than this
    drop_last: bool = True  # drop an incomplete last training batch (never in evaluation)
    bucket_by_length: bool = False  # training batches group clips of similar length (emi_lib.train.buckets)
    seed: int = 0  # seeds init, dropout and the per-epoch batch order
    deterministic: bool = True  # deterministic kernels where cheap (seeding.seed_everything)
    max_len: int | None = 256  # longer vision (and audio) sequences are subsampled to this many steps
    max_len_audio: int | None = None  # audio limit if it should differ; None = max_len
    prior_columns: dict = field(default_factory=lambda: {k: list(v) for k, v in PRIOR_COLUMNS.items()})
    # ^ prior-table columns fed per stream when model["use_priors"]; lengths must equal prior_dims
    ckpt_every_steps: int | None = 50  # also checkpoint every this many optimiser steps; None = epochs only
    restore_best: bool = True  # return the best validation weights; RuntimeError when none (every score NaN)
    num_workers: int = 0  # DataLoader workers for training batches (0 = collate in this process)
    device: str = "auto"  # "auto" (cuda if available) | "cpu" | "cuda" | "cuda:1" ...
    # --- training-time augmentation (emi_lib.train.augment) and auxiliary heads; all off by default ---
    modality_dropout: float = 0.0  # share of training clips losing one of their (>= 2) available streams
    corrupt_prob: float = 0.0  # share of training clips given a face-span or an audio-noise corruption
    corrupt_face_span: list = field(default_factory=lambda: [0.3, 1.0])  # range of the hidden vision share
    corrupt_snr_db: list = field(default_factory=lambda: [-10.0, 20.0])  # range of the audio-noise SNR (dB)
    aux_weight: float = 0.0  # w_aux of the per-modality heads' loss (needs model aux_heads=True)
    # largest share of a split's clips that may lack a stream's features although their media exist (failed
    # extractions; clips whose media are absent, Stage2Data.absent, do not count): above it training refuses
    max_missing_share: float = 0.02

    def __post_init__(self):
        if isinstance(self.model, EMIModelConfig):
            self.model = self.model.to_dict()
        mcfg = self.model_config()  # validates the model fields
        self.model = mcfg.to_dict()
        self.prior_columns = {str(k): [str(c) for c in v] for k, v in self.prior_columns.items()}
        if mcfg.use_priors:
            for m, d in mcfg.prior_dims.items():
                if d and len(self.prior_columns.get(m, [])) != d:
                    raise ValueError(f"model prior_dims[{m!r}] = {d} but prior_columns[{m!r}] = "
                                     f"{self.prior_columns.get(m)}: give one column per prior value")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be >= 1")
        if not 0.0 <= self.max_missing_share <= 1.0:
            raise ValueError(f"max_missing_share must be in [0, 1], got {self.max_missing_share}")
        check_augment_fields(self)

    def model_config(self) -> EMIModelConfig:
        return EMIModelConfig.from_dict(dict(self.model))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Stage2Config:
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown Stage2Config fields {unknown}")
        return cls(**d)

    def to_json(self, path=None) -> str:
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"
        if path is not None:
            atomic_write_text(text, path)
        return text

    @classmethod
    def from_json(cls, src) -> Stage2Config:
        """From a JSON string or a path to a JSON file."""
        s = str(src)
        text = Path(s).read_text() if not s.lstrip().startswith("{") else s
        return cls.from_dict(json.loads(text))


def check_resumable(saved: dict, cfg: Stage2Config, path: Path) -> None:
    """ValueError when ``saved`` (a checkpoint's config dict) differs from ``cfg`` in a field that changes the result."""
    now = cfg.to_dict()
    # a field added after the checkpoint was written counts as its default (it did not exist, so it was off)
    defaults = Stage2Config().to_dict()
    saved = {**{k: v for k, v in defaults.items() if k not in saved and k != "model"}, **saved}
    if isinstance(saved.get("model"), dict):  # the same for model fields (e.g. aux_heads)
        saved["model"] = {**EMIModelConfig().to_dict(), **saved["model"]}
    diff = sorted(k for k in set(saved) | set(now) if k not in RESUMABLE_CHANGES and saved.get(k) != now.get(k))
    if diff:
        raise ValueError(f"{path} was written with another config (fields {diff} differ): use a new run_dir "
                         "or resume=False")
