"""CIP: the client-initiated passive "transfer" attack of Hu et al. (WWW'23), as in the authors'
`attack/client_attack.py` (fkge.md section 3.2)."""

from __future__ import annotations

import numpy as np

from attacks.base import Attack, AttackSetup, Scored, ThreatModel, lookup_rows, server_view_of
from attacks.metrics import Sweep
from attacks.observe import RunView
from attacks.scoring import DISTANCE_MODELS, distance, ratio

ESTIMATES = ("corrected", "code")


def victim_estimate(global_rows: np.ndarray, own_rows: np.ndarray, num_clients: int, estimate: str) -> np.ndarray:
    """The other holders' mean row from the global (mean) row and the attacker's own, assuming every client holds the
    entity (the attacker cannot know how many do; exact for 2 clients): (C g - a) / (C - 1). The authors' code uses
    (a - C g) / (C - 1), the negation."""
    if estimate not in ESTIMATES:
        raise ValueError(f"unknown victim estimate {estimate!r}; choices: {', '.join(ESTIMATES)}")
    c = float(num_clients)
    corrected = (c * np.asarray(global_rows, np.float64) - np.asarray(own_rows, np.float64)) / (c - 1.0)
    return corrected if estimate == "corrected" else -corrected


def ratio_sweep(params: dict) -> Sweep:
    return Sweep("threshold", tuple(params["threshold_start"] + i * params["threshold_step"]
                                    for i in range(params["threshold_count"])))


def attacker_relation_rows(view: RunView, attacker: int, relations: np.ndarray, rnd: int) -> np.ndarray:
    """Rows of the attacker's own relation table for global relation ids."""
    own = view.truth.clients[attacker].relation_ids
    local = np.searchsorted(own, relations)
    if np.any(local >= len(own)) or np.any(own[np.minimum(local, len(own) - 1)] != relations):
        raise ValueError("a candidate relation is not one of the attacker's relations")
    return view.relations(rnd)[local]


class ClientPassiveInference(Attack):
    """A protocol-following client compares each candidate's score on its own tables with the score on the victim's
    rows it estimates from the aggregated table."""

    name = "cip"
    threat_model = ThreatModel("client", "passive")
    requires = ("attacker-uploads", "attacker-broadcasts", "attacker-view")
    level = "triple"
    citation = ("Hu et al., Quantifying and Defending against Privacy Threats on Federated Knowledge Graph "
                "Embedding, WWW'23 (arXiv 2304.02932), client-initiated passive inference; code Ezraxz/DP-FedE")
    defaults = {"estimate": "corrected", "threshold_start": 1.0, "threshold_step": 0.04, "threshold_count": 20}

    def __init__(self, **params) -> None:
        super().__init__(**params)
        if self.params["estimate"] not in ESTIMATES:
            raise ValueError(f"cip estimate must be one of {ESTIMATES}, got {self.params['estimate']!r}")

    def sweep(self) -> Sweep:
        return ratio_sweep(self.params)

    def score(self, view: RunView, setup: AttackSetup, rnd: int) -> Scored:
        cands = self.candidates(view, setup)
        cfg = view.cfg
        own_ids, own_rows = server_view_of(view, setup.attacker, rnd)  # DP modes upload a selection of rows
        g_ids, g_rows = view.global_after(setup.attacker, rnd)
        rel = attacker_relation_rows(view, setup.attacker, cands.relations, rnd)
        h_own = lookup_rows(own_ids, own_rows, cands.heads, "attacker upload")
        t_own = lookup_rows(own_ids, own_rows, cands.tails, "attacker upload")
        est = self.params["estimate"]
        h_vic = victim_estimate(lookup_rows(g_ids, g_rows, cands.heads, "global rows"), h_own, cfg.data.num_clients, est)
        t_vic = victim_estimate(lookup_rows(g_ids, g_rows, cands.tails, "global rows"), t_own, cfg.data.num_clients, est)
        pre = distance(cfg, h_own, rel, t_own)
        rep = distance(cfg, h_vic, rel, t_vic)
        if cfg.model.name in DISTANCE_MODELS:
            # members: the victim's rows fit the triple better. With the code's negated estimate a member's distance
            # grows instead, so the code predicts rep / pre > threshold; the corrected estimate flips the ratio.
            scores = ratio(rep, pre) if est == "code" else ratio(pre, rep)
        else:
            scores = pre - rep if est == "corrected" else rep - pre
        return Scored(cands, scores, {"estimate": est})


class ClientPassiveInferenceCode(ClientPassiveInference):
    """CIP with the authors' code's victim estimate, (a - C g) / (C - 1) (the negated mean of the other holders)."""

    name = "cip-code"
    defaults = {**ClientPassiveInference.defaults, "estimate": "code"}
