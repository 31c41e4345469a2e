"""DP-Flames privacy accountant: ε against Opacus / dp-accounting oracles, selections, calibration, config."""

from __future__ import annotations

import json
import logging
import math
import random

import dp_accounting
import numpy as np
import pytest
from dp_accounting.rdp.rdp_privacy_accountant import compute_epsilon
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opacus.accountants import RDPAccountant
from opacus.accountants.analysis.rdp import compute_rdp
from opacus.accountants.utils import get_noise_multiplier

from fedsim.dp.accountant import (
    ACCOUNTANTS,
    DEFAULT_RDP_ORDERS,
    ClientAccountant,
    PldBackend,
    PrivacyConfig,
    PrivacyConfigError,
    RdpBackend,
    make_accountant,
    selection_rho,
    solve_noise_multiplier,
)
from fedsim.registry import UnknownNameError

pytestmark = pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha")

DELTA = 1e-5
ANCHOR_Q = 64 / 2048  # platform.md §6: Opacus MLP, N = 2048, batch 64, 3 epochs
ANCHOR_SIGMA = 1.1
ANCHOR_STEPS = 96
INT_ORDERS = [float(a) for a in [*range(2, 65), 80, 96, 128, 192, 256, 512]]


def cfg(**kw: object) -> PrivacyConfig:
    base: dict[str, object] = {
        "noise_multiplier": ANCHOR_SIGMA,
        "max_grad_norm": 1.0,
        "sample_rate": ANCHOR_Q,
        "delta": DELTA,
    }
    base.update(kw)
    return PrivacyConfig(**base)  # type: ignore[arg-type]


def poisson_gauss(q: float, sigma: float, n: int) -> dp_accounting.DpEvent:
    return dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), n
    )


def opacus_eps(segments: list[tuple[float, float, int]], delta: float, alphas: list[float] | None) -> float:
    """Opacus RDPAccountant stepped one step at a time through (σ, q, n) segments."""
    acc = RDPAccountant()
    for sigma, q, n in segments:
        for _ in range(n):
            acc.step(noise_multiplier=sigma, sample_rate=q)
    return acc.get_epsilon(delta=delta, alphas=alphas)


def improved_conversion(orders: np.ndarray, rdp: np.ndarray, delta: float) -> float:
    """RDP → (ε, δ): min over α of rdp + log(1 − 1/α) − log(δα)/(α − 1) (Canonne et al. 2020)."""
    orders = np.asarray(orders, dtype=float)
    keep = orders > 1.01
    a, r = orders[keep], np.asarray(rdp, dtype=float)[keep]
    return float(np.min(r + np.log1p(-1 / a) - np.log(delta * a) / (a - 1)))


def classic_conversion(orders: np.ndarray, rdp: np.ndarray, delta: float) -> float:
    """RDP → (ε, δ): min over α of rdp + log(1/δ)/(α − 1) (Mironov 2017, Prop. 3)."""
    orders = np.asarray(orders, dtype=float)
    return float(np.min(np.asarray(rdp) + math.log(1 / delta) / (orders - 1)))


# ---------------------------------------------------------------------------------------------------------------
# Gaussian part against independent oracles
# ---------------------------------------------------------------------------------------------------------------


def test_platform_anchor_rdp_and_pld() -> None:
    rdp = ClientAccountant(cfg())
    rdp.gaussian_steps(ANCHOR_STEPS)
    assert rdp.epsilon() == pytest.approx(2.095, abs=5e-4)
    assert rdp.epsilon() == pytest.approx(opacus_eps([(ANCHOR_SIGMA, ANCHOR_Q, ANCHOR_STEPS)], DELTA, None), rel=1e-6)

    pld = ClientAccountant(cfg(), backend="pld")
    pld.gaussian_steps(ANCHOR_STEPS)
    assert pld.epsilon() == pytest.approx(1.757, abs=5e-4)
    direct = dp_accounting.pld.PLDAccountant()
    direct.compose(poisson_gauss(ANCHOR_Q, ANCHOR_SIGMA, ANCHOR_STEPS))
    assert pld.epsilon() == pytest.approx(direct.get_epsilon(DELTA), rel=1e-9)
    assert pld.epsilon() < rdp.epsilon()


