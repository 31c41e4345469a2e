"""Per-client privacy accountant of DP-Flames (differentially private federated KGE).

One :class:`ClientAccountant` per client. The neighbouring relation is **add or remove one triple** of the
client's train set (``NeighboringRelation.ADD_OR_REMOVE_ONE``), see fkge.md §4.7.

Two kinds of events are recorded:

* **Gaussian steps** -- one local DP-SGD step on a Poisson sample of rate ``q = B / N_c``, noise ``N(0, σ²C²)`` on
  the clipped sum: ``PoissonSampledDpEvent(q, GaussianDpEvent(σ))``. σ may change between calls (the adaptive
  policy of fkge.md §4.5 shrinks σ over rounds); every σ gets its own segment.
* **Selections** -- one exponential-mechanism / report-noisy-max (Gumbel scale ``2Δ/ε_sel``) choice of entity
  rows, which is ε_sel-DP and ε_sel-*bounded-range*, hence ``ε_sel²/8``-zCDP: ``ZCDpEvent(rho=ε_sel²/8)``.
  The selection gets **no amplification by subsampling** (dp-accounting only amplifies Gaussian sub-events).

ε is never accumulated incrementally. The history is canonicalised (steps summed per ``(σ, q)``, selections
summed per ``ε_sel``, both sorted), turned into **one** composed ``DpEvent`` and handed to a fresh dp-accounting
accountant, so the result is a pure function of the multiset of recorded events and does not depend on the order
of the calls (or on whether the history went through :meth:`ClientAccountant.state_dict`). Results are cached
per canonical history and δ.

Backends (:data:`ACCOUNTANTS`):

* ``"rdp"`` (default) -- ``dp_accounting.rdp.RdpAccountant`` over :data:`DEFAULT_RDP_ORDERS` (a superset of the
  dp-accounting default orders, so ε is never larger than dp-accounting's default; 2.095 on the platform.md anchor
  q = 64/2048, σ = 1.1, 96 steps, δ = 1e-5, as Opacus). On integer orders the RDP equals Opacus'; on fractional
  orders dp-accounting 0.6 sums the absolute values of the alternating series, a slightly conservative bound
  (ε up to ~0.1 % above Opacus when the optimum order is fractional, e.g. 12.549 vs 12.537 for 5,280 steps at
  q = 64/2759, σ = 1). The RDP → (ε, δ) conversion is dp-accounting's ``compute_epsilon`` (the improved bound of
  Canonne-Kamath-Steinke 2020 / Asoodeh et al.), tighter than the classic ``rdp + log(1/δ)/(α-1)``; for ρ-zCDP
  alone it is also below the textbook ``ρ + 2√(ρ log 1/δ)``.
* ``"pld"`` -- ``dp_accounting.pld.PLDAccountant`` (tighter for the Gaussian part: 1.757 on the anchor). It cannot
  compose ``ZCDpEvent``; :meth:`ClientAccountant.selection` raises :class:`NotImplementedError` under this backend
  (no silent fallback to a looser bound).

What is *not* covered (fkge.md §6.4): the 0.75·C threshold test of the DP-Flames selection reads the noisy max
value, which the exponential-mechanism bound does not cover; the validation-MRR signal of the adaptive policy is
not accounted either; a non-Poisson (entity-grouped) sampler voids the subsampling amplification.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import dp_accounting
import numpy as np
from dp_accounting import dp_event as dpe
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.rdp import rdp_privacy_accountant

from fedsim.registry import UnknownNameError, normalize_name

__all__ = [
    "ACCOUNTANTS",
    "DEFAULT_RDP_ORDERS",
    "ClientAccountant",
    "PldBackend",
    "PrivacyConfig",
    "PrivacyConfigError",
    "RdpBackend",
    "composed_event",
    "make_accountant",
    "selection_rho",
    "solve_noise_multiplier",
]

STATE_FORMAT = "fedsim.dp.accountant/1"

#: Dense RDP orders: fractional steps of 0.05 up to 5 and 0.1 up to 11 (where the optimum of moderate ε lies),
#: every integer up to 64, then coarser large orders up to 2048 (small ε, e.g. a few selections alone).
#: A superset of dp-accounting's ``DEFAULT_RDP_ORDERS`` and Opacus' ``RDPAccountant.DEFAULT_ALPHAS``.
DEFAULT_RDP_ORDERS: tuple[float, ...] = tuple(
    sorted(
        {round(1 + x / 20, 10) for x in range(1, 80)}
        | {round(5 + x / 10, 10) for x in range(0, 60)}
        | {float(a) for a in range(11, 64)}
        | {float(a) for a in range(64, 257, 8)}
        | {320.0, 384.0, 448.0, 512.0, 768.0, 1024.0, 2048.0}
    )
)

_MAX_SIGMA = 1e6
_MIN_SIGMA = 1e-2


class _DropNonConvergence(logging.Filter):
    """Drops dp-accounting's "failed to converge … Excluding this order" warning.

    For small σ the fractional-order series near α = 1 does not converge; dp-accounting then sets that order's RDP
    to ∞ (a valid, merely unused bound) and logs a warning per order per call, which would flood run logs.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "failed to converge" not in str(record.msg)


