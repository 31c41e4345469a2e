"""Tests for fedsim.kg.models: every score against a hand-written numpy formula."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from fedsim.kg.models import MODEL_NAMES, init_table, make_interaction

HIDDEN = 5
GAMMA = 7.5
EPS = 2.0
RHO = (GAMMA + EPS) / HIDDEN


def _np_score(name: str, h: np.ndarray, r: np.ndarray, t: np.ndarray) -> np.ndarray:
    d = HIDDEN
    if name == "transe":
        return GAMMA - np.abs(h + r - t).sum(-1)
    if name == "distmult":
        return (h * r * t).sum(-1)
    hc = h[..., :d] + 1j * h[..., d:]
    tc = t[..., :d] + 1j * t[..., d:]
    if name == "complex":
        rc = r[..., :d] + 1j * r[..., d:]
        return np.real((hc * rc * np.conj(tc)).sum(-1))
    theta = r / (RHO / math.pi)
    return GAMMA - np.abs(hc * np.exp(1j * theta) - tc).sum(-1)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_score_matches_numpy_formula(name):
    m = make_interaction(name, HIDDEN, gamma=GAMMA, epsilon=EPS)
    rng = np.random.default_rng(0)
    h = rng.normal(size=(4, 1, m.entity_dim()))
    r = rng.uniform(-RHO, RHO, size=(4, 1, m.relation_dim()))
    t = rng.normal(size=(1, 6, m.entity_dim()))
    got = m.score(*(torch.tensor(x, dtype=torch.float32) for x in (h, r, t)))
    assert got.shape == (4, 6)
    want = _np_score(name, h.astype(np.float32).astype(np.float64), r.astype(np.float32), t.astype(np.float32))
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_score_single_triple_and_gradient(name):
    m = make_interaction(name, HIDDEN, gamma=GAMMA, epsilon=EPS)
    h = torch.randn(m.entity_dim(), requires_grad=True, generator=torch.Generator().manual_seed(1))
    r = torch.randn(m.relation_dim(), generator=torch.Generator().manual_seed(2))
    t = h.detach().clone()
    s = m.score(h, r, t)
    assert s.shape == ()
    s.backward()
    assert torch.all(torch.isfinite(h.grad))


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_score_all_equals_broadcast_score(name):
    m = make_interaction(name, HIDDEN, gamma=GAMMA, epsilon=EPS)
    g = torch.Generator().manual_seed(5)
    h, r = torch.randn(7, m.entity_dim(), generator=g), torch.randn(7, m.relation_dim(), generator=g)
    cands = torch.randn(23, m.entity_dim(), generator=g)
    want = m.score(h.unsqueeze(1), r.unsqueeze(1), cands.unsqueeze(0))
    with torch.no_grad():
        got = m.score_all(h, r, cands, max_elements=7 * HIDDEN * 4)  # RotatE: chunks of 4 candidates
    assert got.shape == (7, 23)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    h.requires_grad_(True)
    with_grad = m.score_all(h, r, cands, max_elements=7 * HIDDEN * 4)
    with_grad.sum().backward()
    torch.testing.assert_close(with_grad.detach(), want, rtol=1e-5, atol=1e-5)
    assert torch.all(torch.isfinite(h.grad))


def test_dims():
    dims = {n: (make_interaction(n, 8).entity_dim(), make_interaction(n, 8).relation_dim()) for n in MODEL_NAMES}
    assert dims == {"transe": (8, 8), "distmult": (8, 8), "complex": (16, 16), "rotate": (16, 8)}


def test_rotate_zero_distance_gradient_is_finite():
    m = make_interaction("rotate", 3)
    h = torch.zeros(6, requires_grad=True)
    s = m.score(h, torch.zeros(3), torch.zeros(6))
    assert float(s.detach()) == pytest.approx(m.gamma)
    s.backward()
    assert torch.all(torch.isfinite(h.grad))


def test_rotate_is_l1_of_moduli_not_pykeen_l2():
    from pykeen.nn.modules import RotatEInteraction

    m = make_interaction("rotate", HIDDEN, gamma=GAMMA, epsilon=EPS)
    g = torch.Generator().manual_seed(3)
    h, t = torch.randn(2 * HIDDEN, generator=g), torch.randn(2 * HIDDEN, generator=g)
    r = (torch.rand(HIDDEN, generator=g) * 2 - 1) * RHO
    theta = r / (RHO / math.pi)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        l2 = RotatEInteraction()(
            torch.complex(h[:HIDDEN], h[HIDDEN:]),
            torch.polar(torch.ones(HIDDEN), theta),
            torch.complex(t[:HIDDEN], t[HIDDEN:]),
        )
    assert abs(float(m.score(h, r, t)) - (GAMMA + float(l2))) > 1e-3


def test_unknown_model():
    with pytest.raises(ValueError) as info:
        make_interaction("transh", 8)
    for name in MODEL_NAMES:
        assert name in str(info.value)


def test_init_table():
    a = init_table(50, 12, hidden_dim=6, gamma=10.0, epsilon=2.0, rng=np.random.default_rng(4))
    b = init_table(50, 12, hidden_dim=6, gamma=10.0, epsilon=2.0, rng=np.random.default_rng(4))
    c = init_table(50, 12, hidden_dim=6, gamma=10.0, epsilon=2.0, rng=np.random.default_rng(5))
    assert a.dtype == np.float32 and a.shape == (50, 12)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert np.abs(a).max() <= 2.0 and np.abs(a).max() > 1.8  # rho = 12 / 6