@pytest.mark.parametrize(
    ("q", "sigma", "steps", "expected"),
    [
        (ANCHOR_Q, ANCHOR_SIGMA, ANCHOR_STEPS, 2.095),
        (64 / 2759, 1.0, 5280, 12.5),  # fkge.md §4.7 table, Gaussian only
        (0.01, 0.8, 400, None),
        (0.2, 2.0, 50, None),
        (1.0, 5.0, 10, None),  # no subsampling
    ],
)
def test_gaussian_epsilon_matches_opacus_and_dp_accounting(
    q: float, sigma: float, steps: int, expected: float | None
) -> None:
    acc = ClientAccountant(cfg(sample_rate=q, noise_multiplier=sigma))
    acc.gaussian_steps(steps // 2)
    acc.gaussian_steps(steps - steps // 2)
    eps = acc.epsilon()
    orders = list(DEFAULT_RDP_ORDERS)

    # (a) Opacus, stepped one step at a time. On integer orders both libraries evaluate the same binomial sum:
    # identical. On fractional orders dp-accounting 0.6 (used here) adds the absolute values of the alternating
    # series terms, a slightly conservative upper bound of Opacus' signed sum, so ε can only be a little larger.
    ints = ClientAccountant(cfg(sample_rate=q, noise_multiplier=sigma), backend=RdpBackend(INT_ORDERS))
    ints.gaussian_steps(steps)
    assert ints.epsilon() == pytest.approx(opacus_eps([(sigma, q, steps)], DELTA, INT_ORDERS), rel=1e-9)
    assert eps <= ints.epsilon() + 1e-12  # denser orders never hurt
    opacus_same = opacus_eps([(sigma, q, steps)], DELTA, orders)
    assert opacus_same - 1e-9 <= eps <= opacus_same * 1.002
    assert eps == pytest.approx(opacus_eps([(sigma, q, steps)], DELTA, None), rel=0.01)

    # (b) dp-accounting RdpAccountant directly.
    same = dp_accounting.rdp.RdpAccountant(orders)
    same.compose(poisson_gauss(q, sigma, steps))
    assert eps == pytest.approx(same.get_epsilon(DELTA), rel=1e-12)
    default = dp_accounting.rdp.RdpAccountant()
    default.compose(poisson_gauss(q, sigma, steps))
    assert eps <= default.get_epsilon(DELTA) + 1e-12
    assert eps == pytest.approx(default.get_epsilon(DELTA), rel=0.01)

    if expected is not None:
        assert eps == pytest.approx(expected, abs=0.05 if expected > 10 else 5e-4)

    # other δ: monotone, and δ is honoured
    assert acc.epsilon(1e-3) < eps < acc.epsilon(1e-8)


def test_varying_sigma_equals_independent_segments() -> None:
    q = 0.02
    calls = [(40, 1.2), (30, 0.9), (26, 1.2), (10, 0.7)]
    acc = ClientAccountant(cfg(sample_rate=q, noise_multiplier=1.2))
    for n, sigma in calls:
        acc.gaussian_steps(n, noise_multiplier=sigma)
    eps = acc.epsilon()

    # independent (a): dp-accounting RdpAccountant composing the segments one by one, in call order
    direct = dp_accounting.rdp.RdpAccountant(list(DEFAULT_RDP_ORDERS))
    for n, sigma in calls:
        direct.compose(poisson_gauss(q, sigma, n))
    assert eps == pytest.approx(direct.get_epsilon(DELTA), rel=1e-12)
    # independent (b): per-segment RDP from Opacus' analysis (integer orders), summed, converted by dp-accounting;
    # and Opacus stepping through the same schedule
    ints = ClientAccountant(cfg(sample_rate=q), backend=RdpBackend(INT_ORDERS))
    for n, sigma in calls:
        ints.gaussian_steps(n, noise_multiplier=sigma)
    rdp = sum(compute_rdp(q=q, noise_multiplier=s, steps=n, orders=INT_ORDERS) for n, s in calls)
    assert ints.epsilon() == pytest.approx(compute_epsilon(INT_ORDERS, rdp, DELTA)[0], rel=1e-9)
    assert ints.epsilon() == pytest.approx(opacus_eps([(s, q, n) for n, s in calls], DELTA, INT_ORDERS), rel=1e-9)
    # the schedule matters: all steps at the first σ (1.2) is cheaper, all at the smallest σ (0.7) dearer
    only_first = ClientAccountant(cfg(sample_rate=q, noise_multiplier=1.2))
    only_first.gaussian_steps(106)
    only_last = ClientAccountant(cfg(sample_rate=q, noise_multiplier=0.7))
    only_last.gaussian_steps(106)
    assert only_first.epsilon() < eps < only_last.epsilon()

    # call order is irrelevant, bit for bit
    shuffled = list(calls)
    random.Random(0).shuffle(shuffled)
    assert shuffled != calls
    other = ClientAccountant(cfg(sample_rate=q, noise_multiplier=1.2))
    for n, sigma in shuffled:
        other.gaussian_steps(n, noise_multiplier=sigma)
    assert other.epsilon() == eps

    # PLD: same schedule against PLDAccountant composing the segments directly
    pld = ClientAccountant(cfg(sample_rate=q), backend="pld", value_discretization_interval=1e-3)
    for n, sigma in calls:
        pld.gaussian_steps(n, noise_multiplier=sigma)
    direct = dp_accounting.pld.PLDAccountant(value_discretization_interval=1e-3)
    for n, sigma in calls:
        direct.compose(poisson_gauss(q, sigma, n))
    assert pld.epsilon() == pytest.approx(direct.get_epsilon(DELTA), rel=1e-6)
    assert pld.epsilon() < eps


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    calls=st.lists(
        st.one_of(
            st.tuples(st.just("g"), st.integers(0, 40), st.sampled_from([0.6, 0.9, 1.3, 2.0])),
            st.tuples(st.just("s"), st.integers(0, 5), st.sampled_from([0.1, 0.5, 1.0])),
        ),
        min_size=1,
        max_size=8,
    ),
    seed=st.integers(0, 2**16),
)
def test_epsilon_is_order_free_and_monotone(calls: list[tuple[str, int, float]], seed: int) -> None:
    backend = RdpBackend(orders=[1.5, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128])  # few orders: fast

    def run(seq: list[tuple[str, int, float]]) -> ClientAccountant:
        acc = ClientAccountant(cfg(sample_rate=0.05), backend=backend)
        for kind, n, p in seq:
            if kind == "g":
                acc.gaussian_steps(n, noise_multiplier=p)
            else:
                acc.selection(n, epsilon=p)
        return acc

    acc = run(calls)
    shuffled = list(calls)
    random.Random(seed).shuffle(shuffled)
    assert run(shuffled).epsilon() == acc.epsilon()
    before = acc.epsilon()
    acc.gaussian_steps(1, noise_multiplier=1.0)
    assert acc.epsilon() > before
    before = acc.epsilon()
    acc.selection(1, epsilon=0.2)
    assert acc.epsilon() > before


# ---------------------------------------------------------------------------------------------------------------
# Selections (exponential mechanism as ε²/8-zCDP)
# ---------------------------------------------------------------------------------------------------------------


def test_selection_adds_k_rho_alpha_to_the_rdp_curve() -> None:
    k, eps_sel = 7, 0.3
    rho = eps_sel**2 / 8
    assert selection_rho(eps_sel) == pytest.approx(rho, rel=1e-15)

    gauss = ClientAccountant(cfg(selection_epsilon=eps_sel))
    gauss.gaussian_steps(ANCHOR_STEPS)
    both = ClientAccountant(cfg(selection_epsilon=eps_sel))
    both.gaussian_steps(ANCHOR_STEPS)
    both.selection(3)
    both.selection(k - 3)

    orders, rdp_g = gauss.rdp()
    orders_b, rdp_b = both.rdp()
    np.testing.assert_array_equal(orders, orders_b)
    np.testing.assert_allclose(rdp_b - rdp_g, k * rho * orders, rtol=1e-12, atol=1e-14)

    # ε from the closed form with an independent Gaussian RDP (Opacus' analysis, integer orders)
    ints = ClientAccountant(cfg(selection_epsilon=eps_sel), backend=RdpBackend(INT_ORDERS))
    ints.gaussian_steps(ANCHOR_STEPS)
    ints.selection(k)
    int_orders = np.array(INT_ORDERS)
    rdp_gauss = compute_rdp(q=ANCHOR_Q, noise_multiplier=ANCHOR_SIGMA, steps=ANCHOR_STEPS, orders=INT_ORDERS)
    closed = rdp_gauss + k * rho * int_orders
    assert ints.epsilon() == pytest.approx(compute_epsilon(int_orders, closed, DELTA)[0], rel=1e-9)
    assert ints.epsilon() == pytest.approx(improved_conversion(int_orders, closed, DELTA), rel=1e-9)
    # default orders: the same closed form on the accountant's own Gaussian curve
    eps = both.epsilon()
    assert eps == pytest.approx(improved_conversion(orders, rdp_g + k * rho * orders, DELTA), rel=1e-9)
    assert eps <= ints.epsilon() + 1e-12
    # the classic conversion is valid but looser
    assert eps < classic_conversion(orders, rdp_g + k * rho * orders, DELTA)
    assert both.epsilon() > gauss.epsilon()
    assert both.spent()["selections"] == k and both.spent()["gaussian_steps"] == ANCHOR_STEPS


@pytest.mark.parametrize(
    ("eps0", "rounds", "table"), [(0.1, 30, 1.12), (0.5, 30, 6.8), (2.0, 1, None), (0.05, 5, None)]
)
def test_selections_alone_equal_the_zcdp_conversion(eps0: float, rounds: int, table: float | None) -> None:
    acc = ClientAccountant(cfg(selection_epsilon=eps0))
    for _ in range(rounds):  # once-per-round selection
        acc.selection()
    eps = acc.epsilon()
    rho = rounds * eps0**2 / 8

    # continuous-α optimum of the same (improved) conversion for ρ-zCDP: the discrete orders can only be above
    # it, and only by the discretisation
    alphas = np.geomspace(1.0101, 1e5, 400_000)
    continuous = improved_conversion(alphas, rho * alphas, DELTA)
    assert eps >= continuous - 1e-9
    assert eps <= continuous * 1.03
    # the textbook zCDP → (ε, δ) bound ρ + 2√(ρ log 1/δ) (Bun & Steinke 2016, Prop. 1.3) is valid and looser
    textbook = rho + 2 * math.sqrt(rho * math.log(1 / DELTA))
    assert eps < textbook

    if table is not None:  # fkge.md §4.7 table, δ = 1e-5
        assert eps == pytest.approx(table, abs=0.01 if table < 2 else 0.05)


def test_selection_needs_an_epsilon_and_the_rdp_backend() -> None:
    acc = ClientAccountant(cfg())
    with pytest.raises(ValueError, match="selection_epsilon"):
        acc.selection()
    with pytest.raises(ValueError):
        acc.selection(1, epsilon=0.0)
    with pytest.raises(ValueError):
        acc.selection(-1, epsilon=0.1)
    acc.selection(0, epsilon=0.1)
    assert acc.epsilon() == 0.0 and acc.spent()["selections"] == 0

    pld = make_accountant(cfg(selection_epsilon=0.1), "pld")
    with pytest.raises(NotImplementedError, match="ZCDpEvent"):
        pld.selection()
    with pytest.raises(NotImplementedError):
        pld.rdp()
    with pytest.raises(NotImplementedError):
        solve_noise_multiplier(5.0, DELTA, ANCHOR_Q, ANCHOR_STEPS, selections=3, selection_epsilon=0.1, backend="pld")


# ---------------------------------------------------------------------------------------------------------------
# Calibration
# ---------------------------------------------------------------------------------------------------------------


def test_solve_noise_multiplier_matches_opacus_and_is_tight() -> None:
    tol = 1e-3
    sigma = solve_noise_multiplier(2.0, DELTA, ANCHOR_Q, ANCHOR_STEPS, tol=tol)
    ref = get_noise_multiplier(
        target_epsilon=2.0, target_delta=DELTA, sample_rate=ANCHOR_Q, steps=ANCHOR_STEPS, accountant="rdp"
    )
    assert ref == pytest.approx(1.1255, abs=1e-4)
    assert sigma == pytest.approx(ref, rel=5e-3)

    def eps_at(s: float) -> float:
        acc = ClientAccountant(cfg(noise_multiplier=s))
        acc.gaussian_steps(ANCHOR_STEPS)
        return acc.epsilon()

    assert eps_at(sigma) <= 2.0
    assert eps_at(sigma * (1 - tol)) > 2.0
    assert eps_at(sigma) == pytest.approx(2.0, abs=0.01)


def test_solve_noise_multiplier_with_selections() -> None:
    tol = 1e-3
    sigma = solve_noise_multiplier(3.0, DELTA, ANCHOR_Q, ANCHOR_STEPS, selections=30, selection_epsilon=0.1, tol=tol)
    gauss_only = ClientAccountant(cfg(noise_multiplier=sigma))
    gauss_only.gaussian_steps(ANCHOR_STEPS)
    assert gauss_only.epsilon() < 2.85  # the selections eat part of the budget (≈ 2.79 left for the steps)

    def eps_at(s: float) -> float:
        acc = ClientAccountant(cfg(noise_multiplier=s, selection_epsilon=0.1))
        acc.gaussian_steps(ANCHOR_STEPS)
        acc.selection(30)
        return acc.epsilon()

    assert eps_at(sigma) <= 3.0 < eps_at(sigma * (1 - tol))

    # ε_sel = 0.5 × 30 selections alone spend ≈ 6.8 > 5
    with pytest.raises(ValueError, match="alone"):
        solve_noise_multiplier(5.0, DELTA, ANCHOR_Q, ANCHOR_STEPS, selections=30, selection_epsilon=0.5)
    with pytest.raises(ValueError, match="selection_epsilon"):
        solve_noise_multiplier(5.0, DELTA, ANCHOR_Q, ANCHOR_STEPS, selections=30)
    with pytest.raises(ValueError):
        solve_noise_multiplier(5.0, DELTA, ANCHOR_Q, 0)
    with pytest.raises(ValueError):
        solve_noise_multiplier(5.0, 1.0, ANCHOR_Q, ANCHOR_STEPS)


def test_solve_noise_multiplier_pld() -> None:
    backend = PldBackend(value_discretization_interval=1e-3)  # coarser grid: fast
    tol = 1e-2
    sigma = solve_noise_multiplier(1.757, DELTA, ANCHOR_Q, ANCHOR_STEPS, backend=backend, tol=tol)
    assert sigma == pytest.approx(ANCHOR_SIGMA, rel=0.02)
    acc = ClientAccountant(cfg(noise_multiplier=sigma), backend=backend)
    acc.gaussian_steps(ANCHOR_STEPS)
    low = ClientAccountant(cfg(noise_multiplier=sigma * (1 - tol)), backend=backend)
    low.gaussian_steps(ANCHOR_STEPS)
    assert acc.epsilon() <= 1.757 < low.epsilon()


# ---------------------------------------------------------------------------------------------------------------
# Config validation
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("noise_multiplier", 0.0),
        ("noise_multiplier", -1.0),
        ("noise_multiplier", float("nan")),
        ("noise_multiplier", float("inf")),
        ("noise_multiplier", "1.0"),
        ("max_grad_norm", 0.0),
        ("max_grad_norm", -0.5),
        ("sample_rate", 0.0),
        ("sample_rate", 1.5),
        ("sample_rate", -0.1),
        ("delta", 1.0),
        ("delta", 2.0),
        ("delta", 0.0),
        ("delta", -1e-5),
        ("selection_epsilon", 0.0),
        ("selection_epsilon", -2.0),
        ("eps_max", 0.0),
        ("eps_max", -1.0),
        ("eps_max", float("nan")),
    ],
)
def test_bad_config_names_the_field(field: str, value: object) -> None:
    with pytest.raises(PrivacyConfigError, match=field) as info:
        cfg(**{field: value})
    assert info.value.field == field
    assert isinstance(info.value, ValueError)


