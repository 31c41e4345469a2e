"""One client's private local round: DP-SGD with Poisson sampling, per-triple joint clipping and, for DP-Flames,
per-step private selection of the entity rows that get updated (spec fkge.md section 4.7).

Modes
-----
``dp-naive``
    Plain DP-SGD on both tables: every step adds ``N(0, σ²C²)`` to *every* row of the clipped entity and relation
    gradient sums; every entity row changes and must be considered released.
``dp-flames``
    Stage 1 picks K entity rows per step with the exponential mechanism over the gaps of the sorted row norms of the
    clipped sum (``fedsim.dp.selection.select_rows``, sensitivity ``gap_sensitivity(C)`` = √2·C for one step's
    sum); stage 2 adds ``N(0, σ²C²)`` to those K rows only (the noise is drawn for |K| rows, never for the whole
    table) and to the whole relation table. Rows outside K get a zero gradient; with ``mask_unselected`` (default)
    they are also restored to their pre-step value after ``optimizer.step()``, because Adam's moments (or weight
    decay) would otherwise move rows whose gradient is zero. Moving them would be post-processing (no privacy
    cost) but would break the "unselected rows are unchanged, not uploaded" semantics. The optimizer *state* of
    those rows still evolves as the optimizer dictates (e.g. Adam's moments decay), which is post-processing too.

Relations are noised in both modes: the relation table is never released, but every later upload of the entity rows
is computed through it, so a non-private relation update would void the DP-SGD argument (section 4.7, the DP-FedE
flaw of section 4.1).

One step (``q`` = ``sample_rate``, ``N_c`` = number of train triples)
--------------------------------------------------------------------
1. Poisson sample: each train triple is kept independently with probability q (``torch.rand`` on ``generator``).
   An empty sample is still a step: noise is added and the accountant is charged.
2. Tail negatives ``sample_negatives(B, num_neg, n_ent, generator)``, **not filtered** against the train set
   (``neg_valid`` all True). Filtering (``known_tail_mask``) would make other triples' gradients depend on whether a
   given triple is in the train set (its presence flips their masks), which the one-triple sensitivity C does not
   cover.
3. ``clipped_grad_sum`` gives the sums G_E, G_R of the jointly clipped per-triple gradients.
4. Noise of standard deviation σ·C, then division by the *expected* batch size q·N_c (a data-independent constant,
   as in standard DP-SGD with Poisson sampling; dividing by the realised batch size would leak it). Since the loss
   of ``fedsim.kg.training`` is a batch mean, ``G / (q N_c)`` is an unbiased estimate of the full-data mean
   gradient.
5. ``optimizer.step()`` (then the masking above for dp-flames).

One round is ``epochs · max(1, round(1/q))`` steps.

Accounting
----------
With an accountant, the whole round is charged *before* the first step (so whatever is released is always
accounted, even if the round is interrupted): ``gaussian_steps(steps, σ)`` and, for dp-flames,
``selection(steps, ε_sel)`` (one selection per step, composed as ε_sel²/8-zCDP without amplification: per-step
selection is expensive, see the ε table of section 4.7). The accountant's ``config.sample_rate`` must equal
``cfg.sample_rate`` (it is the rate dp-accounting is told about). The optional ``threshold`` test of the selection
reads the noisy maximum, which the selection's ε does **not** cover; the accountant charges nothing for it.

Reported loss
-------------
``DPRoundResult.mean_loss`` is the mean, over steps with a non-empty sample, of the plain (unclipped, noise-free)
batch loss ``self_adversarial_loss`` of the sampled triples with their (unfiltered) negatives, taken from the
clipping pass's forward at the parameters *before* the step (the same convention as ``train_epochs``, which reports the loss of
the forward pass that precedes each update). It is a non-private diagnostic computed from the raw training data:
do not release it outside the client without privatising it. NaN when every step's sample was empty.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from fedsim.dp.accountant import ClientAccountant
from fedsim.dp.clipping import clipped_grad_sum
from fedsim.dp.selection import gap_sensitivity, select_rows
from fedsim.kg.models import Interaction
from fedsim.kg.training import sample_negatives

__all__ = ["DP_MODES", "DPRoundResult", "DPStepConfig", "dp_train_round", "steps_per_round"]

#: Canonical mode names (``_`` is accepted for ``-`` and case is ignored on input).
DP_MODES: tuple[str, ...] = ("dp-naive", "dp-flames")


def _real(field: str, value: object) -> float:
    """float(value) for a finite real number, else ValueError naming the field."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"DPStepConfig.{field} must be a real number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"DPStepConfig.{field} must be finite, got {value!r}")
    return value


