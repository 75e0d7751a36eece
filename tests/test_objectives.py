"""Token weighting on hand-made tensors: exact weights for every MemFT mechanism."""

from __future__ import annotations

import math

import pytest
import torch

from memlaw.train.objectives import (
    WindowState,
    curriculum_count,
    curriculum_indices,
    first_errors,
    ot_weights,
    sft_weights,
    sliding_window_weights,
    update_window,
    weighted_loss,
    with_fallback,
)

T = torch.tensor


def test_sft_is_the_plain_mean_over_targets():
    losses = T([[9.0, 1.0, 3.0], [0.0, 2.0, 4.0]])
    mask = T([[False, True, True], [True, True, True]])
    w = sft_weights(losses, mask)
    assert torch.equal(w, mask.float())
    assert weighted_loss(losses, w).item() == pytest.approx((1 + 3 + 0 + 2 + 4) / 5, rel=1e-6)


def test_ot_hard_threshold():
    losses = T([[0.1, 1.0, 2.0, 0.5, 0.6931], [5.0, 0.7, 0.69, 3.0, 3.0]])
    mask = T([[True] * 5, [False, True, True, True, True]])
    w = ot_weights(losses, mask)  # L_crit = ln 2 = 0.693147
    assert w.tolist() == [[0, 1, 1, 0, 0], [0, 1, 0, 1, 1]]  # a padded position never counts
    w = ot_weights(losses, mask, threshold_p=0.2)  # -ln 0.2 = 1.609
    assert w.tolist() == [[0, 0, 1, 0, 0], [0, 0, 0, 1, 1]]


def test_ot_position_weighting():
    losses = T([[1.0, 0.1, 2.0, 3.0], [0.1, 0.1, 5.0, 0.1], [0.1, 0.1, 0.1, 0.1]])
    mask = torch.ones_like(losses, dtype=torch.bool)
    w = ot_weights(losses, mask, position_weighting=True, lam=2.0)
    # row 0: hard tokens at 0, 2, 3 -> i = 0, 1, 2 of n = 3 -> exp(-2 * i / 2)
    assert w[0].tolist() == pytest.approx([1.0, 0.0, math.exp(-1.0), math.exp(-2.0)])
    assert w[1].tolist() == [0.0, 0.0, 1.0, 0.0]  # a single hard token keeps weight 1
    assert w[2].tolist() == [0.0] * 4
    w = ot_weights(losses, mask, position_weighting=True, lam=0.5)
    assert w[0].tolist() == pytest.approx([1.0, 0.0, math.exp(-0.25), math.exp(-0.5)])


def test_ot_zero_weights_when_all_recalled():
    losses = T([[0.1, 0.2, 0.3]])
    w = ot_weights(losses, torch.ones_like(losses, dtype=torch.bool))
    assert float(w.sum()) == 0.0
    assert weighted_loss(losses, w).item() == 0.0


@pytest.mark.parametrize(
    "epoch, count",
    [(0, 16), (19, 16), (20, 32), (39, 32), (40, 48), (79, 80), (80, 96), (199, 96)],
)
def test_curriculum_active_count(epoch, count):
    # 100 records, batch 16: ratio·100 rounded down to whole batches; 100 -> 6 batches (last one dropped)
    assert curriculum_count(100, epoch, 16, [0.2, 0.4, 0.6, 0.8, 1.0], [20, 40, 60, 80, 200]) == count


def test_curriculum_at_least_one_batch_and_prefix_of_order():
    ratios, bounds = [0.2, 0.4, 0.6, 0.8, 1.0], [20, 40, 60, 80, 200]
    assert curriculum_count(10, 0, 4, ratios, bounds) == 4  # 0.2·10 = 2 < one batch -> one batch
    assert curriculum_count(3, 0, 4, ratios, bounds) == 3  # fewer records than a batch
    order = [7, 3, 9, 0, 5, 1, 8, 2, 6, 4]
    assert curriculum_indices(order, 0, 2, ratios, bounds) == [7, 3]
    assert curriculum_indices(order, 20, 2, ratios, bounds) == [7, 3, 9, 0]
    assert curriculum_indices(order, 80, 3, ratios, bounds) == order[:9]


def test_first_errors_are_target_relative():
    mask = T([[False, False, True, True, True], [True, True, True, True, True], [False, True, True, True, True]])
    correct = T([[False, False, True, False, True], [True, True, True, True, True], [True, False, True, True, False]])
    assert first_errors(correct, mask) == [1, None, 0]


def test_sliding_window_weights_exact():
    losses = T([[0.2, 1.0, 0.9, 0.3, 2.0, 0.1, 0.7, 1.5, 0.4, 3.0]])
    mask = torch.ones_like(losses, dtype=torch.bool)
    w = sliding_window_weights(losses, mask, anchors=[3], windows=[5.0], scale=10.0, tau=20.0, floor=0.01)
    base = torch.sigmoid(10.0 * (losses[0] - math.log(2)))
    mult = [1, 1, 1] + [math.exp(-(t - 3) / 20) for t in range(3, 8)] + [0.01, 0.01]
    assert w[0].tolist() == pytest.approx((base * T(mult)).tolist(), rel=1e-6)


def test_sliding_window_without_error_keeps_base_and_ignores_padding():
    losses = T([[4.0, 0.5, 1.0], [0.2, 0.3, 0.4]])
    mask = T([[False, True, True], [True, True, True]])
    w = sliding_window_weights(losses, mask, anchors=[0, None], windows=[50.0, 50.0])
    base = torch.sigmoid(10.0 * (losses - math.log(2))) * mask
    assert w[1].tolist() == pytest.approx(base[1].tolist())
    assert w[0, 0] == 0 and w[0, 1:].tolist() == pytest.approx((base[0, 1:] * T([1.0, math.exp(-1 / 20)])).tolist())


def test_window_grows_every_step_after_patience_and_resets():
    """DESIGN §3: anchor stuck from step 1 -> e = 1, 1, 1, 1.5, 2, 2.5, 3, 3.5, 4 (then capped); a moved
    anchor or a sample without an error resets e to 1 and the patience to 0."""
    state, seen = WindowState(), []
    for anchor in [4] * 10 + [7, 7, 7, 7, None, 2]:
        state = update_window(state, anchor, patience=3, step=0.5, max_expansion=4.0)
        seen.append(state.expansion)
    assert seen == [1.0, 1.0, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.0, 1.0, 1.0, 1.0, 1.5, 1.0, 1.0]


def test_window_expansion_is_capped():
    state = WindowState()
    for _ in range(100):
        state = update_window(state, 5, patience=3, step=0.5, max_expansion=4.0)
    assert state.expansion == 4.0


def test_fallback_to_plain_mean():
    mask = T([[True, True, False]])
    tiny = T([[1e-7, 2e-7, 0.0]])
    assert torch.equal(with_fallback(tiny, mask), mask.float())
    normal = T([[0.5, 0.0, 0.0]])
    assert torch.equal(with_fallback(normal, mask), normal)