def test_good_config_edges_and_round_trip() -> None:
    c = cfg(sample_rate=1, noise_multiplier=np.float64(0.5), selection_epsilon=2, eps_max=20)
    assert c.sample_rate == 1.0 and type(c.noise_multiplier) is float
    assert PrivacyConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    assert cfg().selection_epsilon is None and cfg().eps_max is None


# ---------------------------------------------------------------------------------------------------------------
# Budget stop, caching, persistence, registry
# ---------------------------------------------------------------------------------------------------------------


def test_exhausted_flips_exactly_when_epsilon_crosses_eps_max() -> None:
    ref = ClientAccountant(cfg())
    ref.gaussian_steps(ANCHOR_STEPS)
    eps96 = ref.epsilon()

    acc = ClientAccountant(cfg(eps_max=eps96))
    acc.gaussian_steps(ANCHOR_STEPS - 1)
    assert acc.epsilon() < eps96 and not acc.exhausted()
    acc.gaussian_steps(1)
    assert acc.epsilon() == eps96 and acc.exhausted()

    above = ClientAccountant(cfg(eps_max=eps96 * (1 + 1e-9)))
    above.gaussian_steps(ANCHOR_STEPS)
    assert not above.exhausted()
    above.gaussian_steps(1)
    assert above.exhausted()

    unbounded = ClientAccountant(cfg())
    unbounded.gaussian_steps(10_000)
    assert unbounded.epsilon() > 20 and not unbounded.exhausted()