_FILTER = _DropNonConvergence()


@contextlib.contextmanager
def _quiet_nonconvergence() -> Iterator[None]:
    logger = logging.getLogger("absl")
    logger.addFilter(_FILTER)
    try:
        yield
    finally:
        logger.removeFilter(_FILTER)


# ----------------------------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------------------------


class PrivacyConfigError(ValueError):
    """An invalid :class:`PrivacyConfig` value; ``field`` names the offending field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"PrivacyConfig.{field}: {message}")
        self.field = field


def _as_real(field: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise PrivacyConfigError(field, f"must be a real number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise PrivacyConfigError(field, f"must be finite, got {value!r}")
    return value


@dataclass(frozen=True)
class PrivacyConfig:
    """Privacy parameters of one client.

    Attributes:
        noise_multiplier: σ; the noise on the clipped gradient sum has standard deviation σ·C.
        max_grad_norm: C, the per-triple clipping norm (not used by the accounting itself; kept here so one object
            describes the mechanism).
        sample_rate: q = B / N_c, the Poisson sampling rate of one local step.
        delta: δ at which ε is reported.
        selection_epsilon: ε_sel of one exponential-mechanism selection; ``None`` = no selection.
        eps_max: per-client budget; the client stops once ε ≥ eps_max. ``None`` = no budget stop.
    """

    noise_multiplier: float
    max_grad_norm: float
    sample_rate: float
    delta: float
    selection_epsilon: float | None = None
    eps_max: float | None = None

    def __post_init__(self) -> None:
        sigma = _as_real("noise_multiplier", self.noise_multiplier)
        if sigma <= 0:
            raise PrivacyConfigError("noise_multiplier", f"must be > 0, got {sigma!r}")
        clip = _as_real("max_grad_norm", self.max_grad_norm)
        if clip <= 0:
            raise PrivacyConfigError("max_grad_norm", f"must be > 0, got {clip!r}")
        q = _as_real("sample_rate", self.sample_rate)
        if not 0 < q <= 1:
            raise PrivacyConfigError("sample_rate", f"must lie in (0, 1], got {q!r}")
        delta = _as_real("delta", self.delta)
        if not 0 < delta < 1:
            raise PrivacyConfigError("delta", f"must lie in (0, 1), got {delta!r}")
        normalised = {
            "noise_multiplier": sigma,
            "max_grad_norm": clip,
            "sample_rate": q,
            "delta": delta,
        }
        for name in ("selection_epsilon", "eps_max"):
            raw = getattr(self, name)
            if raw is None:
                continue
            value = _as_real(name, raw)
            if value <= 0:
                raise PrivacyConfigError(name, f"must be > 0 (or None), got {value!r}")
            normalised[name] = value
        for name, value in normalised.items():  # plain floats (numpy scalars are not JSON-able)
            object.__setattr__(self, name, value)

    def to_dict(self) -> dict[str, float | None]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PrivacyConfig:
        return cls(**dict(data))


def selection_rho(selection_epsilon: float) -> float:
    """zCDP parameter ρ = ε²/8 of one ε-bounded-range selection (Cesar & Rogers 2021, Lemma 3.2)."""
    return float(selection_epsilon) ** 2 / 8.0


# ----------------------------------------------------------------------------------------------------------------
# Backends
# ----------------------------------------------------------------------------------------------------------------


class RdpBackend:
    """Rényi-DP accounting with ``dp_accounting.rdp.RdpAccountant`` over a fixed list of orders."""

    name = "rdp"
    supports_selection = True

    def __init__(self, orders: Sequence[float] | None = None) -> None:
        orders = DEFAULT_RDP_ORDERS if orders is None else tuple(float(a) for a in orders)
        if not orders or any(not math.isfinite(a) or a <= 1 for a in orders):
            raise ValueError(f"RDP orders must be finite and > 1, got {orders!r}")
        self.orders: tuple[float, ...] = tuple(orders)

    def _accountant(self, event: dpe.DpEvent) -> rdp_privacy_accountant.RdpAccountant:
        acc = rdp_privacy_accountant.RdpAccountant(
            orders=list(self.orders),
            neighboring_relation=dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE,
        )
        with _quiet_nonconvergence():
            acc.compose(event)
        return acc

    def epsilon(self, event: dpe.DpEvent, delta: float) -> float:
        return float(self._accountant(event).get_epsilon(delta))

    def rdp(self, event: dpe.DpEvent) -> tuple[np.ndarray, np.ndarray]:
        """``(orders, rdp)`` of ``event``."""
        acc = self._accountant(event)
        return np.array(acc.orders, dtype=float), np.array(acc.rdp, dtype=float)

    def __repr__(self) -> str:
        return f"RdpBackend({len(self.orders)} orders in [{self.orders[0]}, {self.orders[-1]}])"


class PldBackend:
    """Privacy-loss-distribution accounting with ``dp_accounting.pld.PLDAccountant``.

    Tighter than RDP for the Gaussian part, but dp-accounting's PLD accountant cannot compose ``ZCDpEvent``, so the
    exponential-mechanism selections are not supported (``supports_selection = False``).
    """

    name = "pld"
    supports_selection = False

    def __init__(self, value_discretization_interval: float = 1e-4) -> None:
        if not (math.isfinite(value_discretization_interval) and value_discretization_interval > 0):
            raise ValueError(
                f"value_discretization_interval must be > 0, got {value_discretization_interval!r}"
            )
        self.value_discretization_interval = float(value_discretization_interval)

    def epsilon(self, event: dpe.DpEvent, delta: float) -> float:
        acc = pld_privacy_accountant.PLDAccountant(
            neighboring_relation=dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE,
            value_discretization_interval=self.value_discretization_interval,
        )
        if not acc.supports(event):
            raise NotImplementedError(
                f"the pld backend cannot compose {event!r} (dp-accounting's PLDAccountant has no ZCDpEvent); "
                "use backend='rdp' when selections are accounted"
            )
        acc.compose(event)
        return float(acc.get_epsilon(delta))

    def __repr__(self) -> str:
        return f"PldBackend(value_discretization_interval={self.value_discretization_interval})"


#: Backend name → backend class (``make_accountant(config, name)`` builds a :class:`ClientAccountant`).
ACCOUNTANTS: dict[str, type[RdpBackend] | type[PldBackend]] = {"rdp": RdpBackend, "pld": PldBackend}

Backend = RdpBackend | PldBackend


def _resolve_backend(backend: str | Backend, **options: Any) -> Backend:
    if isinstance(backend, (RdpBackend, PldBackend)):
        if options:
            raise TypeError("backend options are only accepted with a backend name")
        return backend
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a name or a backend object, got {backend!r}")
    key = normalize_name(backend)
    if key not in ACCOUNTANTS:
        raise UnknownNameError(
            f"unknown privacy accountant {backend!r}; valid choices: {', '.join(sorted(ACCOUNTANTS))}"
        )
    return ACCOUNTANTS[key](**options)


def _check_delta(delta: Any) -> float:
    if isinstance(delta, bool) or not isinstance(delta, (int, float, np.integer, np.floating)):
        raise ValueError(f"delta must be a real number in (0, 1), got {delta!r}")
    delta = float(delta)
    if not 0 < delta < 1:
        raise ValueError(f"delta must lie in (0, 1), got {delta!r}")
    return delta


def _check_count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")
    return int(value)


def _check_positive(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return value


# ----------------------------------------------------------------------------------------------------------------
# Composition
# ----------------------------------------------------------------------------------------------------------------

_Canonical = tuple[tuple[tuple[float, float, int], ...], tuple[tuple[float, int], ...]]


def _canonical(history: Iterable[Mapping[str, Any]]) -> _Canonical:
    """Steps summed per (σ, q), selections per ε_sel, both sorted: an order-free summary of the history."""
    gauss: dict[tuple[float, float], int] = {}
    sel: dict[float, int] = {}
    for entry in history:
        if entry["kind"] == "gaussian":
            key = (entry["noise_multiplier"], entry["sample_rate"])
            gauss[key] = gauss.get(key, 0) + entry["steps"]
        else:
            sel[entry["epsilon"]] = sel.get(entry["epsilon"], 0) + entry["count"]
    return (
        tuple(sorted((s, q, n) for (s, q), n in gauss.items() if n > 0)),
        tuple(sorted((e, k) for e, k in sel.items() if k > 0)),
    )


def _event(canonical: _Canonical) -> dpe.DpEvent:
    gauss, sel = canonical
    events: list[dpe.DpEvent] = [
        dpe.SelfComposedDpEvent(dpe.PoissonSampledDpEvent(q, dpe.GaussianDpEvent(sigma)), n)
        for sigma, q, n in gauss
    ]
    events += [dpe.SelfComposedDpEvent(dpe.ZCDpEvent(rho=selection_rho(eps)), k) for eps, k in sel]
    if not events:
        return dpe.NoOpDpEvent()
    return dpe.ComposedDpEvent(events)


def composed_event(
    *,
    sample_rate: float,
    steps: int | Sequence[tuple[float, int]],
    noise_multiplier: float | None = None,
    selections: int = 0,
    selection_epsilon: float | None = None,
) -> dpe.DpEvent:
    """The composed ``DpEvent`` of ``steps`` Gaussian steps (or ``[(σ, n), ...]`` segments) plus selections."""
    history: list[dict[str, Any]] = []
    segments = [(noise_multiplier, steps)] if isinstance(steps, (int, np.integer)) else list(steps)
    for sigma, n in segments:
        history.append(
            {
                "kind": "gaussian",
                "noise_multiplier": _check_positive("noise_multiplier", sigma),
                "sample_rate": float(sample_rate),
                "steps": _check_count("steps", n),
            }
        )
    if selections:
        history.append(
            {
                "kind": "selection",
                "epsilon": _check_positive("selection_epsilon", selection_epsilon),
                "count": _check_count("selections", selections),
            }
        )
    return _event(_canonical(history))


class ClientAccountant:
    """Privacy ledger of one client: Gaussian steps and exponential-mechanism selections.

    Args:
        config: the client's :class:`PrivacyConfig` (q, default σ, δ, ε_sel, eps_max).
        backend: ``"rdp"`` (default), ``"pld"``, or a backend object (e.g. ``RdpBackend(orders=...)``).
        **backend_options: passed to the backend class when ``backend`` is a name (``orders`` for rdp,
            ``value_discretization_interval`` for pld).
    """

    def __init__(self, config: PrivacyConfig, backend: str | Backend = "rdp", **backend_options: Any) -> None:
        if not isinstance(config, PrivacyConfig):
            raise TypeError(f"config must be a PrivacyConfig, got {type(config).__name__}")
        self.config = config
        self.backend: Backend = _resolve_backend(backend, **backend_options)
        self._history: list[dict[str, Any]] = []
        self._cache_key: _Canonical | None = None
        self._cache: dict[float, float] = {}

    # -- recording ---------------------------------------------------------------------------------------------

    def _append(self, entry: dict[str, Any], count_field: str) -> None:
        last = self._history[-1] if self._history else None
        if (
            last is not None
            and last.keys() == entry.keys()
            and all(last[k] == v for k, v in entry.items() if k != count_field)
        ):
            last[count_field] += entry[count_field]
        else:
            self._history.append(entry)

    def gaussian_steps(self, n: int, noise_multiplier: float | None = None) -> None:
        """Record ``n`` Poisson-subsampled Gaussian steps at rate ``config.sample_rate``.

        ``noise_multiplier`` overrides ``config.noise_multiplier`` for these steps (adaptive σ); consecutive calls
        with the same σ share one history segment.
        """
        n = _check_count("n", n)
        sigma = self.config.noise_multiplier if noise_multiplier is None else noise_multiplier
        sigma = _check_positive("noise_multiplier", sigma)
        if n == 0:
            return
        self._append(
            {"kind": "gaussian", "noise_multiplier": sigma, "sample_rate": self.config.sample_rate, "steps": n},
            "steps",
        )

    def selection(self, count: int = 1, epsilon: float | None = None) -> None:
        """Record ``count`` exponential-mechanism selections of ε_sel each (``epsilon``, else the config's).

        The exponential mechanism (equivalently report-noisy-max with Gumbel noise of scale 2Δ/ε_sel) is not only
        ε_sel-DP but ε_sel-*bounded-range* (Durfee & Rogers 2019, "Practical differentially private top-k selection
        with pay-what-you-get composition", NeurIPS), and an ε-bounded-range mechanism is ε²/8-zCDP (Cesar & Rogers
        2021, "Bounding, concentrating, and truncating: unifying privacy loss composition for data analytics",
        ALT, Lemma 3.2). Each selection is therefore composed as ``ZCDpEvent(rho=ε_sel²/8)``, i.e. it adds
        ``ρ·α`` to the RDP curve at every order α. No amplification by subsampling is applied to it.

        Raises:
            NotImplementedError: under the ``pld`` backend (no ZCDpEvent support in dp-accounting's PLD).
            ValueError: no ε_sel given and none configured.
        """
        count = _check_count("count", count)
        if not self.backend.supports_selection:
            raise NotImplementedError(
                f"the {self.backend.name!r} backend cannot account exponential-mechanism selections "
                "(dp-accounting's PLDAccountant does not compose ZCDpEvent); use backend='rdp'"
            )
        eps = self.config.selection_epsilon if epsilon is None else epsilon
        if eps is None:
            raise ValueError("selection() needs an epsilon: none given and config.selection_epsilon is None")
        eps = _check_positive("selection epsilon", eps)
        if count == 0:
            return
        self._append({"kind": "selection", "epsilon": eps, "count": count}, "count")

    # -- queries -----------------------------------------------------------------------------------------------

    def dp_event(self) -> dpe.DpEvent:
        """One composed ``DpEvent`` for the whole history (order-free canonical form)."""
        return _event(_canonical(self._history))

    def epsilon(self, delta: float | None = None) -> float:
        """ε spent so far at ``delta`` (``config.delta`` by default), from a fresh accountant over the history."""
        delta = self.config.delta if delta is None else _check_delta(delta)
        key = _canonical(self._history)
        if key != self._cache_key:
            self._cache_key, self._cache = key, {}
        if delta not in self._cache:
            self._cache[delta] = 0.0 if not (key[0] or key[1]) else self.backend.epsilon(_event(key), delta)
        return self._cache[delta]

    def rdp(self) -> tuple[np.ndarray, np.ndarray]:
        """``(orders, rdp)`` of the history (rdp backend only)."""
        if not isinstance(self.backend, RdpBackend):
            raise NotImplementedError(f"rdp() needs the rdp backend, this accountant uses {self.backend.name!r}")
        return self.backend.rdp(self.dp_event())

    @property
    def total_gaussian_steps(self) -> int:
        return sum(e["steps"] for e in self._history if e["kind"] == "gaussian")

    @property
    def total_selections(self) -> int:
        return sum(e["count"] for e in self._history if e["kind"] == "selection")

    def spent(self) -> dict[str, Any]:
        """``{"epsilon", "delta", "gaussian_steps", "selections", "events", "backend"}``; events: a history copy."""
        return {
            "epsilon": self.epsilon(),
            "delta": self.config.delta,
            "gaussian_steps": self.total_gaussian_steps,
            "selections": self.total_selections,
            "events": [dict(e) for e in self._history],
            "backend": self.backend.name,
        }

    def exhausted(self) -> bool:
        """True once ε (at ``config.delta``) ≥ ``config.eps_max``; always False without a budget."""
        if self.config.eps_max is None:
            return False
        return self.epsilon() >= self.config.eps_max

    # -- persistence -------------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """JSON-able history (plus the config and backend name, for information)."""
        return {
            "format": STATE_FORMAT,
            "backend": self.backend.name,
            "config": self.config.to_dict(),
            "history": [dict(e) for e in self._history],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Replace the history with the one in ``state`` (from :meth:`state_dict`, possibly via JSON).

        The recorded sample rates and σs travel with the history; the current config only supplies the defaults of
        later calls and δ.
        """
        if not isinstance(state, Mapping) or state.get("format") != STATE_FORMAT:
            raise ValueError(f"not an accountant state (expected format {STATE_FORMAT!r})")
        raw = state.get("history")
        if not isinstance(raw, list):
            raise ValueError("accountant state: 'history' must be a list")
        history: list[dict[str, Any]] = []
        for i, entry in enumerate(raw):
            if not isinstance(entry, Mapping):
                raise ValueError(f"accountant state: history[{i}] is not a mapping")
            kind = entry.get("kind")
            try:
                if kind == "gaussian":
                    q = _check_positive("sample_rate", entry["sample_rate"])
                    if q > 1:
                        raise ValueError(f"sample_rate must be <= 1, got {q}")
                    history.append(
                        {
                            "kind": "gaussian",
                            "noise_multiplier": _check_positive("noise_multiplier", entry["noise_multiplier"]),
                            "sample_rate": q,
                            "steps": _check_count("steps", entry["steps"]),
                        }
                    )
                elif kind == "selection":
                    history.append(
                        {
                            "kind": "selection",
                            "epsilon": _check_positive("epsilon", entry["epsilon"]),
                            "count": _check_count("count", entry["count"]),
                        }
                    )
                else:
                    raise ValueError(f"unknown kind {kind!r}")
            except KeyError as exc:
                raise ValueError(f"accountant state: history[{i}] lacks {exc}") from None
            except ValueError as exc:
                raise ValueError(f"accountant state: history[{i}]: {exc}") from None
        if not self.backend.supports_selection and any(e["kind"] == "selection" for e in history):
            raise NotImplementedError(
                f"the state holds selections, which the {self.backend.name!r} backend cannot account"
            )
        self._history = history
        self._cache_key, self._cache = None, {}

    def __repr__(self) -> str:
        return (
            f"ClientAccountant(backend={self.backend.name!r}, gaussian_steps={self.total_gaussian_steps}, "
            f"selections={self.total_selections}, segments={len(self._history)})"
        )


def make_accountant(
    config: PrivacyConfig, backend: str | Backend = "rdp", **backend_options: Any
) -> ClientAccountant:
    """A :class:`ClientAccountant` for ``config`` with the named backend (see :data:`ACCOUNTANTS`)."""
    return ClientAccountant(config, backend, **backend_options)


# ----------------------------------------------------------------------------------------------------------------
# Calibration
# ----------------------------------------------------------------------------------------------------------------


def solve_noise_multiplier(
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    selections: int = 0,
    selection_epsilon: float | None = None,
    backend: str | Backend = "rdp",
    tol: float = 1e-3,
) -> float:
    """Smallest σ (to relative precision ``tol``) with ε(σ) ≤ ``target_epsilon`` at ``delta``.

    ε(σ) is the ε of ``steps`` Poisson-subsampled Gaussian steps at rate ``sample_rate`` composed with
    ``selections`` exponential-mechanism selections of ``selection_epsilon`` each. A bracketing search on σ as in
    Opacus' ``get_noise_multiplier`` (doubling, then bisection), but with log-log interpolation inside the bracket
    and a relative tolerance on σ instead of one on ε: the result σ* satisfies
    ε(σ*) ≤ target and ε(σ*·(1 − tol)) > target. The bracket is found by doubling/halving from σ = 1 within
    [1e-2, 1e6]; if σ just above 1e-2 already meets the target, that σ is returned unrefined.

    Raises:
        ValueError: bad arguments, or the selections alone already spend ≥ ``target_epsilon``, or the target needs
            σ > 1e6.
        NotImplementedError: selections under the ``pld`` backend.
    """
    target_epsilon = _check_positive("target_epsilon", target_epsilon)
    delta = _check_delta(delta)
    sample_rate = _check_positive("sample_rate", sample_rate)
    if sample_rate > 1:
        raise ValueError(f"sample_rate must lie in (0, 1], got {sample_rate}")
    steps = _check_count("steps", steps)
    if steps == 0:
        raise ValueError("steps must be >= 1: σ does not affect ε without Gaussian steps")
    selections = _check_count("selections", selections)
    tol = _check_positive("tol", tol)
    if tol >= 0.5:
        raise ValueError(f"tol must be < 0.5, got {tol}")
    resolved = _resolve_backend(backend)
    if selections:
        if selection_epsilon is None:
            raise ValueError("selections > 0 needs selection_epsilon")
        selection_epsilon = _check_positive("selection_epsilon", selection_epsilon)
        if not resolved.supports_selection:
            raise NotImplementedError(
                f"the {resolved.name!r} backend cannot account selections (no ZCDpEvent); use backend='rdp'"
            )
        sel_only = resolved.epsilon(
            dpe.SelfComposedDpEvent(dpe.ZCDpEvent(rho=selection_rho(selection_epsilon)), selections), delta
        )
        if sel_only >= target_epsilon:
            raise ValueError(
                f"the {selections} selections at ε_sel={selection_epsilon} alone already spend ε={sel_only:.4g} "
                f"≥ target {target_epsilon} at δ={delta}; no noise multiplier can reach the target"
            )

    def eps(sigma: float) -> float:
        return resolved.epsilon(
            composed_event(
                sample_rate=sample_rate,
                steps=steps,
                noise_multiplier=sigma,
                selections=selections,
                selection_epsilon=selection_epsilon,
            ),
            delta,
        )

    hi = 1.0
    e_hi = eps(hi)
    if e_hi > target_epsilon:
        lo, e_lo = hi, e_hi
        while True:
            hi = lo * 2
            if hi > _MAX_SIGMA:
                raise ValueError(
                    f"target ε={target_epsilon} at δ={delta} needs a noise multiplier above {_MAX_SIGMA}"
                )
            e_hi = eps(hi)
            if e_hi <= target_epsilon:
                break
            lo, e_lo = hi, e_hi
    else:
        while True:
            lo = hi / 2
            if lo < _MIN_SIGMA:
                return hi
            e_lo = eps(lo)
            if e_lo > target_epsilon:
                break
            hi, e_hi = lo, e_lo

    # Invariant: eps(lo) > target >= eps(hi). ε(σ) is close to a power law locally, so interpolate log ε against
    # log σ and probe a pair of points tol/2 either side of the guess (usually closing the bracket at once); every
    # third round is a plain geometric bisection, so the bracket shrinks geometrically whatever the curve does.
    rounds = 0
    while hi - lo > tol * hi:
        rounds += 1
        probes: list[float]
        if rounds % 3 == 0 or not (math.isfinite(e_lo) and e_hi > 0):
            probes = [math.sqrt(lo * hi)]
        else:
            slope = (math.log(e_hi) - math.log(e_lo)) / (math.log(hi) - math.log(lo))
            guess = math.exp(math.log(lo) + (math.log(target_epsilon) - math.log(e_lo)) / slope) if slope < 0 else lo
            guess = min(max(guess, lo), hi)
            probes = [guess * (1 - tol / 2), guess * (1 + tol / 2)]
        for sigma in probes:
            if not lo < sigma < hi:
                continue
            e = eps(sigma)
            if e <= target_epsilon:
                hi, e_hi = sigma, e
            else:
                lo, e_lo = sigma, e
    return hi
