"""Unlearning updates restricted to a parameter mask: gradient ascent (GA), gradient difference (GD), NPO
(losses as in open-unlearning, reimplemented) and a diagonal-Fisher second-order step (SO); gradients outside
the mask are zeroed, so those parameters stay bit-identical. Also the SalUn-style saliency mask baseline."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fedsim.central.mape.data import Split
from fedsim.central.mape.metrics import accuracy, example_losses
from fedsim.central.mape.stats import parameter_fisher, parameter_forget_grads
from fedsim.registry import Registry

ParamMasks = dict[str, torch.Tensor]
METHODS: Registry[Callable[..., dict[str, Any]]] = Registry("MAPE unlearning method")


@dataclass
class UnlearnSettings:
    """Hyperparameters shared by the methods (alpha: retain-loss weight, gamma: forget-loss weight, beta: NPO;
    so_*: the second-order step's damping relative to the mean Fisher and its retain microbatches; target_fa:
    stop as soon as forget accuracy is at or below it, -1 = run all steps)."""

    steps: int = 20
    lr: float = 1e-3
    optimizer: str = "adam"
    target_fa: float = -1.0
    check_every: int = 1
    batch_size: int = 16
    alpha: float = 1.0
    gamma: float = 1.0
    beta: float = 0.1
    so_lambda: float = 0.1
    so_microbatches: int = 16
    so_microbatch_size: int = 8

    def reached(self, model: nn.Module, forget: Split, device: str, step: int) -> bool:
        """Early stop: forget accuracy at or below `target_fa` (checked every `check_every` steps; < 0: never)."""
        if self.target_fa < 0 or (step + 1) % max(1, self.check_every):
            return False
        return accuracy(model, forget, device) <= self.target_fa


OPTIMIZERS = ("adam", "sgd")


def make_optimizer(name: str, params: list[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """Adam or plain SGD without weight decay (a zero gradient then leaves a parameter bit-identical)."""
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=0.0)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    raise ValueError(f"unknown unlearn.optimizer {name!r}; choices: {', '.join(OPTIMIZERS)}")


@contextmanager
def trainable(model: nn.Module, masks: ParamMasks | None) -> Iterator[dict[str, nn.Parameter]]:
    """Inside: only the parameters with a selected element (all with `masks` None) require grad; yields them.
    The previous requires_grad flags come back on exit."""
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    chosen = {}
    for name, p in model.named_parameters():
        p.requires_grad_(masks is None or name in masks)
        if p.requires_grad:
            chosen[name] = p
    try:
        yield chosen
    finally:
        for name, p in model.named_parameters():
            p.requires_grad_(flags[name])


def _forget_term(model: nn.Module, fb: dict[str, torch.Tensor], method: str, ref: nn.Module | None,
                 beta: float) -> torch.Tensor:
    """The forget part of the loss: -NLL_f (GA, GD) or NPO's -(2/beta) log sigmoid(beta (NLL - NLL_ref))."""
    nll = example_losses(model, fb)
    if method == "npo" and ref is not None:
        with torch.no_grad():
            ref_nll = example_losses(ref, fb)
        return (-(2.0 / beta) * F.logsigmoid(beta * (nll - ref_nll))).mean()
    return -nll.mean()


def _loss_loop(method: str, model: nn.Module, forget: Split, retain: Split, masks: ParamMasks | None,
               cfg: UnlearnSettings, device: str, seed: int) -> dict[str, Any]:
    with trainable(model, masks) as params:
        return _loss_steps(method, model, forget, retain, masks, params, cfg, device, seed)