def test_epsilon_is_cached_per_history() -> None:
    acc = ClientAccountant(cfg())
    calls: list[float] = []
    original = acc.backend.epsilon

    def counting(event: dp_accounting.DpEvent, delta: float) -> float:
        calls.append(delta)
        return original(event, delta)

    acc.backend.epsilon = counting  # type: ignore[method-assign]
    assert acc.epsilon() == 0.0 and calls == []  # empty history: no accountant needed
    acc.gaussian_steps(10)
    e1 = acc.epsilon()
    assert acc.epsilon() == e1 and acc.spent()["epsilon"] == e1 and len(calls) == 1
    acc.epsilon(1e-3)
    assert len(calls) == 2
    acc.gaussian_steps(5)
    assert acc.epsilon() > e1 and len(calls) == 3
    acc.gaussian_steps(0)
    acc.epsilon()
    assert len(calls) == 3


def test_state_dict_round_trip() -> None:
    acc = ClientAccountant(cfg(selection_epsilon=0.2, eps_max=10))
    acc.gaussian_steps(30)
    acc.selection()
    acc.gaussian_steps(30, noise_multiplier=1.045)
    acc.selection(2, epsilon=0.3)
    state = json.loads(json.dumps(acc.state_dict()))

    restored = ClientAccountant(cfg(selection_epsilon=0.2, eps_max=10))
    restored.gaussian_steps(500)  # replaced by the load
    restored.load_state_dict(state)
    assert restored.epsilon() == acc.epsilon()
    assert restored.spent() == acc.spent()
    # resuming continues the same ledger
    for a in (acc, restored):
        a.gaussian_steps(12, noise_multiplier=0.99)
        a.selection()
    assert restored.epsilon() == acc.epsilon() > 0

    # spent()["events"] is a copy
    acc.spent()["events"][0]["steps"] = 10**6
    assert acc.spent()["events"][0]["steps"] == 30

    for bad in (
        {},
        {**state, "format": "other"},
        {**state, "history": [{"kind": "gaussian", "noise_multiplier": -1.0, "sample_rate": 0.1, "steps": 3}]},
        {**state, "history": [{"kind": "gaussian", "noise_multiplier": 1.0, "sample_rate": 1.5, "steps": 3}]},
        {**state, "history": [{"kind": "selection", "epsilon": 0.1}]},
        {**state, "history": [{"kind": "laplace"}]},
    ):
        with pytest.raises(ValueError):
            restored.load_state_dict(bad)
    assert restored.epsilon() == acc.epsilon()  # a failed load leaves the ledger alone

    with pytest.raises(NotImplementedError):
        ClientAccountant(cfg(), backend="pld").load_state_dict(state)


