"""Stage-2 models: visual TCN, gated audio BiLSTM, pooling (shared with stage 1), quality-guided fusion, the EMI model."""

from emi_lib.models.emi_model import MODEL_FUSIONS, EMIModel, EMIModelConfig, count_parameters
from emi_lib.models.fusion import (
    FUSION_KINDS,
    ConcatFusion,
    EqualFusion,
    Fusion,
    QualityGuidedFusion,
    StaticFusion,
    build_fusion,
    resample_linear,
)
from emi_lib.models.gated_bilstm import GatedBiLSTM, lengths_from_mask
from emi_lib.models.pooling import (
    POOLING_KINDS,
    AttentionPooling,
    MeanPooling,
    make_pooling,
    masked_mean,
    masked_softmax,
)
from emi_lib.models.tcn import TemporalBlock, TemporalConvNet, default_dilations, tcn_receptive_field

__all__ = [
    "FUSION_KINDS",
    "MODEL_FUSIONS",
    "POOLING_KINDS",
    "AttentionPooling",
    "ConcatFusion",
    "EMIModel",
    "EMIModelConfig",
    "EqualFusion",
    "Fusion",
    "GatedBiLSTM",
    "MeanPooling",
    "QualityGuidedFusion",
    "StaticFusion",
    "TemporalBlock",
    "TemporalConvNet",
    "build_fusion",
    "count_parameters",
    "default_dilations",
    "lengths_from_mask",
    "make_pooling",
    "masked_mean",
    "masked_softmax",
    "resample_linear",
    "tcn_receptive_field",
]
