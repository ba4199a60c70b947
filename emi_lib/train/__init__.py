"""Stage-2 training: losses, data, the loop with resumable checkpoints, seeding.

``emi_lib.train.stage1`` (stage-1 aligners) is imported on its own (it needs open_clip).
"""

from emi_lib.train.checkpoint import CheckpointMismatchError
from emi_lib.train.data import Stage2Data
from emi_lib.train.losses import emi_loss, pearson_per_column
from emi_lib.train.seeding import seed_everything
from emi_lib.train.stage2 import (
    Stage2Config,
    TrainingInterrupted,
    load_run,
    load_weights,
    predict,
    train_stage2,
)

__all__ = [
    "CheckpointMismatchError",
    "Stage2Config",
    "Stage2Data",
    "TrainingInterrupted",
    "emi_loss",
    "load_run",
    "load_weights",
    "pearson_per_column",
    "predict",
    "seed_everything",
    "train_stage2",
]