def test_registry_and_argument_checks() -> None:
    assert set(ACCOUNTANTS) == {"rdp", "pld"}
    assert isinstance(make_accountant(cfg()).backend, RdpBackend)
    assert isinstance(make_accountant(cfg(), "PLD").backend, PldBackend)
    small = make_accountant(cfg(), "rdp", orders=[2, 4, 8]).backend
    assert isinstance(small, RdpBackend) and small.orders == (2.0, 4.0, 8.0)
    with pytest.raises(UnknownNameError, match="pld"):
        make_accountant(cfg(), "moments")
    with pytest.raises(ValueError):
        RdpBackend(orders=[1.0, 2.0])

    acc = ClientAccountant(cfg())
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError):
            acc.gaussian_steps(bad)  # type: ignore[arg-type]
    for bad_sigma in (0.0, float("nan"), -1.0):
        with pytest.raises(ValueError):
            acc.gaussian_steps(3, noise_multiplier=bad_sigma)
    with pytest.raises(ValueError):
        acc.epsilon(0.0)
    assert acc.spent()["gaussian_steps"] == 0


def test_small_sigma_does_not_flood_the_log(caplog: pytest.LogCaptureFixture) -> None:
    # σ = 0.5 (DP-FedE 2022 default): dp-accounting's fractional series near α = 1 does not converge and would log
    # one warning per order per ε computation; the order is excluded (RDP = ∞), which stays a valid bound.
    acc = ClientAccountant(cfg(noise_multiplier=0.5, sample_rate=64 / 2759))
    acc.gaussian_steps(100)
    with caplog.at_level(logging.WARNING):
        eps = acc.epsilon()
    assert math.isfinite(eps) and eps > 0
    assert not [r for r in caplog.records if "failed to converge" in r.getMessage()]
    assert logging.getLogger("absl").filters == []  # the filter is only installed during the computation
