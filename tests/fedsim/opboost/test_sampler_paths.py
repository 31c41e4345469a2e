"""The whole-domain guide-table sampler returns exactly what the per-row binary search returns for the same
uniforms, and its samples fit the exact pmf."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from fedsim.opboost.mechanisms import _first_above, make_mechanism

CASES = [
    ("global-map", {"l": 0, "u": 10, "epsilon": 1.28}),
    ("global-map", {"l": -5, "u": 250, "epsilon": 0.08}),
    ("local-map", {"l": 0, "u": 10, "theta": 4, "epsilon": 1.28}),
    ("adj-map", {"l": 1, "u": 100, "theta": 10, "alpha": 0.2, "epsilon": 0.1}),
    ("krr", {"levels": 7, "epsilon": 0.5}),
]


@pytest.mark.parametrize("name, kwargs", CASES)
def test_guide_table_equals_binary_search(name, kwargs):
    m = make_mechanism(name, **kwargs)
    x = np.random.default_rng(0).integers(m.l, m.u + 1, 20_000)
    got = m.sample(x, np.random.default_rng(7))
    u = np.random.default_rng(7).random(x.size)
    rows = np.arange(m.l, m.u + 1)
    cdf = np.cumsum(np.exp(m._log_pmf_rows(rows)), axis=1)
    cdf /= cdf[:, -1:]
    np.testing.assert_array_equal(got, m._outputs()[_first_above(cdf, x - m.l, u)])


@pytest.mark.parametrize("name, kwargs", CASES[:4])
def test_guide_table_samples_fit_the_pmf(name, kwargs):
    m = make_mechanism(name, **kwargs)
    x0 = (m.l + m.u) // 3
    x = np.full(200_000, x0)
    x[: m.u - m.l + 1] = np.arange(m.l, m.u + 1)  # enough values for the whole-domain path
    draws = m.sample(x, np.random.default_rng(1))[m.u - m.l + 1:]
    outputs, probs = m.pmf(x0)
    counts = np.array([(draws == o).sum() for o in outputs])
    assert counts.sum() == draws.size  # nothing outside the support
    keep = probs * draws.size >= 5
    observed = np.append(counts[keep], counts[~keep].sum())
    expected = np.append(probs[keep], probs[~keep].sum()) * draws.size
    if expected[-1] == 0:
        observed, expected = observed[:-1], expected[:-1]
    assert stats.chisquare(observed, expected).pvalue > 1e-3
