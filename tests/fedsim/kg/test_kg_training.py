"""Tests for fedsim.kg.training: loss, negatives and hyperparameters."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedsim.kg.training import KGEHyperParams, isin_sorted, sample_negatives, self_adversarial_loss


def _log_sigmoid(x: np.ndarray) -> np.ndarray:
    return -np.log1p(np.exp(-x))


def test_loss_matches_formula_with_mask():
    rng = np.random.default_rng(0)
    pos = rng.normal(size=4)
    neg = rng.normal(size=(4, 5)) * 3
    valid = rng.random((4, 5)) > 0.3
    valid[2] = False  # a row whose negatives are all known true tails contributes 0
    alpha = 0.7
    want_neg = []
    for b in range(4):
        v = valid[b]
        if not v.any():
            want_neg.append(0.0)
            continue
        w = np.exp(alpha * neg[b][v]) / np.exp(alpha * neg[b][v]).sum()
        want_neg.append(-(w * _log_sigmoid(-neg[b][v])).sum())
    want = 0.5 * (-_log_sigmoid(pos).mean() + np.mean(want_neg))
    got = self_adversarial_loss(torch.tensor(pos), torch.tensor(neg), torch.tensor(valid), alpha)
    assert float(got) == pytest.approx(want, rel=1e-10)


def test_softmax_weights_are_detached():
    neg = torch.tensor([[0.5, -1.0, 2.0]], dtype=torch.float64, requires_grad=True)
    valid = torch.tensor([[True, False, True]])
    loss = self_adversarial_loss(torch.zeros(1, dtype=torch.float64), neg, valid, 1.0)
    loss.backward()
    w = torch.softmax(torch.tensor([0.5, 2.0], dtype=torch.float64), 0)
    # d/dx [-w log sigmoid(-x)] = w * sigmoid(x) with w held constant; 0.5 from the loss, batch mean over 1 row
    sig = torch.sigmoid(torch.tensor([0.5, 2.0], dtype=torch.float64))
    want = torch.stack([0.5 * w[0] * sig[0], torch.tensor(0.0, dtype=torch.float64), 0.5 * w[1] * sig[1]])
    torch.testing.assert_close(neg.grad[0], want)


def test_isin_sorted_matches_numpy():
    rng = np.random.default_rng(1)
    keys = np.unique(rng.integers(0, 500, 100))
    query = rng.integers(-5, 520, (7, 9))
    got = isin_sorted(torch.from_numpy(query), torch.from_numpy(keys))
    assert np.array_equal(got.numpy(), np.isin(query, keys))
    assert not isin_sorted(torch.tensor([1, 2]), torch.zeros(0, dtype=torch.long)).any()


def test_sample_negatives_range_and_seed():
    a = sample_negatives(64, 32, 13, torch.Generator().manual_seed(3))
    b = sample_negatives(64, 32, 13, torch.Generator().manual_seed(3))
    assert a.shape == (64, 32) and a.min() >= 0 and a.max() == 12
    assert torch.equal(a, b)


def test_hyperparams_defaults_and_validation():
    p = KGEHyperParams()
    assert (p.model, p.hidden_dim, p.gamma, p.epsilon, p.lr, p.batch_size, p.num_neg) == (
        "transe", 64, 10.0, 2.0, 1e-2, 512, 64
    )
    assert (p.local_epochs, p.adversarial_temperature, p.eval_batch_size, p.num_threads, p.reset_optimizer) == (
        1, 1.0, 256, 1, True
    )
    with pytest.raises(ValueError, match="model"):
        KGEHyperParams(model="transh")
    with pytest.raises(ValueError, match="batch_size"):
        KGEHyperParams(batch_size=0)
    with pytest.raises(ValueError, match="lr"):
        KGEHyperParams(lr=0.0)
