"""Visual TCN and gated audio BiLSTM: shapes, masking, receptive field, gate."""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils import parametrize

from emi_lib.models import GatedBiLSTM, TemporalConvNet, tcn_receptive_field


def _mask(lengths, t):
    return torch.arange(t).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)


# ---------------------------------------------------------------- TCN


def test_tcn_shapes_and_zero_padding():
    torch.manual_seed(0)
    tcn = TemporalConvNet(5, channels=[6, 7], kernel_size=3, dropout=0.0).eval()
    x, mask = torch.randn(3, 9, 5), _mask([9, 4, 1], 9)
    y = tcn(x, mask)
    assert y.shape == (3, 9, 7) and tcn.out_dim == 7
    assert torch.all(y[~mask] == 0)
    assert tcn.dilations == [1, 2]


def test_tcn_extra_padding_does_not_change_valid_outputs():
    torch.manual_seed(0)
    tcn = TemporalConvNet(4, channels=[8, 8, 8], kernel_size=3, dropout=0.3).eval()
    x = torch.randn(2, 6, 4)
    mask = _mask([6, 3], 6)
    y = tcn(x, mask)
    # append 10 padded steps holding garbage (even NaN): the valid outputs must not move
    pad = torch.randn(2, 10, 4) * 100
    pad[0, 0, 0] = float("nan")
    x_long = torch.cat([x, pad], 1)
    x_long[1, 3:6] = 55.0  # the shorter clip's own padding also holds garbage
    y_long = tcn(x_long, _mask([6, 3], 16))
    torch.testing.assert_close(y_long[0, :6], y[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(y_long[1, :3], y[1, :3], rtol=0, atol=1e-6)
    assert torch.isfinite(y_long).all() and torch.all(y_long[:, 6:] == 0)


def test_tcn_receptive_field_formula():
    assert tcn_receptive_field(3, [1, 2, 4, 8]) == 61
    assert tcn_receptive_field(5, [1, 2]) == 1 + 2 * 4 * 3
    tcn = TemporalConvNet(2, channels=[4, 4, 4], kernel_size=3)
    assert tcn.receptive_field == 1 + 2 * 2 * (1 + 2 + 4)


@pytest.mark.parametrize(("kernel", "dilations"), [(3, [1, 2, 4]), (2, [1, 3]), (5, [1, 2])])
def test_tcn_receptive_field_matches_impulse_response(kernel, dilations):
    """The input steps that influence one output step (non-zero gradient) span exactly the RF."""
    torch.manual_seed(0)
    tcn = TemporalConvNet(
        3, channels=[16] * len(dilations), kernel_size=kernel, dilations=dilations, dropout=0.0
    )
    tcn = tcn.double().eval()
    t, t0 = 81, 40
    x = torch.randn(1, t, 3, dtype=torch.float64, requires_grad=True)
    tcn(x, torch.ones(1, t, dtype=torch.bool))[0, t0].sum().backward()
    nz = (x.grad[0].abs().sum(-1) > 0).nonzero().squeeze(-1)
    span = int(nz.max() - nz.min()) + 1
    assert span == tcn.receptive_field
    assert len(nz) == span  # contiguous: every step inside the field matters
    # non-causal "same" padding: each conv looks floor((k-1)d/2) steps back and the rest ahead
    assert t0 - int(nz.min()) == sum(2 * ((kernel - 1) * d // 2) for d in dilations)


def test_tcn_uses_parametrized_weight_norm():
    tcn = TemporalConvNet(3, channels=[4, 4])
    convs = [m for m in tcn.modules() if isinstance(m, torch.nn.Conv1d) and m.kernel_size[0] > 1]
    assert len(convs) == 4
    for conv in convs:
        assert parametrize.is_parametrized(conv, "weight")
        assert not hasattr(conv, "weight_g")  # not the deprecated torch.nn.utils.weight_norm


def test_tcn_missing_modality_gives_zeros_and_finite_gradients():
    torch.manual_seed(0)
    tcn = TemporalConvNet(3, channels=[4, 4])
    x = torch.randn(2, 5, 3, requires_grad=True)
    y = tcn(x, _mask([0, 5], 5))
    assert torch.all(y[0] == 0)
    y.sum().backward()
    assert torch.isfinite(x.grad).all()
    assert tcn(torch.randn(2, 0, 3), torch.zeros(2, 0, dtype=torch.bool)).shape == (2, 0, 4)


def test_tcn_rejects_bad_dilations():
    with pytest.raises(ValueError, match="dilations"):
        TemporalConvNet(3, channels=[4, 4], dilations=[1])


# ---------------------------------------------------------------- gated BiLSTM


def test_bilstm_shapes_and_gate_range():
    torch.manual_seed(0)
    lstm = GatedBiLSTM(5, hidden=6, num_layers=2, dropout=0.0).eval()
    x, mask = torch.randn(3, 7, 5), _mask([7, 2, 5], 7)
    y, g = lstm(x, mask)
    assert y.shape == (3, 7, 12) and g.shape == (3, 7, 12) and lstm.out_dim == 12
    assert torch.all((g[mask] > 0) & (g[mask] < 1))
    assert torch.all(g[~mask] == 0) and torch.all(y[~mask] == 0)


@pytest.mark.parametrize("layers", [1, 2])
def test_bilstm_recurrence_equals_a_packed_lstm_values_and_gradients(layers):
    """The padded recurrence with per-clip reversal is the packed bidirectional LSTM (the reference)."""
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    torch.manual_seed(0)
    lstm = GatedBiLSTM(6, hidden=5, num_layers=layers, dropout=0.0)
    lengths = torch.tensor([9, 3, 6, 1])
    mask = _mask(lengths.tolist(), 9)
    x = torch.randn(4, 9, 6).masked_fill(~mask.unsqueeze(-1), 0.0)
    ours = lstm._recurrence(x, lengths) * mask.unsqueeze(-1)
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    ref, _ = pad_packed_sequence(lstm.lstm(packed)[0], batch_first=True, total_length=9)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)
    grads = []
    for out in (ours, ref):
        lstm.zero_grad()
        (out ** 2).sum().backward(retain_graph=True)
        grads.append({n: q.grad.clone() for n, q in lstm.lstm.named_parameters()})
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], rtol=1e-4, atol=1e-5, msg=n)
    assert set(lstm.state_dict()) == {f"lstm.{n}" for n, _ in lstm.lstm.named_parameters()} | \
        {"proj.weight", "gate.weight", "gate.bias"}  # the packed version's checkpoint keys


def test_bilstm_padding_and_batch_do_not_change_a_clip():
    torch.manual_seed(0)
    lstm = GatedBiLSTM(4, hidden=5, out_dim=3, dropout=0.2).eval()
    clip = torch.randn(1, 4, 4)
    alone, g_alone = lstm(clip, torch.ones(1, 4, dtype=torch.bool))
    # the same clip padded to 9 steps with garbage, in a batch with a longer and a shorter clip
    batch = torch.randn(3, 9, 4) * 50
    batch[1, :4] = clip[0]
    batch[0] = torch.randn(9, 4)
    y, g = lstm(batch, _mask([9, 4, 2], 9))
    torch.testing.assert_close(y[1, :4], alone[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(g[1, :4], g_alone[0], rtol=0, atol=1e-6)


def test_bilstm_zero_length_clip_is_zero_and_finite():
    torch.manual_seed(0)
    lstm = GatedBiLSTM(3, hidden=4)
    x = torch.randn(2, 5, 3, requires_grad=True)
    y, g = lstm(x, _mask([0, 5], 5))
    assert torch.all(y[0] == 0) and torch.all(g[0] == 0) and torch.isfinite(y).all()
    y.sum().backward()
    assert torch.isfinite(x.grad).all() and torch.all(x.grad[0] == 0)
    y0, g0 = lstm(torch.randn(2, 0, 3), torch.zeros(2, 0, dtype=torch.bool))
    assert y0.shape == (2, 0, 8) and g0.shape == (2, 0, 8)


def test_bilstm_without_gate_and_gate_is_differentiable():
    torch.manual_seed(0)
    plain = GatedBiLSTM(3, hidden=4, gate=False)
    y, g = plain(torch.randn(2, 5, 3), _mask([5, 3], 5))
    assert g is None and plain.gate is None and y.shape == (2, 5, 8)
    gated = GatedBiLSTM(3, hidden=4)
    y, g = gated(torch.randn(2, 5, 3), _mask([5, 3], 5))
    y.sum().backward()
    assert gated.gate.weight.grad is not None and gated.gate.weight.grad.abs().sum() > 0


def test_bilstm_rejects_non_prefix_mask():
    lstm = GatedBiLSTM(3, hidden=4)
    mask = torch.tensor([[True, False, True]])
    with pytest.raises(ValueError, match="prefix"):
        lstm(torch.randn(1, 3, 3), mask)
