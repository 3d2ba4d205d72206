"""Gradient-Blending: weights from hand-computed losses; fusion where one modality overfits."""
import numpy as np
import pytest
import torch

from c3dfeat.errors import EvalError
from c3dfeat.evaluate.gblend import FusionConfig, HeadLosses, LateFusion, fusion_eval, gblend_weights
from c3dfeat.evaluate.splits import Protocol, Split


def test_weights_from_hand_computed_losses():
    heads = [
        HeadLosses(2.0, 2.0, 0.5, 1.0),  # O: 0 → 0.5, ΔO = 0.5, ΔG = 1.0 → 1 / 0.25 = 4
        HeadLosses(2.0, 2.0, 0.2, 1.8),  # ΔO = 1.6, ΔG = 0.2 → 0.2 / 2.56 = 0.078125
        HeadLosses(2.0, 2.2, 1.0, 1.4),  # O: 0.2 → 0.4, ΔO = 0.2, ΔG = 0.8 → 0.8 / 0.04 = 20
    ]
    assert heads[2].overfit_delta == pytest.approx(0.2)
    assert heads[2].gen_delta == pytest.approx(0.8)
    w = gblend_weights(heads)
    raw = np.array([4.0, 0.078125, 20.0])
    np.testing.assert_allclose(w, raw / raw.sum(), rtol=1e-12)
    assert w.sum() == pytest.approx(1.0)  # normalised to 1, not the paper's stray 2 (papers.md §5.3)


def test_head_that_did_not_generalise_gets_zero_weight():
    w = gblend_weights([HeadLosses(1.0, 1.0, 0.5, 1.2), HeadLosses(1.0, 1.0, 0.8, 0.9)])
    assert w[0] == 0.0 and w[1] == pytest.approx(1.0)
    with pytest.raises(EvalError, match="no head"):
        gblend_weights([HeadLosses(1.0, 1.0, 0.5, 1.2)])


def test_fused_head_is_the_concatenation_classifier_sharing_the_unimodal_maps():
    torch.manual_seed(0)
    m = LateFusion([3, 5], 4)
    for p in m.parameters():
        torch.nn.init.normal_(p)
    x1, x2 = torch.randn(7, 3), torch.randn(7, 5)
    u1, u2, f = m([x1, x2])
    W = torch.cat([m.maps[0].weight, m.maps[1].weight], 1)  # (4, 8): linear head on [x1, x2]
    torch.testing.assert_close(f, torch.cat([x1, x2], 1) @ W.T + m.fused_bias)
    torch.testing.assert_close(u1, x1 @ m.maps[0].weight.T + m.uni_bias[0])
    torch.testing.assert_close(u2, x2 @ m.maps[1].weight.T + m.uni_bias[1])


def two_modalities(seed=0, n_train=100, n_test=600, K=4):
    """A: 8-d, noisy but it generalises. B: 500-d pure noise that a linear head can memorise."""
    rng = np.random.default_rng(seed)
    n = n_train + n_test
    y = np.arange(n) % K
    A = rng.standard_normal((K, 8))[y] + rng.standard_normal((n, 8)) * 1.5
    B = rng.standard_normal((n, 500))
    split = Split("s", np.arange(n_train), np.arange(n_train, n))
    return [A.astype(np.float32), B.astype(np.float32)], Protocol([str(k) for k in range(K)], y, [split], "t")


def test_gblend_fixes_naive_fusion_when_one_modality_overfits():
    xs, p = two_modalities()
    r = fusion_eval(xs, p, ["A", "B"], cfg=FusionConfig(epochs=100)).splits[0]
    uni_a, uni_b = r.uni
    assert uni_a > 55 and uni_b < 40  # chance is 25 %: B carries nothing that generalises
    # naive concatenation lets B memorise the training set and loses to A alone
    assert r.concat < uni_a - 3
    # G-Blend weights: B overfits (large ΔO, tiny ΔG) → ~0; A dominates; they sum to 1
    w_a, w_b, w_fused = r.weights
    assert w_b < 0.01 and w_a > 0.5 and sum(r.weights) == pytest.approx(1.0)
    losses_b = r.losses[1]
    assert losses_b.overfit_delta > 1.0 and losses_b.gen_delta < 0.3
    # and the blended model beats naive fusion clearly
    assert r.gblend > r.concat + 3
    assert r.gblend > uni_a - 3


def test_concat_only_skips_gblend():
    xs, p = two_modalities(n_train=60, n_test=60)
    res = fusion_eval(xs, p, ["A", "B"], fusion="concat", cfg=FusionConfig(epochs=20))
    r = res.splits[0]
    assert np.isnan(r.gblend) and r.weights == []
    d = res.to_dict()  # strict JSON: no NaN
    assert d["mean_gblend_top1"] is None and d["mean_top1"] == d["mean_concat_top1"] == r.concat
    import json

    json.loads(json.dumps(d, allow_nan=False))
