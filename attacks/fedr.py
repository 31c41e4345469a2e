"""KG reconstruction (FedR's attack on FedE, taokz/FedR `FedE/Rec_Attack`, fkge.md section 3.4): with the victim's
entity rows and one client's relation table, predict each victim pair's relation as the one whose embedding is
closest in direction to the pair's offset; reports the triple reconstruction rate (TRR) beside membership scores."""

from __future__ import annotations

import numpy as np

from attacks.base import Attack, AttackSetup, Scored, ThreatModel, lookup_rows, server_view_of, top_fraction_sweep
from attacks.metrics import Sweep
from attacks.observe import RunView

SUPPORTED = ("transe", "rotate")


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def relation_similarity(model: str, heads: np.ndarray, tails: np.ndarray, relations: np.ndarray,
                        rho: float) -> np.ndarray:
    """[n, R] similarity of each pair's offset to every relation row: cosine of t - h and r (TransE); for RotatE the
    mean cosine between the phases of t / h and the relation's rotation angles."""
    h, t, r = (np.asarray(a, np.float64) for a in (heads, tails, relations))
    if model == "transe":
        return _unit(t - h) @ _unit(r).T
    if model == "rotate":
        d = h.shape[1] // 2
        phase = np.angle((t[:, :d] + 1j * t[:, d:]) / np.where(np.abs(h[:, :d] + 1j * h[:, d:]) > 0,
                                                                  h[:, :d] + 1j * h[:, d:], 1e-12))
        theta = r / (rho / np.pi)
        return (np.cos(phase) @ np.cos(theta).T + np.sin(phase) @ np.sin(theta).T) / d
    raise ValueError(f"fedr reconstruction supports models {SUPPORTED}, not {model!r}")


class Reconstruction(Attack):
    """The server, holding one client's relation table, reads relations off the victim's entity offsets."""

    name = "fedr"
    threat_model = ThreatModel("server", "passive")  # colluding with a client for its relation table
    requires = ("victim-uploads", "attacker-view")
    level = "triple"
    citation = ("Zhang et al., Efficient Federated Learning on Knowledge Graphs via Privacy-preserving Relation "
                "Embedding Aggregation, Findings of EMNLP'22 (FedR), KG reconstruction attack; code taokz/FedR")
    defaults = {"m_start": 0.5, "m_step": 0.05, "m_count": 21, "trr_sample": 20000}

    def sweep(self) -> Sweep:
        return top_fraction_sweep(self.params)

    def score(self, view: RunView, setup: AttackSetup, rnd: int) -> Scored:
        cfg = view.cfg
        model = cfg.model.name
        if model not in SUPPORTED:
            raise ValueError(f"fedr reconstruction supports models {SUPPORTED}, not {model!r}")
        from fedsim.kg.shapes import init_range

        rho = init_range(cfg.model.hidden_dim, cfg.model.gamma, cfg.model.epsilon)
        cands = self.candidates(view, setup)
        ids, table = server_view_of(view, setup.victim, rnd)
        own_rel_ids = view.truth.clients[setup.attacker].relation_ids
        rel_table = view.relations(rnd)
        sim = relation_similarity(model, lookup_rows(ids, table, cands.heads, "victim rows"),
                                  lookup_rows(ids, table, cands.tails, "victim rows"), rel_table, rho)
        scores = sim[np.arange(len(cands)), np.searchsorted(own_rel_ids, cands.relations)]
        # TRR over the victim's train triples whose entities and relation the adversary can see
        victim = view.truth.clients[setup.victim].global_triples("train")
        keep = np.isin(victim[:, 1], own_rel_ids) & np.isin(victim[:, 0], ids) & np.isin(victim[:, 2], ids)
        victim = victim[keep]
        cap = int(self.params["trr_sample"])
        if len(victim) > cap:  # a seeded sample keeps the [n, R] similarity matrix bounded
            victim = victim[np.sort(np.random.default_rng([setup.seed, 53]).choice(len(victim), cap, replace=False))]
        trr = float("nan")
        if len(victim):
            vs = relation_similarity(model, lookup_rows(ids, table, victim[:, 0], "victim rows"),
                                     lookup_rows(ids, table, victim[:, 2], "victim rows"), rel_table, rho)
            trr = float(np.mean(own_rel_ids[vs.argmax(axis=1)] == victim[:, 1]))
        return Scored(cands, scores, {"trr": trr, "trr_triples": int(len(victim)),
                                      "trr_chance": 1.0 / max(1, len(own_rel_ids))})
