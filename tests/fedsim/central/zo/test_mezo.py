"""MeZO / SPSA: exact-ish restoration, the projected gradient against a finite difference, descent on a convex
problem, per-call generators independent of the global RNG, weight decay only where it belongs."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from fedsim.central.zo.mezo import no_decay, perturb_, spsa_estimate, spsa_step, zo_update_
from fedsim.central.zo.refine import mean_nll


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_spsa_restores_parameters_within_1e6(tiny_llama: Any, lm_batch: Any) -> None:
    before = _snapshot(tiny_llama)
    params = [p for _, p in tiny_llama.named_parameters()]
    for seed in range(3):
        res = spsa_estimate(params, lambda: mean_nll(tiny_llama, lm_batch), eps=1e-3, seed=seed)
        assert res.loss_plus != res.loss_minus
    drift = max(float((p.detach() - before[n]).abs().max()) for n, p in tiny_llama.named_parameters())
    assert drift <= 1e-6


def test_spsa_restores_even_when_the_loss_raises(tiny_llama: Any) -> None:
    before = _snapshot(tiny_llama)
    params = [p for _, p in tiny_llama.named_parameters()]
    calls = {"n": 0}

    def failing() -> float:
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("boom")
        return 0.0

    with pytest.raises(RuntimeError, match="boom"):
        spsa_estimate(params, failing, eps=1e-2, seed=0)
    assert all(torch.allclose(p, before[n], atol=1e-6) for n, p in tiny_llama.named_parameters())


def test_projected_gradient_matches_finite_difference_along_the_same_z(tiny_llama: Any, lm_batch: Any) -> None:
    params = [p for n, p in tiny_llama.named_parameters() if "layers.1." in n]
    eps, seed = 1e-3, 11
    res = spsa_estimate(params, lambda: mean_nll(tiny_llama, lm_batch), eps=eps, seed=seed)
    # the same z, drawn again from the seed into zero tensors of the same shapes: the autograd directional
    # derivative ∇L·z and a central difference with a larger step agree with the scalar projected gradient
    zs = [torch.zeros_like(p) for p in params]
    perturb_(zs, seed, 1.0)
    tiny_llama.zero_grad()
    out = tiny_llama(input_ids=lm_batch.input_ids, attention_mask=lm_batch.attention_mask).logits.float()
    labels = lm_batch.labels[:, 1:]
    mask = labels != -100
    nll = torch.nn.functional.cross_entropy(out[:, :-1].transpose(1, 2), labels.clamp_min(0), reduction="none")
    loss = ((nll * mask).sum(dim=1)).mean()
    loss.backward()
    directional = sum(float((p.grad * z).sum()) for p, z in zip(params, zs))
    assert res.projected_grad == pytest.approx(directional, rel=2e-2, abs=1e-3)
    h = 3e-3  # small enough that the third-order term stays within the tolerance, large enough for fp32
    perturb_(params, seed, h)
    up = mean_nll(tiny_llama, lm_batch)
    perturb_(params, seed, -2 * h)
    down = mean_nll(tiny_llama, lm_batch)
    perturb_(params, seed, h)
    assert res.projected_grad == pytest.approx((up - down) / (2 * h), rel=5e-2, abs=1e-3)


def test_spsa_descends_a_convex_problem() -> None:
    torch.manual_seed(0)
    a = torch.linspace(0.5, 2.0, 50)
    target = torch.randn(50)
    w = torch.nn.Parameter(torch.zeros(50))
    b = torch.nn.Parameter(torch.zeros(3))

    def loss() -> float:
        with torch.no_grad():
            return float(0.5 * (a * (w - target) ** 2).sum() + 0.5 * (b - 1.0).pow(2).sum())

    start = loss()
    model = torch.nn.Module()
    losses = []
    for t in range(200):
        res = spsa_step(model, [("w", w), ("b.bias", b)], loss, eps=1e-3, lr=0.01, seed=t)
        losses.append(res.loss)
    assert loss() < 0.2 * start
    assert sum(losses[-20:]) / 20 < sum(losses[:20]) / 20


def test_directions_come_from_a_per_call_generator_not_the_global_rng() -> None:
    p = torch.zeros(1000)
    torch.manual_seed(123)
    before_state = torch.get_rng_state()
    perturb_([p], seed=5, scale=1.0)
    assert torch.equal(torch.get_rng_state(), before_state)  # the global RNG is untouched
    q = torch.zeros(1000)
    torch.randn(10)  # moving the global RNG changes nothing either
    perturb_([q], seed=5, scale=1.0)
    assert torch.equal(p, q)
    r = torch.zeros(1000)
    perturb_([r], seed=6, scale=1.0)
    assert not torch.equal(p, r)


def test_update_applies_weight_decay_except_bias_and_norm() -> None:
    weight = torch.nn.Parameter(torch.ones(4))
    bias = torch.nn.Parameter(torch.ones(4))
    norm = torch.nn.Parameter(torch.ones(4))
    named = [("layer.weight", weight), ("layer.bias", bias), ("input_layernorm.weight", norm)]
    zo_update_(named, projected_grad=0.0, lr=0.1, seed=0, weight_decay=0.5)  # g = 0: only decay acts
    assert torch.allclose(weight, torch.full((4,), 0.95))
    assert torch.equal(bias, torch.ones(4)) and torch.equal(norm, torch.ones(4))
    assert no_decay("model.norm.weight") and no_decay("x.LayerNorm.weight") and not no_decay("mlp.up_proj.weight")


def test_eps_must_be_positive() -> None:
    with pytest.raises(ValueError, match="eps must be > 0"):
        spsa_estimate([torch.zeros(2)], lambda: 0.0, eps=0.0, seed=0)


def test_spsa_step_runs_in_eval_mode_and_restores_the_training_flag(tiny_llama: Any, lm_batch: Any) -> None:
    tiny_llama.train()
    seen = []

    def loss() -> float:
        seen.append(tiny_llama.training)
        return mean_nll(tiny_llama, lm_batch)

    spsa_step(tiny_llama, list(tiny_llama.named_parameters()), loss, eps=1e-3, lr=0.0, seed=0)
    assert seen == [False, False] and tiny_llama.training
