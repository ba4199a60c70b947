r"""Stage 1's contrastive losses: open_clip's ``ClipLoss`` and the label-aware variant (ours).

The loss is the symmetric InfoNCE of CLIP over a batch of B (clip, text) pairs (:mod:`emi_lib.models.aligner`).
It lives in its own module because open_clip's package import costs seconds (it imports torchvision and
transformers): the aligner, the configs and everything stage 2 runs import no open_clip.

Label-aware negatives (ours, option ``label_aware``): in emotion data many clips share nearly the
same label vector, and InfoNCE would push them apart as negatives. :class:`LabelAwareClipLoss`
masks out of both softmax denominators every off-diagonal pair (i, j) whose label vectors are
within ``label_aware_threshold``: they are neither positives nor negatives,

.. math::

    \mathcal L_i = -s\,v_i^\top u_i + \log \sum_{j:\ j = i \ \lor\ d(y_i, y_j) > \delta} \exp(s\, v_i^\top u_j),

with :math:`d` the mean absolute difference (``"l1"``) or the cosine distance (``"cosine"``).
With no pair within the threshold it is exactly ``ClipLoss``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss

from emi_lib.models.aligner import LABEL_DISTANCES, AlignerConfig


def label_distance(labels: torch.Tensor, metric: str = "l1") -> torch.Tensor:
    """(B, 6) label vectors -> (B, B) distances: mean |y_i - y_j| (``"l1"``) or 1 - cos (``"cosine"``).

    For the cosine, an all-zero label vector has distance 0 to another all-zero one and 1 to any
    other vector (the cosine is undefined there; ours)."""
    y = labels.float()
    if metric == "l1":
        return (y[:, None, :] - y[None, :, :]).abs().mean(-1)
    if metric == "cosine":
        norm = y.norm(dim=-1)
        d = 1.0 - F.normalize(y, dim=-1) @ F.normalize(y, dim=-1).T
        zero = norm <= 1e-12
        d = torch.where(zero[:, None] | zero[None, :], torch.ones_like(d), d)
        return torch.where(zero[:, None] & zero[None, :], torch.zeros_like(d), d)
    raise ValueError(f"unknown label distance {metric!r}; choose one of {LABEL_DISTANCES}")


class LabelAwareClipLoss(ClipLoss):
    """``ClipLoss`` whose denominators skip off-diagonal pairs with near-identical labels (module docstring).

    ``forward(image_features, text_features, logit_scale, labels=None, output_dict=False)``; without
    labels, or with no pair within the threshold, the result equals ``ClipLoss`` exactly."""

    def __init__(self, threshold: float = 0.05, metric: str = "l1", **kwargs):
        super().__init__(**kwargs)
        if metric not in LABEL_DISTANCES:
            raise ValueError(f"unknown label distance {metric!r}; choose one of {LABEL_DISTANCES}")
        self.threshold = float(threshold)
        self.metric = metric
        self.last_masked_pairs = 0  # off-diagonal pairs masked in the last call (diagnostic)

    def positive_mask(self, labels: torch.Tensor) -> torch.Tensor:
        """(B, B) bool, True for i != j whose labels are within the threshold."""
        close = label_distance(labels, self.metric) <= self.threshold
        return close & ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)

    def forward(self, image_features, text_features, logit_scale, labels=None, logit_bias=None, output_dict=False):
        if labels is None:
            return super().forward(image_features, text_features, logit_scale, logit_bias, output_dict)
        if self.world_size > 1:
            raise NotImplementedError("label-aware negatives are implemented for a single process only")
        logits_per_image, logits_per_text = self.get_logits(image_features, text_features, logit_scale, logit_bias)
        masked = self.positive_mask(labels.to(image_features.device))
        self.last_masked_pairs = int(masked.sum())
        # masked is symmetric, so the same mask serves both directions
        logits_per_image = logits_per_image.masked_fill(masked, float("-inf"))
        logits_per_text = logits_per_text.masked_fill(masked, float("-inf"))
        gt = self.get_ground_truth(image_features.device, logits_per_image.shape[0])
        total = (F.cross_entropy(logits_per_image, gt) + F.cross_entropy(logits_per_text, gt)) / 2
        return {"contrastive_loss": total} if output_dict else total


def build_loss(cfg: AlignerConfig) -> ClipLoss:
    """open_clip's ``ClipLoss``, or :class:`LabelAwareClipLoss` when ``cfg.label_aware``."""
    if cfg.label_aware:
        return LabelAwareClipLoss(cfg.label_aware_threshold, cfg.label_aware_metric)
    return ClipLoss()
