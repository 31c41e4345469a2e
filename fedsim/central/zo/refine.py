"""The ZO refinement loop (spec §2.2): MeZO steps on a safety loss, restricted to the layer groups the
curvature probe finds most sensitive, optionally evaluated under a sampled threat (activation noise or
fake quantization) so that the ZO signal also matches the non-parameter threats.

Safety loss: −log p(refusal | harmful or jailbreak prompt + the model's own reasoning block) (teacher forcing),
averaged over prompts (or its per-token mean, or the first token's NLL only: `loss_reduction`); optional utility
term μ·NLL of the normal answer on general prompts (guards the non-safety behaviour). The sequence NLL is the
default: its per-token mean dilutes the one token that decides between refusing and complying.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import nn

from fedsim.central.zo.mezo import spsa_step
from fedsim.central.zo.perturb import act_noise, fake_quant, parse_quant
from fedsim.central.zo.sensitivity import GROUP_KINDS, PROBES, SensitivityEMA, layer_groups, layer_sensitivity

OBJECTIVE_PERTURBATIONS = ("none", "act_noise", "fake_quant")


@dataclass(frozen=True)
class ZOConfig:
    """The `zo` section of the zo-refine job (spec §3.3), validated by `from_dict`."""

    steps: int = 60
    eps: float = 1e-3
    lr: float = 3e-5
    weight_decay: float = 0.0
    seed: int = 0
    layer_groups: str = "blocks"
    topk_frac: float = 0.5
    probe_period: int = 20
    ema: float = 0.5
    perturb_in_objective: str = "none"
    utility_weight: float = 0.5
    batch_size: int = 32
    probe: str = "curvature"
    probe_eps: float = 0.0  # 0: use eps
    objective_noise: float = 0.05  # σ of act_noise in the objective
    objective_quant: str = "w4a16"  # fake_quant spec in the objective
    loss_reduction: str = "sequence"  # sequence | token_mean | first_token (see target_nll)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "zo") -> ZOConfig:
        """A validated config; errors name the offending key (`zo.eps`, ...)."""
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ValueError(f"unknown key(s) {', '.join(f'{where}.{k}' for k in unknown)}; known: {', '.join(known)}")
        values: dict[str, Any] = {}
        for name, value in data.items():
            kind = type(known[name].default)
            try:
                if kind is int and (isinstance(value, bool) or float(value) != int(value)):
                    raise TypeError
                values[name] = kind(value)
            except (TypeError, ValueError):
                raise ValueError(f"{where}.{name} must be {kind.__name__}, got {value!r}") from None
        cfg = cls(**values)
        cfg.validate(where)
        return cfg

    def validate(self, where: str = "zo") -> None:
        """Raise ValueError naming the key of the first invalid setting."""
        checks = [
            ("steps", self.steps >= 0, "an integer >= 0"),
            ("eps", math.isfinite(self.eps) and self.eps > 0, "> 0"),
            ("lr", math.isfinite(self.lr) and self.lr >= 0, ">= 0"),
            ("weight_decay", math.isfinite(self.weight_decay) and self.weight_decay >= 0, ">= 0"),
            ("layer_groups", self.layer_groups in GROUP_KINDS, f"one of {', '.join(GROUP_KINDS)}"),
            ("topk_frac", 0 < self.topk_frac <= 1, "in (0, 1]"),
            ("probe_period", self.probe_period >= 1, "an integer >= 1"),
            ("ema", 0 <= self.ema < 1, "in [0, 1)"),
            ("perturb_in_objective", self.perturb_in_objective in OBJECTIVE_PERTURBATIONS,
             f"one of {', '.join(OBJECTIVE_PERTURBATIONS)}"),
            ("utility_weight", math.isfinite(self.utility_weight) and self.utility_weight >= 0, ">= 0"),
            ("batch_size", self.batch_size >= 1, "an integer >= 1"),
            ("probe", self.probe in PROBES, f"one of {', '.join(PROBES)}"),
            ("probe_eps", math.isfinite(self.probe_eps) and self.probe_eps >= 0, ">= 0 (0: use eps)"),
            ("objective_noise", math.isfinite(self.objective_noise) and self.objective_noise >= 0, ">= 0"),
            ("loss_reduction", self.loss_reduction in LOSS_REDUCTIONS, f"one of {', '.join(LOSS_REDUCTIONS)}"),
        ]
        for key, ok, need in checks:
            if not ok:
                raise ValueError(f"{where}.{key} must be {need}, got {getattr(self, key)!r}")
        try:
            parse_quant(self.objective_quant)
        except ValueError as err:
            raise ValueError(f"{where}.objective_quant: {err}") from None


# ---------------------------------------------------------------------------------------------------- data
@dataclass(frozen=True)
class LMBatch:
    """Right-padded prompt + target token ids; labels are −100 except on target tokens."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def select(self, index: Sequence[int]) -> LMBatch:
        idx = torch.as_tensor(list(index), dtype=torch.long, device=self.input_ids.device)
        keep = int(self.attention_mask[idx].sum(dim=1).max())
        return LMBatch(self.input_ids[idx, :keep], self.attention_mask[idx, :keep], self.labels[idx, :keep])


