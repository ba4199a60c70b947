"""The stage-2 loss: MSE + mean over emotions of (1 - batch Pearson r)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import pearsonr

from emi_lib.train import emi_loss, pearson_per_column


def _target(b=16, seed=0):
    return torch.rand(b, 6, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_perfect_prediction_gives_zero():
    y = _target()
    total, parts = emi_loss(y.clone(), y)
    assert parts["mse"] == 0
    assert parts["pcc"].item() == pytest.approx(0.0, abs=1e-6)
    assert total.item() == pytest.approx(0.0, abs=1e-6)
    torch.testing.assert_close(parts["r"], torch.ones(6, dtype=torch.float64), atol=1e-6, rtol=0)


def test_anti_correlated_prediction_gives_two():
    y = _target()
    _, parts = emi_loss(1 - y, y)
    assert parts["pcc"].item() == pytest.approx(2.0, abs=1e-6)


def test_pearson_matches_scipy_and_weights_combine():
    y, p = _target(seed=0), _target(seed=1)
    r = pearson_per_column(p, y)
    expected = [pearsonr(p[:, e].numpy(), y[:, e].numpy())[0] for e in range(6)]
    np.testing.assert_allclose(r.numpy(), expected, atol=1e-6)
    total, parts = emi_loss(p, y, mse_weight=0.3, pcc_weight=2.0)
    assert parts["mse"].item() == pytest.approx(float(((p - y) ** 2).mean()))
    assert parts["pcc"].item() == pytest.approx(float(np.mean(1 - np.array(expected))), abs=1e-6)
    assert total.item() == pytest.approx(0.3 * parts["mse"].item() + 2.0 * parts["pcc"].item())


@pytest.mark.parametrize("which", ["pred", "target", "both"])
def test_constant_column_gives_no_nan(which):
    y = _target().float()
    p = torch.rand(16, 6, generator=torch.Generator().manual_seed(2))
    if which in ("pred", "both"):
        p[:, 3] = 0.4
    if which in ("target", "both"):
        y[:, 3] = 0.0
    p.requires_grad_(True)
    total, parts = emi_loss(p, y)
    assert torch.isfinite(total) and abs(parts["r"][3]) < 1e-6  # constant column: r = 0 (to rounding), term 1
    total.backward()
    assert torch.isfinite(p.grad).all()


def test_batch_of_one_and_shape_check():
    total, parts = emi_loss(torch.full((1, 6), 0.5, requires_grad=True), torch.rand(1, 6))
    assert torch.isfinite(total) and torch.all(parts["r"] == 0)
    with pytest.raises(ValueError, match="must both be"):
        pearson_per_column(torch.rand(4, 6), torch.rand(4, 5))