def _loss_steps(method: str, model: nn.Module, forget: Split, retain: Split, masks: ParamMasks | None,
                params: dict[str, nn.Parameter], cfg: UnlearnSettings, device: str, seed: int) -> dict[str, Any]:
    """The optimisation loop of GA / GD / NPO on `params`, gradients multiplied by their masks."""
    grad_masks = {n: masks[n].to(device) for n in params} if masks is not None else {}
    ref = copy.deepcopy(model).eval().requires_grad_(False) if method == "npo" else None
    opt = make_optimizer(cfg.optimizer, list(params.values()), cfg.lr)
    gen = torch.Generator().manual_seed(seed)
    fbs, rbs = forget.cycle(cfg.batch_size, device, gen), retain.cycle(cfg.batch_size, device, gen)
    model.eval()
    log = []
    for step in range(cfg.steps):
        fb = next(fbs)
        loss = _forget_term(model, fb, method, ref, cfg.beta)
        if method != "ga":
            loss = cfg.gamma * loss
        if method in ("gd", "npo") and cfg.alpha:
            loss = loss + cfg.alpha * example_losses(model, next(rbs)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        for name, mask in grad_masks.items():
            if params[name].grad is not None:
                params[name].grad.mul_(mask)
        opt.step()
        log.append(float(loss.detach()))
        if cfg.reached(model, forget, device, step):
            break
    return {"loss_first": log[0] if log else None, "loss_last": log[-1] if log else None, "steps": len(log)}


@METHODS.register("ga", "gradient ascent on the forget loss")
def gradient_ascent(**kw: Any) -> dict[str, Any]:
    """GA: minimise -NLL_f."""
    return _loss_loop("ga", **kw)


@METHODS.register("gd", "gradient difference: gamma * (-NLL_f) + alpha * NLL_r")
def gradient_difference(**kw: Any) -> dict[str, Any]:
    """GD: minimise gamma * (-NLL_f) + alpha * NLL_r."""
    return _loss_loop("gd", **kw)


@METHODS.register("npo", "negative preference optimisation (+ alpha * NLL_r)")
def npo(**kw: Any) -> dict[str, Any]:
    """NPO: minimise gamma * -(2/beta) log sigmoid(beta (NLL_theta,f - NLL_ref,f)) + alpha * NLL_r."""
    return _loss_loop("npo", **kw)


@METHODS.register("so", "second-order: theta_P += lr * normalized (F_r + lambda)^-1 grad L_f")
def second_order(model: nn.Module, forget: Split, retain: Split, masks: ParamMasks | None, cfg: UnlearnSettings,
                 device: str, seed: int) -> dict[str, Any]:
    """MAPE-SO: ascent steps on the forget loss preconditioned by the retain diagonal Fisher (damping so_lambda x
    its mean over the updated parameters), Δ = (F_r + λ)⁻¹ ∇L_f, restricted to the mask. Each step moves by
    lr · Δ / rms(Δ), so its size per parameter matches an Adam step of the same lr."""
    with trainable(model, masks) as params:
        return _so_steps(model, forget, retain, masks, params, cfg, device, seed)


def _so_steps(model: nn.Module, forget: Split, retain: Split, masks: ParamMasks | None,
              params: dict[str, nn.Parameter], cfg: UnlearnSettings, device: str, seed: int) -> dict[str, Any]:
    """The preconditioned ascent steps of SO on `params`."""
    names = set(params)
    fisher = parameter_fisher(model, retain, cfg.so_microbatches, cfg.so_microbatch_size, names, device, seed)
    keep = {n: masks[n].to(device) if masks is not None else torch.ones_like(p, dtype=torch.bool)
            for n, p in params.items()}
    damp = cfg.so_lambda * max(float(torch.cat([fisher[n][keep[n]] for n in names]).mean()), 1e-30)
    count = sum(int(k.sum()) for k in keep.values())
    steps = 0
    for step in range(max(1, cfg.steps)):
        grads = parameter_forget_grads(model, forget, names, device)
        deltas = {n: torch.where(keep[n], grads[n] / (fisher[n] + damp), torch.zeros_like(grads[n])) for n in names}
        rms = (sum(float((d ** 2).sum()) for d in deltas.values()) / max(count, 1)) ** 0.5
        if rms == 0.0:
            break
        with torch.no_grad():
            for n, p in params.items():
                p.add_(deltas[n], alpha=cfg.lr / rms)
        steps = step + 1
        if cfg.reached(model, forget, device, step):
            break
    return {"damping": damp, "steps": steps}


def run_method(method: str, model: nn.Module, forget: Split, retain: Split, masks: ParamMasks | None,
               cfg: UnlearnSettings, device: str = "cpu", seed: int = 0) -> dict[str, Any]:
    """Unlearn in place with `method` (ga | gd | npo | so) on the parameters of `masks` (None: all)."""
    fn = METHODS.lookup(method)
    return fn(model=model, forget=forget, retain=retain, masks=masks, cfg=cfg, device=device, seed=seed)


def saliency_masks(model: nn.Module, forget: Split, universe: ParamMasks, count: int, device: str = "cpu"
                   ) -> ParamMasks:
    """SalUn-style module-oblivious mask: the `count` elements of `universe` with the largest |∂L_f/∂θ|."""
    grads = parameter_forget_grads(model, forget, set(universe), device)
    names = sorted(universe)
    scores = torch.cat([torch.where(universe[n].to(grads[n].device), grads[n].abs(),
                                    torch.full_like(grads[n], -1.0)).flatten().cpu() for n in names])
    total = int(sum(int(universe[n].sum()) for n in names))
    if not 0 < count <= total:
        raise ValueError(f"saliency mask: cannot select {count} of {total} parameters")
    keep = torch.zeros(scores.numel(), dtype=torch.bool)
    keep[torch.argsort(scores, descending=True, stable=True)[:count]] = True
    out, start = {}, 0
    for n in names:
        size = universe[n].numel()
        out[n] = keep[start:start + size].view(universe[n].shape)
        start += size
    return {n: m for n, m in out.items() if bool(m.any())}


def mask_count(masks: ParamMasks | None, model: nn.Module) -> int:
    """Parameters a mask lets change (all of the model's with None)."""
    if masks is None:
        return sum(p.numel() for p in model.parameters())
    return int(sum(int(m.sum()) for m in masks.values()))