def _integer(field: str, value: object) -> int:
    """int(value) for an integer (not bool), else ValueError naming the field."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"DPStepConfig.{field} must be an integer, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class DPStepConfig:
    """Mechanism of one private local step.

    Attributes:
        mode: ``"dp-naive"`` or ``"dp-flames"`` (``dp_naive`` / ``dp_flames`` accepted, stored canonical).
        noise_multiplier: σ; the noise on a clipped gradient sum has standard deviation σ·C.
        max_grad_norm: C, the joint per-triple clipping norm (finite).
        sample_rate: q in (0, 1], the Poisson sampling rate (expected batch q·N_c).
        selection_epsilon: dp-flames: ε of each (per-step) exponential-mechanism selection; required there.
        k_min, k_max: dp-flames: bounds on the number K of selected entity rows per step; ``k_max=None`` means all
            rows of the client. Both are clamped to the client's number of entity rows at run time.
        threshold: optional noisy-max threshold test (DP-FedE uses 0.75·C); a step whose noisy maximum gap is at or
            below it selects no entity row. Not covered by the accountant; default off.
        mask_unselected: dp-flames: restore the rows outside K to their pre-step values after each optimizer step.
        selection: dp-flames: ``"per-step"`` (a selection on every step's clipped sum) or ``"per-round"`` (one
            selection before the round, on the clipped gradient of every train triple at the received rows, each
            triple counted once, so the gap sensitivity stays √2·C; the round's steps then update only those rows).
    """

    mode: str
    noise_multiplier: float
    max_grad_norm: float
    sample_rate: float
    selection_epsilon: float | None = None
    k_min: int = 1
    k_max: int | None = None
    threshold: float | None = None
    mask_unselected: bool = True
    selection: str = "per-step"

    def __post_init__(self) -> None:
        if not isinstance(self.mode, str):
            raise ValueError(f"DPStepConfig.mode must be a string, got {self.mode!r}")
        mode = self.mode.strip().lower().replace("_", "-")
        if mode not in DP_MODES:
            raise ValueError(f"DPStepConfig.mode: unknown mode {self.mode!r}; choices: {', '.join(DP_MODES)}")
        sigma = _real("noise_multiplier", self.noise_multiplier)
        if sigma <= 0:
            raise ValueError(f"DPStepConfig.noise_multiplier must be > 0, got {sigma!r}")
        clip = _real("max_grad_norm", self.max_grad_norm)
        if clip <= 0:
            raise ValueError(f"DPStepConfig.max_grad_norm must be > 0, got {clip!r}")
        q = _real("sample_rate", self.sample_rate)
        if not 0 < q <= 1:
            raise ValueError(f"DPStepConfig.sample_rate must lie in (0, 1], got {q!r}")
        sel = self.selection_epsilon
        if sel is not None:
            sel = _real("selection_epsilon", sel)
            if sel <= 0:
                raise ValueError(f"DPStepConfig.selection_epsilon must be > 0 (or None), got {sel!r}")
        if mode == "dp-flames" and sel is None:
            raise ValueError("DPStepConfig.selection_epsilon is required for mode 'dp-flames'")
        k_min = _integer("k_min", self.k_min)
        if k_min < 1:
            raise ValueError(f"DPStepConfig.k_min must be >= 1, got {k_min}")
        k_max = self.k_max
        if k_max is not None:
            k_max = _integer("k_max", k_max)
            if k_max < k_min:
                raise ValueError(f"DPStepConfig.k_max ({k_max}) must be >= k_min ({k_min})")
        threshold = self.threshold
        if threshold is not None:
            threshold = _real("threshold", threshold)
        if self.selection not in ("per-step", "per-round"):
            raise ValueError(f"DPStepConfig.selection: unknown {self.selection!r}; choices: per-step, per-round")
        if not isinstance(self.mask_unselected, (bool, np.bool_)):
            raise ValueError(f"DPStepConfig.mask_unselected must be a bool, got {self.mask_unselected!r}")
        for name, value in (
            ("mode", mode),
            ("noise_multiplier", sigma),
            ("max_grad_norm", clip),
            ("sample_rate", q),
            ("selection_epsilon", sel),
            ("k_min", k_min),
            ("k_max", k_max),
            ("threshold", threshold),
            ("mask_unselected", bool(self.mask_unselected)),
        ):
            object.__setattr__(self, name, value)

    @property
    def noise_std(self) -> float:
        """Standard deviation σ·C of the noise added to a clipped gradient sum."""
        return self.noise_multiplier * self.max_grad_norm


@dataclass
class DPRoundResult:
    """Outcome of :func:`dp_train_round`.

    Attributes:
        steps: DP-SGD steps run (= Gaussian steps charged).
        mean_loss: mean pre-step batch loss over steps with a non-empty sample (module docstring); NaN if none.
        selected_rows: sorted unique local entity rows changed this round: all rows for dp-naive; for dp-flames the
            rows selected at least once (each of which changes with probability one), plus, when
            ``mask_unselected`` is off, any other row the optimizer moved.
        selections: selection calls made (dp-flames: one per step; dp-naive: 0).
    """

    steps: int
    mean_loss: float
    selected_rows: np.ndarray
    selections: int


def steps_per_round(sample_rate: float, epochs: int) -> int:
    """Number of DP-SGD steps of a round: ``epochs · max(1, round(1/q))`` (Python's round, half to even)."""
    return int(epochs) * max(1, int(round(1.0 / float(sample_rate))))


def _check_inputs(
    entities: torch.Tensor,
    relations: torch.Tensor,
    triples: torch.Tensor,
    cfg: DPStepConfig,
    num_neg: int,
    epochs: int,
    generator: torch.Generator,
    rng: np.random.Generator,
    accountant: ClientAccountant | None,
) -> None:
    if not isinstance(cfg, DPStepConfig):
        raise TypeError(f"cfg must be a DPStepConfig, got {type(cfg).__name__}")
    if entities.dim() != 2 or relations.dim() != 2:
        raise ValueError("entities and relations must be 2-D tables")
    if triples.dim() != 2 or triples.shape[1] != 3 or triples.dtype != torch.long:
        raise ValueError(f"triples must be a LongTensor [N, 3], got {tuple(triples.shape)} {triples.dtype}")
    if triples.shape[0] == 0:
        raise ValueError("triples is empty: DP-SGD needs N_c >= 1 (the step normalises by q * N_c)")
    if isinstance(num_neg, bool) or int(num_neg) != num_neg or num_neg < 1:
        raise ValueError(f"num_neg must be an integer >= 1, got {num_neg!r}")
    if isinstance(epochs, bool) or int(epochs) != epochs or epochs < 0:
        raise ValueError(f"epochs must be an integer >= 0, got {epochs!r}")
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    if accountant is not None and not math.isclose(
        accountant.config.sample_rate, cfg.sample_rate, rel_tol=1e-12, abs_tol=0.0
    ):
        raise ValueError(
            f"accountant.config.sample_rate ({accountant.config.sample_rate}) != cfg.sample_rate "
            f"({cfg.sample_rate}): the accountant would account a different subsampling rate"
        )


def dp_train_round(
    interaction: Interaction,
    entities: torch.nn.Parameter,
    relations: torch.nn.Parameter,
    triples: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    cfg: DPStepConfig,
    num_neg: int,
    temperature: float,
    epochs: int,
    generator: torch.Generator,
    rng: np.random.Generator,
    accountant: ClientAccountant | None,
) -> DPRoundResult:
    """Run one private local round (``steps_per_round(q, epochs)`` DP-SGD steps) in place on the two tables.

    Args:
        interaction: the KGE score.
        entities, relations: the client's entity rows [n_ent, d_e] and relation table [n_rel, d_r]; both must be
            parameters of ``optimizer`` (their ``.grad`` is overwritten each step).
        triples: the client's train triples [N_c, 3] in local ids.
        optimizer: any torch optimizer over the two tables (e.g. Adam as in FedE, or SGD).
        cfg: the mechanism (:class:`DPStepConfig`).
        num_neg: tail negatives per triple (uniform over the client's entity rows, unfiltered).
        temperature: self-adversarial temperature.
        epochs: local epochs; a round has ``epochs · max(1, round(1/q))`` steps (0 epochs: nothing happens).
        generator: torch RNG of the Poisson sampling, the negatives and the Gaussian noise.
        rng: numpy RNG of the selection's Gumbel noise (dp-flames).
        accountant: charged for the whole round up front (module docstring), or None.

    Returns:
        :class:`DPRoundResult`.
    """
    _check_inputs(entities, relations, triples, cfg, num_neg, epochs, generator, rng, accountant)
    n_ent, d_e = entities.shape
    n_rel, d_r = relations.shape
    n_train = int(triples.shape[0])
    flames = cfg.mode == "dp-flames"
    steps = steps_per_round(cfg.sample_rate, int(epochs))
    if flames:
        k_max = n_ent if cfg.k_max is None else min(cfg.k_max, n_ent)
        k_min = min(cfg.k_min, k_max)
        sensitivity = gap_sensitivity(cfg.max_grad_norm)
    per_round = flames and cfg.selection == "per-round"
    selections = (1 if per_round else steps) if flames and steps else 0
    if accountant is not None and steps:
        accountant.gaussian_steps(steps, noise_multiplier=cfg.noise_multiplier)
        if selections:
            accountant.selection(selections, epsilon=cfg.selection_epsilon)
    round_rows = (
        _select_for_round(interaction, entities, relations, triples, cfg, num_neg, temperature, generator, rng,
                          k_min, k_max, sensitivity)
        if per_round and steps else None
    )

    std = cfg.noise_std
    scale = 1.0 / (cfg.sample_rate * n_train)  # expected batch size q * N_c
    device, e_dtype, r_dtype = entities.device, entities.dtype, relations.dtype
    triples = triples.to(device)
    ever_selected = torch.zeros(n_ent, dtype=torch.bool, device=device)
    start = entities.detach().clone() if flames and not cfg.mask_unselected else None
    losses: list[float] = []
    for _ in range(steps):
        keep = torch.rand(n_train, generator=generator) < cfg.sample_rate
        batch = triples[keep.to(device)]
        b = int(batch.shape[0])
        neg = sample_negatives(b, num_neg, n_ent, generator).to(device)
        neg_valid = torch.ones(neg.shape, dtype=torch.bool, device=device)  # unfiltered (module docstring)
        sums = clipped_grad_sum(
            interaction, entities, relations, batch, neg, neg_valid, cfg.max_grad_norm, temperature
        )
        if b:  # the batch loss comes from the clipping pass's forward (same parameters, batch, negatives)
            losses.append(sums.loss)
        grad_r = sums.relation_sum
        grad_r.add_(torch.randn((n_rel, d_r), generator=generator, dtype=r_dtype).to(device), alpha=std)
        grad_r.mul_(scale)
        if flames:
            g_e = sums.entity_sum
            if round_rows is not None:
                chosen = round_rows
            else:
                norms = g_e.norm(dim=1).detach().cpu().double().numpy()
                chosen_np = select_rows(norms, cfg.selection_epsilon, sensitivity, k_min, k_max, rng, cfg.threshold)
                chosen = torch.from_numpy(chosen_np).to(device)
            grad_e = torch.zeros_like(g_e)
            if chosen.numel():
                noise = torch.randn((chosen.numel(), d_e), generator=generator, dtype=e_dtype).to(device)
                grad_e[chosen] = (g_e[chosen] + std * noise) * scale
                ever_selected[chosen] = True
            before = entities.detach().clone() if cfg.mask_unselected else None
        else:
            grad_e = sums.entity_sum
            grad_e.add_(torch.randn((n_ent, d_e), generator=generator, dtype=e_dtype).to(device), alpha=std)
            grad_e.mul_(scale)
        optimizer.zero_grad(set_to_none=True)
        entities.grad = grad_e
        relations.grad = grad_r
        optimizer.step()
        if flames and before is not None:
            with torch.no_grad():
                stepped = entities.detach()[chosen].clone()
                entities.copy_(before)
                if chosen.numel():
                    entities[chosen] = stepped
    optimizer.zero_grad(set_to_none=True)

    if not flames:
        selected = np.arange(n_ent, dtype=np.int64) if steps else np.empty(0, dtype=np.int64)
    else:
        if start is not None:  # unmasked: the optimizer may have moved rows that were never selected
            ever_selected |= (entities.detach() != start).any(dim=1)
        selected = np.flatnonzero(ever_selected.cpu().numpy()).astype(np.int64)
    mean_loss = float(np.mean(losses)) if losses else float("nan")
    return DPRoundResult(steps=steps, mean_loss=mean_loss, selected_rows=selected, selections=selections)


def _select_for_round(
    interaction: Interaction, entities: torch.Tensor, relations: torch.Tensor, triples: torch.Tensor,
    cfg: DPStepConfig, num_neg: int, temperature: float, generator: torch.Generator, rng: np.random.Generator,
    k_min: int, k_max: int, sensitivity: float, chunk: int = 256,
) -> torch.Tensor:
    """The rows of a per-round selection: the exponential mechanism over the row-norm gaps of the sum
    of every train triple's clipped gradient at the received rows (each triple once: one triple
    moves the utility by at most √2·C)."""
    n_ent = entities.shape[0]
    total = torch.zeros_like(entities.detach())
    for start in range(0, int(triples.shape[0]), chunk):
        batch = triples[start : start + chunk].to(entities.device)
        neg = sample_negatives(int(batch.shape[0]), num_neg, n_ent, generator).to(entities.device)
        neg_valid = torch.ones(neg.shape, dtype=torch.bool, device=entities.device)
        sums = clipped_grad_sum(interaction, entities, relations, batch, neg, neg_valid, cfg.max_grad_norm, temperature)
        total += sums.entity_sum
    norms = total.norm(dim=1).cpu().double().numpy()
    chosen = select_rows(norms, cfg.selection_epsilon, sensitivity, k_min, k_max, rng, cfg.threshold)
    return torch.from_numpy(chosen).to(entities.device)