def build_batch(tokenizer: Any, prompts: Sequence[str], targets: Sequence[str], device: str | torch.device = "cpu",
                max_length: int = 1024) -> LMBatch:
    """Token ids of each `prompt + target` (no special tokens added), the loss on the target tokens only."""
    if len(prompts) != len(targets) or not prompts:
        raise ValueError(f"build_batch: need as many targets as prompts (>0); got {len(prompts)} and {len(targets)}")
    rows, masks = [], []
    for prompt, target in zip(prompts, targets):
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        t = tokenizer(target, add_special_tokens=False)["input_ids"]
        if not t:
            raise ValueError(f"build_batch: empty target for prompt {prompt[:60]!r}")
        ids = (p + t)[-max_length:]
        labels = ([-100] * len(p) + t)[-max_length:]
        rows.append((ids, labels))
        masks.append(len(ids))
    width = max(masks)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (ids, lab) in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, : len(lab)] = torch.tensor(lab)
        attention[i, : len(ids)] = 1
    return LMBatch(input_ids.to(device), attention.to(device), labels.to(device))


LOSS_REDUCTIONS = ("sequence", "token_mean", "first_token")


def target_nll(model: nn.Module, batch: LMBatch, chunk: int = 64) -> dict[str, float]:
    """Mean over examples of the target's NLL: `sequence` = −log p(target | prompt) (summed over its tokens),
    `token_mean` = per-token mean, `first_token` = NLL of the first target token (the refuse/comply decision)."""
    sums = dict.fromkeys(LOSS_REDUCTIONS, 0.0)
    count = 0
    with torch.inference_mode():
        for start in range(0, len(batch), chunk):
            part = batch.select(range(start, min(len(batch), start + chunk)))
            logits = model(input_ids=part.input_ids, attention_mask=part.attention_mask).logits.float()
            labels = part.labels[:, 1:]
            mask = labels != -100
            nll = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), labels.clamp_min(0),
                                                    reduction="none") * mask
            seq = nll.sum(dim=1)
            first = nll.gather(1, mask.int().argmax(dim=1, keepdim=True)).squeeze(1)
            sums["sequence"] += float(seq.sum())
            sums["token_mean"] += float((seq / mask.sum(dim=1).clamp_min(1)).sum())
            sums["first_token"] += float(first.sum())
            count += len(part)
    return {k: v / max(1, count) for k, v in sums.items()}


def mean_nll(model: nn.Module, batch: LMBatch, reduction: str = "sequence") -> float:
    """One reduction of `target_nll` (default: −log p(target | prompt), averaged over examples)."""
    if reduction not in LOSS_REDUCTIONS:
        raise ValueError(f"unknown loss reduction {reduction!r}; reductions: {', '.join(LOSS_REDUCTIONS)}")
    return target_nll(model, batch)[reduction]


def safety_examples(tokenizer: Any, split: str = "train", pools: Sequence[str] = ("harmful", "jailbreak"),
                    n_per_pool: int | None = None, seed: int = 0) -> tuple[list[str], list[str]]:
    """(prompts, targets): each unsafe toy query with its reasoning block pre-filled, the refusal as target."""
    from fedsim.central import toydata
    from fedsim.central.prompts import end_of_turn, render_prompt

    prompts, targets = [], []
    for pool in pools:
        qs = toydata.queries(pool, split) if n_per_pool is None else toydata.sample_queries(pool, n_per_pool, split,
                                                                                             seed)
        for q in qs:
            prompts.append(render_prompt(tokenizer, q.text, toydata.think_block(toydata.reasoning(q))))
            targets.append(toydata.guided_answer(q) + end_of_turn(tokenizer))
    return prompts, targets


# --------------------------------------------------------------------------------------------------- loop
def _seed(base: int, tag: int, t: int) -> int:
    return (int(base) * 1_000_003 + tag * 65_537 + int(t)) % (2**62)


def make_objective(model: nn.Module, safety: LMBatch, utility: LMBatch | None, cfg: ZOConfig,
                   safety_idx: Sequence[int], utility_idx: Sequence[int] | None,
                   noise_seed: int) -> Callable[[], float]:
    """L = L_safe(batch) + μ·L_util(batch), under the configured objective perturbation. The same noise seed
    is used for every call (common random numbers: L+ and L− see the same activation noise)."""
    s_batch = safety.select(safety_idx)
    u_batch = utility.select(utility_idx) if utility is not None and utility_idx and cfg.utility_weight > 0 else None

    def loss() -> float:
        with ExitStack() as stack:
            if cfg.perturb_in_objective == "act_noise":
                stack.enter_context(act_noise(model, cfg.objective_noise, noise_seed))
            elif cfg.perturb_in_objective == "fake_quant":
                w_bits, a_bits = parse_quant(cfg.objective_quant)
                stack.enter_context(fake_quant(model, w_bits, a_bits, per_forward=True))
            value = mean_nll(model, s_batch, cfg.loss_reduction)
            if u_batch is not None:
                value += cfg.utility_weight * mean_nll(model, u_batch, cfg.loss_reduction)
        return value

    return loss


def refine(model: nn.Module, safety: LMBatch, utility: LMBatch | None, cfg: ZOConfig,
           log: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run `cfg.steps` ZO steps on `model` in place (fp32) and return the record of what happened."""
    cfg.validate()
    if any(p.dtype != torch.float32 for p in model.parameters() if p.is_floating_point()):
        model.float()  # fp32 master weights: in-place ±εz restores within ~1e-7 (spec §2.2)
    model.eval()
    groups = layer_groups(model, cfg.layer_groups)
    tracker = SensitivityEMA(len(groups), cfg.ema)
    rng = random.Random(cfg.seed)
    probe_eps = cfg.probe_eps or cfg.eps
    selected: list[int] = []  # set by the probe at step 0 (every probe_period steps from there)
    history: list[dict[str, Any]] = []
    selections: list[dict[str, Any]] = []
    probe_rows: list[list[float]] = []
    forwards = 0
    t0 = time.monotonic()
    for t in range(cfg.steps):
        s_idx = rng.sample(range(len(safety)), min(cfg.batch_size, len(safety)))
        u_idx = (rng.sample(range(len(utility)), min(cfg.batch_size, len(utility)))
                 if utility is not None else None)
        objective = make_objective(model, safety, utility, cfg, s_idx, u_idx, _seed(cfg.seed, 3, t))
        if t % cfg.probe_period == 0:
            base = objective()
            probe = layer_sensitivity(groups, objective, probe_eps, _seed(cfg.seed, 2, t), cfg.probe, base)
            tracker.update(probe)
            selected = tracker.select(cfg.topk_frac)
            forwards += 1 + 2 * len(groups)
            probe_rows.append([float(v) for v in probe])
            selections.append({"step": t, "selected": selected})
        params = [named for k in selected for named in groups[k].params]
        res = spsa_step(model, params, objective, cfg.eps, cfg.lr, _seed(cfg.seed, 1, t), cfg.weight_decay)
        forwards += 2
        row = {"step": t, "loss": res.loss, "projected_grad": res.projected_grad, "selected": selected}
        history.append(row)
        if log is not None:
            log(row)
    seconds = time.monotonic() - t0
    return {
        "steps": cfg.steps,
        "seconds": seconds,
        "forwards": forwards,
        "layer_groups": [g.name for g in groups],
        "group_params": [g.numel() for g in groups],
        "layer_sensitivity": [float(v) for v in tracker.values],
        "probes": probe_rows,
        "selected_indices": selected,
        "selected_layers": [groups[k].name for k in selected],
        "selection_history": selections,
        "updated_layers": [groups[k].name for k in sorted({k for s in selections for k in s["selected"]})],
        "selected_params": sum(groups[k].numel() for k in selected),
        "history": history,
        "config": asdict(cfg),
    }
